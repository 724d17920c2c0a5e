//! A deterministic simulation of the shared stores (issue 12): three replicas over one SQLite
//! file (and one Redis prefix, when `REDIS_URL` is set), driven by seeded random schedules of
//! reports of every outcome, active probes, operator disables, enables and resets, replica
//! restarts and store outages.
//!
//! The writers run with hour-long timers and are driven by explicit `flush` and `sync` calls
//! (a "sync round": every replica flushes, then every replica applies what the others wrote),
//! which stands in for the writer's timers (a change is written within 20 ms and read by the
//! others within 200 ms by default, so the replicas agree within a second). Cooldowns are
//! minutes long, so none ends during a run: the result depends on the seed only.
//!
//! Invariants, on every replica and in the store, after every step (during an outage: once the
//! store is back) and at quiescence:
//! - a cooldown set by any replica (account-wide or per model) holds on every replica and in
//!   the store until a newer explicit reset (credential states stay local: an account in one
//!   on a replica is not compared there);
//! - an operator's disable or enable holds on every replica and in the store until the
//!   operator changes it again (automatic state never undoes it);
//! - the counters in the store, and on every replica, sum exactly to the reports made;
//! - all replicas agree after each sync round.
//!
//! `TAP_SIM_SEEDS=N` runs N seeds (default 200); `TAP_SIM_SEED=S` replays one. A failing seed
//! prints itself and the step that broke an invariant.
#![cfg(feature = "sqlite")]

use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tower_account_pool::credential::NoCredential;
use tower_account_pool::store::{
    AccountWrite, CounterTotals, SqliteStore, Store, StoreError, StoreErrorKind, StoreHandle,
    StoredAccount, WriterConfig,
};
use tower_account_pool::{
    health::HealthPolicy, health::OutcomeClass, health::RateLimitScope, pool::AccountSnapshot,
    Account, AccountId, HealthState, Outcome, Pool, SelectRequest,
};

const REPLICAS: usize = 3;
const ACCOUNTS: [&str; 4] = ["a0", "a1", "a2", "a3"];
const MODELS: [&str; 2] = ["m1", "m2"];
/// Deadlines compared across replicas are converted between clocks: this much apart is equal.
const SLACK_MS: u64 = 1_000;

/// A store that can be taken down: every call fails while it is.
#[derive(Clone)]
struct Flaky<S> {
    inner: S,
    down: Arc<AtomicBool>,
}

impl<S: Store + Clone> Flaky<S> {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::Acquire) {
            Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "simulated outage",
            ))
        } else {
            Ok(())
        }
    }
}

impl<S: Store + Clone> Store for Flaky<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn load(&self) -> Result<Vec<StoredAccount>, StoreError> {
        self.check()?;
        self.inner.load().await
    }

    async fn write(&self, batch: Vec<AccountWrite>) -> Result<CounterTotals, StoreError> {
        self.check()?;
        self.inner.write(batch).await
    }

    async fn poll_changes(&self, ids: Vec<AccountId>) -> Result<Vec<StoredAccount>, StoreError> {
        self.check()?;
        self.inner.poll_changes(ids).await
    }
}

fn policy() -> HealthPolicy {
    HealthPolicy::default()
        .with_rate_limit_base(Duration::from_secs(600))
        .with_rate_limit_max(Duration::from_secs(7200))
        .with_quota_base(Duration::from_secs(3600))
        .with_ejection_base(Duration::from_secs(600))
        .with_ejection_max(Duration::from_secs(3600))
        .with_jitter(0.0)
        .with_panic_threshold(0)
}

fn new_pool() -> Pool {
    Pool::builder()
        .accounts(ACCOUNTS.iter().map(|id| Account::new(*id, NoCredential)))
        .health(policy())
        .build()
        .unwrap()
}

fn manual() -> WriterConfig {
    let hour = Duration::from_secs(3600);
    WriterConfig::default()
        .interval(hour)
        .coalesce(hour)
        .sync_interval(hour)
        .maintenance_interval(hour)
        .max_backoff(hour)
        .shutdown_attempts(1)
}

/// The deadline of an account's account-wide cooldown (`u64::MAX`: suspended).
fn cooldown_of(account: &AccountSnapshot) -> Option<u64> {
    match account.underlying_state {
        HealthState::Suspended => Some(u64::MAX),
        HealthState::RateLimited | HealthState::QuotaExhausted | HealthState::Ejected => {
            account.next_retry_at.map(wall_ms)
        }
        _ => None,
    }
}

fn wall_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What must hold, from the events made so far.
impl Expected {
    fn cooldown(&self) -> Option<(HealthState, u64)> {
        self.cooldowns.iter().copied().max_by_key(|(_, d)| *d)
    }
}

#[derive(Debug, Default, Clone)]
struct Expected {
    /// The account-wide cooldowns set since the last reset (deadline `u64::MAX`: suspended);
    /// the one with the latest deadline must hold.
    cooldowns: Vec<(HealthState, u64)>,
    models: BTreeMap<String, u64>,
    disabled: bool,
    counters: [u64; 10],
}

trait Opener: Send + Sync {
    type S: Store + Clone;
    fn open(&self) -> impl std::future::Future<Output = Self::S> + Send;
}

struct SqliteOpener(std::path::PathBuf);

impl Opener for SqliteOpener {
    type S = SqliteStore;
    async fn open(&self) -> SqliteStore {
        SqliteStore::open(&self.0).unwrap()
    }
}

#[cfg(feature = "redis")]
struct RedisOpener(String, String);

#[cfg(feature = "redis")]
impl Opener for RedisOpener {
    type S = tower_account_pool::store::RedisStore;
    async fn open(&self) -> Self::S {
        use tower_account_pool::store::{RedisConfig, RedisStore};
        RedisStore::open(RedisConfig::new(self.0.clone(), self.1.clone()).full_sync_every(1))
            .await
            .unwrap()
    }
}

struct Replica {
    pool: Pool,
    handle: Option<StoreHandle>,
}

struct Sim<O: Opener> {
    opener: O,
    /// A connection of its own to the store, to look at what it holds.
    observer: O::S,
    down: Arc<AtomicBool>,
    replicas: Vec<Replica>,
    expected: HashMap<&'static str, Expected>,
    log: Vec<String>,
}

impl<O: Opener> Sim<O> {
    async fn start_replica(&self, pool: &Pool) -> StoreHandle {
        let store = Flaky {
            inner: self.opener.open().await,
            down: self.down.clone(),
        };
        StoreHandle::start_with(pool, store, manual())
            .await
            .unwrap()
    }

    async fn round(&self) {
        for r in &self.replicas {
            let _ = r.handle.as_ref().unwrap().flush().await;
        }
        for r in &self.replicas {
            let _ = r.handle.as_ref().unwrap().sync().await;
        }
    }

    /// Records the cooldowns a report on `r` set on `id` (`before`: the account just before
    /// it). What the replica held already is not new: it may be stale during an outage.
    fn observe(&mut self, r: usize, id: &'static str, before: &AccountSnapshot) {
        let snapshot = self.replicas[r].pool.snapshot();
        let account = snapshot.account(id).unwrap();
        let expected = self.expected.get_mut(id).unwrap();
        let state = account.underlying_state;
        let deadline = cooldown_of(account);
        if let Some(d) = deadline {
            // Deadlines are converted between clocks at each snapshot: within the slack is the
            // same deadline.
            let new = before.underlying_state != state
                || cooldown_of(before).is_none_or(|b| d > b.saturating_add(SLACK_MS));
            if new {
                expected.cooldowns.push((state, d));
            }
        }
        for c in &account.model_cooldowns {
            let until = c.until.map_or(0, wall_ms);
            let old = before
                .model_cooldowns
                .iter()
                .find(|b| b.model == c.model)
                .and_then(|b| b.until)
                .map(wall_ms);
            if old.is_none_or(|o| until > o.saturating_add(SLACK_MS)) {
                let e = expected.models.entry(c.model.clone()).or_default();
                *e = (*e).max(until);
            }
        }
    }

    fn check(&self, what: &str, replicas: &[usize]) -> Result<(), String> {
        let now = wall_ms(SystemTime::now());
        for &r in replicas {
            let snapshot = self.replicas[r].pool.snapshot();
            for id in ACCOUNTS {
                let expected = &self.expected[id];
                let account = snapshot.account(id).unwrap();
                if account.settings.enabled == expected.disabled {
                    return Err(format!(
                        "{what}: replica {r}, {id}: enabled = {}, the operator's last word was {}",
                        account.settings.enabled,
                        if expected.disabled {
                            "disable"
                        } else {
                            "enable"
                        }
                    ));
                }
                let state = account.underlying_state;
                if matches!(state, HealthState::AuthExpired | HealthState::AuthInvalid) {
                    continue; // credential states stay local
                }
                let local = match state {
                    HealthState::Suspended => Some(u64::MAX),
                    HealthState::RateLimited
                    | HealthState::QuotaExhausted
                    | HealthState::Ejected => account.next_retry_at.map(wall_ms),
                    _ => None,
                };
                match (expected.cooldown(), local) {
                    (Some((kind, want)), Some(have)) if have.saturating_add(SLACK_MS) >= want => {
                        let _ = kind;
                    }
                    (Some((kind, want)), have) => {
                        return Err(format!(
                            "{what}: replica {r}, {id}: expected {kind} until {want}, found {state} until {have:?} (now {now})"
                        ))
                    }
                    (None, Some(have)) => {
                        return Err(format!(
                            "{what}: replica {r}, {id}: {state} until {have} that no report set since the last reset"
                        ))
                    }
                    (None, None) => {}
                }
                for (model, &until) in &expected.models {
                    let have = account
                        .model_cooldowns
                        .iter()
                        .find(|c| &c.model == model)
                        .and_then(|c| c.until)
                        .map(wall_ms);
                    if have.is_none_or(|h| h.saturating_add(SLACK_MS) < until) {
                        return Err(format!(
                            "{what}: replica {r}, {id}: model {model} cooling until {until} expected, found {have:?}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    async fn check_store(&self, what: &str) -> Result<(), String> {
        let stored = self.observer.load().await.unwrap();
        let now = wall_ms(SystemTime::now());
        for id in ACCOUNTS {
            let expected = &self.expected[id];
            let Some(s) = stored.iter().find(|s| s.id.as_str() == id) else {
                return Err(format!("{what}: the store lost {id}"));
            };
            let s = &s.state;
            let active = match s.state {
                HealthState::Suspended => Some(u64::MAX),
                HealthState::RateLimited | HealthState::QuotaExhausted | HealthState::Ejected => {
                    s.until.map(wall_ms).filter(|&u| u > now)
                }
                _ => None,
            };
            if let Some((kind, want)) = expected.cooldown() {
                if active.is_none_or(|have| have.saturating_add(SLACK_MS) < want) {
                    return Err(format!(
                        "{what}: store, {id}: expected {kind} until {want}, found {} until {active:?}",
                        s.state
                    ));
                }
            }
            if let Some(enabled) = s.enabled {
                if enabled == expected.disabled {
                    return Err(format!("{what}: store, {id}: enabled = {enabled}"));
                }
            } else if expected.disabled {
                return Err(format!(
                    "{what}: store, {id}: the operator's disable is missing"
                ));
            }
            let mut counts = [0u64; 10];
            for (i, class) in OutcomeClass::ALL.iter().enumerate() {
                counts[i] = s.counters.outcome(*class);
            }
            if counts != expected.counters {
                return Err(format!(
                    "{what}: store, {id}: counters {counts:?}, reports made {:?}",
                    expected.counters
                ));
            }
            if s.counters.requests != expected.counters.iter().sum::<u64>() {
                return Err(format!(
                    "{what}: store, {id}: requests {}",
                    s.counters.requests
                ));
            }
        }
        Ok(())
    }

    fn check_local_counters(&self, what: &str) -> Result<(), String> {
        for (r, replica) in self.replicas.iter().enumerate() {
            let snapshot = replica.pool.snapshot();
            for id in ACCOUNTS {
                let account = snapshot.account(id).unwrap();
                let mut counts = [0u64; 10];
                for (i, class) in OutcomeClass::ALL.iter().enumerate() {
                    counts[i] = account.counters.outcome(*class);
                }
                if counts != self.expected[id].counters {
                    return Err(format!(
                        "{what}: replica {r}, {id}: counters {counts:?}, reports made {:?}",
                        self.expected[id].counters
                    ));
                }
            }
        }
        Ok(())
    }
}

fn outcome(rng: &mut fastrand::Rng) -> (Outcome, bool) {
    let now = SystemTime::now();
    let secs = |rng: &mut fastrand::Rng| Duration::from_secs(rng.u64(60..600));
    match rng.u32(0..12) {
        0..=2 => (Outcome::Success, false),
        3 => (Outcome::ClientError, false),
        4 => (Outcome::Cancelled, false),
        5 => (
            Outcome::RateLimited {
                retry_after: Some(secs(rng)),
                scope: RateLimitScope::Account,
            },
            false,
        ),
        6 => (
            Outcome::RateLimited {
                retry_after: Some(secs(rng)),
                scope: RateLimitScope::Model,
            },
            true,
        ),
        7 => (
            Outcome::QuotaExhausted {
                reset_at: Some(now + Duration::from_secs(rng.u64(3600..7200))),
            },
            false,
        ),
        8 => (Outcome::Suspended, false),
        9 => (Outcome::ModelUnsupported, true),
        10 => (
            if rng.bool() {
                Outcome::AuthExpired
            } else {
                Outcome::AuthInvalid
            },
            false,
        ),
        _ => (Outcome::Transient, false),
    }
}

async fn run_seed<O: Opener>(seed: u64, opener: O, outages: bool) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let observer = opener.open().await;
    let mut sim = Sim {
        opener,
        observer,
        down: Arc::new(AtomicBool::new(false)),
        replicas: Vec::new(),
        expected: ACCOUNTS
            .iter()
            .map(|id| (*id, Expected::default()))
            .collect(),
        log: Vec::new(),
    };
    for _ in 0..REPLICAS {
        let pool = new_pool();
        let handle = sim.start_replica(&pool).await;
        sim.replicas.push(Replica {
            pool,
            handle: Some(handle),
        });
    }
    let steps = rng.usize(30..60);
    let mut outage_left = 0usize;
    for step in 0..steps {
        let r = rng.usize(0..REPLICAS);
        let id = ACCOUNTS[rng.usize(0..ACCOUNTS.len())];
        let action = rng.u32(0..100);
        let description = match action {
            0..=54 => {
                let (outcome, with_model) = outcome(&mut rng);
                let model = MODELS[rng.usize(0..MODELS.len())];
                let request = if with_model || rng.bool() {
                    SelectRequest::for_model(model)
                } else {
                    SelectRequest::default()
                };
                match sim.replicas[r].pool.select(&request) {
                    Ok(lease) => {
                        let before = sim.replicas[r]
                            .pool
                            .snapshot()
                            .account(lease.id().as_str())
                            .unwrap()
                            .clone();
                        let picked: &'static str = ACCOUNTS
                            .iter()
                            .find(|a| **a == lease.id().as_str())
                            .unwrap();
                        let class = outcome.class();
                        if outcome == Outcome::Cancelled {
                            drop(lease);
                        } else {
                            lease.report(outcome);
                        }
                        let i = OutcomeClass::ALL.iter().position(|c| *c == class).unwrap();
                        sim.expected.get_mut(picked).unwrap().counters[i] += 1;
                        // A credential refresh scheduled by the report runs now.
                        for _ in 0..4 {
                            tokio::task::yield_now().await;
                        }
                        sim.observe(r, picked, &before);
                        format!("replica {r}: {picked} ({request:?}) -> {class:?}")
                    }
                    Err(_) => format!("replica {r}: nothing available for {request:?}"),
                }
            }
            55..=59 => {
                // An active probe's result (not a request: no counter changes).
                let (outcome, _) = outcome(&mut rng);
                let outcome = if rng.bool() {
                    Outcome::Success
                } else {
                    outcome
                };
                let pool = &sim.replicas[r].pool;
                let before = pool.snapshot().account(id).unwrap().clone();
                pool.report_probe(id, outcome).unwrap();
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
                let after = pool.snapshot().account(id).unwrap().clone();
                if outcome == Outcome::Success
                    && before.underlying_state != HealthState::Healthy
                    && after.underlying_state == HealthState::Healthy
                {
                    // It ended the account's cooldown (an account holds one at a time): every
                    // account-wide cooldown set before it is over.
                    sim.expected.get_mut(id).unwrap().cooldowns.clear();
                }
                sim.observe(r, id, &before);
                format!("replica {r}: probe of {id} -> {:?}", outcome.class())
            }
            60..=69 => {
                sim.replicas[r].pool.disable(id).unwrap();
                sim.expected.get_mut(id).unwrap().disabled = true;
                format!("replica {r}: operator disables {id}")
            }
            70..=79 => {
                sim.replicas[r].pool.enable(id).unwrap();
                sim.expected.get_mut(id).unwrap().disabled = false;
                format!("replica {r}: operator enables {id}")
            }
            80..=89 => {
                sim.replicas[r].pool.reset(id).unwrap();
                let e = sim.expected.get_mut(id).unwrap();
                e.cooldowns.clear();
                e.models.clear();
                format!("replica {r}: operator resets {id}")
            }
            90..=95 if outage_left == 0 => {
                let replica = &mut sim.replicas[r];
                replica.handle.take().unwrap().shutdown().await.unwrap();
                replica.pool = new_pool();
                let handle = sim.start_replica(&sim.replicas[r].pool).await;
                sim.replicas[r].handle = Some(handle);
                format!("replica {r}: restarts")
            }
            _ if outages && outage_left == 0 => {
                outage_left = rng.usize(1..6);
                sim.down.store(true, Ordering::Release);
                format!("the store goes down for {outage_left} steps")
            }
            _ => "nothing".to_owned(),
        };
        sim.log.push(format!("step {step}: {description}"));
        if outage_left > 0 {
            outage_left -= 1;
            if outage_left == 0 {
                sim.down.store(false, Ordering::Release);
                sim.log.push(format!("step {step}: the store is back"));
            } else {
                // Replicas keep serving from local state (they cannot learn each other's
                // changes meanwhile); writes fail, are kept, and are made once it is back.
                sim.round().await;
                continue;
            }
        }
        sim.round().await;
        let all: Vec<usize> = (0..REPLICAS).collect();
        let what = format!("step {step}");
        let mut result = sim.check(&what, &all);
        if result.is_ok() {
            result = sim.check_store(&what).await;
        }
        result.map_err(|e| e + &format!("\n{}", sim.log.join("\n")))?;
    }
    sim.down.store(false, Ordering::Release);
    // Quiescence.
    sim.round().await;
    sim.round().await;
    let all: Vec<usize> = (0..REPLICAS).collect();
    let with_log = |e: String| e + &format!("\n{}", sim.log.join("\n"));
    sim.check("quiescence", &all).map_err(with_log)?;
    sim.check_store("quiescence").await.map_err(with_log)?;
    sim.check_local_counters("quiescence").map_err(with_log)?;
    for replica in &mut sim.replicas {
        replica.handle.take().unwrap().shutdown().await.unwrap();
    }
    Ok(())
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("TAP_SIM_SEED") {
        return vec![seed.parse().expect("TAP_SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("TAP_SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    (0..n).collect()
}

fn fail(store: &str, seed: u64, error: String) -> ! {
    panic!(
        "{store} simulation failed for seed {seed}; replay with \
         TAP_SIM_SEED={seed} cargo test --all-features --test store_simulation\n{error}"
    )
}

#[tokio::test(flavor = "current_thread")]
async fn three_replicas_over_one_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    for seed in seeds() {
        let path = dir.path().join(format!("sim-{seed}.db"));
        if let Err(e) = run_seed(seed, SqliteOpener(path.clone()), true).await {
            fail("sqlite", seed, e);
        }
        remove_db(&path);
    }
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "current_thread")]
async fn three_replicas_over_one_redis_prefix_with_outages() {
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("skipped: REDIS_URL not set");
        return;
    };
    let run = format!("tap-sim:{}:{}", std::process::id(), fastrand::u64(..));
    for seed in seeds() {
        let prefix = format!("{run}:{seed}");
        let result = run_seed(seed, RedisOpener(url.clone(), prefix.clone()), true).await;
        support::delete_redis_keys(&url, &prefix).await;
        if let Err(e) = result {
            fail("redis", seed, e);
        }
    }
}
