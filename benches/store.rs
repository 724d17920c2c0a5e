//! `select` + `report` with each store attached, against the same pool without a store: the
//! writes happen off the request path, so the figures should stay within 1.2× of each other.
//!
//! `cargo bench --bench store --all-features` (the Redis case runs when `REDIS_URL` is set).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use tower_account_pool::credential::NoCredential;
use tower_account_pool::store::{JsonFileStore, MemoryStore, Store, StoreHandle, WriterConfig};
use tower_account_pool::{Account, Outcome, Pool, SelectRequest};

const ACCOUNTS: usize = 8;

fn pool() -> Pool {
    Pool::builder()
        .accounts((0..ACCOUNTS).map(|i| Account::new(format!("bench-{i}"), NoCredential)))
        .build()
        .unwrap()
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tap-bench-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bench_with(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    store: Option<impl Store>,
) {
    let pool = pool();
    let handle = store.map(|store| {
        runtime
            .block_on(StoreHandle::start(&pool, store))
            .expect("store starts")
    });
    let request = SelectRequest::for_model("claude-sonnet-4-5");
    c.bench_function(&format!("select_report/{name}"), |b| {
        b.iter(|| {
            let lease = pool.select(black_box(&request)).unwrap();
            lease.report(black_box(Outcome::Success));
        })
    });
    if let Some(handle) = handle {
        let stats = handle.stats();
        runtime.block_on(handle.shutdown()).expect("final flush");
        eprintln!(
            "{name}: {} background writes of {} account records, {} failures",
            stats.writes, stats.accounts_written, stats.failures
        );
    }
}

fn stores(c: &mut Criterion) {
    // The writer runs on the runtime's worker while the bench thread selects and reports.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = temp_dir();

    bench_with(c, &runtime, "no_store", None::<MemoryStore>);
    bench_with(c, &runtime, "memory", Some(MemoryStore::new()));
    let json = dir.join("account_pool.json");
    bench_with(
        c,
        &runtime,
        "json_file",
        Some(JsonFileStore::open(&json).unwrap()),
    );
    #[cfg(feature = "sqlite")]
    bench_with(
        c,
        &runtime,
        "sqlite",
        Some(tower_account_pool::store::SqliteStore::open(dir.join("pool.db")).unwrap()),
    );
    #[cfg(feature = "redis")]
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            use tower_account_pool::store::{RedisConfig, RedisStore};
            let prefix = format!("tap-bench:{}", std::process::id());
            let store = runtime
                .block_on(RedisStore::open(RedisConfig::new(url, prefix)))
                .expect("redis reachable");
            bench_with(c, &runtime, "redis", Some(store));
        }
        Err(_) => eprintln!("redis: skipped: REDIS_URL not set"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Nanoseconds per `select` + `report` over `n` operations.
fn per_op(pool: &Pool, request: &SelectRequest<'_>, n: u32) -> f64 {
    let start = std::time::Instant::now();
    for _ in 0..n {
        let lease = pool.select(black_box(request)).unwrap();
        lease.report(black_box(Outcome::Success));
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// On a shared, busy machine criterion's figures for separate runs drift with the load. This
/// measures a pool with the store and the same pool without one in alternating rounds, so both
/// see the same load, and prints the ratio of the medians.
fn interleaved(runtime: &tokio::runtime::Runtime, name: &str, store: impl Store) {
    const ROUNDS: usize = 401;
    const OPS: u32 = 20_000;
    let (bare, with_store) = (pool(), pool());
    // A writer ten times as busy as the default one (every 50 ms).
    let config = WriterConfig::default().interval(Duration::from_millis(50));
    let handle = runtime
        .block_on(StoreHandle::start_with(&with_store, store, config))
        .expect("store starts");
    let request = SelectRequest::for_model("claude-sonnet-4-5");
    per_op(&bare, &request, OPS);
    per_op(&with_store, &request, OPS);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            a.push(per_op(&bare, &request, OPS));
            b.push(per_op(&with_store, &request, OPS));
        } else {
            b.push(per_op(&with_store, &request, OPS));
            a.push(per_op(&bare, &request, OPS));
        }
    }
    let stats = handle.stats();
    runtime.block_on(handle.shutdown()).expect("final flush");
    let (a, b) = (median(a), median(b));
    println!(
        "interleaved {name:>9}: {b:6.1} ns with the store, {a:6.1} ns without: ratio {:.3} ({} writes)",
        b / a,
        stats.writes
    );
}

fn interleaved_all() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = temp_dir();
    interleaved(&runtime, "memory", MemoryStore::new());
    interleaved(
        &runtime,
        "json_file",
        JsonFileStore::open(dir.join("interleaved.json")).unwrap(),
    );
    #[cfg(feature = "sqlite")]
    interleaved(
        &runtime,
        "sqlite",
        tower_account_pool::store::SqliteStore::open(dir.join("interleaved.db")).unwrap(),
    );
    #[cfg(feature = "redis")]
    if let Ok(url) = std::env::var("REDIS_URL") {
        use tower_account_pool::store::{RedisConfig, RedisStore};
        let prefix = format!("tap-bench-interleaved:{}", std::process::id());
        let store = runtime
            .block_on(RedisStore::open(RedisConfig::new(url, prefix)))
            .expect("redis reachable");
        interleaved(&runtime, "redis", store);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = stores
}

fn main() {
    benches();
    if !std::env::args().any(|a| a == "--list" || a == "--test") {
        interleaved_all();
    }
    Criterion::default().configure_from_args().final_summary();
}
