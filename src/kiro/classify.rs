//! The Kiro classifier: upstream answers → [`Outcome`]s, on structured data.
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx | `Success` (use [`classify_stream_start`] on the first bytes of a stream) |
//! | 402, or any body/reason with `MONTHLY_REQUEST_COUNT` | `QuotaExhausted { reset_at }`: the usage probe's `nextDateReset`, else the first of next month 00:00 UTC |
//! | 429, or `ThrottlingException` | `RateLimited` for the whole account, `Retry-After` honoured (seconds or HTTP date) |
//! | 403 with a suspension pattern (`temporarily is suspended`, `violation of terms`, `appeal`, …) | `Suspended` |
//! | 403 with `quota` / `limit exceeded` | `QuotaExhausted` |
//! | 403 "The bearer token included in the request is invalid", any other 403, 401 | `AuthExpired` (the pool force-refreshes) |
//! | 400 `ValidationException`, other 4xx, 405, 501 | `ClientError` |
//! | 408, other 5xx, a broken event stream | `Transient` |
//!
//! The exception type comes from the `x-amzn-errortype` header or the body's `__type`; the
//! reason from the body's `reason`. Structure decides whether an answer is the account's: a
//! 400, a `ValidationException` or any other answer about the request stays `ClientError`
//! whatever its message says (an upstream may echo the client's text there), so client input
//! never takes an account out. Text is read only to tell account-level outcomes apart once the
//! status or type already says the answer is the account's: a 403 / `AccessDeniedException`
//! (Kiro's authorizer answers it before reading the request, with fixed messages, and offers
//! no structured field for a suspension), and `MONTHLY_REQUEST_COUNT` inside a throttling
//! answer.
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use tower_account_pool::kiro::classify_response;
//! use tower_account_pool::Outcome;
//!
//! let body = br#"{"message":"The bearer token included in the request is invalid.","reason":null}"#;
//! let outcome = classify_response(StatusCode::FORBIDDEN, &HeaderMap::new(), body, None);
//! assert_eq!(outcome, Outcome::AuthExpired);
//! ```

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::eventstream::{self, Message};
use super::token_file::first_of_next_month_utc;
use crate::health::{Outcome, RateLimitScope};

/// Body patterns of a suspended or blocked account (403).
pub const SUSPENSION_PATTERNS: &[&str] = &[
    "temporarily is suspended",
    "temporarily suspended",
    "suspended",
    "disabled",
    "violation of terms",
    "terms of service",
    "appeal",
    "payment required",
    "not authorized to access",
    "not allowed",
    "locked",
];

/// Body patterns of a 403 that is about quota rather than the account.
pub const QUOTA_PATTERNS: &[&str] = &["quota", "limit exceeded"];

/// The marker of Kiro's monthly quota.
pub const MONTHLY_QUOTA_MARKER: &str = "MONTHLY_REQUEST_COUNT";

/// Classifies a complete (non-stream or error) answer.
///
/// `quota_reset` is when the account's quota resets, as its usage probe last said
/// ([`KiroCredential::quota_reset`](super::KiroCredential::quota_reset)); without it a quota
/// error resets at the first of next month, UTC.
pub fn classify_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    quota_reset: Option<SystemTime>,
) -> Outcome {
    if status.is_success() {
        return Outcome::Success;
    }
    let error_type = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(short_type);
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error_type = error_type.or_else(|| {
        parsed
            .as_ref()
            .and_then(|v| v.get("__type"))
            .and_then(Value::as_str)
            .map(short_type)
    });
    let text = String::from_utf8_lossy(body);
    let retry_after = retry_after(headers);
    classify(
        Some(status.as_u16()),
        error_type.as_deref(),
        parsed.as_ref(),
        &text,
        retry_after,
        quota_reset,
    )
}

/// Classifies the first bytes of a 2xx event stream.
///
/// `None`: not enough bytes for the first frame yet. `Some(Success)`: the first frame is an
/// ordinary event. An `exception` or `error` frame gives its class (as
/// [`classify_response`] would); bytes that are not a valid frame give `Transient`.
pub fn classify_stream_start(
    first_bytes: &[u8],
    quota_reset: Option<SystemTime>,
) -> Option<Outcome> {
    match eventstream::decode(first_bytes) {
        Ok(None) => None,
        Err(_) => Some(Outcome::Transient),
        Ok(Some((message, _))) => Some(classify_frame(&message, quota_reset)),
    }
}

/// Classifies one decoded event-stream frame: `Success` for events, the exception's class
/// otherwise.
pub fn classify_frame(message: &Message, quota_reset: Option<SystemTime>) -> Outcome {
    match message.message_type() {
        Some("exception") | Some("error") => {}
        _ => return Outcome::Success,
    }
    let parsed: Option<Value> = serde_json::from_slice(&message.payload).ok();
    let error_type = message
        .exception_type()
        .or_else(|| message.header_str(":error-code"))
        .map(short_type)
        .or_else(|| {
            parsed
                .as_ref()
                .and_then(|v| v.get("__type"))
                .and_then(Value::as_str)
                .map(short_type)
        });
    let mut text = String::from_utf8_lossy(&message.payload).into_owned();
    if let Some(m) = message.header_str(":error-message") {
        text.push(' ');
        text.push_str(m);
    }
    classify(
        None,
        error_type.as_deref(),
        parsed.as_ref(),
        &text,
        None,
        quota_reset,
    )
}

/// `ThrottlingException:http://…` and `com.amazon…#ThrottlingException` → `ThrottlingException`.
fn short_type(raw: &str) -> String {
    let raw = raw.split(':').next().unwrap_or(raw);
    raw.rsplit('#').next().unwrap_or(raw).trim().to_owned()
}

fn quota(reset: Option<SystemTime>) -> Outcome {
    Outcome::QuotaExhausted {
        reset_at: Some(reset.unwrap_or_else(|| first_of_next_month_utc(SystemTime::now()))),
    }
}

fn contains_any(haystack: &str, needles: &[&str]) -> bool {
    needles.iter().any(|n| haystack.contains(n))
}

fn classify(
    status: Option<u16>,
    error_type: Option<&str>,
    parsed: Option<&Value>,
    text: &str,
    retry_after: Option<Duration>,
    quota_reset: Option<SystemTime>,
) -> Outcome {
    let reason = parsed
        .and_then(|v| v.get("reason"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let lower = text.to_ascii_lowercase();
    let rate_limited = Outcome::RateLimited {
        retry_after,
        scope: RateLimitScope::Account,
    };
    let error_type = error_type.unwrap_or_default();
    // Only an answer that is already the account's may have its text read for the monthly
    // quota marker; a validation error echoing it stays the client's.
    let account_level = matches!(status, Some(402 | 403 | 429))
        || matches!(
            error_type,
            "ThrottlingException"
                | "TooManyRequestsException"
                | "ServiceQuotaExceededException"
                | "AccessDeniedException"
        );
    if status == Some(402)
        || reason == MONTHLY_QUOTA_MARKER
        || (account_level && text.contains(MONTHLY_QUOTA_MARKER))
    {
        return quota(quota_reset);
    }
    match error_type {
        "ThrottlingException" | "TooManyRequestsException" => return rate_limited,
        "ServiceQuotaExceededException" => return quota(quota_reset),
        "ValidationException"
        | "ResourceNotFoundException"
        | "ConflictException"
        | "ContentLengthExceededException" => return Outcome::ClientError,
        "InternalServerException" | "ServiceUnavailableException" => return Outcome::Transient,
        "ExpiredTokenException" | "UnauthorizedException" | "InvalidTokenException" => {
            return Outcome::AuthExpired
        }
        _ => {}
    }
    let forbidden = status == Some(403) || error_type == "AccessDeniedException";
    if forbidden {
        if lower.contains("bearer token") && lower.contains("invalid") {
            return Outcome::AuthExpired;
        }
        if contains_any(&lower, SUSPENSION_PATTERNS) {
            return Outcome::Suspended;
        }
        if contains_any(&lower, QUOTA_PATTERNS) {
            return quota(quota_reset);
        }
        return Outcome::AuthExpired;
    }
    match status {
        Some(429) => rate_limited,
        Some(401) => Outcome::AuthExpired,
        Some(408) => Outcome::Transient,
        // The request's method or feature, not the account.
        Some(501) => Outcome::ClientError,
        Some(s) if s >= 500 => Outcome::Transient,
        Some(s) if (400..500).contains(&s) => Outcome::ClientError,
        Some(_) => Outcome::Transient,
        // An exception frame of an unknown type: the upstream failed mid-answer.
        None => Outcome::Transient,
    }
}

/// `Retry-After` as seconds or an HTTP date (or `retry-after-ms`), as of now: the layer's
/// [`retry_after`](crate::classify::retry_after).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    crate::classify::retry_after(headers, SystemTime::now())
}

/// The Kiro classifier for [`AccountPoolLayer`](crate::layer::AccountPoolLayer): the table in
/// the [module docs](self), wired to the layer's [`Classifier`](crate::classify::Classifier).
///
/// Error answers are read (up to [`body_limit`](Self::body_limit) bytes) and classified with
/// [`classify_response`]. A 2xx answer is peeked at up to its first decisive frame: the layer
/// reads the first chunk of the event stream, then (through
/// [`peek_more`](crate::classify::Classifier::peek_more)) the rest of a frame that arrived in
/// pieces and past frames that carry only metadata (`messageMetadataEvent`, `meteringEvent`,
/// `contextUsageEvent`) — never past the first content frame, so the first token is not held
/// back. An exception frame there — a failure sent in-band — fails the attempt over to another
/// account before anything reaches the client. A quota exhaustion
/// lasts until the account's `nextDateReset` as its last usage probe reported it
/// ([`refine`](crate::classify::Classifier::refine) reads it from the account's credential),
/// else until the first of next month UTC.
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tower_account_pool::classify::{Classifier, HeadVerdict};
/// use tower_account_pool::kiro::eventstream::Message;
/// use tower_account_pool::kiro::KiroClassifier;
/// use tower_account_pool::Outcome;
///
/// let classifier = KiroClassifier::default();
/// let verdict = classifier.classify_head(StatusCode::OK, &HeaderMap::new());
/// assert_eq!(verdict, HeadVerdict::Peek { bytes: 16 });
///
/// let throttled = Message::exception("ThrottlingException", br#"{"message":"Too many requests"}"#);
/// let bytes = throttled.encode().unwrap();
/// let outcome = classifier.classify_body(StatusCode::OK, &HeaderMap::new(), &bytes, false);
/// assert!(matches!(outcome, Outcome::RateLimited { .. }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KiroClassifier {
    /// Most bytes of an error body read to classify it.
    body_limit: usize,
}

impl Default for KiroClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl KiroClassifier {
    /// The Kiro classifier: error bodies are read up to 16 KiB.
    pub const fn new() -> Self {
        KiroClassifier {
            body_limit: 16 * 1024,
        }
    }

    /// Most bytes of an error body read to classify it (default 16 KiB).
    pub const fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }
}

/// The smallest event-stream frame: prelude (12 bytes) and message CRC (4 bytes).
const MIN_FRAME: usize = 16;

/// Events that carry only metadata: an exception may still follow them before any content.
const METADATA_EVENTS: &[&str] = &[
    "messageMetadataEvent",
    "metadataEvent",
    "meteringEvent",
    "contextUsageEvent",
];

/// What the start of a stream holds, up to its first decisive frame.
enum Decisive {
    /// The first frame that is content, an exception or an error.
    Frame(Message),
    /// Whole frames, all metadata, and nothing after them.
    OnlyMetadata,
    /// A frame is cut short: this many bytes in all would hold it.
    NeedBytes(usize),
    /// Bytes that are not an event stream.
    Broken,
}

fn first_decisive_frame(bytes: &[u8]) -> Decisive {
    let mut offset = 0;
    loop {
        let rest = &bytes[offset..];
        if rest.is_empty() {
            return Decisive::OnlyMetadata;
        }
        match eventstream::decode(rest) {
            Err(_) => return Decisive::Broken,
            Ok(None) => {
                // The prelude's first word is the frame's length, when it is here.
                let needed = match rest.get(..4) {
                    Some(word) => u32::from_be_bytes([word[0], word[1], word[2], word[3]]) as usize,
                    None => MIN_FRAME,
                };
                return Decisive::NeedBytes(offset + needed.max(MIN_FRAME));
            }
            Ok(Some((message, used))) => {
                let metadata = message.message_type() == Some("event")
                    && message
                        .event_type()
                        .is_some_and(|t| METADATA_EVENTS.contains(&t));
                if !metadata {
                    return Decisive::Frame(message);
                }
                offset += used;
            }
        }
    }
}

impl crate::classify::Classifier for KiroClassifier {
    fn classify_head(
        &self,
        status: StatusCode,
        _headers: &HeaderMap,
    ) -> crate::classify::HeadVerdict {
        use crate::classify::HeadVerdict;
        if status.is_success() {
            HeadVerdict::Peek { bytes: MIN_FRAME }
        } else if status == StatusCode::NOT_IMPLEMENTED {
            HeadVerdict::Final(Outcome::ClientError)
        } else if status.is_server_error() {
            HeadVerdict::Final(Outcome::Transient)
        } else {
            HeadVerdict::ReadBody {
                limit: self.body_limit,
            }
        }
    }

    fn classify_body(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        complete: bool,
    ) -> Outcome {
        if !status.is_success() {
            return classify_response(status, headers, body, None);
        }
        match first_decisive_frame(body) {
            Decisive::Frame(message) => classify_frame(&message, None),
            Decisive::Broken => Outcome::Transient,
            // Not whole yet (the layer read as far as it would): nothing in-band to see.
            Decisive::NeedBytes(_) if !complete => Outcome::Success,
            // A 2xx whose whole body ends inside a frame: the stream broke.
            Decisive::NeedBytes(_) => Outcome::Transient,
            Decisive::OnlyMetadata => Outcome::Success,
        }
    }

    /// Reads a 2xx stream up to its first decisive frame: the rest of a frame that arrived in
    /// pieces, and past frames that carry only metadata (`messageMetadataEvent`,
    /// `meteringEvent`, `contextUsageEvent`), so an exception sent before any content fails
    /// over however the bytes were cut.
    fn peek_more(&self, status: StatusCode, _headers: &HeaderMap, prefix: &[u8]) -> Option<usize> {
        if !status.is_success() {
            return None;
        }
        match first_decisive_frame(prefix) {
            Decisive::NeedBytes(n) => Some(n),
            Decisive::OnlyMetadata => Some(prefix.len() + MIN_FRAME),
            Decisive::Frame(_) | Decisive::Broken => None,
        }
    }

    fn refine(&self, outcome: Outcome, account: &crate::account::SelectedAccount) -> Outcome {
        match outcome {
            Outcome::QuotaExhausted { reset_at } => {
                let probed = account
                    .field("nextDateReset")
                    .and_then(|field| super::quota_reset_in(&field))
                    .filter(|reset| *reset > SystemTime::now());
                Outcome::QuotaExhausted {
                    reset_at: probed.or(reset_at),
                }
            }
            other => other,
        }
    }
}
