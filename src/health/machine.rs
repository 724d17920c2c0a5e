//! The health state machine: how an [`Outcome`] (or a refresh result, or an operator's action)
//! moves one account's [`Runtime`] between [`HealthState`]s.
//!
//! It acts on health-owned state only: the account's [`Runtime`] and, to refresh it, its
//! credential ([`Member`]); pool-wide it needs the [`Health`] context (policy, clock, event
//! channel) and, through [`Host`], two questions about the other accounts (for the panic
//! threshold and for background refreshes).

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use super::{
    HealthPolicy, HealthState, LastError, ModelBlock, ModelBlockKind, ModelCooldown, Outcome,
    OutcomeClass, RateLimitScope, Runtime, StateChange,
};
use crate::credential::{CredentialError, RefreshMode, SharedCredential};
use crate::time::{epoch_ms, event_ms, fmt_ms, Clock, NEVER};
use std::sync::atomic::Ordering;

/// The pool-wide part of health: the policy, the clock deadlines are kept in, and the channel
/// [`StateChange`]s go out on.
#[derive(Debug)]
pub(crate) struct Health {
    pub(crate) policy: HealthPolicy,
    pub(crate) clock: Clock,
    pub(super) events: broadcast::Sender<StateChange>,
    /// Serialises ejection decisions so the panic threshold holds under concurrency.
    ejecting: Mutex<()>,
}

/// One account as the machine acts on it: its state and, for refreshes, its credential.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Member<'a> {
    pub(crate) runtime: &'a Arc<Runtime>,
    pub(crate) credential: &'a SharedCredential,
}

/// What the machine asks of the pool around it (implemented by the selection engine, which
/// owns the roster).
pub(crate) trait Host: Send + Sync + Sized + 'static {
    /// The pool-wide health context.
    fn health(&self) -> &Health;

    /// How many accounts other than `rt` could take a request without a model at `now_ms`.
    fn available_others(&self, rt: &Runtime, now_ms: u64) -> usize;

    /// Whether `rt` is still the state of an account of the pool (not removed or replaced).
    fn is_member(&self, rt: &Runtime) -> bool;

    /// Applies an outcome to an account's health (the caller counts it).
    fn apply(
        self: &Arc<Self>,
        member: Member<'_>,
        model: Option<&Arc<str>>,
        probe: bool,
        outcome: Outcome,
        message: Option<&str>,
    ) {
        let health = self.health();
        let rt = &**member.runtime;
        let class = outcome.class();
        let now = health.clock.now_ms();
        let policy = &health.policy;

        if probe
            && !matches!(
                outcome,
                Outcome::Transient | Outcome::Cancelled | Outcome::ClientError
            )
        {
            // Anything but a transient failure proves the account answers: close the breaker.
            rt.ejection_level.store(0, Ordering::Release);
            health.transition(
                rt,
                HealthState::Healthy,
                0,
                "half-open probe answered".into(),
            );
        }

        if !matches!(
            class,
            OutcomeClass::Success | OutcomeClass::ClientError | OutcomeClass::Cancelled
        ) {
            let message = message.map_or_else(|| default_message(outcome), str::to_owned);
            rt.lock_details().last_error = Some(LastError {
                at: SystemTime::now(),
                class,
                message,
            });
        }

        match outcome {
            Outcome::Success => health.on_success(rt, model, now),
            Outcome::ClientError | Outcome::Cancelled => {
                if probe {
                    // The probe proved nothing: let the next request probe.
                    health.transition(
                        rt,
                        HealthState::Ejected,
                        now,
                        "half-open probe ended without an answer".into(),
                    );
                }
            }
            Outcome::RateLimited { retry_after, scope } => match (scope, model) {
                (RateLimitScope::Model, Some(model)) => {
                    health.block_model(rt, model, ModelBlockKind::RateLimited, retry_after)
                }
                _ => {
                    let level = rt.rate_limit_level.fetch_add(1, Ordering::AcqRel);
                    let d = retry_after.unwrap_or_else(|| {
                        policy.backoff(policy.rate_limit_base, policy.rate_limit_max, level)
                    });
                    health.transition(
                        rt,
                        HealthState::RateLimited,
                        now.saturating_add(d.as_millis() as u64),
                        format!("rate limited for {}", fmt_ms(d.as_millis() as u64)),
                    );
                }
            },
            Outcome::QuotaExhausted { reset_at } => {
                let (until, reason) = match reset_at {
                    Some(at) => (
                        health.clock.deadline(at, now),
                        "quota exhausted until its reset".to_owned(),
                    ),
                    None => {
                        let level = rt.quota_level.fetch_add(1, Ordering::AcqRel);
                        let d = policy.backoff(policy.quota_base, policy.quota_max, level);
                        (
                            now.saturating_add(d.as_millis() as u64),
                            format!(
                                "quota exhausted (reset unknown); retry in {}",
                                fmt_ms(d.as_millis() as u64)
                            ),
                        )
                    }
                };
                health.transition(rt, HealthState::QuotaExhausted, until, reason);
            }
            Outcome::AuthExpired => {
                let generation = health.transition(
                    rt,
                    HealthState::AuthExpired,
                    NEVER,
                    "credential expired; refreshing".into(),
                );
                self.schedule_refresh(member, Duration::ZERO, generation);
            }
            Outcome::AuthInvalid => {
                let d = policy.auth_invalid_retry;
                let generation = health.transition(
                    rt,
                    HealthState::AuthInvalid,
                    now.saturating_add(d.as_millis() as u64),
                    format!(
                        "credential invalid; refresh retried in {}",
                        fmt_ms(d.as_millis() as u64)
                    ),
                );
                self.schedule_refresh(member, d, generation);
            }
            Outcome::Suspended => {
                health.transition(
                    rt,
                    HealthState::Suspended,
                    NEVER,
                    "suspended by the upstream; reset or probe to restore".into(),
                );
            }
            Outcome::ModelUnsupported => match model {
                Some(model) => health.block_model(rt, model, ModelBlockKind::Unsupported, None),
                None => {
                    tracing::debug!(account = %rt.id, "model unsupported reported without a model; ignored")
                }
            },
            Outcome::Transient => self.on_transient(rt, probe, now),
        }
    }

    /// A transient failure: counted, and the account ejected at the policy's threshold (or
    /// when it was the half-open probe) unless the pool cannot spare it.
    fn on_transient(&self, rt: &Runtime, probe: bool, now: u64) {
        let health = self.health();
        let failures = rt.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let policy = &health.policy;
        if !probe && failures < policy.max_errors {
            return;
        }
        let _ejecting = health.ejecting.lock().unwrap_or_else(|e| e.into_inner());
        let state = rt.state();
        if !probe && state != HealthState::Healthy {
            return; // already out of rotation
        }
        if !probe && policy.panic_threshold > 0 {
            let others = self.available_others(rt, now);
            if others < policy.panic_threshold {
                tracing::warn!(
                    account = %rt.id, failures, available_others = others,
                    "panic threshold: not ejecting an account the pool cannot spare"
                );
                return;
            }
        }
        let level = rt.ejection_level.fetch_add(1, Ordering::AcqRel) + 1;
        let d = policy.backoff(policy.ejection_base, policy.ejection_max, level - 1);
        let reason = if probe {
            format!(
                "half-open probe failed; ejected for {} (level {level})",
                fmt_ms(d.as_millis() as u64)
            )
        } else {
            format!(
                "{failures} consecutive transient failures; ejected for {} (level {level})",
                fmt_ms(d.as_millis() as u64)
            )
        };
        health.transition(
            rt,
            HealthState::Ejected,
            now.saturating_add(d.as_millis() as u64),
            reason,
        );
    }

    /// Refreshes a credential in the background after `delay`, if nothing else changed the
    /// account's state meanwhile.
    fn schedule_refresh(self: &Arc<Self>, member: Member<'_>, delay: Duration, generation: u64) {
        let rt = member.runtime.clone();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                account = %rt.id,
                "no tokio runtime: the credential will not be refreshed automatically; call Pool::refresh_credential"
            );
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        let credential = member.credential.clone();
        handle.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let current = |rt: &Runtime| rt.generation.load(Ordering::Acquire) == generation;
            match weak.upgrade() {
                Some(host) if current(&rt) && host.is_member(&rt) => {}
                _ => return,
            }
            let result = credential.refresh(RefreshMode::Forced).await;
            if let Some(host) = weak.upgrade() {
                let member = Member {
                    runtime: &rt,
                    credential: &credential,
                };
                host.after_refresh(member, generation, &result, true);
            }
        });
    }

    /// Moves an account according to a refresh result. Background refreshes (`scheduled`)
    /// only act if the state did not move since they were scheduled, and keep retrying.
    fn after_refresh(
        self: &Arc<Self>,
        member: Member<'_>,
        generation: u64,
        result: &Result<(), CredentialError>,
        scheduled: bool,
    ) {
        let health = self.health();
        let rt = &**member.runtime;
        if scheduled && rt.generation.load(Ordering::Acquire) != generation {
            return;
        }
        let state = rt.state();
        let waiting = matches!(state, HealthState::AuthExpired | HealthState::AuthInvalid);
        let now = health.clock.now_ms();
        match result {
            Ok(()) if waiting => {
                health.transition(rt, HealthState::Healthy, 0, "credential refreshed".into());
            }
            Ok(()) => {}
            Err(CredentialError::Unavailable(why)) if waiting || scheduled => {
                let d = health.policy.jittered(health.policy.refresh_retry);
                let generation = health.transition(
                    rt,
                    HealthState::AuthExpired,
                    NEVER,
                    format!(
                        "credential refresh failed ({why}); retrying in {}",
                        fmt_ms(d.as_millis() as u64)
                    ),
                );
                self.schedule_refresh(member, d, generation);
            }
            Err(e @ (CredentialError::NotRefreshable(_) | CredentialError::InvalidHeader(_))) => {
                health.transition(
                    rt,
                    HealthState::AuthInvalid,
                    NEVER,
                    format!("{e}; fix the credential and reset the account"),
                );
            }
            Err(e) => {
                let d = health.policy.auth_invalid_retry;
                let generation = health.transition(
                    rt,
                    HealthState::AuthInvalid,
                    now.saturating_add(d.as_millis() as u64),
                    format!("{e}; refresh retried in {}", fmt_ms(d.as_millis() as u64)),
                );
                self.schedule_refresh(member, d, generation);
            }
        }
    }
}

impl Health {
    pub(crate) fn new(policy: HealthPolicy) -> Self {
        let (events, _) = broadcast::channel(1024);
        Health {
            policy,
            clock: Clock::new(),
            events,
            ejecting: Mutex::new(()),
        }
    }

    /// Receives every state change from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.events.subscribe()
    }

    /// Moves an account to `to` with a deadline and a reason, under its own lock.
    /// A deadline is only ever extended while the state stays the same.
    pub(crate) fn transition(
        &self,
        rt: &Runtime,
        to: HealthState,
        until_ms: u64,
        reason: String,
    ) -> u64 {
        self.transition_since(rt, to, until_ms, reason, None)
    }

    /// [`transition`](Self::transition) recording when the new state began: `since` (wall
    /// epoch ms) for a state restored or learnt from a store, else now.
    pub(crate) fn transition_since(
        &self,
        rt: &Runtime,
        to: HealthState,
        until_ms: u64,
        reason: String,
        since: Option<u64>,
    ) -> u64 {
        let mut details = rt.lock_details();
        let from = rt.state();
        let current = rt.until_ms.load(Ordering::Acquire);
        let kept = from == to && current > until_ms && to != HealthState::Healthy;
        let until_ms = if kept { current } else { until_ms };
        rt.until_ms.store(until_ms, Ordering::Release);
        rt.state.store(to as u8, Ordering::Release);
        let generation = rt.generation.fetch_add(1, Ordering::AcqRel) + 1;
        details.reason = (to != HealthState::Healthy).then(|| reason.clone());
        if !kept {
            details.since_ms = since.unwrap_or_else(event_ms);
        }
        drop(details);
        let now = self.clock.now_ms();
        if from != to || until_ms != current {
            self.emit(rt, from, to, None, reason, self.clock.wall(until_ms, now));
        }
        generation
    }

    pub(crate) fn block_model(
        &self,
        rt: &Runtime,
        model: &Arc<str>,
        kind: ModelBlockKind,
        duration: Option<Duration>,
    ) {
        let now = self.clock.now_ms();
        let policy = &self.policy;
        let (until, level) = {
            let mut blocks = rt.model_blocks.write().unwrap_or_else(|e| e.into_inner());
            let position = blocks.iter().position(|b| b.model == *model);
            let level = position.map_or(0, |i| blocks[i].level);
            let duration = duration.unwrap_or_else(|| match kind {
                ModelBlockKind::RateLimited => {
                    policy.backoff(policy.rate_limit_base, policy.rate_limit_max, level)
                }
                ModelBlockKind::Unsupported => policy.model_unsupported_cooldown,
            });
            let until = now.saturating_add(duration.as_millis() as u64);
            match position {
                Some(i) => {
                    let block = &mut blocks[i];
                    if until > block.until_ms {
                        block.until_ms = until;
                        block.since_ms = event_ms();
                    }
                    block.kind = kind;
                    block.level = level + 1;
                }
                None => blocks.push(ModelBlock {
                    model: model.clone(),
                    kind,
                    until_ms: until,
                    level: 1,
                    since_ms: event_ms(),
                }),
            }
            rt.publish_model_deadline(&blocks);
            rt.model_epoch.fetch_add(1, Ordering::AcqRel);
            (until, level + 1)
        };
        let (to, what) = match kind {
            ModelBlockKind::RateLimited => (HealthState::RateLimited, "rate limited on model"),
            ModelBlockKind::Unsupported => (HealthState::ModelUnsupported, "model unsupported"),
        };
        self.emit(
            rt,
            HealthState::Healthy,
            to,
            Some(model),
            format!("{what} (level {level}) for {}", fmt_ms(until - now)),
            self.clock.wall(until, now),
        );
    }

    /// Adds saved or remote model cooldowns to an account's own: a cooldown that has ended is
    /// skipped, one the account already has keeps the later deadline. When anything changed,
    /// returns the account's `model_epoch` as it was just before this change.
    pub(crate) fn merge_model_cooldowns(
        &self,
        rt: &Runtime,
        cooldowns: &[ModelCooldown],
        now: u64,
    ) -> Option<u64> {
        let mut changed = 0;
        let mut blocks = rt.model_blocks.write().unwrap_or_else(|e| e.into_inner());
        for cooldown in cooldowns {
            let Some(until) = cooldown.until.map(|at| self.clock.deadline(at, now)) else {
                continue;
            };
            if until <= now || cooldown.model.is_empty() {
                continue;
            }
            match blocks.iter_mut().find(|b| *b.model == *cooldown.model) {
                // Within clock rounding (wall and pool clocks convert both ways): the same.
                Some(block) if block.until_ms.saturating_add(500) >= until => continue,
                Some(block) => {
                    block.until_ms = until;
                    block.kind = cooldown.kind;
                    block.since_ms = cooldown.since.map_or(0, |t| epoch_ms::millis(&t));
                }
                None => blocks.push(ModelBlock {
                    model: Arc::from(cooldown.model.as_str()),
                    kind: cooldown.kind,
                    until_ms: until,
                    level: 1,
                    since_ms: cooldown.since.map_or(0, |t| epoch_ms::millis(&t)),
                }),
            }
            changed += 1;
        }
        if changed == 0 {
            return None;
        }
        rt.publish_model_deadline(&blocks);
        Some(rt.model_epoch.fetch_add(1, Ordering::AcqRel))
    }

    /// Applies an outcome to an account's health (the caller counts it).
    pub(crate) fn on_success(&self, rt: &Runtime, model: Option<&Arc<str>>, now: u64) {
        rt.consecutive_failures.store(0, Ordering::Release);
        rt.rate_limit_level.store(0, Ordering::Release);
        rt.quota_level.store(0, Ordering::Release);
        let state = rt.state();
        if matches!(
            state,
            HealthState::RateLimited | HealthState::QuotaExhausted
        ) && rt.until_ms.load(Ordering::Acquire) <= now
        {
            self.transition(rt, HealthState::Healthy, 0, "cooldown over".into());
        }
        if let Some(model) = model {
            if rt.model_blocks_until.load(Ordering::Acquire) != 0 {
                let mut blocks = rt.model_blocks.write().unwrap_or_else(|e| e.into_inner());
                blocks.retain(|b| !(b.model == *model && b.until_ms <= now));
                rt.publish_model_deadline(&blocks);
            }
        }
    }

    pub(crate) fn force_healthy(&self, rt: &Runtime, reason: &str) {
        let state = rt.state();
        let until = rt.until_ms.load(Ordering::Acquire);
        let timed_and_active = matches!(
            state,
            HealthState::RateLimited | HealthState::QuotaExhausted
        ) && until > self.clock.now_ms();
        if state != HealthState::Healthy && !timed_and_active {
            rt.ejection_level.store(0, Ordering::Release);
            rt.consecutive_failures.store(0, Ordering::Release);
            let at = event_ms();
            rt.lock_details().recovered_ms = at;
            self.transition_since(rt, HealthState::Healthy, 0, reason.into(), Some(at));
        }
    }

    pub(crate) fn reset(&self, rt: &Runtime) {
        {
            let mut blocks = rt.model_blocks.write().unwrap_or_else(|e| e.into_inner());
            if !blocks.is_empty() {
                blocks.clear();
                rt.model_epoch.fetch_add(1, Ordering::AcqRel);
            }
            rt.publish_model_deadline(&blocks);
        }
        rt.consecutive_failures.store(0, Ordering::Release);
        rt.ejection_level.store(0, Ordering::Release);
        rt.rate_limit_level.store(0, Ordering::Release);
        rt.quota_level.store(0, Ordering::Release);
        let at = event_ms();
        {
            let mut details = rt.lock_details();
            details.last_error = None;
            details.reset_ms = at;
        }
        self.transition_since(
            rt,
            HealthState::Healthy,
            0,
            "reset by operator".into(),
            Some(at),
        );
    }
}

fn default_message(outcome: Outcome) -> String {
    match outcome {
        Outcome::RateLimited {
            retry_after: Some(d),
            ..
        } => format!("rate limited; retry after {}", fmt_ms(d.as_millis() as u64)),
        other => other.class().as_str().replace('_', " "),
    }
}
