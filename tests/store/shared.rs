//! Shared state that replicas cannot erase (issue 12): a replica that restarts never writes
//! back what it restored, changes made right after the start are written, and the older
//! system's state fields read the same way everywhere.
#![cfg(feature = "sqlite")]

use crate::support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{pool, rate_limited_for};

use rusqlite::Connection;
use serde_json::{json, Value};
use tower_account_pool::config::PoolBuilderExt;
use tower_account_pool::store::{JsonFileStore, SqliteStore, Store, StoreHandle};
use tower_account_pool::{HealthState, Outcome, Pool, SelectRequest};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tap-store-shared-{name}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn state(pool: &Pool, id: &str) -> HealthState {
    pool.snapshot().account(id).unwrap().state
}

async fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn stored_state(path: &Path, id: &str) -> String {
    Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT state FROM tap_account_state WHERE uuid = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
}

/// Point 1 on SQLite: B restarts and restores; A rate-limits x; B's first local change (the
/// operator disables y) must not write its restored `healthy` over x.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_restarts_never_erases_another_replicas_cooldown_sqlite() {
    let dir = temp_dir("restart");
    let path = dir.join("pool.db");
    let ids = ["x", "y", "z"];
    let a = pool(&ids);
    let a_handle = StoreHandle::start(&a, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    let b = pool(&ids);
    let b_handle = StoreHandle::start(&b, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    a.select(&SelectRequest::default())
        .unwrap()
        .report(Outcome::Success);
    a_handle.flush().await.unwrap();
    b_handle.shutdown().await.unwrap();

    // B restarts.
    let b = pool(&ids);
    let b_handle = StoreHandle::start(&b, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    // A rate-limits x for 60 s, written at once.
    a.report_probe("x", rate_limited_for(60)).unwrap();
    a_handle.flush().await.unwrap();
    assert_eq!(stored_state(&path, "x"), "rate_limited");
    // B's first local change.
    b.disable("y").unwrap();
    b_handle.flush().await.unwrap();

    assert_eq!(
        stored_state(&path, "x"),
        "rate_limited",
        "B erased A's cooldown"
    );
    wait_for("B honours A's cooldown", Duration::from_secs(2), || {
        state(&b, "x") == HealthState::RateLimited
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        state(&a, "x"),
        HealthState::RateLimited,
        "A lost its own cooldown"
    );
    // And the operator's disable reaches A.
    wait_for("A sees B's disable", Duration::from_secs(2), || {
        state(&a, "y") == HealthState::Disabled
    })
    .await;
    a_handle.shutdown().await.unwrap();
    b_handle.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Point 1 on Redis.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_restarts_never_erases_another_replicas_cooldown_redis() {
    use tower_account_pool::store::{RedisConfig, RedisStore};
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("skipped: REDIS_URL not set");
        return;
    };
    let prefix = format!(
        "tap-test:restart:{}:{}",
        std::process::id(),
        fastrand::u64(..)
    );
    let open = || RedisStore::open(RedisConfig::new(url.clone(), prefix.clone()));
    let ids = ["x", "y", "z"];
    let a = pool(&ids);
    let a_handle = StoreHandle::start(&a, open().await.unwrap()).await.unwrap();
    let b = pool(&ids);
    let b_handle = StoreHandle::start(&b, open().await.unwrap()).await.unwrap();
    a.select(&SelectRequest::default())
        .unwrap()
        .report(Outcome::Success);
    a_handle.flush().await.unwrap();
    b_handle.shutdown().await.unwrap();

    let b = pool(&ids);
    let b_handle = StoreHandle::start(&b, open().await.unwrap()).await.unwrap();
    a.report_probe("x", rate_limited_for(60)).unwrap();
    a_handle.flush().await.unwrap();
    b.disable("y").unwrap();
    b_handle.flush().await.unwrap();

    let store = open().await.unwrap();
    let x = store
        .load()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.id.as_str() == "x")
        .unwrap();
    assert_eq!(
        x.state.state,
        HealthState::RateLimited,
        "B erased A's cooldown"
    );
    wait_for("B honours A's cooldown", Duration::from_secs(2), || {
        state(&b, "x") == HealthState::RateLimited
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        state(&a, "x"),
        HealthState::RateLimited,
        "A lost its own cooldown"
    );
    a_handle.shutdown().await.unwrap();
    b_handle.shutdown().await.unwrap();
    support::delete_redis_keys(&url, &prefix).await;
}

/// Point 2: a change right after the start reaches the store.
#[tokio::test]
async fn a_disable_right_after_the_start_is_written_sqlite() {
    let dir = temp_dir("early-sqlite");
    let path = dir.join("pool.db");
    // The store already holds the accounts (a restart).
    let first = pool(&["a", "b"]);
    let handle = StoreHandle::start(&first, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    handle.shutdown().await.unwrap();

    let pool = pool(&["a", "b"]);
    let handle = StoreHandle::start(&pool, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    pool.disable("a").unwrap();
    handle.shutdown().await.unwrap();
    let disabled: i64 = Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT is_disabled FROM accounts WHERE uuid = 'a'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(disabled, 1);
    // And a restart keeps it.
    let again = support::pool(&["a", "b"]);
    let handle = StoreHandle::start(&again, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    assert_eq!(state(&again, "a"), HealthState::Disabled);
    handle.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Point 2 on the JSON file.
#[tokio::test]
async fn a_disable_right_after_the_start_is_written_json() {
    let dir = temp_dir("early-json");
    let path = dir.join("account_pool.json");
    std::fs::write(
        &path,
        r#"{"accounts": [{"uuid": "a", "bearerToken": "t-a"}, {"uuid": "b", "bearerToken": "t-b"}]}"#,
    )
    .unwrap();
    let pool = Pool::builder().build_from_file(&path).unwrap();
    let handle = StoreHandle::start(&pool, JsonFileStore::open(&path).unwrap())
        .await
        .unwrap();
    pool.disable("a").unwrap();
    handle.shutdown().await.unwrap();
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(saved["accounts"][0]["isDisabled"], json!(true), "{saved}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Point 4: the grouped shape with an extra top-level key loads, and the JSON store accepts
/// it too, keeping the extra key.
#[tokio::test]
async fn the_json_store_accepts_every_shape_the_loader_accepts() {
    let dir = temp_dir("grouped");
    let path = dir.join("provider_pools.json");
    let text = "{\n  \"claude-kiro-oauth\": [\n    {\"uuid\": \"a\", \"bearerToken\": \"t-a\"}\n  ],\n  \"_comment\": \"kept as it is\"\n}\n";
    std::fs::write(&path, text).unwrap();
    let pool = Pool::builder().build_from_file(&path).unwrap();
    let handle = StoreHandle::start(&pool, JsonFileStore::open(&path).unwrap())
        .await
        .unwrap();
    pool.select(&SelectRequest::default())
        .unwrap()
        .report(Outcome::Success);
    handle.shutdown().await.unwrap();
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(saved["_comment"], "kept as it is");
    assert_eq!(saved["claude-kiro-oauth"][0]["usageCount"], 1, "{saved}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Point 5: `isHealthy: false` reads the same through the loader, the JSON store and the
/// SQLite store: suspended, no traffic.
#[tokio::test]
async fn the_older_systems_unhealthy_flag_reads_the_same_everywhere() {
    let dir = temp_dir("one-reading");
    let path = dir.join("account_pool.json");
    std::fs::write(
        &path,
        r#"{"accounts": [
            {"uuid": "a", "bearerToken": "t-a"},
            {"uuid": "b", "bearerToken": "t-b", "isHealthy": false, "lastErrorMessage": "403"}
        ]}"#,
    )
    .unwrap();
    let pool = Pool::builder().build_from_file(&path).unwrap();
    assert_eq!(state(&pool, "b"), HealthState::Suspended);
    let handle = StoreHandle::start(&pool, JsonFileStore::open(&path).unwrap())
        .await
        .unwrap();
    assert_eq!(state(&pool, "b"), HealthState::Suspended, "JSON store");
    for _ in 0..10 {
        let lease = pool.select(&SelectRequest::default()).unwrap();
        assert_eq!(lease.id().as_str(), "a");
        lease.report(Outcome::Success);
    }
    handle.shutdown().await.unwrap();

    let db = dir.join("pool.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(&format!(
        "{}
         INSERT INTO accounts (uuid, config, is_healthy, last_error_message) VALUES
           ('a', '{{}}', 1, NULL), ('b', '{{}}', 0, '403');",
        support::OLDER_V2_SCHEMA
    ))
    .unwrap();
    drop(conn);
    let pool = support::pool(&["a", "b"]);
    let handle = StoreHandle::start(&pool, SqliteStore::open(&db).unwrap())
        .await
        .unwrap();
    assert_eq!(state(&pool, "b"), HealthState::Suspended, "SQLite store");
    handle.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Point 6: derived UI fields are dropped when the store rewrites the file; everything else
/// keeps its exact text.
#[tokio::test]
async fn derived_fields_are_dropped_on_rewrite() {
    let dir = temp_dir("derived");
    let path = dir.join("account_pool.json");
    std::fs::write(
        &path,
        r#"{"accounts": [
            {"uuid": "a", "bearerToken": "t-a", "errorStatus": {"status": "ok"}, "poolType": "healthy"},
            {"uuid": "b", "bearerToken": "t-b", "poolType": "banned", "big": 12345678901234567890123}
        ]}"#,
    )
    .unwrap();
    let pool = Pool::builder().build_from_file(&path).unwrap();
    let handle = StoreHandle::start(&pool, JsonFileStore::open(&path).unwrap())
        .await
        .unwrap();
    pool.select(&SelectRequest::default())
        .unwrap()
        .report(Outcome::Success);
    handle.shutdown().await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("errorStatus"), "{text}");
    assert!(!text.contains("poolType"), "{text}");
    assert!(text.contains("\"big\": 12345678901234567890123"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Point 7: opening a v1 database changes nothing in it; the migration's backup is the
/// untouched original.
#[test]
fn a_v1_database_is_untouched_until_the_migrations_backup_exists() {
    let dir = temp_dir("v1-untouched");
    let path = dir.join("provider_pool.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE providers (
          id INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT UNIQUE NOT NULL, provider_type TEXT NOT NULL,
          config TEXT NOT NULL, is_healthy INTEGER DEFAULT 1, is_disabled INTEGER DEFAULT 0,
          error_count INTEGER DEFAULT 0, usage_count INTEGER DEFAULT 0, last_used TEXT,
          last_error_time TEXT, last_error_message TEXT, last_health_check_time TEXT,
          last_health_check_model TEXT, cached_email TEXT, cached_user_id TEXT, not_supported_models TEXT,
          created_at TEXT DEFAULT (datetime('now')), updated_at TEXT DEFAULT (datetime('now')));
         INSERT INTO providers (uuid, provider_type, config) VALUES ('a', 'claude-kiro-oauth', '{}');",
    )
    .unwrap();
    drop(conn);
    let original = std::fs::read(&path).unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        original,
        "opening changed the database"
    );
    let backup = dir.join("provider_pool.db.bak");
    store.migrate_v1_to_v2(&backup).unwrap();
    let backup = Connection::open(&backup).unwrap();
    let tables: Vec<String> = backup
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tables, ["providers", "sqlite_sequence"]);
    let mode: String = backup
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        mode, "delete",
        "the backup is in the original's journal mode"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Requests counted before the store starts are increments on the stored totals, never
/// overwritten by them (with and without a state change in that window).
#[tokio::test]
async fn requests_counted_before_the_start_add_to_the_stored_totals() {
    let dir = temp_dir("early-counts");
    let path = dir.join("pool.db");
    let first = pool(&["a", "b"]);
    for _ in 0..5 {
        first
            .select(&SelectRequest::default())
            .unwrap()
            .report(Outcome::Success);
    }
    let handle = StoreHandle::start(&first, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    handle.shutdown().await.unwrap();
    let stored_total = |path: &Path| -> u64 {
        let loaded = futures_executor_block(SqliteStore::open(path).unwrap());
        loaded.iter().map(|a| a.state.counters.successes).sum()
    };
    assert_eq!(stored_total(&path), 5);

    // A restart: three requests served before the store is attached, and a disable.
    let again = pool(&["a", "b"]);
    for _ in 0..3 {
        again
            .select(&SelectRequest::default())
            .unwrap()
            .report(Outcome::Success);
    }
    again.disable("b").unwrap();
    let handle = StoreHandle::start(&again, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    let served: u64 = again
        .snapshot()
        .accounts
        .iter()
        .map(|a| a.counters.successes)
        .sum();
    assert_eq!(served, 8, "the stored 5 and the 3 counted here");
    handle.shutdown().await.unwrap();
    assert_eq!(stored_total(&path), 8);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Loads every stored account (the store's own runtime, outside the test's).
fn futures_executor_block(store: SqliteStore) -> Vec<tower_account_pool::store::StoredAccount> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(store.load())
            .unwrap()
    })
    .join()
    .unwrap()
}
