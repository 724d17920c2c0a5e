//! Hot reload: watching a pool file and applying its changes to a running pool.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::account::{Account, AccountId, AccountSettings};
use crate::config::credential::{CredentialResolver, TokenFileResolver};
use crate::config::error::ConfigError;
use crate::config::file::{CredentialSpec, PoolFile};
use crate::credential::{MaskedCredential, SharedCredential};
use crate::pool::{AccountHandle, Pool, PoolError, SyncReport};

/// Default time between two looks at a watched file.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The result of applying one change of a watched file.
pub type ReloadResult = Result<SyncReport, ConfigError>;

/// What a [`FileWatch`] has seen so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Changes of the file handled so far (applied or rejected), counting the first look.
    pub changes_seen: u64,
    /// The latest change's result: what was applied, or why it was rejected (the running
    /// pool is then unchanged).
    pub last: Option<ReloadResult>,
}

/// Configures and starts a [`FileWatch`]; [`PoolExt::watch_file`](super::PoolExt::watch_file) is the short form.
#[derive(Debug)]
pub struct FileWatcher {
    pool: Pool,
    path: PathBuf,
    interval: Duration,
    resolver: Arc<dyn CredentialResolver>,
}

impl FileWatcher {
    /// Watches `path` for `pool`, every [`DEFAULT_WATCH_INTERVAL`], opening credential files
    /// with a [`TokenFileResolver`], relative paths against the file's folder.
    pub fn new(pool: &Pool, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        FileWatcher {
            pool: pool.clone(),
            path,
            interval: DEFAULT_WATCH_INTERVAL,
            resolver: Arc::new(TokenFileResolver::new().base_dir(dir)),
        }
    }

    /// How often the file is looked at (at least 1 ms).
    pub fn interval(mut self, every: Duration) -> Self {
        self.interval = every.max(Duration::from_millis(1));
        self
    }

    /// Opens credential files of added or changed accounts with `resolver`.
    pub fn resolver(mut self, resolver: Arc<dyn CredentialResolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Looks at the file once now (applying any difference from the running pool), then, when
    /// called inside a tokio runtime, in a background task every interval until the returned
    /// handle is dropped. Outside a runtime only [`FileWatch::check_now`] looks.
    ///
    /// The pool is assumed to have been built from this file: accounts whose credential in the
    /// file matches the running one (same kind, path or masked secret) keep that credential.
    pub fn start(self) -> FileWatch {
        let (status, receiver) = watch::channel(ReloadStatus::default());
        let mut tracker = Tracker {
            pool: self.pool,
            path: self.path.clone(),
            resolver: self.resolver,
            seen: None,
            known: HashMap::new(),
            applied: None,
            status,
            logged_error: None,
            warned: HashSet::new(),
            looked: false,
        };
        tracker.adopt_running_credentials();
        tracker.check();
        let tracker = Arc::new(Mutex::new(tracker));
        let task = match tokio::runtime::Handle::try_current() {
            Ok(handle) => Some(handle.spawn(poll(Arc::clone(&tracker), self.interval))),
            Err(_) => {
                tracing::warn!(
                    file = %self.path.display(),
                    "no tokio runtime: the pool file is only checked when FileWatch::check_now is called"
                );
                None
            }
        };
        FileWatch {
            path: self.path,
            tracker,
            receiver,
            task,
        }
    }
}

async fn poll(tracker: Arc<Mutex<Tracker>>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let tracker = Arc::clone(&tracker);
        let looked = tokio::task::spawn_blocking(move || {
            tracker.lock().unwrap_or_else(|e| e.into_inner()).check();
        })
        .await;
        if looked.is_err() {
            return;
        }
    }
}

/// A running watch of a pool file. Dropping it stops the watch.
#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    tracker: Arc<Mutex<Tracker>>,
    receiver: watch::Receiver<ReloadStatus>,
    task: Option<JoinHandle<()>>,
}

impl FileWatch {
    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks at the file now. `None` when it did not change since the last look; otherwise what
    /// the change did. Blocking file I/O: call it from a blocking context or a test.
    pub fn check_now(&self) -> Option<ReloadResult> {
        self.tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check()
    }

    /// What the watch has seen so far.
    pub fn status(&self) -> ReloadStatus {
        self.receiver.borrow().clone()
    }

    /// The error of the latest change, when it was rejected.
    pub fn last_error(&self) -> Option<ConfigError> {
        match &self.receiver.borrow().last {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// A receiver that wakes on every change handled.
    pub fn subscribe(&self) -> watch::Receiver<ReloadStatus> {
        self.receiver.clone()
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    Content(u64),
    Failed(String),
}

#[derive(Debug)]
struct Seen {
    modified: Option<SystemTime>,
    len: u64,
    read_at: SystemTime,
    fingerprint: Fingerprint,
}

struct Tracker {
    pool: Pool,
    path: PathBuf,
    resolver: Arc<dyn CredentialResolver>,
    seen: Option<Seen>,
    /// The credential each account was given, with the spec it came from, so unchanged
    /// accounts keep theirs (and stay "unchanged" for [`Pool::sync`]).
    known: HashMap<AccountId, (CredentialSpec, SharedCredential)>,
    /// Each account's settings as the file said when it was last applied (`None` before the
    /// first apply). A reload applies what the file changed since then; what it did not
    /// change stays as the running pool has it, changes made through the admin API included.
    applied: Option<HashMap<AccountId, AccountSettings>>,
    status: watch::Sender<ReloadStatus>,
    /// The last rejection logged.
    logged_error: Option<String>,
    /// Warnings about the file's content already logged (each is logged once).
    warned: HashSet<String>,
    /// The file was parsed once.
    looked: bool,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("path", &self.path)
            .field("accounts", &self.known.len())
            .finish_non_exhaustive()
    }
}

impl Tracker {
    /// Pairs the file's accounts with the running pool's credentials where they match.
    fn adopt_running_credentials(&mut self) {
        let Ok(bytes) = std::fs::read(&self.path) else {
            return;
        };
        let Ok(file) = PoolFile::parse(&self.path, &bytes) else {
            return;
        };
        for entry in file.entries() {
            if let Ok(account) = self.pool.account(entry.id().as_str()) {
                if spec_matches(entry.credential(), &account.credential().masked()) {
                    self.known.insert(
                        entry.id().clone(),
                        (entry.credential().clone(), account.credential().clone()),
                    );
                }
            }
        }
    }

    fn check(&mut self) -> Option<ReloadResult> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) => return self.failed_to_read(&e),
        };
        let modified = meta.modified().ok();
        if let Some(seen) = &self.seen {
            // Racily-clean check: trust an unchanged (mtime, length) only when the file was
            // last modified well before we read it.
            let settled = modified.is_some_and(|m| m + Duration::from_secs(1) < seen.read_at);
            if matches!(seen.fingerprint, Fingerprint::Content(_))
                && seen.modified == modified
                && seen.len == meta.len()
                && settled
            {
                return None;
            }
        }
        let read_at = SystemTime::now();
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) => return self.failed_to_read(&e),
        };
        let mut hasher = DefaultHasher::new();
        hasher.write(&bytes);
        let fingerprint = Fingerprint::Content(hasher.finish());
        let same = self
            .seen
            .as_ref()
            .is_some_and(|s| s.fingerprint == fingerprint);
        self.seen = Some(Seen {
            modified,
            len: bytes.len() as u64,
            read_at,
            fingerprint,
        });
        if same {
            return None;
        }
        let first = !self.looked;
        self.looked = true;
        let result = PoolFile::parse(&self.path, &bytes).and_then(|file| {
            // The pool was built from the file as the watch starts: its load already warned.
            file.warn_unseen(&mut self.warned, !first);
            self.apply(&file)
        });
        Some(self.record(result))
    }

    fn failed_to_read(&mut self, e: &std::io::Error) -> Option<ReloadResult> {
        let error = ConfigError::read(&self.path, e);
        let fingerprint = Fingerprint::Failed(error.to_string());
        if self
            .seen
            .as_ref()
            .is_some_and(|s| s.fingerprint == fingerprint)
        {
            return None;
        }
        self.seen = Some(Seen {
            modified: None,
            len: 0,
            read_at: SystemTime::now(),
            fingerprint,
        });
        Some(self.record(Err(error)))
    }

    fn record(&mut self, result: ReloadResult) -> ReloadResult {
        match &result {
            Ok(report)
                if report.added.is_empty()
                    && report.removed.is_empty()
                    && report.changed.is_empty() =>
            {
                // E.g. a store writing state fields back: nothing for the pool to do.
                tracing::debug!(
                    file = %self.path.display(),
                    unchanged = report.unchanged,
                    "pool file changed; no account changed"
                )
            }
            Ok(report) => tracing::info!(
                file = %self.path.display(),
                added = ?report.added,
                removed = ?report.removed,
                changed = ?report.changed,
                unchanged = report.unchanged,
                "pool file applied"
            ),
            // Each distinct rejection is logged once (until the file loads again).
            Err(e) if self.logged_error.as_deref() != Some(e.to_string().as_str()) => {
                tracing::warn!(
                    file = %self.path.display(),
                    "{e}; the running pool is unchanged"
                );
                self.logged_error = Some(e.to_string());
            }
            Err(e) => tracing::debug!(file = %self.path.display(), "{e}; still rejected"),
        }
        if result.is_ok() {
            self.logged_error = None;
        }
        self.status.send_modify(|status| {
            status.changes_seen += 1;
            status.last = Some(result.clone());
        });
        result
    }

    fn apply(&mut self, file: &PoolFile) -> ReloadResult {
        if file.entries().is_empty() {
            return Err(ConfigError::EmptyPool {
                path: self.path.clone(),
            });
        }
        let mut accounts = Vec::with_capacity(file.entries().len());
        let mut opened = Vec::with_capacity(file.entries().len());
        let mut known = HashMap::with_capacity(file.entries().len());
        let roster = self.pool.accounts();
        let by_id: HashMap<&str, &AccountHandle> =
            roster.iter().map(|a| (a.id().as_str(), a)).collect();
        let running = |account: &AccountHandle| {
            Account::with_shared_credential(account.id().clone(), account.credential().clone())
                .with_settings(account.settings().clone())
        };
        for entry in file.entries() {
            // Not changed in the file since it was last applied: the running account stays as
            // it is (an operator may have changed or removed it through the admin API, and a
            // store writing state back into this file must not undo that).
            let untouched = self.applied.as_ref().is_some_and(|applied| {
                applied.get(entry.id()) == Some(entry.settings())
                    && self
                        .known
                        .get(entry.id())
                        .is_some_and(|(spec, _)| spec == entry.credential())
            });
            if untouched {
                if let Some(slot) = by_id.get(entry.id().as_str()) {
                    accounts.push(running(slot));
                    if let Some(pair) = self.known.get(entry.id()) {
                        known.insert(entry.id().clone(), pair.clone());
                    }
                }
                continue;
            }
            let (credential, unavailable, reused) = match self.known.get(entry.id()) {
                Some((spec, credential)) if spec == entry.credential() => {
                    (credential.clone(), None, true)
                }
                _ => {
                    let (account, unavailable) = entry.open(&*self.resolver);
                    (account.credential().clone(), unavailable, false)
                }
            };
            accounts.push(
                Account::with_shared_credential(entry.id().clone(), credential.clone())
                    .with_settings(entry.settings().clone()),
            );
            known.insert(entry.id().clone(), (entry.credential().clone(), credential));
            opened.push((entry, unavailable, reused));
        }
        // Accounts the file never listed (added through the admin API) stay.
        if let Some(applied) = &self.applied {
            let listed: HashSet<&AccountId> = file.entries().iter().map(|e| e.id()).collect();
            for slot in &roster {
                if !listed.contains(slot.id()) && !applied.contains_key(slot.id()) {
                    accounts.push(running(slot));
                }
            }
        }
        let report = self.pool.sync(accounts).map_err(|e| match e {
            PoolError::Invalid(source) => ConfigError::Pool {
                path: self.path.clone(),
                source,
            },
            other => ConfigError::Rejected {
                path: self.path.clone(),
                message: other.to_string(),
            },
        })?;
        let added: HashSet<&AccountId> = report.added.iter().collect();
        let changed: HashSet<&AccountId> = report.changed.iter().collect();
        for (entry, unavailable, reused) in opened {
            if added.contains(entry.id()) {
                super::seed_from_entry(&self.pool, entry, unavailable.as_deref());
            } else if changed.contains(entry.id()) && !reused {
                let Ok(account) = self.pool.account(entry.id().as_str()) else {
                    continue;
                };
                match unavailable {
                    Some(reason) => account.mark_credential_unusable(&reason),
                    None => account.mark_credential_usable("credential changed in the pool file"),
                }
            }
        }
        self.known = known;
        self.applied = Some(
            file.entries()
                .iter()
                .map(|e| (e.id().clone(), e.settings().clone()))
                .collect(),
        );
        Ok(report)
    }
}

/// Whether a running credential plausibly came from `spec`.
fn spec_matches(spec: &CredentialSpec, masked: &MaskedCredential) -> bool {
    match spec {
        CredentialSpec::None => masked.kind == "none",
        CredentialSpec::BearerToken(token) => {
            *masked == MaskedCredential::from_secret("bearer", token)
        }
        CredentialSpec::ApiKey { key, .. } => {
            *masked == MaskedCredential::from_secret("api-key", key)
        }
        CredentialSpec::File(path) => {
            masked.path.as_deref() == Some(path.display().to_string().as_str())
        }
        // A credential not from a file whose masked secret is one of the inline tokens (Kiro
        // credentials show the refresh token's last characters, bearer tokens the access
        // token's). A token rotated by a refresh no longer matches: reopened, harmlessly.
        CredentialSpec::Inline(json) => {
            let value: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
            masked.path.is_none()
                && masked.last4.is_some()
                && ["refreshToken", "accessToken"].iter().any(|field| {
                    value[*field].as_str().is_some_and(|secret| {
                        MaskedCredential::from_secret(masked.kind, secret).last4 == masked.last4
                    })
                })
        }
    }
}
