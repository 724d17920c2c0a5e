//! Account health: outcomes, the health policy and the state machine they drive.
//!
//! Every request ends in one [`Outcome`], reported through its [`Lease`](crate::pool::Lease). The pool
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
//! use tower_account_pool::{Account, health::HealthPolicy, Outcome, Pool, SelectRequest, HealthState};
//! use tower_account_pool::credential::NoCredential;
//!
//! let pool = Pool::builder()
//!     .account(Account::new("a", NoCredential))
//!     .account(Account::new("b", NoCredential))
//!     .health(HealthPolicy::default().with_max_errors(1))
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

mod backoff;
mod events;
mod machine;
mod policy;
mod state;

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub(crate) use crate::time::NEVER;
pub use backoff::{Backoff, Jitter};
pub use events::StateChange;
pub(crate) use machine::{Health, Host, Member};
pub use policy::{HealthPolicy, PolicyError};
pub(crate) use state::{ModelBlock, Runtime};

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
    /// [`StateChange`]s; the account as a whole stays as it was.
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

/// Why an (account, model) pair is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ModelBlockKind {
    /// Rate limited on this model.
    RateLimited,
    /// The account does not serve this model.
    Unsupported,
}

/// The last error an account saw. Messages never hold secrets: they come from classifiers,
/// which only describe what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    /// When it happened.
    #[serde(with = "crate::time::epoch_ms")]
    pub at: SystemTime,
    /// Its class.
    pub class: OutcomeClass,
    /// A short description.
    pub message: String,
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
    #[serde(with = "crate::time::epoch_ms::option")]
    pub until: Option<SystemTime>,
    /// When it was set or last extended (`None`: unknown, older than any reset). Stores
    /// shared by several processes use it to tell whether an operator's reset came after it.
    #[serde(
        default,
        with = "crate::time::epoch_ms::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub since: Option<SystemTime>,
}
