//! [`HttpClassifier`]: status, `Retry-After` and the error shapes of Anthropic and OpenAI.

use std::time::SystemTime;

use http::{HeaderMap, StatusCode};

use super::{retry_after, Classifier, HeadVerdict};
use crate::health::Outcome;

/// The default classifier for HTTP upstreams.
///
/// Account-level outcomes come from structure — the status, headers and the error's `type`,
/// `code` and `reason` fields — never from the error's free-text `message`, which an upstream
/// may fill with text echoed from the client's request: a client must not be able to make an
/// account or a model unavailable by choosing its words. Text is read in one case only: when
/// the status already makes the answer the account's (402, 403), it may pick the *milder* of
/// the two outcomes that status allows (a quota that resets rather than a suspension; an
/// expired token that is refreshed rather than a refused one), never the harsher.
///
/// | status | outcome |
/// |---|---|
/// | 1xx, 2xx, 3xx | `Success` |
/// | 401 | `AuthExpired` (the layer refreshes the credential and retries once on the same account) |
/// | 402 | `QuotaExhausted` if the error's type, code or reason is a quota one (`insufficient_quota`, `billing_hard_limit_reached`, `MONTHLY_REQUEST_COUNT`, …) or its message speaks of quota or credits; else `Suspended` |
/// | 403 | `AuthExpired` for `authentication_error`, `invalid_api_key`, an expired or invalid token (type, code, or a message about an invalid or expired token); `Suspended` for a suspension type or code (`account_suspended`, `account_deactivated`, `organization_deactivated`, …); else `AuthInvalid` |
/// | 404 | `ModelUnsupported` for the code or type `model_not_found`; else `ClientError` |
/// | 405, 501 | `ClientError`: the request's method, not the account |
/// | 408 | `Transient` |
/// | 429 | `QuotaExhausted` for `insufficient_quota`; else `RateLimited` with the upstream's `retry-after-ms` or `Retry-After` |
/// | 400 | `ModelUnsupported` for `model_not_found`; `QuotaExhausted` for `insufficient_quota`; else `ClientError` (whatever its message says) |
/// | other 4xx | `ClientError` |
/// | other 5xx (including Anthropic's 529) | `Transient` |
///
/// Bodies of 400, 402, 403, 404 and 429 answers are read up to
/// [`body_limit`](Self::body_limit) bytes to find the error's `type`, `code` and `reason`
/// (Anthropic: `{"type":"error","error":{"type":…,"message":…}}`; OpenAI:
/// `{"error":{"type":…,"code":…,"message":…}}`).
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tower_account_pool::classify::{Classifier, HeadVerdict, HttpClassifier};
///
/// // Read at most 4 KiB of an error body.
/// let classifier = HttpClassifier::new().body_limit(4096);
/// let verdict = classifier.classify_head(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new());
/// assert_eq!(verdict, HeadVerdict::ReadBody { limit: 4096 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpClassifier {
    /// Most bytes of an error body read to classify it.
    body_limit: usize,
}

impl Default for HttpClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClassifier {
    /// The default classifier: error bodies are read up to 16 KiB.
    pub const fn new() -> Self {
        HttpClassifier {
            body_limit: 16 * 1024,
        }
    }

    /// Most bytes of an error body read to classify it (default 16 KiB).
    pub const fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }
}

/// The fields of a well-known JSON error body, lower-cased.
#[derive(Debug, Default)]
struct ErrorBody {
    kind: String,
    code: String,
    reason: String,
    /// Free text: may echo the client's request, so it never decides an account-level outcome.
    message: String,
}

/// Error types and codes of a suspended, banned or deactivated account.
const SUSPENSION_CODES: &[&str] = &[
    "account_suspended",
    "account_deactivated",
    "account_disabled",
    "account_banned",
    "organization_suspended",
    "organization_deactivated",
    "organization_disabled",
    "access_terminated",
    "suspended",
];

/// Error types, codes and reasons of an exhausted quota.
const QUOTA_CODES: &[&str] = &[
    "insufficient_quota",
    "billing_hard_limit_reached",
    "quota_exceeded",
    "monthly_request_count",
    "servicequotaexceededexception",
];

/// Error types and codes of an expired or invalid credential.
const TOKEN_CODES: &[&str] = &[
    "authentication_error",
    "invalid_api_key",
    "invalid_token",
    "expired_token",
    "token_expired",
    "expiredtokenexception",
    "invalidtokenexception",
];

impl ErrorBody {
    fn parse(body: &[u8]) -> ErrorBody {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            // Not JSON (or truncated): no structure to read; the text is only a message.
            return ErrorBody {
                message: String::from_utf8_lossy(body).to_lowercase(),
                ..ErrorBody::default()
            };
        };
        let error = value.get("error").unwrap_or(&value);
        let text = |v: Option<&serde_json::Value>| {
            v.and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_lowercase()
        };
        let message = match error {
            serde_json::Value::String(s) => s.to_lowercase(),
            _ => text(error.get("message").or_else(|| value.get("message"))),
        };
        ErrorBody {
            kind: text(error.get("type").or_else(|| value.get("__type"))),
            code: text(error.get("code")),
            reason: text(error.get("reason").or_else(|| value.get("reason"))),
            message,
        }
    }

    /// Whether the type, code or reason is one of `names` (lower case).
    fn is_any(&self, names: &[&str]) -> bool {
        [&self.kind, &self.code, &self.reason]
            .iter()
            .any(|field| !field.is_empty() && names.contains(&field.as_str()))
    }

    fn is(&self, name: &str) -> bool {
        self.is_any(&[name])
    }

    fn mentions(&self, words: &[&str]) -> bool {
        words.iter().any(|w| self.message.contains(w))
    }
}

impl Classifier for HttpClassifier {
    fn classify_head(&self, status: StatusCode, headers: &HeaderMap) -> HeadVerdict {
        let _ = headers;
        match status.as_u16() {
            100..=399 => HeadVerdict::Final(Outcome::Success),
            401 => HeadVerdict::Final(Outcome::AuthExpired),
            400 | 402 | 403 | 404 | 429 => HeadVerdict::ReadBody {
                limit: self.body_limit,
            },
            408 => HeadVerdict::Final(Outcome::Transient),
            400..=499 | 501 => HeadVerdict::Final(Outcome::ClientError),
            _ => HeadVerdict::Final(Outcome::Transient),
        }
    }

    fn classify_body(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        _complete: bool,
    ) -> Outcome {
        let error = ErrorBody::parse(body);
        let quota = error.is_any(QUOTA_CODES);
        match status.as_u16() {
            429 if quota => Outcome::QuotaExhausted { reset_at: None },
            429 => Outcome::rate_limited(retry_after(headers, SystemTime::now())),
            402 if quota || error.mentions(&["quota", "credit", "request count"]) => {
                Outcome::QuotaExhausted { reset_at: None }
            }
            402 => Outcome::Suspended,
            403 if error.is_any(SUSPENSION_CODES) => Outcome::Suspended,
            403 if error.is_any(TOKEN_CODES)
                || (error.mentions(&["token", "api key", "credential"])
                    && error.mentions(&["invalid", "expired"])) =>
            {
                Outcome::AuthExpired
            }
            403 => Outcome::AuthInvalid,
            404 | 400 if error.is("model_not_found") => Outcome::ModelUnsupported,
            400 if quota => Outcome::QuotaExhausted { reset_at: None },
            _ => Outcome::ClientError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(status: u16, body: &str) -> Outcome {
        let status = StatusCode::from_u16(status).unwrap();
        let c = HttpClassifier::default();
        match c.classify_head(status, &HeaderMap::new()) {
            HeadVerdict::Final(o) => o,
            _ => c.classify_body(status, &HeaderMap::new(), body.as_bytes(), true),
        }
    }

    #[test]
    fn statuses_and_error_shapes() {
        assert_eq!(body(200, ""), Outcome::Success);
        assert_eq!(body(401, ""), Outcome::AuthExpired);
        assert_eq!(body(500, ""), Outcome::Transient);
        assert_eq!(body(529, ""), Outcome::Transient);
        assert_eq!(body(408, ""), Outcome::Transient);
        assert_eq!(body(422, ""), Outcome::ClientError);
        assert_eq!(body(413, ""), Outcome::ClientError);
        assert_eq!(
            body(
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: required"}}"#
            ),
            Outcome::ClientError
        );
        assert_eq!(
            body(
                404,
                r#"{"error":{"message":"The model `gpt-9` does not exist","type":"invalid_request_error","code":"model_not_found"}}"#
            ),
            Outcome::ModelUnsupported
        );
        // Free text never makes a model or an account unavailable: it may echo the client.
        assert_eq!(
            body(
                404,
                r#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-x not found"}}"#
            ),
            Outcome::ClientError
        );
        assert_eq!(body(404, "no such route"), Outcome::ClientError);
        assert_eq!(
            body(
                403,
                r#"{"message":"The bearer token included in the request is invalid."}"#
            ),
            Outcome::AuthExpired
        );
        assert_eq!(
            body(
                403,
                r#"{"message":"Your account is temporarily suspended."}"#
            ),
            Outcome::AuthInvalid,
            "a suspension is read from a type or code, not from text"
        );
        assert_eq!(
            body(
                403,
                r#"{"error":{"type":"permission_error","code":"account_deactivated","message":"x"}}"#
            ),
            Outcome::Suspended
        );
        assert_eq!(body(501, "not implemented"), Outcome::ClientError);
        assert_eq!(body(405, ""), Outcome::ClientError);
        assert_eq!(
            body(
                403,
                r#"{"type":"error","error":{"type":"permission_error","message":"no access"}}"#
            ),
            Outcome::AuthInvalid
        );
        assert_eq!(
            body(
                402,
                r#"{"reason":"MONTHLY_REQUEST_COUNT","message":"monthly request count reached"}"#
            ),
            Outcome::QuotaExhausted { reset_at: None }
        );
        assert_eq!(body(402, "payment required"), Outcome::Suspended);
        assert_eq!(
            body(402, r#"{"message":"you ran out of quota"}"#),
            Outcome::QuotaExhausted { reset_at: None },
            "text may pick the milder of a 402's two outcomes"
        );
        assert_eq!(
            body(
                429,
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}"#
            ),
            Outcome::rate_limited(None)
        );
    }
}
