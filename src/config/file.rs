//! Pool files: shape detection, account entries, and rendering in the current shape.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::account::{Account, AccountId, AccountSettings};
use crate::config::credential::{CredentialResolver, OpenedCredential, TokenFileResolver};
use crate::config::error::{describe, ConfigError};
use crate::credential::{ApiKey, BearerToken, NoCredential, SharedCredential};
use crate::health::{HealthState, LastError, OutcomeClass};
use crate::pool::{Counters, PersistedState, Pool, PoolBuilder, PoolSnapshot};
use crate::time::{format_iso, parse as parse_timestamp};

/// The key of the current shape, `{"accounts": [...]}`.
pub const ACCOUNTS_KEY: &str = "accounts";
/// The key of the older system's grouped shape, `{"claude-kiro-oauth": [...]}`.
pub const LEGACY_GROUP_KEY: &str = "claude-kiro-oauth";
/// Fields the older system's admin UI derived and persisted by accident. They are dropped when
/// a file is rewritten.
pub const DERIVED_FIELDS: &[&str] = &["errorStatus", "poolType"];
/// The header an inline `apiKey` is sent in when `headerName` is not set.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";

/// The shape a pool file was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolShape {
    /// `{"accounts": [...]}`: the current shape.
    Accounts,
    /// `[...]`: a bare array of accounts.
    BareArray,
    /// `{"claude-kiro-oauth": [...]}`: the older system's accounts grouped by provider type.
    Grouped,
}

impl PoolShape {
    /// True for the current shape.
    pub fn is_current(self) -> bool {
        self == PoolShape::Accounts
    }
}

impl fmt::Display for PoolShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolShape::Accounts => r#"{"accounts": [...]}"#,
            PoolShape::BareArray => "a bare array [...]",
            PoolShape::Grouped => r#"the old grouped shape {"claude-kiro-oauth": [...]}"#,
        })
    }
}

/// The older system's field for inline credentials.
const INLINE_CREDENTIALS: &str = "KIRO_OAUTH_CREDS_BASE64";

/// Decodes `KIRO_OAUTH_CREDS_BASE64`: base64 (standard alphabet, padding optional) of a JSON
/// object. The problem, if any, never quotes the value.
fn decode_inline_credentials(encoded: &str) -> Result<String, &'static str> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bytes = ENGINE
        .decode(encoded.trim())
        .map_err(|_| "is not valid base64")?;
    let json = String::from_utf8(bytes).map_err(|_| "does not decode to UTF-8 text")?;
    match serde_json::from_str::<Value>(&json) {
        Ok(Value::Object(_)) => Ok(json),
        _ => Err("does not decode to a JSON object"),
    }
}

/// Where an account's credential comes from. `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialSpec {
    /// No credential field: requests go out unchanged ([`NoCredential`]).
    None,
    /// An inline `bearerToken`.
    BearerToken(String),
    /// An inline `apiKey`, sent in `headerName` (default `x-api-key`).
    ApiKey {
        /// The header.
        header: String,
        /// The key.
        key: String,
    },
    /// A credential file (`KIRO_OAUTH_CREDS_FILE_PATH`), opened by a [`CredentialResolver`].
    File(PathBuf),
    /// Inline credentials (`KIRO_OAUTH_CREDS_BASE64`: a token file's JSON object, base64
    /// encoded), decoded here and opened by [`CredentialResolver::open_inline`]. As in the
    /// older system it takes precedence over `KIRO_OAUTH_CREDS_FILE_PATH` in the same account;
    /// it never applies to other accounts.
    Inline(String),
}

impl fmt::Debug for CredentialSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSpec::None => f.write_str("None"),
            CredentialSpec::BearerToken(_) => f.write_str("BearerToken(..)"),
            CredentialSpec::ApiKey { header, .. } => f
                .debug_struct("ApiKey")
                .field("header", header)
                .finish_non_exhaustive(),
            CredentialSpec::File(path) => f.debug_tuple("File").field(path).finish(),
            CredentialSpec::Inline(_) => f.write_str("Inline(..)"),
        }
    }
}

/// The older system's state fields of one account, as found in the file.
///
/// [`persisted`](Self::persisted) turns them into the runtime state the pool starts with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileState {
    /// `isHealthy`.
    pub is_healthy: Option<bool>,
    /// `errorCount`: failures since the last success.
    pub error_count: Option<u32>,
    /// `usageCount`: successful requests since the last successful health check.
    pub usage_count: Option<u64>,
    /// `lastUsed`.
    pub last_used: Option<SystemTime>,
    /// `lastErrorTime`.
    pub last_error_time: Option<SystemTime>,
    /// `lastErrorMessage`.
    pub last_error_message: Option<String>,
    /// `lastHealthCheckTime`.
    pub last_health_check_time: Option<SystemTime>,
    /// `lastHealthCheckModel`.
    pub last_health_check_model: Option<String>,
    /// `checkHealth`: whether automatic health checks run for this account.
    pub check_health: Option<bool>,
    /// `cachedEmail`.
    pub cached_email: Option<String>,
    /// `cachedUserId`.
    pub cached_user_id: Option<String>,
}

impl FileState {
    /// The runtime state these fields seed, or `None` when the file holds no runtime state.
    ///
    /// | field | runtime state |
    /// |---|---|
    /// | `isHealthy: false` | `Suspended` until an operator resets it or a probe succeeds (as in the older system), reason "marked unhealthy in the pool file: `lastErrorMessage`" |
    /// | `errorCount` | consecutive failures |
    /// | `usageCount` | `requests` and `successes` counters |
    /// | `lastUsed` | last used |
    /// | `lastErrorTime` + `lastErrorMessage` | last error (class `suspended` when unhealthy, else `transient`) |
    pub fn persisted(&self) -> Option<PersistedState> {
        let has_state = self.is_healthy.is_some()
            || self.error_count.is_some()
            || self.usage_count.is_some()
            || self.last_used.is_some()
            || self.last_error_message.is_some();
        if !has_state {
            return None;
        }
        let unhealthy = self.is_healthy == Some(false);
        let (state, reason) = if unhealthy {
            let reason = match &self.last_error_message {
                Some(message) => format!("marked unhealthy in the pool file: {message}"),
                None => "marked unhealthy in the pool file (isHealthy: false)".to_owned(),
            };
            (HealthState::Suspended, Some(reason))
        } else {
            (HealthState::Healthy, None)
        };
        let usage = self.usage_count.unwrap_or(0);
        Some(PersistedState {
            state,
            reason,
            // Seeded: older than any reset an operator makes.
            since: None,
            reset_at: None,
            recovered_at: None,
            enabled: None,
            enabled_at: None,
            until: None,
            consecutive_failures: self.error_count.unwrap_or(0),
            ejection_level: 0,
            // The older system kept no per-model cooldowns.
            model_cooldowns: Vec::new(),
            counters: Counters {
                requests: usage,
                successes: usage,
                ..Counters::default()
            },
            last_used: self.last_used,
            last_error: self.last_error_message.as_ref().map(|message| LastError {
                at: self.last_error_time.unwrap_or_else(SystemTime::now),
                class: if unhealthy {
                    OutcomeClass::Suspended
                } else {
                    OutcomeClass::Transient
                },
                message: message.clone(),
            }),
        })
    }
}

/// One account of a pool file: what it configures, its state fields, and the object as written.
#[derive(Clone)]
pub struct AccountEntry {
    index: usize,
    id: AccountId,
    settings: AccountSettings,
    credential: CredentialSpec,
    state: FileState,
    raw: Map<String, Value>,
    /// Both `KIRO_OAUTH_CREDS_BASE64` and `KIRO_OAUTH_CREDS_FILE_PATH` were set: the file is
    /// not read (warned about at load).
    file_path_ignored: bool,
}

impl AccountEntry {
    /// Position in the file's list of accounts.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The account's id (`uuid`).
    pub fn id(&self) -> &AccountId {
        &self.id
    }

    /// Its settings.
    pub fn settings(&self) -> &AccountSettings {
        &self.settings
    }

    /// Where its credential comes from.
    pub fn credential(&self) -> &CredentialSpec {
        &self.credential
    }

    /// The older system's state fields.
    pub fn state(&self) -> &FileState {
        &self.state
    }

    /// The object exactly as the file holds it, unknown fields included. It may hold secrets.
    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    /// The derived fields ([`DERIVED_FIELDS`]) this entry carries.
    pub fn derived_fields(&self) -> Vec<&'static str> {
        DERIVED_FIELDS
            .iter()
            .copied()
            .filter(|f| self.raw.contains_key(*f))
            .collect()
    }

    /// The object as it is written back: unknown fields kept in place, derived fields dropped.
    pub fn to_json(&self) -> Map<String, Value> {
        self.raw
            .iter()
            .filter(|(k, _)| !DERIVED_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Opens the credential (files through `resolver`) and makes the account. The second value
    /// says why the account cannot be used yet (an unusable credential file), if it cannot.
    pub fn open(&self, resolver: &dyn CredentialResolver) -> (Account, Option<String>) {
        let OpenedCredential {
            credential,
            unavailable,
        } = match &self.credential {
            CredentialSpec::File(path) => resolver.open(path, self),
            CredentialSpec::Inline(json) => resolver.open_inline(json, self),
            inline => OpenedCredential {
                credential: inline_credential(inline),
                unavailable: None,
            },
        };
        let account = Account::with_shared_credential(self.id.clone(), credential)
            .with_settings(self.settings.clone());
        (account, unavailable)
    }
}

/// Builds an inline credential; parsing already checked that it is valid.
fn inline_credential(spec: &CredentialSpec) -> SharedCredential {
    let built: Option<SharedCredential> = match spec {
        CredentialSpec::BearerToken(token) => BearerToken::try_new(token)
            .ok()
            .map(|c| Arc::new(c) as SharedCredential),
        CredentialSpec::ApiKey { header, key } => ApiKey::new(header, key)
            .ok()
            .map(|c| Arc::new(c) as SharedCredential),
        CredentialSpec::None | CredentialSpec::File(_) | CredentialSpec::Inline(_) => None,
    };
    built.unwrap_or_else(|| Arc::new(NoCredential))
}

impl fmt::Debug for AccountEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountEntry")
            .field("index", &self.index)
            .field("id", &self.id)
            .field("settings", &self.settings)
            .field("credential", &self.credential)
            .field("state", &self.state)
            .field("fields", &self.raw.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A parsed pool file: its shape, its accounts, and the other top-level keys it holds.
#[derive(Clone)]
pub struct PoolFile {
    path: PathBuf,
    shape: PoolShape,
    entries: Vec<AccountEntry>,
    other: Map<String, Value>,
}

impl fmt::Debug for PoolFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolFile")
            .field("path", &self.path)
            .field("shape", &self.shape)
            .field("entries", &self.entries)
            .field("other_keys", &self.other_keys())
            .finish()
    }
}

impl PoolFile {
    /// A pool file of these entries (a source other than a file: the older system's database).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn from_entries(path: &Path, entries: Vec<AccountEntry>) -> PoolFile {
        PoolFile {
            path: path.to_owned(),
            shape: PoolShape::Accounts,
            entries,
            other: Map::new(),
        }
    }

    /// Reads and parses a pool file, then logs a `warn` when it is in the old grouped shape
    /// (naming the file and the migration command) and one for top-level keys that are not
    /// loaded. The file is only read.
    pub fn load(path: impl AsRef<Path>) -> Result<PoolFile, ConfigError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| ConfigError::read(path, &e))?;
        let file = Self::parse(path, &bytes)?;
        file.warn_about_shape();
        Ok(file)
    }

    /// Parses pool file content; `path` is only used in messages. Logs nothing.
    pub fn parse(path: impl AsRef<Path>, bytes: &[u8]) -> Result<PoolFile, ConfigError> {
        let path = path.as_ref();
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::json(path, &e))?;
        let (shape, items, other) = match value {
            Value::Array(items) => (PoolShape::BareArray, items, Map::new()),
            Value::Object(map) => {
                let key = match (
                    map.contains_key(ACCOUNTS_KEY),
                    map.contains_key(LEGACY_GROUP_KEY),
                ) {
                    (true, true) => {
                        return Err(ConfigError::AmbiguousShape {
                            path: path.to_owned(),
                        })
                    }
                    (true, false) => ACCOUNTS_KEY,
                    (false, true) => LEGACY_GROUP_KEY,
                    (false, false) => {
                        return Err(ConfigError::UnknownShape {
                            path: path.to_owned(),
                            found: describe_object(&map),
                        })
                    }
                };
                let mut list = None;
                let mut other = Map::new();
                for (k, v) in map {
                    if k == key {
                        list = Some(v);
                    } else {
                        other.insert(k, v);
                    }
                }
                let items = match list {
                    Some(Value::Array(items)) => items,
                    found => {
                        return Err(ConfigError::ListNotArray {
                            path: path.to_owned(),
                            key: key.to_owned(),
                            found: describe(&found.unwrap_or(Value::Null)),
                        })
                    }
                };
                let shape = if key == ACCOUNTS_KEY {
                    PoolShape::Accounts
                } else {
                    PoolShape::Grouped
                };
                (shape, items, other)
            }
            other => {
                return Err(ConfigError::UnknownShape {
                    path: path.to_owned(),
                    found: describe(&other),
                })
            }
        };
        let mut seen: HashMap<String, usize> = HashMap::with_capacity(items.len());
        let mut entries = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let Value::Object(raw) = item else {
                return Err(ConfigError::NotAnObject {
                    path: path.to_owned(),
                    index,
                    found: describe(&item),
                });
            };
            let entry = parse_entry(path, index, raw)?;
            if let Some(&first) = seen.get(entry.id.as_str()) {
                return Err(ConfigError::DuplicateId {
                    path: path.to_owned(),
                    index,
                    id: entry.id.to_string(),
                    first,
                });
            }
            seen.insert(entry.id.to_string(), index);
            entries.push(entry);
        }
        Ok(PoolFile {
            path: path.to_owned(),
            shape,
            entries,
            other,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder the file is in: relative credential paths in it are resolved against it
    /// (by [`accounts`](Self::accounts), [`build`](Self::build) and
    /// [`build_from_file`](super::PoolBuilderExt::build_from_file); give it to other resolvers, e.g.
    /// [`TokenFileResolver::base_dir`] or `KiroResolver::base_dir`).
    pub fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        }
    }

    /// The shape it was found in.
    pub fn shape(&self) -> PoolShape {
        self.shape
    }

    /// The accounts, in file order.
    pub fn entries(&self) -> &[AccountEntry] {
        &self.entries
    }

    /// Top-level keys other than the list of accounts. They are not loaded, and are kept as
    /// they are when the file is rewritten.
    pub fn other_keys(&self) -> Vec<&str> {
        self.other.keys().map(String::as_str).collect()
    }

    /// The whole file in the current shape: `{"accounts": [...]}` first, then the other
    /// top-level keys unchanged. Unknown account fields are kept; derived fields are dropped.
    pub fn to_current_json(&self) -> Value {
        let mut top = Map::new();
        top.insert(
            ACCOUNTS_KEY.to_owned(),
            Value::Array(
                self.entries
                    .iter()
                    .map(|e| Value::Object(e.to_json()))
                    .collect(),
            ),
        );
        for (k, v) in &self.other {
            top.insert(k.clone(), v.clone());
        }
        Value::Object(top)
    }

    /// [`to_current_json`](Self::to_current_json) as pretty JSON (two-space indent, as the
    /// older system wrote) with a final newline.
    pub fn render(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.to_current_json())
            .unwrap_or_else(|_| String::from("{}"));
        text.push('\n');
        text
    }

    /// This file with each account's state fields updated from `snapshot`, in the older
    /// system's names, so old tools keep reading it. Unknown fields stay as they are; derived
    /// fields are dropped on [`render`](Self::render); accounts missing from the snapshot are
    /// left unchanged, and accounts only in the snapshot are not added (the file is the
    /// configuration).
    ///
    /// | field | written from |
    /// |---|---|
    /// | `isHealthy` | the runtime state is `healthy` |
    /// | `isDisabled` | the account is disabled |
    /// | `errorCount` | consecutive failures |
    /// | `usageCount` | lifetime successes |
    /// | `lastUsed` | last use, ISO 8601 |
    /// | `lastErrorTime`, `lastErrorMessage` | the last error (left as they are when there is none) |
    pub fn with_state(&self, snapshot: &PoolSnapshot) -> PoolFile {
        let mut file = self.clone();
        for entry in &mut file.entries {
            let Some(account) = snapshot.account(entry.id.as_str()) else {
                continue;
            };
            let raw = &mut entry.raw;
            raw.insert(
                "isHealthy".into(),
                Value::Bool(account.underlying_state == HealthState::Healthy),
            );
            raw.insert("isDisabled".into(), Value::Bool(!account.settings.enabled));
            raw.insert(
                "errorCount".into(),
                Value::from(account.consecutive_failures),
            );
            raw.insert("usageCount".into(), Value::from(account.counters.successes));
            if let Some(used) = account.last_used {
                raw.insert("lastUsed".into(), Value::from(format_iso(&used)));
            }
            if let Some(error) = &account.last_error {
                raw.insert("lastErrorTime".into(), Value::from(format_iso(&error.at)));
                raw.insert(
                    "lastErrorMessage".into(),
                    Value::from(error.message.clone()),
                );
            }
            if let Ok(parsed) = parse_entry(&file.path, entry.index, raw.clone()) {
                *entry = parsed;
            }
        }
        file
    }

    /// The accounts, with credential files opened by a [`TokenFileResolver`] relative to the
    /// file's folder.
    pub fn accounts(&self) -> Vec<(Account, Option<String>)> {
        self.accounts_with(&TokenFileResolver::new().base_dir(self.dir()))
    }

    /// The accounts, with credential files opened by `resolver`. The second value says why an
    /// account cannot be used yet.
    pub fn accounts_with(
        &self,
        resolver: &dyn CredentialResolver,
    ) -> Vec<(Account, Option<String>)> {
        self.entries.iter().map(|e| e.open(resolver)).collect()
    }

    /// Builds a pool from this file with `builder`'s strategy, policy and TTL; credential files
    /// are opened by a [`TokenFileResolver`], relative paths against the file's folder. See
    /// [`build_with`](Self::build_with).
    pub fn build(&self, builder: PoolBuilder) -> Result<Pool, ConfigError> {
        self.build_with(builder, &TokenFileResolver::new().base_dir(self.dir()))
    }

    /// Builds a pool from this file. State fields seed each account's runtime state
    /// ([`FileState::persisted`]); an account whose credential file cannot be used starts
    /// `AuthInvalid` with the reason, and its file is read again every
    /// [`HealthPolicy::auth_invalid_retry`](crate::HealthPolicy::auth_invalid_retry).
    pub fn build_with(
        &self,
        builder: PoolBuilder,
        resolver: &dyn CredentialResolver,
    ) -> Result<Pool, ConfigError> {
        if self.entries.is_empty() {
            return Err(ConfigError::EmptyPool {
                path: self.path.clone(),
            });
        }
        let opened = self.accounts_with(resolver);
        let pool = builder
            .accounts(opened.iter().map(|(account, _)| account.clone()))
            .build()
            .map_err(|source| ConfigError::Pool {
                path: self.path.clone(),
                source,
            })?;
        for (entry, (_, unavailable)) in self.entries.iter().zip(&opened) {
            super::seed_from_entry(&pool, entry, unavailable.as_deref());
        }
        Ok(pool)
    }

    /// Logs the old-shape and other-keys warnings, and one per account whose inline
    /// credentials override its credential file.
    pub(crate) fn warn_about_shape(&self) {
        self.warn_unseen(&mut std::collections::HashSet::new(), true);
    }

    /// The same warnings, each only once per `seen` (a file watch keeps one, so that a file
    /// reloaded again and again, e.g. because a store writes state into it, does not repeat
    /// them); with `log` false they are only recorded (the pool was built from this content,
    /// and its load already warned).
    pub(crate) fn warn_unseen(&self, seen: &mut std::collections::HashSet<String>, log: bool) {
        let path = self.path.display();
        for entry in self.entries.iter().filter(|e| e.file_path_ignored) {
            if seen.insert(format!("inline:{}", entry.id)) && log {
                tracing::warn!(
                    file = %path, index = entry.index, account = %entry.id,
                    "`{INLINE_CREDENTIALS}` takes precedence over `KIRO_OAUTH_CREDS_FILE_PATH`, as \
                     in the older system: the credential file is not read"
                );
            }
        }
        if self.shape == PoolShape::Grouped && seen.insert("grouped".into()) && log {
            tracing::warn!(
                file = %path,
                "{path}: loaded {}; convert it to {{\"accounts\": [...]}} with `cargo run --example migrate -- {path}`",
                self.shape
            );
        }
        if !self.other.is_empty() {
            let keys = quote_keys(self.other.keys());
            if seen.insert(format!("other:{keys}")) && log {
                tracing::warn!(
                    file = %path,
                    "{path}: top-level keys not loaded as accounts: {keys}; they are kept when the file is rewritten",
                );
            }
        }
    }
}

fn quote_keys<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    keys.map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_object(map: &Map<String, Value>) -> String {
    if map.is_empty() {
        return "an empty object".to_owned();
    }
    const SHOWN: usize = 5;
    let mut keys = quote_keys(map.keys().take(SHOWN));
    if map.len() > SHOWN {
        keys.push_str(", ...");
    }
    format!("an object with keys {keys}")
}

/// Reads the fields of one account object, naming the index and field in errors.
struct Fields<'a> {
    path: &'a Path,
    index: usize,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn get(&self, field: &str) -> Option<&Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn wrong_type(&self, field: &str, expected: &'static str, found: &Value) -> ConfigError {
        ConfigError::WrongType {
            path: self.path.to_owned(),
            index: self.index,
            field: field.to_owned(),
            expected,
            found: describe(found),
        }
    }

    fn invalid(&self, field: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::InvalidValue {
            path: self.path.to_owned(),
            index: self.index,
            field: field.to_owned(),
            problem: problem.into(),
        }
    }

    fn string(&self, field: &str) -> Result<Option<&str>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(field, "a string", other)),
        }
    }

    fn bool(&self, field: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong_type(field, "a boolean", other)),
        }
    }

    fn u64(&self, field: &str) -> Result<Option<u64>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| ConfigError::WrongType {
                path: self.path.to_owned(),
                index: self.index,
                field: field.to_owned(),
                expected: "a non-negative integer",
                found: n.to_string(),
            }),
            Some(other) => Err(self.wrong_type(field, "a non-negative integer", other)),
        }
    }

    fn u32(&self, field: &str) -> Result<Option<u32>, ConfigError> {
        match self.u64(field)? {
            None => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| self.invalid(field, format!("is too large (at most {})", u32::MAX))),
        }
    }

    fn positive_u32(&self, field: &str, hint: &str) -> Result<Option<u32>, ConfigError> {
        match self.u32(field)? {
            Some(0) => Err(self.invalid(field, format!("must be at least 1{hint}"))),
            other => Ok(other),
        }
    }

    fn strings(&self, field: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.wrong_type(&format!("{field}[{i}]"), "a string", other)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(self.wrong_type(field, "an array of strings", other)),
        }
    }

    fn time(&self, field: &str) -> Result<Option<SystemTime>, ConfigError> {
        const EXPECTED: &str = "a timestamp string or epoch milliseconds";
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => parse_timestamp(s).map(Some).ok_or_else(|| {
                self.invalid(
                    field,
                    "is not a timestamp (expected ISO 8601 such as 2025-01-31T12:00:00.000Z)",
                )
            }),
            Some(v @ Value::Number(n)) => n
                .as_u64()
                .map(|ms| Some(UNIX_EPOCH + Duration::from_millis(ms)))
                .ok_or_else(|| self.wrong_type(field, EXPECTED, v)),
            Some(other) => Err(self.wrong_type(field, EXPECTED, other)),
        }
    }

    fn non_empty(&self, field: &str) -> Result<Option<&str>, ConfigError> {
        match self.string(field)? {
            Some("") => Err(self.invalid(field, "must not be empty")),
            other => Ok(other),
        }
    }
}

/// The older system's state fields of one account object, read as the loader reads them
/// (fields of the wrong type are left out), for stores that keep state in a pool file.
pub(crate) fn file_state_of(map: &Map<String, Value>) -> FileState {
    let f = Fields {
        path: Path::new(""),
        index: 0,
        map,
    };
    FileState {
        is_healthy: f.bool("isHealthy").ok().flatten(),
        error_count: f.u32("errorCount").ok().flatten(),
        usage_count: f.u64("usageCount").ok().flatten(),
        last_used: f.time("lastUsed").ok().flatten(),
        last_error_time: f.time("lastErrorTime").ok().flatten(),
        last_error_message: f
            .string("lastErrorMessage")
            .ok()
            .flatten()
            .map(str::to_owned),
        last_health_check_time: f.time("lastHealthCheckTime").ok().flatten(),
        last_health_check_model: f
            .string("lastHealthCheckModel")
            .ok()
            .flatten()
            .map(str::to_owned),
        check_health: f.bool("checkHealth").ok().flatten(),
        cached_email: f.string("cachedEmail").ok().flatten().map(str::to_owned),
        cached_user_id: f.string("cachedUserId").ok().flatten().map(str::to_owned),
    }
}

pub(crate) fn parse_entry(
    path: &Path,
    index: usize,
    raw: Map<String, Value>,
) -> Result<AccountEntry, ConfigError> {
    let f = Fields {
        path,
        index,
        map: &raw,
    };
    let id = match f.string("uuid")? {
        None => {
            return Err(ConfigError::MissingId {
                path: path.to_owned(),
                index,
            })
        }
        Some("") => {
            return Err(ConfigError::EmptyId {
                path: path.to_owned(),
                index,
            })
        }
        Some(id) => AccountId::new(id),
    };

    let mut file = f.non_empty("KIRO_OAUTH_CREDS_FILE_PATH")?;
    let encoded = f.non_empty(INLINE_CREDENTIALS)?;
    let api_key = f.non_empty("apiKey")?;
    let bearer = f.non_empty("bearerToken")?;
    let header = f.non_empty("headerName")?;
    // The older system's precedence, for this account only (it never overrides others).
    let file_path_ignored = encoded.is_some() && file.is_some();
    if file_path_ignored {
        file = None;
    }
    let given: Vec<&str> = [
        ("apiKey", api_key.is_some()),
        ("bearerToken", bearer.is_some()),
        ("KIRO_OAUTH_CREDS_FILE_PATH", file.is_some()),
        (INLINE_CREDENTIALS, encoded.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if given.len() > 1 {
        return Err(ConfigError::ConflictingCredentials {
            path: path.to_owned(),
            index,
            fields: given
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    if header.is_some() && api_key.is_none() {
        return Err(f.invalid("headerName", "is set but `apiKey` is not"));
    }
    let credential = if let Some(key) = api_key {
        let header = header.unwrap_or(DEFAULT_API_KEY_HEADER);
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err(f.invalid("headerName", "is not a valid HTTP header name"));
        }
        if ApiKey::new(header, key).is_err() {
            return Err(f.invalid("apiKey", "is not a valid HTTP header value"));
        }
        CredentialSpec::ApiKey {
            header: header.to_owned(),
            key: key.to_owned(),
        }
    } else if let Some(token) = bearer {
        if BearerToken::try_new(token).is_err() {
            return Err(f.invalid("bearerToken", "is not a valid HTTP header value"));
        }
        CredentialSpec::BearerToken(token.to_owned())
    } else if let Some(file) = file {
        CredentialSpec::File(PathBuf::from(file))
    } else if let Some(encoded) = encoded {
        CredentialSpec::Inline(
            decode_inline_credentials(encoded)
                .map_err(|problem| f.invalid(INLINE_CREDENTIALS, problem))?,
        )
    } else {
        CredentialSpec::None
    };

    let defaults = AccountSettings::default();
    let settings = AccountSettings {
        enabled: !f.bool("isDisabled")?.unwrap_or(false),
        models: f.strings("models")?,
        not_supported_models: f.strings("notSupportedModels")?.unwrap_or_default(),
        weight: f.positive_u32("weight", "")?.unwrap_or(defaults.weight),
        priority: f.u32("priority")?.unwrap_or(defaults.priority),
        max_in_flight: f.positive_u32("maxInFlight", " (leave it out for no limit)")?,
        probe_model: f
            .string("checkModelName")?
            .filter(|m| !m.is_empty())
            .map(str::to_owned),
        base_url: f.non_empty("baseUrl")?.map(str::to_owned),
    };

    let state = FileState {
        is_healthy: f.bool("isHealthy")?,
        error_count: f.u32("errorCount")?,
        usage_count: f.u64("usageCount")?,
        last_used: f.time("lastUsed")?,
        last_error_time: f.time("lastErrorTime")?,
        last_error_message: f.string("lastErrorMessage")?.map(str::to_owned),
        last_health_check_time: f.time("lastHealthCheckTime")?,
        last_health_check_model: f.string("lastHealthCheckModel")?.map(str::to_owned),
        check_health: f.bool("checkHealth")?,
        cached_email: f.string("cachedEmail")?.map(str::to_owned),
        cached_user_id: f.string("cachedUserId")?.map(str::to_owned),
    };

    Ok(AccountEntry {
        index,
        id,
        settings,
        credential,
        state,
        raw,
        file_path_ignored,
    })
}
