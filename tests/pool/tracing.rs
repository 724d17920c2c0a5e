//! Every state change is a `tracing` event naming the account, the old and new state and the
//! reason — and no event carries a secret.

use crate::support;

use support::CapturedLogs;
use tower_account_pool::credential::BearerToken;
use tower_account_pool::{Account, AccountId, Outcome, Pool, SelectRequest};

#[tokio::test(start_paused = true)]
async fn state_changes_are_traced_without_secrets() {
    let captured = CapturedLogs::default();
    let _guard = captured.start(tracing::Level::DEBUG);

    let pool = Pool::builder()
        .account(Account::new(
            "acct-a",
            BearerToken::new("sk-TRACE-SECRET-aaaa"),
        ))
        .account(Account::new(
            "acct-b",
            BearerToken::new("sk-TRACE-SECRET-bbbb"),
        ))
        .build()
        .unwrap();
    let only_a = [AccountId::new("acct-b")];
    for _ in 0..3 {
        pool.select(&SelectRequest::for_model("m").excluding(&only_a))
            .unwrap()
            .report(Outcome::Transient);
    }
    pool.select(&SelectRequest::for_model("m"))
        .unwrap()
        .report(Outcome::rate_limited(None));
    pool.disable("acct-b").unwrap();
    // A static token cannot refresh: expired → invalid, traced too.
    pool.reset("acct-a").unwrap();
    pool.select(&SelectRequest::default())
        .unwrap()
        .report(Outcome::AuthExpired);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }

    let log = captured.text();
    let lines: Vec<&str> = log.lines().collect();
    let has = |needles: &[&str]| lines.iter().any(|l| needles.iter().all(|n| l.contains(n)));
    assert!(
        has(&[
            "account state changed",
            "account=acct-a",
            "from=healthy",
            "to=ejected",
            "reason=3 consecutive transient failures"
        ]),
        "{log}"
    );
    assert!(
        has(&[
            "account state changed for model",
            "account=acct-b",
            "model=\"m\"",
            "to=rate_limited"
        ]),
        "{log}"
    );
    assert!(
        has(&[
            "account=acct-b",
            "to=disabled",
            "reason=disabled by operator"
        ]),
        "{log}"
    );
    assert!(
        has(&[
            "account=acct-a",
            "from=ejected",
            "to=healthy",
            "reason=reset by operator"
        ]),
        "{log}"
    );
    assert!(
        has(&["account=acct-a", "from=healthy", "to=auth_expired"]),
        "{log}"
    );
    assert!(
        has(&["account=acct-a", "from=auth_expired", "to=auth_invalid"]),
        "{log}"
    );
    assert!(
        !log.contains("TRACE-SECRET"),
        "a secret reached the logs:\n{log}"
    );
}
