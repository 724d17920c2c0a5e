//! Many threads selecting and reporting at once: counters add up exactly, limits hold, and a
//! half-open account admits exactly one probe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use tower_account_pool::credential::NoCredential;
use tower_account_pool::{
    health::OutcomeClass, select::Unavailable, Account, AccountId, HealthState, Outcome, Pool,
    SelectRequest, Strategy,
};

const THREADS: usize = 8;
const PER_THREAD: usize = 5_000;

fn outcome_for(i: usize) -> Outcome {
    match i % 10 {
        0 => Outcome::ClientError,
        1 => Outcome::Cancelled,
        2 => Outcome::rate_limited(Some(Duration::from_millis(1))),
        _ => Outcome::Success,
    }
}

#[test]
fn counters_add_up_exactly_and_limits_hold_under_contention() {
    for strategy in [
        Strategy::RoundRobin,
        Strategy::LeastInFlight,
        Strategy::LeastRecentlyUsed,
        Strategy::Weighted,
        Strategy::FillFirst,
    ] {
        run_contention(strategy);
    }
}

fn run_contention(strategy: Strategy) {
    let max_in_flight = 2u32;
    let pool = Pool::builder()
        .accounts((0..6).map(|i| {
            Account::new(format!("a{i}"), NoCredential)
                .max_in_flight(max_in_flight)
                .weight(1 + i as u32 % 3)
        }))
        .account(Account::new("disabled", NoCredential).enabled(false))
        .account(Account::new("banned", NoCredential))
        .strategy(strategy)
        .build()
        .unwrap();
    pool.report_probe("banned", Outcome::Suspended).unwrap();

    // What the test itself observed, per account.
    let ids = pool.ids();
    let observed_in_flight: Arc<HashMap<AccountId, AtomicU32>> = Arc::new(
        ids.iter()
            .map(|id| (id.clone(), AtomicU32::new(0)))
            .collect(),
    );
    let handed_out: Arc<HashMap<AccountId, AtomicU64>> = Arc::new(
        ids.iter()
            .map(|id| (id.clone(), AtomicU64::new(0)))
            .collect(),
    );
    let per_class: Arc<HashMap<(AccountId, OutcomeClass), AtomicU64>> = Arc::new(
        ids.iter()
            .flat_map(|id| {
                OutcomeClass::ALL
                    .iter()
                    .map(move |c| ((id.clone(), *c), AtomicU64::new(0)))
            })
            .collect(),
    );
    let exhausted = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(THREADS));

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let pool = pool.clone();
            let observed = observed_in_flight.clone();
            let handed_out = handed_out.clone();
            let per_class = per_class.clone();
            let exhausted = exhausted.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..PER_THREAD {
                    let model = if i % 2 == 0 { "m1" } else { "m2" };
                    match pool.select(&SelectRequest::for_model(model)) {
                        Ok(lease) => {
                            let id = lease.id().clone();
                            assert_ne!(id.as_str(), "disabled", "{strategy:?}");
                            assert_ne!(id.as_str(), "banned", "{strategy:?}");
                            let now = observed[&id].fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(
                                now <= max_in_flight,
                                "{strategy:?}: {id} has {now} leases out, limit {max_in_flight}"
                            );
                            handed_out[&id].fetch_add(1, Ordering::Relaxed);
                            let outcome = outcome_for(t * PER_THREAD + i);
                            per_class[&(id.clone(), outcome.class())]
                                .fetch_add(1, Ordering::Relaxed);
                            observed[&id].fetch_sub(1, Ordering::SeqCst);
                            if outcome == Outcome::Cancelled {
                                drop(lease);
                            } else {
                                lease.report(outcome);
                            }
                        }
                        Err(e) => {
                            assert_eq!(e.count(Unavailable::Disabled), 1, "{e}");
                            exhausted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    let snapshot = pool.snapshot();
    let mut total = 0;
    for account in &snapshot.accounts {
        let c = account.counters;
        assert_eq!(account.in_flight, 0, "{strategy:?} {}", account.id);
        let expected = handed_out[&account.id].load(Ordering::Relaxed);
        assert_eq!(c.requests, expected, "{strategy:?} {}", account.id);
        assert_eq!(c.outcomes(), expected, "{strategy:?} {}", account.id);
        for class in OutcomeClass::ALL {
            let seen = per_class[&(account.id.clone(), *class)].load(Ordering::Relaxed);
            let counted = c.outcome(*class);
            assert_eq!(counted, seen, "{strategy:?} {} {class}", account.id);
        }
        total += c.requests;
    }
    let stats = pool.stats();
    assert_eq!(stats.selections, total);
    assert_eq!(stats.exhaustions, exhausted.load(Ordering::Relaxed));
    assert_eq!(
        total + exhausted.load(Ordering::Relaxed),
        (THREADS * PER_THREAD) as u64,
        "{strategy:?}: every request got an answer"
    );
    assert!(
        total > (THREADS * PER_THREAD / 2) as u64,
        "{strategy:?}: most requests served"
    );
}

#[test]
fn accounts_ejected_mid_run_are_not_handed_out_afterwards() {
    let pool = Pool::builder()
        .accounts((0..4).map(|i| Account::new(format!("a{i}"), NoCredential)))
        .build()
        .unwrap();
    // a0 fails every request until it is ejected; others succeed.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for _ in 0..2_000 {
                    // Nothing ends the 30 s ejection during the run, so once seen it holds.
                    let ejected_before =
                        pool.snapshot().account("a0").unwrap().state == HealthState::Ejected;
                    let lease = pool.select(&SelectRequest::default()).unwrap();
                    if lease.id().as_str() == "a0" {
                        assert!(!ejected_before, "a0 handed out while ejected");
                        lease.report(Outcome::Transient);
                    } else {
                        lease.report(Outcome::Success);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let a0 = pool.snapshot().account("a0").unwrap().clone();
    assert_eq!(a0.state, HealthState::Ejected);
    // At most the requests already in flight when it was ejected reached it afterwards.
    assert!(a0.counters.transient <= 3 + 4, "{:?}", a0.counters);
}

#[test]
fn half_open_admits_exactly_one_probe_under_concurrency() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    let _entered = handle.enter();

    for round in 0..20 {
        let pool = Pool::builder()
            .account(Account::new("flaky", NoCredential))
            .account(Account::new("spare", NoCredential))
            .build()
            .unwrap();
        let only_flaky = [AccountId::new("spare")];
        for _ in 0..3 {
            pool.select(&SelectRequest::default().excluding(&only_flaky))
                .unwrap()
                .report(Outcome::Transient);
        }
        assert_eq!(
            pool.snapshot().account("flaky").unwrap().state,
            HealthState::Ejected
        );
        runtime.block_on(tokio::time::advance(Duration::from_secs(40)));

        let barrier = Arc::new(Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let pool = pool.clone();
                let barrier = barrier.clone();
                let handle = handle.clone();
                std::thread::spawn(move || {
                    let _entered = handle.enter();
                    let only_flaky = [AccountId::new("spare")];
                    barrier.wait();
                    pool.select(&SelectRequest::default().excluding(&only_flaky))
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let probes: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(probes.len(), 1, "round {round}: exactly one probe");
        assert!(probes[0].is_probe());
        for err in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(err.count(Unavailable::ProbeInFlight), 1, "{err}");
        }
    }
}
