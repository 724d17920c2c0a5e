//! The selection engine: the [`Selector`] owns the roster, the strategy and the pool-wide
//! [`Health`] context, decides which account takes a request (the one eligibility predicate,
//! the strategies, tier by tier) and answers the health machine's questions about the other
//! accounts ([`Host`]).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::roster::{Gate, ModelRef, Models, Roster, Slot, Sticky};
use super::{Exhausted, SelectRequest, Strategy, Unavailable};
use crate::account::Account;
use crate::health::{Health, HealthPolicy, HealthState, Host, ModelBlockKind, Runtime};
use crate::time::{LazyNow, NEVER};

/// The state selection shares across a pool's handles and leases.
#[derive(Debug)]
pub(crate) struct Selector {
    pub(crate) roster: ArcSwap<Roster>,
    pub(crate) strategy: Strategy,
    pub(crate) health: Health,
    pub(crate) models: Arc<Models>,
    pub(crate) sticky: Sticky,
    /// Use order for the least-recently-used strategy (touched by that strategy only).
    pub(crate) use_tickets: AtomicU64,
}

/// An account selection picked and acquired: what the pool wraps in a lease.
pub(crate) struct Grant {
    pub(crate) slot: Arc<Slot>,
    pub(crate) model: ModelRef,
    pub(crate) probe: bool,
}

impl Selector {
    /// A selector over `accounts` (already validated).
    pub(crate) fn new(
        accounts: Vec<Account>,
        strategy: Strategy,
        policy: HealthPolicy,
        affinity_ttl: Duration,
    ) -> Arc<Selector> {
        let models = Arc::new(Models::new());
        Arc::new_cyclic(|weak| {
            let slots = accounts
                .into_iter()
                .map(|a| {
                    let runtime = Arc::new(Runtime::new(a.id.clone()));
                    Slot::new(
                        a.id,
                        a.credential,
                        a.settings,
                        runtime,
                        weak.clone(),
                        models.clone(),
                    )
                })
                .collect();
            Selector {
                roster: ArcSwap::from_pointee(Roster::new(slots)),
                strategy,
                health: Health::new(policy),
                models,
                sticky: Sticky::new(affinity_ttl),
                use_tickets: AtomicU64::new(0),
            }
        })
    }

    /// A slot for `account` in this pool, with `runtime` (kept from an account of the same
    /// id) or a fresh one.
    pub(crate) fn slot_for(
        self: &Arc<Self>,
        account: Account,
        runtime: Option<Arc<Runtime>>,
    ) -> Arc<Slot> {
        let runtime = runtime.unwrap_or_else(|| Arc::new(Runtime::new(account.id.clone())));
        Slot::new(
            account.id,
            account.credential,
            account.settings,
            runtime,
            Arc::downgrade(self),
            self.models.clone(),
        )
    }
}

impl Host for Selector {
    fn health(&self) -> &Health {
        &self.health
    }

    fn available_others(&self, rt: &Runtime, now_ms: u64) -> usize {
        let roster = self.roster.load();
        let now = self.health.clock.fixed(now_ms);
        roster
            .slots
            .iter()
            .filter(|s| !std::ptr::eq(&*s.runtime, rt))
            .filter(|s| Self::health_verdict(s, None, &now).is_ok())
            .count()
    }

    fn is_member(&self, rt: &Runtime) -> bool {
        self.roster
            .load()
            .get(rt.id.as_str())
            .is_some_and(|s| std::ptr::eq(&*s.runtime, rt))
    }
}

impl Selector {
    /// The one eligibility predicate, minus per-request parts (exclusion, in-flight limit):
    /// `Ok(probe)` when the account may be used now, else why not and until when.
    ///
    /// The clock is read only when a deadline has to be compared: a healthy account with no
    /// model cooldown needs none.
    pub(crate) fn health_verdict(
        slot: &Slot,
        model: Option<&str>,
        now: &LazyNow<'_>,
    ) -> Result<bool, (Unavailable, u64)> {
        Self::gate_verdict(
            slot.settings.enabled,
            slot.settings.restricts_models(),
            &slot.runtime,
            slot,
            model,
            now,
        )
    }

    /// [`health_verdict`](Self::health_verdict) from a roster's [`Gate`]: the slot is read
    /// only when the account restricts models.
    #[inline]
    pub(crate) fn gate_verdict(
        enabled: bool,
        model_rules: bool,
        rt: &Runtime,
        slot: &Slot,
        model: Option<&str>,
        now: &LazyNow<'_>,
    ) -> Result<bool, (Unavailable, u64)> {
        if !enabled {
            return Err((Unavailable::Disabled, 0));
        }
        if model_rules && !slot.settings.allows_model(model) {
            return Err((Unavailable::ModelNotAllowed, 0));
        }
        let until = rt.until_ms.load(Ordering::Acquire);
        let probe = match rt.state() {
            HealthState::Healthy => false,
            HealthState::RateLimited if until <= now.get() => false,
            HealthState::QuotaExhausted if until <= now.get() => false,
            HealthState::Ejected if until <= now.get() => true,
            HealthState::RateLimited => return Err((Unavailable::RateLimited, until)),
            HealthState::QuotaExhausted => return Err((Unavailable::QuotaExhausted, until)),
            HealthState::Ejected => return Err((Unavailable::Ejected, until)),
            HealthState::AuthExpired => return Err((Unavailable::AuthExpired, 0)),
            HealthState::AuthInvalid => return Err((Unavailable::AuthInvalid, 0)),
            HealthState::Suspended => return Err((Unavailable::Suspended, 0)),
            HealthState::HalfOpen => return Err((Unavailable::ProbeInFlight, 0)),
            HealthState::Disabled | HealthState::ModelUnsupported => {
                return Err((Unavailable::Disabled, 0))
            }
        };
        let model = model.filter(|_| rt.model_blocks_until.load(Ordering::Acquire) != 0);
        if let Some(model) = model {
            if let Some((kind, until)) = rt.model_block(model, now.get()) {
                let reason = match kind {
                    ModelBlockKind::RateLimited => Unavailable::RateLimited,
                    ModelBlockKind::Unsupported => Unavailable::ModelUnsupported,
                };
                return Err((reason, until));
            }
        }
        Ok(probe)
    }

    /// Takes an in-flight slot (and the probe permit, for a half-open account).
    pub(crate) fn try_acquire(
        &self,
        gate: &Gate,
        probe: bool,
        now: &LazyNow<'_>,
    ) -> Result<(), Unavailable> {
        let rt = &*gate.runtime;
        let before = rt.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= gate.max_in_flight {
            rt.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Unavailable::AtCapacity);
        }
        if probe {
            let _details = rt.lock_details();
            let still_due = rt.state() == HealthState::Ejected
                && rt.until_ms.load(Ordering::Acquire) <= now.get();
            if !still_due {
                drop(_details);
                rt.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(Unavailable::ProbeInFlight);
            }
            rt.state
                .store(HealthState::HalfOpen as u8, Ordering::Release);
            rt.generation.fetch_add(1, Ordering::AcqRel);
            drop(_details);
            self.health.emit(
                rt,
                HealthState::Ejected,
                HealthState::HalfOpen,
                None,
                "ejection over; one probe request admitted".into(),
                None,
            );
        } else {
            // The state may have changed since the verdict: re-check after taking the slot.
            let state = rt.state();
            let until = rt.until_ms.load(Ordering::Acquire);
            let usable = match state {
                HealthState::Healthy => true,
                HealthState::RateLimited | HealthState::QuotaExhausted => until <= now.get(),
                _ => false,
            };
            if !usable {
                rt.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(Unavailable::Ejected);
            }
        }
        rt.last_used_ms
            .store(self.health.clock.wall_ms_coarse(), Ordering::Relaxed);
        if self.strategy == Strategy::LeastRecentlyUsed {
            let ticket = self.use_tickets.fetch_add(1, Ordering::Relaxed) + 1;
            rt.use_ticket.store(ticket, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// One priority tier of the roster: its slots and, index for index, their [`Gate`]s.
#[derive(Clone, Copy)]
struct Tier<'s> {
    slots: &'s [Arc<Slot>],
    gates: &'s [Gate],
}

impl<'s> Tier<'s> {
    fn of(roster: &'s Roster, range: Range<usize>) -> Tier<'s> {
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

impl Selector {
    /// Chooses an account: the sticky pin first, then the strategy, tier by tier.
    pub(crate) fn select(&self, request: &SelectRequest<'_>) -> Result<Grant, Exhausted> {
        let roster = self.roster.load();
        let now = &self.health.clock.lazy();
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
                let timed = until != 0 && until != NEVER;
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
        match self.try_acquire(&tier.gates[i], probe, now) {
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
        let wall_now = self.health.clock.wall_ms_coarse();
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
