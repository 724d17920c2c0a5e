//! The answers the layer makes itself.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::body::ResponseBody;
use crate::select::Exhausted;

pub(crate) fn json_response<RB>(
    status: StatusCode,
    kind: &str,
    message: &str,
) -> Response<ResponseBody<RB>> {
    let body = serde_json::json!({
        "type": "error",
        "error": { "type": kind, "message": message },
    });
    let mut response = Response::new(ResponseBody::local(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The answer when no account can take the request: 429 or 503, `Retry-After`, JSON.
pub(crate) fn exhausted_response<RB>(exhausted: &Exhausted) -> Response<ResponseBody<RB>> {
    let (status, kind) = if exhausted.is_rate_limited() {
        (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded_error")
    };
    let retry_after = exhausted
        .retry_after()
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
    let reasons: serde_json::Map<String, serde_json::Value> = exhausted
        .reasons()
        .map(|(reason, n)| (reason.as_str().to_owned(), n.into()))
        .collect();
    let body = serde_json::json!({
        "type": "error",
        "error": {
            "type": kind,
            "message": exhausted.to_string(),
            "reasons": reasons,
            "retry_after_seconds": retry_after,
        },
    });
    let mut response = Response::new(ResponseBody::local(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(seconds) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response.extensions_mut().insert(*exhausted);
    response
}
