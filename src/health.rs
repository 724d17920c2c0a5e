//! Account health: outcomes, the health policy and the state machine they drive.
//!
//! Every request ends in one [`Outcome`], reported through its [`Lease`](crate::Lease). The pool
//! turns outcomes into account states following a [`HealthPolicy`]:
//!
//! | outcome | effect (defaults) |
//! |---|---|
//! | `Success` | consecutive failures reset; a half-open probe closes; expired cooldowns end |
//! | `ClientError` | nothing: the request was at fault |
//! | `RateLimited` | cool down for the given `retry_after`, else 1 s × 2^n up to 30 min, ±10 % jitter; scope (account, model) unless the scope is the account; not an error |
//! | `QuotaExhausted` | unavailable until `reset_at`, else 1 h × 2^n up to 24 h |
//! | `AuthExpired` | unavailable while the credential is refreshed (forced); success → healthy, rejection → `AuthInvalid` |
//! | `AuthInvalid` | unavailable; refresh retried every 30 min; visible reason |
//! | `Suspended` | unavailable until an operator resets it or a probe succeeds |
//! | `ModelUnsupported` | that (account, model) unavailable for 12 h |
//! | `Transient` | consecutive failures + 1; at 3 the account is ejected for 30 s × 2^(k-1), capped at 5 min, ±10 % jitter; then **half-open**: exactly one request is let through as a probe |
//! | `Cancelled` | nothing (a lease dropped without a report counts as this) |
//!
//! Transient failures never eject an account when that would leave fewer than
//! [`HealthPolicy::panic_threshold`] accounts available (default 1: never the last one).
//!
//! ```
//! use std::time::Duration;
//! use tower_account_pool::{Account, HealthPolicy, Outcome, Pool, SelectRequest, HealthState};
//! use tower_account_pool::credential::NoCredential;
//!
//! let pool = Pool::builder()
//!     .account(Account::new("a", NoCredential))
//!     .account(Account::new("b", NoCredential))
//!     .health(HealthPolicy { max_errors: 1, ..HealthPolicy::default() })
//!     .build()
//!     .unwrap();
//!
//! let lease = pool.select(&SelectRequest::default()).unwrap();
//! let failed = lease.id().clone();
//! lease.report(Outcome::Transient);
//!
//! let snapshot = pool.snapshot();
//! let account = snapshot.account(failed.as_str()).unwrap();
//! assert_eq!(account.state, HealthState::Ejected);
//! assert!(account.next_retry_at.is_some());
//! ```

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// What happened to one request on one account, as the classifier saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The upstream served the request.
    Success,
    /// The request itself was at fault (400, 413, 422, validation errors): no retry, no penalty.
    ClientError,
    /// The account is rate limited.
    RateLimited {
        /// How long the upstream asked us to wait, if it said.
        retry_after: Option<Duration>,
        /// Whether the limit applies to the requested model only or to the whole account.
        scope: RateLimitScope,
    },
    /// The account's quota is used up.
    QuotaExhausted {
        /// When the quota resets, if known.
        reset_at: Option<SystemTime>,
    },
    /// The upstream rejected the credential as expired: refresh it and retry.
    AuthExpired,
    /// The credential is invalid and could not be refreshed.
    AuthInvalid,
    /// The account is suspended, locked or needs payment.
    Suspended,
    /// The account does not serve the requested model.
    ModelUnsupported,
    /// A failure that may pass: 5xx, 408, timeout, connection error.
    Transient,
    /// The client went away before an outcome was known.
    Cancelled,
}

impl Outcome {
    /// A rate limit on the requested model with an optional `retry_after`.
    pub const fn rate_limited(retry_after: Option<Duration>) -> Self {
        Outcome::RateLimited {
            retry_after,
            scope: RateLimitScope::Model,
        }
    }

    /// The outcome's class, without its data.
    pub const fn class(&self) -> OutcomeClass {
        match self {
            Outcome::Success => OutcomeClass::Success,
            Outcome::ClientError => OutcomeClass::ClientError,
            Outcome::RateLimited { .. } => OutcomeClass::RateLimited,
            Outcome::QuotaExhausted { .. } => OutcomeClass::QuotaExhausted,
            Outcome::AuthExpired => OutcomeClass::AuthExpired,
            Outcome::AuthInvalid => OutcomeClass::AuthInvalid,
            Outcome::Suspended => OutcomeClass::Suspended,
            Outcome::ModelUnsupported => OutcomeClass::ModelUnsupported,
            Outcome::Transient => OutcomeClass::Transient,
            Outcome::Cancelled => OutcomeClass::Cancelled,
        }
    }
}

/// What a rate limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitScope {
    /// Only the model the request asked for (the default; an account without a model in its
    /// request is limited as a whole).
    #[default]
    Model,
    /// The whole account.
    Account,
}

macro_rules! outcome_classes {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// An [`Outcome`] without its data: used for counters and metrics.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub enum OutcomeClass {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
        }

        impl OutcomeClass {
            /// Every class, in counter order.
            pub const ALL: &'static [OutcomeClass] = &[$(OutcomeClass::$variant),*];

            /// The class as a `snake_case` label (for metrics).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(OutcomeClass::$variant => $name,)*
                }
            }
        }
    };
}

outcome_classes! {
    Success => "success",
    ClientError => "client_error",
    RateLimited => "rate_limited",
    QuotaExhausted => "quota_exhausted",
    AuthExpired => "auth_expired",
    AuthInvalid => "auth_invalid",
    Suspended => "suspended",
    ModelUnsupported => "model_unsupported",
    Transient => "transient",
    Cancelled => "cancelled",
}

impl fmt::Display for OutcomeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The account-wide health state, as reported by [`Pool::snapshot`](crate::Pool::snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[repr(u8)]
pub enum HealthState {
    /// Serving requests.
    Healthy = 0,
    /// Rate limited as a whole until a deadline.
    RateLimited = 1,
    /// Out of quota until a reset time.
    QuotaExhausted = 2,
    /// The credential is being refreshed.
    AuthExpired = 3,
    /// The credential is invalid; refresh is retried on a schedule.
    AuthInvalid = 4,
    /// Suspended until reset by an operator or a successful probe.
    Suspended = 5,
    /// Ejected after consecutive transient failures, until a deadline.
    Ejected = 6,
    /// Ejection over; one probe request is in flight.
    HalfOpen = 7,
    /// Disabled by an operator (a setting, not a runtime state).
    Disabled = 8,
    /// The account does not serve one model. Appears only in model-scoped
    /// [`StateChange`](crate::StateChange)s; the account as a whole stays as it was.
    ModelUnsupported = 9,
}

impl HealthState {
    pub(crate) fn from_u8(value: u8) -> HealthState {
        match value {
            0 => HealthState::Healthy,
            1 => HealthState::RateLimited,
            2 => HealthState::QuotaExhausted,
            3 => HealthState::AuthExpired,
            4 => HealthState::AuthInvalid,
            5 => HealthState::Suspended,
            6 => HealthState::Ejected,
            7 => HealthState::HalfOpen,
            8 => HealthState::Disabled,
            _ => HealthState::ModelUnsupported,
        }
    }

    /// The state as a `snake_case` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::RateLimited => "rate_limited",
            HealthState::QuotaExhausted => "quota_exhausted",
            HealthState::AuthExpired => "auth_expired",
            HealthState::AuthInvalid => "auth_invalid",
            HealthState::Suspended => "suspended",
            HealthState::Ejected => "ejected",
            HealthState::HalfOpen => "half_open",
            HealthState::Disabled => "disabled",
            HealthState::ModelUnsupported => "model_unsupported",
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How outcomes move accounts between states. Every duration is configurable; the defaults are
/// those of the table in the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthPolicy {
    /// First rate-limit cooldown when the upstream gave no `retry_after` (doubles per repeat).
    pub rate_limit_base: Duration,
    /// Longest rate-limit cooldown without a `retry_after`.
    pub rate_limit_max: Duration,
    /// First quota cooldown when the reset time is unknown (doubles per repeat).
    pub quota_base: Duration,
    /// Longest quota cooldown when the reset time is unknown.
    pub quota_max: Duration,
    /// How often the refresh of an invalid credential is retried.
    pub auth_invalid_retry: Duration,
    /// How soon a refresh that failed for a passing reason (network, 5xx) is retried.
    pub refresh_retry: Duration,
    /// How long an (account, model) pair stays unavailable after `ModelUnsupported`.
    pub model_unsupported_cooldown: Duration,
    /// Consecutive transient failures that eject an account.
    pub max_errors: u32,
    /// First ejection (the k-th lasts `base × 2^(k-1)`).
    pub ejection_base: Duration,
    /// Longest ejection.
    pub ejection_max: Duration,
    /// Random spread applied to computed cooldowns and ejections (0.1 = ±10 %). Upstream-given
    /// `retry_after` and reset times are honoured exactly.
    pub jitter: f64,
    /// Transient failures never eject an account when fewer than this many accounts would stay
    /// available. Default 1: the last available account is never ejected. 0 turns it off.
    pub panic_threshold: usize,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            rate_limit_base: Duration::from_secs(1),
            rate_limit_max: Duration::from_secs(30 * 60),
            quota_base: Duration::from_secs(60 * 60),
            quota_max: Duration::from_secs(24 * 60 * 60),
            auth_invalid_retry: Duration::from_secs(30 * 60),
            refresh_retry: Duration::from_secs(60),
            model_unsupported_cooldown: Duration::from_secs(12 * 60 * 60),
            max_errors: 3,
            ejection_base: Duration::from_secs(30),
            ejection_max: Duration::from_secs(5 * 60),
            jitter: 0.1,
            panic_threshold: 1,
        }
    }
}

impl HealthPolicy {
    /// `base × 2^level`, capped at `max`, with jitter.
    pub(crate) fn backoff(&self, base: Duration, max: Duration, level: u32) -> Duration {
        let factor = 2u32.saturating_pow(level.min(30));
        let raw = base.saturating_mul(factor).min(max);
        self.jittered(raw)
    }

    pub(crate) fn jittered(&self, d: Duration) -> Duration {
        if self.jitter <= 0.0 {
            return d;
        }
        let spread = (fastrand::f64() * 2.0 - 1.0) * self.jitter;
        d.mul_f64((1.0 + spread).max(0.0))
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.max_errors == 0 {
            return Err("health policy: max_errors must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(format!(
                "health policy: jitter must be in [0, 1), got {}",
                self.jitter
            ));
        }
        let pairs = [
            ("rate_limit", self.rate_limit_base, self.rate_limit_max),
            ("quota", self.quota_base, self.quota_max),
            ("ejection", self.ejection_base, self.ejection_max),
        ];
        for (name, base, max) in pairs {
            if base.is_zero() || base > max {
                return Err(format!(
                    "health policy: {name}_base must be non-zero and at most {name}_max"
                ));
            }
        }
        Ok(())
    }
}

/// A deadline meaning "until someone acts".
pub(crate) const NEVER: u64 = u64::MAX;

/// Why an (account, model) pair is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ModelBlockKind {
    /// Rate limited on this model.
    RateLimited,
    /// The account does not serve this model.
    Unsupported,
}

#[derive(Debug, Clone)]
pub(crate) struct ModelBlock {
    pub(crate) model: std::sync::Arc<str>,
    pub(crate) kind: ModelBlockKind,
    pub(crate) until_ms: u64,
    pub(crate) level: u32,
    /// When it was set (wall-clock epoch ms; 0: unknown, older than any reset).
    pub(crate) since_ms: u64,
}

/// The last error an account saw. Messages never hold secrets: they come from classifiers,
/// which only describe what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    /// When it happened.
    #[serde(with = "crate::pool::epoch_ms")]
    pub at: SystemTime,
    /// Its class.
    pub class: OutcomeClass,
    /// A short description.
    pub message: String,
}

/// Slow-changing runtime details, guarded by the account's own lock (never a pool-wide one).
#[derive(Debug, Default)]
pub(crate) struct Details {
    pub(crate) reason: Option<String>,
    pub(crate) last_error: Option<LastError>,
    /// When the account-wide state was entered (wall-clock epoch ms; 0: unknown, e.g. seeded
    /// from a pool file, older than any reset).
    pub(crate) since_ms: u64,
    /// The latest operator reset (wall-clock epoch ms; 0: none).
    pub(crate) reset_ms: u64,
    /// The latest successful active probe that cleared a suspension or ejection (0: none).
    pub(crate) recovered_ms: u64,
    /// The latest operator enable or disable (0: none since the pool was built).
    pub(crate) enabled_ms: u64,
    /// The outcome counters as last restored (from a pool file or a store): what the counters
    /// held before this process counted anything of its own.
    pub(crate) restored_outcomes: [u64; OutcomeClass::ALL.len()],
}

/// An account's runtime state: atomics read lock-free by selection, plus a per-account lock
/// taken only on state transitions.
///
/// The fields selection and a successful report touch come first, so that for a healthy
/// account they share one cache line (`repr(C)` keeps the order).
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct Runtime {
    /// Deadline of the account-wide block in pool milliseconds (0: none, `NEVER`: indefinite).
    pub(crate) until_ms: AtomicU64,
    /// Latest deadline of any model block (0 when there are none), for a lock-free fast path.
    pub(crate) model_blocks_until: AtomicU64,
    pub(crate) last_used_ms: AtomicU64,
    pub(crate) in_flight: AtomicU32,
    pub(crate) consecutive_failures: AtomicU32,
    pub(crate) rate_limit_level: AtomicU32,
    pub(crate) quota_level: AtomicU32,
    pub(crate) state: AtomicU8,
    /// Outcome counters; `Success` and `ClientError` still fall in the first cache line.
    pub(crate) outcomes: [AtomicU64; OutcomeClass::ALL.len()],
    pub(crate) ejection_level: AtomicU32,
    /// Bumped on every transition; background refreshes act only if it did not move.
    pub(crate) generation: AtomicU64,
    /// Pool-wide use order, kept only by the least-recently-used strategy (0: never used).
    pub(crate) use_ticket: AtomicU64,
    pub(crate) swrr_current: AtomicI64,
    /// Bumped whenever a model block is added or extended, so that stores notice.
    pub(crate) model_epoch: AtomicU64,
    /// When the account's quota next resets, as a probe reported it (wall-clock epoch ms; 0:
    /// unknown). Read by `Strategy::SoonestReset`.
    pub(crate) quota_reset_ms: AtomicU64,
    pub(crate) model_blocks: RwLock<Vec<ModelBlock>>,
    pub(crate) details: Mutex<Details>,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            state: AtomicU8::new(HealthState::Healthy as u8),
            until_ms: AtomicU64::new(0),
            model_blocks_until: AtomicU64::new(0),
            model_blocks: RwLock::new(Vec::new()),
            in_flight: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejection_level: AtomicU32::new(0),
            rate_limit_level: AtomicU32::new(0),
            quota_level: AtomicU32::new(0),
            generation: AtomicU64::new(0),
            last_used_ms: AtomicU64::new(0),
            use_ticket: AtomicU64::new(0),
            outcomes: Default::default(),
            swrr_current: AtomicI64::new(0),
            model_epoch: AtomicU64::new(0),
            quota_reset_ms: AtomicU64::new(0),
            details: Mutex::new(Details::default()),
        }
    }
}

impl Runtime {
    pub(crate) fn state(&self) -> HealthState {
        HealthState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn count(&self, class: OutcomeClass) {
        self.outcomes[class as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Leases handed out: every one ends in one outcome or is still in flight.
    pub(crate) fn requests(&self) -> u64 {
        let outcomes: u64 = self
            .outcomes
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        outcomes + u64::from(self.in_flight.load(Ordering::Relaxed))
    }

    /// True when a success would change nothing: healthy, no failure streak, no escalation
    /// level, no model block. Loads only.
    pub(crate) fn is_clean(&self) -> bool {
        self.state.load(Ordering::Acquire) == HealthState::Healthy as u8
            && self.consecutive_failures.load(Ordering::Acquire) == 0
            && self.rate_limit_level.load(Ordering::Acquire) == 0
            && self.quota_level.load(Ordering::Acquire) == 0
            && self.model_blocks_until.load(Ordering::Acquire) == 0
    }

    pub(crate) fn outcome_count(&self, class: OutcomeClass) -> u64 {
        self.outcomes[class as usize].load(Ordering::Relaxed)
    }

    /// Publishes the latest deadline of `blocks` (this account's model blocks, read under
    /// their lock) for selection's lock-free check; 0 when there are none.
    pub(crate) fn publish_model_deadline(&self, blocks: &[ModelBlock]) {
        let latest = blocks.iter().map(|b| b.until_ms).max().unwrap_or(0);
        self.model_blocks_until.store(latest, Ordering::Release);
    }

    /// The active block on `model`, if any: its kind and deadline.
    pub(crate) fn model_block(&self, model: &str, now_ms: u64) -> Option<(ModelBlockKind, u64)> {
        if self.model_blocks_until.load(Ordering::Acquire) <= now_ms {
            return None;
        }
        let blocks = self.model_blocks.read().unwrap_or_else(|e| e.into_inner());
        blocks
            .iter()
            .find(|b| &*b.model == model && b.until_ms > now_ms)
            .map(|b| (b.kind, b.until_ms))
    }

    pub(crate) fn lock_details(&self) -> std::sync::MutexGuard<'_, Details> {
        self.details.lock().unwrap_or_else(|e| e.into_inner())
    }
}
