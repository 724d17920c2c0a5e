//! [`RedisStore`]: one pool shared by gateway replicas on several hosts.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use super::codec::{
    counters_from_array, counters_to_array, model_cooldowns_from_json, model_cooldowns_to_json,
    parse_state, CounterArray, COUNTER_NAMES,
};
use super::{AccountWrite, CounterTotals, Store, StoreError, StoreErrorKind, StoredAccount};
use crate::account::AccountId;
use crate::health::{HealthState, LastError, OutcomeClass};
use crate::pool::PersistedState;
use crate::time;

/// Every this many polls, all accounts are re-read (in case a notification was missed).
const FULL_SYNC_EVERY: u64 = 25;

/// Where the Redis store connects and how it names its keys. Its `Debug` output hides the
/// password of the URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`.
    pub url: String,
    /// Prefix of every key and channel: one per pool (replicas of one pool share it).
    pub prefix: String,
    /// Longest wait for one Redis operation before it counts as failed. Default 1 s.
    pub timeout: Duration,
    /// Every this many polls for changes, every account is read (in case a notification was
    /// missed); 1 reads every account on every poll. Default 25.
    pub full_sync_every: u64,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("full_sync_every", &self.full_sync_every)
            .finish()
    }
}

/// The URL with the password (anything between `:` and `@` of the authority) replaced.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<invalid url>".into();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl RedisConfig {
    /// A configuration with the default timeout.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: prefix.into(),
            timeout: Duration::from_secs(1),
            full_sync_every: FULL_SYNC_EVERY,
        }
    }

    /// Sets [`full_sync_every`](Self::full_sync_every) (at least 1).
    pub fn full_sync_every(mut self, polls: u64) -> Self {
        self.full_sync_every = polls.max(1);
        self
    }

    /// Sets [`timeout`](Self::timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Runtime state in Redis, shared by the replicas of one pool.
///
/// Keys (with `P` the [prefix](RedisConfig::prefix)):
///
/// - `P:account:<id>`: a hash per account: `state`, `reason`, `until_ms`, `since_ms`,
///   `ejection_level`, `model_cooldowns` (JSON, as in [`PersistedState`](crate::pool::PersistedState)),
///   `consecutive_failures`, `reset_ms`, `recovered_ms`, `enabled`, `enabled_at_ms`,
///   `last_used_ms`, `last_error_*`, the counters, and a version `ver`. A write reads the hash,
///   merges (see the [merge rules](super#writes-merge-never-overwrite), counters as
///   increments) and writes it back with a compare-and-set on `ver` (a script); when another
///   replica wrote in between, it reads and merges again, so replicas never erase each other's
///   state and counters add up exactly;
/// - `P:cooldown:<id>`: the account's cooldown or ejection, a key expiring when it ends;
/// - `P:accounts`: the set of account ids;
/// - channel `P:changes`: each replica publishes the ids whose state it changed; the others
///   re-read those accounts on their next poll (every 200 ms by default), so a cooldown set on
///   one replica is honoured by the others within about a second.
///
/// If Redis goes away, requests are served from local state as before; writes fail, are kept
/// and retried. The connection is re-established by itself; once it is, the kept increments
/// and state are written and every account is re-read (reconciled).
///
/// [`open`](Self::open) fails if Redis cannot be reached at start; after that an outage only
/// delays writes. Passwords in the URL never appear in errors, logs or `Debug` output.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    /// Shared with the subscriber task.
    sub: Arc<SubscriberState>,
    polls: AtomicU64,
    full_sync_every: u64,
    subscriber: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

fn redis_err(e: redis::RedisError) -> StoreError {
    // RedisError's text names the command and the server's answer, never the URL.
    StoreError::new(StoreErrorKind::Unavailable, format!("redis: {e}")).with_source(e)
}

impl RedisStore {
    /// Connects to Redis and subscribes to the pool's change channel.
    pub async fn open(config: RedisConfig) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            // Only the kind: the parse error may quote the URL (and its password).
            let message = format!("redis: invalid URL ({:?})", e.kind());
            StoreError::new(StoreErrorKind::Unavailable, message)
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(config.timeout)
            .set_response_timeout(config.timeout)
            .set_number_of_retries(1)
            .set_max_delay(500);
        let conn = tokio::time::timeout(
            config.timeout.saturating_mul(3),
            ConnectionManager::new_with_config(client.clone(), manager_config),
        )
        .await
        .map_err(|_| StoreError::new(StoreErrorKind::Unavailable, "redis: connection timed out"))?
        .map_err(redis_err)?;
        let shared = Arc::new(SubscriberState {
            changed: Mutex::new(HashSet::new()),
            resync: AtomicBool::new(true),
        });
        let channel = format!("{}:changes", config.prefix);
        let subscriber = tokio::spawn(subscribe_forever(
            client,
            channel,
            config.timeout,
            Arc::downgrade(&shared),
        ));
        let inner = Inner {
            conn,
            prefix: config.prefix,
            timeout: config.timeout,
            sub: shared,
            polls: AtomicU64::new(0),
            full_sync_every: config.full_sync_every.max(1),
            subscriber,
        };
        Ok(RedisStore {
            inner: Arc::new(inner),
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    fn account_key(&self, id: &str) -> String {
        format!("{}:account:{id}", self.inner.prefix)
    }

    fn cooldown_key(&self, id: &str) -> String {
        format!("{}:cooldown:{id}", self.inner.prefix)
    }

    fn set_key(&self) -> String {
        format!("{}:accounts", self.inner.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:changes", self.inner.prefix)
    }

    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.inner.timeout, fut).await {
            Ok(result) => result.map_err(redis_err),
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!(
                    "redis: no answer within {} ms",
                    self.inner.timeout.as_millis()
                ),
            )),
        }
    }

    async fn read_accounts(&self, ids: &[String]) -> Result<Vec<StoredAccount>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(self.account_key(id));
        }
        let mut conn = self.inner.conn.clone();
        let hashes: Vec<HashMap<String, String>> = self.timed(pipe.query_async(&mut conn)).await?;
        Ok(ids
            .iter()
            .zip(hashes)
            .filter(|(_, h)| !h.is_empty())
            .map(|(id, h)| StoredAccount {
                id: AccountId::new(id),
                state: state_of(&h),
            })
            .collect())
    }
}

/// What the subscriber task shares with the store (kept apart so the task holds no strong
/// reference to the store and ends with it).
struct SubscriberState {
    /// Ids announced on the channel since the last poll.
    changed: Mutex<HashSet<String>>,
    /// Re-read everything on the next poll (start, resubscription, errors).
    resync: AtomicBool,
}

async fn subscribe_forever(
    client: redis::Client,
    channel: String,
    timeout: Duration,
    state: std::sync::Weak<SubscriberState>,
) {
    loop {
        let connected = tokio::time::timeout(timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        if let Ok(Ok(mut pubsub)) = connected {
            match state.upgrade() {
                // Anything may have changed while we were not listening.
                Some(s) => s.resync.store(true, Ordering::Release),
                None => return,
            }
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let Some(s) = state.upgrade() else { return };
                if let Ok(id) = message.get_payload::<String>() {
                    s.changed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id);
                }
            }
            tracing::warn!(channel, "redis: change subscription lost; reconnecting");
        }
        if state.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn state_of(h: &HashMap<String, String>) -> PersistedState {
    let int = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok());
    let text = |k: &str| h.get(k).filter(|v| !v.is_empty()).cloned();
    let when = |k: &str| int(k).map(time::from_millis);
    let event = |k: &str| int(k).filter(|&v| v > 0).map(time::from_millis);
    let counters: CounterArray = std::array::from_fn(|i| int(COUNTER_NAMES[i]).unwrap_or(0));
    let last_error = match (when("last_error_ms"), text("last_error_message")) {
        (Some(at), Some(message)) => Some(LastError {
            at,
            class: text("last_error_class")
                .and_then(|c| OutcomeClass::ALL.iter().copied().find(|x| x.as_str() == c))
                .unwrap_or(OutcomeClass::Transient),
            message,
        }),
        _ => None,
    };
    PersistedState {
        state: text("state")
            .and_then(|s| parse_state(&s))
            .unwrap_or(HealthState::Healthy),
        reason: text("reason"),
        until: when("until_ms"),
        consecutive_failures: int("consecutive_failures")
            .unwrap_or(0)
            .min(u32::MAX as u64) as u32,
        ejection_level: int("ejection_level").unwrap_or(0).min(u32::MAX as u64) as u32,
        counters: counters_from_array(&counters),
        last_used: when("last_used_ms"),
        last_error,
        model_cooldowns: text("model_cooldowns")
            .map(|json| model_cooldowns_from_json(&json))
            .unwrap_or_default(),
        since: event("since_ms"),
        reset_at: event("reset_ms"),
        recovered_at: event("recovered_ms"),
        enabled: text("enabled").map(|v| v == "1"),
        enabled_at: event("enabled_at_ms"),
    }
}

/// The hash fields of a merged record (an empty value: the field is deleted).
fn fields_of(s: &PersistedState) -> Vec<(&'static str, String)> {
    let ms = |t: &Option<SystemTime>| {
        t.as_ref()
            .map(|t| time::millis(t).to_string())
            .unwrap_or_default()
    };
    let mut fields = vec![
        ("state", s.state.as_str().to_owned()),
        ("reason", s.reason.clone().unwrap_or_default()),
        ("until_ms", ms(&s.until)),
        ("ejection_level", s.ejection_level.to_string()),
        ("consecutive_failures", s.consecutive_failures.to_string()),
        ("last_used_ms", ms(&s.last_used)),
        (
            "model_cooldowns",
            model_cooldowns_to_json(&s.model_cooldowns).unwrap_or_default(),
        ),
        ("since_ms", ms(&s.since)),
        ("reset_ms", ms(&s.reset_at)),
        ("recovered_ms", ms(&s.recovered_at)),
        (
            "enabled",
            s.enabled
                .map(|e| if e { "1" } else { "0" }.to_owned())
                .unwrap_or_default(),
        ),
        ("enabled_at_ms", ms(&s.enabled_at)),
    ];
    if let Some(e) = &s.last_error {
        fields.push(("last_error_ms", time::millis(&e.at).to_string()));
        fields.push(("last_error_class", e.class.as_str().to_owned()));
        fields.push(("last_error_message", e.message.clone()));
    }
    let counters = counters_to_array(&s.counters);
    for (name, value) in COUNTER_NAMES.iter().zip(counters) {
        fields.push((name, value.to_string()));
    }
    fields
}

/// Compare-and-set of one account's hash: written only if its `ver` is still `ARGV[1]` (else
/// `0` is returned and the caller reads, merges and tries again). `ARGV[2]`/`ARGV[3]`: the
/// cooldown key's value and time to live in ms (empty: no cooldown); `ARGV[4]`: the account
/// id, `ARGV[5]`: the change channel; then field/value pairs (an empty value deletes).
const COMPARE_AND_SET: &str = r#"
local ver = redis.call('HGET', KEYS[1], 'ver') or '0'
if ver ~= ARGV[1] then return 0 end
redis.call('HINCRBY', KEYS[1], 'ver', 1)
for i = 6, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[4])
return 1
"#;

impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn load(&self) -> Result<Vec<StoredAccount>, StoreError> {
        let mut conn = self.inner.conn.clone();
        let ids: Vec<String> = self.timed(conn.smembers(self.set_key())).await?;
        self.read_accounts(&ids).await
    }

    async fn write(&self, batch: Vec<AccountWrite>) -> Result<CounterTotals, StoreError> {
        let mut totals = Vec::with_capacity(batch.len());
        let mut todo: Vec<&AccountWrite> = batch.iter().collect();
        for _attempt in 0..16 {
            if todo.is_empty() {
                break;
            }
            // Read every account of the batch at once, merge here, then compare-and-set them
            // at once; those another replica changed meanwhile are read and merged again.
            let mut read = redis::pipe();
            for w in &todo {
                read.hgetall(self.account_key(w.id.as_str()));
            }
            let mut conn = self.inner.conn.clone();
            let hashes: Vec<HashMap<String, String>> =
                self.timed(read.query_async(&mut conn)).await?;
            let now = SystemTime::now();
            let now_ms = time::millis(&now);
            let mut cas = redis::pipe();
            let mut merged = Vec::with_capacity(todo.len());
            for (w, hash) in todo.iter().zip(&hashes) {
                let id = w.id.as_str();
                let ver = hash.get("ver").cloned().unwrap_or_else(|| "0".into());
                let mut state = state_of(hash);
                super::merge::merge(&mut state, w, now);
                let cooling = super::merge::is_cooldown(state.state)
                    && super::merge::deadline(&state) > now_ms;
                let (cooldown, ttl) = match super::merge::deadline(&state) {
                    _ if !cooling => (String::new(), String::new()),
                    u64::MAX => (state.state.as_str().to_owned(), "2592000000".to_owned()),
                    until => (
                        format!("{}:{until}", state.state.as_str()),
                        (until - now_ms).to_string(),
                    ),
                };
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(COMPARE_AND_SET)
                    .arg(3)
                    .arg(self.account_key(id))
                    .arg(self.cooldown_key(id))
                    .arg(self.set_key())
                    .arg(ver)
                    .arg(cooldown)
                    .arg(ttl)
                    .arg(id)
                    .arg(self.channel());
                for (field, value) in fields_of(&state) {
                    cmd.arg(field).arg(value);
                }
                cas.add_command(cmd);
                merged.push(state);
            }
            let mut conn = self.inner.conn.clone();
            let results: Vec<i64> = self.timed(cas.query_async(&mut conn)).await?;
            let mut again = Vec::new();
            for ((w, state), ok) in todo.iter().zip(merged).zip(results) {
                if ok == 1 {
                    totals.push((w.id.clone(), state.counters));
                } else {
                    again.push(*w);
                }
            }
            todo = again;
        }
        if !todo.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!(
                    "redis: {} accounts changed by other replicas on every attempt; retried later",
                    todo.len()
                ),
            ));
        }
        Ok(totals)
    }

    async fn poll_changes(&self, ids: Vec<AccountId>) -> Result<Vec<StoredAccount>, StoreError> {
        let polls = self.inner.polls.fetch_add(1, Ordering::Relaxed);
        let sub = &self.inner.sub;
        let resync = sub.resync.swap(false, Ordering::AcqRel)
            || polls.is_multiple_of(self.inner.full_sync_every);
        let changed: HashSet<String> =
            std::mem::take(&mut *sub.changed.lock().unwrap_or_else(|e| e.into_inner()));
        let wanted: Vec<String> = if resync {
            ids.iter().map(|id| id.as_str().to_owned()).collect()
        } else {
            ids.iter()
                .filter(|id| changed.contains(id.as_str()))
                .map(|id| id.as_str().to_owned())
                .collect()
        };
        match self.read_accounts(&wanted).await {
            Ok(accounts) => Ok(accounts),
            Err(e) => {
                // Read everything once Redis answers again.
                sub.resync.store(true, Ordering::Release);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let config = RedisConfig::new("redis://user:s3cret-pass@10.0.0.5:6380/2", "pool");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret-pass"), "{shown}");
        assert!(
            shown.contains("redis://user:***@10.0.0.5:6380/2"),
            "{shown}"
        );
        assert_eq!(
            redact_url("redis://:pw@localhost:6379"),
            "redis://:***@localhost:6379"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
