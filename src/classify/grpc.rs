//! [`GrpcClassifier`]: the `grpc-status` of a trailers-only answer, or of the trailers.

use std::time::SystemTime;

use http::{HeaderMap, StatusCode};

use super::{retry_after, Classifier, HeadVerdict, HttpClassifier};
use crate::health::Outcome;

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

#[cfg(test)]
mod tests {
    use super::*;

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
