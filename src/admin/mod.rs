//! The admin API, Prometheus metrics, a health endpoint and a live dashboard, as one axum
//! [`Router`] to nest under any prefix (feature `admin`).
//!
//! ```
//! use tower_account_pool::admin::{self, AdminConfig};
//! use tower_account_pool::{Account, Pool};
//! use tower_account_pool::credential::BearerToken;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::builder()
//!     .account(Account::new("acct-1", BearerToken::new("sk-upstream-secret")))
//!     .build()?;
//! // The token comes from the environment (or your secret store); there is no default.
//! # std::env::set_var("POOL_ADMIN_TOKEN", "a-long-random-admin-token-0123456789");
//! let config = AdminConfig::from_env("POOL_ADMIN_TOKEN")?;
//! let app = axum::Router::new().nest("/admin", admin::router(pool, config));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let _ = (app, listener); /*
//! axum::serve(listener, app).await?;
//! # */
//! # Ok(())
//! # }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! ## Endpoints
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the dashboard (a static page; it asks for the token and sends it with every call). Nested with `.nest("/admin", …)` it is at `/admin`, without a trailing slash |
//! | `GET /health` | `200 {"status":"ok","routable":n,"total":m}`, `503` with `"unavailable"` when no account could take a request (the selection predicate). **Open**: no token, no account names |
//! | `GET /accounts` | `{"accounts":[…],"stats":{total,healthy,coolingDown,unhealthy,disabled,routable,totalUsage,totalErrors}}`; `?shape=legacy` gives the older system's `{"claude-kiro-oauth":[…],"_accountPoolStats":{…}}` |
//! | `GET /accounts/{id}` | one account |
//! | `POST /accounts` | add: `{"id", "bearerToken" \| "apiKey" (+ "headerName"), settings…}` → `201`; a duplicate id → `409` |
//! | `PATCH /accounts/{id}` | change `enabled`, `models`, `notSupportedModels`, `weight`, `priority`, `maxInFlight`, `probeModel`, `baseUrl` |
//! | `DELETE /accounts/{id}` | remove |
//! | `POST /accounts/reset`, `POST /accounts/{id}/reset` | clear health state (all, one) |
//! | `POST /accounts/{id}/refresh` | refresh the credential now |
//! | `POST /accounts/{id}/probe` | run the configured [`Prober`] and report its outcome to the pool |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /events` | server-sent events: `state` (a [`StateChange`](crate::pool::StateChange)), `lagged`; they end at [`EventsCloser::close`] (call it before a graceful shutdown) |
//!
//! Errors are `{"error":{"type","message"}}` with status 400, 401, 404, 405, 409, 413, 501, 502
//! or 504.
//!
//! ## Security
//!
//! - Every route but `GET /health` and the static `GET /` page requires
//!   `Authorization: Bearer <token>`, compared in constant time. An [`AdminConfig`] cannot be
//!   made without a token of at least [`MIN_TOKEN_LEN`] characters, so neither can a router.
//! - `/events` takes the token in the header too (never in the URL, where it would end up in
//!   logs and history): the dashboard reads the stream with `fetch`, not `EventSource`.
//! - Responses never hold a secret: credentials appear masked (kind, last 4, file path) and
//!   credentials and query values inside a `baseUrl` are redacted (a `baseUrl` with a query
//!   is refused). Request bodies are limited (64 KiB by default).
//! - The dashboard carries a strict Content-Security-Policy (no external anything) and writes
//!   every value with `textContent`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;
use subtle::{Choice, ConstantTimeEq};
use tokio::sync::broadcast::error::RecvError;

use crate::account::{AccountId, AccountSettings};
use crate::credential::{BoxFuture, SharedCredential};
use crate::health::Outcome;
use crate::pool::Pool;

mod body;
mod error;
mod metrics;
mod view;

pub use metrics::SelectionLatency;

use error::ApiError;

/// Shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Default cap on request bodies.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Default time a probe may take before the endpoint gives up on it.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

const DASHBOARD: &str = include_str!("dashboard.html");

/// Why an [`AdminConfig`] could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminConfigError {
    /// The environment variable is not set (or not UTF-8).
    #[error("environment variable `{0}` is not set: it must hold the admin token")]
    MissingEnv(String),
    /// The token is empty.
    #[error("the admin token is empty")]
    EmptyToken,
    /// The token is too short to resist guessing.
    #[error("the admin token is too short: use at least {MIN_TOKEN_LEN} characters (for example 32 random hex digits)")]
    ShortToken,
    /// The token holds characters a header cannot carry.
    #[error("the admin token must be printable ASCII without spaces")]
    InvalidToken,
}

/// The account a probe is for: its id, settings (see `probe_model`) and credential.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The account.
    pub id: AccountId,
    /// Its settings; `probe_model` names the model a probe should use.
    pub settings: AccountSettings,
    /// Its credential, to apply to the probe request.
    pub credential: SharedCredential,
}

/// Runs an active probe for one account and says how it went. The outcome is reported to the
/// pool with [`Pool::report_probe`].
pub type Prober = Arc<dyn Fn(ProbeTarget) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// Settings of the admin router. Holds the admin token (never shown by `Debug`).
#[derive(Clone)]
pub struct AdminConfig {
    token: Arc<str>,
    prober: Option<Prober>,
    latency: SelectionLatency,
    body_limit: usize,
    probe_timeout: Duration,
    /// `true` once [`EventsCloser::close`] was called.
    events_closed: Arc<tokio::sync::watch::Sender<bool>>,
}

/// Ends every `GET /events` stream of one admin router (see [`AdminConfig::events_closer`]).
///
/// An event stream never ends by itself, and a server shutting down gracefully waits for open
/// connections: close the streams first, or an open dashboard holds the shutdown.
#[derive(Debug, Clone)]
pub struct EventsCloser(Arc<tokio::sync::watch::Sender<bool>>);

impl EventsCloser {
    /// Ends the open event streams (each after the event it is sending, if any) and every one
    /// opened later.
    pub fn close(&self) {
        self.0.send_replace(true);
    }
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &"<redacted>")
            .field("prober", &self.prober.is_some())
            .field("body_limit", &self.body_limit)
            .field("probe_timeout", &self.probe_timeout)
            .finish_non_exhaustive()
    }
}

impl AdminConfig {
    /// A configuration with this admin token. It must be at least [`MIN_TOKEN_LEN`]
    /// characters of printable ASCII without spaces.
    pub fn new(token: impl AsRef<str>) -> Result<Self, AdminConfigError> {
        let token = token.as_ref();
        if token.is_empty() {
            return Err(AdminConfigError::EmptyToken);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AdminConfigError::InvalidToken);
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(AdminConfigError::ShortToken);
        }
        Ok(AdminConfig {
            token: Arc::from(token),
            prober: None,
            latency: SelectionLatency::new(),
            body_limit: DEFAULT_BODY_LIMIT,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            events_closed: Arc::new(tokio::sync::watch::Sender::new(false)),
        })
    }

    /// A handle that ends the `/events` streams of the router made with this configuration:
    /// call [`close`](EventsCloser::close) before a graceful shutdown.
    pub fn events_closer(&self) -> EventsCloser {
        EventsCloser(self.events_closed.clone())
    }

    /// A configuration with the admin token read from environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self, AdminConfigError> {
        let token = std::env::var(var).map_err(|_| AdminConfigError::MissingEnv(var.to_owned()))?;
        Self::new(token.trim())
    }

    /// Sets the probe run by `POST /accounts/{id}/probe`. Without one that endpoint answers
    /// `501`.
    pub fn prober<F, Fut>(mut self, probe: F) -> Self
    where
        F: Fn(ProbeTarget) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        self.prober = Some(Arc::new(move |target| Box::pin(probe(target))));
        self
    }

    /// Shows this histogram in `/metrics` (select through it to fill it).
    pub fn selection_latency(mut self, latency: SelectionLatency) -> Self {
        self.latency = latency;
        self
    }

    /// Caps request bodies at `bytes` (default [`DEFAULT_BODY_LIMIT`]).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// How long a probe may run before the endpoint answers `504` (default 30 s).
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    fn authorized(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing admin token: send `Authorization: Bearer <token>`",
            ));
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .unwrap_or("");
        // Compare as many bytes as the token has whatever was given, so the time taken says
        // nothing about the token, not even whether the lengths match.
        let expected = self.token.as_bytes();
        let same_len = given.len() == expected.len();
        let candidate = if same_len { given.as_bytes() } else { expected };
        let equal = candidate.ct_eq(expected) & Choice::from(u8::from(same_len));
        if bool::from(equal) {
            Ok(())
        } else {
            Err(ApiError::unauthorized("invalid admin token"))
        }
    }
}

#[derive(Clone)]
struct AdminState {
    pool: Pool,
    config: Arc<AdminConfig>,
}

/// The admin router for `pool`: nest it under any prefix. See the [module docs](self).
pub fn router(pool: Pool, config: AdminConfig) -> Router {
    let body_limit = config.body_limit;
    let state = AdminState {
        pool,
        config: Arc::new(config),
    };
    let protected = Router::new()
        .route("/accounts", get(list_accounts).post(add_account))
        .route("/accounts/reset", post(reset_all))
        .route(
            "/accounts/{id}",
            get(get_account).patch(patch_account).delete(delete_account),
        )
        .route("/accounts/{id}/reset", post(reset_account))
        .route("/accounts/{id}/refresh", post(refresh_account))
        .route("/accounts/{id}/probe", post(probe_account))
        .route("/metrics", get(metrics_text))
        .route("/events", get(events))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(dashboard))
        .route("/health", get(health))
        .merge(protected)
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

async fn unknown_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such admin route (see the admin module docs for the list)",
    )
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this admin route does not take {method}"),
    )
}

/// The `{id}` of a route, with a JSON error when it cannot be decoded.
struct AccountPath(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for AccountPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| AccountPath(id))
            .map_err(|_| ApiError::bad_request("the account id in the path is not valid UTF-8"))
    }
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    match state.config.authorized(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn health(State(state): State<AdminState>) -> Response {
    let snapshot = state.pool.snapshot();
    let routable = snapshot.available();
    let (status, word) = if routable > 0 {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    let body = json!({
        "status": word,
        "routable": routable,
        "total": snapshot.accounts.len(),
    });
    (status, Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    shape: Option<String>,
}

async fn list_accounts(
    State(state): State<AdminState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query
        .map_err(|_| ApiError::bad_request("invalid query string: use `?shape=legacy` or none"))?;
    let snapshot = state.pool.snapshot();
    match query.shape.as_deref() {
        None | Some("") | Some("accounts") => Ok(Json(view::accounts(&snapshot)).into_response()),
        Some("legacy") => Ok(Json(view::legacy(&snapshot)).into_response()),
        Some(other) => Err(ApiError::bad_request(format!(
            "unknown shape `{}`: use `legacy`, or leave it out",
            error::shorten(other)
        ))),
    }
}

fn account_json(pool: &Pool, id: &str) -> Result<serde_json::Value, ApiError> {
    let snapshot = pool.snapshot();
    let account = snapshot
        .account(id)
        .ok_or_else(|| ApiError::not_found(id))?;
    Ok(view::account(account))
}

async fn get_account(
    State(state): State<AdminState>,
    AccountPath(id): AccountPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    account_json(&state.pool, &id).map(Json)
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(_)
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than the admin API accepts",
            )
        }
        other => ApiError::bad_request(format!("could not read the request body: {other}")),
    })
}

async fn add_account(
    State(state): State<AdminState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body_bytes(body)?;
    let account = body::parse_new_account(&bytes)?;
    let id = account.id().clone();
    state.pool.add(account)?;
    let view = account_json(&state.pool, id.as_str())?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn patch_account(
    State(state): State<AdminState>,
    AccountPath(id): AccountPath,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // An unknown account is a 404 whatever the body says.
    let pool = &state.pool;
    pool.account(&id)?;
    let patch = body::parse_patch(&body_bytes(body)?)?;
    pool.update_settings(&id, |s| patch.apply(s))?;
    match patch.enabled {
        Some(true) => pool.enable(&id)?,
        Some(false) => pool.disable(&id)?,
        None => {}
    }
    account_json(pool, &id).map(Json)
}

async fn delete_account(
    State(state): State<AdminState>,
    AccountPath(id): AccountPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.pool.remove(&id)?;
    Ok(Json(json!({ "removed": id })))
}

async fn reset_account(
    State(state): State<AdminState>,
    AccountPath(id): AccountPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.pool.reset(&id)?;
    account_json(&state.pool, &id).map(Json)
}

async fn reset_all(State(state): State<AdminState>) -> Json<serde_json::Value> {
    state.pool.reset_all();
    Json(json!({ "reset": state.pool.len() }))
}

async fn refresh_account(
    State(state): State<AdminState>,
    AccountPath(id): AccountPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.pool.refresh_credential(&id).await?;
    account_json(&state.pool, &id).map(Json)
}

async fn probe_account(
    State(state): State<AdminState>,
    AccountPath(id): AccountPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let account = state.pool.account(&id)?;
    let Some(prober) = state.config.prober.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "probe_not_configured",
            "no prober is configured: set one with AdminConfig::prober",
        ));
    };
    let target = ProbeTarget {
        id: account.id().clone(),
        settings: account.settings().clone(),
        credential: account.credential().clone(),
    };
    let outcome = tokio::time::timeout(state.config.probe_timeout, prober(target))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "probe_timeout",
                format!(
                    "the probe of `{id}` did not finish within {} s; nothing was reported",
                    state.config.probe_timeout.as_secs_f64()
                ),
            )
        })?;
    state.pool.report_probe(&id, outcome)?;
    Ok(Json(json!({
        "outcome": outcome.class(),
        "account": account_json(&state.pool, &id)?,
    })))
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    let snapshot = state.pool.snapshot();
    let text = metrics::render(&state.pool, &snapshot, &state.config.latency);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn events(
    State(state): State<AdminState>,
) -> Sse<impl Stream<Item = Result<Event, axum::Error>>> {
    let receiver = state.pool.subscribe();
    let closed = state.config.events_closed.subscribe();
    let ready = stream::once(async { Ok(Event::default().event("ready").data("{}")) });
    let changes = stream::unfold(
        (receiver, closed),
        |(mut receiver, mut closed)| async move {
            let received = {
                use futures_util::future::{select, Either};
                let next = std::pin::pin!(receiver.recv());
                let stop = std::pin::pin!(closed.wait_for(|closed| *closed));
                match select(next, stop).await {
                    Either::Left((received, _)) => received,
                    // Closed (or the configuration gone): the stream ends, the connection closes.
                    Either::Right(_) => return None,
                }
            };
            let event = match received {
                Ok(change) => Event::default().event("state").json_data(change),
                Err(RecvError::Lagged(missed)) => Event::default()
                    .event("lagged")
                    .json_data(json!({ "missed": missed })),
                Err(RecvError::Closed) => return None,
            };
            Some((event, (receiver, closed)))
        },
    );
    Sse::new(futures_util::StreamExt::chain(ready, changes)).keep_alive(KeepAlive::default())
}
