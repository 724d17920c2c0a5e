//! The older system's `config.json`: the keys that map onto this crate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::error::{describe, ConfigError};
use crate::health::HealthPolicy;

/// The older system's default `ACCOUNT_POOL_FILE_PATH`.
pub const DEFAULT_ACCOUNT_POOL_FILE: &str = "configs/account_pool.json";
/// The older system's default `PROVIDER_POOLS_FILE_PATH` (the grouped shape).
pub const DEFAULT_PROVIDER_POOLS_FILE: &str = "configs/provider_pools.json";
/// The older system's code default for `REQUEST_MAX_RETRIES`.
pub const DEFAULT_REQUEST_MAX_RETRIES: u32 = 3;
/// The older system's code default for `REQUEST_BASE_DELAY`.
pub const DEFAULT_REQUEST_BASE_DELAY: Duration = Duration::from_millis(1000);

/// The keys of the older system's `configs/config.json` that map onto this crate. Every other
/// key is ignored (most are about the Kiro client or the admin UI).
///
/// | key | type | here | older system's default |
/// |---|---|---|---|
/// | `MAX_ERROR_COUNT` | integer ≥ 1 | [`HealthPolicy::max_errors`] via [`health_policy`](Self::health_policy) | 3 (5 in its generated config) |
/// | `REQUEST_MAX_RETRIES` | integer | [`request_max_retries`](Self::request_max_retries), for the retry layer | 3 (8 generated) |
/// | `REQUEST_BASE_DELAY` | integer, ms | [`request_base_delay`](Self::request_base_delay), for the retry layer's backoff | 1000 ms (3000 generated) |
/// | `ACCOUNT_POOL_FILE_PATH` | string | [`pool_file`](Self::pool_file) | `configs/account_pool.json` |
/// | `PROVIDER_POOLS_FILE_PATH` | string | [`provider_pools_file`](Self::provider_pools_file), the old grouped file | `configs/provider_pools.json` |
///
/// ```
/// use std::time::Duration;
/// use tower_account_pool::config::LegacyConfig;
/// use tower_account_pool::health::HealthPolicy;
///
/// let config = LegacyConfig::parse(
///     "configs/config.json",
///     br#"{"MAX_ERROR_COUNT": 5, "REQUEST_MAX_RETRIES": 8, "REQUEST_BASE_DELAY": 3000,
///          "REQUIRED_API_KEY": "ignored"}"#,
/// )?;
/// assert_eq!(config.health_policy(HealthPolicy::default()).max_errors, 5);
/// assert_eq!(config.request_max_retries(), 8);
/// assert_eq!(config.request_base_delay(), Duration::from_secs(3));
/// assert_eq!(config.pool_file().to_str(), Some("configs/account_pool.json"));
/// # Ok::<(), tower_account_pool::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegacyConfig {
    /// `MAX_ERROR_COUNT`.
    pub max_error_count: Option<u32>,
    /// `REQUEST_MAX_RETRIES`.
    pub request_max_retries: Option<u32>,
    /// `REQUEST_BASE_DELAY`, in milliseconds in the file.
    pub request_base_delay: Option<Duration>,
    /// `ACCOUNT_POOL_FILE_PATH`.
    pub account_pool_file_path: Option<PathBuf>,
    /// `PROVIDER_POOLS_FILE_PATH`.
    pub provider_pools_file_path: Option<PathBuf>,
}

impl LegacyConfig {
    /// Reads a `config.json`.
    pub fn load(path: impl AsRef<Path>) -> Result<LegacyConfig, ConfigError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| ConfigError::read(path, &e))?;
        Self::parse(path, &bytes)
    }

    /// Parses `config.json` content; `path` is only used in messages.
    pub fn parse(path: impl AsRef<Path>, bytes: &[u8]) -> Result<LegacyConfig, ConfigError> {
        let path = path.as_ref();
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::json(path, &e))?;
        let Value::Object(map) = value else {
            return Err(ConfigError::SettingsNotObject {
                path: path.to_owned(),
                found: describe(&value),
            });
        };
        let keys = Keys { path, map: &map };
        let max_error_count = keys.integer("MAX_ERROR_COUNT")?;
        if max_error_count == Some(0) {
            return Err(ConfigError::Setting {
                path: path.to_owned(),
                key: "MAX_ERROR_COUNT",
                expected: "at least 1",
                found: "0".to_owned(),
            });
        }
        Ok(LegacyConfig {
            max_error_count,
            request_max_retries: keys.integer("REQUEST_MAX_RETRIES")?,
            request_base_delay: keys
                .integer("REQUEST_BASE_DELAY")?
                .map(|ms| Duration::from_millis(u64::from(ms))),
            account_pool_file_path: keys.path("ACCOUNT_POOL_FILE_PATH")?,
            provider_pools_file_path: keys.path("PROVIDER_POOLS_FILE_PATH")?,
        })
    }

    /// `base` with `max_errors` from `MAX_ERROR_COUNT` when set.
    pub fn health_policy(&self, base: HealthPolicy) -> HealthPolicy {
        HealthPolicy {
            max_errors: self.max_error_count.unwrap_or(base.max_errors),
            ..base
        }
    }

    /// Same-account retries (`REQUEST_MAX_RETRIES`, default 3).
    pub fn request_max_retries(&self) -> u32 {
        self.request_max_retries
            .unwrap_or(DEFAULT_REQUEST_MAX_RETRIES)
    }

    /// Backoff base between retries (`REQUEST_BASE_DELAY`, default 1 s).
    pub fn request_base_delay(&self) -> Duration {
        self.request_base_delay
            .unwrap_or(DEFAULT_REQUEST_BASE_DELAY)
    }

    /// The pool file (`ACCOUNT_POOL_FILE_PATH`, default `configs/account_pool.json`).
    pub fn pool_file(&self) -> PathBuf {
        self.account_pool_file_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ACCOUNT_POOL_FILE))
    }

    /// The old grouped pool file (`PROVIDER_POOLS_FILE_PATH`, default
    /// `configs/provider_pools.json`).
    pub fn provider_pools_file(&self) -> PathBuf {
        self.provider_pools_file_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PROVIDER_POOLS_FILE))
    }

    /// The pool file the older system would read, relative paths resolved against `base_dir`:
    /// [`pool_file`](Self::pool_file) when it exists, else
    /// [`provider_pools_file`](Self::provider_pools_file) when that exists.
    pub fn locate_pool_file(&self, base_dir: impl AsRef<Path>) -> Option<PathBuf> {
        let base = base_dir.as_ref();
        [self.pool_file(), self.provider_pools_file()]
            .into_iter()
            .map(|p| base.join(p))
            .find(|p| p.is_file())
    }
}

struct Keys<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Keys<'_> {
    fn error(&self, key: &'static str, expected: &'static str, found: &Value) -> ConfigError {
        ConfigError::Setting {
            path: self.path.to_owned(),
            key,
            expected,
            found: describe(found),
        }
    }

    fn integer(&self, key: &'static str) -> Result<Option<u32>, ConfigError> {
        const EXPECTED: &str = "a non-negative integer";
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| ConfigError::Setting {
                    path: self.path.to_owned(),
                    key,
                    expected: "a non-negative integer of at most 4294967295",
                    found: n.to_string(),
                }),
            Some(other) => Err(self.error(key, EXPECTED, other)),
        }
    }

    fn path(&self, key: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(PathBuf::from(s))),
            Some(Value::String(_)) => Err(ConfigError::Setting {
                path: self.path.to_owned(),
                key,
                expected: "a non-empty string",
                found: "an empty string".to_owned(),
            }),
            Some(other) => Err(self.error(key, "a non-empty string", other)),
        }
    }
}
