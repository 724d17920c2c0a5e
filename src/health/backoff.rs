//! [`Backoff`]: the one doubling, capped, jittered delay of the crate. The health policy uses
//! it for cooldowns and ejections ([`Jitter::Spread`]); the layer for the sleep between
//! attempts ([`Jitter::Equal`], re-exported as `layer::Backoff`).

use std::time::Duration;

/// A doubling delay: the `n`-th (from 0) is `min(base × 2^n, max)`, then jittered.
///
/// As the layer's delay between attempts ([`AccountPoolLayer::backoff`](crate::layer::AccountPoolLayer::backoff)),
/// the sleep before retry `n` (from 1) is the `(n-1)`-th delay; the default jitter,
/// [`Jitter::Equal`], makes it a random time in `[d/2, d]`.
///
/// ```
/// use std::time::Duration;
/// use tower_account_pool::health::{Backoff, Jitter};
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
///     .with_jitter(Jitter::None);
/// assert_eq!(backoff.delay_at(0), Duration::from_millis(100));
/// assert_eq!(backoff.delay_at(2), Duration::from_millis(400));
/// assert_eq!(backoff.delay_at(9), Duration::from_secs(1)); // capped
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: Jitter,
}

/// How a [`Backoff`] spreads its delays so that many clients do not retry in step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// The delay as computed.
    None,
    /// A random time in `[d/2, d]` ("equal jitter"): never longer than computed. The default.
    #[default]
    Equal,
    /// `d × (1 ± f)`, uniformly: `Spread(0.1)` is ±10 % (the health policy's cooldowns and
    /// ejections). `f <= 0` means none.
    Spread(f64),
}

impl Jitter {
    /// `d` with this jitter applied.
    pub fn apply(self, d: Duration) -> Duration {
        match self {
            Jitter::None => d,
            Jitter::Equal => d.mul_f64(0.5 + fastrand::f64() * 0.5),
            Jitter::Spread(f) if f <= 0.0 => d,
            Jitter::Spread(f) => {
                let spread = (fastrand::f64() * 2.0 - 1.0) * f;
                d.mul_f64((1.0 + spread).max(0.0))
            }
        }
    }
}

impl Backoff {
    /// Delays from `base`, doubling up to `max`, with [`Jitter::Equal`].
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            jitter: Jitter::Equal,
        }
    }

    /// Sets the jitter.
    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The first delay.
    pub const fn base(&self) -> Duration {
        self.base
    }

    /// The longest delay (before jitter).
    pub const fn max(&self) -> Duration {
        self.max
    }

    /// The jitter.
    pub const fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The `level`-th delay (from 0): `min(base × 2^level, max)`, jittered.
    pub fn delay_at(&self, level: u32) -> Duration {
        let factor = 2u32.saturating_pow(level.min(30));
        self.jitter
            .apply(self.base.saturating_mul(factor).min(self.max))
    }

    /// The sleep before retry `retry` (from 1), as the layer uses it.
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        self.delay_at(retry.saturating_sub(1))
    }
}
