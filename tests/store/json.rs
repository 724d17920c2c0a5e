//! The JSON pool-file store: crash safety, the older format, settings merged, one writer.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::pool;

use serde_json::{json, Value};
use tower_account_pool::store::{
    AccountWrite, JsonFileStore, Store, StoreErrorKind, StoreHandle, WriterConfig,
};
use tower_account_pool::{
    health::RateLimitScope, pool::Counters, pool::PersistedState, AccountId, HealthState, Outcome,
    Pool, SelectRequest,
};

const CHILD_ENV: &str = "TAP_JSON_CRASH_CHILD_FILE";
const ACCOUNTS: [&str; 5] = ["a1", "a2", "a3", "a4", "a5"];

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tap-store-json-{name}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A pool file as the older gateway wrote it, with fields this crate does not know.
fn older_file() -> Value {
    json!({
        "accounts": ACCOUNTS.iter().map(|id| json!({
            "uuid": id,
            "KIRO_OAUTH_CREDS_FILE_PATH": format!("configs/kiro/{id}.json"),
            "isHealthy": true,
            "isDisabled": false,
            "errorCount": 0,
            "usageCount": 0,
            "lastUsed": null,
            "checkHealth": true,
            "checkModelName": "claude-haiku-4-5",
            "notSupportedModels": ["claude-opus-4-5"],
            "cachedEmail": "someone@example.com",
            "customFutureField": {"nested": [1, 2, 3]}
        })).collect::<Vec<_>>(),
        "someTopLevelExtra": "kept"
    })
}

fn write_file(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

fn read_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the pool file must parse: {e}\n{text}"))
}

fn batch(n: u64) -> Vec<AccountWrite> {
    ACCOUNTS
        .iter()
        .map(|id| {
            let counters = Counters {
                requests: n,
                successes: n,
                ..Counters::default()
            };
            AccountWrite {
                models_changed: false,
                id: AccountId::new(*id),
                state: PersistedState {
                    counters,
                    consecutive_failures: (n % 7) as u32,
                    ..PersistedState::default()
                },
                state_changed: true,
                // Counters are written as increments: one success per generation.
                delta: Counters {
                    requests: 1,
                    successes: 1,
                    ..Counters::default()
                },
                enabled: true,
                enabled_changed: false,
                settings: None,
                credential: None,
            }
        })
        .collect()
}

/// The child's entry point: when started by `json_file_survives_sigkill_while_writing` it writes
/// generation after generation until it is killed. Run directly, it has nothing to do.
#[test]
fn crash_child_entry() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = JsonFileStore::open(&path).unwrap();
        let start = read_file(Path::new(&path))["accounts"][0]["poolState"]["counters"]["requests"]
            .as_u64()
            .unwrap_or_default();
        let mut n = start;
        loop {
            n += 1;
            store.write(batch(n)).await.unwrap();
        }
    });
}

/// Every account carries the same generation: the file holds one complete state.
fn generation(doc: &Value) -> u64 {
    let accounts = doc["accounts"].as_array().expect("accounts array");
    assert_eq!(accounts.len(), ACCOUNTS.len());
    assert_eq!(doc["someTopLevelExtra"], "kept");
    let mut seen = None;
    for (account, id) in accounts.iter().zip(ACCOUNTS) {
        assert_eq!(account["uuid"], id);
        assert_eq!(account["customFutureField"], json!({"nested": [1, 2, 3]}));
        assert_eq!(account["cachedEmail"], "someone@example.com");
        let n = account["poolState"]["counters"]["requests"]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(account["usageCount"].as_u64(), Some(n));
        assert_eq!(account["errorCount"].as_u64(), Some(n % 7));
        match seen {
            None => seen = Some(n),
            Some(m) => assert_eq!(m, n, "accounts from two different writes: {doc}"),
        }
    }
    seen.unwrap()
}

#[test]
fn json_file_survives_sigkill_while_writing() {
    let dir = temp_dir("crash");
    let path = dir.join("account_pool.json");
    write_file(&path, &older_file());
    let exe = std::env::current_exe().unwrap();
    let mut last = 0;
    for round in 0..50 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "json::crash_child_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(fastrand::u64(5..80)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let n = generation(&read_file(&path));
        assert!(n >= last, "round {round}: went back from {last} to {n}");
        last = n;
    }
    assert!(last > 0, "the child never completed a write");
    // Temporary files a killed writer left behind are removed by the next open.
    drop(JsonFileStore::open(&path).unwrap());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn older_format_round_trips_with_unknown_fields() {
    let dir = temp_dir("older");
    let path = dir.join("account_pool.json");
    let mut original = older_file();
    // The older gateway's state: one account unhealthy after errors, one with usage.
    original["accounts"][1]["isHealthy"] = json!(false);
    original["accounts"][1]["errorCount"] = json!(3);
    original["accounts"][1]["lastErrorMessage"] = json!("HTTP 500");
    original["accounts"][1]["lastErrorTime"] = json!("2026-01-03T11:40:00.000Z");
    original["accounts"][2]["usageCount"] = json!(41);
    original["accounts"][2]["lastUsed"] = json!("2026-01-03T11:41:18.755Z");
    write_file(&path, &original);

    let pool = pool(&ACCOUNTS);
    let handle = StoreHandle::start(&pool, JsonFileStore::open(&path).unwrap())
        .await
        .unwrap();
    let snapshot = pool.snapshot();
    let a2 = snapshot.account("a2").unwrap();
    assert_eq!(a2.consecutive_failures, 3);
    assert_eq!(
        a2.state,
        HealthState::Suspended,
        "read as the loader reads it: unhealthy until a reset or a successful probe"
    );
    assert_eq!(snapshot.account("a3").unwrap().counters.successes, 41);

    // Report through the pool, then shut down (flush).
    for _ in 0..3 {
        let lease = pool.select(&SelectRequest::default()).unwrap();
        lease.report(Outcome::Success);
    }
    handle.shutdown().await.unwrap();

    let saved = read_file(&path);
    assert_eq!(saved["someTopLevelExtra"], "kept");
    let accounts = saved["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), ACCOUNTS.len());
    let snapshot = pool.snapshot();
    for (before, after) in original["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(accounts)
    {
        // Every field that is not a state field is exactly as it was, in the same order.
        let state_fields = [
            "isHealthy",
            "errorCount",
            "usageCount",
            "lastUsed",
            "lastErrorTime",
            "lastErrorMessage",
            "poolState",
        ];
        let keys = |v: &Value| -> Vec<String> {
            v.as_object()
                .unwrap()
                .keys()
                .filter(|k| !state_fields.contains(&k.as_str()))
                .cloned()
                .collect()
        };
        assert_eq!(keys(before), keys(after));
        for key in keys(before) {
            assert_eq!(before[&key], after[&key], "field {key} changed");
        }
        let id = after["uuid"].as_str().unwrap();
        let live = snapshot.account(id).unwrap();
        match after.get("poolState") {
            Some(state) => {
                assert_eq!(after["usageCount"].as_u64(), Some(live.counters.successes));
                assert_eq!(
                    state["counters"]["requests"].as_u64(),
                    Some(live.counters.requests)
                );
            }
            // Restoring is not a change: an account nothing happened to is not rewritten.
            None => assert_eq!(before, after, "{id} was rewritten without a change"),
        }
    }
    assert!(accounts[2]["usageCount"].as_u64().unwrap() >= 41);

    // And it loads back into a new pool with the same state.
    let again = pool_again(&path).await;
    for id in ACCOUNTS {
        assert_eq!(
            again.snapshot().account(id).unwrap().counters,
            snapshot.account(id).unwrap().counters
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn pool_again(path: &Path) -> Pool {
    let pool = pool(&ACCOUNTS);
    let handle = StoreHandle::start(&pool, JsonFileStore::open(path).unwrap())
        .await
        .unwrap();
    handle.shutdown().await.unwrap();
    pool
}

#[tokio::test]
async fn settings_edited_meanwhile_are_merged_not_clobbered() {
    let dir = temp_dir("merge");
    let path = dir.join("account_pool.json");
    write_file(&path, &older_file());
    let pool = pool(&ACCOUNTS);
    let config = WriterConfig::default().interval(Duration::from_millis(50));
    let handle = StoreHandle::start_with(&pool, JsonFileStore::open(&path).unwrap(), config)
        .await
        .unwrap();
    handle.flush().await.unwrap();

    // Someone edits settings by hand while the pool runs.
    let mut edited = read_file(&path);
    edited["accounts"][0]["notSupportedModels"] = json!(["claude-opus-4-5", "claude-3-haiku"]);
    edited["accounts"][0]["isDisabled"] = json!(true);
    edited["accounts"][4]["addedByHand"] = json!("yes");
    write_file(&path, &edited);

    // The operator disables a5 through the pool: that setting is written.
    pool.disable("a5").unwrap();
    let lease = pool.select(&SelectRequest::default()).unwrap();
    let used = lease.id().clone();
    lease.report(Outcome::RateLimited {
        retry_after: Some(Duration::from_secs(60)),
        scope: RateLimitScope::Account,
    });
    handle.shutdown().await.unwrap();

    let saved = read_file(&path);
    assert_eq!(
        saved["accounts"][0]["notSupportedModels"],
        json!(["claude-opus-4-5", "claude-3-haiku"])
    );
    assert_eq!(saved["accounts"][0]["isDisabled"], json!(true));
    assert_eq!(saved["accounts"][4]["addedByHand"], json!("yes"));
    assert_eq!(saved["accounts"][4]["isDisabled"], json!(true));
    assert_eq!(
        saved["accounts"][1]["isDisabled"],
        json!(false),
        "untouched settings stay as they were"
    );
    let index = ACCOUNTS.iter().position(|id| used == *id).unwrap();
    let account = &saved["accounts"][index];
    assert_eq!(account["isHealthy"], json!(false));
    assert_eq!(account["poolState"]["state"], json!("rateLimited"));
    assert!(account["poolState"]["until"].as_u64().is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_second_writer_is_refused_with_a_pointer_to_sqlite_or_redis() {
    let dir = temp_dir("lock");
    let path = dir.join("account_pool.json");
    write_file(&path, &older_file());
    let before = std::fs::read(&path).unwrap();
    let first = JsonFileStore::open(&path).unwrap();
    let err = JsonFileStore::open(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "pool file `{}` is already open for writing by another process (lock `{}.lock` is held); \
             a JSON pool file has a single writer: to share a pool between processes use the SQLite \
             store (one host) or the Redis store (several hosts)",
            path.display(),
            path.display()
        )
    );
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was written");
    drop(first);
    // The lock goes with the first store's descriptor. A child that another test of this binary
    // forks at that moment (`json_file_survives_sigkill_while_writing` starts fifty) holds a copy
    // of every descriptor until it executes its program: a moment, not a leak.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match JsonFileStore::open(&path) {
            Ok(_) => break,
            Err(e)
                if e.kind() == StoreErrorKind::Locked && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("the lock is released with the first store: {e:?}"),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_corrupt_file_is_never_overwritten() {
    let dir = temp_dir("corrupt");
    let path = dir.join("account_pool.json");
    let broken = "{\"accounts\": [ {\"uuid\": \"a1\", }\n";
    std::fs::write(&path, broken).unwrap();
    let store = JsonFileStore::open(&path).unwrap();
    let err = store.load().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: invalid JSON: trailing comma at line 1 column 31; the file was not modified",
            path.display()
        )
    );
    let err = store.write(batch(1)).await.unwrap_err();
    assert!(
        err.to_string().ends_with("the file was not modified"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);

    std::fs::write(&path, "{\"pool\": 3}").unwrap();
    let err = store.write(batch(1)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: it does not load as a pool file: unknown pool file shape: found an object with keys `pool`; expected {{\"accounts\": [...]}}, a bare array [...] or {{\"claude-kiro-oauth\": [...]}}; it is written once it loads again; the file was not modified",
            path.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"pool\": 3}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_missing_file_is_created_in_the_current_shape() {
    let dir = temp_dir("create");
    let path = dir.join("account_pool.json");
    let pool = pool(&["x", "y", "z"]);
    // One account per write: the file is created by the first and completed by the others.
    let config = WriterConfig::default().max_batch(1);
    let handle = StoreHandle::start_with(&pool, JsonFileStore::open(&path).unwrap(), config)
        .await
        .unwrap();
    handle.shutdown().await.unwrap();
    let saved = read_file(&path);
    let ids: Vec<&str> = saved["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["x", "y", "z"]);
    assert_eq!(saved["accounts"][0]["isHealthy"], json!(true));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_pool_file_that_goes_away_is_not_recreated_from_one_write() {
    let dir = temp_dir("gone");
    let path = dir.join("account_pool.json");
    let original = older_file();
    write_file(&path, &original);
    let pool = pool(&ACCOUNTS);
    let handle = StoreHandle::start_with(
        &pool,
        JsonFileStore::open(&path).unwrap(),
        WriterConfig::default().interval(Duration::from_millis(50)),
    )
    .await
    .unwrap();
    handle.flush().await.unwrap();

    // An editor replaces the file by removing it first: a write meanwhile must not create a
    // file holding only the accounts of that write (and no credentials).
    std::fs::remove_file(&path).unwrap();
    pool.report_probe(
        ACCOUNTS[0],
        Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(60)),
            scope: RateLimitScope::Account,
        },
    )
    .unwrap();
    let error = handle.flush().await.unwrap_err().to_string();
    assert!(
        error.contains("the pool file is gone; it is not recreated"),
        "{error}"
    );
    assert!(!path.exists());

    // The file is back: the pending state is written into it, every account kept.
    write_file(&path, &original);
    handle.shutdown().await.unwrap();
    let saved = read_file(&path);
    assert_eq!(
        saved["accounts"].as_array().unwrap().len(),
        original["accounts"].as_array().unwrap().len()
    );
    assert_eq!(
        saved["accounts"][0]["poolState"]["state"],
        json!("rateLimited")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
