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
//! Counters are written as **increments** since the last successful write, so stores shared by
//! several processes (SQLite, Redis) add up every process's traffic exactly; the totals a shared
//! store returns are folded back into the local counters with atomic additions. A write that
//! fails is logged and retried with backoff (capped at [`WriterConfig::max_backoff`]); nothing is
//! lost meanwhile, and requests never wait for the store. [`StoreHandle::shutdown`] flushes
//! everything.
//!
//! Shared stores also report changes made by other processes ([`Store::poll_changes`], every
//! [`WriterConfig::sync_interval`]): account-wide cooldowns, ejections, suspensions and
//! recoveries are applied locally, so a cooldown set by one process is honoured by the others.
//! Credential states (`auth_expired`, `auth_invalid`) stay local: each process refreshes its
//! own credentials. Per-(account, model) cooldowns are not persisted. An account added to the
//! pool after the start never overwrites the state a shared store holds for it; it picks that
//! state up with the next change another process writes (SQLite) or the next full sync (Redis,
//! every 5 s).
//!
//! # Stores
//!
//! - [`MemoryStore`]: in-process (the default; tests, and a pool that needs no persistence).
//! - [`JsonFileStore`]: the pool file itself, one writing process.
//! - `SqliteStore` (feature `sqlite`): one host, several processes; reads and writes the older
//!   gateway's databases.
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
use crate::pool::{Counters, PersistedState, Pool, Shared, Slot};

mod json;
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
    /// Whether the health state, reason, deadline, failure count or ejection level changed.
    pub state_changed: bool,
    /// Whether this process's model cooldowns changed (one was added or extended, or a reset
    /// cleared them: then `state.model_cooldowns` is empty). Shared stores merge them with
    /// what they hold, by model, the later deadline winning; an empty list clears them.
    pub models_changed: bool,
    /// Counter increments since the last successful write: stores shared by several processes
    /// add these rather than writing `state.counters`.
    pub delta: Counters,
    /// The account's `enabled` setting.
    pub enabled: bool,
    /// Whether `enabled` changed in this process since the last write (settings are otherwise
    /// left to whoever edits them).
    pub enabled_changed: bool,
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
        for write in batch {
            accounts.insert(write.id, write.state);
        }
        Ok(Vec::new())
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

/// The model cooldowns a shared store keeps after a write of `local` from one process over
/// `stored`: by model, the later deadline wins; ended ones are dropped. An empty `local`
/// (a reset) clears them.
#[cfg(feature = "sqlite")]
fn merge_cooldown_lists(
    stored: Vec<crate::pool::ModelCooldown>,
    local: &[crate::pool::ModelCooldown],
    now: std::time::SystemTime,
) -> Vec<crate::pool::ModelCooldown> {
    if local.is_empty() {
        return Vec::new();
    }
    let mut merged: Vec<crate::pool::ModelCooldown> = Vec::new();
    for cooldown in stored.into_iter().chain(local.iter().cloned()) {
        if cooldown.until.is_none_or(|until| until <= now) {
            continue;
        }
        match merged.iter_mut().find(|c| c.model == cooldown.model) {
            Some(kept) if kept.until >= cooldown.until => {}
            Some(kept) => *kept = cooldown,
            None => merged.push(cooldown),
        }
    }
    merged
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
        };
        for saved in loaded {
            let Ok(slot) = pool.slot(saved.id.as_str()) else {
                continue;
            };
            if let Err(e) = pool.restore_state(saved.id.as_str(), &saved.state) {
                tracing::warn!(account = %saved.id, error = %e, "could not restore the stored state");
                continue;
            }
            let mut tracked = Tracked::observe(&slot);
            tracked.baseline = counters_to_array(&saved.state.counters);
            tracked.written = Some(StateKey::of(&saved.state));
            // Written once in full at the first flush (e.g. a file in the older format gets this
            // crate's fields).
            tracked.fresh = true;
            tracked.loaded = true;
            writer.tracked.insert(saved.id.clone(), tracked);
        }
        // The others are watched from now on (so that other processes' changes to them are
        // applied before their first write), counting every change since they were created.
        for slot in pool.shared.roster.load().slots.iter() {
            writer
                .tracked
                .entry(slot.id.clone())
                .or_insert_with(|| Tracked::unseen(slot));
        }
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
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Flush(reply))
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

/// The part of a state that is compared between processes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StateKey {
    state: HealthState,
    until_ms: Option<u64>,
}

impl StateKey {
    fn of(state: &PersistedState) -> StateKey {
        StateKey {
            state: state.state,
            until_ms: state.until.map(|t| time::epoch_ms(&t)),
        }
    }

    /// Equal up to clock conversions (deadlines are re-derived from wall time on each read).
    fn same(&self, other: &StateKey) -> bool {
        self.state == other.state
            && match (self.until_ms, other.until_ms) {
                (Some(a), Some(b)) => a.abs_diff(b) < 500,
                (a, b) => a == b,
            }
    }
}

/// What the writer knows about one account.
#[derive(Debug)]
struct Tracked {
    /// Counter values already in the store.
    baseline: CounterArray,
    generation: u64,
    failures: u32,
    ejection_level: u32,
    /// The runtime's `model_epoch` last written.
    model_epoch: u64,
    enabled: bool,
    /// The state last written to, or seen in, the store.
    written: Option<StateKey>,
    /// Never written yet: write once even if nothing changed.
    fresh: bool,
    /// Restored from the store at start: its first write carries its full state. An account
    /// first seen later (added at runtime) does not overwrite the state a shared store holds
    /// for it; it writes its counters, and its state once it changes.
    loaded: bool,
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
            enabled: slot.settings.enabled,
            written: None,
            fresh: false,
            loaded: false,
        }
    }

    /// An account the store did not hold when the writer started (new, or added to the pool
    /// since): every change since its runtime state was created counts (transitions, failure
    /// streak, ejections, model cooldowns all start at 0), so a change made before the writer
    /// first saw it is written, not taken for its starting state.
    fn unseen(slot: &Slot) -> Tracked {
        Tracked {
            generation: 0,
            failures: 0,
            ejection_level: 0,
            model_epoch: 0,
            fresh: true,
            ..Tracked::observe(slot)
        }
    }

    fn state_changed(&self, slot: &Slot) -> bool {
        let rt = &slot.runtime;
        self.generation != rt.generation.load(Ordering::Acquire)
            || self.failures != rt.consecutive_failures.load(Ordering::Acquire)
            || self.ejection_level != rt.ejection_level.load(Ordering::Acquire)
            || self.enabled != slot.settings.enabled
    }

    fn models_changed(&self, slot: &Slot) -> bool {
        self.model_epoch != slot.runtime.model_epoch.load(Ordering::Acquire)
    }
}

struct Pending {
    write: AccountWrite,
    counters: CounterArray,
    generation: u64,
    failures: u32,
    ejection_level: u32,
    model_epoch: u64,
}

struct Writer<S> {
    pool: Pool,
    store: S,
    config: WriterConfig,
    tracked: HashMap<AccountId, Tracked>,
    stats: Arc<Mutex<WriterStats>>,
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
                Err(_elapsed) => {}
            }
            if now >= next_maintenance {
                if let Err(e) = self.store.maintain().await {
                    tracing::warn!(store = self.store.name(), error = %e, "store maintenance failed");
                }
                next_maintenance = now + config.maintenance_interval;
            }
            if now >= next_sync {
                self.sync().await;
                next_sync = Instant::now() + config.sync_interval;
            }
            if now >= next_flush {
                let result = self.flush().await;
                self.record(&result);
                match result {
                    Ok(()) => {
                        failures = 0;
                        next_flush = Instant::now() + config.interval;
                    }
                    Err(e) => {
                        failures += 1;
                        let backoff = config
                            .interval
                            .saturating_mul(1 << failures.min(10))
                            .min(config.max_backoff)
                            .max(config.interval);
                        if failures == 1 || failures.is_power_of_two() {
                            tracing::warn!(
                                store = self.store.name(), error = %e, attempt = failures,
                                retry_in_ms = backoff.as_millis() as u64,
                                "store write failed; the changes are kept and retried"
                            );
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
            let tracked = self
                .tracked
                .entry(slot.id.clone())
                .or_insert_with(|| Tracked::unseen(slot));
            let rt = &slot.runtime;
            let generation = rt.generation.load(Ordering::Acquire);
            let failures = rt.consecutive_failures.load(Ordering::Acquire);
            let ejection_level = rt.ejection_level.load(Ordering::Acquire);
            let model_epoch = rt.model_epoch.load(Ordering::Acquire);
            let state_changed = tracked.state_changed(slot) || (tracked.fresh && tracked.loaded);
            let models_changed = tracked.models_changed(slot);
            let counters = read_counters(rt);
            if !state_changed && !models_changed && !tracked.fresh && counters == tracked.baseline {
                continue;
            }
            let delta: CounterArray =
                std::array::from_fn(|i| counters[i].saturating_sub(tracked.baseline[i]));
            let mut state = shared.account_snapshot(slot, now).persisted();
            state.counters = counters_from_array(&counters);
            pending.push(Pending {
                write: AccountWrite {
                    id: slot.id.clone(),
                    state,
                    state_changed,
                    models_changed,
                    delta: counters_from_array(&delta),
                    enabled: slot.settings.enabled,
                    enabled_changed: !tracked.fresh && tracked.enabled != slot.settings.enabled,
                },
                counters,
                generation,
                failures,
                ejection_level,
                model_epoch,
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
                    tracked.enabled = p.write.enabled;
                    tracked.fresh = false;
                    if p.write.state_changed {
                        tracked.written = Some(StateKey::of(&p.write.state));
                    }
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
    async fn sync(&mut self) {
        let shared = self.pool.shared.clone();
        let roster = shared.roster.load_full();
        let ids = roster.slots.iter().map(|s| s.id.clone()).collect();
        let changes = match self.store.poll_changes(ids).await {
            Ok(changes) => changes,
            Err(e) => {
                tracing::debug!(store = self.store.name(), error = %e, "polling the store for changes failed");
                return;
            }
        };
        let mut applied = 0;
        for change in changes {
            let Some(slot) = roster.get(change.id.as_str()).cloned() else {
                continue;
            };
            self.fold(&slot, &change.state.counters);
            let Some(tracked) = self.tracked.get_mut(&slot.id) else {
                continue;
            };
            // Another process's model cooldowns: only ever added or extended, so merging them
            // again is harmless. Not a local change to write back, unless one was pending.
            let now = shared.clock.now_ms();
            if let Some(before) =
                shared.merge_model_cooldowns(&slot, &change.state.model_cooldowns, now)
            {
                if tracked.model_epoch == before {
                    tracked.model_epoch = before + 1;
                }
                applied += 1;
            }
            let key = StateKey::of(&change.state);
            if tracked.written.as_ref().is_some_and(|w| w.same(&key)) {
                continue; // nothing new
            }
            if tracked.state_changed(&slot) || tracked.models_changed(&slot) {
                continue; // a local change is pending; it is written next and wins
            }
            if apply_remote(&shared, &slot, &change.state) {
                applied += 1;
            }
            tracked.written = Some(key);
            tracked.generation = slot.runtime.generation.load(Ordering::Acquire);
            tracked.ejection_level = slot.runtime.ejection_level.load(Ordering::Acquire);
        }
        if applied > 0 {
            self.stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remote_changes += applied;
        }
    }
}

/// Applies an account-wide state another process wrote. Credential states and a probe in
/// flight stay local. Returns whether anything changed.
fn apply_remote(shared: &Arc<Shared>, slot: &Arc<Slot>, remote: &PersistedState) -> bool {
    let rt = &slot.runtime;
    let local = rt.state();
    if matches!(
        local,
        HealthState::AuthExpired | HealthState::AuthInvalid | HealthState::HalfOpen
    ) {
        return false;
    }
    let target = match remote.state {
        HealthState::HalfOpen => HealthState::Ejected,
        s @ (HealthState::Healthy
        | HealthState::RateLimited
        | HealthState::QuotaExhausted
        | HealthState::Ejected
        | HealthState::Suspended) => s,
        _ => return false,
    };
    let now = shared.clock.now_ms();
    let until = match (target, remote.until) {
        (HealthState::Healthy, _) => 0,
        (_, Some(at)) => shared.clock.deadline(at, now),
        (HealthState::Suspended, None) => NEVER,
        (_, None) => now,
    };
    let local_until = rt.until_ms.load(Ordering::Acquire);
    let local_effective = match local {
        HealthState::RateLimited | HealthState::QuotaExhausted if local_until <= now => {
            HealthState::Healthy
        }
        s => s,
    };
    let target_effective = match target {
        HealthState::RateLimited | HealthState::QuotaExhausted if until <= now => {
            HealthState::Healthy
        }
        s => s,
    };
    if local_effective == target_effective
        && (target_effective == HealthState::Healthy || local_until.abs_diff(until) < 500)
    {
        return false;
    }
    rt.ejection_level
        .store(remote.ejection_level, Ordering::Release);
    let reason = remote
        .reason
        .clone()
        .unwrap_or_else(|| format!("{target} (set by another process)"));
    shared.transition(slot, target, until, reason);
    true
}
