//! Other processes' changes applied here, by the same rules the stores merge by.

use std::sync::atomic::Ordering;

use crate::health::{HealthState, NEVER};
use crate::pool::{AccountHandle, PersistedState, Pool};
use crate::store::merge;
use crate::time;

/// Whether this process holds an account-wide cooldown, or a model cooldown, with a later
/// deadline than what the store holds (after [`join_remote`], so none of them is void).
pub(super) fn missing_from(
    pool: &Pool,
    slot: &AccountHandle,
    remote: &PersistedState,
) -> (bool, bool) {
    use merge::{deadline, is_cooldown, ms, voided};
    let health = pool.health();
    let rt = &slot.runtime();
    let now = health.clock.now_ms();
    let slack = 500;
    let remote_deadline = if voided(remote, ms(&remote.reset_at), ms(&remote.recovered_at)) {
        0
    } else {
        deadline(remote)
    };
    let local_deadline = match rt.state() {
        HealthState::Suspended => u64::MAX,
        s if is_cooldown(s) => {
            let until = rt.until_ms.load(Ordering::Acquire);
            if until > now {
                ms(&health.clock.wall(until, now))
            } else {
                0
            }
        }
        _ => 0,
    };
    let state_missing = local_deadline > remote_deadline.saturating_add(slack);
    let models_missing = rt
        .model_blocks
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|b| b.until_ms > now)
        .any(|b| {
            let local = ms(&health.clock.wall(b.until_ms, now));
            let stored = remote
                .model_cooldowns
                .iter()
                .filter(|c| *c.model == *b.model)
                .map(|c| ms(&c.until))
                .max()
                .unwrap_or(0);
            local > stored.saturating_add(slack)
        });
    (state_missing, models_missing)
}

/// Applies what a store holds for an account (written by other processes, merged by the
/// store) to this process's state, by the same rules the store merges by: a newer reset ends
/// the cooldowns that began before it; a cooldown with a later deadline than the local one
/// applies (credential states and a probe in flight stay local); model cooldowns merge by
/// model, the later deadline winning; a newer operator enable or disable applies. Returns
/// whether anything changed.
pub(super) fn join_remote(pool: &Pool, slot: &AccountHandle, remote: &PersistedState) -> bool {
    use merge::{deadline, is_cooldown, ms, voided};
    let health = pool.health();
    let rt = &slot.runtime();
    let mut changed = false;
    let remote_reset = ms(&remote.reset_at);
    let remote_recovered = ms(&remote.recovered_at);
    let (since, reset, recovered, enabled_ms) = {
        let d = rt.lock_details();
        (d.since_ms, d.reset_ms, d.recovered_ms, d.enabled_ms)
    };
    let reset_all = reset.max(remote_reset);
    let recovered_all = recovered.max(remote_recovered);
    // Resets made elsewhere.
    if remote_reset > reset {
        rt.lock_details().reset_ms = remote_reset;
        {
            let mut blocks = rt.model_blocks.write().unwrap_or_else(|e| e.into_inner());
            let before = blocks.len();
            blocks.retain(|b| b.since_ms > remote_reset);
            if blocks.len() != before {
                rt.publish_model_deadline(&blocks);
                rt.model_epoch.fetch_add(1, Ordering::AcqRel);
                changed = true;
            }
        }
        // An operator's reset ends everything that began before it (as `Pool::reset` does
        // here), credential states included.
        if rt.state() != HealthState::Healthy && since <= remote_reset {
            rt.consecutive_failures.store(0, Ordering::Release);
            rt.ejection_level.store(0, Ordering::Release);
            rt.rate_limit_level.store(0, Ordering::Release);
            rt.quota_level.store(0, Ordering::Release);
            health.transition_since(
                slot.runtime(),
                HealthState::Healthy,
                0,
                "reset by operator (in another process)".into(),
                Some(remote_reset),
            );
            changed = true;
        }
    }
    if remote_recovered > recovered {
        rt.lock_details().recovered_ms = remote_recovered;
        if is_cooldown(rt.state()) && since <= remote_recovered {
            rt.consecutive_failures.store(0, Ordering::Release);
            rt.ejection_level.store(0, Ordering::Release);
            health.transition_since(
                slot.runtime(),
                HealthState::Healthy,
                0,
                "probe succeeded (in another process)".into(),
                Some(remote_recovered),
            );
            changed = true;
        }
    }
    // Model cooldowns set after the latest reset.
    let now = health.clock.now_ms();
    let models: Vec<_> = remote
        .model_cooldowns
        .iter()
        .filter(|c| reset_all == 0 || ms(&c.since) > reset_all)
        .cloned()
        .collect();
    if health
        .merge_model_cooldowns(slot.runtime(), &models, now)
        .is_some()
    {
        changed = true;
    }
    // The account-wide cooldown with the later deadline.
    let local = rt.state();
    let wall_now = time::millis(&std::time::SystemTime::now());
    if is_cooldown(remote.state)
        && !voided(remote, reset_all, recovered_all)
        && deadline(remote) > wall_now
        && !matches!(
            local,
            HealthState::AuthExpired | HealthState::AuthInvalid | HealthState::HalfOpen
        )
    {
        let local_until = rt.until_ms.load(Ordering::Acquire);
        let local_deadline = match local {
            HealthState::Suspended => u64::MAX,
            HealthState::RateLimited | HealthState::QuotaExhausted | HealthState::Ejected => {
                ms(&health.clock.wall(local_until, now))
            }
            _ => 0,
        };
        if deadline(remote) > local_deadline.saturating_add(500) {
            let until = match remote.until {
                _ if remote.state == HealthState::Suspended => NEVER,
                Some(at) => health.clock.deadline(at, now),
                None => now,
            };
            rt.ejection_level
                .store(remote.ejection_level, Ordering::Release);
            let reason = remote
                .reason
                .clone()
                .unwrap_or_else(|| format!("{} (set by another process)", remote.state));
            health.transition_since(
                slot.runtime(),
                remote.state,
                until,
                reason,
                Some(ms(&remote.since)),
            );
            changed = true;
        }
    }
    // The operator's latest enable or disable.
    if let (Some(enabled), at) = (remote.enabled, ms(&remote.enabled_at)) {
        if at > enabled_ms {
            rt.lock_details().enabled_ms = at;
            if slot.settings().enabled != enabled {
                let _ = pool.update_settings(slot.id().as_str(), |s| s.enabled = enabled);
                let (from, to) = if enabled {
                    (HealthState::Disabled, rt.state())
                } else {
                    (rt.state(), HealthState::Disabled)
                };
                let what = if enabled { "enabled" } else { "disabled" };
                health.emit(
                    slot.runtime(),
                    from,
                    to,
                    None,
                    format!("{what} by operator (in another process)"),
                    None,
                );
                changed = true;
            }
        }
    }
    changed
}
