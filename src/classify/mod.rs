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
//! The shape follows tower-http's `classify` module: a [`MakeClassifier`] sees each request
//! (method, URI, headers, extensions) and makes the classifier for it; every [`Classifier`]
//! serves as one through [`SharedClassifier`], which is what
//! [`AccountPoolLayer::classifier`](crate::layer::AccountPoolLayer::classifier) uses. Errors of
//! the inner service (no response at all) go to [`Classifier::classify_error`]. The combinators
//! [`Classifier::map_outcome`] and [`Classifier::fallback`] change or complete a classifier
//! without re-implementing its methods.
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
//!
//! A classifier that only knows part of the answers [passes](HeadVerdict::Pass) on the rest to
//! the one behind it:
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use tower_account_pool::classify::{Classifier, HeadVerdict, HttpClassifier};
//! use tower_account_pool::Outcome;
//!
//! /// Peeks at successful streams for an in-band error; anything else is not its business.
//! struct InBandErrors;
//!
//! impl Classifier for InBandErrors {
//!     fn classify_head(&self, status: StatusCode, _headers: &HeaderMap) -> HeadVerdict {
//!         if status.is_success() { HeadVerdict::Peek { bytes: 32 } } else { HeadVerdict::Pass }
//!     }
//!
//!     fn classify_body(&self, _: StatusCode, _: &HeaderMap, body: &[u8], _: bool) -> Outcome {
//!         if body.starts_with(b"event: error") { Outcome::Transient } else { Outcome::Success }
//!     }
//! }
//!
//! let classifier = InBandErrors.fallback(HttpClassifier::new());
//! let verdict = classifier.classify_head(StatusCode::BAD_GATEWAY, &HeaderMap::new());
//! assert_eq!(verdict, HeadVerdict::Final(Outcome::Transient)); // HttpClassifier's answer
//! let verdict = classifier.classify_head(StatusCode::OK, &HeaderMap::new());
//! assert_eq!(verdict, HeadVerdict::Peek { bytes: 32 });
//! ```

mod combinator;
mod grpc;
mod http;
mod make;
mod retry_after;

use std::any::Any;
use std::sync::Arc;

use ::http::{HeaderMap, StatusCode};

use crate::account::SelectedAccount;
use crate::health::Outcome;

pub use combinator::{Fallback, MapOutcome};
pub use grpc::GrpcClassifier;
pub use http::HttpClassifier;
pub(crate) use make::ClassifierSource;
pub use make::{MakeClassifier, SharedClassifier};
pub use retry_after::retry_after;

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
    /// Not this classifier's answer: the classifier behind it in a
    /// [`fallback`](Classifier::fallback) decides (the whole answer: head, body and peek).
    /// A classifier with none behind it that passes is read as [`HttpClassifier::new`] would
    /// read the answer.
    Pass,
}

/// Decides what an upstream's answer means for the account that sent it.
///
/// Implementations must be cheap on the success path: [`classify_head`](Self::classify_head)
/// runs for every response and should not allocate. It must depend on the status and headers
/// only: the layer and [`Fallback`] may ask it again about the same answer.
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

    /// Classifies an error of the inner service's call (there is no response): `error` is the
    /// service's `Error`, to [downcast](Any#method.downcast_ref) to the type the classifier
    /// knows (`hyper_util`'s client error, `reqwest::Error`, `tower::BoxError`, ...). The
    /// default is `Transient`: a connection failure is retried on another account.
    ///
    /// Return `ClientError` or `Cancelled` for an error that is not the account's; an error is
    /// never a success (`Success` is read as `Cancelled`). The client gets the error itself
    /// when the request is not retried.
    fn classify_error(&self, error: &dyn Any) -> Outcome {
        let _ = error;
        Outcome::Transient
    }

    /// Adjusts a failure's outcome with what is known of the account that got it, e.g. the
    /// quota reset its last usage probe reported (the Kiro classifier does this). Called by the
    /// layer for every outcome of an attempt but `Success`, after the other methods decided.
    /// The default returns `outcome` unchanged; [`map_outcome`](Self::map_outcome) sets it with
    /// a closure.
    fn refine(&self, outcome: Outcome, account: &SelectedAccount) -> Outcome {
        let _ = account;
        outcome
    }

    /// This classifier, with `f` applied to every failed attempt's outcome (through
    /// [`refine`](Self::refine), after this classifier's own).
    ///
    /// ```
    /// use tower_account_pool::classify::{Classifier, HttpClassifier};
    /// use tower_account_pool::Outcome;
    ///
    /// // A refusal on a trial account means its trial ran out: a quota, not a bad key.
    /// let classifier = HttpClassifier::new().map_outcome(|outcome, account| {
    ///     match (outcome, account.field("plan").as_deref()) {
    ///         (Outcome::AuthInvalid, Some("trial")) => Outcome::QuotaExhausted { reset_at: None },
    ///         (outcome, _) => outcome,
    ///     }
    /// });
    /// # let _ = classifier;
    /// ```
    fn map_outcome<F>(self, f: F) -> MapOutcome<Self, F>
    where
        Self: Sized,
        F: Fn(Outcome, &SelectedAccount) -> Outcome + Send + Sync + 'static,
    {
        MapOutcome::new(self, f)
    }

    /// This classifier, with `other` deciding the answers it [passes](HeadVerdict::Pass) on
    /// (and the trailers it has nothing to say about). See the [module docs](self).
    fn fallback<B>(self, other: B) -> Fallback<Self, B>
    where
        Self: Sized,
        B: Classifier,
    {
        Fallback::new(self, other)
    }
}

impl<C: Classifier + ?Sized> Classifier for Arc<C> {
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

    fn classify_error(&self, error: &dyn Any) -> Outcome {
        (**self).classify_error(error)
    }

    fn refine(&self, outcome: Outcome, account: &SelectedAccount) -> Outcome {
        (**self).refine(outcome, account)
    }
}
