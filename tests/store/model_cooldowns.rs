//! Cooldowns survive a restart in every persistent store: an account rate limited on one model
//! stays out of rotation for that model, and only that model, after the pool is rebuilt from
//! the store; another process on the same store honours it too; and a cooldown set before the
//! writer's first flush is written like any other.
#[cfg(feature = "redis")]
use crate::support;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tower_account_pool::credential::NoCredential;
use tower_account_pool::store::{JsonFileStore, Store, StoreHandle};
use tower_account_pool::{
    health::ModelBlockKind, health::RateLimitScope, pool::ModelCooldown, pool::PersistedState,
    Account, Outcome, Pool, SelectRequest,
};

const LIMITED: &str = "claude-opus-4";
const OTHER: &str = "claude-haiku-4";

fn pool() -> Pool {
    Pool::builder()
        .accounts(["a", "b"].map(|id| Account::new(id, NoCredential)))
        .build()
        .unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tap-model-cooldowns-{name}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Rate-limits account `a` on [`LIMITED`] for an hour through a real lease.
fn rate_limit_a_on_one_model(pool: &Pool) {
    rate_limit_a_on(pool, LIMITED);
}

/// Rate-limits account `a` on `model` for an hour through a real lease.
fn rate_limit_a_on(pool: &Pool, model: &str) {
    loop {
        let lease = pool.select(&SelectRequest::for_model(model)).unwrap();
        if lease.id().as_str() == "a" {
            lease.report(Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(3600)),
                scope: RateLimitScope::Model,
            });
            return;
        }
        lease.report(Outcome::Success);
    }
}

/// The models account `a` is cooling down on, sorted.
#[cfg(any(feature = "sqlite", feature = "redis"))]
fn cooling_models(pool: &Pool) -> Vec<String> {
    let mut models: Vec<String> = pool
        .snapshot()
        .account("a")
        .unwrap()
        .model_cooldowns
        .iter()
        .map(|c| c.model.clone())
        .collect();
    models.sort();
    models
}

/// Which accounts 20 selections for `model` reach.
fn reached(pool: &Pool, model: &str) -> Vec<String> {
    let mut ids: Vec<String> = (0..20)
        .map(|_| {
            let lease = pool.select(&SelectRequest::for_model(model)).unwrap();
            let id = lease.id().as_str().to_owned();
            lease.report(Outcome::Success);
            id
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// One pool rate-limits `a` on one model and stops; a new pool on the same store must keep
/// `a` away from that model for about an hour, and give it the other model.
async fn survives_a_restart<S: Store>(open: impl Fn() -> S) {
    let before = pool();
    let handle = StoreHandle::start(&before, open()).await.unwrap();
    rate_limit_a_on_one_model(&before);
    let saved = before.snapshot().account("a").unwrap().persisted();
    assert_eq!(saved.model_cooldowns.len(), 1, "{saved:?}");
    before.shutdown().await.unwrap();
    handle.shutdown().await.unwrap();
    drop(before);

    let after = pool();
    let handle = StoreHandle::start(&after, open()).await.unwrap();
    let a = after.snapshot().account("a").unwrap().clone();
    let [cooldown] = &a.model_cooldowns[..] else {
        panic!("one model cooldown restored: {:?}", a.model_cooldowns);
    };
    assert_eq!(cooldown.model, LIMITED);
    assert_eq!(cooldown.kind, ModelBlockKind::RateLimited);
    let left = cooldown
        .until
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
        "{left:?} left"
    );
    assert_eq!(reached(&after, LIMITED), ["b"]);
    assert_eq!(reached(&after, OTHER), ["a", "b"]);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn json_file_store_keeps_model_cooldowns() {
    let path = temp_dir("json").join("account_pool.json");
    survives_a_restart(|| JsonFileStore::open(&path).unwrap()).await;
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let saved = &file["accounts"][0]["poolState"]["modelCooldowns"][0];
    assert_eq!(saved["model"], LIMITED, "{file:#}");
    assert_eq!(saved["kind"], "rateLimited", "{file:#}");
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_store_keeps_model_cooldowns() {
    use tower_account_pool::store::SqliteStore;
    let path = temp_dir("sqlite").join("pool.db");
    survives_a_restart(|| SqliteStore::open(&path).unwrap()).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_side_table_of_an_earlier_version_gains_the_column_and_keeps_its_rows() {
    use tower_account_pool::store::SqliteStore;
    let path = temp_dir("sqlite-old").join("pool.db");
    // A database an earlier version wrote: seven successes of `a`, and the side table
    // without `model_cooldowns`.
    {
        let pool = pool();
        let handle = StoreHandle::start(&pool, SqliteStore::open(&path).unwrap())
            .await
            .unwrap();
        for _ in 0..7 {
            pool.select(&SelectRequest::default().excluding(&["b".into()]))
                .unwrap()
                .report(Outcome::Success);
        }
        pool.shutdown().await.unwrap();
        handle.shutdown().await.unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("ALTER TABLE tap_account_state DROP COLUMN model_cooldowns")
            .unwrap();
    }
    let pool = pool();
    let handle = StoreHandle::start(&pool, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    assert_eq!(pool.snapshot().account("a").unwrap().counters.successes, 7);
    rate_limit_a_on_one_model(&pool);
    pool.shutdown().await.unwrap();
    handle.shutdown().await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let saved: String = conn
        .query_row(
            "SELECT model_cooldowns FROM tap_account_state WHERE uuid = 'a'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let saved: Vec<ModelCooldown> = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved[0].model, LIMITED);
}

/// `REDIS_URL` and a key prefix of this test's own, or `None` (the test is skipped).
#[cfg(feature = "redis")]
fn redis_prefix(test: &str) -> Option<(String, String)> {
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("skipped: REDIS_URL not set");
        return None;
    };
    let prefix = format!(
        "tap-test:{test}:{}:{}",
        std::process::id(),
        fastrand::u64(..)
    );
    Some((url, prefix))
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_store_keeps_model_cooldowns() {
    use tower_account_pool::store::{RedisConfig, RedisStore};
    let Some((url, prefix)) = redis_prefix("restart") else {
        return;
    };
    // `open` is async: connect both stores up front, one per pool.
    let mut stores = Vec::new();
    for _ in 0..2 {
        stores.push(Some(
            RedisStore::open(RedisConfig::new(url.clone(), prefix.clone()))
                .await
                .unwrap(),
        ));
    }
    let stores = std::sync::Mutex::new(stores);
    survives_a_restart(|| {
        let mut stores = stores.lock().unwrap();
        let next = stores.iter_mut().find_map(Option::take);
        next.expect("two stores")
    })
    .await;
    support::delete_redis_keys(&url, &prefix).await;
}

#[test]
fn an_ended_or_nameless_saved_cooldown_is_not_restored() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pool = pool();
        let now = SystemTime::now();
        let saved = PersistedState {
            model_cooldowns: vec![
                ModelCooldown {
                    model: LIMITED.into(),
                    kind: ModelBlockKind::RateLimited,
                    until: Some(now - Duration::from_secs(5)),
                    since: None,
                },
                ModelCooldown {
                    model: String::new(),
                    kind: ModelBlockKind::RateLimited,
                    until: Some(now + Duration::from_secs(60)),
                    since: None,
                },
                ModelCooldown {
                    model: OTHER.into(),
                    kind: ModelBlockKind::Unsupported,
                    until: Some(now + Duration::from_secs(60)),
                    since: None,
                },
            ],
            ..PersistedState::default()
        };
        pool.restore_state("a", &saved).unwrap();
        let a = pool.snapshot().account("a").unwrap().clone();
        assert_eq!(a.model_cooldowns.len(), 1, "{:?}", a.model_cooldowns);
        assert_eq!(a.model_cooldowns[0].model, OTHER);
        assert_eq!(a.model_cooldowns[0].kind, ModelBlockKind::Unsupported);
        assert_eq!(reached(&pool, LIMITED), ["a", "b"]);
        assert_eq!(reached(&pool, OTHER), ["b"]);
    });
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn an_account_wide_cooldown_right_after_start_is_written() {
    use tower_account_pool::store::{RedisConfig, RedisStore};
    use tower_account_pool::HealthState;
    let Some((url, prefix)) = redis_prefix("first-flush") else {
        return;
    };
    let open = || RedisStore::open(RedisConfig::new(url.clone(), prefix.clone()));
    // Redis holds no account yet, and writes an account's state fields only with a state
    // change: a change before the writer's first flush must count as one, not be taken for
    // the state the account started with.
    let before = pool();
    let handle = StoreHandle::start(&before, open().await.unwrap())
        .await
        .unwrap();
    let limit = |id: &str| {
        before
            .report_probe(
                id,
                Outcome::RateLimited {
                    retry_after: Some(Duration::from_secs(600)),
                    scope: RateLimitScope::Account,
                },
            )
            .unwrap()
    };
    limit("a");
    // The same for an account added while the writer runs.
    before.add(Account::new("c", NoCredential)).unwrap();
    limit("c");
    before.shutdown().await.unwrap();
    handle.shutdown().await.unwrap();

    let after = pool();
    after.add(Account::new("c", NoCredential)).unwrap();
    let handle = StoreHandle::start(&after, open().await.unwrap())
        .await
        .unwrap();
    for id in ["a", "c"] {
        assert_eq!(
            after.snapshot().account(id).unwrap().state,
            HealthState::RateLimited,
            "{id}"
        );
    }
    handle.shutdown().await.unwrap();
    support::delete_redis_keys(&url, &prefix).await;
}

/// Two pools on one SQLite database, as two gateway processes on one host.
#[cfg(feature = "sqlite")]
async fn two_processes(path: &std::path::Path) -> (Pool, Pool, StoreHandle, StoreHandle) {
    use tower_account_pool::store::SqliteStore;
    let (first, second) = (pool(), pool());
    let first_handle = StoreHandle::start(&first, SqliteStore::open(path).unwrap())
        .await
        .unwrap();
    let second_handle = StoreHandle::start(&second, SqliteStore::open(path).unwrap())
        .await
        .unwrap();
    (first, second, first_handle, second_handle)
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_cooldown_set_by_one_process_reaches_another() {
    // Two pools on one database, as two gateway processes on one host.
    let path = temp_dir("shared").join("pool.db");
    let (first, second, first_handle, second_handle) = two_processes(&path).await;
    rate_limit_a_on_one_model(&first);
    let started = std::time::Instant::now();
    loop {
        let a = second.snapshot().account("a").unwrap().clone();
        if a.model_cooldowns.iter().any(|c| c.model == LIMITED) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the second process never saw the cooldown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reached(&second, LIMITED), ["b"]);
    assert_eq!(reached(&second, OTHER), ["a", "b"]);
    first_handle.shutdown().await.unwrap();
    second_handle.shutdown().await.unwrap();
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_merge_cooldowns_and_never_undo_each_others() {
    use tower_account_pool::store::SqliteStore;
    use tower_account_pool::HealthState;
    let path = temp_dir("merge").join("pool.db");
    let (first, second, first_handle, second_handle) = two_processes(&path).await;
    // At the same moment: the second process rate-limits `a` as a whole, the first on one
    // model. The first's model change must not write its view of `a` (healthy) over the
    // second's cooldown.
    second
        .report_probe(
            "a",
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(600)),
                scope: RateLimitScope::Account,
            },
        )
        .unwrap();
    rate_limit_a_on(&first, LIMITED);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (name, pool) in [("first", &first), ("second", &second)] {
        let a = pool.snapshot().account("a").unwrap().clone();
        assert_eq!(a.state, HealthState::RateLimited, "{name}: {a:?}");
        assert!(
            a.model_cooldowns.iter().any(|c| c.model == LIMITED),
            "{name}: {:?}",
            a.model_cooldowns
        );
    }
    // Each process adds a cooldown on another model: the store keeps all of them.
    second.reset("a").unwrap();
    first.reset("a").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    rate_limit_a_on(&first, LIMITED);
    rate_limit_a_on(&second, OTHER);
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    first_handle.shutdown().await.unwrap();
    second_handle.shutdown().await.unwrap();

    let after = pool();
    let handle = StoreHandle::start(&after, SqliteStore::open(&path).unwrap())
        .await
        .unwrap();
    assert_eq!(cooling_models(&after), [OTHER, LIMITED]);
    handle.shutdown().await.unwrap();
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_merges_two_processes_cooldowns_and_a_reset_clears_them() {
    use tower_account_pool::store::{RedisConfig, RedisStore};
    let Some((url, prefix)) = redis_prefix("merge") else {
        return;
    };
    let open = || RedisStore::open(RedisConfig::new(url.clone(), prefix.clone()));
    let first = pool();
    let second = pool();
    let first_handle = StoreHandle::start(&first, open().await.unwrap())
        .await
        .unwrap();
    let second_handle = StoreHandle::start(&second, open().await.unwrap())
        .await
        .unwrap();
    rate_limit_a_on(&first, LIMITED);
    rate_limit_a_on(&second, OTHER);
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    let third = pool();
    let handle = StoreHandle::start(&third, open().await.unwrap())
        .await
        .unwrap();
    assert_eq!(cooling_models(&third), [OTHER, LIMITED]);
    // A reset clears them in the store too.
    third.reset("a").unwrap();
    third.shutdown().await.unwrap();
    handle.shutdown().await.unwrap();
    first_handle.shutdown().await.unwrap();
    second_handle.shutdown().await.unwrap();
    let fourth = pool();
    let handle = StoreHandle::start(&fourth, open().await.unwrap())
        .await
        .unwrap();
    assert!(
        cooling_models(&fourth).is_empty(),
        "{:?}",
        cooling_models(&fourth)
    );
    handle.shutdown().await.unwrap();
    support::delete_redis_keys(&url, &prefix).await;
}
