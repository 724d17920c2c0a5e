//! The background writer: batching, max-wait, failures retried, shutdown flush.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower_account_pool::credential::NoCredential;
use tower_account_pool::store::{
    AccountWrite, CounterTotals, MemoryStore, Store, StoreError, StoreErrorKind, StoreHandle,
    StoredAccount, WriterConfig,
};
use tower_account_pool::{
    health::RateLimitScope, pool::PersistedState, Account, HealthState, Outcome, Pool,
    SelectRequest,
};

/// A store that records every write and can be made to fail or to hang.
#[derive(Clone, Default)]
struct Recording {
    inner: MemoryStore,
    writes: Arc<Mutex<Vec<(Instant, usize)>>>,
    fail_next: Arc<AtomicU32>,
    gate: Option<Arc<Semaphore>>,
}

impl Store for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }

    async fn load(&self) -> Result<Vec<StoredAccount>, StoreError> {
        self.inner.load().await
    }

    async fn write(&self, batch: Vec<AccountWrite>) -> Result<CounterTotals, StoreError> {
        if let Some(gate) = &self.gate {
            let _permit = gate.acquire().await.unwrap();
        }
        if self
            .fail_next
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::new(StoreErrorKind::Unavailable, "disk on fire"));
        }
        self.writes
            .lock()
            .unwrap()
            .push((Instant::now(), batch.len()));
        self.inner.write(batch).await
    }
}

fn pool(n: usize) -> Pool {
    Pool::builder()
        .accounts((0..n).map(|i| Account::new(format!("acct-{i}"), NoCredential)))
        .build()
        .unwrap()
}

fn serve(pool: &Pool, n: usize, outcome: Outcome) {
    for _ in 0..n {
        pool.select(&SelectRequest::default())
            .expect("requests are served whatever the store does")
            .report(outcome);
    }
}

fn stored_total(store: &MemoryStore, pool: &Pool) -> u64 {
    pool.ids()
        .iter()
        .map(|id| store.get(id.as_str()).map_or(0, |s| s.counters.requests))
        .sum()
}

#[tokio::test(start_paused = true)]
async fn steady_traffic_cannot_starve_a_save() {
    let pool = pool(2);
    let store = Recording::default();
    let config = WriterConfig::default().interval(Duration::from_millis(500));
    let handle = StoreHandle::start_with(&pool, store.clone(), config)
        .await
        .unwrap();
    let start = Instant::now();
    // A request every 10 ms for 5 s: a trailing-edge debounce would never write.
    for _ in 0..500 {
        serve(&pool, 1, Outcome::Success);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let writes = store.writes.lock().unwrap().clone();
    assert!(writes.len() >= 9, "only {} writes in 5 s", writes.len());
    let mut previous = start;
    for (at, _) in &writes {
        assert!(
            *at - previous <= Duration::from_millis(520),
            "a gap of {:?} between saves",
            *at - previous
        );
        previous = *at;
    }
    handle.shutdown().await.unwrap();
    assert_eq!(stored_total(&store.inner, &pool), 500);
}

#[tokio::test(start_paused = true)]
async fn batches_are_bounded() {
    let pool = pool(10);
    let store = Recording::default();
    let config = WriterConfig::default().max_batch(3);
    let handle = StoreHandle::start_with(&pool, store.clone(), config)
        .await
        .unwrap();
    serve(&pool, 10, Outcome::Success);
    handle.flush().await.unwrap();
    let sizes: Vec<usize> = store.writes.lock().unwrap().iter().map(|w| w.1).collect();
    assert!(sizes.iter().all(|&n| n <= 3), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 10);
    handle.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_state_change_is_written_without_waiting_for_the_interval() {
    let pool = pool(2);
    let store = Recording::default();
    let config = WriterConfig::default().interval(Duration::from_secs(10));
    let handle = StoreHandle::start_with(&pool, store.clone(), config)
        .await
        .unwrap();
    let lease = pool.select(&SelectRequest::default()).unwrap();
    let id = lease.id().clone();
    lease.report(Outcome::RateLimited {
        retry_after: Some(Duration::from_secs(60)),
        scope: RateLimitScope::Account,
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let saved = store.inner.get(id.as_str()).expect("written within 100 ms");
    assert_eq!(saved.state, HealthState::RateLimited);
    assert!(saved.until.is_some());
    handle.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_is_retried_and_loses_nothing() {
    let pool = pool(3);
    let store = Recording::default();
    store.fail_next.store(4, Ordering::Release);
    let config = WriterConfig::default()
        .interval(Duration::from_millis(100))
        .max_backoff(Duration::from_millis(400));
    let handle = StoreHandle::start_with(&pool, store.clone(), config)
        .await
        .unwrap();
    serve(&pool, 30, Outcome::Success);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(handle.stats().failures >= 1);
    assert_eq!(
        handle.stats().last_error.as_deref(),
        Some("disk on fire"),
        "the failure is visible"
    );
    serve(&pool, 30, Outcome::ClientError);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(store.fail_next.load(Ordering::Acquire), 0);
    assert_eq!(stored_total(&store.inner, &pool), 60);
    assert_eq!(handle.stats().last_error, None);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_hanging_store_never_blocks_requests_and_shutdown_flushes() {
    let pool = pool(3);
    let gate = Arc::new(Semaphore::new(0));
    let store = Recording {
        gate: Some(gate.clone()),
        ..Recording::default()
    };
    let config = WriterConfig::default().interval(Duration::from_millis(10));
    let handle = StoreHandle::start_with(&pool, store.clone(), config)
        .await
        .unwrap();
    // The writer is stuck in a write; requests go on.
    for _ in 0..20 {
        serve(&pool, 100, Outcome::Success);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        stored_total(&store.inner, &pool),
        0,
        "nothing got through yet"
    );
    gate.add_permits(1_000);
    handle.shutdown().await.unwrap();
    assert_eq!(stored_total(&store.inner, &pool), 2_000);
}

#[tokio::test]
async fn state_is_restored_at_start() {
    let store = MemoryStore::new();
    let mut saved = PersistedState::default();
    saved.counters.requests = 7;
    saved.counters.successes = 7;
    saved.state = HealthState::Suspended;
    saved.reason = Some("suspended by the upstream".into());
    store.insert("acct-1", saved);
    let pool = pool(2);
    let handle = StoreHandle::start(&pool, store.clone()).await.unwrap();
    let snapshot = pool.snapshot();
    let account = snapshot.account("acct-1").unwrap();
    assert_eq!(account.state, HealthState::Suspended);
    assert_eq!(account.counters.successes, 7);
    serve(&pool, 4, Outcome::Success); // all on acct-0: acct-1 is suspended
    handle.shutdown().await.unwrap();
    assert_eq!(store.get("acct-0").unwrap().counters.successes, 4);
    assert_eq!(store.get("acct-1").unwrap().counters.successes, 7);
    assert_eq!(store.get("acct-1").unwrap().state, HealthState::Suspended);
}

#[tokio::test]
async fn pool_shutdown_flushes_every_attached_store() {
    let pool = pool(2);
    let first = MemoryStore::new();
    let second = MemoryStore::new();
    // A long interval: only an explicit flush writes within this test.
    let slow = WriterConfig::default().interval(Duration::from_secs(3600));
    let first_handle = StoreHandle::start_with(&pool, first.clone(), slow.clone())
        .await
        .unwrap();
    let _second_handle = StoreHandle::start_with(&pool, second.clone(), slow)
        .await
        .unwrap();
    serve(&pool, 6, Outcome::Success);
    pool.shutdown().await.unwrap();
    assert_eq!(stored_total(&first, &pool), 6);
    assert_eq!(stored_total(&second, &pool), 6);

    // A store already shut down is not waited for; the others still are.
    first_handle.shutdown().await.unwrap();
    serve(&pool, 2, Outcome::Success);
    pool.shutdown().await.unwrap();
    assert_eq!(stored_total(&second, &pool), 8);
}

#[tokio::test]
async fn pool_shutdown_reports_a_store_that_cannot_write() {
    let pool = pool(1);
    let store = Recording::default();
    let slow = WriterConfig::default().interval(Duration::from_secs(3600));
    let _handle = StoreHandle::start_with(&pool, store.clone(), slow)
        .await
        .unwrap();
    serve(&pool, 1, Outcome::Success);
    store.fail_next.store(1, Ordering::Release);
    let err = pool.shutdown().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "store `recording` could not write: disk on fire"
    );
    // Nothing was lost: the next shutdown writes it.
    pool.shutdown().await.unwrap();
    assert_eq!(stored_total(&store.inner, &pool), 1);
}
