//! Errors in the Anthropic shape: `{"type":"error","error":{"type","message"}}` with the
//! matching HTTP status.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::StatusCode;

/// The Anthropic error types this module answers with, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 400: the request is malformed or cannot be served as sent.
    InvalidRequest,
    /// 401: the client's key is missing or wrong.
    Authentication,
    /// 403: the client's key may not do this.
    Permission,
    /// 404: no such endpoint or resource.
    NotFound,
    /// 413: the request body is larger than the configured cap.
    RequestTooLarge,
    /// 429: every account that could serve the request is rate limited or out of quota.
    RateLimit,
    /// 500: an internal failure (a broken upstream stream, an unexpected upstream answer).
    Api,
    /// 504: the upstream did not answer in time.
    Timeout,
    /// 529: no account can serve the request for other reasons (all failing, refreshing,
    /// suspended, or the upstream is overloaded).
    Overloaded,
}

impl ErrorKind {
    /// The `error.type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::Permission => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::RateLimit => "rate_limit_error",
            ErrorKind::Api => "api_error",
            ErrorKind::Timeout => "timeout_error",
            ErrorKind::Overloaded => "overloaded_error",
        }
    }

    /// The HTTP status Anthropic answers this error with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Authentication => StatusCode::UNAUTHORIZED,
            ErrorKind::Permission => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RateLimit => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Api => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Overloaded => StatusCode::from_u16(529).expect("529 is a valid status code"),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer in Anthropic's shape.
///
/// ```
/// use tower_account_pool::kiro::anthropic::{AnthropicError, ErrorKind};
///
/// let error = AnthropicError::invalid_request("messages: at least one message is required");
/// assert_eq!(error.kind(), ErrorKind::InvalidRequest);
/// let response = error.into_response();
/// assert_eq!(response.status(), 400);
/// assert_eq!(
///     std::str::from_utf8(response.body()).unwrap(),
///     r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages: at least one message is required"}}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicError {
    kind: ErrorKind,
    message: String,
    retry_after: Option<Duration>,
}

impl AnthropicError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        AnthropicError {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A 400 `invalid_request_error`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    /// A 401 `authentication_error`.
    pub fn authentication(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Authentication, message)
    }

    /// A 403 `permission_error`.
    pub fn permission(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permission, message)
    }

    /// A 404 `not_found_error`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// A 500 `api_error`.
    pub fn api(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Api, message)
    }

    /// A 529 `overloaded_error`.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Overloaded, message)
    }

    /// Sets the `retry-after` the answer carries (whole seconds, rounded up, at least 1).
    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// The error type.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `retry-after`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The JSON body: `{"type":"error","error":{"type","message"}}`.
    pub fn body(&self) -> Bytes {
        let mut out = Vec::with_capacity(64 + self.message.len());
        self.write_json(&mut out);
        Bytes::from(out)
    }

    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"type":"error","error":{"type":""#);
        out.extend_from_slice(self.kind.as_str().as_bytes());
        out.extend_from_slice(br#"","message":"#);
        super::json::write_str(out, &self.message);
        out.extend_from_slice(b"}}");
    }

    /// The SSE `error` event that ends a stream whose answer failed after it started.
    pub fn sse_event(&self) -> Bytes {
        let mut out = Vec::with_capacity(96 + self.message.len());
        self.write_sse(&mut out);
        Bytes::from(out)
    }

    pub(crate) fn write_sse(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"event: error\ndata: ");
        self.write_json(out);
        out.extend_from_slice(b"\n\n");
    }

    /// The whole answer: status, `content-type: application/json`, `retry-after` when set.
    pub fn into_response(self) -> http::Response<Bytes> {
        let mut response = http::Response::new(self.body());
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(after) = self.retry_after {
            let secs = (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1);
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl fmt::Display for AnthropicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for AnthropicError {}
