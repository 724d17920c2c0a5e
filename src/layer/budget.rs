//! A lock-free retry budget: retries may be at most a share of recent requests plus a floor.
//!
//! ```
//! use std::time::Duration;
//! use tower::retry::budget::{Budget, TpsBudget};
//! use tower_account_pool::layer::{AccountPoolLayer, RetryBudget};
//! # use tower_account_pool::{Account, Pool, credential::BearerToken};
//! # let pool = Pool::builder().account(Account::new("a", BearerToken::new("t"))).build().unwrap();
//!
//! // The default: `RetryBudget::default()`. Any tower `Budget` fits, tower's own too.
//! let layer = AccountPoolLayer::new(pool.clone())
//!     .retry_budget(TpsBudget::new(Duration::from_secs(10), 5, 0.1));
//! let layer = AccountPoolLayer::new(pool).retry_budget(RetryBudget::new(Duration::from_secs(5), 1, 0.5));
//! # let _ = layer;
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::budget::Budget;

const SLOTS: usize = 10;

/// Caps retries at a share of recent requests, as tower's
/// [`TpsBudget`](tower::retry::budget::TpsBudget) does, without its lock. It is a tower
/// [`Budget`].
///
/// Every request deposits `percent` of a retry; every retry withdraws one. A floor of
/// `min_per_sec` retries per second is always allowed, so a quiet service can still retry.
/// Deposits and withdrawals are kept per second over a sliding window of `ttl` (at most 10
/// seconds are tracked) in atomics: no lock, no allocation. Under heavy concurrency the
/// accounting is approximate by a few retries, never unbounded. Time is tokio's, so tests can
/// pause it.
///
/// ```
/// use std::time::Duration;
/// use tower_account_pool::layer::RetryBudget;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// // No floor, 20 %: five requests pay for one retry.
/// let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.2);
/// for _ in 0..5 {
///     budget.deposit();
/// }
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw());
/// # });
/// ```
pub struct RetryBudget {
    start: Instant,
    window_secs: u64,
    /// Per-second slots, each `second << 32 | count` (deposits in thousandths of a retry).
    deposits: [AtomicU64; SLOTS],
    withdrawals: [AtomicU64; SLOTS],
    reserve_milli: u64,
    deposit_milli: u64,
}

impl RetryBudget {
    /// A budget over `ttl` (1 to 10 s), with a floor of `min_per_sec` retries per second and
    /// `retry_percent` (0.0 to 1000.0) of requests allowed as retries.
    pub fn new(ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        let window_secs = ttl.as_secs().clamp(1, SLOTS as u64);
        let percent = retry_percent.clamp(0.0, 1000.0);
        RetryBudget {
            start: Instant::now(),
            window_secs,
            deposits: Default::default(),
            withdrawals: Default::default(),
            reserve_milli: u64::from(min_per_sec) * window_secs * 1000,
            deposit_milli: (f64::from(percent) * 1000.0).round() as u64,
        }
    }

    fn now_sec(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.start)
            .as_secs()
            & 0xffff_ffff
    }

    fn add(slots: &[AtomicU64; SLOTS], sec: u64, amount: u64) {
        let slot = &slots[(sec % SLOTS as u64) as usize];
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let base = if current >> 32 == sec {
                current & 0xffff_ffff
            } else {
                0 // a new second reuses the slot
            };
            let next = (sec << 32) | base.saturating_add(amount).min(0xffff_ffff);
            match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    fn sum(&self, slots: &[AtomicU64; SLOTS], sec: u64) -> u64 {
        slots
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .filter(|v| {
                let at = v >> 32;
                at <= sec && sec - at < self.window_secs
            })
            .map(|v| v & 0xffff_ffff)
            .sum()
    }

    /// Records a request.
    pub fn deposit(&self) {
        if self.deposit_milli > 0 {
            Self::add(&self.deposits, self.now_sec(), self.deposit_milli);
        }
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let sec = self.now_sec();
        let available = self.reserve_milli + self.sum(&self.deposits, sec);
        let spent = self.sum(&self.withdrawals, sec);
        if spent + 1000 > available {
            return false;
        }
        Self::add(&self.withdrawals, sec, 1000);
        true
    }
}

impl Budget for RetryBudget {
    fn deposit(&self) {
        RetryBudget::deposit(self);
    }

    fn withdraw(&self) -> bool {
        RetryBudget::withdraw(self)
    }
}

impl Default for RetryBudget {
    /// 10 s window, 10 retries per second floor, 20 % of requests: tower's defaults.
    fn default() -> Self {
        RetryBudget::new(Duration::from_secs(10), 10, 0.2)
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sec = self.now_sec();
        f.debug_struct("RetryBudget")
            .field("window_secs", &self.window_secs)
            .field("deposited_milli", &self.sum(&self.deposits, sec))
            .field("withdrawn_milli", &self.sum(&self.withdrawals, sec))
            .field("reserve_milli", &self.reserve_milli)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn floor_and_share_over_a_sliding_window() {
        let budget = RetryBudget::new(Duration::from_secs(2), 1, 0.5);
        // Floor: 1 per second over 2 s = 2 retries with no requests.
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
        // Two requests at 50 % pay for one more.
        budget.deposit();
        budget.deposit();
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
        // Once the window has passed, the floor is back.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(budget.withdraw());
    }
}
