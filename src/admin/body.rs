//! Request bodies of `POST /accounts` and `PATCH /accounts/{id}`, validated field by field.
//!
//! Bodies are read as JSON values and checked by hand so that every message is ours: serde's
//! messages quote the offending value, which could be a secret.

use serde_json::{Map, Value};

use super::error::{shorten, ApiError};
use crate::account::{Account, AccountSettings};
use crate::credential::{ApiKey, BearerToken};

/// The header an `apiKey` goes in when the body names none.
pub(crate) const DEFAULT_API_KEY_HEADER: &str = "x-api-key";

const SETTING_FIELDS: &[&str] = &[
    "enabled",
    "models",
    "notSupportedModels",
    "weight",
    "priority",
    "maxInFlight",
    "probeModel",
    "baseUrl",
];

const CREDENTIAL_FIELDS: &[&str] = &["bearerToken", "apiKey", "headerName"];

const MAX_ID_CHARS: usize = 128;
const MAX_SECRET_BYTES: usize = 16 * 1024;
const MAX_MODEL_CHARS: usize = 200;
const MAX_MODELS: usize = 1000;
const MAX_URL_CHARS: usize = 2048;

/// A settings change from `PATCH /accounts/{id}`. `None` leaves a field alone; for nullable
/// settings, `Some(None)` clears it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SettingsPatch {
    pub(crate) enabled: Option<bool>,
    pub(crate) models: Option<Option<Vec<String>>>,
    pub(crate) not_supported_models: Option<Vec<String>>,
    pub(crate) weight: Option<u32>,
    pub(crate) priority: Option<u32>,
    pub(crate) max_in_flight: Option<Option<u32>>,
    pub(crate) probe_model: Option<Option<String>>,
    pub(crate) base_url: Option<Option<String>>,
}

impl SettingsPatch {
    /// Applies everything but `enabled` (which goes through `Pool::enable`/`disable` so the
    /// change is announced).
    pub(crate) fn apply(&self, s: &mut AccountSettings) {
        if let Some(models) = &self.models {
            s.models = models.clone();
        }
        if let Some(denied) = &self.not_supported_models {
            s.not_supported_models = denied.clone();
        }
        if let Some(weight) = self.weight {
            s.weight = weight;
        }
        if let Some(priority) = self.priority {
            s.priority = priority;
        }
        if let Some(max) = self.max_in_flight {
            s.max_in_flight = max;
        }
        if let Some(model) = &self.probe_model {
            s.probe_model = model.clone();
        }
        if let Some(url) = &self.base_url {
            s.base_url = url.clone();
        }
    }
}

/// Parses the body of `PATCH /accounts/{id}`.
pub(crate) fn parse_patch(bytes: &[u8]) -> Result<SettingsPatch, ApiError> {
    let map = object(bytes)?;
    reject_unknown(&map, &[SETTING_FIELDS])?;
    if map.is_empty() {
        return Err(ApiError::bad_request(format!(
            "the body changes nothing: give at least one of {}",
            list(SETTING_FIELDS)
        )));
    }
    settings_patch(&map)
}

/// Parses and validates the body of `POST /accounts` into an account.
pub(crate) fn parse_new_account(bytes: &[u8]) -> Result<Account, ApiError> {
    let map = object(bytes)?;
    reject_unknown(&map, &[&["id", "uuid"], CREDENTIAL_FIELDS, SETTING_FIELDS])?;
    let id = match (map.get("id"), map.get("uuid")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either `id` or `uuid` (its older name), not both",
            ))
        }
        (Some(v), None) => string(v, "id")?,
        (None, Some(v)) => string(v, "uuid")?,
        (None, None) => return Err(ApiError::bad_request("`id` is required")),
    };
    validate_id(&id)?;

    let bearer = map.get("bearerToken");
    let api_key = map.get("apiKey");
    let header = map.get("headerName");
    let account = match (bearer, api_key) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either `bearerToken` or `apiKey`, not both",
            ))
        }
        (Some(token), None) => {
            if header.is_some() {
                return Err(ApiError::bad_request("`headerName` only applies with `apiKey`"));
            }
            let token = secret(token, "bearerToken")?;
            let credential = BearerToken::try_new(&token).map_err(|_| {
                ApiError::bad_request("`bearerToken` is not a valid HTTP header value")
            })?;
            Account::new(id, credential)
        }
        (None, Some(key)) => {
            let key = secret(key, "apiKey")?;
            let header = match header {
                Some(v) => string(v, "headerName")?,
                None => DEFAULT_API_KEY_HEADER.to_owned(),
            };
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(ApiError::bad_request(format!(
                    "`headerName` `{}` is not a valid HTTP header name",
                    shorten(&header)
                )));
            }
            let credential = ApiKey::new(&header, &key)
                .map_err(|_| ApiError::bad_request("`apiKey` is not a valid HTTP header value"))?;
            Account::new(id, credential)
        }
        (None, None) => {
            return Err(ApiError::bad_request(format!(
                "a credential is required: `bearerToken`, or `apiKey` with an optional `headerName` (default `{DEFAULT_API_KEY_HEADER}`)"
            )))
        }
    };

    let patch = settings_patch(&map)?;
    let mut settings = AccountSettings::default();
    patch.apply(&mut settings);
    if let Some(enabled) = patch.enabled {
        settings.enabled = enabled;
    }
    Ok(account.with_settings(settings))
}

fn settings_patch(map: &Map<String, Value>) -> Result<SettingsPatch, ApiError> {
    let mut patch = SettingsPatch::default();
    if let Some(v) = map.get("enabled") {
        patch.enabled = Some(
            v.as_bool()
                .ok_or_else(|| ApiError::bad_request("`enabled` must be true or false"))?,
        );
    }
    if let Some(v) = map.get("models") {
        patch.models = Some(match v {
            Value::Null => None,
            v => {
                let models = models(v, "models")?;
                if models.is_empty() {
                    return Err(ApiError::bad_request(
                        "`models` must not be empty: use null to allow every model",
                    ));
                }
                Some(models)
            }
        });
    }
    if let Some(v) = map.get("notSupportedModels") {
        patch.not_supported_models = Some(match v {
            Value::Null => Vec::new(),
            v => models(v, "notSupportedModels")?,
        });
    }
    if let Some(v) = map.get("weight") {
        patch.weight = Some(positive(v, "weight")?);
    }
    if let Some(v) = map.get("priority") {
        patch.priority = Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::bad_request("`priority` must be an integer from 0 to 4294967295")
                })?,
        );
    }
    if let Some(v) = map.get("maxInFlight") {
        patch.max_in_flight = Some(match v {
            Value::Null => None,
            v => Some(positive(v, "maxInFlight")?),
        });
    }
    if let Some(v) = map.get("probeModel") {
        patch.probe_model = Some(match v {
            Value::Null => None,
            v => Some(model(v, "probeModel")?),
        });
    }
    if let Some(v) = map.get("baseUrl") {
        patch.base_url = Some(match v {
            Value::Null => None,
            v => Some(base_url(v)?),
        });
    }
    Ok(patch)
}

fn object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the body is empty: send a JSON object",
        ));
    }
    // serde_json's syntax errors name a line and column, never the input.
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::bad_request("the body must be a JSON object")),
    }
}

fn reject_unknown(map: &Map<String, Value>, known: &[&[&str]]) -> Result<(), ApiError> {
    let allowed = || known.iter().flat_map(|k| k.iter().copied());
    for key in map.keys() {
        if !allowed().any(|k| k == key) {
            let all: Vec<&str> = allowed().collect();
            return Err(ApiError::bad_request(format!(
                "unknown field `{}`; expected one of {}",
                shorten(key),
                list(&all)
            )));
        }
    }
    Ok(())
}

fn list(fields: &[&str]) -> String {
    fields
        .iter()
        .map(|f| format!("`{f}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn string(v: &Value, field: &str) -> Result<String, ApiError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request(format!("`{field}` must be a string")))
}

fn secret(v: &Value, field: &str) -> Result<String, ApiError> {
    let s = string(v, field)?;
    if s.trim().is_empty() {
        return Err(ApiError::bad_request(format!(
            "`{field}` must not be empty"
        )));
    }
    if s.len() > MAX_SECRET_BYTES {
        return Err(ApiError::bad_request(format!(
            "`{field}` is longer than {MAX_SECRET_BYTES} bytes"
        )));
    }
    Ok(s)
}

fn positive(v: &Value, field: &str) -> Result<u32, ApiError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n >= 1)
        .ok_or_else(|| {
            ApiError::bad_request(format!("`{field}` must be an integer from 1 to 4294967295"))
        })
}

fn model(v: &Value, field: &str) -> Result<String, ApiError> {
    let name = v.as_str().ok_or_else(|| {
        ApiError::bad_request(format!("`{field}` must be a model name (a string)"))
    })?;
    if name.is_empty()
        || name.chars().count() > MAX_MODEL_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "`{field}`: a model name must be 1 to {MAX_MODEL_CHARS} characters without control characters"
        )));
    }
    Ok(name.to_owned())
}

fn models(v: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    let items = v.as_array().ok_or_else(|| {
        ApiError::bad_request(format!("`{field}` must be an array of model names"))
    })?;
    if items.len() > MAX_MODELS {
        return Err(ApiError::bad_request(format!(
            "`{field}` has more than {MAX_MODELS} entries"
        )));
    }
    let mut names: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let name = model(item, field)?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

fn base_url(v: &Value) -> Result<String, ApiError> {
    let url = v
        .as_str()
        .ok_or_else(|| ApiError::bad_request("`baseUrl` must be a string"))?;
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let Some(rest) = rest else {
        return Err(ApiError::bad_request(
            "`baseUrl` must start with http:// or https://",
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(ApiError::bad_request("`baseUrl` has no host"));
    }
    if authority.contains('@') {
        return Err(ApiError::bad_request(
            "`baseUrl` must not contain credentials (user:password@)",
        ));
    }
    if rest.contains(['?', '#']) {
        // A query is where keys hide (`?key=...`); credentials belong in the account's.
        return Err(ApiError::bad_request(
            "`baseUrl` must not have a query or fragment (put keys in the credential)",
        ));
    }
    if url.chars().count() > MAX_URL_CHARS
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::bad_request(format!(
            "`baseUrl` must be at most {MAX_URL_CHARS} characters without spaces"
        )));
    }
    Ok(url.to_owned())
}

fn validate_id(id: &str) -> Result<(), ApiError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._:@+-".contains(c);
    if id.is_empty() {
        return Err(ApiError::bad_request("`id` must not be empty"));
    }
    if id.chars().count() > MAX_ID_CHARS || !id.chars().all(allowed) {
        return Err(ApiError::bad_request(format!(
            "`id` may only contain letters, digits and `. _ : @ + -`, at most {MAX_ID_CHARS} characters"
        )));
    }
    if matches!(id, "reset" | "." | "..") {
        // `/accounts/reset` resets every account; `.` and `..` are folded away by browsers.
        return Err(ApiError::bad_request(
            "`id` must not be `reset`, `.` or `..`: the admin API could not address it",
        ));
    }
    Ok(())
}

/// The base URL for display: any `user:password@` replaced by `***@`, every query value by
/// `***` (a pool file may hold `?key=...`), a fragment dropped.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let rest = rest.split('#').next().unwrap_or("");
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let mut shown = match authority.rfind('@') {
        Some(at) => format!("{scheme}***@{}{path}", &authority[at + 1..]),
        None => format!("{scheme}{authority}{path}"),
    };
    if let Some(query) = query {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) => format!("{name}=***"),
                None => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&masked.join("&"));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo_and_query_values() {
        assert_eq!(
            redact_url("https://user:pw@example.test/v1?x=@"),
            "https://***@example.test/v1?x=***"
        );
        assert_eq!(
            redact_url("https://example.test/a@b"),
            "https://example.test/a@b"
        );
        assert_eq!(
            redact_url("https://example.test/v1?key=AIzaSECRET&alt=sse&flag#frag"),
            "https://example.test/v1?key=***&alt=***&flag"
        );
        assert_eq!(redact_url("http://up.test"), "http://up.test");
    }

    #[test]
    fn patch_nulls_clear() {
        let patch = parse_patch(br#"{"models": null, "maxInFlight": null}"#).unwrap();
        assert_eq!(patch.models, Some(None));
        assert_eq!(patch.max_in_flight, Some(None));
    }
}
