//! What timing selections for the `/metrics` histogram costs: `Pool::select` alone against the
//! same call through `admin::SelectionLatency::select`.
//!
//! `cargo bench --bench admin_latency --features admin`

use criterion::{criterion_group, criterion_main, Criterion};
use tower_account_pool::admin::SelectionLatency;
use tower_account_pool::credential::NoCredential;
use tower_account_pool::{Account, Outcome, Pool, SelectRequest};

fn pool() -> Pool {
    Pool::builder()
        .accounts((0..8).map(|i| Account::new(format!("acct-{i}"), NoCredential)))
        .build()
        .expect("a valid pool")
}

fn selection_timing(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    let request = SelectRequest::for_model("claude-sonnet-4-5");

    let plain = pool();
    group.bench_function("pool.select", |b| {
        b.iter(|| {
            let lease = plain.select(&request).expect("an account");
            lease.report(Outcome::Success);
        })
    });

    let timed = pool();
    let latency = SelectionLatency::new();
    group.bench_function("SelectionLatency::select", |b| {
        b.iter(|| {
            let lease = latency.select(&timed, &request).expect("an account");
            lease.report(Outcome::Success);
        })
    });

    let sampled_pool = pool();
    let sampled = SelectionLatency::sampled(16);
    group.bench_function("SelectionLatency::sampled(16).select", |b| {
        b.iter(|| {
            let lease = sampled.select(&sampled_pool, &request).expect("an account");
            lease.report(Outcome::Success);
        })
    });
    group.finish();
}

criterion_group!(benches, selection_timing);
criterion_main!(benches);
