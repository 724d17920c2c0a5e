//! The older system's SQLite database as a source of accounts (issue 12, point 3): the
//! `config` JSON with the columns winning over it, v1 and v2, the SQLite store keeping state in
//! the same rows, and accounts added or changed at runtime written back.
#![cfg(feature = "sqlite")]

use crate::support;

use std::path::Path;

use rusqlite::Connection;
use tower_account_pool::config::{ConfigError, SqlitePool};
use tower_account_pool::credential::BearerToken;
use tower_account_pool::store::{SqliteStore, StoreHandle};
use tower_account_pool::{Account, HealthState, Outcome, Pool, SelectRequest};

/// An older v2 database: its `accounts` table and three rows.
fn v2() -> String {
    format!(
        "{}{}",
        support::OLDER_V2_SCHEMA,
        "INSERT INTO accounts (uuid, config, is_disabled, not_supported_models, usage_count) VALUES
  ('a', '{\"uuid\":\"a\",\"bearerToken\":\"token-a\",\"weight\":2}', 0, NULL, 7),
  ('b', '{\"uuid\":\"b\",\"bearerToken\":\"token-b\",\"isDisabled\":false}', 1, NULL, 0),
  ('c', '{\"uuid\":\"c\",\"bearerToken\":\"token-c\",\"notSupportedModels\":[]}', 0, '[\"claude-opus-4-5\"]', 0);
"
    )
}

/// An older v1 database with two Kiro accounts and one of another provider.
fn v1() -> String {
    format!("{}{V1_ROWS}", support::OLDER_V1_SCHEMA)
}

const V1_ROWS: &str = "
INSERT INTO providers (uuid, provider_type, config, is_healthy, is_disabled, last_error_message) VALUES
  ('k1', 'claude-kiro-oauth', '{\"uuid\":\"k1\",\"bearerToken\":\"token-1\"}', 1, 0, NULL),
  ('k2', 'claude-kiro-oauth', '{\"uuid\":\"k2\",\"bearerToken\":\"token-2\"}', 0, 0, '403 suspended'),
  ('g1', 'gemini-cli-oauth', '{\"uuid\":\"g1\"}', 1, 0, NULL);
";

fn create(path: &Path, sql: &str) {
    Connection::open(path).unwrap().execute_batch(sql).unwrap();
}

fn served(pool: &Pool, model: Option<&str>, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let request = match model {
                Some(m) => SelectRequest::for_model(m),
                None => SelectRequest::default(),
            };
            let lease = pool.select(&request).unwrap();
            let id = lease.id().to_string();
            lease.report(Outcome::Success);
            id
        })
        .collect()
}

#[tokio::test]
async fn columns_win_over_the_config_json_and_the_store_keeps_state_in_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provider_pool.db");
    create(&path, &v2());
    let source = SqlitePool::load(&path).unwrap();
    let ids: Vec<&str> = source.entries().iter().map(|e| e.id().as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let pool = source.build(Pool::builder()).unwrap();
    let handle = StoreHandle::start(&pool, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.account("a").unwrap().settings.weight, 2);
    assert_eq!(snapshot.account("a").unwrap().counters.successes, 7);
    assert_eq!(
        snapshot.account("b").unwrap().state,
        HealthState::Disabled,
        "the column switched it off, whatever the JSON says"
    );
    let picks = served(&pool, None, 40);
    assert!(!picks.iter().any(|id| id == "b"), "{picks:?}");
    let opus = served(&pool, Some("claude-opus-4-5"), 10);
    assert!(opus.iter().all(|id| id == "a"), "{opus:?}");
    handle.shutdown().await.unwrap();
    let usage: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT sum(usage_count) FROM accounts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(usage, 7 + 50, "the store counted in the same rows");
}

#[tokio::test]
async fn a_v1_database_is_read_without_being_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provider_pool.db");
    create(&path, &v1());
    let before = std::fs::read(&path).unwrap();
    let source = SqlitePool::load(&path).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "loading changed the database"
    );
    let ids: Vec<&str> = source.entries().iter().map(|e| e.id().as_str()).collect();
    assert_eq!(ids, ["k1", "k2"], "only the Kiro rows");
    let pool = source.build(Pool::builder()).unwrap();
    let k2 = pool.snapshot().account("k2").unwrap().clone();
    assert_eq!(k2.state, HealthState::Suspended);
    assert_eq!(
        k2.reason.as_deref(),
        Some("marked unhealthy in the pool file: 403 suspended")
    );
}

#[tokio::test]
async fn accounts_added_or_changed_at_runtime_are_written_back_to_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provider_pool.db");
    create(&path, &v2());
    let pool = SqlitePool::load(&path)
        .unwrap()
        .build(Pool::builder())
        .unwrap();
    let handle = StoreHandle::start(&pool, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    pool.add(Account::new("d", BearerToken::new("token-d")).weight(3))
        .unwrap();
    pool.update_settings("a", |s| {
        s.weight = 5;
        s.not_supported_models = vec!["claude-haiku-4-5".into()];
    })
    .unwrap();
    pool.enable("b").unwrap();
    handle.shutdown().await.unwrap();

    let conn = Connection::open(&path).unwrap();
    let (config, disabled, models): (String, i64, Option<String>) = conn
        .query_row(
            "SELECT config, is_disabled, not_supported_models FROM accounts WHERE uuid = 'a'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["weight"], 5);
    assert_eq!(config["bearerToken"], "token-a", "other fields are kept");
    assert_eq!(disabled, 0);
    assert_eq!(models.as_deref(), Some("[\"claude-haiku-4-5\"]"));
    let b_disabled: i64 = conn
        .query_row(
            "SELECT is_disabled FROM accounts WHERE uuid = 'b'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(b_disabled, 0, "the operator's enable reached the column");
    let d: String = conn
        .query_row("SELECT config FROM accounts WHERE uuid = 'd'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["weight"], 3);
    assert_eq!(
        d["bearerToken"], "token-d",
        "its credential, as the older system kept it"
    );

    // The older tools, and this loader, read them back.
    let again = SqlitePool::load(&path).unwrap();
    let a = again
        .entries()
        .iter()
        .find(|e| e.id().as_str() == "a")
        .unwrap();
    assert_eq!(a.settings().weight, 5);
    let d = again
        .entries()
        .iter()
        .find(|e| e.id().as_str() == "d")
        .unwrap();
    assert_eq!(
        d.credential(),
        &tower_account_pool::config::CredentialSpec::BearerToken("token-d".into())
    );
    assert!(
        again
            .entries()
            .iter()
            .find(|e| e.id().as_str() == "b")
            .unwrap()
            .settings()
            .enabled
    );
}

#[test]
fn bad_databases_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.db");
    let err = SqlitePool::load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err
        .to_string()
        .starts_with(&format!("{}: cannot read", missing.display())));

    let other = dir.path().join("other.db");
    create(&other, "CREATE TABLE things (x INTEGER);");
    assert_eq!(
        SqlitePool::load(&other).unwrap_err().to_string(),
        format!(
            "{}: not a database of the older system: it has neither an `accounts` table (schema v2) nor a `providers` table (schema v1)",
            other.display()
        )
    );

    let broken = dir.path().join("broken.db");
    create(
        &broken,
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, uuid TEXT, config TEXT, not_supported_models TEXT);
         INSERT INTO accounts (uuid, config) VALUES ('a', 'not json');",
    );
    assert_eq!(
        SqlitePool::load(&broken).unwrap_err().to_string(),
        format!(
            "{}: accounts row `a`: `config` is not a JSON object",
            broken.display()
        )
    );
    create(
        &broken,
        "UPDATE accounts SET config = '{}', not_supported_models = 'opus';",
    );
    assert_eq!(
        SqlitePool::load(&broken).unwrap_err().to_string(),
        format!(
            "{}: accounts row `a`: `not_supported_models` is not a JSON array of model names",
            broken.display()
        )
    );
}

/// The column is the truth: an account switched off (or on) through `is_disabled` alone, by
/// an older tool while the pool runs or while it was stopped, follows it.
#[tokio::test]
async fn is_disabled_changed_by_an_older_tool_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provider_pool.db");
    create(&path, &v2());
    let pool = SqlitePool::load(&path)
        .unwrap()
        .build(Pool::builder())
        .unwrap();
    let handle = StoreHandle::start(&pool, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    pool.enable("b").unwrap();
    handle.flush().await.unwrap();
    let state = |pool: &Pool, id: &str| pool.snapshot().account(id).unwrap().state;
    assert_eq!(state(&pool, "b"), HealthState::Healthy);

    // While it runs.
    Connection::open(&path)
        .unwrap()
        .execute_batch("UPDATE accounts SET is_disabled = 1 WHERE uuid IN ('a', 'b')")
        .unwrap();
    handle.sync().await.unwrap();
    assert_eq!(state(&pool, "a"), HealthState::Disabled);
    assert_eq!(state(&pool, "b"), HealthState::Disabled);
    handle.shutdown().await.unwrap();

    // While it was stopped.
    Connection::open(&path)
        .unwrap()
        .execute_batch("UPDATE accounts SET is_disabled = 0 WHERE uuid = 'b'")
        .unwrap();
    let pool = SqlitePool::load(&path)
        .unwrap()
        .build(Pool::builder())
        .unwrap();
    let handle = StoreHandle::start(&pool, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    assert_eq!(state(&pool, "a"), HealthState::Disabled);
    assert_eq!(state(&pool, "b"), HealthState::Healthy);
    handle.shutdown().await.unwrap();
}

#[test]
fn credentials_written_back_never_show_in_debug_output() {
    use tower_account_pool::store::CredentialConfig;
    let shown = format!(
        "{:?} {:?}",
        CredentialConfig::BearerToken("sk-secret-bearer-0001".into()),
        CredentialConfig::ApiKey {
            header: "x-api-key".into(),
            key: "sk-secret-key-0002".into()
        }
    );
    assert!(!shown.contains("secret"), "{shown}");
    assert!(shown.contains("x-api-key"), "{shown}");
}

/// Through the admin API itself: an account added and one changed reach the rows.
#[cfg(feature = "admin")]
#[tokio::test]
async fn the_admin_api_writes_back_to_the_rows() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;
    use tower_account_pool::admin::{self, AdminConfig};

    const TOKEN: &str = "admin-token-for-the-sqlite-source-0001";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provider_pool.db");
    create(&path, &v2());
    let pool = SqlitePool::load(&path)
        .unwrap()
        .build(Pool::builder())
        .unwrap();
    let handle = StoreHandle::start(&pool, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    let app = admin::router(pool.clone(), AdminConfig::new(TOKEN).unwrap());
    for (method, uri, body, status) in [
        (
            "POST",
            "/accounts",
            r#"{"id":"e","apiKey":"sk-e-0123456789","headerName":"x-api-key","weight":4}"#,
            StatusCode::CREATED,
        ),
        (
            "PATCH",
            "/accounts/c",
            r#"{"enabled":false}"#,
            StatusCode::OK,
        ),
    ] {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), status, "{method} {uri}");
    }
    handle.shutdown().await.unwrap();
    let again = SqlitePool::load(&path).unwrap();
    let e = again
        .entries()
        .iter()
        .find(|e| e.id().as_str() == "e")
        .unwrap();
    assert_eq!(e.settings().weight, 4);
    assert_eq!(
        e.credential(),
        &tower_account_pool::config::CredentialSpec::ApiKey {
            header: "x-api-key".into(),
            key: "sk-e-0123456789".into()
        }
    );
    let c = again
        .entries()
        .iter()
        .find(|e| e.id().as_str() == "c")
        .unwrap();
    assert!(!c.settings().enabled);
}
