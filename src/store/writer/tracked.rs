//! What the writer knows about each account: the values last written to (or learnt from) the
//! store, and how an account's current state compares with them.

use std::sync::atomic::Ordering;

use crate::health::Runtime;
use crate::pool::AccountHandle;
use crate::store::codec::{CounterArray, COUNTERS};

/// What the writer knows about one account: the values last written to (or learnt from) the
/// store, so that only what this process changed since is written.
#[derive(Debug)]
pub(super) struct Tracked {
    /// Counter values already in the store.
    pub(super) baseline: CounterArray,
    pub(super) generation: u64,
    pub(super) failures: u32,
    pub(super) ejection_level: u32,
    /// The runtime's `model_epoch` last written.
    pub(super) model_epoch: u64,
    /// The operator's last enable or disable written (wall epoch ms; 0: none).
    pub(super) enabled_ms: u64,
    /// The settings last written or seen.
    pub(super) settings: crate::account::AccountSettings,
    /// The store does not hold the account yet: written once in full.
    pub(super) fresh: bool,
}

impl Tracked {
    pub(super) fn observe(slot: &AccountHandle) -> Tracked {
        let rt = &slot.runtime();
        Tracked {
            baseline: [0; COUNTERS],
            generation: rt.generation.load(Ordering::Acquire),
            failures: rt.consecutive_failures.load(Ordering::Acquire),
            ejection_level: rt.ejection_level.load(Ordering::Acquire),
            model_epoch: rt.model_epoch.load(Ordering::Acquire),
            enabled_ms: rt.lock_details().enabled_ms,
            settings: slot.settings().clone(),
            fresh: false,
        }
    }

    /// Takes the account's current values as written (after applying what the store holds).
    pub(super) fn resync(&mut self, slot: &AccountHandle) {
        let baseline = self.baseline;
        let fresh = self.fresh;
        *self = Tracked::observe(slot);
        self.baseline = baseline;
        self.fresh = fresh;
    }

    pub(super) fn state_changed(&self, slot: &AccountHandle) -> bool {
        let rt = &slot.runtime();
        self.generation != rt.generation.load(Ordering::Acquire)
            || self.failures != rt.consecutive_failures.load(Ordering::Acquire)
            || self.ejection_level != rt.ejection_level.load(Ordering::Acquire)
    }

    pub(super) fn models_changed(&self, slot: &AccountHandle) -> bool {
        self.model_epoch != slot.runtime().model_epoch.load(Ordering::Acquire)
    }

    pub(super) fn enabled_changed(&self, slot: &AccountHandle) -> bool {
        self.enabled_ms != slot.runtime().lock_details().enabled_ms
    }

    pub(super) fn pending(&self, slot: &AccountHandle) -> bool {
        self.state_changed(slot) || self.models_changed(slot) || self.enabled_changed(slot)
    }
}

/// Whether an account holds a change made in this process (an event with a time: a cooldown,
/// a reset, an operator's enable or disable), as opposed to state seeded from a file.
pub(super) fn has_local_events(slot: &AccountHandle) -> bool {
    let rt = &slot.runtime();
    let details = rt.lock_details();
    let events = details.since_ms != 0
        || details.reset_ms != 0
        || details.recovered_ms != 0
        || details.enabled_ms != 0;
    drop(details);
    events
        || rt
            .model_blocks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|b| b.since_ms != 0)
}

/// The counters in array order: `requests`, then the outcome classes in their order.
///
/// Stores keep *completed* requests (the sum of the outcomes): a request still in flight is
/// counted when it ends, so the totals of several processes add up exactly and folding another
/// process's outcomes into this one's counters keeps `requests` consistent.
pub(super) fn read_counters(rt: &Runtime) -> CounterArray {
    let mut counters = [0; COUNTERS];
    for (i, outcome) in rt.outcomes.iter().enumerate() {
        counters[i + 1] = outcome.load(Ordering::Relaxed);
    }
    counters[0] = counters[1..].iter().sum();
    counters
}
