//! The [`HealthPolicy`]: how outcomes move accounts between states.

use std::time::Duration;

use super::backoff::{Backoff, Jitter};

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
    /// `base × 2^level`, capped at `max`, with the policy's jitter.
    pub(crate) fn backoff(&self, base: Duration, max: Duration, level: u32) -> Duration {
        Backoff::new(base, max)
            .with_jitter(Jitter::Spread(self.jitter))
            .delay_at(level)
    }

    /// `d` with the policy's jitter.
    pub(crate) fn jittered(&self, d: Duration) -> Duration {
        Jitter::Spread(self.jitter).apply(d)
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
