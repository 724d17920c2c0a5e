//! Persistence: a [`Store`] trait and the background writer that keeps a pool's runtime state
//! in it.
//!
//! ```
//! use tower_account_pool::{Account, Outcome, Pool, SelectRequest};
//! use tower_account_pool::credential::NoCredential;
//! use tower_account_pool::store::{MemoryStore, StoreHandle};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::builder().account(Account::new("acct-1", NoCredential)).build()?;
//! let store = MemoryStore::new();
//! // Restores what the store holds, then writes changes in the background.
//! let handle = StoreHandle::start(&pool, store.clone()).await?;
//!
//! let lease = pool.select(&SelectRequest::default())?;
//! lease.report(Outcome::Success); // no I/O here: the writer picks it up
//!
//! handle.shutdown().await?; // flushes everything
//! assert_eq!(store.get("acct-1").unwrap().counters.successes, 1);
//! # Ok(()) }
//! ```
//!
//! # How state leaves the request path
//!
//! Selection and reports only touch the accounts' atomics, as without a store. The writer task
//! reads them on its own schedule:
//!
//! - **state changes** (rate limits, ejections, recoveries, ...) arrive through the pool's
//!   bounded, non-blocking event channel ([`Pool::subscribe`](crate::pool::Pool::subscribe))
//!   and wake the writer, which writes them within [`WriterConfig::coalesce`] (a lagging
//!   receiver just means "something changed");
//! - **counters** and every other field are compared with what was last written, every
//!   [`WriterConfig::interval`] (at most 1 s by default). The tick is never pushed back by
//!   traffic, so it is also the max-wait: steady traffic cannot starve a save;
//! - only accounts that changed are written, in batches of at most [`WriterConfig::max_batch`].
//!
//! A write that fails is logged (each distinct error once) and retried with backoff (capped at
//! [`WriterConfig::max_backoff`]); nothing is lost meanwhile, and requests never wait for the
//! store. [`StoreHandle::shutdown`] flushes everything.
//!
//! # Writes merge, never overwrite
//!
//! A process writes only what it changed since it last wrote or synced, with the time of each
//! event, and the store **merges** it with what it holds (in one atomic step: a mutex for the
//! memory and JSON stores, a transaction for SQLite, a compare-and-set for Redis), by the same
//! rules for every store:
//!
//! | field | merge rule |
//! |---|---|
//! | account-wide cooldown (`rate_limited`, `quota_exhausted`, `ejected`, `suspended`) | the later deadline wins (a suspension has none: it wins until a reset); one that began before the latest reset is void |
//! | automatic state (`healthy` after a cooldown or a probe, credential states) | never ends a cooldown before its deadline; replaces a cooldown that has ended |
//! | per-model cooldowns | by model, the later deadline wins; ended ones, and those that began before the latest reset, are dropped |
//! | operator reset ([`Pool::reset`](crate::pool::Pool::reset)) | the newest wins; it ends every cooldown (account-wide and per model) that began before it |
//! | successful active probe ([`Pool::report_probe`](crate::pool::Pool::report_probe) ending a suspension or an ejection) | the newest wins; it ends every account-wide cooldown that began before it (the account answered) |
//! | operator enable / disable ([`Pool::enable`](crate::pool::Pool::enable), [`Pool::disable`](crate::pool::Pool::disable)) | the newest wins; automatic state never changes it, until the operator does again |
//! | counters | increments since the process's last write, added (so several processes add up exactly); the totals are folded back into each process |
//! | last use / last error | the latest |
//!
//! **Restoring is not a change**: what a process restores at start is not written back, so a
//! replica that restarts never erases what the others wrote since. Every change made since the
//! pool was built is written, including one made between [`StoreHandle::start`] and the first
//! write (an operator's disable right after the start reaches the store).
//!
//! Shared stores also report changes made by other processes ([`Store::poll_changes`], every
//! [`WriterConfig::sync_interval`], or now with [`StoreHandle::sync`]); they are applied by the
//! same rules (a newer reset, a cooldown with a later deadline, a newer operator enable or
//! disable), so a cooldown set by one process is honoured by the others within about a second.
//! Credential states (`auth_expired`, `auth_invalid`) stay local: each process refreshes its
//! own credentials, and a cooldown learnt while an account waits on its credential is not
//! applied there.
//!
//! # Stores
//!
//! - [`MemoryStore`]: in-process (the default; tests, and a pool that needs no persistence).
//! - [`JsonFileStore`]: the pool file itself, one writing process.
//! - `SqliteStore` (feature `sqlite`): one host, several processes; reads and writes the older
//!   gateway's databases (which can also be the source of the accounts:
//!   `config::SqlitePool`).
//! - `RedisStore` (feature `redis`): several hosts.

use std::future::Future;

use crate::account::AccountId;
use crate::pool::{Counters, PersistedState};

mod codec;
mod error;
mod json;
mod memory;
mod merge;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;
mod writer;

pub use self::error::{StoreError, StoreErrorKind};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisConfig, RedisStore};
pub use json::{JsonFileStore, POOL_STATE_KEY};
pub use memory::MemoryStore;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::{MigrationReport, SchemaVersion, SqliteStore, STATE_TABLE, V1_PROVIDER_TYPE};
pub use writer::{StoreHandle, WriterConfig, WriterStats};

/// One account's state as a store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAccount {
    /// The account.
    pub id: AccountId,
    /// Its state; `counters` are the store's totals.
    pub state: PersistedState,
}

/// One account's changes since the last successful write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountWrite {
    /// The account.
    pub id: AccountId,
    /// Its current state; `counters` are this process's view of the totals.
    pub state: PersistedState,
    /// Whether the health state, reason, deadline, failure count or ejection level changed
    /// (stores merge the state by the module's rules, so a stale one never wins).
    pub state_changed: bool,
    /// Whether this process's model cooldowns changed (one was added or extended, or a reset
    /// cleared them). Stores merge them with what they hold, by model, the later deadline
    /// winning; a newer reset (`state.reset_at`) drops those that began before it.
    pub models_changed: bool,
    /// Counter increments since the last successful write: stores shared by several processes
    /// add these rather than writing `state.counters`.
    pub delta: Counters,
    /// The account's `enabled` setting.
    pub enabled: bool,
    /// Whether an operator enabled or disabled the account in this process since the last
    /// write (`state.enabled` and `state.enabled_at` say how and when).
    pub enabled_changed: bool,
    /// The account's settings, when they changed in this process since the last write (the
    /// admin API, a reload) or the store does not hold the account yet. Stores that keep the
    /// configuration (the older system's SQLite database) write them back.
    pub settings: Option<crate::account::AccountSettings>,
    /// The account's credential, for an account the store does not hold yet, in the form a
    /// configuration store (the older system's database) keeps it.
    pub credential: Option<CredentialConfig>,
}

/// An account's credential as a configuration store writes it into a new account's row (the
/// older system kept them in its `config` JSON). `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialConfig {
    /// A credential file (`KIRO_OAUTH_CREDS_FILE_PATH`).
    File(String),
    /// An inline bearer token (`bearerToken`).
    BearerToken(String),
    /// An inline API key (`apiKey`) and its header (`headerName`).
    ApiKey {
        /// The header.
        header: String,
        /// The key.
        key: String,
    },
}

impl std::fmt::Debug for CredentialConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialConfig::File(path) => f.debug_tuple("File").field(path).finish(),
            CredentialConfig::BearerToken(_) => f.write_str("BearerToken(..)"),
            CredentialConfig::ApiKey { header, .. } => f
                .debug_struct("ApiKey")
                .field("header", header)
                .finish_non_exhaustive(),
        }
    }
}

impl CredentialConfig {
    /// The configuration of a pool's credential: its file, or its inline secret (as it would
    /// send it). `None` for credentials that are neither (no credential, or one built in code).
    pub(crate) fn of(credential: &crate::credential::SharedCredential) -> Option<Self> {
        if let Some(path) = credential.masked().path {
            return Some(CredentialConfig::File(path));
        }
        let mut headers = http::HeaderMap::new();
        match credential.kind() {
            "bearer" => {
                credential.apply(&mut headers).ok()?;
                let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
                let token = value.strip_prefix("Bearer ")?;
                Some(CredentialConfig::BearerToken(token.to_owned()))
            }
            "api-key" => {
                credential.apply(&mut headers).ok()?;
                let (name, value) = headers.iter().next()?;
                Some(CredentialConfig::ApiKey {
                    header: name.as_str().to_owned(),
                    key: value.to_str().ok()?.to_owned(),
                })
            }
            _ => None,
        }
    }
}

/// Counter totals of one account after a write to a shared store.
pub type CounterTotals = Vec<(AccountId, Counters)>;

/// Where a pool's runtime state is kept. Implementations do their I/O off the caller's thread
/// (the writer task awaits them; blocking stores use `spawn_blocking`).
pub trait Store: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// Everything the store holds, read once at start.
    fn load(&self) -> impl Future<Output = Result<Vec<StoredAccount>, StoreError>> + Send;

    /// Writes one batch atomically where the store can. Shared stores return the counter totals
    /// after the write (so other processes' increments are folded in); others return nothing.
    fn write(
        &self,
        batch: Vec<AccountWrite>,
    ) -> impl Future<Output = Result<CounterTotals, StoreError>> + Send;

    /// Accounts changed by other processes since the last call (`ids`: the pool's accounts).
    /// Stores with a single writer return nothing.
    fn poll_changes(
        &self,
        ids: Vec<AccountId>,
    ) -> impl Future<Output = Result<Vec<StoredAccount>, StoreError>> + Send {
        let _ = ids;
        async { Ok(Vec::new()) }
    }

    /// Housekeeping run every [`WriterConfig::maintenance_interval`] (e.g. pruning history).
    fn maintain(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
}
