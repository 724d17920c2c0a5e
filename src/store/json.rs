//! [`JsonFileStore`]: runtime state kept in the pool file itself.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::{time, AccountWrite, CounterTotals, Store, StoreError, StoredAccount};
use crate::account::AccountId;
use crate::health::{HealthState, LastError, OutcomeClass};
use crate::pool::PersistedState;

/// The key under which this crate keeps its own state fields in each account object.
pub const POOL_STATE_KEY: &str = "poolState";

/// Keeps runtime state in the pool file (`{"accounts": [...]}`), beside each account's settings.
///
/// Each account (matched by `uuid`) gets the state fields the older gateway used — `isHealthy`,
/// `errorCount` (consecutive failures), `usageCount` (successes), `lastUsed`, `lastErrorTime`,
/// `lastErrorMessage` (ISO times) — so its tools keep reading the file, plus this crate's full
/// state under `poolState` (state, reason, deadline, ejection level, counters, model
/// cooldowns, as epoch ms).
/// `isDisabled` is written only when this process enabled or disabled the account. Accounts the
/// file does not list are not added to it, unless this store created the file (then it lists
/// every account of the pool). Only a file that did not exist when the store was opened is
/// created: one that goes away later (an editor replacing it) fails the write, which the
/// writer keeps and retries until the file is back.
///
/// Every write re-reads the file and changes only those fields, so settings edited by hand (or by
/// another tool) in the meantime are kept, as are fields this crate does not know. A file that
/// does not parse is never overwritten. The file is replaced atomically (temporary file, fsync,
/// rename, directory fsync) with mode 0600, so a crash leaves either the old or the new file.
///
/// A JSON file has one writer: [`open`](Self::open) takes an advisory lock on `<file>.lock` and
/// refuses a second process, pointing to the SQLite or Redis store instead.
///
/// ```
/// use tower_account_pool::store::JsonFileStore;
///
/// let dir = std::env::temp_dir().join(format!("tap-json-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("account_pool.json");
/// let store = JsonFileStore::open(&path)?;
/// // A second writer is refused while the first is open.
/// let err = JsonFileStore::open(&path).unwrap_err();
/// assert!(err.to_string().contains("use the SQLite store"));
/// drop(store);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct JsonFileStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    _lock: File,
    writing: Mutex<()>,
    /// This store created the file: accounts missing from it are added (a file that existed
    /// before belongs to whoever edits it, and only its accounts get state).
    created: std::sync::atomic::AtomicBool,
    /// The file did not exist when the store was opened and nothing was written yet: the next
    /// write may create it. Once the file existed, a missing file is a file being replaced or
    /// removed by someone else, and is never recreated with only the accounts of one write.
    may_create: std::sync::atomic::AtomicBool,
}

impl JsonFileStore {
    /// Opens a pool file for writing state. The file need not exist yet (it is created on the
    /// first write). Fails if another process has it open for writing.
    pub fn open(path: impl AsRef<Path>) -> Result<JsonFileStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let lock_path = lock_path(&path);
        let io = |source| StoreError::Io {
            path: lock_path.display().to_string(),
            source,
        };
        let lock = open_private(&lock_path, false).map_err(io)?;
        let path_exists = path.exists();
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: path.display().to_string(),
                    lock: lock_path.display().to_string(),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let store = JsonFileStore {
            inner: Arc::new(Inner {
                path,
                _lock: lock,
                writing: Mutex::new(()),
                created: std::sync::atomic::AtomicBool::new(false),
                may_create: std::sync::atomic::AtomicBool::new(!path_exists),
            }),
        };
        store.remove_stale_temporaries();
        Ok(store)
    }

    /// The pool file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Reads the pool file, lets `change` edit it, and replaces it atomically; the same
    /// read-modify-write the writer uses, for other code that must change the file while the
    /// store holds it (blocking I/O). A missing file starts as `{"accounts": []}`.
    pub fn modify<F>(&self, change: F) -> Result<(), StoreError>
    where
        F: FnOnce(&mut Value) -> Result<(), String>,
    {
        self.inner.modify(true, change)
    }

    fn remove_stale_temporaries(&self) {
        let (Some(dir), Some(prefix)) = (
            parent_dir(&self.inner.path),
            crate::private_file::temp_prefix(&self.inner.path),
        ) else {
            return;
        };
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

impl Inner {
    fn display(&self) -> String {
        self.path.display().to_string()
    }

    /// The parsed file, or `None` when it does not exist.
    fn read(&self) -> Result<Option<Value>, StoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.display(),
                    source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: self.display(),
                message: format!("invalid JSON: {e}"),
            })
    }

    /// Read, `change`, replace. A missing file starts empty when `create` allows it, else it
    /// is an error and nothing is written.
    fn modify<F>(&self, create: bool, change: F) -> Result<(), StoreError>
    where
        F: FnOnce(&mut Value) -> Result<(), String>,
    {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut doc = match self.read()? {
            Some(doc) => doc,
            None if create => serde_json::json!({ "accounts": [] }),
            None => {
                return Err(StoreError::Io {
                    path: self.display(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the pool file is gone; it is not recreated, and the state is written \
                         once it is back",
                    ),
                })
            }
        };
        change(&mut doc).map_err(|message| StoreError::Corrupt {
            path: self.display(),
            message,
        })?;
        let mut bytes = serde_json::to_vec_pretty(&doc).map_err(|e| StoreError::Corrupt {
            path: self.display(),
            message: e.to_string(),
        })?;
        bytes.push(b'\n');
        self.replace(&bytes)
    }

    /// Atomic replace: temporary file in the same directory (mode 0600), fsync, rename,
    /// directory fsync.
    fn replace(&self, bytes: &[u8]) -> Result<(), StoreError> {
        crate::private_file::replace(&self.path, bytes).map_err(|source| StoreError::Io {
            path: self.display(),
            source,
        })
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

fn parent_dir(path: &Path) -> Option<PathBuf> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(p) => Some(p.to_path_buf()),
        None => None,
    }
}

fn open_private(path: &Path, create_new: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(false);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// The account objects of a pool file in any of its shapes: `{"accounts": [...]}`, a bare
/// array, or the older grouped shape `{"claude-kiro-oauth": [...]}`.
fn account_lists(doc: &Value) -> Result<Vec<&Vec<Value>>, String> {
    match doc {
        Value::Array(list) => Ok(vec![list]),
        Value::Object(map) => match map.get("accounts") {
            Some(Value::Array(list)) => Ok(vec![list]),
            Some(_) => Err("`accounts` is not an array".into()),
            None if !map.is_empty() && map.values().all(Value::is_array) => {
                Ok(map.values().filter_map(Value::as_array).collect())
            }
            None => Err(SHAPE.into()),
        },
        _ => Err(SHAPE.into()),
    }
}

fn account_lists_mut(doc: &mut Value) -> Result<Vec<&mut Vec<Value>>, String> {
    match doc {
        Value::Array(list) => Ok(vec![list]),
        Value::Object(map) => {
            if map.contains_key("accounts") {
                return match map.get_mut("accounts") {
                    Some(Value::Array(list)) => Ok(vec![list]),
                    _ => Err("`accounts` is not an array".into()),
                };
            }
            if map.is_empty() || !map.values().all(Value::is_array) {
                return Err(SHAPE.into());
            }
            Ok(map.values_mut().filter_map(Value::as_array_mut).collect())
        }
        _ => Err(SHAPE.into()),
    }
}

const SHAPE: &str =
    "unknown pool file shape: expected {\"accounts\": [...]}, a bare array of accounts, or the older grouped shape {\"claude-kiro-oauth\": [...]}";

fn uuid_of(account: &Value) -> Option<&str> {
    account.get("uuid").and_then(Value::as_str)
}

/// An account's state from the file: `poolState` when present, else the older fields.
fn state_of(account: &Map<String, Value>) -> PersistedState {
    if let Some(saved) = account.get(POOL_STATE_KEY) {
        match serde_json::from_value::<PersistedState>(saved.clone()) {
            Ok(state) => return state,
            Err(e) => tracing::warn!(
                account = account.get("uuid").and_then(|v| v.as_str()).unwrap_or("?"),
                error = %e,
                "ignoring an unreadable `poolState`; using the older state fields"
            ),
        }
    }
    legacy_state(account)
}

/// The state the older gateway's fields describe. An account it marked unhealthy comes back as
/// an ejection that has ended: its next request is a probe.
fn legacy_state(account: &Map<String, Value>) -> PersistedState {
    let int = |key: &str| account.get(key).and_then(Value::as_u64).unwrap_or(0);
    let text = |key: &str| account.get(key).and_then(Value::as_str);
    let when = |key: &str| text(key).and_then(time::parse);
    let healthy = account
        .get("isHealthy")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let successes = int("usageCount");
    let mut state = PersistedState {
        consecutive_failures: int("errorCount").min(u64::from(u32::MAX)) as u32,
        counters: crate::pool::Counters {
            successes,
            requests: successes,
            ..Default::default()
        },
        ..PersistedState::default()
    };
    state.last_used = when("lastUsed");
    state.last_error = text("lastErrorMessage").map(|message| LastError {
        at: when("lastErrorTime").unwrap_or(std::time::UNIX_EPOCH),
        class: OutcomeClass::Transient,
        message: message.to_owned(),
    });
    if !healthy {
        state.state = HealthState::Ejected;
        state.reason = Some(match text("lastErrorMessage") {
            Some(m) => format!("marked unhealthy by the older gateway: {m}"),
            None => "marked unhealthy by the older gateway".into(),
        });
    }
    state
}

/// Writes one account's state fields into its object, leaving every other field alone.
fn put_state(account: &mut Map<String, Value>, write: &AccountWrite) {
    let s = &write.state;
    account.insert(
        "isHealthy".into(),
        Value::Bool(s.state == HealthState::Healthy),
    );
    account.insert("errorCount".into(), s.consecutive_failures.into());
    account.insert("usageCount".into(), s.counters.successes.into());
    if let Some(t) = &s.last_used {
        account.insert("lastUsed".into(), time::to_iso(t).into());
    }
    match &s.last_error {
        Some(e) => {
            account.insert("lastErrorTime".into(), time::to_iso(&e.at).into());
            account.insert("lastErrorMessage".into(), e.message.clone().into());
        }
        None => {
            account.insert("lastErrorTime".into(), Value::Null);
            account.insert("lastErrorMessage".into(), Value::Null);
        }
    }
    if write.enabled_changed {
        account.insert("isDisabled".into(), Value::Bool(!write.enabled));
    }
    if let Ok(value) = serde_json::to_value(s) {
        account.insert(POOL_STATE_KEY.into(), value);
    }
}

fn apply_batch(doc: &mut Value, batch: &[AccountWrite], add_missing: bool) -> Result<(), String> {
    let mut lists = account_lists_mut(doc)?;
    for write in batch {
        let found = lists
            .iter_mut()
            .flat_map(|list| list.iter_mut())
            .find(|a| uuid_of(a) == Some(write.id.as_str()));
        match found.and_then(Value::as_object_mut) {
            Some(account) => put_state(account, write),
            None if add_missing => {
                let mut account = Map::new();
                account.insert("uuid".into(), write.id.as_str().into());
                put_state(&mut account, write);
                if let Some(list) = lists.first_mut() {
                    list.push(Value::Object(account));
                }
            }
            None => tracing::debug!(
                account = %write.id,
                "account not in the pool file; its state is not written there"
            ),
        }
    }
    Ok(())
}

impl Store for JsonFileStore {
    fn name(&self) -> &'static str {
        "json"
    }

    async fn load(&self) -> Result<Vec<StoredAccount>, StoreError> {
        let inner = self.inner.clone();
        run_blocking(move || {
            let Some(doc) = inner.read()? else {
                return Ok(Vec::new());
            };
            let lists = account_lists(&doc).map_err(|message| StoreError::Corrupt {
                path: inner.display(),
                message,
            })?;
            Ok(lists
                .into_iter()
                .flatten()
                .filter_map(|a| {
                    let id = uuid_of(a)?;
                    Some(StoredAccount {
                        id: AccountId::new(id),
                        state: state_of(a.as_object()?),
                    })
                })
                .collect())
        })
        .await
    }

    async fn write(&self, batch: Vec<AccountWrite>) -> Result<CounterTotals, StoreError> {
        let inner = self.inner.clone();
        run_blocking(move || {
            // A file that is gone after it existed is not recreated from one batch: the write
            // fails, the writer keeps the batch and retries until the file is back.
            let may_create = inner.may_create.load(Ordering::Acquire);
            if may_create && !inner.path.exists() {
                inner.created.store(true, Ordering::Release);
            }
            let add_missing = inner.created.load(Ordering::Acquire);
            inner.modify(may_create, |doc| apply_batch(doc, &batch, add_missing))?;
            inner.may_create.store(false, Ordering::Release);
            Ok(Vec::new())
        })
        .await
    }
}

pub(super) async fn run_blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_fields_become_state() {
        let account = serde_json::json!({
            "uuid": "a", "isHealthy": false, "errorCount": 4, "usageCount": 17,
            "lastUsed": "2026-01-03T11:41:18.755Z", "lastErrorMessage": "boom",
            "lastErrorTime": "2026-01-03T11:40:00.000Z"
        });
        let state = state_of(account.as_object().unwrap());
        assert_eq!(state.state, HealthState::Ejected);
        assert_eq!(state.consecutive_failures, 4);
        assert_eq!(state.counters.successes, 17);
        assert_eq!(
            state.last_used.map(|t| time::to_iso(&t)).as_deref(),
            Some("2026-01-03T11:41:18.755Z")
        );
        assert_eq!(state.last_error.unwrap().message, "boom");
    }

    #[test]
    fn shapes() {
        for doc in [
            serde_json::json!({"accounts": [{"uuid": "a"}]}),
            serde_json::json!([{"uuid": "a"}]),
            serde_json::json!({"claude-kiro-oauth": [{"uuid": "a"}]}),
        ] {
            let lists = account_lists(&doc).unwrap();
            assert_eq!(lists.iter().map(|l| l.len()).sum::<usize>(), 1);
        }
        assert_eq!(
            account_lists(&serde_json::json!({"accounts": 3})).unwrap_err(),
            "`accounts` is not an array"
        );
        assert_eq!(
            account_lists(&serde_json::json!({"x": 1})).unwrap_err(),
            SHAPE
        );
    }
}
