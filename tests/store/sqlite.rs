//! The SQLite store against the older gateway's schemas v1 and v2, across processes.
#![cfg(feature = "sqlite")]

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{pool, rate_limited_for};

use rusqlite::Connection;
use tower_account_pool::credential::NoCredential;
use tower_account_pool::store::{SchemaVersion, SqliteStore, StoreHandle, WriterConfig};
use tower_account_pool::{Account, AccountId, HealthState, Outcome, Pool, SelectRequest};

const CHILD_ENV: &str = "TAP_SQLITE_CHILD";

/// Schema v1 of the older gateway with its rows.
fn v1() -> String {
    format!("{}{V1_ROWS}", support::OLDER_V1_SCHEMA)
}

const V1_ROWS: &str = "
INSERT INTO providers (uuid, provider_type, config, is_healthy, error_count, usage_count, last_used,
  last_error_time, last_error_message, cached_email, not_supported_models) VALUES
  ('a', 'claude-kiro-oauth', '{\"uuid\":\"a\",\"KIRO_OAUTH_CREDS_FILE_PATH\":\"configs/kiro/a.json\"}', 1, 0, 12,
   '2026-01-03 11:41:18', NULL, NULL, 'a@example.com', '[]'),
  ('b', 'claude-kiro-oauth', '{\"uuid\":\"b\",\"KIRO_OAUTH_CREDS_FILE_PATH\":\"configs/kiro/b.json\"}', 0, 5, 3,
   NULL, '2026-01-03 10:00:00', 'Request failed with status code 500', NULL, '[\"claude-opus-4-5\"]'),
  ('c', 'claude-kiro-oauth', '{\"uuid\":\"c\"}', 1, 0, 0, NULL, NULL, NULL, NULL, NULL);
INSERT INTO usage_cache (provider_uuid, provider_type, usage_data, expires_at) VALUES
  ('a', 'claude-kiro-oauth', '{\"used\":1}', '1767440478755');
INSERT INTO health_check_history (provider_uuid, provider_type, is_healthy, check_model, error_message, check_time) VALUES
  ('b', 'claude-kiro-oauth', 0, 'claude-haiku-4-5', 'HTTP 500', datetime('now', '-1 day')),
  ('a', 'claude-kiro-oauth', 1, 'claude-haiku-4-5', NULL, datetime('now', '-30 days'));
";

/// Schema v2 of the older gateway with its rows.
fn v2() -> String {
    format!("{}{V2_ROWS}", support::OLDER_V2_SCHEMA)
}

const V2_ROWS: &str = "
INSERT INTO accounts (uuid, config, is_healthy, error_count, usage_count, last_used,
  last_error_time, last_error_message) VALUES
  ('a', '{\"uuid\":\"a\"}', 1, 0, 12, '2026-01-03 11:41:18', NULL, NULL),
  ('b', '{\"uuid\":\"b\"}', 0, 5, 3, NULL, '2026-01-03 10:00:00', 'Request failed with status code 500'),
  ('c', '{\"uuid\":\"c\"}', 1, 0, 0, NULL, NULL, NULL);
INSERT INTO health_check_history (account_uuid, is_healthy, check_model, error_message, check_time) VALUES
  ('b', 0, 'claude-haiku-4-5', 'HTTP 500', datetime('now', '-1 day')),
  ('a', 1, 'claude-haiku-4-5', NULL, datetime('now', '-30 days'));
";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tap-store-sqlite-{name}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn create(path: &Path, sql: &str) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(sql).unwrap();
}

/// The older gateway's tables and indexes, as SQLite keeps their definitions.
fn schema_of(path: &Path) -> Vec<(String, String, String)> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT type, name, coalesce(sql, '') FROM sqlite_master
             WHERE name NOT LIKE 'tap_%' AND name NOT LIKE 'sqlite_%' ORDER BY type, name",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn user_version(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

/// Restores from the older rows, then selects and reports through the pool.
async fn select_and_report(path: &Path, ids: &[&str]) -> Pool {
    let pool = pool(ids);
    let store = SqliteStore::open(path).unwrap();
    let handle = StoreHandle::start(&pool, store).await.unwrap();
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.account("a").unwrap().counters.successes, 12);
    let b = snapshot.account("b").unwrap();
    assert_eq!(b.consecutive_failures, 5);
    assert_eq!(
        b.state,
        HealthState::Suspended,
        "read as a pool file's `isHealthy: false` is: out until a reset or a successful probe"
    );
    for _ in 0..9 {
        pool.select(&SelectRequest::default())
            .unwrap()
            .report(Outcome::Success);
    }
    pool.report_probe("c", rate_limited_for(300)).unwrap();
    handle.shutdown().await.unwrap();
    pool
}

fn row(path: &Path, table: &str, uuid: &str) -> (i64, i64, i64, Option<String>) {
    Connection::open(path)
        .unwrap()
        .query_row(
            &format!(
                "SELECT is_healthy, error_count, usage_count, last_used FROM {table} WHERE uuid = ?1"
            ),
            [uuid],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
}

fn is_sqlite_datetime(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        })
}

fn check_reported(path: &Path, table: &str, pool: &Pool) {
    let snapshot = pool.snapshot();
    let stored_successes: i64 = ["a", "b", "c", "d"]
        .iter()
        .filter(|id| snapshot.account(id).is_some())
        .map(|id| row(path, table, id).2)
        .sum();
    let live_successes: u64 = snapshot.accounts.iter().map(|a| a.counters.successes).sum();
    assert_eq!(stored_successes as u64, live_successes);
    assert_eq!(live_successes, 12 + 3 + 9);
    let (healthy, _, _, _) = row(path, table, "c");
    assert_eq!(healthy, 0, "the rate-limited account is not healthy");
    let (_, _, _, last_used) = row(path, table, "a");
    let last_used = last_used.unwrap();
    assert!(is_sqlite_datetime(&last_used), "{last_used}");
    let conn = Connection::open(path).unwrap();
    let (state, kind): (String, String) = conn
        .query_row(
            "SELECT state, typeof(until_ms) FROM tap_account_state WHERE uuid = 'c'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((state.as_str(), kind.as_str()), ("rate_limited", "integer"));
}

#[tokio::test]
async fn a_v2_database_keeps_its_schema_and_is_read_and_written() {
    let dir = temp_dir("v2");
    let path = dir.join("provider_pool.db");
    create(&path, &v2());
    let before = schema_of(&path);
    let pool = select_and_report(&path, &["a", "b", "c"]).await;
    check_reported(&path, "accounts", &pool);
    assert_eq!(schema_of(&path), before);
    assert_eq!(user_version(&path), 2);
    let journal: String = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    // The transition was recorded for the older tools.
    let history: i64 = Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM health_check_history WHERE account_uuid = 'c' AND is_healthy = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(history, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_new_database_gets_the_older_schema_v2_exactly() {
    let dir = temp_dir("fresh");
    let ours = dir.join("ours.db");
    let theirs = dir.join("theirs.db");
    let store = SqliteStore::open(&ours).unwrap();
    assert_eq!(store.schema(), SchemaVersion::V2);
    drop(store);
    create(&theirs, support::OLDER_V2_SCHEMA);
    assert_eq!(schema_of(&ours), schema_of(&theirs));
    assert_eq!(user_version(&ours), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_v1_database_is_used_in_place_without_changing_its_tables() {
    let dir = temp_dir("v1");
    let path = dir.join("provider_pool.db");
    create(&path, &v1());
    let before = schema_of(&path);
    let configs = |path: &Path| -> Vec<(String, String)> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT uuid, config FROM providers WHERE uuid IN ('a','b','c') ORDER BY uuid")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let configs_before = configs(&path);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema(), SchemaVersion::V1);
    drop(store);

    // "d" is new to the database: it gets a row the older gateway can read.
    let pool = select_and_report(&path, &["a", "b", "c", "d"]).await;
    check_reported(&path, "providers", &pool);

    assert_eq!(
        schema_of(&path),
        before,
        "the v1 tables and indexes are unchanged"
    );
    assert_eq!(user_version(&path), 0);
    assert_eq!(configs(&path), configs_before);
    let conn = Connection::open(&path).unwrap();
    let types: Vec<String> = conn
        .prepare("SELECT DISTINCT provider_type FROM providers")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(types, ["claude-kiro-oauth"]);
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM providers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 4);
    let history_type: String = conn
        .query_row(
            "SELECT provider_type FROM health_check_history WHERE provider_uuid = 'c'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(history_type, "claude-kiro-oauth");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn count(path: &Path, sql: &str) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn v1_to_v2_keeps_every_row_and_leaves_a_backup_that_opens() {
    let dir = temp_dir("migrate");
    let path = dir.join("provider_pool.db");
    create(&path, &v1());
    // Write through the store so recent changes sit in the WAL when the backup is taken.
    let pool = pool(&["a", "b", "c"]);
    let store = SqliteStore::open(&path).unwrap();
    let handle = StoreHandle::start(&pool, store.clone()).await.unwrap();
    for _ in 0..6 {
        pool.select(&SelectRequest::default())
            .unwrap()
            .report(Outcome::Success);
    }
    handle.shutdown().await.unwrap();
    let usage_before = count(&path, "SELECT sum(usage_count) FROM providers");
    assert_eq!(usage_before, 12 + 3 + 6);
    assert!(
        std::fs::metadata(dir.join("provider_pool.db-wal"))
            .map(|m| m.len() > 0)
            .unwrap_or(false),
        "the latest writes are in the WAL"
    );
    let rows_before: Vec<(i64, String, String, i64)> = {
        let conn = Connection::open(&path).unwrap();
        let mut stmt = conn
            .prepare("SELECT id, uuid, config, usage_count FROM providers ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };

    let history_before = count(&path, "SELECT count(*) FROM health_check_history");
    let backup = dir.join("provider_pool.db.bak");
    let report = store.migrate_v1_to_v2(&backup).unwrap();
    assert_eq!(
        (report.accounts, report.usage_cache, report.health_history),
        (3, 1, history_before as u64)
    );
    assert_eq!(store.schema(), SchemaVersion::V2);

    // The backup opens on its own and holds what was in the WAL.
    assert_eq!(
        count(&backup, "SELECT sum(usage_count) FROM providers"),
        usage_before
    );
    assert_eq!(
        count(
            &backup,
            "SELECT count(*) FROM providers WHERE provider_type = 'claude-kiro-oauth'"
        ),
        3
    );

    // Every row kept, in the exact v2 schema.
    let rows_after: Vec<(i64, String, String, i64)> = {
        let conn = Connection::open(&path).unwrap();
        let mut stmt = conn
            .prepare("SELECT id, uuid, config, usage_count FROM accounts ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(rows_after, rows_before);
    assert_eq!(
        count(
            &path,
            "SELECT count(*) FROM usage_cache WHERE account_uuid = 'a'"
        ),
        1
    );
    assert_eq!(
        count(&path, "SELECT count(*) FROM health_check_history"),
        history_before
    );
    assert_eq!(user_version(&path), 2);
    let fresh = dir.join("fresh.db");
    create(&fresh, support::OLDER_V2_SCHEMA);
    assert_eq!(schema_of(&path), schema_of(&fresh));

    // Our state survived, and the store goes on writing to the new table.
    drop(store);
    let pool = self::pool(&["a", "b", "c"]);
    let handle = StoreHandle::start(&pool, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    let successes: u64 = pool
        .snapshot()
        .accounts
        .iter()
        .map(|a| a.counters.successes)
        .sum();
    assert_eq!(successes, 21);
    handle.shutdown().await.unwrap();

    // Only a v1 database can be migrated.
    let err = SqliteStore::open(&path)
        .unwrap()
        .migrate_v1_to_v2(dir.join("again.bak"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: not a schema v1 database (no `providers` table); nothing to migrate",
            path.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn v1_with_several_provider_types_is_not_migrated() {
    let dir = temp_dir("mixed");
    let path = dir.join("provider_pool.db");
    create(&path, &v1());
    Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO providers (uuid, provider_type, config) VALUES ('g', 'gemini-cli-oauth', '{}')",
            [],
        )
        .unwrap();
    let before = schema_of(&path);
    let store = SqliteStore::open(&path).unwrap();
    let taken = dir.join("taken.db");
    std::fs::write(&taken, b"something else").unwrap();
    let err = store.migrate_v1_to_v2(&taken).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "backup {} already exists; choose a new path",
            taken.display()
        )
    );
    assert_eq!(std::fs::read(&taken).unwrap(), b"something else");
    let err = store.migrate_v1_to_v2(dir.join("backup.db")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: `providers` holds several provider types (claude-kiro-oauth, gemini-cli-oauth); schema v2 has no column for them, nothing was changed",
            path.display()
        )
    );
    assert_eq!(schema_of(&path), before);
    assert_eq!(count(&path, "SELECT count(*) FROM providers"), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn old_history_is_pruned() {
    let dir = temp_dir("prune");
    let path = dir.join("provider_pool.db");
    create(&path, &v2());
    let pool = pool(&["a", "b", "c"]);
    let store = SqliteStore::open(&path).unwrap();
    // Maintenance runs when the writer starts, then on its interval.
    let handle = StoreHandle::start(&pool, store).await.unwrap();
    handle.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle.shutdown().await.unwrap();
    assert_eq!(
        count(
            &path,
            "SELECT count(*) FROM health_check_history WHERE account_uuid = 'a'"
        ),
        0,
        "the 30-day-old row is gone"
    );
    assert_eq!(
        count(
            &path,
            "SELECT count(*) FROM health_check_history WHERE account_uuid = 'b'"
        ),
        1,
        "the 1-day-old row is kept"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Entry point of the processes the tests below start. Run directly, it has nothing to do.
#[test]
fn sqlite_child_entry() {
    let Ok(task) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (what, path) = task.split_once(':').unwrap();
    let path = PathBuf::from(path);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let pool = pool(&["s1", "s2", "s3"]);
        let config = WriterConfig::default().interval(Duration::from_millis(50));
        let handle = StoreHandle::start_with(&pool, SqliteStore::open(&path).unwrap(), config)
            .await
            .unwrap();
        match what {
            "count" => {
                for i in 0..1_000u32 {
                    let lease = pool.select(&SelectRequest::default()).unwrap();
                    match i % 3 {
                        0 => lease.report(Outcome::Success),
                        1 => lease.report(Outcome::ClientError),
                        _ => drop(lease), // cancelled
                    }
                    if i % 10 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            "cooldown" => pool.report_probe("s1", rate_limited_for(120)).unwrap(),
            other => panic!("unknown child task {other}"),
        }
        handle.shutdown().await.unwrap();
    });
}

fn spawn_child(task: &str, path: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sqlite::sqlite_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{task}:{}", path.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[test]
fn four_processes_count_exactly() {
    let dir = temp_dir("procs");
    let path = dir.join("provider_pool.db");
    drop(SqliteStore::open(&path).unwrap());
    let children: Vec<_> = (0..4).map(|_| spawn_child("count", &path)).collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let sum = |column: &str| {
        count(
            &path,
            &format!("SELECT sum({column}) FROM tap_account_state"),
        )
    };
    assert_eq!(sum("requests"), 4_000);
    assert_eq!(sum("successes"), 4 * 334);
    assert_eq!(sum("client_errors"), 4 * 333);
    assert_eq!(sum("cancelled"), 4 * 333);
    assert_eq!(
        count(&path, "SELECT sum(usage_count) FROM accounts"),
        4 * 334,
        "the older gateway's usage_count adds up too"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooldown_set_in_one_process_is_honoured_by_another_within_a_second() {
    let dir = temp_dir("cooldown");
    let path = dir.join("provider_pool.db");
    let pool = pool(&["s1", "s2", "s3"]);
    let handle = StoreHandle::start(&pool, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    handle.flush().await.unwrap();
    assert_eq!(
        pool.snapshot().account("s1").unwrap().state,
        HealthState::Healthy
    );

    let status = tokio::task::spawn_blocking({
        let path = path.clone();
        move || spawn_child("cooldown", &path).wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success());
    let written = Instant::now();
    loop {
        if pool.snapshot().account("s1").unwrap().state == HealthState::RateLimited {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(1),
            "the other process's cooldown was not seen within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let account = pool.snapshot();
    let s1 = account.account("s1").unwrap();
    let left = s1
        .next_retry_at
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(110), "{left:?}");
    for _ in 0..12 {
        let lease = pool.select(&SelectRequest::default()).unwrap();
        assert_ne!(lease.id().as_str(), "s1");
        lease.report(Outcome::Success);
    }
    handle.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_account_added_at_runtime_does_not_overwrite_shared_state() {
    let dir = temp_dir("added");
    let path = dir.join("provider_pool.db");
    let a = pool(&["s1", "n1"]);
    let handle_a = StoreHandle::start(&a, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    let only_n1 = [AccountId::new("s1")];
    a.select(&SelectRequest::default().excluding(&only_n1))
        .unwrap()
        .report(rate_limited_for(300));
    handle_a.flush().await.unwrap();

    // Another process's pool learns about n1 only later (a reload adds it).
    let b = pool(&["s1"]);
    let handle_b = StoreHandle::start(&b, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    b.add(Account::new("n1", NoCredential)).unwrap();
    for _ in 0..4 {
        b.select(&SelectRequest::default())
            .unwrap()
            .report(Outcome::Success);
    }
    handle_b.flush().await.unwrap();
    let state: String = Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT state FROM tap_account_state WHERE uuid = 'n1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(state, "rate_limited", "b's fresh view did not clobber it");
    // b's counters hold the shared totals: a's one request on n1 and b's two (round robin
    // over s1 and n1).
    let seen_by_b = b.snapshot().account("n1").unwrap().counters.requests;
    assert_eq!(seen_by_b, 3);
    assert_eq!(
        count(
            &path,
            "SELECT requests FROM tap_account_state WHERE uuid = 'n1'"
        ),
        3,
        "b's requests on n1 were added to a's"
    );
    assert_eq!(
        count(
            &path,
            "SELECT rate_limited FROM tap_account_state WHERE uuid = 'n1'"
        ),
        1,
        "a's report is still counted"
    );
    handle_a.shutdown().await.unwrap();
    handle_b.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_migrate_example_moves_v1_to_v2_after_a_backup() {
    let dir = temp_dir("migrate-example");
    let path = dir.join("provider_pool.db");
    create(&path, &v1());
    let rows_before = count(&path, "SELECT count(*) FROM providers");
    let run = |args: &[&str]| {
        // Same features as the test build, so only the example itself is compiled.
        Command::new(env!("CARGO"))
            .args([
                "run",
                "--quiet",
                "--all-features",
                "--example",
                "migrate",
                "--",
            ])
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo runs")
    };
    let backup = dir.join("before-v2.db");
    let output = run(&[
        "--sqlite-v1-to-v2",
        path.to_str().unwrap(),
        "--backup",
        backup.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains(&format!("backed up {}", path.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("moved {rows_before} accounts")),
        "{stdout}"
    );
    assert_eq!(
        count(&backup, "SELECT count(*) FROM providers"),
        rows_before
    );
    assert_eq!(count(&path, "SELECT count(*) FROM accounts"), rows_before);

    // Run again: the database is v2 now, and the backup path is taken; nothing changes.
    let again = run(&[
        "--sqlite-v1-to-v2",
        path.to_str().unwrap(),
        "--backup",
        backup.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).starts_with("error: "));
    assert_eq!(count(&path, "SELECT count(*) FROM accounts"), rows_before);

    let misuse = run(&["--sqlite-v1-to-v2", path.to_str().unwrap(), "--dry-run"]);
    assert_eq!(misuse.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&misuse.stderr)
        .contains("error: --sqlite-v1-to-v2 takes only --backup"));
    std::fs::remove_dir_all(&dir).unwrap();
}
