//! The Redis store: replicas converge, counters add up, an outage is survived and healed.
//! Needs a Redis server at `REDIS_URL` (e.g. `redis://127.0.0.1:6379`); skipped when unset.
#![cfg(feature = "redis")]

use crate::support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{pool, rate_limited_for};

use redis::AsyncCommands;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower_account_pool::store::{RedisConfig, RedisStore, StoreHandle};
use tower_account_pool::{HealthState, Outcome, Pool, SelectRequest};

fn redis_url() -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: REDIS_URL not set");
            None
        }
    }
}

fn unique_prefix(test: &str) -> String {
    format!(
        "tap-test:{test}:{}:{}",
        std::process::id(),
        fastrand::u64(..)
    )
}

async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn cleanup(url: &str, prefix: &str) {
    let mut conn = connect(url).await;
    let keys: Vec<String> = conn.keys(format!("{prefix}:*")).await.unwrap();
    if !keys.is_empty() {
        let _: () = conn.del(keys).await.unwrap();
    }
}

async fn counter(url: &str, prefix: &str, ids: &[&str], field: &str) -> u64 {
    let mut conn = connect(url).await;
    let mut total = 0;
    for id in ids {
        let v: Option<u64> = conn
            .hget(format!("{prefix}:account:{id}"), field)
            .await
            .unwrap();
        total += v.unwrap_or(0);
    }
    total
}

async fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn state(pool: &Pool, id: &str) -> HealthState {
    pool.snapshot().account(id).unwrap().state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_with_one_prefix_converge_on_a_cooldown_within_a_second() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("converge");
    let ids = ["r1", "r2", "r3"];
    let (a, b) = (pool(&ids), pool(&ids));
    let store = || RedisStore::open(RedisConfig::new(&url, &prefix));
    let handle_a = StoreHandle::start(&a, store().await.unwrap())
        .await
        .unwrap();
    let handle_b = StoreHandle::start(&b, store().await.unwrap())
        .await
        .unwrap();
    handle_a.flush().await.unwrap();
    handle_b.flush().await.unwrap();

    a.report_probe("r1", rate_limited_for(120)).unwrap();
    let took = wait_for("b honours a's cooldown", Duration::from_secs(1), || {
        state(&b, "r1") == HealthState::RateLimited
    })
    .await;
    eprintln!("cooldown seen by the other replica after {took:?}");
    for _ in 0..6 {
        let lease = b.select(&SelectRequest::default()).unwrap();
        assert_ne!(lease.id().as_str(), "r1");
        lease.report(Outcome::Success);
    }
    // The cooldown is an expiring key in Redis.
    let mut conn = connect(&url).await;
    let ttl: i64 = conn.pttl(format!("{prefix}:cooldown:r1")).await.unwrap();
    assert!(ttl > 100_000 && ttl <= 120_000, "ttl {ttl}");

    // An operator reset on b reaches a the same way.
    b.reset("r1").unwrap();
    wait_for("a sees the reset", Duration::from_secs(1), || {
        state(&a, "r1") == HealthState::Healthy
    })
    .await;
    let ttl: i64 = conn.pttl(format!("{prefix}:cooldown:r1")).await.unwrap();
    assert_eq!(ttl, -2, "the cooldown key is gone");

    handle_a.shutdown().await.unwrap();
    handle_b.shutdown().await.unwrap();
    cleanup(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_exact_under_concurrent_replicas() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("counters");
    let ids = ["c1", "c2", "c3", "c4"];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let url = url.clone();
        let prefix = prefix.clone();
        replicas.push(tokio::spawn(async move {
            let pool = pool(&ids);
            let store = RedisStore::open(RedisConfig::new(&url, &prefix))
                .await
                .unwrap();
            let handle = StoreHandle::start_with(
                &pool,
                store,
                tower_account_pool::store::WriterConfig::default()
                    .interval(Duration::from_millis(20)),
            )
            .await
            .unwrap();
            for i in 0..1_000u32 {
                let lease = pool.select(&SelectRequest::default()).unwrap();
                if i % 2 == 0 {
                    lease.report(Outcome::Success);
                } else {
                    lease.report(Outcome::ClientError);
                }
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            handle.shutdown().await.unwrap();
            pool
        }));
    }
    let mut pools = Vec::new();
    for replica in replicas {
        pools.push(replica.await.unwrap());
    }
    assert_eq!(counter(&url, &prefix, &ids, "requests").await, 3_000);
    assert_eq!(counter(&url, &prefix, &ids, "successes").await, 1_500);
    assert_eq!(counter(&url, &prefix, &ids, "client_errors").await, 1_500);
    // Each replica folded the others' increments into its own counters as it wrote.
    for pool in &pools {
        let seen: u64 = pool
            .snapshot()
            .accounts
            .iter()
            .map(|a| a.counters.requests)
            .sum();
        assert!((1_000..=3_000).contains(&seen), "{seen}");
    }
    cleanup(&url, &prefix).await;
}

/// A TCP forwarder to Redis that the test can cut and restore.
struct Forwarder {
    port: u16,
    serving: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Forwarder {
    async fn start(target: String) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let serving = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let serving = serving.clone();
            let connections = connections.clone();
            async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        return;
                    };
                    if !serving.load(Ordering::Acquire) {
                        drop(client); // Redis is "down": the connection closes at once
                        continue;
                    }
                    let target = target.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections.lock().unwrap().push(task);
                }
            }
        });
        Forwarder {
            port,
            serving,
            connections,
            accept,
        }
    }

    fn cut(&self) {
        self.serving.store(false, Ordering::Release);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.serving.store(true, Ordering::Release);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// `host:port` of a `redis://[auth@]host:port[/db]` URL.
fn host_port(url: &str) -> (String, String) {
    let rest = url.strip_prefix("redis://").expect("a redis:// URL");
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (format!("{auth}@"), rest),
        None => (String::new(), rest),
    };
    let (hostport, db) = match rest.split_once('/') {
        Some((h, db)) => (h, format!("/{db}")),
        None => (rest, String::new()),
    };
    (hostport.to_owned(), format!("{auth}|{db}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_survive_a_redis_outage_and_state_converges_after() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("outage");
    let ids = ["o1", "o2", "o3"];
    let (target, parts) = host_port(&url);
    let (auth, db) = parts.split_once('|').unwrap();
    let forwarder = Forwarder::start(target).await;
    let via_forwarder = format!("redis://{auth}127.0.0.1:{}{db}", forwarder.port);

    let a = pool(&ids); // reaches Redis through the forwarder
    let b = pool(&ids); // reaches Redis directly
    let config = || {
        tower_account_pool::store::WriterConfig::default()
            .interval(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(300))
    };
    let handle_a = StoreHandle::start_with(
        &a,
        RedisStore::open(
            RedisConfig::new(&via_forwarder, &prefix).timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap(),
        config(),
    )
    .await
    .unwrap();
    let handle_b = StoreHandle::start_with(
        &b,
        RedisStore::open(RedisConfig::new(&url, &prefix))
            .await
            .unwrap(),
        config(),
    )
    .await
    .unwrap();
    let serve = |pool: &Pool, n: usize| {
        for _ in 0..n {
            pool.select(&SelectRequest::default())
                .expect("served from local state")
                .report(Outcome::Success);
        }
    };
    serve(&a, 90);
    handle_a.flush().await.unwrap();
    assert_eq!(counter(&url, &prefix, &ids, "requests").await, 90);

    forwarder.cut();
    // Redis is unreachable for a: requests go on, changes are kept.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_millis(1_500) {
        serve(&a, 10);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.report_probe("o2", rate_limited_for(300)).unwrap();
    b.report_probe("o3", rate_limited_for(300)).unwrap();
    serve(&a, 10);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        handle_a.stats().failures > 0,
        "writes failed during the outage"
    );
    assert!(handle_a.stats().last_error.is_some());
    assert_eq!(state(&a, "o3"), HealthState::Healthy, "a could not hear b");
    let served_by_a: u64 = a
        .snapshot()
        .accounts
        .iter()
        .map(|s| s.counters.requests)
        .sum();
    assert!(served_by_a > 200, "{served_by_a}");

    forwarder.restore();
    // Reconnected and reconciled: a's kept increments and cooldown reach Redis and b, and a
    // learns b's cooldown.
    let took = wait_for("a reconciles", Duration::from_secs(5), || {
        state(&a, "o3") == HealthState::RateLimited && state(&b, "o2") == HealthState::RateLimited
    })
    .await;
    eprintln!("reconciled {took:?} after Redis came back");
    handle_a.flush().await.unwrap();
    assert_eq!(
        counter(&url, &prefix, &ids, "requests").await,
        served_by_a,
        "no increment lost or doubled"
    );
    handle_a.shutdown().await.unwrap();
    handle_b.shutdown().await.unwrap();
    cleanup(&url, &prefix).await;
}
