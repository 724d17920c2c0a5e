//! Selection: strategies, the selection request, and the typed [`Exhausted`] error.
//!
//! One predicate decides whether an account may take a request — enabled, available now
//! (cooldown passed, or a half-open probe permit free), model allowed, in-flight below its limit,
//! not already tried by this request — and it is used everywhere: selection, the snapshot's
//! `available` flag and the admin API's `/health`.
//!
//! ```
//! use tower_account_pool::{Account, Pool, SelectRequest, Strategy};
//! use tower_account_pool::credential::NoCredential;
//!
//! let pool = Pool::builder()
//!     .accounts((0..3).map(|i| Account::new(format!("acct-{i}"), NoCredential)))
//!     .strategy(Strategy::RoundRobin)
//!     .build()
//!     .unwrap();
//!
//! let mut seen = Vec::new();
//! for _ in 0..3 {
//!     let lease = pool.select(&SelectRequest::for_model("claude-sonnet-4-5")).unwrap();
//!     seen.push(lease.id().to_string());
//! }
//! seen.sort();
//! assert_eq!(seen, ["acct-0", "acct-1", "acct-2"]);
//! ```
//!
//! # Cost
//!
//! Round-robin, fill-first and least-in-flight look at a constant number of accounts in the
//! common case (when most accounts are available), take no pool-wide lock and allocate nothing.
//! Least-recently-used, weighted and soonest-reset look at every account of the first tier with
//! an available account: O(n), fine for hundreds of accounts. An [`Exhausted`] answer looks at every account
//! once, to say why.

mod engine;
mod roster;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::account::AccountId;

pub(crate) use engine::Selector;
pub(crate) use roster::{ModelRef, Roster, Slot};

/// Default time a sticky session stays pinned to its account after its last request.
pub const DEFAULT_AFFINITY_TTL: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// How the pool chooses among the available accounts of a priority tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum Strategy {
    /// Each account in turn; fair per model (every model has its own cursor). The default.
    #[default]
    RoundRobin,
    /// The account whose last request started longest ago.
    LeastRecentlyUsed,
    /// The less busy of two accounts picked at random (power of two choices).
    LeastInFlight,
    /// Smooth weighted round-robin over the accounts' weights.
    Weighted,
    /// The first available account, in order, until it is unavailable (rolling-window quotas).
    FillFirst,
    /// The available account whose quota resets soonest (as probes reported it through
    /// [`Pool::set_quota_reset`](crate::Pool::set_quota_reset)), so that quota about to be
    /// renewed is spent before quota that must last; accounts with no known reset come last,
    /// and ties go round-robin.
    SoonestReset,
}

/// What a request needs from the pool.
///
/// ```
/// use tower_account_pool::{AccountId, SelectRequest};
///
/// let tried = [AccountId::new("acct-1")];
/// let request = SelectRequest::for_model("claude-sonnet-4-5")
///     .with_affinity_key("conversation-42")
///     .excluding(&tried);
/// assert_eq!(request.model, Some("claude-sonnet-4-5"));
/// assert_eq!(request.exclude.len(), 1);
/// ```
///
/// Its fields can be read; it is built with [`default`](Self::default) (no model, no key,
/// nothing excluded) or [`for_model`](Self::for_model) and the `with_*` setters.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct SelectRequest<'a> {
    /// The model the request is for; accounts that do not serve it are skipped.
    pub model: Option<&'a str>,
    /// A sticky-session key: requests with the same key go to the same account while it is
    /// available (for the pool's affinity TTL).
    pub affinity_key: Option<&'a str>,
    /// Accounts this request already tried.
    pub exclude: &'a [AccountId],
}

impl<'a> SelectRequest<'a> {
    /// A request for `model`.
    pub fn for_model(model: &'a str) -> Self {
        SelectRequest {
            model: Some(model),
            ..SelectRequest::default()
        }
    }

    /// Sets the model (`None`: the request names none).
    pub fn with_model(mut self, model: Option<&'a str>) -> Self {
        self.model = model;
        self
    }

    /// Sets the affinity key.
    pub fn with_affinity_key(mut self, key: &'a str) -> Self {
        self.affinity_key = Some(key);
        self
    }

    /// Sets the accounts to skip.
    pub fn excluding(mut self, exclude: &'a [AccountId]) -> Self {
        self.exclude = exclude;
        self
    }

    pub(crate) fn excludes(&self, id: &AccountId) -> bool {
        self.exclude.iter().any(|e| e == id)
    }
}

macro_rules! unavailable_reasons {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Why an account could not take a request.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub enum Unavailable {
            $(
                #[doc = $doc]
                $variant,
            )*
        }

        impl Unavailable {
            /// Every reason, in counter order.
            pub const ALL: &'static [Unavailable] = &[$(Unavailable::$variant),*];

            /// The reason as a short label.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Unavailable::$variant => $name,)*
                }
            }
        }
    };
}

unavailable_reasons! {
    Disabled => "disabled", "Disabled by an operator.";
    Excluded => "already tried", "Already tried by this request.";
    ModelNotAllowed => "model not allowed", "Its settings do not allow the model.";
    ModelUnsupported => "model unsupported", "It reported that it does not serve the model.";
    RateLimited => "rate limited", "Rate limited (on the account or on the model).";
    QuotaExhausted => "quota exhausted", "Out of quota.";
    AuthExpired => "refreshing credential", "Its credential is being refreshed.";
    AuthInvalid => "credential invalid", "Its credential is invalid.";
    Suspended => "suspended", "Suspended.";
    Ejected => "ejected", "Ejected after transient failures.";
    ProbeInFlight => "half-open probe in flight", "Half-open and its one probe is in flight.";
    AtCapacity => "at in-flight limit", "At its in-flight limit.";
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// No account could take the request: why, per reason, and when the earliest one returns.
///
/// ```
/// use tower_account_pool::{Account, Pool, SelectRequest, select::Unavailable};
/// use tower_account_pool::credential::NoCredential;
///
/// let pool = Pool::builder()
///     .account(Account::new("a", NoCredential).enabled(false))
///     .build()
///     .unwrap();
/// let err = pool.select(&SelectRequest::default()).unwrap_err();
/// assert_eq!(err.count(Unavailable::Disabled), 1);
/// assert_eq!(err.retry_after(), None);
/// assert_eq!(err.to_string(), "no account available (1 disabled)");
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    counts: [u32; Unavailable::ALL.len()],
    retry_after: Option<Duration>,
}

impl Exhausted {
    pub(crate) fn new() -> Self {
        Exhausted {
            counts: [0; Unavailable::ALL.len()],
            retry_after: None,
        }
    }

    pub(crate) fn add(&mut self, reason: Unavailable, retry_after: Option<Duration>) {
        self.counts[reason as usize] += 1;
        if let Some(after) = retry_after {
            self.retry_after = Some(self.retry_after.map_or(after, |r| r.min(after)));
        }
    }

    /// How many accounts were unavailable for `reason`.
    pub fn count(&self, reason: Unavailable) -> u32 {
        self.counts[reason as usize]
    }

    /// Every reason with a non-zero count.
    pub fn reasons(&self) -> impl Iterator<Item = (Unavailable, u32)> + '_ {
        Unavailable::ALL
            .iter()
            .map(|&r| (r, self.count(r)))
            .filter(|&(_, n)| n > 0)
    }

    /// How many accounts the pool looked at.
    pub fn total(&self) -> u32 {
        self.counts.iter().sum()
    }

    /// When the earliest timed block ends (a cooldown, an ejection, a quota reset), if any
    /// account will come back by itself.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// True when every candidate is rate limited or out of quota: the pool is saturated rather
    /// than broken (a gateway answers 429, else 503). Candidates are the accounts that could
    /// serve the request: not already tried, not disabled, serving its model.
    pub fn is_rate_limited(&self) -> bool {
        let limited =
            self.count(Unavailable::RateLimited) + self.count(Unavailable::QuotaExhausted);
        let not_candidates = self.count(Unavailable::Excluded)
            + self.count(Unavailable::Disabled)
            + self.count(Unavailable::ModelNotAllowed)
            + self.count(Unavailable::ModelUnsupported);
        limited > 0 && limited == self.total() - not_candidates
    }
}

impl fmt::Debug for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (reason, n) in self.reasons() {
            map.entry(&reason, &n);
        }
        map.entry(&"retry_after", &self.retry_after);
        map.finish()
    }
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no account available")?;
        if self.total() == 0 {
            return f.write_str(" (the pool has no accounts)");
        }
        f.write_str(" (")?;
        for (i, (reason, n)) in self.reasons().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n} {reason}")?;
        }
        f.write_str(")")?;
        if let Some(after) = self.retry_after {
            write!(f, "; the earliest returns in {:.1}s", after.as_secs_f64())?;
        }
        Ok(())
    }
}

impl std::error::Error for Exhausted {}
