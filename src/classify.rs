//! Classifiers: turn an upstream's answer into an [`Outcome`].
//!
//! The [layer](crate::layer) asks its [`Classifier`] about every response head. The classifier
//! either decides at once ([`HeadVerdict::Final`]), or asks to read a bounded prefix of the body
//! first ([`HeadVerdict::ReadBody`] for error bodies, [`HeadVerdict::Peek`] for an error sent
//! in-band at the start of a successful stream) and then decides in
//! [`Classifier::classify_body`]. Whatever was read is given back to the client unchanged.
//!
//! [`HttpClassifier`] is the default for HTTP upstreams: status, `Retry-After` (seconds or an
//! HTTP-date), `retry-after-ms`, and the error shapes of Anthropic and OpenAI.
//! [`GrpcClassifier`] reads the `grpc-status` of a trailers-only gRPC answer.
//!
//! ```
//! use std::time::Duration;
//! use http::{HeaderMap, StatusCode};
//! use tower_account_pool::classify::{Classifier, HeadVerdict, HttpClassifier};
//! use tower_account_pool::Outcome;
//!
//! let classifier = HttpClassifier::default();
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after", "7".parse().unwrap());
//! // A 429 may be a rate limit or an exhausted quota: the classifier reads the body first.
//! let verdict = classifier.classify_head(StatusCode::TOO_MANY_REQUESTS, &headers);
//! assert!(matches!(verdict, HeadVerdict::ReadBody { .. }));
//! let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
//! let outcome = classifier.classify_body(StatusCode::TOO_MANY_REQUESTS, &headers, body, true);
//! assert_eq!(outcome, Outcome::rate_limited(Some(Duration::from_secs(7))));
//!
//! let body = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
//! let outcome = classifier.classify_body(StatusCode::TOO_MANY_REQUESTS, &headers, body, true);
//! assert_eq!(outcome, Outcome::QuotaExhausted { reset_at: None });
//!
//! // Server errors are decided on the head alone.
//! let verdict = classifier.classify_head(StatusCode::BAD_GATEWAY, &HeaderMap::new());
//! assert_eq!(verdict, HeadVerdict::Final(Outcome::Transient));
//! ```

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

use crate::health::Outcome;
use crate::layer::SelectedAccount;

/// What a classifier decides from a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeadVerdict {
    /// The outcome is known; the body is not read.
    Final(Outcome),
    /// Read up to `limit` bytes of the body, then call [`Classifier::classify_body`]. Meant for
    /// error responses.
    ReadBody {
        /// Most bytes to read (the read stops at the first frame that reaches it).
        limit: usize,
    },
    /// Peek at the first `bytes` bytes of a successful (streaming) body, then call
    /// [`Classifier::classify_body`]: an upstream that reports errors in-band, inside a `200`
    /// stream, is caught before the response is handed out. The read waits for `bytes` bytes
    /// or the end of the body, bounded by the layer's attempt timeout and deadline: keep it
    /// to the size of the stream's first event.
    Peek {
        /// Most bytes to peek at.
        bytes: usize,
    },
}

/// Decides what an upstream's answer means for the account that sent it.
///
/// Implementations must be cheap on the success path: [`classify_head`](Self::classify_head)
/// runs for every response and should not allocate.
pub trait Classifier: Send + Sync + 'static {
    /// Classifies a response by its head.
    fn classify_head(&self, status: StatusCode, headers: &HeaderMap) -> HeadVerdict;

    /// Classifies a response by its head and the first bytes of its body, after
    /// [`classify_head`](Self::classify_head) asked for them. `complete` is true when `body` is
    /// the whole body.
    fn classify_body(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        complete: bool,
    ) -> Outcome;

    /// After a [`HeadVerdict::Peek`] read its bytes, whether they are enough to decide.
    /// `Some(n)` makes the layer read on until it holds `n` bytes in all (or the body ends),
    /// then ask again; `None`, the default, decides with what was read. A stream whose first
    /// frame arrives in pieces, or whose first frames carry only metadata, can so be read up to
    /// its first decisive frame — and an error sent there still fails over. The layer holds
    /// back at most 64 KiB this way, within the attempt's timeout and deadline.
    fn peek_more(&self, status: StatusCode, headers: &HeaderMap, prefix: &[u8]) -> Option<usize> {
        let _ = (status, headers, prefix);
        None
    }

    /// Classifies a streamed answer by its trailers, which gRPC uses for the call's status once
    /// messages were sent. Called when the trailers arrive, after the response was handed out
    /// (nothing is retried then; the outcome is the account's). `None`, the default: the
    /// stream ended normally.
    fn classify_trailers(&self, trailers: &HeaderMap) -> Option<Outcome> {
        let _ = trailers;
        None
    }

    /// Adjusts a failure's outcome with what is known of the account that got it, e.g. the
    /// quota reset its last usage probe reported (the Kiro classifier does this). Called by the
    /// layer for every outcome
    /// but `Success`, after [`classify_head`](Self::classify_head) or
    /// [`classify_body`](Self::classify_body). The default returns `outcome` unchanged.
    fn refine(&self, outcome: Outcome, account: &SelectedAccount) -> Outcome {
        let _ = account;
        outcome
    }
}

impl<C: Classifier + ?Sized> Classifier for std::sync::Arc<C> {
    fn classify_head(&self, status: StatusCode, headers: &HeaderMap) -> HeadVerdict {
        (**self).classify_head(status, headers)
    }

    fn classify_body(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        complete: bool,
    ) -> Outcome {
        (**self).classify_body(status, headers, body, complete)
    }

    fn classify_trailers(&self, trailers: &HeaderMap) -> Option<Outcome> {
        (**self).classify_trailers(trailers)
    }

    fn peek_more(&self, status: StatusCode, headers: &HeaderMap, prefix: &[u8]) -> Option<usize> {
        (**self).peek_more(status, headers, prefix)
    }

    fn refine(&self, outcome: Outcome, account: &SelectedAccount) -> Outcome {
        (**self).refine(outcome, account)
    }
}

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpClassifier {
    /// Most bytes of an error body read to classify it (default 16 KiB).
    pub body_limit: usize,
}

impl Default for HttpClassifier {
    fn default() -> Self {
        HttpClassifier {
            body_limit: 16 * 1024,
        }
    }
}

impl HttpClassifier {
    /// The default classifier.
    pub fn new() -> Self {
        Self::default()
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

/// A classifier for gRPC upstreams (a tonic `Channel`, for example).
///
/// gRPC answers errors with HTTP 200 and a `grpc-status`; a call that fails before any message
/// is sent answers "trailers-only", with `grpc-status` in the response head, which this
/// classifier reads to decide on a retry. A call that fails after sending messages puts its
/// `grpc-status` in the trailers: read when they arrive, it is the account's outcome (the
/// response was handed out; nothing is retried).
///
/// | `grpc-status` | outcome |
/// |---|---|
/// | absent, 0 `OK` | `Success` |
/// | 14 `UNAVAILABLE`, 4 `DEADLINE_EXCEEDED`, 13 `INTERNAL`, 10 `ABORTED` | `Transient` |
/// | 8 `RESOURCE_EXHAUSTED` | `RateLimited` (with `retry-after-ms` / `Retry-After` metadata if sent) |
/// | 16 `UNAUTHENTICATED` | `AuthExpired` |
/// | 7 `PERMISSION_DENIED` | `AuthInvalid` |
/// | 12 `UNIMPLEMENTED` | `ClientError` (the request's method, not the account) |
/// | others | `ClientError` |
///
/// Non-200 HTTP statuses (a proxy in front of the server) are classified by [`HttpClassifier`].
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tower_account_pool::classify::{Classifier, GrpcClassifier, HeadVerdict};
/// use tower_account_pool::Outcome;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("grpc-status", "14".parse().unwrap());
/// let verdict = GrpcClassifier::default().classify_head(StatusCode::OK, &headers);
/// assert_eq!(verdict, HeadVerdict::Final(Outcome::Transient));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrpcClassifier {
    http: HttpClassifier,
}

impl Classifier for GrpcClassifier {
    fn classify_head(&self, status: StatusCode, headers: &HeaderMap) -> HeadVerdict {
        if status != StatusCode::OK {
            return self.http.classify_head(status, headers);
        }
        HeadVerdict::Final(grpc_outcome(headers).unwrap_or(Outcome::Success))
    }

    /// The `grpc-status` of a call that failed after sending messages.
    fn classify_trailers(&self, trailers: &HeaderMap) -> Option<Outcome> {
        grpc_outcome(trailers)
    }

    fn classify_body(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        complete: bool,
    ) -> Outcome {
        self.http.classify_body(status, headers, body, complete)
    }
}

/// The outcome of the `grpc-status` in `headers` (a head or trailers), if there is one.
fn grpc_outcome(headers: &HeaderMap) -> Option<Outcome> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u16>()
        .ok()?;
    Some(match code {
        0 => Outcome::Success,
        4 | 10 | 13 | 14 => Outcome::Transient,
        8 => Outcome::rate_limited(retry_after(headers, SystemTime::now())),
        16 => Outcome::AuthExpired,
        7 => Outcome::AuthInvalid,
        _ => Outcome::ClientError,
    })
}

/// How long an upstream asked us to wait: `retry-after-ms` (milliseconds, as OpenAI sends),
/// else `Retry-After` as delay-seconds or as an HTTP-date (relative to `now`; a date in the past
/// means zero).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderMap;
/// use tower_account_pool::classify::retry_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", httpdate::fmt_http_date(now + Duration::from_secs(90)).parse().unwrap());
/// assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(90)));
/// headers.insert("retry-after-ms", "1500".parse().unwrap());
/// assert_eq!(retry_after(&headers, now), Some(Duration::from_millis(1500)));
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
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

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert("retry-after", "12".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(12)));
        h.insert(
            "retry-after",
            httpdate::fmt_http_date(now - Duration::from_secs(5))
                .parse()
                .unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
        h.insert("retry-after-ms", "250.5".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_micros(250_500)));
        h.insert("retry-after-ms", "-3".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn grpc_statuses() {
        let c = GrpcClassifier::default();
        let verdict = |code: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-status", code.parse().unwrap());
            c.classify_head(StatusCode::OK, &h)
        };
        assert_eq!(verdict("0"), HeadVerdict::Final(Outcome::Success));
        assert_eq!(verdict("14"), HeadVerdict::Final(Outcome::Transient));
        assert_eq!(
            verdict("8"),
            HeadVerdict::Final(Outcome::rate_limited(None))
        );
        assert_eq!(verdict("16"), HeadVerdict::Final(Outcome::AuthExpired));
        assert_eq!(verdict("3"), HeadVerdict::Final(Outcome::ClientError));
        assert_eq!(
            c.classify_head(StatusCode::OK, &HeaderMap::new()),
            HeadVerdict::Final(Outcome::Success)
        );
    }
}
