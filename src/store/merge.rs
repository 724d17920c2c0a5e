//! How a store combines what it holds for an account with one process's write (the table is
//! in the [module docs](super)). Every store runs the same function, inside its own atomic
//! section (a mutex, a SQLite transaction, a Redis compare-and-set), so replicas never erase
//! each other's state.

use std::time::SystemTime;

use super::AccountWrite;
use crate::health::HealthState;
use crate::pool::{ModelCooldown, PersistedState};

/// Epoch ms of an optional time (0: none).
pub(crate) fn ms(t: &Option<SystemTime>) -> u64 {
    t.as_ref().map_or(0, crate::time::millis)
}

/// States that keep an account out of rotation until a deadline (or, suspended, until a reset).
pub(crate) fn is_cooldown(state: HealthState) -> bool {
    matches!(
        state,
        HealthState::RateLimited
            | HealthState::QuotaExhausted
            | HealthState::Ejected
            | HealthState::Suspended
    )
}

/// When a cooldown ends, in epoch ms: never for a suspension; 0 for states that are not
/// cooldowns.
pub(crate) fn deadline(state: &PersistedState) -> u64 {
    match state.state {
        HealthState::Suspended => u64::MAX,
        s if is_cooldown(s) => ms(&state.until),
        _ => 0,
    }
}

/// A cooldown that an operator's reset (or a successful active probe) made after it began
/// has ended.
pub(crate) fn voided(state: &PersistedState, reset: u64, recovered: u64) -> bool {
    let since = ms(&state.since);
    is_cooldown(state.state)
        && ((reset != 0 && since <= reset) || (recovered != 0 && since <= recovered))
}

fn healthy_since(stored: &mut PersistedState, at: u64) {
    stored.state = HealthState::Healthy;
    stored.reason = None;
    stored.until = None;
    stored.since = (at != 0).then(|| crate::time::from_millis(at));
    stored.consecutive_failures = 0;
    stored.ejection_level = 0;
}

/// Merges `write` into `stored` (the store's record of the account), as of `now`.
pub(crate) fn merge(stored: &mut PersistedState, write: &AccountWrite, now: SystemTime) {
    let now_ms = crate::time::millis(&now);
    let incoming = &write.state;
    // Resets: the newest wins.
    let reset = ms(&stored.reset_at).max(ms(&incoming.reset_at));
    let recovered = ms(&stored.recovered_at).max(ms(&incoming.recovered_at));
    stored.reset_at = stored.reset_at.max(incoming.reset_at);
    stored.recovered_at = stored.recovered_at.max(incoming.recovered_at);
    if voided(stored, reset, recovered) {
        let at = if ms(&stored.since) <= reset {
            reset
        } else {
            recovered
        };
        healthy_since(stored, at);
    }
    // The account-wide state.
    if write.state_changed && !voided(incoming, reset, recovered) {
        let stored_active = is_cooldown(stored.state) && deadline(stored) > now_ms;
        let take = if is_cooldown(incoming.state) {
            // The later deadline wins (a tie: the later start).
            !is_cooldown(stored.state)
                || (deadline(incoming), ms(&incoming.since)) > (deadline(stored), ms(&stored.since))
        } else {
            // Automatic state (healthy, a credential state, a probe) never ends a cooldown
            // before its deadline.
            !stored_active
        };
        if take {
            stored.state = incoming.state;
            stored.reason = incoming.reason.clone();
            stored.until = incoming.until;
            stored.since = incoming.since;
            stored.consecutive_failures = incoming.consecutive_failures;
            stored.ejection_level = incoming.ejection_level;
        }
    }
    // Model cooldowns: by model, the later deadline wins; ended or reset ones are dropped.
    let mut models: Vec<ModelCooldown> = Vec::new();
    let incoming_models: &[ModelCooldown] = if write.models_changed {
        &incoming.model_cooldowns
    } else {
        &[]
    };
    for cooldown in stored.model_cooldowns.iter().chain(incoming_models) {
        let until = ms(&cooldown.until);
        let reset_after = reset != 0 && ms(&cooldown.since) <= reset;
        if until <= now_ms || cooldown.model.is_empty() || reset_after {
            continue;
        }
        match models.iter_mut().find(|c| c.model == cooldown.model) {
            Some(kept) if (ms(&kept.until), ms(&kept.since)) >= (until, ms(&cooldown.since)) => {}
            Some(kept) => *kept = cooldown.clone(),
            None => models.push(cooldown.clone()),
        }
    }
    stored.model_cooldowns = models;
    // The operator's enable or disable: the newest wins.
    if ms(&incoming.enabled_at) > ms(&stored.enabled_at) && incoming.enabled.is_some() {
        stored.enabled = incoming.enabled;
        stored.enabled_at = incoming.enabled_at;
    }
    // Counters: increments.
    let c = &mut stored.counters;
    let d = &write.delta;
    c.requests += d.requests;
    for &class in crate::health::OutcomeClass::ALL {
        *c.outcome_mut(class) += d.outcome(class);
    }
    // Last use: the latest; last error: the newest.
    stored.last_used = stored.last_used.max(incoming.last_used);
    if let Some(error) = &incoming.last_error {
        if stored.last_error.as_ref().is_none_or(|e| e.at <= error.at) {
            stored.last_error = Some(error.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::AccountId;
    use crate::pool::Counters;
    use std::time::Duration;

    fn at(ms: u64) -> Option<SystemTime> {
        Some(crate::time::from_millis(ms))
    }

    fn write(state: PersistedState) -> AccountWrite {
        AccountWrite {
            id: AccountId::new("a"),
            state,
            state_changed: true,
            models_changed: true,
            delta: Counters::default(),
            enabled: true,
            enabled_changed: false,
            settings: None,
            credential: None,
        }
    }

    fn cooldown(state: HealthState, since: u64, until: u64) -> PersistedState {
        PersistedState {
            state,
            since: at(since),
            until: at(until),
            ..PersistedState::default()
        }
    }

    #[test]
    fn later_deadline_wins_and_healthy_never_ends_a_cooldown() {
        let now = crate::time::from_millis(1_000);
        let mut stored = cooldown(HealthState::RateLimited, 900, 5_000);
        merge(
            &mut stored,
            &write(cooldown(HealthState::Ejected, 950, 2_000)),
            now,
        );
        assert_eq!(stored.state, HealthState::RateLimited);
        merge(
            &mut stored,
            &write(PersistedState {
                since: at(990),
                ..PersistedState::default()
            }),
            now,
        );
        assert_eq!(stored.state, HealthState::RateLimited, "automatic recovery");
        merge(
            &mut stored,
            &write(cooldown(HealthState::QuotaExhausted, 800, 9_000)),
            now,
        );
        assert_eq!(stored.state, HealthState::QuotaExhausted);
        assert_eq!(stored.until, at(9_000));
        // Once it ended, an automatic state replaces it.
        let later = now + Duration::from_secs(10);
        merge(&mut stored, &write(PersistedState::default()), later);
        assert_eq!(stored.state, HealthState::Healthy);
    }

    #[test]
    fn a_newer_reset_ends_older_cooldowns_only() {
        let now = crate::time::from_millis(1_000);
        let mut stored = cooldown(HealthState::Suspended, 900, 0);
        stored.until = None;
        let reset = PersistedState {
            reset_at: at(950),
            ..PersistedState::default()
        };
        merge(&mut stored, &write(reset), now);
        assert_eq!(stored.state, HealthState::Healthy);
        // A cooldown set before the reset but written after it stays ended.
        merge(
            &mut stored,
            &write(cooldown(HealthState::RateLimited, 940, 9_000)),
            now,
        );
        assert_eq!(stored.state, HealthState::Healthy);
        merge(
            &mut stored,
            &write(cooldown(HealthState::RateLimited, 960, 9_000)),
            now,
        );
        assert_eq!(stored.state, HealthState::RateLimited);
    }

    #[test]
    fn a_successful_probe_ends_the_cooldowns_begun_before_it() {
        let now = crate::time::from_millis(1_000);
        let mut stored = cooldown(HealthState::Suspended, 900, 0);
        stored.until = None;
        merge(
            &mut stored,
            &write(cooldown(HealthState::RateLimited, 910, 5_000)),
            now,
        );
        assert_eq!(stored.state, HealthState::Suspended);
        let probe = PersistedState {
            recovered_at: at(950),
            since: at(950),
            ..PersistedState::default()
        };
        merge(&mut stored, &write(probe), now);
        assert_eq!(stored.state, HealthState::Healthy);
        assert_eq!(stored.recovered_at, at(950));
        merge(
            &mut stored,
            &write(cooldown(HealthState::Ejected, 960, 5_000)),
            now,
        );
        assert_eq!(stored.state, HealthState::Ejected, "a later one holds");
    }

    #[test]
    fn operator_enable_newest_wins_and_counters_add() {
        let now = crate::time::from_millis(1_000);
        let mut stored = PersistedState::default();
        let mut w = write(PersistedState {
            enabled: Some(false),
            enabled_at: at(500),
            ..PersistedState::default()
        });
        w.delta.successes = 2;
        w.delta.requests = 2;
        merge(&mut stored, &w, now);
        let mut older = write(PersistedState {
            enabled: Some(true),
            enabled_at: at(400),
            ..PersistedState::default()
        });
        older.delta.successes = 3;
        older.delta.requests = 3;
        merge(&mut stored, &older, now);
        assert_eq!(stored.enabled, Some(false));
        assert_eq!(stored.counters.successes, 5);
        assert_eq!(stored.counters.requests, 5);
    }
}
