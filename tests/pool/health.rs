//! Every row of the health table (SPEC section 4), on virtual time.

use crate::support;

#[cfg(feature = "test-util")]
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use support::builder;
use tower_account_pool::credential::NoCredential;
#[cfg(feature = "test-util")]
use tower_account_pool::credential::{CredentialError, RefreshMode};
#[cfg(feature = "test-util")]
use tower_account_pool::testing::MockCredential;
use tower_account_pool::{
    health::HealthPolicy, health::RateLimitScope, select::Unavailable, Account, AccountId,
    HealthState, Outcome, Pool, SelectRequest,
};

const MODEL: &str = "claude-sonnet-4-5";

fn one(pool: &Pool, id: &str) -> tower_account_pool::pool::Lease {
    let others: Vec<AccountId> = pool.ids().into_iter().filter(|i| *i != id).collect();
    pool.select(&SelectRequest::for_model(MODEL).excluding(&others))
        .unwrap_or_else(|e| panic!("{id} should be selectable: {e}"))
}

fn selectable(pool: &Pool, id: &str, model: &str) -> Result<(), tower_account_pool::Exhausted> {
    let others: Vec<AccountId> = pool.ids().into_iter().filter(|i| *i != id).collect();
    pool.select(&SelectRequest::for_model(model).excluding(&others))
        .map(|lease| lease.report(Outcome::Cancelled))
}

fn state(pool: &Pool, id: &str) -> HealthState {
    pool.snapshot().account(id).unwrap().state
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Advances virtual time until `id` becomes selectable for `model`; returns how long it took.
async fn time_until_selectable(pool: &Pool, id: &str, model: &str, limit: Duration) -> Duration {
    let step = Duration::from_millis(10);
    let mut waited = Duration::ZERO;
    while selectable(pool, id, model).is_err() {
        assert!(waited < limit, "{id} still unavailable after {waited:?}");
        tokio::time::advance(step).await;
        waited += step;
    }
    waited
}

#[tokio::test(start_paused = true)]
async fn success_resets_consecutive_failures() {
    let pool = builder(2).build().unwrap();
    one(&pool, "a0").report(Outcome::Transient);
    one(&pool, "a0").report(Outcome::Transient);
    assert_eq!(
        pool.snapshot().account("a0").unwrap().consecutive_failures,
        2
    );
    one(&pool, "a0").report(Outcome::Success);
    let a0 = pool.snapshot().account("a0").unwrap().clone();
    assert_eq!(a0.consecutive_failures, 0);
    assert_eq!(a0.state, HealthState::Healthy);
    assert_eq!(a0.counters.successes, 1);
    assert_eq!(a0.counters.transient, 2);
}

#[tokio::test(start_paused = true)]
async fn client_errors_carry_no_penalty() {
    let pool = builder(2).build().unwrap();
    for _ in 0..10 {
        one(&pool, "a0").report(Outcome::ClientError);
    }
    let a0 = pool.snapshot().account("a0").unwrap().clone();
    assert_eq!(a0.state, HealthState::Healthy);
    assert_eq!(a0.consecutive_failures, 0);
    assert_eq!(a0.counters.client_errors, 10);
    assert!(a0.last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn rate_limit_honours_retry_after_on_the_model_only() {
    let pool = builder(2).build().unwrap();
    one(&pool, "a0").report(Outcome::rate_limited(Some(secs(10.0))));
    let err = selectable(&pool, "a0", MODEL).unwrap_err();
    assert_eq!(err.count(Unavailable::RateLimited), 1);
    assert_eq!(err.retry_after(), Some(secs(10.0)));
    // Other models still go through; the account as a whole is healthy.
    selectable(&pool, "a0", "claude-haiku-4-5").unwrap();
    let a0 = pool.snapshot().account("a0").unwrap().clone();
    assert_eq!(a0.state, HealthState::Healthy);
    assert_eq!(a0.model_cooldowns.len(), 1);
    assert_eq!(a0.model_cooldowns[0].model, MODEL);
    // Not an error.
    assert_eq!(a0.consecutive_failures, 0);

    tokio::time::advance(secs(9.99)).await;
    assert!(selectable(&pool, "a0", MODEL).is_err());
    tokio::time::advance(secs(0.01)).await;
    selectable(&pool, "a0", MODEL).unwrap();
}

#[tokio::test(start_paused = true)]
async fn account_scoped_rate_limit_blocks_every_model() {
    let pool = builder(2).build().unwrap();
    one(&pool, "a0").report(Outcome::RateLimited {
        retry_after: Some(secs(5.0)),
        scope: RateLimitScope::Account,
    });
    assert_eq!(state(&pool, "a0"), HealthState::RateLimited);
    assert!(selectable(&pool, "a0", "other-model").is_err());
    let next = pool
        .snapshot()
        .account("a0")
        .unwrap()
        .next_retry_at
        .unwrap();
    let ahead = next.duration_since(SystemTime::now()).unwrap();
    assert!(ahead > secs(4.9) && ahead <= secs(5.0), "{ahead:?}");
    tokio::time::advance(secs(5.0)).await;
    assert_eq!(state(&pool, "a0"), HealthState::Healthy);
    selectable(&pool, "a0", "other-model").unwrap();
}

#[tokio::test(start_paused = true)]
async fn rate_limit_without_retry_after_backs_off_exponentially_with_jitter() {
    let pool = builder(2).build().unwrap();
    let mut waits = Vec::new();
    for _ in 0..4 {
        one(&pool, "a0").report(Outcome::rate_limited(None));
        waits.push(time_until_selectable(&pool, "a0", MODEL, secs(60.0)).await);
    }
    for (n, wait) in waits.iter().enumerate() {
        let base = f64::from(1u32 << n);
        let (lo, hi) = (base * 0.9 - 0.011, base * 1.1 + 0.011);
        assert!(
            wait.as_secs_f64() >= lo && wait.as_secs_f64() <= hi,
            "cooldown {n}: {wait:?} not in {lo}..{hi}"
        );
    }
    // A success resets the escalation.
    one(&pool, "a0").report(Outcome::Success);
    one(&pool, "a0").report(Outcome::rate_limited(None));
    let wait = time_until_selectable(&pool, "a0", MODEL, secs(60.0)).await;
    assert!(wait <= secs(1.11), "{wait:?}");
}

#[tokio::test(start_paused = true)]
async fn rate_limit_backoff_is_capped_at_thirty_minutes() {
    let pool = builder(2).build().unwrap();
    for _ in 0..15 {
        one(&pool, "a0").report(Outcome::RateLimited {
            retry_after: None,
            scope: RateLimitScope::Account,
        });
        tokio::time::advance(Duration::from_secs(3 * 3600)).await;
    }
    one(&pool, "a0").report(Outcome::RateLimited {
        retry_after: None,
        scope: RateLimitScope::Account,
    });
    let wait = time_until_selectable(&pool, "a0", MODEL, secs(3600.0)).await;
    assert!(wait <= secs(1800.0 * 1.1 + 0.01), "{wait:?}");
    assert!(wait >= secs(1800.0 * 0.9), "{wait:?}");
}

#[tokio::test(start_paused = true)]
async fn a_longer_rate_limit_extends_the_cooldown_and_a_shorter_one_does_not_cut_it() {
    let pool = builder(2).build().unwrap();
    let first = one(&pool, "a0");
    let second = one(&pool, "a0");
    first.report(Outcome::rate_limited(Some(secs(30.0))));
    second.report(Outcome::rate_limited(Some(secs(2.0))));
    tokio::time::advance(secs(29.0)).await;
    assert!(selectable(&pool, "a0", MODEL).is_err());
    tokio::time::advance(secs(1.0)).await;
    selectable(&pool, "a0", MODEL).unwrap();
}

#[tokio::test(start_paused = true)]
async fn all_rate_limited_reads_as_429_with_the_earliest_return() {
    let pool = builder(3).build().unwrap();
    one(&pool, "a0").report(Outcome::rate_limited(Some(secs(30.0))));
    one(&pool, "a1").report(Outcome::rate_limited(Some(secs(12.0))));
    one(&pool, "a2").report(Outcome::QuotaExhausted {
        reset_at: Some(SystemTime::now() + secs(3600.0)),
    });
    let err = pool.select(&SelectRequest::for_model(MODEL)).unwrap_err();
    assert!(err.is_rate_limited());
    assert_eq!(err.count(Unavailable::RateLimited), 2);
    assert_eq!(err.count(Unavailable::QuotaExhausted), 1);
    assert_eq!(err.retry_after(), Some(secs(12.0)));
    assert_eq!(
        err.to_string(),
        "no account available (2 rate limited, 1 quota exhausted); the earliest returns in 12.0s"
    );
}

#[tokio::test(start_paused = true)]
async fn accounts_that_are_no_candidates_do_not_turn_a_429_into_a_503() {
    // a0 rate limited, a1 disabled, a2 not serving the model: the candidates are saturated.
    let pool = Pool::builder()
        .account(Account::new("a0", NoCredential))
        .account(Account::new("a1", NoCredential))
        .account(Account::new("a2", NoCredential).allow_models(["another-model"]))
        .build()
        .unwrap();
    one(&pool, "a0").report(Outcome::rate_limited(Some(secs(30.0))));
    pool.disable("a1").unwrap();
    let err = pool.select(&SelectRequest::for_model(MODEL)).unwrap_err();
    assert_eq!(err.count(Unavailable::Disabled), 1);
    assert_eq!(err.count(Unavailable::ModelNotAllowed), 1);
    assert!(err.is_rate_limited(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_suspended_account_makes_exhaustion_a_503_not_a_429() {
    let pool = builder(2).build().unwrap();
    one(&pool, "a0").report(Outcome::rate_limited(Some(secs(30.0))));
    one(&pool, "a1").report(Outcome::Suspended);
    let err = pool.select(&SelectRequest::for_model(MODEL)).unwrap_err();
    assert!(!err.is_rate_limited());
    assert_eq!(err.retry_after(), Some(secs(30.0)));
}

#[tokio::test(start_paused = true)]
async fn quota_exhaustion_lasts_until_the_reset_time() {
    let pool = builder(2).build().unwrap();
    let reset = SystemTime::now() + Duration::from_secs(6 * 3600);
    one(&pool, "a0").report(Outcome::QuotaExhausted {
        reset_at: Some(reset),
    });
    let a0 = pool.snapshot().account("a0").unwrap().clone();
    assert_eq!(a0.state, HealthState::QuotaExhausted);
    // The next-retry time is the reset, to the millisecond.
    let diff = match a0.next_retry_at.unwrap().duration_since(reset) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(diff < Duration::from_millis(5), "{diff:?}");
    assert!(selectable(&pool, "a0", "any-model").is_err());
    tokio::time::advance(Duration::from_secs(6 * 3600 - 1)).await;
    assert!(selectable(&pool, "a0", "any-model").is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    selectable(&pool, "a0", "any-model").unwrap();
}

#[tokio::test(start_paused = true)]
async fn quota_exhaustion_without_a_reset_time_escalates_from_one_hour() {
    let pool = builder(2).build().unwrap();
    one(&pool, "a0").report(Outcome::QuotaExhausted { reset_at: None });
    let first = time_until_selectable(&pool, "a0", MODEL, secs(7200.0)).await;
    one(&pool, "a0").report(Outcome::QuotaExhausted { reset_at: None });
    let step = Duration::from_secs(60);
    let mut second = Duration::ZERO;
    while selectable(&pool, "a0", MODEL).is_err() {
        tokio::time::advance(step).await;
        second += step;
    }
    assert!(first >= secs(3240.0) && first <= secs(3960.01), "{first:?}");
    assert!(
        second >= secs(6480.0) && second <= secs(7980.0),
        "{second:?}"
    );
}

#[cfg(feature = "test-util")]
/// A credential whose refreshes follow a script and are counted.
fn scripted(results: Vec<Result<(), CredentialError>>) -> Arc<MockCredential> {
    Arc::new(MockCredential::new("scripted", "").refresh_results(results))
}

#[cfg(feature = "test-util")]
/// How often the pool refreshed `credential`; the pool always forces refreshes.
fn refreshes(credential: &MockCredential) -> usize {
    assert!(
        credential
            .refresh_modes()
            .iter()
            .all(|mode| *mode == RefreshMode::Forced),
        "the pool always forces refreshes"
    );
    credential.refreshes()
}

#[cfg(feature = "test-util")]
fn pool_with(credential: Arc<MockCredential>) -> Pool {
    Pool::builder()
        .account(Account::with_shared_credential("oauth", credential))
        .account(Account::new("other", NoCredential))
        .build()
        .unwrap()
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[cfg(feature = "test-util")]
#[tokio::test(start_paused = true)]
async fn auth_expired_forces_a_refresh_and_recovers() {
    let credential = scripted(vec![Ok(())]);
    let pool = pool_with(credential.clone());
    let mut events = pool.subscribe();
    one(&pool, "oauth").report(Outcome::AuthExpired);
    assert_eq!(state(&pool, "oauth"), HealthState::AuthExpired);
    assert_eq!(
        selectable(&pool, "oauth", MODEL)
            .unwrap_err()
            .count(Unavailable::AuthExpired),
        1
    );
    settle().await;
    assert_eq!(refreshes(&credential), 1);
    assert_eq!(state(&pool, "oauth"), HealthState::Healthy);
    selectable(&pool, "oauth", MODEL).unwrap();
    let first = events.recv().await.unwrap();
    assert_eq!(
        (first.from, first.to),
        (HealthState::Healthy, HealthState::AuthExpired)
    );
    let second = events.recv().await.unwrap();
    assert_eq!(
        (second.from, second.to),
        (HealthState::AuthExpired, HealthState::Healthy)
    );
    assert_eq!(second.reason, "credential refreshed");
}

#[cfg(feature = "test-util")]
#[tokio::test(start_paused = true)]
async fn a_rejected_refresh_makes_the_account_auth_invalid_and_retries_every_30_minutes() {
    let rejected = || Err(CredentialError::Invalid("invalid_grant".into()));
    let credential = scripted(vec![rejected(), rejected(), Ok(())]);
    let pool = pool_with(credential.clone());
    one(&pool, "oauth").report(Outcome::AuthExpired);
    settle().await;
    let account = pool.snapshot().account("oauth").unwrap().clone();
    assert_eq!(account.state, HealthState::AuthInvalid);
    assert_eq!(
        account.reason.as_deref(),
        Some("credential rejected: invalid_grant; refresh retried in 30.0m")
    );
    assert!(account.next_retry_at.is_some());
    assert_eq!(refreshes(&credential), 1);

    tokio::time::advance(Duration::from_secs(29 * 60)).await;
    settle().await;
    assert_eq!(refreshes(&credential), 1);
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(refreshes(&credential), 2);
    assert_eq!(state(&pool, "oauth"), HealthState::AuthInvalid);
    tokio::time::advance(Duration::from_secs(30 * 60)).await;
    settle().await;
    assert_eq!(refreshes(&credential), 3);
    assert_eq!(state(&pool, "oauth"), HealthState::Healthy);
}

#[cfg(feature = "test-util")]
#[tokio::test(start_paused = true)]
async fn auth_invalid_reported_directly_retries_the_refresh_after_30_minutes() {
    let credential = scripted(vec![Ok(())]);
    let pool = pool_with(credential.clone());
    one(&pool, "oauth").report(Outcome::AuthInvalid);
    settle().await;
    assert_eq!(state(&pool, "oauth"), HealthState::AuthInvalid);
    assert_eq!(refreshes(&credential), 0);
    tokio::time::advance(Duration::from_secs(30 * 60)).await;
    settle().await;
    assert_eq!(refreshes(&credential), 1);
    assert_eq!(state(&pool, "oauth"), HealthState::Healthy);
}

#[tokio::test(start_paused = true)]
async fn a_static_credential_that_expires_is_invalid_until_reset() {
    let pool = Pool::builder()
        .account(Account::new(
            "static",
            tower_account_pool::credential::BearerToken::new("static-secret-token"),
        ))
        .account(Account::new("other", NoCredential))
        .build()
        .unwrap();
    one(&pool, "static").report(Outcome::AuthExpired);
    settle().await;
    let account = pool.snapshot().account("static").unwrap().clone();
    assert_eq!(account.state, HealthState::AuthInvalid);
    assert_eq!(
        account.reason.as_deref(),
        Some("credential of kind `bearer` cannot be refreshed; fix the credential and reset the account")
    );
    assert!(!format!("{account:?}").contains("static-secret-token"));
    tokio::time::advance(Duration::from_secs(24 * 3600)).await;
    assert_eq!(state(&pool, "static"), HealthState::AuthInvalid);
    pool.reset("static").unwrap();
    selectable(&pool, "static", MODEL).unwrap();
}

#[cfg(feature = "test-util")]
#[tokio::test(start_paused = true)]
async fn a_refresh_that_fails_for_a_passing_reason_is_retried_soon() {
    let credential = scripted(vec![Err(CredentialError::Unavailable("timeout".into()))]);
    let pool = pool_with(credential.clone());
    one(&pool, "oauth").report(Outcome::AuthExpired);
    settle().await;
    assert_eq!(state(&pool, "oauth"), HealthState::AuthExpired);
    tokio::time::advance(Duration::from_secs(70)).await;
    settle().await;
    assert_eq!(refreshes(&credential), 2);
    assert_eq!(state(&pool, "oauth"), HealthState::Healthy);
}

#[tokio::test(start_paused = true)]
async fn suspension_lasts_until_reset_or_a_successful_probe() {
    let pool = builder(2).build().unwrap();
    one(&pool, "a0").report(Outcome::Suspended);
    tokio::time::advance(Duration::from_secs(7 * 24 * 3600)).await;
    let err = selectable(&pool, "a0", MODEL).unwrap_err();
    assert_eq!(err.count(Unavailable::Suspended), 1);
    assert_eq!(err.retry_after(), None);
    pool.report_probe("a0", Outcome::Success).unwrap();
    assert_eq!(state(&pool, "a0"), HealthState::Healthy);

    one(&pool, "a0").report(Outcome::Suspended);
    pool.reset("a0").unwrap();
    selectable(&pool, "a0", MODEL).unwrap();
}

#[tokio::test(start_paused = true)]
async fn model_unsupported_blocks_that_pair_for_twelve_hours() {
    let pool = builder(2).build().unwrap();
    one(&pool, "a0").report(Outcome::ModelUnsupported);
    let err = selectable(&pool, "a0", MODEL).unwrap_err();
    assert_eq!(err.count(Unavailable::ModelUnsupported), 1);
    selectable(&pool, "a0", "claude-haiku-4-5").unwrap();
    tokio::time::advance(Duration::from_secs(12 * 3600 - 1)).await;
    assert!(selectable(&pool, "a0", MODEL).is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    selectable(&pool, "a0", MODEL).unwrap();
}

#[tokio::test(start_paused = true)]
async fn transient_failures_eject_then_half_open_admits_one_probe() {
    let pool = builder(2).build().unwrap();
    let mut events = pool.subscribe();
    for _ in 0..2 {
        one(&pool, "a0").report(Outcome::Transient);
        assert_eq!(state(&pool, "a0"), HealthState::Healthy);
    }
    one(&pool, "a0").report(Outcome::Transient);
    let a0 = pool.snapshot().account("a0").unwrap().clone();
    assert_eq!(a0.state, HealthState::Ejected);
    assert_eq!(a0.ejection_level, 1);
    assert_eq!(
        a0.last_error.as_ref().map(|e| e.message.as_str()),
        Some("transient")
    );
    let change = events.recv().await.unwrap();
    assert_eq!(change.account, "a0");
    assert_eq!(
        (change.from, change.to),
        (HealthState::Healthy, HealthState::Ejected)
    );
    assert!(change
        .reason
        .starts_with("3 consecutive transient failures; ejected for"));

    // 30 s ± 10 %.
    let wait = time_until_selectable(&pool, "a0", MODEL, secs(40.0)).await;
    assert!(wait >= secs(27.0) && wait <= secs(33.01), "{wait:?}");
    assert_eq!(state(&pool, "a0"), HealthState::HalfOpen);

    // Exactly one probe: a second request cannot have it.
    let probe = one(&pool, "a0");
    assert!(probe.is_probe());
    let err = selectable(&pool, "a0", MODEL).unwrap_err();
    assert_eq!(err.count(Unavailable::ProbeInFlight), 1);

    // The probe fails: ejected for longer (60 s ± 10 %).
    probe.report(Outcome::Transient);
    assert_eq!(pool.snapshot().account("a0").unwrap().ejection_level, 2);
    let wait = time_until_selectable(&pool, "a0", MODEL, secs(80.0)).await;
    assert!(wait >= secs(54.0) && wait <= secs(66.01), "{wait:?}");

    // The next probe succeeds: healthy, and the ejection level starts over.
    let probe = one(&pool, "a0");
    assert!(probe.is_probe());
    probe.report(Outcome::Success);
    let a0 = pool.snapshot().account("a0").unwrap().clone();
    assert_eq!(a0.state, HealthState::Healthy);
    assert_eq!(a0.ejection_level, 0);
    assert!(!one(&pool, "a0").is_probe());
}

#[tokio::test(start_paused = true)]
async fn ejection_is_capped_at_five_minutes() {
    let pool = builder(2).build().unwrap();
    for _ in 0..3 {
        one(&pool, "a0").report(Outcome::Transient);
    }
    for _ in 0..6 {
        time_until_selectable(&pool, "a0", MODEL, secs(400.0)).await;
        one(&pool, "a0").report(Outcome::Transient);
    }
    let wait = time_until_selectable(&pool, "a0", MODEL, secs(400.0)).await;
    assert!(wait >= secs(270.0) && wait <= secs(330.01), "{wait:?}");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_frees_the_permit() {
    let pool = builder(2).build().unwrap();
    for _ in 0..3 {
        one(&pool, "a0").report(Outcome::Transient);
    }
    time_until_selectable(&pool, "a0", MODEL, secs(40.0)).await;
    let probe = one(&pool, "a0");
    assert!(probe.is_probe());
    drop(probe); // the client went away
    let next = one(&pool, "a0");
    assert!(next.is_probe(), "the permit must be free again");
    assert_eq!(pool.snapshot().account("a0").unwrap().ejection_level, 1);
}

#[tokio::test(start_paused = true)]
async fn the_last_available_account_is_never_ejected_for_transient_errors() {
    let pool = builder(1).build().unwrap();
    for _ in 0..20 {
        one(&pool, "a0").report(Outcome::Transient);
    }
    let a0 = pool.snapshot().account("a0").unwrap().clone();
    assert_eq!(a0.state, HealthState::Healthy);
    assert_eq!(a0.consecutive_failures, 20);

    // With two accounts, one may go; the survivor stays.
    let pool = builder(2).build().unwrap();
    for _ in 0..3 {
        one(&pool, "a0").report(Outcome::Transient);
    }
    assert_eq!(state(&pool, "a0"), HealthState::Ejected);
    for _ in 0..10 {
        one(&pool, "a1").report(Outcome::Transient);
    }
    assert_eq!(state(&pool, "a1"), HealthState::Healthy);
}

#[tokio::test(start_paused = true)]
async fn the_panic_threshold_is_configurable() {
    let pool = builder(3)
        .health(HealthPolicy::default().with_panic_threshold(2))
        .build()
        .unwrap();
    for _ in 0..3 {
        one(&pool, "a0").report(Outcome::Transient);
    }
    assert_eq!(state(&pool, "a0"), HealthState::Ejected);
    for _ in 0..3 {
        one(&pool, "a1").report(Outcome::Transient);
    }
    assert_eq!(
        state(&pool, "a1"),
        HealthState::Healthy,
        "only a1 and a2 left"
    );

    let pool = builder(2)
        .health(HealthPolicy::default().with_panic_threshold(0))
        .build()
        .unwrap();
    for id in ["a0", "a1"] {
        for _ in 0..3 {
            one(&pool, id).report(Outcome::Transient);
        }
    }
    let err = pool.select(&SelectRequest::default()).unwrap_err();
    assert_eq!(err.count(Unavailable::Ejected), 2);
}

#[tokio::test(start_paused = true)]
async fn cancellation_carries_no_penalty() {
    let pool = builder(2).build().unwrap();
    for _ in 0..10 {
        drop(one(&pool, "a0"));
    }
    one(&pool, "a0").report(Outcome::Cancelled);
    let a0 = pool.snapshot().account("a0").unwrap().clone();
    assert_eq!(a0.state, HealthState::Healthy);
    assert_eq!(a0.counters.cancelled, 11);
    assert_eq!(a0.counters.requests, 11);
    assert_eq!(a0.in_flight, 0);
    assert!(a0.last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn manual_disable_enable_and_reset() {
    let pool = builder(2).build().unwrap();
    let mut events = pool.subscribe();
    pool.disable("a0").unwrap();
    assert_eq!(state(&pool, "a0"), HealthState::Disabled);
    let err = selectable(&pool, "a0", MODEL).unwrap_err();
    assert_eq!(err.count(Unavailable::Disabled), 1);
    let change = events.recv().await.unwrap();
    assert_eq!(change.to, HealthState::Disabled);
    assert_eq!(change.reason, "disabled by operator");
    pool.enable("a0").unwrap();
    selectable(&pool, "a0", MODEL).unwrap();

    for _ in 0..3 {
        one(&pool, "a0").report(Outcome::Transient);
    }
    one(&pool, "a1").report(Outcome::rate_limited(Some(secs(60.0))));
    assert!(selectable(&pool, "a0", MODEL).is_err());
    pool.reset("a0").unwrap();
    let a0 = pool.snapshot().account("a0").unwrap().clone();
    assert_eq!(a0.state, HealthState::Healthy);
    assert_eq!(a0.ejection_level, 0);
    assert_eq!(
        a0.counters.transient, 3,
        "lifetime counters survive a reset"
    );
    pool.reset_all();
    selectable(&pool, "a1", MODEL).unwrap();

    let unknown = pool.disable("nope").unwrap_err();
    assert_eq!(unknown.to_string(), "unknown account `nope`");
}

#[tokio::test(start_paused = true)]
async fn disabling_keeps_the_underlying_state() {
    let pool = builder(2).build().unwrap();
    one(&pool, "a0").report(Outcome::Suspended);
    pool.disable("a0").unwrap();
    pool.enable("a0").unwrap();
    assert_eq!(state(&pool, "a0"), HealthState::Suspended);
}

#[tokio::test(start_paused = true)]
async fn restore_state_round_trips_through_persisted_state() {
    let pool = builder(2).build().unwrap();
    for _ in 0..3 {
        one(&pool, "a0").report(Outcome::Transient);
    }
    one(&pool, "a1").report(Outcome::Suspended);
    let saved: Vec<_> = pool
        .snapshot()
        .accounts
        .iter()
        .map(|a| (a.id.clone(), a.persisted()))
        .collect();
    let json = serde_json::to_string(&saved).unwrap();
    let loaded: Vec<(AccountId, tower_account_pool::pool::PersistedState)> =
        serde_json::from_str(&json).unwrap();

    let fresh = builder(2).build().unwrap();
    for (id, state) in &loaded {
        fresh.restore_state(id.as_str(), state).unwrap();
    }
    let a0 = fresh.snapshot().account("a0").unwrap().clone();
    assert_eq!(a0.state, HealthState::Ejected);
    assert_eq!(a0.counters.transient, 3);
    assert_eq!(a0.ejection_level, 1);
    assert_eq!(
        fresh.snapshot().account("a1").unwrap().state,
        HealthState::Suspended
    );
    time_until_selectable(&fresh, "a0", MODEL, secs(40.0)).await;
}
