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

mod builder;
mod error;
mod handle;
mod lease;
mod snapshot;

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::broadcast;

pub use crate::health::StateChange;
pub use crate::select::DEFAULT_AFFINITY_TTL;
pub use builder::PoolBuilder;
pub use error::{BuildError, PolicyError, PoolError, StoreFailure, StoreFailures, StoreSource};
pub use handle::{AccountHandle, WeakPool};
pub use lease::Lease;
pub use snapshot::{AccountSnapshot, Counters, ModelCooldown, PersistedState, PoolSnapshot};

use crate::account::{Account, AccountId, AccountSettings};
use crate::credential::RefreshMode;
use crate::health::{HealthPolicy, HealthState, Host, Outcome, OutcomeClass};
use crate::select::{Exhausted, Roster, SelectRequest, Selector, Slot, Strategy};
use crate::time::{epoch_ms, event_ms, NEVER};

/// Everything a pool handle shares: the selection engine and what only the pool's own
/// operations touch.
pub(crate) struct Shared {
    pub(crate) selector: Arc<Selector>,
    /// Serialises roster changes (admin, reload); never taken by selection.
    pub(crate) changing: Mutex<()>,
    /// Selections that found no account (error path only, so one counter is fine).
    pub(crate) exhaustions: AtomicU64,
    /// Retries on another account, recorded by the layer.
    pub(crate) retries: AtomicU64,
    /// What [`Pool::shutdown`] waits for: the flush of every attached store.
    pub(crate) flushers: Mutex<Vec<Flusher>>,
}

impl Deref for Shared {
    type Target = Selector;

    fn deref(&self) -> &Selector {
        &self.selector
    }
}

/// Flushes one attached store; `Ok` when it has nothing left to write (or has stopped).
pub(crate) type Flusher =
    Box<dyn Fn() -> crate::credential::BoxFuture<'static, Result<(), StoreFailure>> + Send + Sync>;

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
            false => Err(PoolError::Store(StoreFailures::new(failed))),
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
        &self.shared.health.policy
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
        self.shared.health.subscribe()
    }

    /// Number of live sticky sessions.
    pub fn sticky_sessions(&self) -> usize {
        self.shared.sticky.len(self.shared.health.clock.now_ms())
    }

    /// Reports an outcome for an account outside a lease: an active probe's result, or an
    /// outcome learnt elsewhere. A `Success` here also clears `Suspended`, `AuthInvalid` and
    /// ejections, as a successful probe does. Probe outcomes are not request outcomes: the
    /// account's counters do not change.
    pub fn report_probe(&self, id: &str, outcome: Outcome) -> Result<(), PoolError> {
        let slot = self.slot(id)?;
        let selector = &self.shared.selector;
        if outcome == Outcome::Success {
            selector
                .health
                .force_healthy(&slot.runtime, "probe succeeded");
        }
        selector.apply(slot.member(), None, false, outcome, None);
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
                .health
                .emit(&slot.runtime, from, to, None, reason.to_owned(), None);
        }
        Ok(())
    }

    /// Clears an account's health state: healthy, no cooldowns, no failures counted against it.
    /// Its lifetime counters are kept.
    pub fn reset(&self, id: &str) -> Result<(), PoolError> {
        let slot = self.slot(id)?;
        self.shared.health.reset(&slot.runtime);
        Ok(())
    }

    /// Resets every account.
    pub fn reset_all(&self) {
        let roster = self.shared.roster.load_full();
        for slot in &roster.slots {
            self.shared.health.reset(&slot.runtime);
        }
    }

    /// Refreshes an account's credential now (forced). On success an account waiting on its
    /// credential becomes healthy; a rejection marks it `AuthInvalid`.
    pub async fn refresh_credential(&self, id: &str) -> Result<(), PoolError> {
        let slot = self.slot(id)?;
        let generation = slot.runtime.generation.load(Ordering::Acquire);
        let result = slot.credential.refresh(RefreshMode::Forced).await;
        self.shared
            .selector
            .after_refresh(slot.member(), generation, &result, false);
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
        builder::validate_settings(&account.id, roster.slots.len(), &account.settings)?;
        let mut slots = roster.slots.clone();
        slots.push(self.shared.selector.slot_for(account, None));
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
        builder::validate_settings(&old.id, index, &settings)?;
        let mut slots = roster.slots.clone();
        slots[index] = Slot::new(
            old.id.clone(),
            old.credential.clone(),
            settings,
            old.runtime.clone(),
            old.selector.clone(),
            old.models.clone(),
        );
        self.shared.roster.store(Arc::new(Roster::new(slots)));
        Ok(())
    }

    /// Makes the pool hold exactly `accounts` (a reloaded configuration): new ids are added,
    /// missing ones removed, and accounts that stay keep their runtime state even when their
    /// settings or credential changed. Nothing changes if the list is invalid.
    pub fn sync(&self, accounts: Vec<Account>) -> Result<SyncReport, PoolError> {
        builder::validate_accounts(&accounts)?;
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
                    slots.push(
                        self.shared
                            .selector
                            .slot_for(account, Some(old.runtime.clone())),
                    );
                }
                None => {
                    report.added.push(account.id.clone());
                    slots.push(self.shared.selector.slot_for(account, None));
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
        let now = shared.health.clock.now_ms();
        let accounts = roster
            .slots
            .iter()
            .map(|slot| snapshot::account_snapshot(shared, slot, now))
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
        let now = shared.health.clock.now_ms();
        let state = match saved.state {
            HealthState::Disabled | HealthState::ModelUnsupported => HealthState::Healthy,
            HealthState::HalfOpen => HealthState::Ejected,
            s => s,
        };
        let until = match (state, saved.until) {
            (HealthState::Healthy, _) => 0,
            (_, Some(at)) => shared.health.clock.deadline(at, now),
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
        shared
            .health
            .merge_model_cooldowns(rt, &saved.model_cooldowns, now);
        let reason = saved
            .reason
            .clone()
            .unwrap_or_else(|| format!("restored as {state}"));
        // Restoring is not a new event: the state keeps the time it began (0 when unknown).
        let since = saved.since.as_ref().map_or(0, epoch_ms::millis);
        let generation = shared
            .health
            .transition_since(rt, state, until, reason, Some(since));
        match state {
            HealthState::AuthExpired => {
                shared
                    .selector
                    .schedule_refresh(slot.member(), Duration::ZERO, generation)
            }
            HealthState::AuthInvalid if until != NEVER => shared.selector.schedule_refresh(
                slot.member(),
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

    /// The pool-wide health context, for the crate's stores.
    pub(crate) fn health(&self) -> &crate::health::Health {
        &self.shared.health
    }

    /// What a store keeps of an account now, with the event times stores merge by.
    pub(crate) fn persisted(&self, account: &AccountHandle, now: u64) -> PersistedState {
        snapshot::persisted(&self.shared.selector, &account.slot, now)
    }

    /// Makes [`shutdown`](Pool::shutdown) wait for `flush` (a store's).
    pub(crate) fn add_flusher(&self, flush: Flusher) {
        self.shared
            .flushers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(flush);
    }

    fn lock_changes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.shared
            .changing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}
