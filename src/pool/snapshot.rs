//! Snapshots: every account at one moment ([`PoolSnapshot`], [`AccountSnapshot`]), its
//! [`Counters`], and the part of it stores keep ([`PersistedState`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::account::{AccountId, AccountSettings};
use crate::credential::MaskedCredential;
pub use crate::health::ModelCooldown;
use crate::health::{HealthState, LastError, OutcomeClass};
use crate::select::{Selector, Slot, Strategy};
use crate::time::{epoch_ms, wall_of};

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
    /// When its quota next resets, as a probe reported it (see [`Pool::set_quota_reset`](crate::Pool::set_quota_reset)).
    #[serde(with = "epoch_ms::option")]
    pub quota_reset: Option<SystemTime>,
}

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
/// [`Pool::restore_state`](crate::Pool::restore_state) and [`AccountSnapshot::persisted`]).
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
    /// The latest operator reset ([`Pool::reset`](crate::Pool::reset)): it ends every cooldown set before it.
    #[serde(with = "epoch_ms::option", skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<SystemTime>,
    /// The latest successful active probe ([`Pool::report_probe`](crate::Pool::report_probe)) that ended a suspension or
    /// an ejection: it ends the account-wide cooldowns set before it.
    #[serde(with = "epoch_ms::option", skip_serializing_if = "Option::is_none")]
    pub recovered_at: Option<SystemTime>,
    /// The operator's latest [`Pool::enable`](crate::Pool::enable) (`true`) or [`Pool::disable`](crate::Pool::disable) (`false`); `None`
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

/// One account's snapshot at pool time `now`.
pub(crate) fn account_snapshot(selector: &Selector, slot: &Slot, now: u64) -> AccountSnapshot {
    let rt = &slot.runtime;
    let stored = rt.state();
    let until = rt.until_ms.load(Ordering::Acquire);
    let clock = &selector.health.clock;
    let verdict = Selector::health_verdict(slot, None, &clock.fixed(now));
    let expired = until <= now;
    let underlying_state = match stored {
        HealthState::Ejected if expired => HealthState::HalfOpen,
        HealthState::RateLimited | HealthState::QuotaExhausted if expired => HealthState::Healthy,
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
        | HealthState::AuthInvalid => clock.wall(until, now),
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
                until: clock.wall(b.until_ms, now),
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

/// What a store keeps of an account now, with the event times stores merge by.
pub(crate) fn persisted(selector: &Selector, slot: &Slot, now: u64) -> PersistedState {
    let mut state = account_snapshot(selector, slot, now).persisted();
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
