//! The layer: a tower [`Layer`] that sends each request through an account of the pool.
//!
//! Per attempt, [`AccountPoolService`] selects an account for the request's model (read by a
//! [`ModelExtractor`], by default the `model` field of a JSON body), injects its credential
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
//!   ([`RetryBudget`], tower's `TpsBudget` rule without its lock); replace or turn it off with
//!   [`retry_budget`](AccountPoolLayer::retry_budget).
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
//! `model` is found by a scan that stops at the field.

mod body;
mod budget;
mod extract;
mod future;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

pub use body::{ReplayBody, ResponseBody};
pub use budget::RetryBudget;
pub use extract::{
    AffinityExtractor, AffinityHeader, JsonModel, ModelExtractor, NoAffinity, NoModel,
};
pub use future::ResponseFuture;

use crate::account::AccountId;
use crate::classify::{Classifier, HttpClassifier};
use crate::credential::SharedCredential;
use crate::pool::Pool;

/// The account a request is being sent with, in the request's extensions (for a handler) and
/// in the response's (for the caller). It exposes the credential's read-only, non-secret
/// fields, never the secret.
///
/// ```
/// # use tower_account_pool::layer::SelectedAccount;
/// fn handler(account: &SelectedAccount) -> String {
///     format!("{} (attempt {})", account.id(), account.attempt())
/// }
/// ```
#[derive(Clone)]
pub struct SelectedAccount {
    id: AccountId,
    attempt: u32,
    credential: SharedCredential,
}

impl SelectedAccount {
    pub(crate) fn new(id: AccountId, attempt: u32, credential: SharedCredential) -> Self {
        SelectedAccount {
            id,
            attempt,
            credential,
        }
    }

    /// The account's id.
    pub fn id(&self) -> &AccountId {
        &self.id
    }

    /// Which upstream call of the request this is, from 1 (a retry on the same account after a
    /// credential refresh counts as a call).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A read-only, non-secret credential field (for example a Kiro `profileArn`).
    pub fn field(&self, name: &str) -> Option<String> {
        self.credential.field(name)
    }

    /// The credential's kind (`bearer`, `api-key`, ...).
    pub fn credential_kind(&self) -> &'static str {
        self.credential.kind()
    }
}

impl fmt::Debug for SelectedAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelectedAccount")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("credential", &self.credential.kind())
            .finish()
    }
}

/// The delay between attempts: the crate's one [`Backoff`]. Before
/// retry `n` (from 1) the layer sleeps a random time in `[d/2, d]` where
/// `d = min(base × 2^(n-1), max)` (its default [`Jitter::Equal`](crate::health::Jitter::Equal)).
pub use crate::health::Backoff;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) pool: Pool,
    pub(crate) classifier: Arc<dyn Classifier>,
    pub(crate) model: Arc<dyn ModelExtractor>,
    pub(crate) affinity: Option<Arc<dyn AffinityExtractor>>,
    pub(crate) max_attempts: u32,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) replay_cap: usize,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("pool", &self.pool)
            .field("max_attempts", &self.max_attempts)
            .field("budget", &self.budget)
            .field("backoff", &self.backoff)
            .field("deadline", &self.deadline)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("replay_cap", &self.replay_cap)
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
                classifier: Arc::new(HttpClassifier::default()),
                model: Arc::new(JsonModel),
                affinity: None,
                max_attempts: 3,
                budget: Some(Arc::new(RetryBudget::default())),
                backoff: None,
                deadline: None,
                attempt_timeout: None,
                replay_cap: DEFAULT_REPLAY_CAP,
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

    /// The retry budget, or `None` for no budget (only `max_attempts` limits retries).
    pub fn retry_budget(self, budget: Option<RetryBudget>) -> Self {
        self.with(|c| c.budget = budget.map(Arc::new))
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

    /// How the request's model is found (default [`JsonModel`]).
    pub fn model_extractor(self, extractor: impl ModelExtractor) -> Self {
        self.with(|c| c.model = Arc::new(extractor))
    }

    /// How the request's affinity key is found (default: none). See [`AffinityHeader`].
    pub fn affinity_extractor(self, extractor: impl AffinityExtractor) -> Self {
        self.with(|c| c.affinity = Some(Arc::new(extractor)))
    }

    /// How answers are classified (default [`HttpClassifier`]).
    pub fn classifier(self, classifier: impl Classifier) -> Self {
        self.with(|c| c.classifier = Arc::new(classifier))
    }
}

impl<S> Layer<S> for AccountPoolLayer {
    type Service = AccountPoolService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccountPoolService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`AccountPoolLayer`]. Cheap to clone: clones share the pool and the
/// retry budget.
#[derive(Clone)]
pub struct AccountPoolService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> AccountPoolService<S> {
    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.config.pool
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> fmt::Debug for AccountPoolService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountPoolService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, B, RB> Service<Request<B>> for AccountPoolService<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    RB: Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<RB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The ready service goes with the request; this one gets a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // Boxed where it is made: every move of the loop's state copies it whole.
        let (parts, body) = request.into_parts();
        ResponseFuture::new(Box::pin(future::run(
            self.config.clone(),
            inner,
            parts,
            body,
        )))
    }
}
