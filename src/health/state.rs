//! Per-account health state: atomics read lock-free by selection, plus a per-account lock
//! taken only on state transitions.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, RwLock};

use super::{HealthState, LastError, ModelBlockKind, OutcomeClass};
use crate::account::AccountId;

#[derive(Debug, Clone)]
pub(crate) struct ModelBlock {
    pub(crate) model: std::sync::Arc<str>,
    pub(crate) kind: ModelBlockKind,
    pub(crate) until_ms: u64,
    pub(crate) level: u32,
    /// When it was set (wall-clock epoch ms; 0: unknown, older than any reset).
    pub(crate) since_ms: u64,
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
    /// The account this state belongs to (for logs and events; off the first cache line).
    pub(crate) id: AccountId,
}

impl Runtime {
    /// A healthy account's state.
    pub(crate) fn new(id: AccountId) -> Self {
        Runtime {
            id,
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
