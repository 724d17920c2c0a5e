//! Reading an account object: each field checked for its type, errors naming the file, the
//! index and the field.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::entry::{
    decode_inline_credentials, AccountEntry, CredentialSpec, FileState, INLINE_CREDENTIALS,
};
use super::DEFAULT_API_KEY_HEADER;
use crate::account::{AccountId, AccountSettings};
use crate::config::error::{describe, ConfigError};
use crate::credential::{ApiKey, BearerToken};
use crate::time::parse as parse_timestamp;

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
