//! Selection cost: `select` + `report(Success)` per iteration, beside the floor (a bare atomic
//! round-robin skipping unhealthy entries) and tower's own `balance::p2c::Balance`.
//!
//! ```text
//! cargo bench --bench selection
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::Constant;
use tower::Service;
use tower_account_pool::credential::NoCredential;
use tower_account_pool::{Account, Outcome, Pool, SelectRequest, Strategy};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
const MODEL: &str = "claude-sonnet-4-5";

fn pool(n: usize, strategy: Strategy, half_unhealthy: bool) -> Pool {
    let pool = Pool::builder()
        .accounts((0..n).map(|i| Account::new(format!("acct-{i}"), NoCredential)))
        .strategy(strategy)
        .build()
        .unwrap();
    if half_unhealthy {
        for id in pool.ids().iter().skip(1).step_by(2) {
            pool.report_probe(id.as_str(), Outcome::Suspended).unwrap();
        }
    }
    pool
}

/// The floor: an atomic cursor over n health flags, skipping the unhealthy ones.
struct Floor {
    cursor: AtomicUsize,
    healthy: Vec<AtomicBool>,
}

impl Floor {
    fn new(n: usize, half_unhealthy: bool) -> Self {
        Floor {
            cursor: AtomicUsize::new(0),
            healthy: (0..n)
                .map(|i| AtomicBool::new(!half_unhealthy || i % 2 == 0))
                .collect(),
        }
    }

    fn pick(&self) -> Option<usize> {
        let n = self.healthy.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.healthy[i].load(Ordering::Relaxed))
    }
}

fn select_and_report(pool: &Pool, request: &SelectRequest<'_>) {
    let lease = pool.select(request).unwrap();
    black_box(lease.id());
    lease.report(Outcome::Success);
}

fn bench_selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let request = SelectRequest::for_model(MODEL);

    for n in SIZES {
        let floor = Floor::new(n, true);
        group.bench_with_input(BenchmarkId::new("floor", n), &n, |b, _| {
            b.iter(|| black_box(floor.pick()))
        });

        let rr = pool(n, Strategy::RoundRobin, false);
        group.bench_with_input(BenchmarkId::new("round_robin", n), &n, |b, _| {
            b.iter(|| select_and_report(&rr, &request))
        });

        let half = pool(n, Strategy::RoundRobin, true);
        group.bench_with_input(
            BenchmarkId::new("round_robin_half_unhealthy", n),
            &n,
            |b, _| b.iter(|| select_and_report(&half, &request)),
        );

        let lif = pool(n, Strategy::LeastInFlight, false);
        group.bench_with_input(BenchmarkId::new("least_in_flight", n), &n, |b, _| {
            b.iter(|| select_and_report(&lif, &request))
        });

        let sticky = pool(n, Strategy::RoundRobin, false);
        let keys: Vec<String> = (0..64).map(|i| format!("conversation-{i}")).collect();
        let mut k = 0usize;
        group.bench_with_input(BenchmarkId::new("sticky", n), &n, |b, _| {
            b.iter(|| {
                k = (k + 1) % keys.len();
                let request = SelectRequest::for_model(MODEL).with_affinity_key(&keys[k]);
                select_and_report(&sticky, &request)
            })
        });

        group.bench_with_input(BenchmarkId::new("tower_p2c", n), &n, |b, &n| {
            let services = (0..n).map(|_| {
                Constant::new(
                    tower::service_fn(|_: ()| async { Ok::<_, Infallible>(()) }),
                    1usize,
                )
            });
            let mut balance = Balance::new(ServiceList::new(services));
            let mut cx = Context::from_waker(Waker::noop());
            b.iter(|| {
                let ready = balance.poll_ready(&mut cx);
                assert!(matches!(ready, Poll::Ready(Ok(()))));
                let mut call = std::pin::pin!(balance.call(()));
                black_box(call.as_mut().poll(&mut cx))
            })
        });
    }

    // Two threads selecting at once from one pool of 10,000 accounts.
    let shared = Arc::new(pool(10_000, Strategy::RoundRobin, false));
    group.bench_function("contended/round_robin/10000", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let pool = shared.clone();
                    std::thread::spawn(move || {
                        let request = SelectRequest::for_model(MODEL);
                        for _ in 0..iters {
                            select_and_report(&pool, &request);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_selection);
criterion_main!(benches);
