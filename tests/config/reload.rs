//! Hot reload: a watched pool file's changes reach the running pool; unchanged accounts keep
//! their runtime state; broken edits are reported and ignored.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use support::capture_logs;
use tower_account_pool::config::{
    ConfigError, FileWatcher, PoolBuilderExt, PoolExt, TokenFileResolver,
};
use tower_account_pool::{pool::SyncReport, AccountId, HealthState, Outcome, Pool, SelectRequest};

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

const INITIAL: &str = r#"{"accounts": [
  {"uuid": "a", "bearerToken": "token-a-0123456789"},
  {"uuid": "b", "bearerToken": "token-b-0123456789", "weight": 1},
  {"uuid": "c", "bearerToken": "token-c-0123456789"}
]}"#;

const EDITED: &str = r#"{"accounts": [
  {"uuid": "a", "bearerToken": "token-a-0123456789"},
  {"uuid": "b", "bearerToken": "token-b-0123456789", "weight": 5},
  {"uuid": "d", "bearerToken": "token-d-0123456789", "isHealthy": false,
   "lastErrorMessage": "403 suspended", "usageCount": 9}
]}"#;

fn ids(list: &[AccountId]) -> Vec<&str> {
    list.iter().map(AccountId::as_str).collect()
}

/// Puts runtime state on `a` (one transient failure, two requests) and `b` (rate limited).
fn add_runtime_state(pool: &Pool) {
    let only = |id: &str| {
        let others: Vec<AccountId> = pool.ids().into_iter().filter(|x| x != id).collect();
        pool.select(&SelectRequest::default().excluding(&others))
            .unwrap()
    };
    only("a").report(Outcome::Success);
    only("a").report(Outcome::Transient);
    only("b").report(Outcome::RateLimited {
        retry_after: Some(Duration::from_secs(600)),
        scope: tower_account_pool::health::RateLimitScope::Account,
    });
}

#[test]
fn changes_are_applied_and_unchanged_accounts_keep_their_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.json");
    write(&path, INITIAL);
    let pool = Pool::builder().build_from_file(&path).unwrap();
    add_runtime_state(&pool);
    let before = pool.snapshot();

    let watch = pool.watch_file(&path);
    // The first look finds the pool as the file says.
    let status = watch.status();
    assert_eq!(status.changes_seen, 1);
    assert_eq!(
        status.last,
        Some(Ok(SyncReport {
            unchanged: 3,
            ..SyncReport::default()
        }))
    );
    assert_eq!(watch.check_now(), None, "nothing changed");

    write(&path, EDITED);
    let report = watch.check_now().unwrap().unwrap();
    assert_eq!(ids(&report.added), vec!["d"]);
    assert_eq!(ids(&report.removed), vec!["c"]);
    assert_eq!(ids(&report.changed), vec!["b"]);
    assert_eq!(report.unchanged, 1);
    assert_eq!(watch.status().changes_seen, 2);

    let after = pool.snapshot();
    let (a0, a1) = (before.account("a").unwrap(), after.account("a").unwrap());
    assert_eq!(a1.counters, a0.counters);
    assert_eq!(a1.counters.requests, 2);
    assert_eq!(a1.consecutive_failures, 1);
    let b = after.account("b").unwrap();
    assert_eq!(b.settings.weight, 5);
    assert_eq!(
        b.state,
        HealthState::RateLimited,
        "a changed account keeps its state"
    );
    assert_eq!(b.counters, before.account("b").unwrap().counters);
    let d = after.account("d").unwrap();
    assert_eq!(
        d.state,
        HealthState::Suspended,
        "an added account is seeded from the file"
    );
    assert_eq!(
        d.reason.as_deref(),
        Some("marked unhealthy in the pool file: 403 suspended")
    );
    assert_eq!(d.counters.successes, 9);
    assert!(after.account("c").is_none());
    assert_eq!(watch.check_now(), None);
}

#[test]
fn broken_edits_are_reported_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.json");
    write(&path, INITIAL);
    let pool = Pool::builder().build_from_file(&path).unwrap();
    add_runtime_state(&pool);
    let watch = FileWatcher::new(&pool, &path).start();
    let before = pool.snapshot();
    let unchanged = |pool: &Pool| {
        let now = pool.snapshot();
        assert_eq!(pool.ids(), vec!["a", "b", "c"]);
        for account in &before.accounts {
            let current = now.account(account.id.as_str()).unwrap();
            assert_eq!(current.state, account.state);
            assert_eq!(current.counters, account.counters);
            assert_eq!(current.settings, account.settings);
        }
    };

    let display = path.display().to_string();
    let broken = [
        (
            "{\"accounts\": [\n  {\"uuid\": \"a\"",
            format!("{display}: invalid JSON at line 2, column 14: EOF while parsing an object"),
        ),
        (
            r#"[{"uuid": "a"}, {"uuid": "a"}]"#,
            format!("{display}: account at index 1 repeats uuid `a` (first used at index 0)"),
        ),
        (
            r#"{"accounts": []}"#,
            format!("{display}: the pool file holds no accounts"),
        ),
        (
            r#"{"acounts": []}"#,
            format!(
                "{display}: unknown pool file shape: found an object with keys `acounts`; expected {{\"accounts\": [...]}}, a bare array [...] or {{\"claude-kiro-oauth\": [...]}}"
            ),
        ),
    ];
    for (content, message) in broken {
        write(&path, content);
        let (result, logs) = capture_logs(|| watch.check_now());
        let error = result.unwrap().unwrap_err();
        assert_eq!(error.to_string(), message);
        assert_eq!(watch.last_error(), Some(error));
        assert!(
            logs.contains(" WARN ")
                && logs.contains(&format!("{message}; the running pool is unchanged")),
            "{logs}"
        );
        unchanged(&pool);
        // The same broken content is reported once, not on every look.
        assert_eq!(watch.check_now(), None);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            content.as_bytes(),
            "never rewritten"
        );
    }

    std::fs::remove_file(&path).unwrap();
    let error = watch.check_now().unwrap().unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }), "{error}");
    unchanged(&pool);

    // Fixed: applied again, and the state survived every broken edit.
    write(&path, INITIAL);
    let report = watch.check_now().unwrap().unwrap();
    assert_eq!(report.unchanged, 3);
    assert_eq!(watch.last_error(), None);
    unchanged(&pool);
}

#[test]
fn credential_files_follow_the_edits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.json");
    write(
        &dir.path().join("good.json"),
        r#"{"accessToken": "file-token-0123456789"}"#,
    );
    let pool_text = |file: &str| {
        format!(
            r#"[{{"uuid": "k", "KIRO_OAUTH_CREDS_FILE_PATH": "{file}"}}, {{"uuid": "x", "bearerToken": "token-x"}}]"#
        )
    };
    write(&path, &pool_text("good.json"));
    let resolver = Arc::new(TokenFileResolver::new().base_dir(dir.path()));
    let pool = tower_account_pool::config::PoolFile::load(&path)
        .unwrap()
        .build_with(Pool::builder(), &*resolver)
        .unwrap();
    let watch = FileWatcher::new(&pool, &path).resolver(resolver).start();
    assert_eq!(
        watch.status().last.unwrap().unwrap().unchanged,
        2,
        "the running credential is recognised"
    );

    write(&path, &pool_text("missing.json"));
    let report = watch.check_now().unwrap().unwrap();
    assert_eq!(ids(&report.changed), vec!["k"]);
    let snapshot = pool.snapshot();
    let k = snapshot.account("k").unwrap();
    assert_eq!(k.state, HealthState::AuthInvalid);
    assert_eq!(
        k.reason.as_deref(),
        Some("credential file `missing.json` does not exist")
    );
    assert_eq!(snapshot.account("x").unwrap().state, HealthState::Healthy);

    write(&path, &pool_text("good.json"));
    let report = watch.check_now().unwrap().unwrap();
    assert_eq!(ids(&report.changed), vec!["k"]);
    assert_eq!(
        pool.snapshot().account("k").unwrap().state,
        HealthState::Healthy
    );
}

#[tokio::test(start_paused = true)]
async fn the_background_watch_picks_up_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.json");
    write(&path, INITIAL);
    let pool = Pool::builder().build_from_file(&path).unwrap();
    let watch = FileWatcher::new(&pool, &path)
        .interval(Duration::from_millis(100))
        .start();
    let mut changes = watch.subscribe();
    changes.borrow_and_update();

    write(&path, EDITED);
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .expect("the watch noticed the edit")
        .unwrap();
    let status = watch.status();
    assert_eq!(status.changes_seen, 2);
    assert_eq!(ids(&status.last.unwrap().unwrap().added), vec!["d"]);
    assert_eq!(pool.ids(), vec!["a", "b", "d"]);

    // Dropping the handle stops the watch.
    drop(watch);
    write(&path, INITIAL);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pool.ids(), vec!["a", "b", "d"]);
}

#[test]
fn a_reload_keeps_what_the_admin_api_changed_unless_the_file_changes_it_too() {
    use tower_account_pool::credential::BearerToken;
    use tower_account_pool::Account;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.json");
    write(&path, INITIAL);
    let pool = Pool::builder().build_from_file(&path).unwrap();
    let watch = pool.watch_file(&path);
    assert_eq!(watch.status().changes_seen, 1);

    // Through the admin API (the same pool calls): a's weight, a new account, b removed.
    pool.update_settings("a", |s| s.weight = 7).unwrap();
    pool.add(Account::new("x", BearerToken::new("token-x-0123456789")))
        .unwrap();
    pool.remove("b").unwrap();

    // A store writes state back into the file: no setting changes there.
    write(
        &path,
        &INITIAL.replace(
            r#"{"uuid": "c", "bearerToken": "token-c-0123456789"}"#,
            r#"{"uuid": "c", "bearerToken": "token-c-0123456789", "usageCount": 3}"#,
        ),
    );
    let report = watch.check_now().unwrap().unwrap();
    assert!(
        report.added.is_empty() && report.removed.is_empty() && report.changed.is_empty(),
        "{report:?}"
    );
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.account("a").unwrap().settings.weight, 7);
    assert!(snapshot.account("x").is_some(), "added at runtime: kept");
    assert!(
        snapshot.account("b").is_none(),
        "removed at runtime: stays removed"
    );

    // The file itself changes a's weight: the file wins for what it changed.
    write(
        &path,
        &INITIAL.replace(
            r#"{"uuid": "a", "bearerToken": "token-a-0123456789"}"#,
            r#"{"uuid": "a", "bearerToken": "token-a-0123456789", "weight": 3}"#,
        ),
    );
    let report = watch.check_now().unwrap().unwrap();
    assert_eq!(ids(&report.changed), vec!["a"]);
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.account("a").unwrap().settings.weight, 3);
    assert!(snapshot.account("x").is_some());
}
