//! How stores encode an account's state: health states by label, counters as arrays in a fixed
//! order (and their column or field names), model cooldowns as JSON.

use crate::health::{HealthState, OutcomeClass};
use crate::pool::Counters;

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

pub(super) const COUNTERS: usize = 1 + OutcomeClass::ALL.len();
pub(super) type CounterArray = [u64; COUNTERS];

/// Model cooldowns as the SQLite and Redis stores keep them: a JSON array, `None` when empty.
#[cfg(any(feature = "sqlite", feature = "redis"))]
pub(super) fn model_cooldowns_to_json(cooldowns: &[crate::pool::ModelCooldown]) -> Option<String> {
    (!cooldowns.is_empty()).then(|| serde_json::to_string(cooldowns).unwrap_or_default())
}

/// Reads what [`model_cooldowns_to_json`] wrote; anything unreadable is dropped with a warning
/// (a cooldown lost is a request that may be rate limited once more, never a failure).
#[cfg(any(feature = "sqlite", feature = "redis"))]
pub(super) fn model_cooldowns_from_json(json: &str) -> Vec<crate::pool::ModelCooldown> {
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
pub(super) const COUNTER_NAMES: [&str; COUNTERS] = [
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

pub(super) fn counters_to_array(c: &Counters) -> CounterArray {
    std::array::from_fn(|i| match i {
        0 => c.requests,
        i => c.outcome(OutcomeClass::ALL[i - 1]),
    })
}

pub(super) fn counters_from_array(a: &CounterArray) -> Counters {
    let mut counters = Counters {
        requests: a[0],
        ..Counters::default()
    };
    for (i, &class) in OutcomeClass::ALL.iter().enumerate() {
        *counters.outcome_mut(class) = a[i + 1];
    }
    counters
}
