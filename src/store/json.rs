//! [`JsonFileStore`]: runtime state kept in the pool file itself.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{AccountWrite, CounterTotals, Store, StoreError, StoreErrorKind, StoredAccount};
use crate::account::AccountId;
use crate::health::HealthState;
use crate::pool::PersistedState;
use crate::time;

/// The key under which this crate keeps its own state fields in each account object.
pub const POOL_STATE_KEY: &str = "poolState";

/// Keeps runtime state in the pool file, in any shape the loader reads (`{"accounts": [...]}`,
/// a bare array, or the older grouped shape, with other top-level keys), beside each account's
/// settings.
///
/// Each account (matched by `uuid`) gets the state fields the older gateway used — `isHealthy`,
/// `errorCount` (consecutive failures), `usageCount` (successes), `lastUsed`, `lastErrorTime`,
/// `lastErrorMessage` (ISO times) — so its tools keep reading the file, plus this crate's full
/// state under `poolState` (state, reason, deadline, ejection level, counters, model
/// cooldowns, event times, as epoch ms). An account without `poolState` is read from the older
/// fields as the loader reads them (`isHealthy: false`: suspended until a reset or a successful
/// probe). `isDisabled` is written only when an operator enabled or disabled the account.
/// Accounts the file does not list are not added to it, unless this store created the file
/// (then it lists every account of the pool). Only a file that did not exist when the store was
/// opened is created: one that goes away later (an editor replacing it) fails the write, which
/// the writer keeps and retries until the file is back.
///
/// Every write re-reads the file and merges the batch into the accounts' state (see the
/// [merge rules](super#writes-merge-never-overwrite)); only the fields this store owns change,
/// and the derived UI fields (`errorStatus`, `poolType`) are dropped. Every other byte of an
/// account, and every other top-level key, keeps its exact text: numbers of any size, key
/// order, duplicate keys; an account that did not change keeps all of its text. A file the
/// loader rejects ([`PoolFile::parse`](crate::config::PoolFile::parse): bad JSON, a duplicate
/// id, a bad value; or no accounts) is never written: the write fails (logged once by the
/// writer) and is retried until the file loads again. The file is replaced atomically
/// (temporary file, fsync, rename, directory fsync) with mode 0600, so a crash leaves either
/// the old or the new file.
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
        let io = |source| StoreError::io(lock_path.display(), source);
        let lock = open_private(&lock_path, false).map_err(io)?;
        let path_exists = path.exists();
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::locked(path.display(), lock_path.display()))
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

    /// Reads the pool file, lets `change` edit it, and replaces it atomically, under the lock
    /// the writer takes, for other code that must change the file while the store holds it
    /// (blocking I/O). A missing file starts as `{"accounts": []}`. The file is handled as a
    /// [`Value`]: unlike the writer's own rewrites, numbers beyond `f64` precision and
    /// duplicate keys are not kept. A file that exists but does not load as a pool file is
    /// not written.
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
            Err(source) => return Err(StoreError::io(self.display(), source)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            StoreError::corrupt(self.display(), format!("invalid JSON: {e}")).with_source(e)
        })
    }

    /// Read, `change`, replace. A missing file starts empty when `create` allows it, else it
    /// is an error and nothing is written.
    fn modify<F>(&self, create: bool, change: F) -> Result<(), StoreError>
    where
        F: FnOnce(&mut Value) -> Result<(), String>,
    {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(bytes) = fs::read(&self.path) {
            if let Err(e) = crate::config::PoolFile::parse(&self.path, &bytes) {
                return Err(StoreError::corrupt(
                    self.display(),
                    format!("it does not load as a pool file: {e}"),
                )
                .with_source(e));
            }
        }
        let mut doc = match self.read()? {
            Some(doc) => doc,
            None if create => serde_json::json!({ "accounts": [] }),
            None => {
                return Err(StoreError::io(
                    self.display(),
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the pool file is gone; it is not recreated, and the state is written \
                         once it is back",
                    ),
                ))
            }
        };
        change(&mut doc).map_err(|message| StoreError::corrupt(self.display(), message))?;
        let mut bytes = serde_json::to_vec_pretty(&doc)
            .map_err(|e| StoreError::corrupt(self.display(), &e).with_source(e))?;
        bytes.push(b'\n');
        self.replace(&bytes)
    }

    /// Atomic replace: temporary file in the same directory (mode 0600), fsync, rename,
    /// directory fsync.
    fn replace(&self, bytes: &[u8]) -> Result<(), StoreError> {
        crate::private_file::replace(&self.path, bytes)
            .map_err(|source| StoreError::io(self.display(), source))
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

/// Where the accounts of a pool file are, as the loader finds them
/// ([`PoolFile::parse`](crate::config::PoolFile::parse)): `{"accounts": [...]}`, a bare array,
/// or the older grouped shape `{"claude-kiro-oauth": [...]}` (other top-level keys, in any
/// shape, are not accounts).
fn list_key(doc: &Value) -> Result<Option<&'static str>, String> {
    use crate::config::{ACCOUNTS_KEY, LEGACY_GROUP_KEY};
    match doc {
        Value::Array(_) => Ok(None),
        Value::Object(map) => {
            let key = match (
                map.contains_key(ACCOUNTS_KEY),
                map.contains_key(LEGACY_GROUP_KEY),
            ) {
                (true, false) => ACCOUNTS_KEY,
                (false, true) => LEGACY_GROUP_KEY,
                (true, true) => {
                    return Err(format!(
                        "both `{ACCOUNTS_KEY}` and `{LEGACY_GROUP_KEY}` are present"
                    ))
                }
                (false, false) => return Err(SHAPE.into()),
            };
            match map.get(key) {
                Some(Value::Array(_)) => Ok(Some(key)),
                _ => Err(format!("`{key}` is not an array")),
            }
        }
        _ => Err(SHAPE.into()),
    }
}

/// The account objects of a pool file in any shape the loader reads.
fn account_list(doc: &Value) -> Result<&Vec<Value>, String> {
    let list = match list_key(doc)? {
        None => doc.as_array(),
        Some(key) => doc.get(key).and_then(Value::as_array),
    };
    list.ok_or_else(|| SHAPE.to_owned())
}

const SHAPE: &str =
    "unknown pool file shape: expected {\"accounts\": [...]}, a bare array of accounts, or the older grouped shape {\"claude-kiro-oauth\": [...]}";

fn uuid_of(account: &Value) -> Option<&str> {
    account.get("uuid").and_then(Value::as_str)
}

/// An account's state from the file: `poolState` when present, else the older fields, read
/// as the loader reads them ([`FileState::persisted`](crate::config::FileState::persisted):
/// `isHealthy: false` is a suspension until a reset or a successful probe).
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
    crate::config::file::file_state_of(account)
        .persisted()
        .unwrap_or_default()
}

/// The fields this store owns in an account object, from the account's merged state.
fn owned_fields(s: &PersistedState, write: &AccountWrite) -> Vec<(&'static str, Value)> {
    let mut fields = vec![
        ("isHealthy", Value::Bool(s.state == HealthState::Healthy)),
        ("errorCount", s.consecutive_failures.into()),
        ("usageCount", s.counters.successes.into()),
    ];
    if let Some(t) = &s.last_used {
        fields.push(("lastUsed", time::format_iso(t).into()));
    }
    match &s.last_error {
        Some(e) => {
            fields.push(("lastErrorTime", time::format_iso(&e.at).into()));
            fields.push(("lastErrorMessage", e.message.clone().into()));
        }
        None => {
            fields.push(("lastErrorTime", Value::Null));
            fields.push(("lastErrorMessage", Value::Null));
        }
    }
    if write.enabled_changed {
        let enabled = s.enabled.unwrap_or(write.enabled);
        fields.push(("isDisabled", Value::Bool(!enabled)));
    }
    if let Ok(value) = serde_json::to_value(s) {
        fields.push((POOL_STATE_KEY, value));
    }
    fields
}

/// The pool file's text with `batch` merged into its accounts. Only the fields this store
/// owns change (and the derived fields are dropped); every other byte of an account, and
/// every other top-level key, keeps its exact text (numbers of any size, key order,
/// duplicate keys).
fn rewrite(
    text: &str,
    batch: &[AccountWrite],
    add_missing: bool,
    now: std::time::SystemTime,
) -> Result<String, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let key = list_key(&doc)?;
    let raw_list: &RawValue = match key {
        None => serde_json::from_str(text).map_err(|e| e.to_string())?,
        Some(_) => {
            // `list_key` checked the key is there.
            let top = raw::object(text)?;
            top.iter()
                .rev()
                .find(|(k, _)| Some(k.as_str()) == key)
                .map(|(_, v)| &**v)
                .ok_or_else(|| SHAPE.to_owned())?
        }
    };
    let accounts: Vec<&RawValue> =
        serde_json::from_str(raw_list.get()).map_err(|e| e.to_string())?;
    let indent = if key.is_some() { 4 } else { 2 };
    let mut done = vec![false; batch.len()];
    let mut items: Vec<String> = Vec::with_capacity(accounts.len());
    for account in accounts {
        let Ok(mut fields) = raw::object(account.get()) else {
            items.push(account.get().to_owned());
            continue;
        };
        let parsed: Value = serde_json::from_str(account.get()).unwrap_or(Value::Null);
        let found = uuid_of(&parsed).and_then(|id| batch.iter().position(|w| w.id.as_str() == id));
        let derived = fields
            .iter()
            .any(|(k, _)| crate::config::DERIVED_FIELDS.contains(&k.as_str()));
        if found.is_none() && !derived {
            items.push(account.get().to_owned());
            continue;
        }
        fields.retain(|(k, _)| !crate::config::DERIVED_FIELDS.contains(&k.as_str()));
        let mut owned = Vec::new();
        if let Some(i) = found {
            done[i] = true;
            let mut state = parsed.as_object().map(state_of).unwrap_or_default();
            super::merge::merge(&mut state, &batch[i], now);
            owned = owned_fields(&state, &batch[i]);
        }
        items.push(raw::emit_object(&fields, &owned, indent)?);
    }
    if add_missing {
        for (write, _) in batch.iter().zip(&done).filter(|(_, done)| !**done) {
            let mut state = PersistedState::default();
            super::merge::merge(&mut state, write, now);
            let mut owned = vec![("uuid", Value::from(write.id.as_str()))];
            owned.extend(owned_fields(&state, write));
            items.push(raw::emit_object(&[], &owned, indent)?);
        }
    }
    let list = raw::emit_list(&items, indent - 2);
    let mut out = match key {
        None => list,
        Some(key) => {
            let top = raw::object(text)?;
            let last = top.iter().rposition(|(k, _)| k == key);
            let mut out = String::from("{\n");
            for (i, (k, v)) in top.iter().enumerate() {
                let value = if Some(i) == last {
                    list.as_str()
                } else {
                    v.get()
                };
                out.push_str("  ");
                out.push_str(&serde_json::to_string(k).map_err(|e| e.to_string())?);
                out.push_str(": ");
                out.push_str(value);
                if i + 1 < top.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            out.push('}');
            out
        }
    };
    out.push('\n');
    Ok(out)
}

/// JSON text kept exactly as written: objects as ordered lists of (key, raw value), duplicate
/// keys included.
mod raw {
    use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
    use serde_json::value::RawValue;
    use serde_json::Value;

    pub(super) type Fields<'a> = Vec<(String, &'a RawValue)>;

    struct Object<'a>(Fields<'a>);

    impl<'de> Deserialize<'de> for Object<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Object<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object<'de>, A::Error> {
                    let mut fields = Vec::new();
                    while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                        fields.push((k, v));
                    }
                    Ok(Object(fields))
                }
            }
            d.deserialize_map(V)
        }
    }

    /// The fields of a JSON object, in order, with their exact text.
    pub(super) fn object(text: &str) -> Result<Fields<'_>, String> {
        serde_json::from_str::<Object<'_>>(text)
            .map(|o| o.0)
            .map_err(|e| e.to_string())
    }

    fn indented(value: &Value, indent: usize) -> Result<String, String> {
        let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
        Ok(text.replace('\n', &format!("\n{}", " ".repeat(indent))))
    }

    /// An object at `indent`: `fields` as they were, with `owned` replacing fields of the same
    /// name (in place) or appended.
    pub(super) fn emit_object(
        fields: &[(String, &RawValue)],
        owned: &[(&str, Value)],
        indent: usize,
    ) -> Result<String, String> {
        let inner = " ".repeat(indent + 2);
        let mut lines: Vec<String> = Vec::new();
        let mut used = vec![false; owned.len()];
        for (k, v) in fields {
            let key = serde_json::to_string(k).map_err(|e| e.to_string())?;
            match owned.iter().position(|(o, _)| o == k) {
                Some(i) if !used[i] => {
                    used[i] = true;
                    lines.push(format!(
                        "{inner}{key}: {}",
                        indented(&owned[i].1, indent + 2)?
                    ));
                }
                // A later duplicate of an owned key: the loader reads the last one.
                Some(i) => lines.push(format!(
                    "{inner}{key}: {}",
                    indented(&owned[i].1, indent + 2)?
                )),
                None => lines.push(format!("{inner}{key}: {}", v.get())),
            }
        }
        for (i, (k, v)) in owned.iter().enumerate() {
            if !used[i] {
                let key = serde_json::to_string(k).map_err(|e| e.to_string())?;
                lines.push(format!("{inner}{key}: {}", indented(v, indent + 2)?));
            }
        }
        if lines.is_empty() {
            return Ok("{}".into());
        }
        Ok(format!(
            "{{\n{}\n{}}}",
            lines.join(",\n"),
            " ".repeat(indent)
        ))
    }

    /// An array at `indent` of items already rendered.
    pub(super) fn emit_list(items: &[String], indent: usize) -> String {
        if items.is_empty() {
            return "[]".into();
        }
        let inner = " ".repeat(indent + 2);
        let body: Vec<String> = items.iter().map(|i| format!("{inner}{i}")).collect();
        format!("[\n{}\n{}]", body.join(",\n"), " ".repeat(indent))
    }
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
            let list = account_list(&doc)
                .map_err(|message| StoreError::corrupt(inner.display(), message))?;
            Ok(list
                .iter()
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
            inner.write_batch(&batch, may_create, add_missing)?;
            inner.may_create.store(false, Ordering::Release);
            Ok(Vec::new())
        })
        .await
    }
}

impl Inner {
    /// Merges a batch into the file, which must load as a pool file first: a file the loader
    /// rejects (invalid JSON, a duplicate id, a bad value, no accounts) is never written; the
    /// write fails and is retried until the file is fixed.
    fn write_batch(
        &self,
        batch: &[AccountWrite],
        create: bool,
        add_missing: bool,
    ) -> Result<(), StoreError> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let corrupt = |message: String| StoreError::corrupt(self.display(), message);
        let (text, new) = match fs::read_to_string(&self.path) {
            Ok(text) => (text, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                ("{\n  \"accounts\": []\n}\n".to_owned(), true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::io(
                    self.display(),
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the pool file is gone; it is not recreated, and the state is written \
                         once it is back",
                    ),
                ))
            }
            Err(source) => return Err(StoreError::io(self.display(), source)),
        };
        let body = text.strip_prefix('\u{feff}').unwrap_or(&text);
        if !new {
            match crate::config::PoolFile::parse(&self.path, body.as_bytes()) {
                Err(error) => {
                    let e = error.to_string();
                    let prefix = format!("{}: ", self.display());
                    return Err(corrupt(format!(
                        "it does not load as a pool file: {}; it is written once it loads again",
                        e.strip_prefix(&prefix).unwrap_or(&e)
                    ))
                    .with_source(error));
                }
                Ok(file) if file.entries().is_empty() && !add_missing => {
                    return Err(corrupt(
                        "it lists no accounts, which the loader refuses; it is written once it \
                         lists some again"
                            .into(),
                    ))
                }
                Ok(_) => {}
            }
        }
        let out =
            rewrite(body, batch, add_missing, std::time::SystemTime::now()).map_err(corrupt)?;
        if out == text {
            return Ok(());
        }
        self.replace(out.as_bytes())
    }
}

pub(super) async fn run_blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        StoreError::new(
            StoreErrorKind::Unavailable,
            format!("store task failed: {e}"),
        )
        .with_source(e)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_fields_are_read_as_the_loader_reads_them() {
        let account = serde_json::json!({
            "uuid": "a", "isHealthy": false, "errorCount": 4, "usageCount": 17,
            "lastUsed": "2026-01-03T11:41:18.755Z", "lastErrorMessage": "boom",
            "lastErrorTime": "2026-01-03T11:40:00.000Z"
        });
        let state = state_of(account.as_object().unwrap());
        assert_eq!(state.state, HealthState::Suspended);
        assert_eq!(state.consecutive_failures, 4);
        assert_eq!(state.counters.successes, 17);
        assert_eq!(
            state.last_used.map(|t| time::format_iso(&t)).as_deref(),
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
            serde_json::json!({"claude-kiro-oauth": [{"uuid": "a"}], "_comment": "x"}),
        ] {
            assert_eq!(account_list(&doc).unwrap().len(), 1, "{doc}");
        }
        assert_eq!(
            account_list(&serde_json::json!({"accounts": 3})).unwrap_err(),
            "`accounts` is not an array"
        );
        assert_eq!(
            account_list(&serde_json::json!({"x": 1})).unwrap_err(),
            SHAPE
        );
    }
}
