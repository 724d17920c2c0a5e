//! The [`HealthPolicy`]: how outcomes move accounts between states.

use std::time::Duration;

use super::backoff::{Backoff, Jitter};

/// How outcomes move accounts between states. Every duration is configurable; the defaults are
/// those of the table in the [module docs](crate::health).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
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
    /// Sets [`rate_limit_base`](Self::rate_limit_base).
    pub const fn with_rate_limit_base(mut self, rate_limit_base: Duration) -> Self {
        self.rate_limit_base = rate_limit_base;
        self
    }

    /// Sets [`rate_limit_max`](Self::rate_limit_max).
    pub const fn with_rate_limit_max(mut self, rate_limit_max: Duration) -> Self {
        self.rate_limit_max = rate_limit_max;
        self
    }

    /// Sets [`quota_base`](Self::quota_base).
    pub const fn with_quota_base(mut self, quota_base: Duration) -> Self {
        self.quota_base = quota_base;
        self
    }

    /// Sets [`quota_max`](Self::quota_max).
    pub const fn with_quota_max(mut self, quota_max: Duration) -> Self {
        self.quota_max = quota_max;
        self
    }

    /// Sets [`auth_invalid_retry`](Self::auth_invalid_retry).
    pub const fn with_auth_invalid_retry(mut self, auth_invalid_retry: Duration) -> Self {
        self.auth_invalid_retry = auth_invalid_retry;
        self
    }

    /// Sets [`refresh_retry`](Self::refresh_retry).
    pub const fn with_refresh_retry(mut self, refresh_retry: Duration) -> Self {
        self.refresh_retry = refresh_retry;
        self
    }

    /// Sets [`model_unsupported_cooldown`](Self::model_unsupported_cooldown).
    pub const fn with_model_unsupported_cooldown(
        mut self,
        model_unsupported_cooldown: Duration,
    ) -> Self {
        self.model_unsupported_cooldown = model_unsupported_cooldown;
        self
    }

    /// Sets [`max_errors`](Self::max_errors).
    pub const fn with_max_errors(mut self, max_errors: u32) -> Self {
        self.max_errors = max_errors;
        self
    }

    /// Sets [`ejection_base`](Self::ejection_base).
    pub const fn with_ejection_base(mut self, ejection_base: Duration) -> Self {
        self.ejection_base = ejection_base;
        self
    }

    /// Sets [`ejection_max`](Self::ejection_max).
    pub const fn with_ejection_max(mut self, ejection_max: Duration) -> Self {
        self.ejection_max = ejection_max;
        self
    }

    /// Sets [`jitter`](Self::jitter).
    pub const fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets [`panic_threshold`](Self::panic_threshold).
    pub const fn with_panic_threshold(mut self, panic_threshold: usize) -> Self {
        self.panic_threshold = panic_threshold;
        self
    }

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

    pub(crate) fn validate(&self) -> Result<(), PolicyError> {
        if self.max_errors == 0 {
            return Err(PolicyError::ZeroMaxErrors);
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(PolicyError::Jitter(self.jitter));
        }
        let pairs = [
            ("rate_limit", self.rate_limit_base, self.rate_limit_max),
            ("quota", self.quota_base, self.quota_max),
            ("ejection", self.ejection_base, self.ejection_max),
        ];
        for (name, base, max) in pairs {
            if base.is_zero() || base > max {
                return Err(PolicyError::Backoff(name));
            }
        }
        Ok(())
    }
}

/// Why a [`HealthPolicy`] is inconsistent (the source of
/// [`BuildError::InvalidPolicy`](crate::pool::BuildError::InvalidPolicy)).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `max_errors` is 0.
    #[error("health policy: max_errors must be at least 1")]
    ZeroMaxErrors,
    /// `jitter` is outside `[0, 1)` (the value given).
    #[error("health policy: jitter must be in [0, 1), got {0}")]
    Jitter(f64),
    /// A backoff's base is zero or above its max (`rate_limit`, `quota` or `ejection`).
    #[error("health policy: {0}_base must be non-zero and at most {0}_max")]
    Backoff(&'static str),
}

impl PartialEq for PolicyError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PolicyError::ZeroMaxErrors, PolicyError::ZeroMaxErrors) => true,
            (PolicyError::Jitter(a), PolicyError::Jitter(b)) => a.to_bits() == b.to_bits(),
            (PolicyError::Backoff(a), PolicyError::Backoff(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for PolicyError {}
