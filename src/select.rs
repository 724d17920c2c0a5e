//! Selection: strategies, the selection request, and the typed [`Exhausted`] error.
//!
//! One predicate decides whether an account may take a request — enabled, available now
//! (cooldown passed, or a half-open probe permit free), model allowed, in-flight below its limit,
//! not already tried by this request — and it is used everywhere: selection, the snapshot's
//! `available` flag and, later, `/health`.
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

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::account::AccountId;

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
/// let request = SelectRequest {
///     model: Some("claude-sonnet-4-5"),
///     affinity_key: Some("conversation-42"),
///     exclude: &tried,
/// };
/// assert_eq!(request.model, Some("claude-sonnet-4-5"));
/// ```
#[derive(Debug, Clone, Copy, Default)]
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
/// use tower_account_pool::{Account, Pool, SelectRequest, Unavailable};
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

// ===== selection =====

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::pool::{Gate, Grant, LazyNow, ModelRef, Roster, Shared, Slot};

/// One priority tier of the roster: its slots and, index for index, their [`Gate`]s.
#[derive(Clone, Copy)]
struct Tier<'s> {
    slots: &'s [Arc<Slot>],
    gates: &'s [Gate],
}

impl<'s> Tier<'s> {
    fn of(roster: &'s Roster, range: std::ops::Range<usize>) -> Tier<'s> {
        Tier {
            slots: &roster.slots[range.clone()],
            gates: &roster.gates[range],
        }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }
}

/// An account a strategy picked (and acquired): its index in the tier, and whether the
/// request is its half-open probe.
type Pick = (usize, bool);

impl Shared {
    /// Chooses an account: the sticky pin first, then the strategy, tier by tier.
    pub(crate) fn select(&self, request: &SelectRequest<'_>) -> Result<Grant, Exhausted> {
        let roster = self.roster.load();
        let now = &self.clock.lazy();
        let model = self.models.key(request.model);
        let pin = request.affinity_key.map(|key| self.sticky.hash(key));

        if let Some(hash) = pin {
            if let Some(&index) = self
                .sticky
                .get(hash, now.get())
                .and_then(|id| roster.index.get(id.as_str()))
            {
                let tier = Tier::of(&roster, index..index + 1);
                let mut ignored = Exhausted::new();
                if let Some(probe) = self.check(tier, 0, request, now, &mut ignored) {
                    if self.acquire(tier, 0, probe, now, &mut ignored) {
                        let slot = &tier.slots[0];
                        self.sticky.pin(hash, &slot.id, now.get());
                        return Ok(grant(slot, &model, probe));
                    }
                }
            }
        }

        let mut exhausted = Exhausted::new();
        for range in &roster.tiers {
            let tier = Tier::of(&roster, range.clone());
            let picked = match self.strategy {
                Strategy::RoundRobin => {
                    self.round_robin(tier, &model, request, now, &mut exhausted)
                }
                Strategy::FillFirst => self.scan(tier, 0, request, now, &mut exhausted),
                Strategy::LeastInFlight => {
                    self.two_choices(tier, &model, request, now, &mut exhausted)
                }
                Strategy::LeastRecentlyUsed => {
                    self.least_recent(tier, &model, request, now, &mut exhausted)
                }
                Strategy::Weighted => self.weighted(tier, &model, request, now, &mut exhausted),
                Strategy::SoonestReset => {
                    self.soonest_reset(tier, &model, request, now, &mut exhausted)
                }
            };
            if let Some((index, probe)) = picked {
                let slot = &tier.slots[index];
                if let Some(hash) = pin {
                    self.sticky.pin(hash, &slot.id, now.get());
                }
                return Ok(grant(slot, &model, probe));
            }
        }
        Err(exhausted)
    }

    /// Whether the tier's account `i` may take `request` now: `Some(probe)` if so; otherwise
    /// the reason is counted in `exhausted`. Reads the account's gate and runtime state; its
    /// slot only for an exclusion list or model rules.
    #[inline]
    fn check(
        &self,
        tier: Tier<'_>,
        i: usize,
        request: &SelectRequest<'_>,
        now: &LazyNow<'_>,
        exhausted: &mut Exhausted,
    ) -> Option<bool> {
        let gate = &tier.gates[i];
        if !request.exclude.is_empty() && request.excludes(&tier.slots[i].id) {
            exhausted.add(Unavailable::Excluded, None);
            return None;
        }
        let verdict = Self::gate_verdict(
            gate.enabled,
            gate.model_rules,
            &gate.runtime,
            &tier.slots[i],
            request.model,
            now,
        );
        match verdict {
            Ok(probe) => {
                if gate.runtime.in_flight.load(Ordering::Acquire) >= gate.max_in_flight {
                    exhausted.add(Unavailable::AtCapacity, None);
                    return None;
                }
                Some(probe)
            }
            Err((reason, until)) => {
                let timed = until != 0 && until != crate::health::NEVER;
                let after = timed
                    .then(|| until.checked_sub(now.get()))
                    .flatten()
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis);
                exhausted.add(reason, after);
                None
            }
        }
    }

    fn acquire(
        &self,
        tier: Tier<'_>,
        i: usize,
        probe: bool,
        now: &LazyNow<'_>,
        exhausted: &mut Exhausted,
    ) -> bool {
        match self.try_acquire(&tier.slots[i], &tier.gates[i], probe, now) {
            Ok(()) => true,
            Err(reason) => {
                exhausted.add(reason, None);
                false
            }
        }
    }

    /// The first account that can take the request, starting at `start` and wrapping around.
    fn scan(
        &self,
        tier: Tier<'_>,
        start: u64,
        request: &SelectRequest<'_>,
        now: &LazyNow<'_>,
        exhausted: &mut Exhausted,
    ) -> Option<Pick> {
        let n = tier.len() as u64;
        (0..n).find_map(|skipped| {
            let i = ((start + skipped) % n) as usize;
            let probe = self.check(tier, i, request, now, exhausted)?;
            self.acquire(tier, i, probe, now, exhausted)
                .then_some((i, probe))
        })
    }

    fn round_robin(
        &self,
        tier: Tier<'_>,
        model: &ModelRef,
        request: &SelectRequest<'_>,
        now: &LazyNow<'_>,
        exhausted: &mut Exhausted,
    ) -> Option<Pick> {
        let n = tier.len() as u64;
        let cursor = self.models.cursor(model);
        let counted = *exhausted;
        let mut start = cursor.load(Ordering::Relaxed);
        loop {
            let found = (0..n).find_map(|skipped| {
                let i = ((start + skipped) % n) as usize;
                Some((i, self.check(tier, i, request, now, exhausted)?, skipped))
            });
            let Some((i, probe, skipped)) = found else {
                // No account available: the turn is spent all the same.
                cursor.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            // Take the turns up to this account (so a run of unavailable accounts does not make
            // the next available one take all their turns): one atomic step, retried from the
            // new position if another selection moved the cursor meanwhile.
            let next = start + skipped + 1;
            if let Err(moved) =
                cursor.compare_exchange_weak(start, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                start = moved;
                *exhausted = counted;
                continue;
            }
            if self.acquire(tier, i, probe, now, exhausted) {
                if skipped > 0 {
                    // Unavailable accounts are interleaved with available ones: read the state
                    // of the next turns' accounts now, off the critical path, so that it is in
                    // cache when they are visited.
                    for ahead in [next + 1, next + 2] {
                        let runtime = &tier.gates[(ahead % n) as usize].runtime;
                        std::hint::black_box(runtime.state.load(Ordering::Relaxed));
                    }
                }
                return Some((i, probe));
            }
            // Lost a race for that account (its in-flight limit, or a state change): go on
            // with the accounts after it, once each.
            for offset in skipped + 1..n {
                let i = ((start + offset) % n) as usize;
                if let Some(probe) = self.check(tier, i, request, now, exhausted) {
                    if self.acquire(tier, i, probe, now, exhausted) {
                        cursor.fetch_max(start + offset + 1, Ordering::Relaxed);
                        return Some((i, probe));
                    }
                }
            }
            return None;
        }
    }

    fn two_choices(
        &self,
        tier: Tier<'_>,
        model: &ModelRef,
        request: &SelectRequest<'_>,
        now: &LazyNow<'_>,
        exhausted: &mut Exhausted,
    ) -> Option<Pick> {
        let n = tier.len();
        if n >= 2 {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            let mut sampled = Exhausted::new();
            let ca = self.check(tier, a, request, now, &mut sampled);
            let cb = self.check(tier, b, request, now, &mut sampled);
            let load = |i: usize| tier.gates[i].runtime.in_flight.load(Ordering::Relaxed);
            let order = match (ca, cb) {
                (Some(_), Some(_)) if load(b) < load(a) => [(b, cb), (a, ca)],
                _ => [(a, ca), (b, cb)],
            };
            for (i, verdict) in order {
                if let Some(probe) = verdict {
                    if self.acquire(tier, i, probe, now, &mut sampled) {
                        return Some((i, probe));
                    }
                }
            }
        }
        self.round_robin(tier, model, request, now, exhausted)
    }

    fn least_recent(
        &self,
        tier: Tier<'_>,
        model: &ModelRef,
        request: &SelectRequest<'_>,
        now: &LazyNow<'_>,
        exhausted: &mut Exhausted,
    ) -> Option<Pick> {
        self.smallest(tier, model, request, now, exhausted, 0, |i| {
            tier.gates[i].runtime.use_ticket.load(Ordering::Relaxed)
        })
    }

    fn soonest_reset(
        &self,
        tier: Tier<'_>,
        model: &ModelRef,
        request: &SelectRequest<'_>,
        now: &LazyNow<'_>,
        exhausted: &mut Exhausted,
    ) -> Option<Pick> {
        // Ties (the same reset, or none known) go round-robin: scan from the cursor.
        let cursor = self.models.cursor(model);
        let start = cursor.load(Ordering::Relaxed) as usize;
        // A reset that has passed says nothing about the next one: unknown, like none.
        let wall_now = self.clock.wall_ms_coarse();
        let (i, probe) = self.smallest(
            tier,
            model,
            request,
            now,
            exhausted,
            start,
            |i| match tier.gates[i].runtime.quota_reset_ms.load(Ordering::Relaxed) {
                ms if ms <= wall_now => u64::MAX,
                ms => ms,
            },
        )?;
        // The next tie goes to the account after this one (not merely the next position,
        // which would favour the account after a run of unavailable ones).
        cursor.store(i as u64 + 1, Ordering::Relaxed);
        Some((i, probe))
    }

    /// The available account with the smallest `key`, scanning from `start` (of equal keys,
    /// the first), acquired; round-robin if that fails.
    #[allow(clippy::too_many_arguments)]
    fn smallest(
        &self,
        tier: Tier<'_>,
        model: &ModelRef,
        request: &SelectRequest<'_>,
        now: &LazyNow<'_>,
        exhausted: &mut Exhausted,
        start: usize,
        key: impl Fn(usize) -> u64,
    ) -> Option<Pick> {
        let n = tier.len();
        let mut sampled = Exhausted::new();
        let best = (0..n)
            .map(|k| (start + k) % n)
            .filter_map(|i| Some((i, self.check(tier, i, request, now, &mut sampled)?)))
            .min_by_key(|&(i, _)| key(i));
        if let Some((i, probe)) = best {
            if self.acquire(tier, i, probe, now, &mut sampled) {
                return Some((i, probe));
            }
        }
        self.round_robin(tier, model, request, now, exhausted)
    }

    fn weighted(
        &self,
        tier: Tier<'_>,
        model: &ModelRef,
        request: &SelectRequest<'_>,
        now: &LazyNow<'_>,
        exhausted: &mut Exhausted,
    ) -> Option<Pick> {
        let mut sampled = Exhausted::new();
        let mut total = 0i64;
        let mut best: Option<(usize, bool, i64)> = None;
        for i in 0..tier.len() {
            let Some(probe) = self.check(tier, i, request, now, &mut sampled) else {
                continue;
            };
            let weight = i64::from(tier.slots[i].settings.weight);
            total += weight;
            let current = tier.gates[i]
                .runtime
                .swrr_current
                .fetch_add(weight, Ordering::Relaxed)
                + weight;
            if best.is_none_or(|(_, _, c)| current > c) {
                best = Some((i, probe, current));
            }
        }
        if let Some((i, probe, _)) = best {
            tier.gates[i]
                .runtime
                .swrr_current
                .fetch_sub(total, Ordering::Relaxed);
            if self.acquire(tier, i, probe, now, &mut sampled) {
                return Some((i, probe));
            }
        }
        self.round_robin(tier, model, request, now, exhausted)
    }
}

fn grant(slot: &Arc<Slot>, model: &ModelRef, probe: bool) -> Grant {
    Grant {
        slot: slot.clone(),
        model: model.clone(),
        probe,
    }
}
