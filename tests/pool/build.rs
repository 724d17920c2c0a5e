//! Bad input at build time, runtime changes to the roster, and secrets kept out of output.

use crate::support;

use std::time::Duration;

use support::{accounts, builder};
use tower_account_pool::credential::{ApiKey, BearerToken, NoCredential};
use tower_account_pool::{
    health::HealthPolicy, pool::BuildError, pool::PoolError, Account, HealthState, Outcome, Pool,
    SelectRequest,
};

fn build_error(builder: tower_account_pool::pool::PoolBuilder) -> BuildError {
    builder.build().expect_err("the pool must be rejected")
}

#[test]
fn an_empty_pool_is_rejected() {
    let err = build_error(Pool::builder());
    assert_eq!(err, BuildError::Empty);
    assert_eq!(
        err.to_string(),
        "the account pool is empty: add at least one account"
    );
}

#[test]
fn duplicate_ids_are_rejected_with_both_positions() {
    let err = build_error(
        Pool::builder()
            .accounts(accounts(3))
            .account(Account::new("a1", NoCredential)),
    );
    assert_eq!(
        err.to_string(),
        "duplicate account id `a1` at index 3 (first seen at index 1)"
    );
}

#[test]
fn weight_zero_is_rejected() {
    let err = build_error(
        Pool::builder()
            .accounts(accounts(2))
            .account(Account::new("light", NoCredential).weight(0)),
    );
    assert_eq!(
        err.to_string(),
        "account `light` (index 2): weight must be at least 1"
    );
}

#[test]
fn max_in_flight_zero_is_rejected() {
    let err =
        build_error(Pool::builder().account(Account::new("stuck", NoCredential).max_in_flight(0)));
    assert_eq!(
        err.to_string(),
        "account `stuck` (index 0): max in-flight must be at least 1 (leave it unset for no limit)"
    );
}

#[test]
fn an_empty_id_is_rejected() {
    let err = build_error(
        Pool::builder()
            .accounts(accounts(1))
            .account(Account::new("", NoCredential)),
    );
    assert_eq!(err.to_string(), "account at index 1 has an empty id");
}

#[test]
fn an_inconsistent_policy_is_rejected() {
    let err = build_error(builder(1).health(HealthPolicy::default().with_max_errors(0)));
    assert_eq!(
        err.to_string(),
        "health policy: max_errors must be at least 1"
    );
    let err = build_error(
        builder(1).health(HealthPolicy::default().with_ejection_base(Duration::from_secs(600))),
    );
    assert_eq!(
        err.to_string(),
        "health policy: ejection_base must be non-zero and at most ejection_max"
    );
    let err = build_error(builder(1).affinity_ttl(Duration::ZERO));
    assert_eq!(
        err.to_string(),
        "the sticky-session TTL must be greater than zero"
    );
}

#[tokio::test(start_paused = true)]
async fn sync_applies_a_new_configuration_and_keeps_runtime_state() {
    let pool = builder(3).build().unwrap();
    let others = [pool.ids()[1].clone(), pool.ids()[2].clone()];
    pool.select(&SelectRequest::default().excluding(&others))
        .unwrap()
        .report(Outcome::Suspended);
    assert_eq!(pool.ids()[0], "a0");

    let mut next = accounts(3);
    next.remove(2); // a2 goes
    next[1] = Account::new("a1", NoCredential).weight(7); // a1 changes
    next.push(Account::new("a3", NoCredential)); // a3 arrives
                                                 // a0 is rebuilt with a different credential object: a change, state kept.
    let report = pool.sync(next).unwrap();
    assert_eq!(report.added, ["a3"]);
    assert_eq!(report.removed, ["a2"]);
    assert_eq!(report.changed, ["a0", "a1"]);
    let snapshot = pool.snapshot();
    assert_eq!(
        snapshot.account("a0").unwrap().state,
        HealthState::Suspended
    );
    assert_eq!(snapshot.account("a1").unwrap().settings.weight, 7);
    assert!(snapshot.account("a2").is_none());

    // An invalid configuration changes nothing.
    let err = pool
        .sync(vec![
            Account::new("x", NoCredential),
            Account::new("x", NoCredential),
        ])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "duplicate account id `x` at index 1 (first seen at index 0)"
    );
    assert_eq!(pool.len(), 3);
}

#[test]
fn add_remove_and_update_settings() {
    let pool = builder(1).build().unwrap();
    pool.add(Account::new("b", NoCredential)).unwrap();
    let dup = pool.add(Account::new("b", NoCredential)).unwrap_err();
    assert!(matches!(
        dup,
        PoolError::Invalid(BuildError::DuplicateId { .. })
    ));
    pool.update_settings("b", |s| s.priority = 5).unwrap();
    assert_eq!(pool.ids(), ["a0", "b"]);
    let bad = pool.update_settings("b", |s| s.weight = 0).unwrap_err();
    assert_eq!(
        bad.to_string(),
        "account `b` (index 1): weight must be at least 1"
    );
    assert_eq!(pool.snapshot().account("b").unwrap().settings.weight, 1);
    let lease = pool.select(&SelectRequest::default()).unwrap();
    pool.remove("a0").unwrap();
    // A lease on a removed account still reports without trouble.
    lease.report(Outcome::Transient);
    assert_eq!(pool.ids(), ["b"]);
    assert_eq!(
        pool.remove("a0").unwrap_err().to_string(),
        "unknown account `a0`"
    );
}

#[test]
fn secrets_never_appear_in_debug_or_snapshots() {
    let pool = Pool::builder()
        .account(Account::new(
            "bearer",
            BearerToken::new("sk-bearer-SECRET-0001"),
        ))
        .account(Account::new(
            "key",
            ApiKey::new("x-api-key", "sk-apikey-SECRET-0002").unwrap(),
        ))
        .build()
        .unwrap();
    let lease = pool.select(&SelectRequest::default()).unwrap();
    let snapshot = pool.snapshot();
    let outputs = [
        format!("{pool:?}"),
        format!("{lease:?}"),
        format!("{:?}", lease.credential()),
        format!("{snapshot:?}"),
        serde_json::to_string(&snapshot).unwrap(),
    ];
    for output in &outputs {
        assert!(!output.contains("SECRET"), "secret leaked: {output}");
    }
    // Masked credentials show only the last four characters.
    let key = snapshot.account("key").unwrap();
    assert_eq!(key.credential.kind, "api-key");
    assert_eq!(key.credential.last4.as_deref(), Some("0002"));
}
