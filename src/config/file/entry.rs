//! One account of a pool file: its settings, its credential ([`CredentialSpec`]), the older
//! system's state fields ([`FileState`]) and the object as it was read.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value};

use super::DERIVED_FIELDS;
use crate::account::{Account, AccountId, AccountSettings};
use crate::config::credential::{CredentialResolver, OpenedCredential};
use crate::credential::{ApiKey, BearerToken, NoCredential, SharedCredential};
use crate::health::{HealthState, LastError, OutcomeClass};
use crate::pool::{Counters, PersistedState};

/// The older system's field for inline credentials.
pub(super) const INLINE_CREDENTIALS: &str = "KIRO_OAUTH_CREDS_BASE64";

/// Decodes `KIRO_OAUTH_CREDS_BASE64`: base64 (standard alphabet, padding optional) of a JSON
/// object. The problem, if any, never quotes the value.
pub(super) fn decode_inline_credentials(encoded: &str) -> Result<String, &'static str> {
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
    pub(super) index: usize,
    pub(super) id: AccountId,
    pub(super) settings: AccountSettings,
    pub(super) credential: CredentialSpec,
    pub(super) state: FileState,
    pub(super) raw: Map<String, Value>,
    /// Both `KIRO_OAUTH_CREDS_BASE64` and `KIRO_OAUTH_CREDS_FILE_PATH` were set: the file is
    /// not read (warned about at load).
    pub(super) file_path_ignored: bool,
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
