//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use tower_account_pool::credential::NoCredential;
use tower_account_pool::{pool::PoolBuilder, Account, Pool, SelectRequest};

/// Accounts `a0`, `a1`, ... with no credential.
pub fn accounts(n: usize) -> Vec<Account> {
    (0..n)
        .map(|i| Account::new(format!("a{i}"), NoCredential))
        .collect()
}

/// A builder over `n` plain accounts.
pub fn builder(n: usize) -> PoolBuilder {
    Pool::builder().accounts(accounts(n))
}

/// Selects `times` times, reporting success each time, and counts the picks per account.
pub fn tally(pool: &Pool, request: &SelectRequest<'_>, times: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..times {
        let lease = pool.select(request).expect("an account");
        *counts.entry(lease.id().to_string()).or_default() += 1;
        lease.report(tower_account_pool::Outcome::Success);
    }
    counts
}

/// The ids picked by `times` selections (each reported successful).
pub fn picks(pool: &Pool, request: &SelectRequest<'_>, times: usize) -> Vec<String> {
    (0..times)
        .map(|_| {
            let lease = pool.select(request).expect("an account");
            let id = lease.id().to_string();
            lease.report(tower_account_pool::Outcome::Success);
            id
        })
        .collect()
}

/// Log lines captured in memory: what the current thread logs while a [`CaptureGuard`] lives.
///
/// One global subscriber serves every test of the binary and writes each event to the capture
/// of the thread that emitted it. Per-test scoped subscribers (`set_default`) raced with each
/// other in tracing's callsite-interest cache when tests ran in parallel in one binary, and a
/// test could miss its own lines; with one global subscriber whose filter is asked at every
/// event, nothing is cached.
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<(CapturedLogs, tracing::Level)>> =
        const { std::cell::RefCell::new(None) };
}

/// Stops the capture it started when dropped.
pub struct CaptureGuard(Option<(CapturedLogs, tracing::Level)>);

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        let previous = self.0.take();
        CAPTURE.with(|capture| *capture.borrow_mut() = previous);
    }
}

/// The writer of the global subscriber: the current thread's capture.
struct ThreadCapture;

impl std::io::Write for ThreadCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|capture| {
            if let Some((logs, _)) = capture.borrow().as_ref() {
                logs.0.lock().unwrap().extend_from_slice(bytes);
            }
        });
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn install_global_subscriber() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Dynamic: asked at every event, never cached per callsite.
        let capturing = tracing_subscriber::filter::dynamic_filter_fn(|metadata, _| {
            CAPTURE.with(|capture| {
                capture
                    .borrow()
                    .as_ref()
                    .is_some_and(|(_, level)| metadata.level() <= level)
            })
        });
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(|| ThreadCapture)
            .with_filter(capturing);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("no other global subscriber in the tests");
    });
}

impl CapturedLogs {
    /// Captures plain (uncoloured) lines of `level` and above that this thread logs, until the
    /// guard drops.
    #[must_use]
    pub fn start(&self, level: tracing::Level) -> CaptureGuard {
        install_global_subscriber();
        let previous = CAPTURE.with(|capture| capture.borrow_mut().replace((self.clone(), level)));
        CaptureGuard(previous)
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Runs `f` and returns what it logged at `INFO` and above.
pub fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    let logs = CapturedLogs::default();
    let result = {
        let _capture = logs.start(tracing::Level::INFO);
        f()
    };
    (result, logs.text())
}

/// A round-robin pool of accounts with these ids and no credential.
pub fn pool(ids: &[&str]) -> Pool {
    Pool::builder()
        .accounts(ids.iter().map(|id| Account::new(*id, NoCredential)))
        .build()
        .unwrap()
}

/// An account-wide rate limit of `secs` seconds.
pub fn rate_limited_for(secs: u64) -> tower_account_pool::Outcome {
    tower_account_pool::Outcome::RateLimited {
        retry_after: Some(std::time::Duration::from_secs(secs)),
        scope: tower_account_pool::health::RateLimitScope::Account,
    }
}

/// The older gateway's schema v1 (`src/sqlite-db.js@ec0199f`): its three tables and indexes,
/// no rows. The one copy the tests share, written from the older system's source.
pub const OLDER_V1_SCHEMA: &str = "
CREATE TABLE providers (
  id INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT UNIQUE NOT NULL, provider_type TEXT NOT NULL,
  config TEXT NOT NULL, is_healthy INTEGER DEFAULT 1, is_disabled INTEGER DEFAULT 0,
  error_count INTEGER DEFAULT 0, usage_count INTEGER DEFAULT 0, last_used TEXT,
  last_error_time TEXT, last_error_message TEXT, last_health_check_time TEXT,
  last_health_check_model TEXT, cached_email TEXT, cached_user_id TEXT, not_supported_models TEXT,
  created_at TEXT DEFAULT (datetime('now')), updated_at TEXT DEFAULT (datetime('now')));
CREATE TABLE usage_cache (
  id INTEGER PRIMARY KEY AUTOINCREMENT, provider_uuid TEXT NOT NULL, provider_type TEXT NOT NULL,
  usage_data TEXT NOT NULL, cached_at TEXT DEFAULT (datetime('now')), expires_at TEXT NOT NULL,
  UNIQUE(provider_uuid, provider_type));
CREATE TABLE health_check_history (
  id INTEGER PRIMARY KEY AUTOINCREMENT, provider_uuid TEXT NOT NULL, provider_type TEXT NOT NULL,
  is_healthy INTEGER NOT NULL, check_model TEXT, error_message TEXT,
  check_time TEXT DEFAULT (datetime('now')));
CREATE INDEX idx_providers_type ON providers(provider_type);
CREATE INDEX idx_providers_healthy ON providers(is_healthy, is_disabled);
CREATE INDEX idx_usage_cache_expires ON usage_cache(expires_at);
CREATE INDEX idx_health_history_uuid ON health_check_history(provider_uuid);
CREATE INDEX idx_providers_type_health ON providers(provider_type, is_healthy, is_disabled);
CREATE INDEX idx_usage_cache_type_expires ON usage_cache(provider_type, expires_at);
CREATE INDEX idx_health_history_time ON health_check_history(check_time);
";

/// The older gateway's schema v2 (`src/services/storage/sqlite-db.js@7b4d79c`): its three
/// tables and indexes and `PRAGMA user_version = 2`, no rows.
pub const OLDER_V2_SCHEMA: &str = "
CREATE TABLE accounts (
  id INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT UNIQUE NOT NULL, config TEXT NOT NULL,
  is_healthy INTEGER DEFAULT 1, is_disabled INTEGER DEFAULT 0, error_count INTEGER DEFAULT 0,
  usage_count INTEGER DEFAULT 0, last_used TEXT, last_error_time TEXT, last_error_message TEXT,
  last_health_check_time TEXT, last_health_check_model TEXT, cached_email TEXT, cached_user_id TEXT,
  not_supported_models TEXT, created_at TEXT DEFAULT (datetime('now')),
  updated_at TEXT DEFAULT (datetime('now')));
CREATE TABLE usage_cache (
  id INTEGER PRIMARY KEY AUTOINCREMENT, account_uuid TEXT NOT NULL, usage_data TEXT NOT NULL,
  cached_at TEXT DEFAULT (datetime('now')), expires_at TEXT NOT NULL, UNIQUE(account_uuid));
CREATE TABLE health_check_history (
  id INTEGER PRIMARY KEY AUTOINCREMENT, account_uuid TEXT NOT NULL, is_healthy INTEGER NOT NULL,
  check_model TEXT, error_message TEXT, check_time TEXT DEFAULT (datetime('now')));
CREATE INDEX idx_accounts_uuid ON accounts(uuid);
CREATE INDEX idx_accounts_healthy ON accounts(is_healthy, is_disabled);
CREATE INDEX idx_usage_cache_expires ON usage_cache(expires_at);
CREATE INDEX idx_health_history_uuid ON health_check_history(account_uuid);
CREATE INDEX idx_health_history_time ON health_check_history(check_time);
PRAGMA user_version = 2;
";

/// Deletes every Redis key under `prefix` (a test's own), at `url`.
#[cfg(feature = "redis")]
pub async fn delete_redis_keys(url: &str, prefix: &str) {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
