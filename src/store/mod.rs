//! Persistence: a [`Store`] trait and the background writer that keeps a pool's runtime state
//! in it.
//!
//! ```
//! use tower_account_pool::{Account, Outcome, Pool, SelectRequest};
//! use tower_account_pool::credential::NoCredential;
//! use tower_account_pool::store::{MemoryStore, StoreHandle};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::builder().account(Account::new("acct-1", NoCredential)).build()?;
//! let store = MemoryStore::new();
//! // Restores what the store holds, then writes changes in the background.
//! let handle = StoreHandle::start(&pool, store.clone()).await?;
//!
//! let lease = pool.select(&SelectRequest::default())?;
//! lease.report(Outcome::Success); // no I/O here: the writer picks it up
//!
//! handle.shutdown().await?; // flushes everything
//! assert_eq!(store.get("acct-1").unwrap().counters.successes, 1);
//! # Ok(()) }
//! ```
//!
//! # How state leaves the request path
//!
//! Selection and reports only touch the accounts' atomics, as without a store. The writer task
//! reads them on its own schedule:
//!
//! - **state changes** (rate limits, ejections, recoveries, ...) arrive through the pool's
//!   bounded, non-blocking event channel ([`Pool::subscribe`]) and wake the writer, which writes
//!   them within [`WriterConfig::coalesce`] (a lagging receiver just means "something changed");
//! - **counters** and every other field are compared with what was last written, every
//!   [`WriterConfig::interval`] (at most 1 s by default). The tick is never pushed back by
//!   traffic, so it is also the max-wait: steady traffic cannot starve a save;
//! - only accounts that changed are written, in batches of at most [`WriterConfig::max_batch`].
//!
//! A write that fails is logged (each distinct error once) and retried with backoff (capped at
//! [`WriterConfig::max_backoff`]); nothing is lost meanwhile, and requests never wait for the
//! store. [`StoreHandle::shutdown`] flushes everything.
//!
//! # Writes merge, never overwrite
//!
//! A process writes only what it changed since it last wrote or synced, with the time of each
//! event, and the store **merges** it with what it holds (in one atomic step: a mutex for the
//! memory and JSON stores, a transaction for SQLite, a compare-and-set for Redis), by the same
//! rules for every store:
//!
//! | field | merge rule |
//! |---|---|
//! | account-wide cooldown (`rate_limited`, `quota_exhausted`, `ejected`, `suspended`) | the later deadline wins (a suspension has none: it wins until a reset); one that began before the latest reset is void |
//! | automatic state (`healthy` after a cooldown or a probe, credential states) | never ends a cooldown before its deadline; replaces a cooldown that has ended |
//! | per-model cooldowns | by model, the later deadline wins; ended ones, and those that began before the latest reset, are dropped |
//! | operator reset ([`Pool::reset`]) | the newest wins; it ends every cooldown (account-wide and per model) that began before it |
//! | successful active probe ([`Pool::report_probe`] ending a suspension or an ejection) | the newest wins; it ends every account-wide cooldown that began before it (the account answered) |
//! | operator enable / disable ([`Pool::enable`], [`Pool::disable`]) | the newest wins; automatic state never changes it, until the operator does again |
//! | counters | increments since the process's last write, added (so several processes add up exactly); the totals are folded back into each process |
//! | last use / last error | the latest |
//!
//! **Restoring is not a change**: what a process restores at start is not written back, so a
//! replica that restarts never erases what the others wrote since. Every change made since the
//! pool was built is written, including one made between [`StoreHandle::start`] and the first
//! write (an operator's disable right after the start reaches the store).
//!
//! Shared stores also report changes made by other processes ([`Store::poll_changes`], every
//! [`WriterConfig::sync_interval`], or now with [`StoreHandle::sync`]); they are applied by the
//! same rules (a newer reset, a cooldown with a later deadline, a newer operator enable or
//! disable), so a cooldown set by one process is honoured by the others within about a second.
//! Credential states (`auth_expired`, `auth_invalid`) stay local: each process refreshes its
//! own credentials, and a cooldown learnt while an account waits on its credential is not
//! applied there.
//!
//! # Stores
//!
//! - [`MemoryStore`]: in-process (the default; tests, and a pool that needs no persistence).
//! - [`JsonFileStore`]: the pool file itself, one writing process.
//! - `SqliteStore` (feature `sqlite`): one host, several processes; reads and writes the older
//!   gateway's databases (which can also be the source of the accounts:
//!   `config::SqlitePool`).
//! - `RedisStore` (feature `redis`): several hosts.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::account::AccountId;
use crate::health::{HealthState, OutcomeClass, Runtime, NEVER};
use crate::pool::{Counters, PersistedState, Pool, Slot};

mod json;
mod merge;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;
mod time;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisConfig, RedisStore};
pub use json::{JsonFileStore, POOL_STATE_KEY};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::{MigrationReport, SchemaVersion, SqliteStore, STATE_TABLE, V1_PROVIDER_TYPE};

/// An error from a store. Messages name the file or server, never a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// Another process holds the pool file open for writing.
    #[error(
        "pool file `{path}` is already open for writing by another process (lock `{lock}` is held); \
         a JSON pool file has a single writer: to share a pool between processes use the SQLite \
         store (one host) or the Redis store (several hosts)"
    )]
    Locked {
        /// The pool file.
        path: String,
        /// The lock file.
        lock: String,
    },
    /// The file does not parse or has an unknown shape; it is left untouched.
    #[error("{path}: {message}; the file was not modified")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong, with line and column when known.
        message: String,
    },
    /// A database error.
    #[error("{0}")]
    Database(String),
    /// The store's schema cannot be used as it is.
    #[error("{0}")]
    Schema(String),
    /// The store could not be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The writer has stopped.
    #[error("the store writer has stopped")]
    Stopped,
}

/// One account's state as a store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAccount {
    /// The account.
    pub id: AccountId,
    /// Its state; `counters` are the store's totals.
    pub state: PersistedState,
}

/// One account's changes since the last successful write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountWrite {
    /// The account.
    pub id: AccountId,
    /// Its current state; `counters` are this process's view of the totals.
    pub state: PersistedState,
    /// Whether the health state, reason, deadline, failure count or ejection level changed
    /// (stores merge the state by the module's rules, so a stale one never wins).
    pub state_changed: bool,
    /// Whether this process's model cooldowns changed (one was added or extended, or a reset
    /// cleared them). Stores merge them with what they hold, by model, the later deadline
    /// winning; a newer reset (`state.reset_at`) drops those that began before it.
    pub models_changed: bool,
    /// Counter increments since the last successful write: stores shared by several processes
    /// add these rather than writing `state.counters`.
    pub delta: Counters,
    /// The account's `enabled` setting.
    pub enabled: bool,
    /// Whether an operator enabled or disabled the account in this process since the last
    /// write (`state.enabled` and `state.enabled_at` say how and when).
    pub enabled_changed: bool,
    /// The account's settings, when they changed in this process since the last write (the
    /// admin API, a reload) or the store does not hold the account yet. Stores that keep the
    /// configuration (the older system's SQLite database) write them back.
    pub settings: Option<crate::account::AccountSettings>,
    /// The account's credential, for an account the store does not hold yet, in the form a
    /// configuration store (the older system's database) keeps it.
    pub credential: Option<CredentialConfig>,
}

/// An account's credential as a configuration store writes it into a new account's row (the
/// older system kept them in its `config` JSON). `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialConfig {
    /// A credential file (`KIRO_OAUTH_CREDS_FILE_PATH`).
    File(String),
    /// An inline bearer token (`bearerToken`).
    BearerToken(String),
    /// An inline API key (`apiKey`) and its header (`headerName`).
    ApiKey {
        /// The header.
        header: String,
        /// The key.
        key: String,
    },
}

impl std::fmt::Debug for CredentialConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialConfig::File(path) => f.debug_tuple("File").field(path).finish(),
            CredentialConfig::BearerToken(_) => f.write_str("BearerToken(..)"),
            CredentialConfig::ApiKey { header, .. } => f
                .debug_struct("ApiKey")
                .field("header", header)
                .finish_non_exhaustive(),
        }
    }
}

impl CredentialConfig {
    /// The configuration of a pool's credential: its file, or its inline secret (as it would
    /// send it). `None` for credentials that are neither (no credential, or one built in code).
    pub(crate) fn of(credential: &crate::credential::SharedCredential) -> Option<Self> {
        if let Some(path) = credential.masked().path {
            return Some(CredentialConfig::File(path));
        }
        let mut headers = http::HeaderMap::new();
        match credential.kind() {
            "bearer" => {
                credential.apply(&mut headers).ok()?;
                let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
                let token = value.strip_prefix("Bearer ")?;
                Some(CredentialConfig::BearerToken(token.to_owned()))
            }
            "api-key" => {
                credential.apply(&mut headers).ok()?;
                let (name, value) = headers.iter().next()?;
                Some(CredentialConfig::ApiKey {
                    header: name.as_str().to_owned(),
                    key: value.to_str().ok()?.to_owned(),
                })
            }
            _ => None,
        }
    }
}

/// Counter totals of one account after a write to a shared store.
pub type CounterTotals = Vec<(AccountId, Counters)>;

/// Where a pool's runtime state is kept. Implementations do their I/O off the caller's thread
/// (the writer task awaits them; blocking stores use `spawn_blocking`).
pub trait Store: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// Everything the store holds, read once at start.
    fn load(&self) -> impl Future<Output = Result<Vec<StoredAccount>, StoreError>> + Send;

    /// Writes one batch atomically where the store can. Shared stores return the counter totals
    /// after the write (so other processes' increments are folded in); others return nothing.
    fn write(
        &self,
        batch: Vec<AccountWrite>,
    ) -> impl Future<Output = Result<CounterTotals, StoreError>> + Send;

    /// Accounts changed by other processes since the last call (`ids`: the pool's accounts).
    /// Stores with a single writer return nothing.
    fn poll_changes(
        &self,
        ids: Vec<AccountId>,
    ) -> impl Future<Output = Result<Vec<StoredAccount>, StoreError>> + Send {
        let _ = ids;
        async { Ok(Vec::new()) }
    }

    /// Housekeeping run every [`WriterConfig::maintenance_interval`] (e.g. pruning history).
    fn maintain(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
}

// ===== MemoryStore =====

/// A store in process memory: the default, and a reference for the others. Clones share the
/// same data.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    accounts: Arc<Mutex<HashMap<AccountId, PersistedState>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// What the store holds for one account.
    pub fn get(&self, id: &str) -> Option<PersistedState> {
        self.lock().get(id).cloned()
    }

    /// Puts an account's state in the store (e.g. before a pool starts from it).
    pub fn insert(&self, id: impl Into<AccountId>, state: PersistedState) {
        self.lock().insert(id.into(), state);
    }

    /// Number of accounts held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, PersistedState>> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn load(&self) -> Result<Vec<StoredAccount>, StoreError> {
        Ok(self
            .lock()
            .iter()
            .map(|(id, state)| StoredAccount {
                id: id.clone(),
                state: state.clone(),
            })
            .collect())
    }

    async fn write(&self, batch: Vec<AccountWrite>) -> Result<CounterTotals, StoreError> {
        let mut accounts = self.lock();
        let now = std::time::SystemTime::now();
        let mut totals = Vec::with_capacity(batch.len());
        for write in batch {
            let stored = accounts.entry(write.id.clone()).or_default();
            merge::merge(stored, &write, now);
            totals.push((write.id, stored.counters));
        }
        Ok(totals)
    }
}

/// A health state from its `snake_case` label.
#[cfg_attr(not(any(feature = "sqlite", feature = "redis")), allow(dead_code))]
pub(crate) fn parse_state(label: &str) -> Option<HealthState> {
    use HealthState::*;
    [
        Healthy,
        RateLimited,
        QuotaExhausted,
        AuthExpired,
        AuthInvalid,
        Suspended,
        Ejected,
        HalfOpen,
        Disabled,
        ModelUnsupported,
    ]
    .into_iter()
    .find(|h| h.as_str() == label)
}

// ===== counters as arrays =====

const COUNTERS: usize = 1 + OutcomeClass::ALL.len();
type CounterArray = [u64; COUNTERS];

/// Model cooldowns as the SQLite and Redis stores keep them: a JSON array, `None` when empty.
#[cfg(any(feature = "sqlite", feature = "redis"))]
fn model_cooldowns_to_json(cooldowns: &[crate::pool::ModelCooldown]) -> Option<String> {
    (!cooldowns.is_empty()).then(|| serde_json::to_string(cooldowns).unwrap_or_default())
}

/// Reads what [`model_cooldowns_to_json`] wrote; anything unreadable is dropped with a warning
/// (a cooldown lost is a request that may be rate limited once more, never a failure).
#[cfg(any(feature = "sqlite", feature = "redis"))]
fn model_cooldowns_from_json(json: &str) -> Vec<crate::pool::ModelCooldown> {
    match serde_json::from_str(json) {
        Ok(cooldowns) => cooldowns,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring unreadable saved model cooldowns");
            Vec::new()
        }
    }
}

/// The stores' names of the counters, in array order (`requests`, then the outcome classes).
#[cfg(any(feature = "sqlite", feature = "redis"))]
const COUNTER_NAMES: [&str; COUNTERS] = [
    "requests",
    "successes",
    "client_errors",
    "rate_limited",
    "quota_exhausted",
    "auth_expired",
    "auth_invalid",
    "suspended",
    "model_unsupported",
    "transient",
    "cancelled",
];

fn counters_to_array(c: &Counters) -> CounterArray {
    std::array::from_fn(|i| match i {
        0 => c.requests,
        i => c.outcome(OutcomeClass::ALL[i - 1]),
    })
}

fn counters_from_array(a: &CounterArray) -> Counters {
    let mut counters = Counters {
        requests: a[0],
        ..Counters::default()
    };
    for (i, &class) in OutcomeClass::ALL.iter().enumerate() {
        *counters.outcome_mut(class) = a[i + 1];
    }
    counters
}

/// The counters in array order: `requests`, then the outcome classes in their order.
///
/// Stores keep *completed* requests (the sum of the outcomes): a request still in flight is
/// counted when it ends, so the totals of several processes add up exactly and folding another
/// process's outcomes into this one's counters keeps `requests` consistent.
fn read_counters(rt: &Runtime) -> CounterArray {
    let mut counters = [0; COUNTERS];
    for (i, outcome) in rt.outcomes.iter().enumerate() {
        counters[i + 1] = outcome.load(Ordering::Relaxed);
    }
    counters[0] = counters[1..].iter().sum();
    counters
}

// ===== writer =====

/// How the background writer batches and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterConfig {
    /// Every account that changed is written at least this often (the max-wait). Default 500 ms.
    pub interval: Duration,
    /// A state change is written this soon after it happens (changes within it share one
    /// write). Default 20 ms.
    pub coalesce: Duration,
    /// At most this many accounts per [`Store::write`]. Default 256.
    pub max_batch: usize,
    /// How often shared stores are asked for other processes' changes. Default 200 ms.
    pub sync_interval: Duration,
    /// How often [`Store::maintain`] runs (first run at start). Default 1 h.
    pub maintenance_interval: Duration,
    /// Longest wait between retries of a failing store. Default 5 s.
    pub max_backoff: Duration,
    /// Attempts of the final flush at shutdown. Default 3.
    pub shutdown_attempts: u32,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            interval: Duration::from_millis(500),
            coalesce: Duration::from_millis(20),
            max_batch: 256,
            sync_interval: Duration::from_millis(200),
            maintenance_interval: Duration::from_secs(60 * 60),
            max_backoff: Duration::from_secs(5),
            shutdown_attempts: 3,
        }
    }
}

impl WriterConfig {
    /// Sets [`interval`](Self::interval).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets [`coalesce`](Self::coalesce).
    pub fn coalesce(mut self, coalesce: Duration) -> Self {
        self.coalesce = coalesce;
        self
    }

    /// Sets [`shutdown_attempts`](Self::shutdown_attempts) (at least 1).
    pub fn shutdown_attempts(mut self, attempts: u32) -> Self {
        self.shutdown_attempts = attempts.max(1);
        self
    }

    /// Sets [`max_batch`](Self::max_batch) (at least 1).
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// Sets [`sync_interval`](Self::sync_interval).
    pub fn sync_interval(mut self, sync_interval: Duration) -> Self {
        self.sync_interval = sync_interval;
        self
    }

    /// Sets [`maintenance_interval`](Self::maintenance_interval).
    pub fn maintenance_interval(mut self, maintenance_interval: Duration) -> Self {
        self.maintenance_interval = maintenance_interval;
        self
    }

    /// Sets [`max_backoff`](Self::max_backoff).
    pub fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }
}

/// What the writer has done so far, from [`StoreHandle::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Successful [`Store::write`] calls.
    pub writes: u64,
    /// Account records written.
    pub accounts_written: u64,
    /// Failed writes (each was retried).
    pub failures: u64,
    /// State changes from other processes applied here.
    pub remote_changes: u64,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
}

enum Command {
    Wake,
    Flush(oneshot::Sender<Result<(), String>>),
    Sync(oneshot::Sender<Result<(), String>>),
}

/// The running writer of one pool into one store. Dropping it stops the writer after a final
/// flush in the background; call [`shutdown`](Self::shutdown) to wait for that flush.
#[derive(Debug)]
pub struct StoreHandle {
    commands: mpsc::Sender<Command>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), StoreError>>>,
    stats: Arc<Mutex<WriterStats>>,
}

impl StoreHandle {
    /// Restores the pool's accounts from `store`, then starts writing their changes to it with
    /// the default [`WriterConfig`]. Must be called inside a tokio runtime.
    pub async fn start<S: Store>(pool: &Pool, store: S) -> Result<StoreHandle, StoreError> {
        StoreHandle::start_with(pool, store, WriterConfig::default()).await
    }

    /// [`start`](Self::start) with a configuration.
    pub async fn start_with<S: Store>(
        pool: &Pool,
        store: S,
        config: WriterConfig,
    ) -> Result<StoreHandle, StoreError> {
        let loaded = store.load().await?;
        let mut writer = Writer {
            pool: pool.clone(),
            store,
            config,
            tracked: HashMap::new(),
            stats: Arc::new(Mutex::new(WriterStats::default())),
            logged_error: None,
        };
        let roster = pool.shared.roster.load_full();
        let mut stored: HashMap<AccountId, StoredAccount> =
            loaded.into_iter().map(|a| (a.id.clone(), a)).collect();
        for slot in roster.slots.iter() {
            let Some(saved) = stored.remove(&slot.id) else {
                // Not in the store: written once in full, every change since it was built
                // included.
                let mut tracked = Tracked::observe(slot);
                tracked.fresh = true;
                writer.tracked.insert(slot.id.clone(), tracked);
                continue;
            };
            // Restoring is not a change: what the store holds is applied here and not written
            // back. Changes made in this process before the start (an operator's disable, a
            // cooldown) are kept, merged with it, and written.
            let local_events = has_local_events(slot);
            let before = Tracked::observe(slot);
            // Requests counted here before the start (beyond what a pool file seeded) are
            // increments on the stored totals.
            let restored = slot.runtime.lock_details().restored_outcomes;
            let local_counts: Vec<u64> = OutcomeClass::ALL
                .iter()
                .map(|&class| {
                    slot.runtime.outcomes[class as usize]
                        .load(Ordering::Relaxed)
                        .saturating_sub(restored[class as usize])
                })
                .collect();
            if local_events {
                join_remote(pool, slot, &saved.state);
            } else {
                if let Err(e) = pool.restore_state(saved.id.as_str(), &saved.state) {
                    tracing::warn!(account = %saved.id, error = %e, "could not restore the stored state");
                    continue;
                }
                join_remote(
                    pool,
                    slot,
                    &PersistedState {
                        model_cooldowns: Vec::new(),
                        state: HealthState::Healthy,
                        ..saved.state.clone()
                    },
                );
            }
            let slot = pool.slot(slot.id.as_str()).unwrap_or_else(|_| slot.clone());
            for (&class, local) in OutcomeClass::ALL.iter().zip(&local_counts) {
                slot.runtime.outcomes[class as usize].store(
                    saved.state.counters.outcome(class).saturating_add(*local),
                    Ordering::Relaxed,
                );
            }
            let mut tracked = Tracked::observe(&slot);
            // The stored totals: what was counted here before the start is written as an
            // increment at the first flush.
            tracked.baseline = counters_to_array(&saved.state.counters);
            if local_events {
                // Written at the first flush (merged with the store's state there).
                tracked.generation = before.generation.wrapping_sub(1);
                tracked.model_epoch = before.model_epoch.wrapping_sub(1);
                tracked.enabled_ms = merge::ms(&saved.state.enabled_at);
            }
            writer.tracked.insert(saved.id.clone(), tracked);
        }
        drop(roster);
        let (commands, receiver) = mpsc::channel(16);
        let (stop, stopped) = oneshot::channel();
        let mut events = pool.subscribe();
        let wake = commands.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        if wake.try_send(Command::Wake).is_err() && wake.is_closed() {
                            return;
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        // `Pool::shutdown` flushes through a weak sender: the pool never keeps a writer alive.
        let flush_commands = commands.downgrade();
        let name = writer.store.name();
        pool.shared
            .flushers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(move || {
                let commands = flush_commands.upgrade();
                Box::pin(async move {
                    let Some(commands) = commands else {
                        return Ok(()); // stopped, after its final flush
                    };
                    let (reply, answer) = oneshot::channel();
                    if commands.send(Command::Flush(reply)).await.is_err() {
                        return Ok(());
                    }
                    answer
                        .await
                        .unwrap_or(Ok(()))
                        .map_err(|e| format!("`{name}` could not write: {e}"))
                })
            }));
        let stats = writer.stats.clone();
        let task = tokio::spawn(writer.run(receiver, stopped));
        Ok(StoreHandle {
            commands,
            stop: Some(stop),
            task: Some(task),
            stats,
        })
    }

    /// Writes everything that changed now, and waits for the write.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.ask(Command::Flush).await
    }

    /// Applies the changes other processes wrote to a shared store now, and waits for that
    /// (it otherwise happens every [`WriterConfig::sync_interval`]).
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.ask(Command::Sync).await
    }

    /// Sends the writer a command that answers when done, and waits for the answer.
    async fn ask(
        &self,
        command: fn(oneshot::Sender<Result<(), String>>) -> Command,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| StoreError::Stopped)?;
        answer
            .await
            .map_err(|_| StoreError::Stopped)?
            .map_err(StoreError::Unavailable)
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> WriterStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the writer after a final flush (retried up to
    /// [`WriterConfig::shutdown_attempts`] times) and returns its result.
    pub async fn shutdown(mut self) -> Result<(), StoreError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(|_| StoreError::Stopped)?,
            None => Ok(()),
        }
    }
}

impl Drop for StoreHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What the writer knows about one account: the values last written to (or learnt from) the
/// store, so that only what this process changed since is written.
#[derive(Debug)]
struct Tracked {
    /// Counter values already in the store.
    baseline: CounterArray,
    generation: u64,
    failures: u32,
    ejection_level: u32,
    /// The runtime's `model_epoch` last written.
    model_epoch: u64,
    /// The operator's last enable or disable written (wall epoch ms; 0: none).
    enabled_ms: u64,
    /// The settings last written or seen.
    settings: crate::account::AccountSettings,
    /// The store does not hold the account yet: written once in full.
    fresh: bool,
}

impl Tracked {
    fn observe(slot: &Slot) -> Tracked {
        let rt = &slot.runtime;
        Tracked {
            baseline: [0; COUNTERS],
            generation: rt.generation.load(Ordering::Acquire),
            failures: rt.consecutive_failures.load(Ordering::Acquire),
            ejection_level: rt.ejection_level.load(Ordering::Acquire),
            model_epoch: rt.model_epoch.load(Ordering::Acquire),
            enabled_ms: rt.lock_details().enabled_ms,
            settings: slot.settings.clone(),
            fresh: false,
        }
    }

    /// Takes the account's current values as written (after applying what the store holds).
    fn resync(&mut self, slot: &Slot) {
        let baseline = self.baseline;
        let fresh = self.fresh;
        *self = Tracked::observe(slot);
        self.baseline = baseline;
        self.fresh = fresh;
    }

    fn state_changed(&self, slot: &Slot) -> bool {
        let rt = &slot.runtime;
        self.generation != rt.generation.load(Ordering::Acquire)
            || self.failures != rt.consecutive_failures.load(Ordering::Acquire)
            || self.ejection_level != rt.ejection_level.load(Ordering::Acquire)
    }

    fn models_changed(&self, slot: &Slot) -> bool {
        self.model_epoch != slot.runtime.model_epoch.load(Ordering::Acquire)
    }

    fn enabled_changed(&self, slot: &Slot) -> bool {
        self.enabled_ms != slot.runtime.lock_details().enabled_ms
    }

    fn pending(&self, slot: &Slot) -> bool {
        self.state_changed(slot) || self.models_changed(slot) || self.enabled_changed(slot)
    }
}

/// Whether an account holds a change made in this process (an event with a time: a cooldown,
/// a reset, an operator's enable or disable), as opposed to state seeded from a file.
fn has_local_events(slot: &Slot) -> bool {
    let rt = &slot.runtime;
    let details = rt.lock_details();
    let events = details.since_ms != 0
        || details.reset_ms != 0
        || details.recovered_ms != 0
        || details.enabled_ms != 0;
    drop(details);
    events
        || rt
            .model_blocks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|b| b.since_ms != 0)
}

struct Pending {
    write: AccountWrite,
    counters: CounterArray,
    generation: u64,
    failures: u32,
    ejection_level: u32,
    model_epoch: u64,
    enabled_ms: u64,
}

struct Writer<S> {
    pool: Pool,
    store: S,
    config: WriterConfig,
    tracked: HashMap<AccountId, Tracked>,
    stats: Arc<Mutex<WriterStats>>,
    /// The last write error logged (each distinct one is logged once).
    logged_error: Option<String>,
}

impl<S: Store> Writer<S> {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut stop: oneshot::Receiver<()>,
    ) -> Result<(), StoreError> {
        let config = self.config.clone();
        let start = Instant::now();
        let mut next_flush = start + config.interval;
        let mut next_sync = start + config.sync_interval;
        let mut next_maintenance = start;
        let mut failures: u32 = 0;
        let mut retry_at = start;
        loop {
            let deadline = next_flush.min(next_sync).min(next_maintenance);
            let command = tokio::time::timeout_at(deadline, async {
                // Wait for a command or the stop signal, whichever comes first.
                let mut stop = std::pin::Pin::new(&mut stop);
                std::future::poll_fn(|cx| {
                    use std::task::Poll;
                    if stop.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    match commands.poll_recv(cx) {
                        Poll::Ready(Some(command)) => Poll::Ready(Some(command)),
                        Poll::Ready(None) => Poll::Ready(None),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await
            })
            .await;
            let now = Instant::now();
            match command {
                Ok(None) => break,
                Ok(Some(Command::Wake)) => {
                    next_flush = next_flush.min((now + config.coalesce).max(retry_at));
                    continue;
                }
                Ok(Some(Command::Flush(reply))) => {
                    let result = self.flush().await;
                    self.record(&result);
                    let _ = reply.send(result.map_err(|e| e.to_string()));
                    continue;
                }
                Ok(Some(Command::Sync(reply))) => {
                    let result = self.sync().await;
                    let _ = reply.send(result.map_err(|e| e.to_string()));
                    continue;
                }
                Err(_elapsed) => {}
            }
            if now >= next_maintenance {
                if let Err(e) = self.store.maintain().await {
                    tracing::warn!(store = self.store.name(), error = %e, "store maintenance failed");
                }
                next_maintenance = now + config.maintenance_interval;
            }
            if now >= next_sync {
                if let Err(e) = self.sync().await {
                    tracing::debug!(store = self.store.name(), error = %e, "polling the store for changes failed");
                }
                next_sync = Instant::now() + config.sync_interval;
            }
            if now >= next_flush {
                let result = self.flush().await;
                self.record(&result);
                match result {
                    Ok(()) => {
                        if failures > 0 {
                            tracing::info!(store = self.store.name(), "store writes work again");
                        }
                        failures = 0;
                        self.logged_error = None;
                        next_flush = Instant::now() + config.interval;
                    }
                    Err(e) => {
                        failures += 1;
                        let backoff = config
                            .interval
                            .saturating_mul(1 << failures.min(10))
                            .min(config.max_backoff)
                            .max(config.interval);
                        // Each distinct error is logged once (a file waiting to be fixed
                        // would otherwise log on every retry).
                        let message = e.to_string();
                        if self.logged_error.as_deref() != Some(message.as_str()) {
                            tracing::warn!(
                                store = self.store.name(), error = %e, attempt = failures,
                                retry_in_ms = backoff.as_millis() as u64,
                                "store write failed; the changes are kept and retried"
                            );
                            self.logged_error = Some(message);
                        }
                        retry_at = Instant::now() + backoff;
                        next_flush = retry_at;
                    }
                }
            }
        }
        // Final flush.
        let mut last = Ok(());
        for attempt in 0..config.shutdown_attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(config.interval.min(Duration::from_millis(200))).await;
            }
            last = self.flush().await;
            self.record(&last);
            if last.is_ok() {
                break;
            }
        }
        if let Err(e) = &last {
            tracing::error!(store = self.store.name(), error = %e, "final flush failed; recent state changes are lost");
        }
        last
    }

    fn record(&self, result: &Result<(), StoreError>) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => stats.last_error = None,
            Err(e) => {
                stats.failures += 1;
                stats.last_error = Some(e.to_string());
            }
        }
    }

    /// Writes every account that changed since its last successful write.
    async fn flush(&mut self) -> Result<(), StoreError> {
        let shared = self.pool.shared.clone();
        let roster = shared.roster.load_full();
        let now = shared.clock.now_ms();
        let mut pending = Vec::new();
        for slot in &roster.slots {
            let tracked = self.tracked.entry(slot.id.clone()).or_insert_with(|| {
                // Added since the start: unknown to the store until written.
                let mut t = Tracked::observe(slot);
                t.fresh = true;
                t
            });
            let rt = &slot.runtime;
            let generation = rt.generation.load(Ordering::Acquire);
            let failures = rt.consecutive_failures.load(Ordering::Acquire);
            let ejection_level = rt.ejection_level.load(Ordering::Acquire);
            let model_epoch = rt.model_epoch.load(Ordering::Acquire);
            let enabled_ms = rt.lock_details().enabled_ms;
            let fresh = tracked.fresh;
            let state_changed = tracked.state_changed(slot) || fresh;
            let models_changed = tracked.models_changed(slot) || fresh;
            let enabled_changed = tracked.enabled_ms != enabled_ms;
            let settings_changed = tracked.settings != slot.settings || fresh;
            let counters = read_counters(rt);
            if !state_changed
                && !models_changed
                && !enabled_changed
                && !settings_changed
                && counters == tracked.baseline
            {
                continue;
            }
            let delta: CounterArray =
                std::array::from_fn(|i| counters[i].saturating_sub(tracked.baseline[i]));
            let mut state = shared.persisted(slot, now);
            state.counters = counters_from_array(&counters);
            pending.push(Pending {
                write: AccountWrite {
                    id: slot.id.clone(),
                    state,
                    state_changed,
                    models_changed,
                    delta: counters_from_array(&delta),
                    enabled: slot.settings.enabled,
                    enabled_changed,
                    settings: settings_changed.then(|| slot.settings.clone()),
                    // The credential of an account new to the store; an existing row keeps
                    // the one it names.
                    credential: fresh
                        .then(|| CredentialConfig::of(&slot.credential))
                        .flatten(),
                },
                counters,
                generation,
                failures,
                ejection_level,
                model_epoch,
                enabled_ms,
            });
        }
        // Accounts no longer in the pool: forgotten, so that one added again is new again.
        self.tracked.retain(|id, _| roster.index.contains_key(id));
        for chunk in pending.chunks(self.config.max_batch.max(1)) {
            let batch: Vec<AccountWrite> = chunk.iter().map(|p| p.write.clone()).collect();
            let totals = self.store.write(batch).await?;
            for p in chunk {
                if let Some(tracked) = self.tracked.get_mut(&p.write.id) {
                    tracked.baseline = p.counters;
                    tracked.generation = p.generation;
                    tracked.failures = p.failures;
                    tracked.ejection_level = p.ejection_level;
                    tracked.model_epoch = p.model_epoch;
                    tracked.enabled_ms = p.enabled_ms;
                    if let Some(settings) = &p.write.settings {
                        tracked.settings = settings.clone();
                    }
                    tracked.fresh = false;
                }
            }
            for (id, totals) in totals {
                if let Some(slot) = roster.get(id.as_str()) {
                    self.fold(slot, &totals);
                }
            }
            let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            stats.writes += 1;
            stats.accounts_written += chunk.len() as u64;
        }
        Ok(())
    }

    /// Adds other processes' increments (the store's totals minus what this process knows to
    /// be there) to the local counters.
    fn fold(&mut self, slot: &Slot, totals: &Counters) {
        let Some(tracked) = self.tracked.get_mut(&slot.id) else {
            return;
        };
        let totals = counters_to_array(totals);
        for (i, (&total, known)) in totals.iter().zip(tracked.baseline.iter_mut()).enumerate() {
            if total > *known {
                // `requests` follows from the outcomes folded in beside it.
                if i > 0 {
                    slot.runtime.outcomes[i - 1].fetch_add(total - *known, Ordering::Relaxed);
                }
                *known = total;
            }
        }
    }

    /// Applies other processes' changes.
    async fn sync(&mut self) -> Result<(), StoreError> {
        let shared = self.pool.shared.clone();
        let roster = shared.roster.load_full();
        let ids = roster.slots.iter().map(|s| s.id.clone()).collect();
        let changes = self.store.poll_changes(ids).await?;
        let mut applied = 0;
        for change in changes {
            let Some(slot) = roster.get(change.id.as_str()).cloned() else {
                continue;
            };
            self.fold(&slot, &change.state.counters);
            let Some(tracked) = self.tracked.get(&slot.id) else {
                continue;
            };
            // A local change still to be written stays pending (and is merged when written).
            let pending = tracked.pending(&slot);
            if join_remote(&self.pool, &slot, &change.state) {
                applied += 1;
            }
            let slot = self.pool.slot(slot.id.as_str()).unwrap_or(slot);
            let (state_missing, models_missing) = missing_from(&self.pool, &slot, &change.state);
            if let Some(tracked) = self.tracked.get_mut(&slot.id) {
                if !pending {
                    tracked.resync(&slot);
                }
                // A cooldown this process holds that the store does not (it lost to one that
                // a probe ended since, say): written again, so that every process has it.
                if state_missing {
                    tracked.generation = tracked.generation.wrapping_sub(1);
                }
                if models_missing {
                    tracked.model_epoch = tracked.model_epoch.wrapping_sub(1);
                }
            }
        }
        if applied > 0 {
            self.stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remote_changes += applied;
        }
        Ok(())
    }
}

/// Whether this process holds an account-wide cooldown, or a model cooldown, with a later
/// deadline than what the store holds (after [`join_remote`], so none of them is void).
fn missing_from(pool: &Pool, slot: &Slot, remote: &PersistedState) -> (bool, bool) {
    use merge::{deadline, is_cooldown, ms, voided};
    let shared = &pool.shared;
    let rt = &slot.runtime;
    let now = shared.clock.now_ms();
    let slack = 500;
    let remote_deadline = if voided(remote, ms(&remote.reset_at), ms(&remote.recovered_at)) {
        0
    } else {
        deadline(remote)
    };
    let local_deadline = match rt.state() {
        HealthState::Suspended => u64::MAX,
        s if is_cooldown(s) => {
            let until = rt.until_ms.load(Ordering::Acquire);
            if until > now {
                ms(&shared.clock.wall(until, now))
            } else {
                0
            }
        }
        _ => 0,
    };
    let state_missing = local_deadline > remote_deadline.saturating_add(slack);
    let models_missing = rt
        .model_blocks
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|b| b.until_ms > now)
        .any(|b| {
            let local = ms(&shared.clock.wall(b.until_ms, now));
            let stored = remote
                .model_cooldowns
                .iter()
                .filter(|c| *c.model == *b.model)
                .map(|c| ms(&c.until))
                .max()
                .unwrap_or(0);
            local > stored.saturating_add(slack)
        });
    (state_missing, models_missing)
}

/// Applies what a store holds for an account (written by other processes, merged by the
/// store) to this process's state, by the same rules the store merges by: a newer reset ends
/// the cooldowns that began before it; a cooldown with a later deadline than the local one
/// applies (credential states and a probe in flight stay local); model cooldowns merge by
/// model, the later deadline winning; a newer operator enable or disable applies. Returns
/// whether anything changed.
fn join_remote(pool: &Pool, slot: &Arc<Slot>, remote: &PersistedState) -> bool {
    use merge::{deadline, is_cooldown, ms, voided};
    let shared = &pool.shared;
    let rt = &slot.runtime;
    let mut changed = false;
    let remote_reset = ms(&remote.reset_at);
    let remote_recovered = ms(&remote.recovered_at);
    let (since, reset, recovered, enabled_ms) = {
        let d = rt.lock_details();
        (d.since_ms, d.reset_ms, d.recovered_ms, d.enabled_ms)
    };
    let reset_all = reset.max(remote_reset);
    let recovered_all = recovered.max(remote_recovered);
    // Resets made elsewhere.
    if remote_reset > reset {
        rt.lock_details().reset_ms = remote_reset;
        {
            let mut blocks = rt.model_blocks.write().unwrap_or_else(|e| e.into_inner());
            let before = blocks.len();
            blocks.retain(|b| b.since_ms > remote_reset);
            if blocks.len() != before {
                rt.publish_model_deadline(&blocks);
                rt.model_epoch.fetch_add(1, Ordering::AcqRel);
                changed = true;
            }
        }
        // An operator's reset ends everything that began before it (as `Pool::reset` does
        // here), credential states included.
        if rt.state() != HealthState::Healthy && since <= remote_reset {
            rt.consecutive_failures.store(0, Ordering::Release);
            rt.ejection_level.store(0, Ordering::Release);
            rt.rate_limit_level.store(0, Ordering::Release);
            rt.quota_level.store(0, Ordering::Release);
            shared.transition_since(
                slot,
                HealthState::Healthy,
                0,
                "reset by operator (in another process)".into(),
                Some(remote_reset),
            );
            changed = true;
        }
    }
    if remote_recovered > recovered {
        rt.lock_details().recovered_ms = remote_recovered;
        if is_cooldown(rt.state()) && since <= remote_recovered {
            rt.consecutive_failures.store(0, Ordering::Release);
            rt.ejection_level.store(0, Ordering::Release);
            shared.transition_since(
                slot,
                HealthState::Healthy,
                0,
                "probe succeeded (in another process)".into(),
                Some(remote_recovered),
            );
            changed = true;
        }
    }
    // Model cooldowns set after the latest reset.
    let now = shared.clock.now_ms();
    let models: Vec<_> = remote
        .model_cooldowns
        .iter()
        .filter(|c| reset_all == 0 || ms(&c.since) > reset_all)
        .cloned()
        .collect();
    if shared.merge_model_cooldowns(slot, &models, now).is_some() {
        changed = true;
    }
    // The account-wide cooldown with the later deadline.
    let local = rt.state();
    let wall_now = time::epoch_ms(&std::time::SystemTime::now());
    if is_cooldown(remote.state)
        && !voided(remote, reset_all, recovered_all)
        && deadline(remote) > wall_now
        && !matches!(
            local,
            HealthState::AuthExpired | HealthState::AuthInvalid | HealthState::HalfOpen
        )
    {
        let local_until = rt.until_ms.load(Ordering::Acquire);
        let local_deadline = match local {
            HealthState::Suspended => u64::MAX,
            HealthState::RateLimited | HealthState::QuotaExhausted | HealthState::Ejected => {
                ms(&shared.clock.wall(local_until, now))
            }
            _ => 0,
        };
        if deadline(remote) > local_deadline.saturating_add(500) {
            let until = match remote.until {
                _ if remote.state == HealthState::Suspended => NEVER,
                Some(at) => shared.clock.deadline(at, now),
                None => now,
            };
            rt.ejection_level
                .store(remote.ejection_level, Ordering::Release);
            let reason = remote
                .reason
                .clone()
                .unwrap_or_else(|| format!("{} (set by another process)", remote.state));
            shared.transition_since(slot, remote.state, until, reason, Some(ms(&remote.since)));
            changed = true;
        }
    }
    // The operator's latest enable or disable.
    if let (Some(enabled), at) = (remote.enabled, ms(&remote.enabled_at)) {
        if at > enabled_ms {
            rt.lock_details().enabled_ms = at;
            if slot.settings.enabled != enabled {
                let _ = pool.update_settings(slot.id.as_str(), |s| s.enabled = enabled);
                let (from, to) = if enabled {
                    (HealthState::Disabled, rt.state())
                } else {
                    (rt.state(), HealthState::Disabled)
                };
                let what = if enabled { "enabled" } else { "disabled" };
                shared.emit(
                    slot,
                    from,
                    to,
                    None,
                    format!("{what} by operator (in another process)"),
                    None,
                );
                changed = true;
            }
        }
    }
    changed
}
