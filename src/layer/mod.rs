//! The layer: a tower [`Layer`] that sends each request through an account of the pool.
//!
//! Per attempt, [`AccountPoolService`] selects an account for the request's model (read by a
//! [`RequestExtractor`], by default the `model` field of a JSON body), injects its credential
//! (headers marked sensitive), puts a [`SelectedAccount`] in the request extensions, calls the
//! inner service, asks the [`Classifier`] what the answer means, reports the
//! [`Outcome`](crate::Outcome) to the pool and — when the outcome says the account, not the
//! request, was at fault — retries on a different account.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_account_pool::{Account, Pool};
//! use tower_account_pool::credential::BearerToken;
//! use tower_account_pool::layer::{AccountPoolLayer, ReplayBody, SelectedAccount};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let pool = Pool::builder()
//!     .account(Account::new("busy", BearerToken::new("token-busy")).priority(0))
//!     .account(Account::new("spare", BearerToken::new("token-spare")).priority(1))
//!     .build()?;
//!
//! // An upstream on which the first account is rate limited.
//! let upstream = service_fn(|req: Request<ReplayBody<String>>| async move {
//!     let token = req.headers()["authorization"].to_str().unwrap();
//!     let status = if token == "Bearer token-busy" { 429 } else { 200 };
//!     Ok::<_, Infallible>(Response::builder().status(status).body(String::from("hi")).unwrap())
//! });
//!
//! let service = AccountPoolLayer::new(pool.clone()).layer(upstream);
//! let request = Request::post("/v1/messages")
//!     .body(String::from(r#"{"model":"claude-sonnet-4-5","messages":[]}"#))?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! let served_by = response.extensions().get::<SelectedAccount>().unwrap();
//! assert_eq!(served_by.id().as_str(), "spare");
//! assert_eq!(served_by.attempt(), 2);
//! assert_eq!(pool.stats().retries, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Rules
//!
//! - **Classification**: the [`classifier`](AccountPoolLayer::classifier) (default
//!   [`HttpClassifier`]), or one made for each request from its head by a
//!   [`make_classifier`](AccountPoolLayer::make_classifier), decides what each answer means; an
//!   error of the inner service goes to [`Classifier::classify_error`] (default `Transient`).
//! - **Attempts**: at most [`max_attempts`](AccountPoolLayer::max_attempts) accounts (default
//!   3), each different (`SelectRequest::exclude`).
//! - **Retried**: `RateLimited`, `QuotaExhausted`, `AuthInvalid`, `Suspended`,
//!   `ModelUnsupported`, `Transient` (5xx, 408, connection errors, an attempt timeout).
//!   **Never retried**: `ClientError` (the request is at fault) and `Success`; the client gets
//!   the upstream's own answer.
//! - **`AuthExpired`** (401): the credential is refreshed at once
//!   (`refresh(RefreshMode::Forced)`) and the request is sent once more on the same account; if
//!   the refresh fails, the account is reported `AuthInvalid` (or `AuthExpired` when the
//!   refresh server could not be reached: the pool then keeps refreshing in the background)
//!   and the request moves on.
//! - **Retry budget**: retries are at most 20 % of requests plus 10 per second
//!   ([`RetryBudget`], tower's `TpsBudget` rule without its lock); replace it with any tower
//!   [`Budget`] by [`retry_budget`](AccountPoolLayer::retry_budget), or turn it off with
//!   [`no_retry_budget`](AccountPoolLayer::no_retry_budget).
//! - **Backoff**: none by default; [`backoff`](AccountPoolLayer::backoff) sleeps a jittered,
//!   doubling delay between attempts.
//! - **Deadline**: [`deadline`](AccountPoolLayer::deadline) bounds the whole request up to its
//!   response head (the layer answers `504` when it passes);
//!   [`attempt_timeout`](AccountPoolLayer::attempt_timeout) bounds one attempt's head (a slow
//!   account counts `Transient` and the request moves on).
//! - **Replay cap**: bodies up to [`replay_cap`](AccountPoolLayer::replay_cap) bytes (default
//!   16 MiB) are buffered so they can be sent again; larger bodies stream through, are sent
//!   once and never retried.
//! - **Exhaustion**: when no account can take the request the layer answers `429` (every
//!   candidate rate limited or out of quota) or `503`, with `Retry-After` set to the earliest
//!   recovery and a JSON error body. When accounts were tried and a retry found no other, the
//!   client gets the last upstream answer — except after an authentication failure of the
//!   pool's own credential, which becomes the `503`.
//! - **Rejections**: every answer the layer makes itself (exhaustion, a deadline, an unusable
//!   credential, an unreadable or slow request body) carries a typed [`Rejection`] in its
//!   extensions; its body is a JSON error in Anthropic's shape
//!   ([`Rejection::to_response`]) unless [`on_rejection`](AccountPoolLayer::on_rejection)
//!   makes another.
//! - **Streaming**: the decision is made on the response head. A successful body passes
//!   through untouched and unbuffered; nothing is retried once the response is handed out. The
//!   account's lease lives in the [`ResponseBody`]: the end of the body reports `Success`, a
//!   body error `Transient`, and a response dropped before its end `Cancelled` (no penalty).
//!   A classifier may [peek](crate::classify::HeadVerdict::Peek) at the first bytes of a
//!   successful stream to catch an error sent in-band.
//!
//! The inner service receives `Request<ReplayBody<B>>`; to call a service that wants its own
//! body type (a tonic `Channel`), map the request (`tower::ServiceBuilder::map_request`).
//! Request and response bodies must be `Unpin` with `Bytes` data, as hyper's, axum's, tonic's
//! and reqwest's are.
//!
//! # Cost
//!
//! Per request: one boxed future (the attempt loop), the request head cloned per attempt (so it
//! can be sent again), the credential header, and the [`SelectedAccount`] inserted in the
//! request and response extensions. Selection, the budget and the report take no lock. Bodies
//! up to the replay cap are held as received (a single-frame body is not copied); the JSON
//! `model` is found by a scan of the top-level keys that skips every value by its structure.

mod attempt;
mod body;
mod budget;
mod extract;
mod future;
mod rejection;
mod service;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::Budget;
use tower_layer::Layer;

pub use body::{ReplayBody, ResponseBody};
pub use budget::RetryBudget;
pub use extract::{AffinityHeader, JsonModel, NoAffinity, NoModel, RequestExtractor};
pub use future::ResponseFuture;
pub use rejection::Rejection;
pub use service::AccountPoolService;

pub use crate::account::SelectedAccount;
use crate::classify::{
    Classifier, ClassifierSource, HttpClassifier, MakeClassifier, SharedClassifier,
};
use crate::pool::Pool;

/// The delay between attempts: the crate's one [`Backoff`]. Before
/// retry `n` (from 1) the layer sleeps a random time in `[d/2, d]` where
/// `d = min(base × 2^(n-1), max)` (its default [`Jitter::Equal`](crate::health::Jitter::Equal)).
pub use crate::health::Backoff;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) pool: Pool,
    pub(crate) classifier: ClassifierSource,
    pub(crate) model: Arc<dyn RequestExtractor>,
    pub(crate) affinity: Option<Arc<dyn RequestExtractor>>,
    pub(crate) max_attempts: u32,
    pub(crate) budget: Option<Arc<dyn Budget + Send + Sync>>,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) replay_cap: usize,
    pub(crate) on_rejection: Option<rejection::OnRejection>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("pool", &self.pool)
            .field("max_attempts", &self.max_attempts)
            .field("budget", &self.budget.is_some())
            .field("backoff", &self.backoff)
            .field("deadline", &self.deadline)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("replay_cap", &self.replay_cap)
            .field("on_rejection", &self.on_rejection.is_some())
            .finish_non_exhaustive()
    }
}

/// A tower [`Layer`] that wraps a service with an account pool. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct AccountPoolLayer {
    config: Arc<Config>,
}

/// The default replay cap: 16 MiB, room for LLM requests with a few images.
pub const DEFAULT_REPLAY_CAP: usize = 16 * 1024 * 1024;

impl AccountPoolLayer {
    /// A layer over `pool` with the defaults: 3 attempts, the default [`RetryBudget`], no
    /// backoff, no deadline, a 16 MiB replay cap, [`JsonModel`], no affinity key,
    /// [`HttpClassifier`].
    pub fn new(pool: Pool) -> Self {
        AccountPoolLayer {
            config: Arc::new(Config {
                pool,
                classifier: ClassifierSource::new(SharedClassifier::new(HttpClassifier::new())),
                model: Arc::new(JsonModel),
                affinity: None,
                max_attempts: 3,
                budget: Some(Arc::new(RetryBudget::default())),
                backoff: None,
                deadline: None,
                attempt_timeout: None,
                replay_cap: DEFAULT_REPLAY_CAP,
                on_rejection: None,
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.config.pool
    }

    /// Most accounts one request is sent to (at least 1; default 3).
    pub fn max_attempts(self, attempts: u32) -> Self {
        self.with(|c| c.max_attempts = attempts.max(1))
    }

    /// The retry budget: any tower [`Budget`] (default [`RetryBudget::default`]: 20 % of
    /// requests plus 10 per second). Every service this layer makes shares it.
    pub fn retry_budget(self, budget: impl Budget + Send + Sync + 'static) -> Self {
        self.with(|c| c.budget = Some(Arc::new(budget)))
    }

    /// No retry budget: only [`max_attempts`](Self::max_attempts) limits retries.
    pub fn no_retry_budget(self) -> Self {
        self.with(|c| c.budget = None)
    }

    /// A jittered backoff between attempts (default: none).
    pub fn backoff(self, backoff: Backoff) -> Self {
        self.with(|c| c.backoff = Some(backoff))
    }

    /// An overall deadline for a request, up to its response head.
    pub fn deadline(self, deadline: Duration) -> Self {
        self.with(|c| c.deadline = Some(deadline))
    }

    /// A deadline for one attempt's response head; a slower account counts as `Transient`.
    pub fn attempt_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.attempt_timeout = Some(timeout))
    }

    /// Largest request body buffered for replay (default [`DEFAULT_REPLAY_CAP`]). Larger bodies
    /// are sent once and never retried.
    pub fn replay_cap(self, bytes: usize) -> Self {
        self.with(|c| c.replay_cap = bytes)
    }

    /// How the request's model is found (default [`JsonModel`]; [`NoModel`] for none).
    pub fn model_extractor(self, extractor: impl RequestExtractor) -> Self {
        self.with(|c| c.model = Arc::new(extractor))
    }

    /// How the request's affinity key is found (default: none). See [`AffinityHeader`].
    pub fn affinity_extractor(self, extractor: impl RequestExtractor) -> Self {
        self.with(|c| c.affinity = Some(Arc::new(extractor)))
    }

    /// How answers are classified, the same for every request (default [`HttpClassifier`]):
    /// `make_classifier(SharedClassifier::new(classifier))`.
    pub fn classifier(self, classifier: impl Classifier) -> Self {
        self.make_classifier(SharedClassifier::new(classifier))
    }

    /// Makes the classifier of each request from its head (method, URI, headers, extensions).
    /// See [`MakeClassifier`].
    pub fn make_classifier(self, maker: impl MakeClassifier) -> Self {
        self.with(|c| c.classifier = ClassifierSource::new(maker))
    }

    /// Makes the layer's own answers (see [`Rejection`]) with `f` instead of
    /// [`Rejection::to_response`], the default. Whatever `f` answers, the layer puts the
    /// [`Rejection`] (and the [`SelectedAccount`], when an account was involved) in the
    /// response extensions.
    pub fn on_rejection<F, T>(self, f: F) -> Self
    where
        F: Fn(&Rejection) -> http::Response<T> + Send + Sync + 'static,
        T: Into<bytes::Bytes>,
    {
        let hook: rejection::OnRejection = Arc::new(move |r| f(r).map(Into::into));
        self.with(|c| c.on_rejection = Some(hook))
    }
}

impl<S> Layer<S> for AccountPoolLayer {
    type Service = AccountPoolService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccountPoolService::new(inner, self.config.clone())
    }
}
