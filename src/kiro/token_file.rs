//! Kiro token files: reading every known shape, and rewriting them atomically.
//!
//! Shapes read (see the crate's Kiro reference): the Kiro IDE social login (`authMethod: social`,
//! `profileArn`), Builder ID / IdC (`clientId`, `clientSecret`, `authMethod: IdC`, `region`), the
//! web callback (epoch-millisecond `expiresAt`, no `authMethod`), and the manual import
//! (`authMethod: manual-import`, refreshed as social). Write-back reads the file again, changes
//! only the token fields and keeps every other field, then replaces the file atomically: a temp
//! file in the same directory (mode 0600), fsync, rename, fsync of the directory.
//!
//! ```
//! use tower_account_pool::kiro::token_file::{format_iso8601, parse_iso8601};
//! use std::time::{Duration, UNIX_EPOCH};
//!
//! let t = parse_iso8601("2026-01-31T23:59:58.250Z").unwrap();
//! assert_eq!(format_iso8601(t), "2026-01-31T23:59:58.250Z");
//! let offset = parse_iso8601("2026-02-01T01:59:58.250+02:00").unwrap();
//! assert_eq!(offset, t);
//! assert_eq!(parse_iso8601("1970-01-01T00:00:01Z"), Some(UNIX_EPOCH + Duration::from_secs(1)));
//! ```

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::credential::{AuthMethod, KiroError};

/// How a file wrote `expiresAt`, kept so a rewrite uses the same form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpiryFormat {
    /// An ISO 8601 string (`toISOString()`).
    Iso,
    /// Milliseconds since the epoch (the web callback).
    EpochMs,
}

/// The fields read from a token file or inline credentials, validated.
#[derive(Clone)]
pub(crate) struct TokenFields {
    pub(crate) access_token: Option<String>,
    pub(crate) refresh_token: Option<String>,
    pub(crate) expires_at: Option<SystemTime>,
    pub(crate) expiry_format: ExpiryFormat,
    pub(crate) auth_method: AuthMethod,
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret: Option<String>,
    pub(crate) profile_arn: Option<String>,
    pub(crate) region: String,
}

/// Where fields came from, for error messages.
pub(crate) fn origin_name(path: Option<&Path>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => "<inline credentials>".to_owned(),
    }
}

/// Parses token-file JSON. Errors name the file and never contain a token.
pub(crate) fn parse(bytes: &[u8], path: Option<&Path>) -> Result<TokenFields, KiroError> {
    let origin = origin_name(path);
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Eof => "unexpected end of file",
            _ => "syntax error",
        };
        KiroError::Json {
            path: origin.clone(),
            detail: format!("{what} at line {} column {}", e.line(), e.column()),
        }
    })?;
    let Value::Object(map) = value else {
        return Err(KiroError::NotAnObject { path: origin });
    };
    from_map(&map, &origin)
}

fn string_field(
    map: &Map<String, Value>,
    field: &'static str,
    origin: &str,
) -> Result<Option<String>, KiroError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
        Some(_) => Err(KiroError::InvalidField {
            path: origin.to_owned(),
            field,
            expected: "a string",
        }),
    }
}

pub(crate) fn from_map(map: &Map<String, Value>, origin: &str) -> Result<TokenFields, KiroError> {
    let access_token = string_field(map, "accessToken", origin)?;
    let refresh_token = string_field(map, "refreshToken", origin)?;
    if access_token.is_none() && refresh_token.is_none() {
        return Err(KiroError::MissingField {
            path: origin.to_owned(),
            field: "refreshToken",
            hint: "a token file needs a refreshToken (or at least an accessToken)",
        });
    }
    let client_id = string_field(map, "clientId", origin)?;
    let client_secret = string_field(map, "clientSecret", origin)?;
    let profile_arn = string_field(map, "profileArn", origin)?;
    let region = string_field(map, "region", origin)?.unwrap_or_else(|| "us-east-1".to_owned());
    if !region
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(KiroError::InvalidField {
            path: origin.to_owned(),
            field: "region",
            expected: "an AWS region such as us-east-1",
        });
    }
    let (expires_at, expiry_format) = match map.get("expiresAt") {
        None | Some(Value::Null) => (None, ExpiryFormat::Iso),
        Some(Value::Number(n)) => {
            let ms = n
                .as_f64()
                .filter(|ms| *ms >= 0.0)
                .ok_or(KiroError::InvalidField {
                    path: origin.to_owned(),
                    field: "expiresAt",
                    expected: "an ISO 8601 date or epoch milliseconds",
                })?;
            (
                UNIX_EPOCH.checked_add(Duration::from_millis(ms as u64)),
                ExpiryFormat::EpochMs,
            )
        }
        Some(Value::String(s)) => {
            let parsed = parse_iso8601(s.trim()).or_else(|| {
                s.trim()
                    .parse::<u64>()
                    .ok()
                    .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
            });
            match parsed {
                Some(t) => (Some(t), ExpiryFormat::Iso),
                None => {
                    return Err(KiroError::InvalidField {
                        path: origin.to_owned(),
                        field: "expiresAt",
                        expected: "an ISO 8601 date or epoch milliseconds",
                    })
                }
            }
        }
        Some(_) => {
            return Err(KiroError::InvalidField {
                path: origin.to_owned(),
                field: "expiresAt",
                expected: "an ISO 8601 date or epoch milliseconds",
            })
        }
    };
    let auth_method = match string_field(map, "authMethod", origin)? {
        Some(method) => AuthMethod::parse(&method).ok_or(KiroError::InvalidField {
            path: origin.to_owned(),
            field: "authMethod",
            expected: "`social`, `IdC` (also `builder-id`, `iam`) or `manual-import`",
        })?,
        None if client_id.is_some() || client_secret.is_some() => AuthMethod::Idc,
        None => AuthMethod::Social,
    };
    if auth_method == AuthMethod::Idc {
        let missing = match (&client_id, &client_secret) {
            (None, None) => Some("clientId and clientSecret"),
            (None, Some(_)) => Some("clientId"),
            (Some(_), None) => Some("clientSecret"),
            _ => None,
        };
        if let Some(missing) = missing {
            return Err(KiroError::IdcWithoutClient {
                path: origin.to_owned(),
                missing,
            });
        }
    }
    Ok(TokenFields {
        access_token,
        refresh_token,
        expires_at,
        expiry_format,
        auth_method,
        client_id,
        client_secret,
        profile_arn,
        region,
    })
}

/// What a refresh changed, to be merged into the file.
pub(crate) struct TokenUpdate<'a> {
    pub(crate) access_token: &'a str,
    pub(crate) refresh_token: Option<&'a str>,
    pub(crate) expires_at: SystemTime,
    pub(crate) expiry_format: ExpiryFormat,
    pub(crate) profile_arn: Option<&'a str>,
}

/// Errors while writing a token file back; they never hold a token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteBackError {
    #[error("cannot write Kiro token file `{path}`: {source}")]
    Io { path: String, source: io::Error },
    #[error("Kiro token file `{path}` is no longer a JSON object; left as it is")]
    Corrupt { path: String },
    #[error("Kiro token file `{path}` was removed; it is not recreated")]
    Removed { path: String },
}

/// Reads the file again, merges the update over it (unknown fields kept) and replaces it
/// atomically. A file that was removed is not recreated (an operator removed it, and a file of
/// tokens alone would lose the auth method and client credentials); a file that no longer
/// parses is left untouched. Either way the caller keeps the tokens in memory.
pub(crate) fn write_back(path: &Path, update: &TokenUpdate<'_>) -> Result<(), WriteBackError> {
    let name = path.display().to_string();
    let io_err = |source| WriteBackError::Io {
        path: name.clone(),
        source,
    };
    let mut map = match fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => map,
            _ => return Err(WriteBackError::Corrupt { path: name }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(WriteBackError::Removed { path: name })
        }
        Err(e) => return Err(io_err(e)),
    };
    map.insert(
        "accessToken".into(),
        Value::String(update.access_token.into()),
    );
    if let Some(refresh) = update.refresh_token {
        map.insert("refreshToken".into(), Value::String(refresh.into()));
    }
    let expires = match update.expiry_format {
        ExpiryFormat::Iso => Value::String(format_iso8601(update.expires_at)),
        ExpiryFormat::EpochMs => Value::from(
            update
                .expires_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        ),
    };
    map.insert("expiresAt".into(), expires);
    if let Some(arn) = update.profile_arn {
        map.insert("profileArn".into(), Value::String(arn.into()));
    }
    let mut bytes = serde_json::to_vec_pretty(&Value::Object(map)).expect("JSON values serialize");
    bytes.push(b'\n');
    atomic_write(path, &bytes).map_err(io_err)
}

/// Replaces `path` with `bytes`: temp file in the same directory (mode 0600), fsync, rename,
/// fsync of the directory. Readers see the old file or the new one, never a partial one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    crate::private_file::replace(path, bytes)
}

/// Takes the advisory lock that serialises refreshes of one token file across processes
/// (`<file>.lock` beside it). Blocking: call it from a blocking thread.
pub(crate) fn lock_file(path: &Path) -> io::Result<File> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(PathBuf::from(lock_path))?;
    file.lock()?;
    Ok(file)
}

// ===== dates =====

/// Parses an ISO 8601 / RFC 3339 date-time (`Z` or `±hh:mm`, optional fraction; a space or
/// `T` between date and time). The day is checked against its month; a leap second (`:60`)
/// reads as the next minute's `:00`. Dates before 1970 are rejected. The crate's one
/// timestamp parser: pool files and the SQLite store read dates with it too.
pub fn parse_iso8601(s: &str) -> Option<SystemTime> {
    crate::time::parse(s)
}

/// Formats a time as JavaScript's `toISOString()` does: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_iso8601(t: SystemTime) -> String {
    crate::time::format_iso(&t)
}

/// The first instant of the month after `t`, UTC (when Kiro's monthly quota resets if the usage
/// probe has not said otherwise).
pub fn first_of_next_month_utc(t: SystemTime) -> SystemTime {
    crate::time::first_of_next_month(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trips_and_rejects_garbage() {
        for s in [
            "2026-11-26T10:08:30.000Z",
            "2000-02-29T00:00:00.999Z",
            "2099-12-31T23:59:59.001Z",
        ] {
            assert_eq!(format_iso8601(parse_iso8601(s).unwrap()), s);
        }
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "tomorrow",
            "2026-01-01T00:00:00+0100",
            "2026-01-01",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_input() {
        let alphabet: Vec<char> = "0123456789-:T.Z+ zé€\"{}[],acdefiknorstuxAHISR"
            .chars()
            .collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(..32);
            let s: String = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let _ = parse_iso8601(&s);
            let mut date = String::from("2026-01-01T00:00:00");
            date.push_str(&s);
            let _ = parse_iso8601(&date);
            let _ = parse(s.as_bytes(), None);
        }
        // Offsets with multi-byte characters where the colon should be.
        assert_eq!(parse_iso8601("2026-01-01T00:00:00+1é00"), None);
        for _ in 0..2_000 {
            let json = format!(
                r#"{{"refreshToken":"r","expiresAt":{},"authMethod":"{}"}}"#,
                ["1", "\"2026-01-01T00:00:00Z\"", "-5", "1e300", "null", "[]"][rng.usize(..6)],
                ["social", "IdC", "x", ""][rng.usize(..4)]
            );
            let _ = parse(json.as_bytes(), None);
        }
    }

    #[test]
    fn next_month_wraps_the_year() {
        let dec = parse_iso8601("2026-12-15T08:00:00Z").unwrap();
        assert_eq!(
            format_iso8601(first_of_next_month_utc(dec)),
            "2027-01-01T00:00:00.000Z"
        );
        let jan31 = parse_iso8601("2026-01-31T23:59:59Z").unwrap();
        assert_eq!(
            format_iso8601(first_of_next_month_utc(jan31)),
            "2026-02-01T00:00:00.000Z"
        );
    }
}
