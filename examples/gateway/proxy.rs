//! The gateway's HTTP side: a reverse proxy through `AccountPoolLayer`, the admin router under
//! `/admin`, request-body limits, and graceful shutdown.
//!
//! Shared by `examples/gateway` (its `main`), `examples/loadgen` and the gateway tests, so not
//! every item is used by every one of them.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceExt};
use tower_account_pool::admin::{self, AdminConfig};
use tower_account_pool::layer::{
    AccountPoolLayer, AccountPoolService, ReplayBody, SelectedAccount,
};
use tower_account_pool::{kiro, Pool};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body sent upstream: the layer's as is, or rewritten (see [`for_account`]).
type OutBody = Either<ReplayBody<Full<Bytes>>, Full<Bytes>>;

type HttpClient =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, OutBody>;

/// A response body from either client.
pub type UpstreamBody = Either<hyper::body::Incoming, reqwest::Body>;

/// The inner service, the request's URI already pointing at the upstream: a hyper-util client
/// for `http://` upstreams (the lighter path), reqwest (rustls) for `https://` ones.
#[derive(Clone)]
pub struct Upstream {
    http: HttpClient,
    https: reqwest::Client,
}

impl Upstream {
    pub fn new() -> Result<Self, BoxError> {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let https = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        Ok(Upstream { http, https })
    }
}

/// Why an upstream call failed (no URL in the message: it could carry credentials).
#[derive(Debug)]
pub enum UpstreamError {
    Http(hyper_util::client::legacy::Error),
    Https(reqwest::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Http(e) => write!(f, "upstream call failed: {e}"),
            UpstreamError::Https(e) => write!(f, "upstream call failed: {e}"),
        }
    }
}

impl std::error::Error for UpstreamError {}

impl Service<http::Request<ReplayBody<Full<Bytes>>>> for Upstream {
    type Response = http::Response<UpstreamBody>;
    type Error = UpstreamError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<http::Response<UpstreamBody>, UpstreamError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<ReplayBody<Full<Bytes>>>) -> Self::Future {
        let plain_http = request.uri().scheme_str() == Some("http");
        if plain_http && !is_kiro(&request) {
            // The common path: nothing to rewrite, no clone of the client.
            let call = self.http.request(request.map(Either::Left));
            return Box::pin(async move {
                call.await
                    .map(|r| r.map(Either::Left))
                    .map_err(UpstreamError::Http)
            });
        }
        let (http, https) = (self.http.clone(), self.https.clone());
        Box::pin(async move {
            let request = for_account(request).await;
            if plain_http {
                return http
                    .request(request)
                    .await
                    .map(|r| r.map(Either::Left))
                    .map_err(UpstreamError::Http);
            }
            let request = reqwest::Request::try_from(request.map(reqwest::Body::wrap))
                .map_err(|e| UpstreamError::Https(e.without_url()))?;
            let response = https
                .execute(request)
                .await
                .map_err(|e| UpstreamError::Https(e.without_url()))?;
            Ok(http::Response::from(response).map(Either::Right))
        })
    }
}

fn is_kiro<B>(request: &http::Request<B>) -> bool {
    request
        .extensions()
        .get::<SelectedAccount>()
        .is_some_and(|s| s.credential_kind() == kiro::KIND)
}

/// Kiro's chat body names the account: social accounts send their `profileArn` as a top-level
/// field, Builder ID / IdC accounts must send none. The layer picks the account per attempt,
/// so the field is set here, from the [`SelectedAccount`] (a read-only credential field, not a
/// secret). Other accounts' requests, and bodies that are not a JSON object, pass unchanged.
async fn for_account(request: http::Request<ReplayBody<Full<Bytes>>>) -> http::Request<OutBody> {
    if !is_kiro(&request) {
        return request.map(Either::Left);
    }
    let arn = request
        .extensions()
        .get::<SelectedAccount>()
        .and_then(|s| s.field("profileArn"));
    let (mut parts, body) = request.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let bytes = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut map)) => {
            match arn {
                Some(arn) => map.insert("profileArn".into(), arn.into()),
                None => map.remove("profileArn"),
            };
            parts.headers.remove(header::CONTENT_LENGTH);
            Bytes::from(serde_json::Value::Object(map).to_string())
        }
        _ => bytes,
    };
    http::Request::from_parts(parts, Either::Right(Full::new(bytes)))
}

/// How the gateway treats requests.
#[derive(Clone)]
pub struct ProxyOptions {
    /// Base URL every request is forwarded to (its path and query are appended).
    pub upstream: String,
    /// Largest request body accepted (413 above it).
    pub body_cap: usize,
    /// Longest time a client may take to send its body (408 after it).
    pub body_timeout: Duration,
    /// The admin router's configuration; `None` serves no `/admin`.
    pub admin: Option<AdminConfig>,
}

impl ProxyOptions {
    pub fn new(upstream: impl Into<String>) -> Self {
        ProxyOptions {
            upstream: upstream.into().trim_end_matches('/').to_owned(),
            body_cap: 8 * 1024 * 1024,
            body_timeout: Duration::from_secs(30),
            admin: None,
        }
    }
}

struct Proxy {
    service: AccountPoolService<Upstream>,
    options: ProxyOptions,
}

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    /// Ends the admin router's event streams, which would otherwise hold the shutdown.
    events: Option<admin::EventsCloser>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Gateway {
    /// Serves `layer` over the upstream on `listener` until [`shutdown`](Self::shutdown) or
    /// `signal` resolves, whichever comes first.
    pub fn start(
        listener: tokio::net::TcpListener,
        pool: Pool,
        layer: AccountPoolLayer,
        options: ProxyOptions,
    ) -> Result<Gateway, BoxError> {
        let addr = listener.local_addr()?;
        let proxy = Arc::new(Proxy {
            service: layer.layer(Upstream::new()?),
            options: options.clone(),
        });
        let mut app = axum::Router::new();
        let mut events = None;
        if let Some(config) = options.admin {
            events = Some(config.events_closer());
            app = app.nest("/admin", admin::router(pool, config));
        }
        let app = app.fallback(move |request: Request| forward(proxy.clone(), request));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Gateway {
            addr,
            events,
            stop: Some(stop),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits for the requests in flight (streams included) to
    /// finish.
    pub async fn shutdown(mut self) -> Result<(), BoxError> {
        if let Some(events) = &self.events {
            events.close();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }

    /// Waits until the server ends by itself (it does not without `shutdown`).
    pub async fn wait(&mut self) -> Result<(), BoxError> {
        (&mut self.task).await??;
        Ok(())
    }
}

/// A JSON error in the shape the layer uses for its own answers.
pub fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// Connection-level headers a proxy must not forward (RFC 9110 §7.6.1), plus the client's own
/// `authorization` (the pool injects the account's) and `host` (the upstream's is set).
fn dropped_request_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "authorization"
            | "x-api-key"
    )
}

fn dropped_response_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"))
}

/// Reads a body up to `cap` bytes within `timeout`.
async fn read_body(body: Body, cap: usize, timeout: Duration) -> Result<Bytes, Response> {
    let limited = Limited::new(body, cap);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(error_response(
            StatusCode::REQUEST_TIMEOUT,
            "timeout_error",
            &format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f64()
            ),
        )),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(cap)),
        Ok(Err(_)) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the request body could not be read",
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

fn too_large(cap: usize) -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        &format!("the request body is larger than the limit of {cap} bytes"),
    )
}

/// Forwards one request through the pool.
async fn forward(proxy: Arc<Proxy>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let options = &proxy.options;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > options.body_cap as u64) {
        return too_large(options.body_cap);
    }
    let bytes = match read_body(body, options.body_cap, options.body_timeout).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    if !bytes.is_empty() && is_json(&parts.headers) {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("the request body is not valid JSON: {e}"),
            );
        }
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = match format!("{}{}", options.upstream, path).parse() {
        Ok(uri) => uri,
        Err(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "the request path cannot be forwarded",
            )
        }
    };
    let mut upstream = http::Request::new(Full::new(bytes));
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = uri;
    for (name, value) in &parts.headers {
        if !dropped_request_header(name) {
            upstream.headers_mut().append(name.clone(), value.clone());
        }
    }
    let service = proxy.service.clone();
    match service.oneshot(upstream).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            let names: Vec<HeaderName> = parts
                .headers
                .keys()
                .filter(|n| dropped_response_header(n))
                .cloned()
                .collect();
            for name in names {
                parts.headers.remove(name);
            }
            // Streamed as it arrives: axum polls the layer's body frame by frame.
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => {
            tracing::warn!(error = %e, "upstream call failed on every attempt");
            error_response(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "the upstream could not be reached",
            )
        }
    }
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Kiro accounts at start: one refresh pass (expired tokens are renewed before the first
/// request) and one usage probe per account, awaited; then the periodic refresher and prober,
/// first run after their interval. Abort the returned tasks at shutdown.
pub async fn kiro_startup(
    pool: &Pool,
    refresh_every: Duration,
    probe_every: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    kiro::refresh_pass(pool).await;
    let mut probes = tokio::task::JoinSet::new();
    for account in pool.snapshot().accounts {
        if account.credential.kind == kiro::KIND && account.settings.enabled {
            let pool = pool.clone();
            probes.spawn(async move {
                let _ = pool.probe_kiro_account(account.id.as_str()).await;
            });
        }
    }
    while probes.join_next().await.is_some() {}
    let later =
        |pool: Pool, every: Duration, start: fn(&Pool, Duration) -> tokio::task::JoinHandle<()>| {
            tokio::spawn(async move {
                tokio::time::sleep(every).await;
                let _ = start(&pool, every).await;
            })
        };
    vec![
        later(pool.clone(), refresh_every, kiro::spawn_refresher),
        later(pool.clone(), probe_every, kiro::spawn_usage_prober),
    ]
}
