//! [`RedisStore`]: one pool shared by gateway replicas on several hosts.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use super::{
    counters_from_array, counters_to_array, time, AccountWrite, CounterArray, CounterTotals, Store,
    StoreError, StoredAccount, COUNTERS, COUNTER_NAMES,
};
use crate::account::AccountId;
use crate::health::{HealthState, LastError, OutcomeClass};
use crate::pool::PersistedState;

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
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
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
        }
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
/// - `P:account:<id>`: a hash per account: `state`, `reason`, `until_ms`, `ejection_level`,
///   `model_cooldowns` (JSON, as in [`PersistedState`](crate::PersistedState)),
///   `consecutive_failures`, `last_used_ms`, `last_error_*`, and counters changed with `HINCRBY`
///   (increments, so replicas add up exactly);
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
    subscriber: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

fn redis_err(e: redis::RedisError) -> StoreError {
    // RedisError's text names the command and the server's answer, never the URL.
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisStore {
    /// Connects to Redis and subscribes to the pool's change channel.
    pub async fn open(config: RedisConfig) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| StoreError::Unavailable(format!("redis: invalid URL ({:?})", e.kind())))?;
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
        .map_err(|_| StoreError::Unavailable("redis: connection timed out".into()))?
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
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis: no answer within {} ms",
                self.inner.timeout.as_millis()
            ))),
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

/// Merges a process's model cooldowns (`ARGV[1]`, a JSON array; empty: a reset, which clears
/// them) into the account hash's `model_cooldowns` field: by model, the later deadline wins;
/// those ended by `ARGV[2]` (epoch ms) are dropped.
const MERGE_MODEL_COOLDOWNS: &str = r#"
local now = tonumber(ARGV[2])
if ARGV[1] == '' then
  redis.call('HDEL', KEYS[1], 'model_cooldowns')
  return 0
end
local merged, order = {}, {}
local function add(list)
  for _, c in ipairs(list) do
    local u = tonumber(c['until'])
    if type(c['model']) == 'string' and u and u > now then
      local kept = merged[c['model']]
      if not kept then
        table.insert(order, c['model'])
        merged[c['model']] = c
      elseif tonumber(kept['until']) < u then
        merged[c['model']] = c
      end
    end
  end
end
local stored = redis.call('HGET', KEYS[1], 'model_cooldowns')
if stored then
  local ok, list = pcall(cjson.decode, stored)
  if ok and type(list) == 'table' then add(list) end
end
add(cjson.decode(ARGV[1]))
if #order == 0 then
  redis.call('HDEL', KEYS[1], 'model_cooldowns')
  return 0
end
local parts = {}
for i, model in ipairs(order) do parts[i] = cjson.encode(merged[model]) end
redis.call('HSET', KEYS[1], 'model_cooldowns', '[' .. table.concat(parts, ',') .. ']')
return #order
"#;

fn state_of(h: &HashMap<String, String>) -> PersistedState {
    let int = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok());
    let text = |k: &str| h.get(k).filter(|v| !v.is_empty()).cloned();
    let when = |k: &str| int(k).map(time::from_epoch_ms);
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
            .and_then(|s| super::parse_state(&s))
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
            .map(|json| super::model_cooldowns_from_json(&json))
            .unwrap_or_default(),
    }
}

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
        let now_ms = time::epoch_ms(&SystemTime::now());
        let mut pipe = redis::pipe();
        pipe.atomic();
        for w in &batch {
            let id = w.id.as_str();
            let key = self.account_key(id);
            let s = &w.state;
            let delta = counters_to_array(&w.delta);
            for (field, d) in COUNTER_NAMES.iter().zip(delta) {
                pipe.hincr(&key, *field, d);
            }
            let mut fields: Vec<(&str, String)> = Vec::new();
            if let Some(t) = &s.last_used {
                fields.push(("last_used_ms", time::epoch_ms(t).to_string()));
            }
            if let Some(e) = &s.last_error {
                fields.push(("last_error_ms", time::epoch_ms(&e.at).to_string()));
                fields.push(("last_error_class", e.class.as_str().to_owned()));
                fields.push(("last_error_message", e.message.clone()));
            }
            if w.state_changed {
                let until = s.until.map(|t| time::epoch_ms(&t));
                fields.push(("state", s.state.as_str().to_owned()));
                fields.push(("reason", s.reason.clone().unwrap_or_default()));
                fields.push(("until_ms", until.map(|u| u.to_string()).unwrap_or_default()));
                fields.push(("ejection_level", s.ejection_level.to_string()));
                fields.push(("consecutive_failures", s.consecutive_failures.to_string()));
                let cooling = matches!(
                    s.state,
                    HealthState::RateLimited | HealthState::QuotaExhausted | HealthState::Ejected
                );
                match until.filter(|&u| cooling && u > now_ms) {
                    Some(u) => {
                        pipe.cmd("SET")
                            .arg(self.cooldown_key(id))
                            .arg(format!("{}:{u}", s.state.as_str()))
                            .arg("PX")
                            .arg(u - now_ms)
                            .ignore();
                    }
                    None => {
                        pipe.del(self.cooldown_key(id)).ignore();
                    }
                }
            }
            if !fields.is_empty() {
                pipe.hset_multiple(&key, &fields).ignore();
            }
            if w.models_changed {
                // Merged in Redis, so that two processes' cooldowns never overwrite each other.
                pipe.cmd("EVAL")
                    .arg(MERGE_MODEL_COOLDOWNS)
                    .arg(1)
                    .arg(&key)
                    .arg(super::model_cooldowns_to_json(&s.model_cooldowns).unwrap_or_default())
                    .arg(now_ms)
                    .ignore();
            }
            pipe.sadd(self.set_key(), id).ignore();
            if w.state_changed {
                pipe.publish(self.channel(), id).ignore();
            }
        }
        let mut conn = self.inner.conn.clone();
        let values: Vec<i64> = self.timed(pipe.query_async(&mut conn)).await?;
        if values.len() != batch.len() * COUNTERS {
            return Err(StoreError::Unavailable(format!(
                "redis: unexpected reply ({} values for {} accounts)",
                values.len(),
                batch.len()
            )));
        }
        Ok(batch
            .iter()
            .zip(values.chunks(COUNTERS))
            .map(|(w, v)| {
                let a: CounterArray = std::array::from_fn(|i| v[i].max(0) as u64);
                (w.id.clone(), counters_from_array(&a))
            })
            .collect())
    }

    async fn poll_changes(&self, ids: Vec<AccountId>) -> Result<Vec<StoredAccount>, StoreError> {
        let polls = self.inner.polls.fetch_add(1, Ordering::Relaxed);
        let sub = &self.inner.sub;
        let resync =
            sub.resync.swap(false, Ordering::AcqRel) || polls.is_multiple_of(FULL_SYNC_EVERY);
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
