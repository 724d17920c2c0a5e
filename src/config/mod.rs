//! Pool files: loading the three shapes, clear errors, migration and hot reload.
//!
//! A pool file lists accounts in one of three shapes, detected automatically:
//!
//! | shape | example | status |
//! |---|---|---|
//! | current | `{"accounts": [ {...}, ... ]}` | read and written |
//! | bare array | `[ {...}, ... ]` | read |
//! | the older system's grouped shape | `{"claude-kiro-oauth": [ {...}, ... ]}` | read with a `warn` naming the file and the migration command |
//!
//! Top-level keys other than the list of accounts (e.g. another provider type in a grouped
//! file) are not loaded; they are reported with a `warn` (once per file and process, not on
//! every reload) and kept when the file is rewritten.
//!
//! ```
//! use tower_account_pool::config::PoolBuilderExt;
//! use tower_account_pool::{HealthState, Pool, SelectRequest};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("account_pool.json");
//! std::fs::write(&path, r#"{"accounts": [
//!     {"uuid": "a", "bearerToken": "token-a", "weight": 2, "mysteryField": [1, 2]},
//!     {"uuid": "b", "apiKey": "key-b", "headerName": "x-api-key", "priority": 1},
//!     {"uuid": "c", "bearerToken": "token-c", "isHealthy": false,
//!      "lastErrorMessage": "403 suspended", "errorCount": 5}
//! ]}"#)?;
//!
//! let pool = Pool::builder().build_from_file(&path)?;
//! let c = pool.snapshot().account("c").unwrap().clone();
//! assert_eq!(c.state, HealthState::Suspended);
//! assert_eq!(c.reason.as_deref(), Some("marked unhealthy in the pool file: 403 suspended"));
//! assert_eq!(c.consecutive_failures, 5);
//! assert_eq!(pool.select(&SelectRequest::default())?.id().as_str(), "a");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Account fields
//!
//! The older system's field names are read as they are; our own settings sit beside them.
//! Every other field is kept untouched when the file is rewritten; the derived fields
//! `errorStatus` and `poolType` are dropped.
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `uuid` | string, required, unique | the account's id |
//! | `KIRO_OAUTH_CREDS_FILE_PATH` | string | a credential file, opened by a [`CredentialResolver`] (default: [`TokenFileResolver`], the file's `accessToken` as a bearer token) |
//! | `KIRO_OAUTH_CREDS_BASE64` | string | inline credentials: base64 of a token file's JSON object, opened by [`CredentialResolver::open_inline`]; wins over this account's `KIRO_OAUTH_CREDS_FILE_PATH` (with a warning), never applies to other accounts |
//! | `bearerToken` | string | an inline bearer token |
//! | `apiKey`, `headerName` | string, string | an inline API key and its header (default `x-api-key`) |
//! | `isDisabled` | boolean | `true`: never selected ([`AccountSettings::enabled`](crate::account::AccountSettings::enabled) `false`) |
//! | `weight` | integer ≥ 1 | share for the weighted strategy (default 1) |
//! | `priority` | integer | priority tier, 0 first (default 0) |
//! | `maxInFlight` | integer ≥ 1 | concurrent requests at most (default unlimited) |
//! | `models` | array of strings | allow-list (default: all models) |
//! | `notSupportedModels` | array of strings | deny-list |
//! | `checkModelName` | string | model for probes (`""` = none) |
//! | `baseUrl` | string | per-account upstream base URL |
//! | `isHealthy`, `errorCount`, `usageCount`, `lastUsed`, `lastErrorTime`, `lastErrorMessage` | | seed the runtime state, see [`FileState::persisted`] |
//! | `lastHealthCheckTime`, `lastHealthCheckModel`, `checkHealth`, `cachedEmail`, `cachedUserId` | | read into [`FileState`] for probes and admin views |
//!
//! Timestamps are ISO 8601 strings (`2025-01-31T12:00:00.000Z`, or SQLite's
//! `2025-01-31 12:00:00` in UTC) or epoch milliseconds. `null` counts as absent.
//!
//! At most one of `KIRO_OAUTH_CREDS_FILE_PATH` (or `KIRO_OAUTH_CREDS_BASE64`), `bearerToken`
//! and `apiKey` may be set; with none, requests go out without a credential. A credential file that is missing, unreadable or
//! invalid never fails the pool: that account starts `AuthInvalid` with the reason (naming the
//! file, never a token), and the file is read again every
//! [`HealthPolicy::auth_invalid_retry`](crate::health::HealthPolicy::auth_invalid_retry).
//!
//! # Errors
//!
//! A bad file is rejected with a [`ConfigError`] naming the file and the place: the line and
//! column of invalid JSON; an unknown shape; the index (and id) of a missing or duplicate
//! `uuid`; the index and field of a value of the wrong type. Loading only reads: a file that
//! failed to parse is never written.
//!
//! # Migration
//!
//! [`migrate`] (and `cargo run --example migrate -- PATH [--out PATH] [--dry-run]`) converts the
//! old shapes to `{"accounts": [...]}`, after a backup `PATH.bak-<unix-ms>`, atomically.
//!
//! # Hot reload
//!
//! [`PoolExt::watch_file`] polls the file and applies its changes with
//! [`Pool::sync`](crate::Pool::sync); a broken edit is reported and ignored.
//!
//! # The older system's SQLite database
//!
//! `SqlitePool` (feature `sqlite`) reads the accounts of the older system's database (schema
//! v2 `accounts` or v1 `providers`): each row's `config` JSON, with the row's columns winning
//! over it (`is_disabled`, `not_supported_models`, `check_model_name`, the state columns).
//!
//! # The older system's `config.json`
//!
//! [`LegacyConfig`] reads the keys that map onto this crate (`MAX_ERROR_COUNT`,
//! `REQUEST_MAX_RETRIES`, `REQUEST_BASE_DELAY`, `ACCOUNT_POOL_FILE_PATH`,
//! `PROVIDER_POOLS_FILE_PATH`); its docs hold the table.

mod credential;
mod error;
pub(crate) mod file;
mod legacy;
mod migrate;
#[cfg(feature = "sqlite")]
mod sqlite;
mod watch;

pub use credential::{
    CredentialResolver, OpenedCredential, TokenFileCredential, TokenFileResolver,
    UnusableCredential,
};
pub use error::ConfigError;
pub use file::{
    AccountEntry, CredentialSpec, FileState, PoolFile, PoolShape, ACCOUNTS_KEY,
    DEFAULT_API_KEY_HEADER, DERIVED_FIELDS, LEGACY_GROUP_KEY,
};
pub use legacy::{
    LegacyConfig, DEFAULT_ACCOUNT_POOL_FILE, DEFAULT_PROVIDER_POOLS_FILE,
    DEFAULT_REQUEST_BASE_DELAY, DEFAULT_REQUEST_MAX_RETRIES,
};
pub use migrate::{migrate, write_atomic, MigrateOptions, MigrationReport};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqlitePool;
pub use watch::{FileWatch, FileWatcher, ReloadResult, ReloadStatus, DEFAULT_WATCH_INTERVAL};

use std::path::{Path, PathBuf};

use crate::pool::{Pool, PoolBuilder};

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::pool::Pool {}
    impl Sealed for crate::pool::PoolBuilder {}
}

/// Building a [`Pool`] from a configuration source, as methods on [`PoolBuilder`].
///
/// ```
/// use tower_account_pool::config::PoolBuilderExt;
/// use tower_account_pool::Pool;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("account_pool.json");
/// std::fs::write(&path, r#"{"accounts": [{"uuid": "a", "bearerToken": "token-a"}]}"#)?;
/// let pool = Pool::builder().build_from_file(&path)?;
/// assert_eq!(pool.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait PoolBuilderExt: sealed::Sealed + Sized {
    /// Builds the pool from a pool file (any of the three shapes), with this builder's
    /// strategy, health policy and TTL. Credential files are opened by a
    /// [`TokenFileResolver`], relative paths against the file's folder; use
    /// [`PoolFile::build_with`] for another resolver. Accounts added to the builder before
    /// stay, ahead of the file's.
    fn build_from_file(self, path: impl AsRef<Path>) -> Result<Pool, ConfigError>;

    /// Builds the pool from the older system's SQLite database ([`SqlitePool::load`] then
    /// [`SqlitePool::build`]).
    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    fn build_from_sqlite(self, path: impl AsRef<Path>) -> Result<Pool, ConfigError>;
}

impl PoolBuilderExt for PoolBuilder {
    fn build_from_file(self, path: impl AsRef<Path>) -> Result<Pool, ConfigError> {
        PoolFile::load(path)?.build(self)
    }

    #[cfg(feature = "sqlite")]
    fn build_from_sqlite(self, path: impl AsRef<Path>) -> Result<Pool, ConfigError> {
        SqlitePool::load(path)?.build(self)
    }
}

/// Configuration-driven operations on a running [`Pool`].
pub trait PoolExt: sealed::Sealed {
    /// Watches a pool file and applies its changes to this pool: added accounts are added
    /// (seeded from their state fields), removed ones removed, changed ones updated while
    /// keeping their runtime state, unchanged ones left alone. After the first look, only
    /// what the file changed since it was last applied is applied: an account changed or
    /// removed through the admin API, or added there, stays as it is until the file itself
    /// changes that account. A broken edit is logged (`warn`), reported through
    /// [`FileWatch::status`], and ignored: the running pool stays as it was. Polls every
    /// [`DEFAULT_WATCH_INTERVAL`]; see [`FileWatcher`] for options.
    fn watch_file(&self, path: impl Into<PathBuf>) -> FileWatch;
}

impl PoolExt for Pool {
    fn watch_file(&self, path: impl Into<PathBuf>) -> FileWatch {
        FileWatcher::new(self, path).start()
    }
}

/// Seeds an account just built or added from a pool file entry: its state fields, then its
/// credential's unavailability.
pub(crate) fn seed_from_entry(pool: &Pool, entry: &AccountEntry, unavailable: Option<&str>) {
    if let Some(state) = entry.state().persisted() {
        // The account was just added with this id, so it exists.
        let _ = pool.restore_state(entry.id().as_str(), &state);
    }
    if let Some(reason) = unavailable {
        if let Ok(account) = pool.account(entry.id().as_str()) {
            account.mark_credential_unusable(reason);
        }
    }
}
