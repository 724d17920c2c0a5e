//! The upstream token-refresh calls and how their failures are classified.
//!
//! Social accounts: `POST {social}/refreshToken` with `{"refreshToken"}`. IdC accounts:
//! `POST {oidc}/token` with `{"refreshToken","clientId","clientSecret","grantType":"refresh_token"}`.
//! A 400, 401 or 403 (`Invalid refresh token provided`, `invalid_grant`, …) means the refresh
//! token is dead: [`CredentialError::Invalid`]. Network errors, timeouts, 429 and 5xx pass:
//! [`CredentialError::Unavailable`]. No message ever contains a token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::credential::{AuthMethod, KiroOptions, DEFAULT_TOKEN_LIFETIME};

/// The longest token lifetime believed from a refresh answer.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 60 * 60);
use super::token_file::{parse_iso8601, TokenFields};
use crate::credential::CredentialError;

/// What a successful refresh returned.
pub(crate) struct Refreshed {
    pub(crate) access_token: String,
    pub(crate) refresh_token: Option<String>,
    pub(crate) profile_arn: Option<String>,
    pub(crate) expires_at: SystemTime,
}

/// A short, token-free description of an upstream error body.
pub(crate) fn upstream_message(body: &[u8], secrets: &[&str]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(v) => ["message", "Message", "error_description", "error"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    // Redacted before it is cut: a cut through a token would leave a prefix the replace
    // no longer matches.
    let mut text: String = text.chars().filter(|c| !c.is_control()).collect();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(secret, "<redacted>");
    }
    text.chars().take(200).collect()
}

pub(crate) async fn call(
    client: &reqwest::Client,
    options: &KiroOptions,
    fields: &TokenFields,
    refresh_token: &str,
    origin: &str,
) -> Result<Refreshed, CredentialError> {
    let (url, body, label) = match fields.auth_method {
        AuthMethod::Social => (
            options.endpoints.social(&fields.region),
            json!({ "refreshToken": refresh_token }),
            "social",
        ),
        AuthMethod::Idc => (
            options.endpoints.oidc(&fields.region),
            json!({
                "refreshToken": refresh_token,
                "clientId": fields.client_id,
                "clientSecret": fields.client_secret,
                "grantType": "refresh_token",
            }),
            "IdC",
        ),
    };
    let mut secrets = vec![refresh_token];
    secrets.extend(fields.access_token.as_deref());
    secrets.extend(fields.client_secret.as_deref());
    let response = client
        .post(&url)
        .timeout(options.http_timeout)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| {
            CredentialError::Unavailable(format!(
                "Kiro {label} token refresh for `{origin}` failed: {}",
                describe_network_error(&e)
            ))
        })?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| {
        CredentialError::Unavailable(format!(
            "Kiro {label} token refresh for `{origin}`: reading the answer failed: {}",
            describe_network_error(&e)
        ))
    })?;
    if !status.is_success() {
        let message = upstream_message(&bytes, &secrets);
        let what = format!(
            "Kiro {label} token refresh for `{origin}` answered HTTP {}: {message}",
            status.as_u16()
        );
        return Err(match status.as_u16() {
            400 | 401 | 403 => CredentialError::Invalid(format!(
                "{what}; the refresh token is no longer valid: sign in again and replace the token file"
            )),
            _ => CredentialError::Unavailable(what),
        });
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| {
        CredentialError::Unavailable(format!(
            "Kiro {label} token refresh for `{origin}` answered with invalid JSON"
        ))
    })?;
    let text = |k: &str| {
        value
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let access_token = text("accessToken").ok_or_else(|| {
        CredentialError::Unavailable(format!(
            "Kiro {label} token refresh for `{origin}` answered without an accessToken"
        ))
    })?;
    let now = SystemTime::now();
    // An upstream lifetime is capped at 30 days: absurd values must not overflow or pin a
    // token as fresh forever.
    let max = now + MAX_TOKEN_LIFETIME;
    let default = now + DEFAULT_TOKEN_LIFETIME;
    let expires_at = match (value.get("expiresIn"), value.get("expiresAt")) {
        (Some(Value::Number(n)), _) if n.as_f64().is_some_and(|s| s > 0.0) => n
            .as_f64()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .and_then(|d| now.checked_add(d))
            .map_or(max, |t| t.min(max)),
        (_, Some(Value::String(s))) => parse_iso8601(s).map_or(default, |t| t.min(max)),
        (_, Some(Value::Number(n))) => n
            .as_u64()
            .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
            .map_or(default, |t| t.min(max)),
        _ => default,
    };
    Ok(Refreshed {
        access_token,
        refresh_token: text("refreshToken"),
        profile_arn: text("profileArn"),
        expires_at,
    })
}

/// A network error without its URL's query (which could hold a profile ARN, never a token).
pub(crate) fn describe_network_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else if e.is_body() || e.is_decode() {
        "the connection broke while reading the answer".to_owned()
    } else {
        "the request failed (connection reset or protocol error)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_echoed_token_is_redacted_before_the_message_is_cut() {
        let token = format!("aoa{}", "x".repeat(300));
        let body = serde_json::json!({ "message": format!("bad token {token}") }).to_string();
        let message = upstream_message(body.as_bytes(), &[&token]);
        assert_eq!(message, "bad token <redacted>");
        assert!(!message.contains("aoax"));
    }
}
