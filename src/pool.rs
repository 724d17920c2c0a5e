//! The account pool: accounts, their runtime state, selection and leases.
//!
//! ```
//! use tower_account_pool::{Account, Outcome, Pool, SelectRequest};
//! use tower_account_pool::credential::BearerToken;
//!
//! let pool = Pool::builder()
//!     .account(Account::new("acct-1", BearerToken::new("token-one")))
//!     .account(Account::new("acct-2", BearerToken::new("token-two")))
//!     .build()
//!     .expect("a valid pool");
//!
//! // One lease per request: it names the account and holds an in-flight slot.
//! let lease = pool.select(&SelectRequest::for_model("claude-sonnet-4-5")).unwrap();
//! println!("serving with {}", lease.id());
//! lease.report(Outcome::Success);
//!
//! let snapshot = pool.snapshot();
//! assert_eq!(snapshot.accounts.len(), 2);
//! assert_eq!(snapshot.accounts.iter().map(|a| a.counters.successes).sum::<u64>(), 1);
//! ```
//!
//! `Pool` is a cheap handle (`Arc` inside): clone it into every service and task.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::account::{Account, AccountId, AccountSettings};
use crate::credential::{CredentialError, MaskedCredential, RefreshMode, SharedCredential};
use crate::health::{
    HealthPolicy, HealthState, LastError, ModelBlock, ModelBlockKind, Outcome, OutcomeClass,
    RateLimitScope, Runtime, NEVER,
};
use crate::select::{Exhausted, SelectRequest, Strategy, Unavailable};

/// Default time a sticky session stays pinned to its account after its last request.
pub const DEFAULT_AFFINITY_TTL: Duration = Duration::from_secs(60 * 60);

/// How many distinct model names get their own round-robin cursor.
const MAX_INTERNED_MODELS: usize = 64;

const STICKY_SHARDS: usize = 64;

// ===== errors =====

/// An invalid pool, account or policy, found when building or changing the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The pool has no accounts.
    #[error("the account pool is empty: add at least one account")]
    Empty,
    /// An account has an empty id.
    #[error("account at index {index} has an empty id")]
    EmptyId {
        /// Position of the account in the list given.
        index: usize,
    },
    /// Two accounts share an id.
    #[error("duplicate account id `{id}` at index {index} (first seen at index {first})")]
    DuplicateId {
        /// The repeated id.
        id: AccountId,
        /// Position of the repeat.
        index: usize,
        /// Position of the first account with this id.
        first: usize,
    },
    /// An account has weight 0.
    #[error("account `{id}` (index {index}): weight must be at least 1")]
    ZeroWeight {
        /// The account.
        id: AccountId,
        /// Its position.
        index: usize,
    },
    /// An account has a max in-flight of 0.
    #[error(
        "account `{id}` (index {index}): max in-flight must be at least 1 (leave it unset for no limit)"
    )]
    ZeroMaxInFlight {
        /// The account.
        id: AccountId,
        /// Its position.
        index: usize,
    },
    /// The health policy is inconsistent.
    #[error("{0}")]
    InvalidPolicy(String),
    /// The affinity TTL is zero.
    #[error("the sticky-session TTL must be greater than zero")]
    ZeroAffinityTtl,
}

/// An error from a manual action on the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No account has this id.
    #[error("unknown account `{0}`")]
    UnknownAccount(AccountId),
    /// The change would make the pool invalid.
    #[error(transparent)]
    Invalid(#[from] BuildError),
    /// A store could not write the pool's state.
    #[error("store {0}")]
    Store(String),
    /// The credential could not be refreshed.
    #[error("account `{id}`: {source}")]
    Credential {
        /// The account.
        id: AccountId,
        /// What went wrong.
        source: CredentialError,
    },
}

// ===== internals =====

/// Monotonic pool time in milliseconds (tokio's clock, so `tokio::time::pause` applies).
#[derive(Debug)]
pub(crate) struct Clock {
    epoch: tokio::time::Instant,
    /// Wall-clock milliseconds at `coarse_epoch`, for "last used".
    wall_epoch_ms: u64,
    coarse_epoch: coarsetime::Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            epoch: tokio::time::Instant::now(),
            wall_epoch_ms: epoch_ms::millis(&SystemTime::now()),
            coarse_epoch: coarsetime::Instant::now_without_cache_update(),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Wall-clock milliseconds, from the kernel's coarse monotonic clock (a few ms of
    /// resolution, read without a timestamp-counter instruction): enough for "last used".
    pub(crate) fn wall_ms_coarse(&self) -> u64 {
        let since =
            coarsetime::Instant::now_without_cache_update().duration_since(self.coarse_epoch);
        self.wall_epoch_ms + since.as_millis()
    }

    /// A clock read deferred until (and unless) something needs it.
    pub(crate) fn lazy(&self) -> LazyNow<'_> {
        LazyNow {
            clock: self,
            ms: Cell::new(UNREAD),
        }
    }

    /// A clock read already made.
    pub(crate) fn fixed(&self, ms: u64) -> LazyNow<'_> {
        LazyNow {
            clock: self,
            ms: Cell::new(ms),
        }
    }

    /// The wall-clock time of a pool deadline.
    pub(crate) fn wall(&self, ms: u64, now_ms: u64) -> Option<SystemTime> {
        match ms {
            0 | NEVER => None,
            ms if ms >= now_ms => SystemTime::now().checked_add(Duration::from_millis(ms - now_ms)),
            ms => SystemTime::now().checked_sub(Duration::from_millis(now_ms - ms)),
        }
    }

    /// The pool deadline of a wall-clock time.
    pub(crate) fn deadline(&self, at: SystemTime, now_ms: u64) -> u64 {
        match at.duration_since(SystemTime::now()) {
            Ok(ahead) => now_ms.saturating_add(ahead.as_millis() as u64),
            Err(_) => now_ms,
        }
    }
}

const UNREAD: u64 = u64::MAX;

/// The wall-clock time of an event that stores order by (an operator's reset, a cooldown
/// set), in epoch ms: strictly increasing within the process, so that two events in the same
/// millisecond keep their order.
pub(crate) fn event_ms() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = epoch_ms::millis(&SystemTime::now());
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// The pool clock, read at most once per selection and only when a deadline must be compared.
#[derive(Debug)]
pub(crate) struct LazyNow<'a> {
    clock: &'a Clock,
    ms: Cell<u64>,
}

impl LazyNow<'_> {
    pub(crate) fn get(&self) -> u64 {
        match self.ms.get() {
            UNREAD => {
                let ms = self.clock.now_ms();
                self.ms.set(ms);
                ms
            }
            ms => ms,
        }
    }
}

/// One account as the roster holds it: settings are immutable here (a change swaps in a new
/// slot); the runtime state is shared across such swaps.
///
/// Selection checks an account through the roster's copy of its [`Gate`]; the slot is read for
/// the account picked, whose lease holds it. What a lease reads comes first (`repr(C)` keeps
/// the order), next to the reference count the lease bumps.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Slot {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) id: AccountId,
    pub(crate) credential: SharedCredential,
    pub(crate) settings: AccountSettings,
    /// The pool, reached only off the fast path (leases hold slots, not the pool, so the
    /// pool-wide reference count is never touched per request).
    pub(crate) shared: Weak<Shared>,
    pub(crate) models: Arc<Models>,
}

/// What selection reads of an account to decide whether it may take a request, copied out of
/// its [`Slot`] into the roster's contiguous `gates` (16 bytes each).
///
/// A round-robin visit then reads memory that is already streaming into cache (the gates, in
/// order) and the account's runtime state, whose address is right there: one cache miss at a
/// large pool's scale, where going through the slot to reach the runtime made two dependent
/// ones. The slot itself is only touched for the account that is picked (and for model rules).
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    pub(crate) runtime: Arc<Runtime>,
    /// `settings.max_in_flight`, `u32::MAX` when unlimited (a limit of 0 is refused).
    pub(crate) max_in_flight: u32,
    /// `settings.enabled`.
    pub(crate) enabled: bool,
    /// Whether the settings restrict models at all (else no model check is needed).
    pub(crate) model_rules: bool,
}

impl Gate {
    fn of(slot: &Slot) -> Gate {
        Gate {
            runtime: slot.runtime.clone(),
            max_in_flight: slot.settings.max_in_flight.unwrap_or(u32::MAX),
            enabled: slot.settings.enabled,
            model_rules: slot.settings.restricts_models(),
        }
    }
}

/// The atomically swapped list of accounts, ordered by priority tier.
#[derive(Debug, Default)]
pub(crate) struct Roster {
    pub(crate) slots: Vec<Arc<Slot>>,
    /// `gates[i]` is what selection checks of `slots[i]`.
    pub(crate) gates: Vec<Gate>,
    pub(crate) tiers: Vec<Range<usize>>,
    pub(crate) index: HashMap<AccountId, usize>,
}

impl Roster {
    fn new(mut slots: Vec<Arc<Slot>>) -> Roster {
        slots.sort_by_key(|s| s.settings.priority);
        let mut tiers: Vec<Range<usize>> = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            match tiers.last_mut() {
                Some(t) if slots[t.start].settings.priority == slot.settings.priority => t.end += 1,
                _ => tiers.push(i..i + 1),
            }
        }
        let index = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        let gates = slots.iter().map(|s| Gate::of(s)).collect();
        Roster {
            slots,
            gates,
            tiers,
            index,
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Arc<Slot>> {
        self.index.get(id).map(|&i| &self.slots[i])
    }
}

#[repr(align(64))]
#[derive(Debug, Default)]
pub(crate) struct Cursor(pub(crate) AtomicU64);

/// Interned model names, each with its own round-robin cursor. Append-only: a name once
/// interned keeps its index, so leases carry an index instead of a reference-counted name.
#[derive(Debug)]
pub(crate) struct Models {
    names: Box<[OnceLock<Arc<str>>]>,
    interned: AtomicUsize,
    adding: Mutex<()>,
    cursors: Box<[Cursor]>,
}

/// A model as a lease carries it.
#[derive(Debug, Clone)]
pub(crate) enum ModelRef {
    /// The request named no model.
    None,
    /// An interned model: its index in the table.
    Interned(usize),
    /// A model past the interning limit, allocated per lease.
    Owned(Arc<str>),
}

impl Models {
    fn new() -> Self {
        Models {
            names: (0..MAX_INTERNED_MODELS).map(|_| OnceLock::new()).collect(),
            interned: AtomicUsize::new(0),
            adding: Mutex::new(()),
            cursors: (0..MAX_INTERNED_MODELS + 2)
                .map(|_| Cursor::default())
                .collect(),
        }
    }

    fn find(&self, model: &str) -> Option<usize> {
        let interned = self.interned.load(Ordering::Acquire);
        self.names[..interned]
            .iter()
            .position(|n| n.get().is_some_and(|n| &**n == model))
    }

    /// The lease-side reference of `model`, interning it on first sight.
    pub(crate) fn key(&self, model: Option<&str>) -> ModelRef {
        let Some(model) = model else {
            return ModelRef::None;
        };
        if let Some(i) = self.find(model) {
            return ModelRef::Interned(i);
        }
        let _adding = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = self.find(model) {
            return ModelRef::Interned(i);
        }
        let i = self.interned.load(Ordering::Acquire);
        if i >= MAX_INTERNED_MODELS {
            return ModelRef::Owned(Arc::from(model));
        }
        let _ = self.names[i].set(Arc::from(model));
        self.interned.store(i + 1, Ordering::Release);
        ModelRef::Interned(i)
    }

    pub(crate) fn name<'a>(&'a self, model: &'a ModelRef) -> Option<&'a Arc<str>> {
        match model {
            ModelRef::None => None,
            ModelRef::Interned(i) => self.names[*i].get(),
            ModelRef::Owned(name) => Some(name),
        }
    }

    /// Cursor 0 is for requests without a model; the last one is shared by models past the
    /// interning limit.
    pub(crate) fn cursor(&self, model: &ModelRef) -> &AtomicU64 {
        let index = match model {
            ModelRef::None => 0,
            ModelRef::Interned(i) => i + 1,
            ModelRef::Owned(_) => MAX_INTERNED_MODELS + 1,
        };
        &self.cursors[index].0
    }
}

#[derive(Debug)]
struct Pin {
    id: AccountId,
    expires_ms: u64,
}

#[derive(Debug, Default)]
struct StickyShard {
    pins: HashMap<u64, Pin>,
    prune_at: usize,
}

/// Sticky sessions: affinity-key hash → account, sharded so no lock is pool-wide.
#[derive(Debug)]
pub(crate) struct Sticky {
    shards: Box<[Mutex<StickyShard>]>,
    hasher: RandomState,
    ttl_ms: u64,
}

impl Sticky {
    fn new(ttl: Duration) -> Self {
        Sticky {
            shards: (0..STICKY_SHARDS)
                .map(|_| Mutex::new(StickyShard::default()))
                .collect(),
            hasher: RandomState::new(),
            ttl_ms: ttl.as_millis() as u64,
        }
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, StickyShard> {
        self.shards[(hash as usize) % STICKY_SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The account `key` is pinned to, if the pin is still alive.
    pub(crate) fn get(&self, hash: u64, now_ms: u64) -> Option<AccountId> {
        let shard = self.shard(hash);
        shard
            .pins
            .get(&hash)
            .filter(|p| p.expires_ms > now_ms)
            .map(|p| p.id.clone())
    }

    /// Pins (or re-pins, or refreshes) `key` to `id`.
    pub(crate) fn pin(&self, hash: u64, id: &AccountId, now_ms: u64) {
        let expires_ms = now_ms.saturating_add(self.ttl_ms);
        let mut shard = self.shard(hash);
        match shard.pins.get_mut(&hash) {
            Some(pin) if pin.id == *id => pin.expires_ms = expires_ms,
            _ => {
                shard.pins.insert(
                    hash,
                    Pin {
                        id: id.clone(),
                        expires_ms,
                    },
                );
                if shard.pins.len() >= shard.prune_at {
                    shard.pins.retain(|_, p| p.expires_ms > now_ms);
                    shard.prune_at = (shard.pins.len() * 2).max(1024);
                }
            }
        }
    }

    pub(crate) fn len(&self, now_ms: u64) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.pins.values().filter(|p| p.expires_ms > now_ms).count()
            })
            .sum()
    }
}

/// Everything a pool handle shares.
pub(crate) struct Shared {
    pub(crate) roster: ArcSwap<Roster>,
    /// Serialises roster changes (admin, reload); never taken by selection.
    pub(crate) changing: Mutex<()>,
    /// Serialises ejection decisions so the panic threshold holds under concurrency.
    pub(crate) ejecting: Mutex<()>,
    pub(crate) strategy: Strategy,
    pub(crate) policy: HealthPolicy,
    pub(crate) clock: Clock,
    pub(crate) models: Arc<Models>,
    pub(crate) sticky: Sticky,
    pub(crate) events: broadcast::Sender<StateChange>,
    /// Selections that found no account (error path only, so one counter is fine).
    pub(crate) exhaustions: AtomicU64,
    /// Retries on another account, recorded by the layer.
    pub(crate) retries: AtomicU64,
    /// Use order for the least-recently-used strategy (touched by that strategy only).
    pub(crate) use_tickets: AtomicU64,
    /// What [`Pool::shutdown`] waits for: the flush of every attached store.
    pub(crate) flushers: Mutex<Vec<Flusher>>,
}

/// Flushes one attached store; `Ok` when it has nothing left to write (or has stopped).
pub(crate) type Flusher =
    Box<dyn Fn() -> crate::credential::BoxFuture<'static, Result<(), String>> + Send + Sync>;

// ===== Pool =====

/// A pool of upstream accounts. Cheap to clone: every clone shares the same accounts and state.
#[derive(Clone)]
pub struct Pool {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("accounts", &self.shared.roster.load().slots.len())
            .field("strategy", &self.shared.strategy)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Pool`].
#[derive(Debug, Default)]
pub struct PoolBuilder {
    accounts: Vec<Account>,
    strategy: Strategy,
    policy: HealthPolicy,
    affinity_ttl: Option<Duration>,
}

impl PoolBuilder {
    /// Adds one account.
    pub fn account(mut self, account: Account) -> Self {
        self.accounts.push(account);
        self
    }

    /// Adds several accounts.
    pub fn accounts(mut self, accounts: impl IntoIterator<Item = Account>) -> Self {
        self.accounts.extend(accounts);
        self
    }

    /// Sets the selection strategy (default: round-robin).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the health policy (default: [`HealthPolicy::default`]).
    pub fn health(mut self, policy: HealthPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets how long a sticky session stays pinned after its last request (default 1 h).
    pub fn affinity_ttl(mut self, ttl: Duration) -> Self {
        self.affinity_ttl = Some(ttl);
        self
    }

    /// Validates everything and builds the pool.
    ///
    /// Fails on an empty pool, an empty or duplicate id, a weight of 0, a max in-flight of 0 or
    /// an inconsistent health policy.
    pub fn build(self) -> Result<Pool, BuildError> {
        if self.accounts.is_empty() {
            return Err(BuildError::Empty);
        }
        self.policy.validate().map_err(BuildError::InvalidPolicy)?;
        let ttl = self.affinity_ttl.unwrap_or(DEFAULT_AFFINITY_TTL);
        if ttl.is_zero() {
            return Err(BuildError::ZeroAffinityTtl);
        }
        validate_accounts(&self.accounts)?;
        let (events, _) = broadcast::channel(1024);
        let models = Arc::new(Models::new());
        let accounts = self.accounts;
        Ok(Pool {
            shared: Arc::new_cyclic(|weak| Shared {
                roster: ArcSwap::from_pointee(Roster::new(
                    accounts
                        .into_iter()
                        .map(|a| new_slot(a, Arc::default(), weak, &models))
                        .collect(),
                )),
                changing: Mutex::new(()),
                ejecting: Mutex::new(()),
                strategy: self.strategy,
                policy: self.policy,
                clock: Clock::new(),
                models,
                sticky: Sticky::new(ttl),
                events,
                exhaustions: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                use_tickets: AtomicU64::new(0),
                flushers: Mutex::new(Vec::new()),
            }),
        })
    }
}

fn new_slot(
    account: Account,
    runtime: Arc<Runtime>,
    shared: &Weak<Shared>,
    models: &Arc<Models>,
) -> Arc<Slot> {
    Slot::new(
        account.id,
        account.credential,
        account.settings,
        runtime,
        shared.clone(),
        models.clone(),
    )
}

impl Slot {
    fn new(
        id: AccountId,
        credential: SharedCredential,
        settings: AccountSettings,
        runtime: Arc<Runtime>,
        shared: Weak<Shared>,
        models: Arc<Models>,
    ) -> Arc<Slot> {
        Arc::new(Slot {
            runtime,
            id,
            credential,
            settings,
            shared,
            models,
        })
    }
}

fn validate_settings(id: &AccountId, index: usize, s: &AccountSettings) -> Result<(), BuildError> {
    if id.as_str().is_empty() {
        return Err(BuildError::EmptyId { index });
    }
    if s.weight == 0 {
        return Err(BuildError::ZeroWeight {
            id: id.clone(),
            index,
        });
    }
    if s.max_in_flight == Some(0) {
        return Err(BuildError::ZeroMaxInFlight {
            id: id.clone(),
            index,
        });
    }
    Ok(())
}

fn validate_accounts(accounts: &[Account]) -> Result<(), BuildError> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(accounts.len());
    for (index, account) in accounts.iter().enumerate() {
        validate_settings(&account.id, index, &account.settings)?;
        if let Some(&first) = seen.get(account.id.as_str()) {
            return Err(BuildError::DuplicateId {
                id: account.id.clone(),
                index,
                first,
            });
        }
        seen.insert(account.id.as_str(), index);
    }
    Ok(())
}

/// Pool-wide counters, from [`Pool::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStats {
    /// Leases handed out (the sum of the accounts' `requests`; removed accounts not included).
    pub selections: u64,
    /// Selections that found no account.
    pub exhaustions: u64,
    /// Retries on another account recorded with [`Pool::record_retry`].
    pub retries: u64,
}

/// What [`Pool::sync`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Accounts that were not in the pool.
    pub added: Vec<AccountId>,
    /// Accounts that are no longer in the pool.
    pub removed: Vec<AccountId>,
    /// Accounts whose settings or credential changed; their runtime state is kept.
    pub changed: Vec<AccountId>,
    /// Accounts left exactly as they were.
    pub unchanged: usize,
}

impl Pool {
    /// Starts building a pool.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Chooses an account for a request, or says why none can take it.
    ///
    /// The returned [`Lease`] holds an in-flight slot on the account until it is reported or
    /// dropped.
    pub fn select(&self, request: &SelectRequest<'_>) -> Result<Lease, Exhausted> {
        match self.shared.select(request) {
            Ok(grant) => Ok(Lease {
                slot: grant.slot,
                model: grant.model,
                probe: grant.probe,
                reported: false,
            }),
            Err(exhausted) => {
                self.shared.exhaustions.fetch_add(1, Ordering::Relaxed);
                Err(exhausted)
            }
        }
    }

    /// Flushes every store attached to the pool (see [`StoreHandle`](crate::store::StoreHandle))
    /// and waits until each has written everything: call it when the service stops, after the
    /// last request. Stores keep running; it can be called again.
    pub async fn shutdown(&self) -> Result<(), PoolError> {
        let flushes: Vec<_> = {
            let flushers = self
                .shared
                .flushers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            flushers.iter().map(|flush| flush()).collect()
        };
        let mut failed = Vec::new();
        for flush in flushes {
            if let Err(e) = flush.await {
                failed.push(e);
            }
        }
        match failed.is_empty() {
            true => Ok(()),
            false => Err(PoolError::Store(failed.join("; "))),
        }
    }

    /// Records that a request is being retried on another account (for metrics).
    pub fn record_retry(&self) {
        self.shared.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Pool-wide counters.
    pub fn stats(&self) -> PoolStats {
        let roster = self.shared.roster.load();
        PoolStats {
            selections: roster.slots.iter().map(|s| s.runtime.requests()).sum(),
            exhaustions: self.shared.exhaustions.load(Ordering::Relaxed),
            retries: self.shared.retries.load(Ordering::Relaxed),
        }
    }

    /// The selection strategy.
    pub fn strategy(&self) -> Strategy {
        self.shared.strategy
    }

    /// The health policy.
    pub fn health_policy(&self) -> &HealthPolicy {
        &self.shared.policy
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.shared.roster.load().slots.len()
    }

    /// True when the pool has no accounts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of all accounts, in priority order.
    pub fn ids(&self) -> Vec<AccountId> {
        self.shared
            .roster
            .load()
            .slots
            .iter()
            .map(|s| s.id.clone())
            .collect()
    }

    /// Receives every state change from now on (what the tracing events say, as data).
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.shared.events.subscribe()
    }

    /// Number of live sticky sessions.
    pub fn sticky_sessions(&self) -> usize {
        self.shared.sticky.len(self.shared.clock.now_ms())
    }

    /// Reports an outcome for an account outside a lease: an active probe's result, or an
    /// outcome learnt elsewhere. A `Success` here also clears `Suspended`, `AuthInvalid` and
    /// ejections, as a successful probe does. Probe outcomes are not request outcomes: the
    /// account's counters do not change.
    pub fn report_probe(&self, id: &str, outcome: Outcome) -> Result<(), PoolError> {
        let slot = self.slot(id)?;
        if outcome == Outcome::Success {
            self.shared.force_healthy(&slot, "probe succeeded");
        }
        self.shared.apply(&slot, None, false, outcome, None);
        Ok(())
    }

    /// Enables an account.
    pub fn enable(&self, id: &str) -> Result<(), PoolError> {
        self.set_enabled(id, true)
    }

    /// Disables an account: it takes no new requests until enabled.
    pub fn disable(&self, id: &str) -> Result<(), PoolError> {
        self.set_enabled(id, false)
    }

    fn set_enabled(&self, id: &str, enabled: bool) -> Result<(), PoolError> {
        let mut changed = None;
        self.update_settings(id, |s| {
            if s.enabled != enabled {
                s.enabled = enabled;
                changed = Some(s.clone());
            }
        })?;
        // An operator's word, even when it changes nothing here: it is the newest one, and
        // stores shared with other processes order by it.
        let slot = self.slot(id)?;
        slot.runtime.lock_details().enabled_ms = event_ms();
        if changed.is_some() {
            let (from, to) = if enabled {
                (HealthState::Disabled, slot.runtime.state())
            } else {
                (slot.runtime.state(), HealthState::Disabled)
            };
            let reason = if enabled {
                "enabled by operator"
            } else {
                "disabled by operator"
            };
            self.shared
                .emit(&slot, from, to, None, reason.to_owned(), None);
        }
        Ok(())
    }

    /// Clears an account's health state: healthy, no cooldowns, no failures counted against it.
    /// Its lifetime counters are kept.
    pub fn reset(&self, id: &str) -> Result<(), PoolError> {
        let slot = self.slot(id)?;
        self.shared.reset_slot(&slot);
        Ok(())
    }

    /// Resets every account.
    pub fn reset_all(&self) {
        let roster = self.shared.roster.load_full();
        for slot in &roster.slots {
            self.shared.reset_slot(slot);
        }
    }

    /// Refreshes an account's credential now (forced). On success an account waiting on its
    /// credential becomes healthy; a rejection marks it `AuthInvalid`.
    pub async fn refresh_credential(&self, id: &str) -> Result<(), PoolError> {
        let slot = self.slot(id)?;
        let generation = slot.runtime.generation.load(Ordering::Acquire);
        let result = slot.credential.refresh(RefreshMode::Forced).await;
        self.shared.after_refresh(&slot, generation, &result, false);
        result.map_err(|source| PoolError::Credential {
            id: slot.id.clone(),
            source,
        })
    }

    /// Adds an account. Fails on a duplicate id or invalid settings.
    pub fn add(&self, account: Account) -> Result<(), PoolError> {
        let _changing = self.lock_changes();
        let roster = self.shared.roster.load_full();
        if let Some(&first) = roster.index.get(account.id.as_str()) {
            return Err(BuildError::DuplicateId {
                id: account.id.clone(),
                index: roster.slots.len(),
                first,
            }
            .into());
        }
        validate_settings(&account.id, roster.slots.len(), &account.settings)?;
        let mut slots = roster.slots.clone();
        slots.push(self.shared.slot_for(account, Arc::default()));
        self.shared.roster.store(Arc::new(Roster::new(slots)));
        Ok(())
    }

    /// Removes an account. Leases already handed out finish normally.
    pub fn remove(&self, id: &str) -> Result<(), PoolError> {
        let _changing = self.lock_changes();
        let roster = self.shared.roster.load_full();
        if !roster.index.contains_key(id) {
            return Err(PoolError::UnknownAccount(AccountId::new(id)));
        }
        let slots = roster
            .slots
            .iter()
            .filter(|s| s.id.as_str() != id)
            .cloned()
            .collect();
        self.shared.roster.store(Arc::new(Roster::new(slots)));
        Ok(())
    }

    /// Changes an account's settings; its runtime state is kept.
    pub fn update_settings(
        &self,
        id: &str,
        change: impl FnOnce(&mut AccountSettings),
    ) -> Result<(), PoolError> {
        let _changing = self.lock_changes();
        let roster = self.shared.roster.load_full();
        let Some(&index) = roster.index.get(id) else {
            return Err(PoolError::UnknownAccount(AccountId::new(id)));
        };
        let old = &roster.slots[index];
        let mut settings = old.settings.clone();
        change(&mut settings);
        if settings == old.settings {
            return Ok(());
        }
        validate_settings(&old.id, index, &settings)?;
        let mut slots = roster.slots.clone();
        slots[index] = Slot::new(
            old.id.clone(),
            old.credential.clone(),
            settings,
            old.runtime.clone(),
            old.shared.clone(),
            old.models.clone(),
        );
        self.shared.roster.store(Arc::new(Roster::new(slots)));
        Ok(())
    }

    /// Makes the pool hold exactly `accounts` (a reloaded configuration): new ids are added,
    /// missing ones removed, and accounts that stay keep their runtime state even when their
    /// settings or credential changed. Nothing changes if the list is invalid.
    pub fn sync(&self, accounts: Vec<Account>) -> Result<SyncReport, PoolError> {
        validate_accounts(&accounts)?;
        let _changing = self.lock_changes();
        let roster = self.shared.roster.load_full();
        let mut report = SyncReport::default();
        let mut slots = Vec::with_capacity(accounts.len());
        for account in accounts {
            match roster.get(account.id.as_str()) {
                Some(old)
                    if old.settings == account.settings
                        && Arc::ptr_eq(&old.credential, &account.credential) =>
                {
                    report.unchanged += 1;
                    slots.push(old.clone());
                }
                Some(old) => {
                    report.changed.push(account.id.clone());
                    slots.push(self.shared.slot_for(account, old.runtime.clone()));
                }
                None => {
                    report.added.push(account.id.clone());
                    slots.push(self.shared.slot_for(account, Arc::default()));
                }
            }
        }
        let kept: std::collections::HashSet<&str> = slots.iter().map(|s| s.id.as_str()).collect();
        report.removed = roster
            .slots
            .iter()
            .filter(|s| !kept.contains(s.id.as_str()))
            .map(|s| s.id.clone())
            .collect();
        drop(kept);
        self.shared.roster.store(Arc::new(Roster::new(slots)));
        Ok(report)
    }

    /// Every account's settings, state, reason, next retry time and counters, as of now.
    pub fn snapshot(&self) -> PoolSnapshot {
        let shared = &self.shared;
        let roster = shared.roster.load_full();
        let now = shared.clock.now_ms();
        let accounts = roster
            .slots
            .iter()
            .map(|slot| shared.account_snapshot(slot, now))
            .collect();
        PoolSnapshot {
            strategy: shared.strategy,
            taken_at: SystemTime::now(),
            accounts,
        }
    }

    /// Restores an account's runtime state from a store or a pool file: health state, reason
    /// and deadline, failure counts, lifetime counters, last use, last error and model
    /// cooldowns. A deadline in the past restores as expired; `HalfOpen` restores as an
    /// ejection that has ended; a model cooldown that has ended is dropped, and one the
    /// account already has keeps the later deadline.
    pub fn restore_state(&self, id: &str, saved: &PersistedState) -> Result<(), PoolError> {
        let slot = self.slot(id)?;
        let shared = &self.shared;
        let rt = &slot.runtime;
        let now = shared.clock.now_ms();
        let state = match saved.state {
            HealthState::Disabled | HealthState::ModelUnsupported => HealthState::Healthy,
            HealthState::HalfOpen => HealthState::Ejected,
            s => s,
        };
        let until = match (state, saved.until) {
            (HealthState::Healthy, _) => 0,
            (_, Some(at)) => shared.clock.deadline(at, now),
            (
                HealthState::Ejected | HealthState::RateLimited | HealthState::QuotaExhausted,
                None,
            ) => now,
            (_, None) => NEVER,
        };
        rt.consecutive_failures
            .store(saved.consecutive_failures, Ordering::Release);
        rt.ejection_level
            .store(saved.ejection_level, Ordering::Release);
        for &class in OutcomeClass::ALL {
            rt.outcomes[class as usize].store(saved.counters.outcome(class), Ordering::Relaxed);
        }
        let last_used = saved.last_used.map_or(0, |t| epoch_ms::millis(&t));
        rt.last_used_ms.store(last_used, Ordering::Relaxed);
        {
            let mut details = rt.lock_details();
            for &class in OutcomeClass::ALL {
                details.restored_outcomes[class as usize] = saved.counters.outcome(class);
            }
            details.last_error = saved.last_error.clone();
            let ms = |t: &Option<SystemTime>| t.as_ref().map_or(0, epoch_ms::millis);
            details.reset_ms = details.reset_ms.max(ms(&saved.reset_at));
            details.recovered_ms = details.recovered_ms.max(ms(&saved.recovered_at));
        }
        shared.merge_model_cooldowns(&slot, &saved.model_cooldowns, now);
        let reason = saved
            .reason
            .clone()
            .unwrap_or_else(|| format!("restored as {state}"));
        // Restoring is not a new event: the state keeps the time it began (0 when unknown).
        let since = saved.since.as_ref().map_or(0, epoch_ms::millis);
        let generation = shared.transition_since(&slot, state, until, reason, Some(since));
        match state {
            HealthState::AuthExpired => shared.schedule_refresh(&slot, Duration::ZERO, generation),
            HealthState::AuthInvalid if until != NEVER => shared.schedule_refresh(
                &slot,
                Duration::from_millis(until.saturating_sub(now)),
                generation,
            ),
            _ => {}
        }
        Ok(())
    }

    /// Records when an account's quota next resets, as a probe of the upstream reported it
    /// (`None`: unknown). [`Strategy::SoonestReset`] prefers the accounts whose quota resets
    /// first; snapshots show it. It does not change the account's state: an account out of
    /// quota is reported with [`Outcome::QuotaExhausted`]. The Kiro usage probe calls it.
    pub fn set_quota_reset(&self, id: &str, reset: Option<SystemTime>) -> Result<(), PoolError> {
        let slot = self.slot(id)?;
        let ms = reset.map_or(0, |t| epoch_ms::millis(&t).max(1));
        slot.runtime.quota_reset_ms.store(ms, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn slot(&self, id: &str) -> Result<Arc<Slot>, PoolError> {
        self.shared
            .roster
            .load()
            .get(id)
            .cloned()
            .ok_or_else(|| PoolError::UnknownAccount(AccountId::new(id)))
    }

    fn lock_changes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.shared
            .changing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

// ===== Lease =====

/// One request's hold on one account.
///
/// It names the account, holds an in-flight slot, and takes exactly one
/// [`report`](Lease::report). Dropped without a report it counts as
/// [`Outcome::Cancelled`]: no health penalty.
pub struct Lease {
    slot: Arc<Slot>,
    model: ModelRef,
    probe: bool,
    reported: bool,
}

impl Lease {
    /// The account's id.
    pub fn id(&self) -> &AccountId {
        &self.slot.id
    }

    /// The account's credential.
    pub fn credential(&self) -> &SharedCredential {
        &self.slot.credential
    }

    /// The account's settings when it was selected.
    pub fn settings(&self) -> &AccountSettings {
        &self.slot.settings
    }

    /// The model the lease was taken for.
    pub fn model(&self) -> Option<&str> {
        self.slot.models.name(&self.model).map(|m| &**m)
    }

    /// True when this request is the one probe let through a half-open account.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Reports how the request went and releases the in-flight slot.
    pub fn report(mut self, outcome: Outcome) {
        self.finish(outcome, None);
    }

    /// Reports an outcome with a short description for the account's last error (it must not
    /// contain secrets).
    pub fn report_with_message(mut self, outcome: Outcome, message: &str) {
        self.finish(outcome, Some(message));
    }

    fn finish(&mut self, outcome: Outcome, message: Option<&str>) {
        self.reported = true;
        let rt = &self.slot.runtime;
        rt.count(outcome.class());
        rt.in_flight.fetch_sub(1, Ordering::AcqRel);
        let harmless = matches!(
            outcome,
            Outcome::Success | Outcome::ClientError | Outcome::Cancelled
        );
        if harmless && !self.probe && rt.is_clean() {
            return; // the common case: nothing to change, no clock, no pool
        }
        if let Some(shared) = self.slot.shared.upgrade() {
            let model = self.slot.models.name(&self.model);
            shared.apply(&self.slot, model, self.probe, outcome, message);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.reported {
            self.finish(Outcome::Cancelled, None);
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("account", &self.slot.id)
            .field("model", &self.model)
            .field("probe", &self.probe)
            .finish()
    }
}

/// What the selection code hands the pool to wrap in a [`Lease`].
pub(crate) struct Grant {
    pub(crate) slot: Arc<Slot>,
    pub(crate) model: ModelRef,
    pub(crate) probe: bool,
}

// ===== health transitions =====

/// A change of an account's state, as sent to [`Pool::subscribe`] receivers and logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateChange {
    /// The account.
    pub account: AccountId,
    /// The model, for changes scoped to one (account, model) pair.
    pub model: Option<String>,
    /// State before.
    pub from: HealthState,
    /// State after.
    pub to: HealthState,
    /// Why.
    pub reason: String,
    /// When the new state ends by itself, if it does.
    #[serde(with = "epoch_ms::option")]
    pub until: Option<SystemTime>,
    /// When it happened.
    #[serde(with = "epoch_ms")]
    pub at: SystemTime,
}

impl Shared {
    /// The one eligibility predicate, minus per-request parts (exclusion, in-flight limit):
    /// `Ok(probe)` when the account may be used now, else why not and until when.
    ///
    /// The clock is read only when a deadline has to be compared: a healthy account with no
    /// model cooldown needs none.
    pub(crate) fn health_verdict(
        slot: &Slot,
        model: Option<&str>,
        now: &LazyNow<'_>,
    ) -> Result<bool, (Unavailable, u64)> {
        Self::gate_verdict(
            slot.settings.enabled,
            slot.settings.restricts_models(),
            &slot.runtime,
            slot,
            model,
            now,
        )
    }

    /// [`health_verdict`](Self::health_verdict) from a roster's [`Gate`]: the slot is read
    /// only when the account restricts models.
    #[inline]
    pub(crate) fn gate_verdict(
        enabled: bool,
        model_rules: bool,
        rt: &Runtime,
        slot: &Slot,
        model: Option<&str>,
        now: &LazyNow<'_>,
    ) -> Result<bool, (Unavailable, u64)> {
        if !enabled {
            return Err((Unavailable::Disabled, 0));
        }
        if model_rules && !slot.settings.allows_model(model) {
            return Err((Unavailable::ModelNotAllowed, 0));
        }
        let until = rt.until_ms.load(Ordering::Acquire);
        let probe = match rt.state() {
            HealthState::Healthy => false,
            HealthState::RateLimited if until <= now.get() => false,
            HealthState::QuotaExhausted if until <= now.get() => false,
            HealthState::Ejected if until <= now.get() => true,
            HealthState::RateLimited => return Err((Unavailable::RateLimited, until)),
            HealthState::QuotaExhausted => return Err((Unavailable::QuotaExhausted, until)),
            HealthState::Ejected => return Err((Unavailable::Ejected, until)),
            HealthState::AuthExpired => return Err((Unavailable::AuthExpired, 0)),
            HealthState::AuthInvalid => return Err((Unavailable::AuthInvalid, 0)),
            HealthState::Suspended => return Err((Unavailable::Suspended, 0)),
            HealthState::HalfOpen => return Err((Unavailable::ProbeInFlight, 0)),
            HealthState::Disabled | HealthState::ModelUnsupported => {
                return Err((Unavailable::Disabled, 0))
            }
        };
        let model = model.filter(|_| rt.model_blocks_until.load(Ordering::Acquire) != 0);
        if let Some(model) = model {
            if let Some((kind, until)) = rt.model_block(model, now.get()) {
                let reason = match kind {
                    ModelBlockKind::RateLimited => Unavailable::RateLimited,
                    ModelBlockKind::Unsupported => Unavailable::ModelUnsupported,
                };
                return Err((reason, until));
            }
        }
        Ok(probe)
    }

    /// Takes an in-flight slot (and the probe permit, for a half-open account).
    pub(crate) fn try_acquire(
        &self,
        slot: &Arc<Slot>,
        gate: &Gate,
        probe: bool,
        now: &LazyNow<'_>,
    ) -> Result<(), Unavailable> {
        let rt = &*gate.runtime;
        let before = rt.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= gate.max_in_flight {
            rt.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Unavailable::AtCapacity);
        }
        if probe {
            let _details = rt.lock_details();
            let still_due = rt.state() == HealthState::Ejected
                && rt.until_ms.load(Ordering::Acquire) <= now.get();
            if !still_due {
                drop(_details);
                rt.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(Unavailable::ProbeInFlight);
            }
            rt.state
                .store(HealthState::HalfOpen as u8, Ordering::Release);
            rt.generation.fetch_add(1, Ordering::AcqRel);
            drop(_details);
            self.emit(
                slot,
                HealthState::Ejected,
                HealthState::HalfOpen,
                None,
                "ejection over; one probe request admitted".into(),
                None,
            );
        } else {
            // The state may have changed since the verdict: re-check after taking the slot.
            let state = rt.state();
            let until = rt.until_ms.load(Ordering::Acquire);
            let usable = match state {
                HealthState::Healthy => true,
                HealthState::RateLimited | HealthState::QuotaExhausted => until <= now.get(),
                _ => false,
            };
            if !usable {
                rt.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(Unavailable::Ejected);
            }
        }
        rt.last_used_ms
            .store(self.clock.wall_ms_coarse(), Ordering::Relaxed);
        if self.strategy == Strategy::LeastRecentlyUsed {
            let ticket = self.use_tickets.fetch_add(1, Ordering::Relaxed) + 1;
            rt.use_ticket.store(ticket, Ordering::Relaxed);
        }
        Ok(())
    }

    pub(crate) fn emit(
        &self,
        slot: &Slot,
        from: HealthState,
        to: HealthState,
        model: Option<&str>,
        reason: String,
        until: Option<SystemTime>,
    ) {
        match model {
            Some(model) => tracing::info!(
                account = %slot.id, model, from = %from, to = %to, reason = %reason,
                "account state changed for model"
            ),
            None => tracing::info!(
                account = %slot.id, from = %from, to = %to, reason = %reason,
                "account state changed"
            ),
        }
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(StateChange {
                account: slot.id.clone(),
                model: model.map(str::to_owned),
                from,
                to,
                reason,
                until,
                at: SystemTime::now(),
            });
        }
    }

    /// Moves an account to `to` with a deadline and a reason, under its own lock.
    /// A deadline is only ever extended while the state stays the same.
    pub(crate) fn transition(
        &self,
        slot: &Slot,
        to: HealthState,
        until_ms: u64,
        reason: String,
    ) -> u64 {
        self.transition_since(slot, to, until_ms, reason, None)
    }

    /// [`transition`](Self::transition) recording when the new state began: `since` (wall
    /// epoch ms) for a state restored or learnt from a store, else now.
    pub(crate) fn transition_since(
        &self,
        slot: &Slot,
        to: HealthState,
        until_ms: u64,
        reason: String,
        since: Option<u64>,
    ) -> u64 {
        let rt = &slot.runtime;
        let mut details = rt.lock_details();
        let from = rt.state();
        let current = rt.until_ms.load(Ordering::Acquire);
        let kept = from == to && current > until_ms && to != HealthState::Healthy;
        let until_ms = if kept { current } else { until_ms };
        rt.until_ms.store(until_ms, Ordering::Release);
        rt.state.store(to as u8, Ordering::Release);
        let generation = rt.generation.fetch_add(1, Ordering::AcqRel) + 1;
        details.reason = (to != HealthState::Healthy).then(|| reason.clone());
        if !kept {
            details.since_ms = since.unwrap_or_else(event_ms);
        }
        drop(details);
        let now = self.clock.now_ms();
        if from != to || until_ms != current {
            self.emit(slot, from, to, None, reason, self.clock.wall(until_ms, now));
        }
        generation
    }

    pub(crate) fn block_model(
        &self,
        slot: &Slot,
        model: &Arc<str>,
        kind: ModelBlockKind,
        duration: Option<Duration>,
    ) {
        let rt = &slot.runtime;
        let now = self.clock.now_ms();
        let policy = &self.policy;
        let (until, level) = {
            let mut blocks = rt.model_blocks.write().unwrap_or_else(|e| e.into_inner());
            let position = blocks.iter().position(|b| b.model == *model);
            let level = position.map_or(0, |i| blocks[i].level);
            let duration = duration.unwrap_or_else(|| match kind {
                ModelBlockKind::RateLimited => {
                    policy.backoff(policy.rate_limit_base, policy.rate_limit_max, level)
                }
                ModelBlockKind::Unsupported => policy.model_unsupported_cooldown,
            });
            let until = now.saturating_add(duration.as_millis() as u64);
            match position {
                Some(i) => {
                    let block = &mut blocks[i];
                    if until > block.until_ms {
                        block.until_ms = until;
                        block.since_ms = event_ms();
                    }
                    block.kind = kind;
                    block.level = level + 1;
                }
                None => blocks.push(ModelBlock {
                    model: model.clone(),
                    kind,
                    until_ms: until,
                    level: 1,
                    since_ms: event_ms(),
                }),
            }
            rt.publish_model_deadline(&blocks);
            rt.model_epoch.fetch_add(1, Ordering::AcqRel);
            (until, level + 1)
        };
        let (to, what) = match kind {
            ModelBlockKind::RateLimited => (HealthState::RateLimited, "rate limited on model"),
            ModelBlockKind::Unsupported => (HealthState::ModelUnsupported, "model unsupported"),
        };
        self.emit(
            slot,
            HealthState::Healthy,
            to,
            Some(model),
            format!("{what} (level {level}) for {}", fmt_ms(until - now)),
            self.clock.wall(until, now),
        );
    }

    /// Adds saved or remote model cooldowns to an account's own: a cooldown that has ended is
    /// skipped, one the account already has keeps the later deadline. When anything changed,
    /// returns the account's `model_epoch` as it was just before this change.
    pub(crate) fn merge_model_cooldowns(
        &self,
        slot: &Slot,
        cooldowns: &[ModelCooldown],
        now: u64,
    ) -> Option<u64> {
        let rt = &slot.runtime;
        let mut changed = 0;
        let mut blocks = rt.model_blocks.write().unwrap_or_else(|e| e.into_inner());
        for cooldown in cooldowns {
            let Some(until) = cooldown.until.map(|at| self.clock.deadline(at, now)) else {
                continue;
            };
            if until <= now || cooldown.model.is_empty() {
                continue;
            }
            match blocks.iter_mut().find(|b| *b.model == *cooldown.model) {
                // Within clock rounding (wall and pool clocks convert both ways): the same.
                Some(block) if block.until_ms.saturating_add(500) >= until => continue,
                Some(block) => {
                    block.until_ms = until;
                    block.kind = cooldown.kind;
                    block.since_ms = cooldown.since.map_or(0, |t| epoch_ms::millis(&t));
                }
                None => blocks.push(ModelBlock {
                    model: Arc::from(cooldown.model.as_str()),
                    kind: cooldown.kind,
                    until_ms: until,
                    level: 1,
                    since_ms: cooldown.since.map_or(0, |t| epoch_ms::millis(&t)),
                }),
            }
            changed += 1;
        }
        if changed == 0 {
            return None;
        }
        rt.publish_model_deadline(&blocks);
        Some(rt.model_epoch.fetch_add(1, Ordering::AcqRel))
    }

    /// Applies an outcome to an account's health (the caller counts it).
    pub(crate) fn apply(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        model: Option<&Arc<str>>,
        probe: bool,
        outcome: Outcome,
        message: Option<&str>,
    ) {
        let rt = &slot.runtime;
        let class = outcome.class();
        let now = self.clock.now_ms();
        let policy = &self.policy;

        if probe
            && !matches!(
                outcome,
                Outcome::Transient | Outcome::Cancelled | Outcome::ClientError
            )
        {
            // Anything but a transient failure proves the account answers: close the breaker.
            rt.ejection_level.store(0, Ordering::Release);
            self.transition(
                slot,
                HealthState::Healthy,
                0,
                "half-open probe answered".into(),
            );
        }

        if !matches!(
            class,
            OutcomeClass::Success | OutcomeClass::ClientError | OutcomeClass::Cancelled
        ) {
            let message = message.map_or_else(|| default_message(outcome), str::to_owned);
            rt.lock_details().last_error = Some(LastError {
                at: SystemTime::now(),
                class,
                message,
            });
        }

        match outcome {
            Outcome::Success => self.on_success(slot, model, now),
            Outcome::ClientError | Outcome::Cancelled => {
                if probe {
                    // The probe proved nothing: let the next request probe.
                    self.transition(
                        slot,
                        HealthState::Ejected,
                        now,
                        "half-open probe ended without an answer".into(),
                    );
                }
            }
            Outcome::RateLimited { retry_after, scope } => match (scope, model) {
                (RateLimitScope::Model, Some(model)) => {
                    self.block_model(slot, model, ModelBlockKind::RateLimited, retry_after)
                }
                _ => {
                    let level = rt.rate_limit_level.fetch_add(1, Ordering::AcqRel);
                    let d = retry_after.unwrap_or_else(|| {
                        policy.backoff(policy.rate_limit_base, policy.rate_limit_max, level)
                    });
                    self.transition(
                        slot,
                        HealthState::RateLimited,
                        now.saturating_add(d.as_millis() as u64),
                        format!("rate limited for {}", fmt_ms(d.as_millis() as u64)),
                    );
                }
            },
            Outcome::QuotaExhausted { reset_at } => {
                let (until, reason) = match reset_at {
                    Some(at) => (
                        self.clock.deadline(at, now),
                        "quota exhausted until its reset".to_owned(),
                    ),
                    None => {
                        let level = rt.quota_level.fetch_add(1, Ordering::AcqRel);
                        let d = policy.backoff(policy.quota_base, policy.quota_max, level);
                        (
                            now.saturating_add(d.as_millis() as u64),
                            format!(
                                "quota exhausted (reset unknown); retry in {}",
                                fmt_ms(d.as_millis() as u64)
                            ),
                        )
                    }
                };
                self.transition(slot, HealthState::QuotaExhausted, until, reason);
            }
            Outcome::AuthExpired => {
                let generation = self.transition(
                    slot,
                    HealthState::AuthExpired,
                    NEVER,
                    "credential expired; refreshing".into(),
                );
                self.schedule_refresh(slot, Duration::ZERO, generation);
            }
            Outcome::AuthInvalid => {
                let d = policy.auth_invalid_retry;
                let generation = self.transition(
                    slot,
                    HealthState::AuthInvalid,
                    now.saturating_add(d.as_millis() as u64),
                    format!(
                        "credential invalid; refresh retried in {}",
                        fmt_ms(d.as_millis() as u64)
                    ),
                );
                self.schedule_refresh(slot, d, generation);
            }
            Outcome::Suspended => {
                self.transition(
                    slot,
                    HealthState::Suspended,
                    NEVER,
                    "suspended by the upstream; reset or probe to restore".into(),
                );
            }
            Outcome::ModelUnsupported => match model {
                Some(model) => self.block_model(slot, model, ModelBlockKind::Unsupported, None),
                None => {
                    tracing::debug!(account = %slot.id, "model unsupported reported without a model; ignored")
                }
            },
            Outcome::Transient => self.on_transient(slot, probe, now),
        }
    }

    pub(crate) fn on_success(&self, slot: &Slot, model: Option<&Arc<str>>, now: u64) {
        let rt = &slot.runtime;
        rt.consecutive_failures.store(0, Ordering::Release);
        rt.rate_limit_level.store(0, Ordering::Release);
        rt.quota_level.store(0, Ordering::Release);
        let state = rt.state();
        if matches!(
            state,
            HealthState::RateLimited | HealthState::QuotaExhausted
        ) && rt.until_ms.load(Ordering::Acquire) <= now
        {
            self.transition(slot, HealthState::Healthy, 0, "cooldown over".into());
        }
        if let Some(model) = model {
            if rt.model_blocks_until.load(Ordering::Acquire) != 0 {
                let mut blocks = rt.model_blocks.write().unwrap_or_else(|e| e.into_inner());
                blocks.retain(|b| !(b.model == *model && b.until_ms <= now));
                rt.publish_model_deadline(&blocks);
            }
        }
    }

    pub(crate) fn on_transient(&self, slot: &Slot, probe: bool, now: u64) {
        let rt = &slot.runtime;
        let failures = rt.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let policy = &self.policy;
        if !probe && failures < policy.max_errors {
            return;
        }
        let _ejecting = self.ejecting.lock().unwrap_or_else(|e| e.into_inner());
        let state = rt.state();
        if !probe && state != HealthState::Healthy {
            return; // already out of rotation
        }
        if !probe && policy.panic_threshold > 0 {
            let roster = self.roster.load();
            let others = roster
                .slots
                .iter()
                .filter(|s| !Arc::ptr_eq(&s.runtime, &slot.runtime))
                .filter(|s| Self::health_verdict(s, None, &self.clock.fixed(now)).is_ok())
                .count();
            if others < policy.panic_threshold {
                tracing::warn!(
                    account = %slot.id, failures, available_others = others,
                    "panic threshold: not ejecting an account the pool cannot spare"
                );
                return;
            }
        }
        let level = rt.ejection_level.fetch_add(1, Ordering::AcqRel) + 1;
        let d = policy.backoff(policy.ejection_base, policy.ejection_max, level - 1);
        let reason = if probe {
            format!(
                "half-open probe failed; ejected for {} (level {level})",
                fmt_ms(d.as_millis() as u64)
            )
        } else {
            format!(
                "{failures} consecutive transient failures; ejected for {} (level {level})",
                fmt_ms(d.as_millis() as u64)
            )
        };
        self.transition(
            slot,
            HealthState::Ejected,
            now.saturating_add(d.as_millis() as u64),
            reason,
        );
    }

    pub(crate) fn force_healthy(&self, slot: &Slot, reason: &str) {
        let rt = &slot.runtime;
        let state = rt.state();
        let until = rt.until_ms.load(Ordering::Acquire);
        let timed_and_active = matches!(
            state,
            HealthState::RateLimited | HealthState::QuotaExhausted
        ) && until > self.clock.now_ms();
        if state != HealthState::Healthy && !timed_and_active {
            rt.ejection_level.store(0, Ordering::Release);
            rt.consecutive_failures.store(0, Ordering::Release);
            let at = event_ms();
            rt.lock_details().recovered_ms = at;
            self.transition_since(slot, HealthState::Healthy, 0, reason.into(), Some(at));
        }
    }

    pub(crate) fn reset_slot(&self, slot: &Slot) {
        let rt = &slot.runtime;
        {
            let mut blocks = rt.model_blocks.write().unwrap_or_else(|e| e.into_inner());
            if !blocks.is_empty() {
                blocks.clear();
                rt.model_epoch.fetch_add(1, Ordering::AcqRel);
            }
            rt.publish_model_deadline(&blocks);
        }
        rt.consecutive_failures.store(0, Ordering::Release);
        rt.ejection_level.store(0, Ordering::Release);
        rt.rate_limit_level.store(0, Ordering::Release);
        rt.quota_level.store(0, Ordering::Release);
        let at = event_ms();
        {
            let mut details = rt.lock_details();
            details.last_error = None;
            details.reset_ms = at;
        }
        self.transition_since(
            slot,
            HealthState::Healthy,
            0,
            "reset by operator".into(),
            Some(at),
        );
    }

    /// Refreshes a credential in the background after `delay`, if nothing else changed the
    /// account's state meanwhile.
    pub(crate) fn schedule_refresh(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        delay: Duration,
        generation: u64,
    ) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                account = %slot.id,
                "no tokio runtime: the credential will not be refreshed automatically; call Pool::refresh_credential"
            );
            return;
        };
        let weak: Weak<Shared> = Arc::downgrade(self);
        let slot = slot.clone();
        handle.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let current =
                |slot: &Slot| slot.runtime.generation.load(Ordering::Acquire) == generation;
            match weak.upgrade() {
                Some(shared) if current(&slot) && shared.is_member(&slot) => {}
                _ => return,
            }
            let result = slot.credential.refresh(RefreshMode::Forced).await;
            if let Some(shared) = weak.upgrade() {
                shared.after_refresh(&slot, generation, &result, true);
            }
        });
    }

    /// A slot for `account` in this pool.
    pub(crate) fn slot_for(self: &Arc<Self>, account: Account, runtime: Arc<Runtime>) -> Arc<Slot> {
        new_slot(account, runtime, &Arc::downgrade(self), &self.models)
    }

    pub(crate) fn is_member(&self, slot: &Slot) -> bool {
        self.roster
            .load()
            .get(slot.id.as_str())
            .is_some_and(|s| Arc::ptr_eq(&s.runtime, &slot.runtime))
    }

    /// Moves an account according to a refresh result. Background refreshes (`scheduled`)
    /// only act if the state did not move since they were scheduled, and keep retrying.
    pub(crate) fn after_refresh(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        generation: u64,
        result: &Result<(), CredentialError>,
        scheduled: bool,
    ) {
        let rt = &slot.runtime;
        if scheduled && rt.generation.load(Ordering::Acquire) != generation {
            return;
        }
        let state = rt.state();
        let waiting = matches!(state, HealthState::AuthExpired | HealthState::AuthInvalid);
        let now = self.clock.now_ms();
        match result {
            Ok(()) if waiting => {
                self.transition(slot, HealthState::Healthy, 0, "credential refreshed".into());
            }
            Ok(()) => {}
            Err(CredentialError::Unavailable(why)) if waiting || scheduled => {
                let d = self.policy.jittered(self.policy.refresh_retry);
                let generation = self.transition(
                    slot,
                    HealthState::AuthExpired,
                    NEVER,
                    format!(
                        "credential refresh failed ({why}); retrying in {}",
                        fmt_ms(d.as_millis() as u64)
                    ),
                );
                self.schedule_refresh(slot, d, generation);
            }
            Err(e @ (CredentialError::NotRefreshable(_) | CredentialError::InvalidHeader(_))) => {
                self.transition(
                    slot,
                    HealthState::AuthInvalid,
                    NEVER,
                    format!("{e}; fix the credential and reset the account"),
                );
            }
            Err(e) => {
                let d = self.policy.auth_invalid_retry;
                let generation = self.transition(
                    slot,
                    HealthState::AuthInvalid,
                    now.saturating_add(d.as_millis() as u64),
                    format!("{e}; refresh retried in {}", fmt_ms(d.as_millis() as u64)),
                );
                self.schedule_refresh(slot, d, generation);
            }
        }
    }

    pub(crate) fn account_snapshot(&self, slot: &Slot, now: u64) -> AccountSnapshot {
        let rt = &slot.runtime;
        let stored = rt.state();
        let until = rt.until_ms.load(Ordering::Acquire);
        let verdict = Self::health_verdict(slot, None, &self.clock.fixed(now));
        let expired = until <= now;
        let underlying_state = match stored {
            HealthState::Ejected if expired => HealthState::HalfOpen,
            HealthState::RateLimited | HealthState::QuotaExhausted if expired => {
                HealthState::Healthy
            }
            s => s,
        };
        let state = if slot.settings.enabled {
            underlying_state
        } else {
            HealthState::Disabled
        };
        let details = rt.lock_details();
        let reason = match state {
            HealthState::Healthy => None,
            HealthState::Disabled => Some("disabled by operator".to_owned()),
            HealthState::HalfOpen if stored == HealthState::Ejected => {
                Some("ejection over; the next request is a probe".to_owned())
            }
            _ => details.reason.clone(),
        };
        let last_error = details.last_error.clone();
        drop(details);
        // A disabled account keeps its cooldown (stores write it; it still applies once the
        // account is enabled again).
        let next_retry_at = match underlying_state {
            HealthState::RateLimited
            | HealthState::QuotaExhausted
            | HealthState::Ejected
            | HealthState::AuthInvalid => self.clock.wall(until, now),
            _ => None,
        };
        let model_cooldowns = {
            let blocks = rt.model_blocks.read().unwrap_or_else(|e| e.into_inner());
            blocks
                .iter()
                .filter(|b| b.until_ms > now)
                .map(|b| ModelCooldown {
                    model: b.model.to_string(),
                    kind: b.kind,
                    until: self.clock.wall(b.until_ms, now),
                    since: wall_of(b.since_ms),
                })
                .collect()
        };
        let in_flight = rt.in_flight.load(Ordering::Acquire);
        let below_limit = slot
            .settings
            .max_in_flight
            .is_none_or(|max| in_flight < max);
        let mut counters = Counters {
            requests: rt.requests(),
            ..Counters::default()
        };
        for &class in OutcomeClass::ALL {
            *counters.outcome_mut(class) = rt.outcome_count(class);
        }
        AccountSnapshot {
            id: slot.id.clone(),
            settings: slot.settings.clone(),
            credential: slot.credential.masked(),
            state,
            underlying_state,
            reason,
            available: verdict.is_ok() && below_limit,
            next_retry_at,
            model_cooldowns,
            in_flight,
            consecutive_failures: rt.consecutive_failures.load(Ordering::Relaxed),
            ejection_level: rt.ejection_level.load(Ordering::Relaxed),
            counters,
            last_used: match rt.last_used_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => UNIX_EPOCH.checked_add(Duration::from_millis(ms)),
            },
            last_error,
            quota_reset: match rt.quota_reset_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => UNIX_EPOCH.checked_add(Duration::from_millis(ms)),
            },
        }
    }
}

/// A wall-clock epoch-ms event time (0: none).
pub(crate) fn wall_of(ms: u64) -> Option<SystemTime> {
    (ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
}

impl Shared {
    /// What a store keeps of an account now, with the event times stores merge by.
    pub(crate) fn persisted(&self, slot: &Slot, now: u64) -> PersistedState {
        let mut state = self.account_snapshot(slot, now).persisted();
        let details = slot.runtime.lock_details();
        state.since = wall_of(details.since_ms);
        state.reset_at = wall_of(details.reset_ms);
        state.recovered_at = wall_of(details.recovered_ms);
        if details.enabled_ms != 0 {
            state.enabled = Some(slot.settings.enabled);
            state.enabled_at = wall_of(details.enabled_ms);
        }
        state
    }
}

fn default_message(outcome: Outcome) -> String {
    match outcome {
        Outcome::RateLimited {
            retry_after: Some(d),
            ..
        } => format!("rate limited; retry after {}", fmt_ms(d.as_millis() as u64)),
        other => other.class().as_str().replace('_', " "),
    }
}

/// Formats milliseconds for reasons: `850ms`, `12.5s`, `30m`, `12h`.
fn fmt_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1_000.0),
        60_000..3_600_000 => format!("{:.1}m", ms as f64 / 60_000.0),
        _ => format!("{:.1}h", ms as f64 / 3_600_000.0),
    }
}

// ===== snapshot =====

/// Every account of the pool at one moment: the single source for admin views and `/health`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolSnapshot {
    /// The selection strategy.
    pub strategy: Strategy,
    /// When the snapshot was taken.
    #[serde(with = "epoch_ms")]
    pub taken_at: SystemTime,
    /// The accounts, in priority order.
    pub accounts: Vec<AccountSnapshot>,
}

impl PoolSnapshot {
    /// One account by id.
    pub fn account(&self, id: &str) -> Option<&AccountSnapshot> {
        self.accounts.iter().find(|a| a.id.as_str() == id)
    }

    /// How many accounts could take a request without a model right now (the same predicate
    /// selection uses).
    pub fn available(&self) -> usize {
        self.accounts.iter().filter(|a| a.available).count()
    }
}

/// One account at one moment. Holds no secret: the credential is masked.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountSnapshot {
    /// The account's id.
    pub id: AccountId,
    /// Its settings.
    pub settings: AccountSettings,
    /// Its credential, masked.
    pub credential: MaskedCredential,
    /// Its state now (cooldowns that ended read as `Healthy`, an ejection that ended as
    /// `HalfOpen`).
    pub state: HealthState,
    /// The runtime state under a `Disabled` setting (equal to `state` otherwise).
    pub underlying_state: HealthState,
    /// Why it is in that state.
    pub reason: Option<String>,
    /// Whether it could take a request without a model now.
    pub available: bool,
    /// When its (underlying) state ends by itself, if it does.
    #[serde(with = "epoch_ms::option")]
    pub next_retry_at: Option<SystemTime>,
    /// Active (account, model) cooldowns.
    pub model_cooldowns: Vec<ModelCooldown>,
    /// Requests in flight.
    pub in_flight: u32,
    /// Transient failures since the last success.
    pub consecutive_failures: u32,
    /// How many times in a row it was ejected.
    pub ejection_level: u32,
    /// Lifetime counters.
    pub counters: Counters,
    /// When it last started a request.
    #[serde(with = "epoch_ms::option")]
    pub last_used: Option<SystemTime>,
    /// The last error it saw.
    pub last_error: Option<LastError>,
    /// When its quota next resets, as a probe reported it (see [`Pool::set_quota_reset`]).
    #[serde(with = "epoch_ms::option")]
    pub quota_reset: Option<SystemTime>,
}

/// A cooldown scoped to one (account, model) pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelCooldown {
    /// The model.
    pub model: String,
    /// Why.
    pub kind: ModelBlockKind,
    /// Until when.
    #[serde(with = "epoch_ms::option")]
    pub until: Option<SystemTime>,
    /// When it was set or last extended (`None`: unknown, older than any reset). Stores
    /// shared by several processes use it to tell whether an operator's reset came after it.
    #[serde(
        default,
        with = "epoch_ms::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub since: Option<SystemTime>,
}

/// Lifetime counters of one account. `requests` counts leases handed out; each ends in exactly
/// one outcome, so `requests` equals the sum of the outcomes plus the leases in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[allow(missing_docs)]
pub struct Counters {
    pub requests: u64,
    pub successes: u64,
    pub client_errors: u64,
    pub rate_limited: u64,
    pub quota_exhausted: u64,
    pub auth_expired: u64,
    pub auth_invalid: u64,
    pub suspended: u64,
    pub model_unsupported: u64,
    pub transient: u64,
    pub cancelled: u64,
}

impl Counters {
    /// Sum of every outcome counted.
    pub fn outcomes(&self) -> u64 {
        OutcomeClass::ALL.iter().map(|c| self.outcome(*c)).sum()
    }

    /// Outcomes that were the account's fault.
    pub fn errors(&self) -> u64 {
        let harmless = [
            OutcomeClass::Success,
            OutcomeClass::ClientError,
            OutcomeClass::Cancelled,
        ];
        OutcomeClass::ALL
            .iter()
            .filter(|c| !harmless.contains(c))
            .map(|c| self.outcome(*c))
            .sum()
    }

    /// The count of one outcome class.
    pub fn outcome(&self, class: OutcomeClass) -> u64 {
        let mut copy = *self;
        *copy.outcome_mut(class)
    }

    /// The counter of one outcome class, to set it.
    pub fn outcome_mut(&mut self, class: OutcomeClass) -> &mut u64 {
        match class {
            OutcomeClass::Success => &mut self.successes,
            OutcomeClass::ClientError => &mut self.client_errors,
            OutcomeClass::RateLimited => &mut self.rate_limited,
            OutcomeClass::QuotaExhausted => &mut self.quota_exhausted,
            OutcomeClass::AuthExpired => &mut self.auth_expired,
            OutcomeClass::AuthInvalid => &mut self.auth_invalid,
            OutcomeClass::Suspended => &mut self.suspended,
            OutcomeClass::ModelUnsupported => &mut self.model_unsupported,
            OutcomeClass::Transient => &mut self.transient,
            OutcomeClass::Cancelled => &mut self.cancelled,
        }
    }
}

/// Runtime state of one account as stores and pool files keep it (see
/// [`Pool::restore_state`] and [`AccountSnapshot::persisted`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PersistedState {
    /// The account-wide state.
    pub state: HealthState,
    /// Why it is in that state.
    pub reason: Option<String>,
    /// When the state ends by itself, if it does.
    #[serde(with = "epoch_ms::option")]
    pub until: Option<SystemTime>,
    /// Transient failures since the last success.
    pub consecutive_failures: u32,
    /// Consecutive ejections.
    pub ejection_level: u32,
    /// Lifetime counters.
    pub counters: Counters,
    /// When it last started a request.
    #[serde(with = "epoch_ms::option")]
    pub last_used: Option<SystemTime>,
    /// The last error it saw.
    pub last_error: Option<LastError>,
    /// Cooldowns on single models (rate limits and unsupported models scoped to a model) that
    /// had not ended when it was saved; restored ones keep their deadlines.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub model_cooldowns: Vec<ModelCooldown>,
    /// When `state` began (`None`: unknown, older than any reset: e.g. seeded from the older
    /// system's fields).
    #[serde(with = "epoch_ms::option", skip_serializing_if = "Option::is_none")]
    pub since: Option<SystemTime>,
    /// The latest operator reset ([`Pool::reset`]): it ends every cooldown set before it.
    #[serde(with = "epoch_ms::option", skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<SystemTime>,
    /// The latest successful active probe ([`Pool::report_probe`]) that ended a suspension or
    /// an ejection: it ends the account-wide cooldowns set before it.
    #[serde(with = "epoch_ms::option", skip_serializing_if = "Option::is_none")]
    pub recovered_at: Option<SystemTime>,
    /// The operator's latest [`Pool::enable`] (`true`) or [`Pool::disable`] (`false`); `None`
    /// when no operator changed it (the configuration's setting applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// When the operator made that change.
    #[serde(with = "epoch_ms::option", skip_serializing_if = "Option::is_none")]
    pub enabled_at: Option<SystemTime>,
}

impl Default for PersistedState {
    fn default() -> Self {
        PersistedState {
            state: HealthState::Healthy,
            reason: None,
            until: None,
            consecutive_failures: 0,
            ejection_level: 0,
            counters: Counters::default(),
            last_used: None,
            last_error: None,
            model_cooldowns: Vec::new(),
            since: None,
            reset_at: None,
            recovered_at: None,
            enabled: None,
            enabled_at: None,
        }
    }
}

impl AccountSnapshot {
    /// The part of this snapshot a store keeps. A disabled account keeps its underlying
    /// state (being disabled is a setting).
    pub fn persisted(&self) -> PersistedState {
        PersistedState {
            state: match self.state {
                HealthState::Disabled => self.underlying_state,
                s => s,
            },
            reason: self
                .reason
                .clone()
                .filter(|_| self.state != HealthState::Disabled),
            until: self.next_retry_at,
            consecutive_failures: self.consecutive_failures,
            ejection_level: self.ejection_level,
            counters: self.counters,
            last_used: self.last_used,
            last_error: self.last_error.clone(),
            model_cooldowns: self.model_cooldowns.clone(),
            since: None,
            reset_at: None,
            recovered_at: None,
            enabled: None,
            enabled_at: None,
        }
    }
}

/// Serde helpers: `SystemTime` as Unix epoch milliseconds.
pub(crate) mod epoch_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(UNIX_EPOCH + Duration::from_millis(u64::deserialize(d)?))
    }

    pub(crate) fn millis(t: &SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(millis(t))
    }

    pub(crate) mod option {
        use super::*;

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            Ok(Option::<u64>::deserialize(d)?.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)))
        }

        pub(crate) fn serialize<S: Serializer>(
            t: &Option<SystemTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_some(&millis(t)),
                None => s.serialize_none(),
            }
        }
    }
}
