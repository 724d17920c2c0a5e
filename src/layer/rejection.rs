//! [`Rejection`]: why the layer answered a request itself, and the answer it makes by default.
//!
//! Every answer the layer makes itself — no account could take the request, the deadline
//! passed, the account's credential was unusable, the request body could not be read — carries
//! its [`Rejection`] in the response extensions. The answer itself is
//! [`Rejection::to_response`] (a JSON error body in Anthropic's shape), unless
//! [`AccountPoolLayer::on_rejection`](super::AccountPoolLayer::on_rejection) makes another.
//!
//! ```
//! use http::StatusCode;
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_account_pool::layer::{AccountPoolLayer, ReplayBody, Rejection};
//! use tower_account_pool::{Account, Pool, credential::BearerToken};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let pool = Pool::builder()
//!     .account(Account::new("off", BearerToken::new("token")).enabled(false))
//!     .build()?;
//! let upstream = service_fn(|_: http::Request<ReplayBody<String>>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! });
//! // An OpenAI-shaped body for exhaustion; the default answer for the rest.
//! let layer = AccountPoolLayer::new(pool).on_rejection(|rejection: &Rejection| match rejection {
//!     Rejection::Exhausted(exhausted) => http::Response::builder()
//!         .status(rejection.status())
//!         .header("content-type", "application/json")
//!         .body(format!(r#"{{"error":{{"message":"{exhausted}","type":"server_error"}}}}"#))
//!         .unwrap(),
//!     other => other.to_response().map(|body| String::from_utf8_lossy(&body).into_owned()),
//! });
//! let response = layer.layer(upstream).oneshot(http::Request::new(String::from("{}"))).await?;
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//! let rejection = response.extensions().get::<Rejection>().unwrap();
//! assert!(rejection.exhausted().is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::body::ResponseBody;
use crate::select::Exhausted;

/// Why the layer answered a request itself instead of handing out an upstream answer. Always
/// in the extensions of such a response (with the [`SelectedAccount`](crate::layer::SelectedAccount)
/// when an account was involved; exhaustion also leaves the bare [`Exhausted`] there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// No account could take the request: `429` when every candidate is rate limited or out
    /// of quota, else `503`, with `Retry-After` set to the earliest recovery.
    Exhausted(Exhausted),
    /// The upstream did not answer in time (the deadline or the attempt timeout passed, or
    /// the answer's body stalled while the classifier read it): `504`.
    UpstreamTimeout,
    /// The account's credential could not be put in the request; nothing was sent: `503`.
    CredentialNotApplied,
    /// The upstream rejected the account's credential and no other account could take the
    /// request: `503` (the upstream's `401`/`403` would tell the client its own key is bad).
    CredentialRejected,
    /// The request body could not be read: `400`.
    BodyUnreadable,
    /// The request body did not arrive before the deadline: `408`.
    BodyTimeout,
    /// A request body that could be sent only once was asked for again (a defect of the
    /// layer, not expected to happen): `500`.
    BodyAlreadySent,
}

impl Rejection {
    /// The status of the default answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Exhausted(e) if e.is_rate_limited() => StatusCode::TOO_MANY_REQUESTS,
            Rejection::Exhausted(_)
            | Rejection::CredentialNotApplied
            | Rejection::CredentialRejected => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Rejection::BodyUnreadable => StatusCode::BAD_REQUEST,
            Rejection::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::BodyAlreadySent => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The pool's exhaustion, when no account could take the request.
    pub fn exhausted(&self) -> Option<&Exhausted> {
        match self {
            Rejection::Exhausted(exhausted) => Some(exhausted),
            _ => None,
        }
    }

    /// The error `type` of the default JSON body (Anthropic's names).
    fn kind(&self) -> &'static str {
        match self {
            Rejection::Exhausted(e) if e.is_rate_limited() => "rate_limit_error",
            Rejection::Exhausted(_)
            | Rejection::CredentialNotApplied
            | Rejection::CredentialRejected => "overloaded_error",
            Rejection::UpstreamTimeout | Rejection::BodyTimeout => "timeout_error",
            Rejection::BodyUnreadable => "invalid_request_error",
            Rejection::BodyAlreadySent => "api_error",
        }
    }

    /// The layer's default answer: [`status`](Self::status), `content-type:
    /// application/json`, `Retry-After` (whole seconds, at least 1) when the pool knows when an
    /// account returns, and an Anthropic-shaped body
    /// `{"type":"error","error":{"type":…,"message":…}}` (exhaustion adds `reasons` and
    /// `retry_after_seconds`).
    pub fn to_response(&self) -> Response<Bytes> {
        let mut retry_after = None;
        let body = match self {
            Rejection::Exhausted(exhausted) => {
                retry_after = exhausted
                    .retry_after()
                    .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
                let reasons: serde_json::Map<String, serde_json::Value> = exhausted
                    .reasons()
                    .map(|(reason, n)| (reason.as_str().to_owned(), n.into()))
                    .collect();
                serde_json::json!({
                    "type": "error",
                    "error": {
                        "type": self.kind(),
                        "message": exhausted.to_string(),
                        "reasons": reasons,
                        "retry_after_seconds": retry_after,
                    },
                })
            }
            other => serde_json::json!({
                "type": "error",
                "error": { "type": other.kind(), "message": other.to_string() },
            }),
        };
        let mut response = Response::new(Bytes::from(body.to_string()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(seconds) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Exhausted(exhausted) => exhausted.fmt(f),
            Rejection::UpstreamTimeout => f.write_str("the upstream did not answer in time"),
            Rejection::CredentialNotApplied => {
                f.write_str("the account's credential could not be applied")
            }
            Rejection::CredentialRejected => f.write_str(
                "the upstream rejected the account's credential and the request could not be \
                 retried on another account",
            ),
            Rejection::BodyUnreadable => f.write_str("the request body could not be read"),
            Rejection::BodyTimeout => f.write_str("the request body did not arrive in time"),
            Rejection::BodyAlreadySent => f.write_str("the request body was already sent"),
        }
    }
}

/// Makes the answer to a [`Rejection`]: see
/// [`AccountPoolLayer::on_rejection`](super::AccountPoolLayer::on_rejection).
pub(crate) type OnRejection = Arc<dyn Fn(&Rejection) -> Response<Bytes> + Send + Sync>;

/// The answer to `rejection`: the hook's or the default, with the rejection (and an
/// exhaustion's bare [`Exhausted`]) in its extensions.
pub(crate) fn reject<RB>(
    hook: Option<&OnRejection>,
    rejection: Rejection,
) -> Response<ResponseBody<RB>> {
    let response = match hook {
        Some(hook) => hook(&rejection),
        None => rejection.to_response(),
    };
    let (mut parts, body) = response.into_parts();
    if let Rejection::Exhausted(exhausted) = rejection {
        parts.extensions.insert(exhausted);
    }
    parts.extensions.insert(rejection);
    Response::from_parts(parts, ResponseBody::local(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_answers_keep_their_status_type_and_message() {
        let cases = [
            (Rejection::UpstreamTimeout, 504, "timeout_error"),
            (Rejection::CredentialNotApplied, 503, "overloaded_error"),
            (Rejection::CredentialRejected, 503, "overloaded_error"),
            (Rejection::BodyUnreadable, 400, "invalid_request_error"),
            (Rejection::BodyTimeout, 408, "timeout_error"),
            (Rejection::BodyAlreadySent, 500, "api_error"),
        ];
        for (rejection, status, kind) in cases {
            let response = rejection.to_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
            let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
            assert_eq!(body["type"], "error");
            assert_eq!(body["error"]["type"], kind);
            assert_eq!(body["error"]["message"], rejection.to_string());
        }
    }
}
