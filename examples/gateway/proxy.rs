//! The gateway's HTTP side: a reverse proxy through `AccountPoolLayer`, the admin router under
//! `/admin`, client keys, request gating, body limits, server timeouts, and graceful shutdown.
//!
//! Shared by `examples/gateway` (its `main`), `examples/loadgen` and the gateway tests, so not
//! every item is used by every one of them.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::StatusCode;
use http_body_util::{BodyExt, Either, Full, LengthLimitError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::service::TowerToHyperService;
use tower::{Layer, Service, ServiceExt};
use tower_account_pool::admin::{self, AdminConfig};
use tower_account_pool::kiro;
use tower_account_pool::kiro::anthropic::{
    AnthropicConfig, AnthropicLayer, AnthropicService, KiroAttemptLayer, KiroAttemptService,
    KiroRequestBody, RequestedModel,
};
use tower_account_pool::layer::{AccountPoolLayer, AccountPoolService, ReplayBody};
use tower_account_pool::Pool;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;
use tower_http::validate_request::ValidateRequestHeaderLayer;

#[path = "guard.rs"]
pub mod guard;

use guard::check_json;
#[allow(unused_imports)]
pub use guard::{error_response, ClientKeys, RequestGate, UpstreamBase, CLIENT_KEYS_VAR};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body from either client.
pub type UpstreamBody = Either<hyper::body::Incoming, reqwest::Body>;

/// The inner service, the request's URI already pointing at the upstream: a hyper-util client
/// for `http://` upstreams (the lighter path), reqwest (rustls) for `https://` ones. `B` is the
/// request body the layers above hand it.
///
/// The clients sit behind one `Arc`: the pool's layer clones its inner service per request and
/// keeps it in the request's state, where a pointer is cheaper to clone and to move than
/// hyper-util's client (a few hundred bytes and several `Arc`s).
pub struct Upstream<B> {
    clients: Arc<Clients<B>>,
}

struct Clients<B> {
    http: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, B>,
    https: reqwest::Client,
}

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Upstream {
            clients: self.clients.clone(),
        }
    }
}

impl<B> Upstream<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
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
        Ok(Upstream {
            clients: Arc::new(Clients { http, https }),
        })
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

impl<B> Service<http::Request<B>> for Upstream<B>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<UpstreamBody>;
    type Error = UpstreamError;
    type Future = UpstreamFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().scheme_str() == Some("http") {
            return UpstreamFuture::Http(self.clients.http.request(request));
        }
        let https = self.clients.https.clone();
        UpstreamFuture::Https(Box::pin(async move {
            let request = reqwest::Request::try_from(request.map(reqwest::Body::wrap))
                .map_err(|e| UpstreamError::Https(e.without_url()))?;
            let response = https
                .execute(request)
                .await
                .map_err(|e| UpstreamError::Https(e.without_url()))?;
            Ok(http::Response::from(response).map(Either::Right))
        }))
    }
}

/// [`Upstream`]'s future: hyper-util's own (already boxed) for `http://`, reqwest's call for
/// `https://`.
pub enum UpstreamFuture {
    Http(hyper_util::client::legacy::ResponseFuture),
    Https(
        std::pin::Pin<
            Box<dyn Future<Output = Result<http::Response<UpstreamBody>, UpstreamError>> + Send>,
        >,
    ),
}

impl Future for UpstreamFuture {
    type Output = Result<http::Response<UpstreamBody>, UpstreamError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            UpstreamFuture::Http(call) => std::pin::Pin::new(call)
                .poll(cx)
                .map_ok(|r| r.map(Either::Left))
                .map_err(UpstreamError::Http),
            UpstreamFuture::Https(call) => call.as_mut().poll(cx),
        }
    }
}

/// What the gateway speaks to its clients.
#[derive(Clone)]
pub enum Api {
    /// Requests are forwarded as they are, to `ProxyOptions::upstream` (path and query kept).
    /// Kiro accounts' bodies get their `profileArn` per attempt.
    Passthrough,
    /// The Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`,
    /// `/v1/models`) over Kiro accounts, through `kiro::anthropic`. Kiro calls go to
    /// `<base>/generateAssistantResponse`, or to each account's region endpoint without a base.
    Anthropic {
        config: AnthropicConfig,
        base_url: Option<String>,
    },
}

/// How the gateway treats requests.
#[derive(Clone)]
pub struct ProxyOptions {
    /// Base URL every request is forwarded to (its path and query are appended); its scheme,
    /// host and port are the only place account credentials go.
    pub upstream: String,
    /// Largest request body accepted (413 above it).
    pub body_cap: usize,
    /// Longest time a client may take to send its whole body (408 after it).
    pub body_timeout: Duration,
    /// The admin router's configuration; `None` serves no `/admin`.
    pub admin: Option<AdminConfig>,
    /// The keys clients must present; `None` lets anyone through (`--allow-anonymous`).
    pub client_keys: Option<ClientKeys>,
    /// Methods and request-target forms that are forwarded.
    pub gate: RequestGate,
    /// Longest time a client may take to send a request head; also how long a kept-alive
    /// connection may stay idle between requests (hyper bounds both with one timer).
    pub header_read_timeout: Duration,
    /// Most connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// What the gateway speaks to its clients.
    pub api: Api,
}

/// Default [`ProxyOptions::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ProxyOptions::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

impl ProxyOptions {
    pub fn new(upstream: impl Into<String>) -> Self {
        ProxyOptions {
            upstream: upstream.into().trim_end_matches('/').to_owned(),
            body_cap: 8 * 1024 * 1024,
            body_timeout: Duration::from_secs(30),
            admin: None,
            client_keys: None,
            gate: RequestGate::default(),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            api: Api::Passthrough,
        }
    }
}

/// The pass-through stack: the pool, then the per-attempt `profileArn` of Kiro accounts.
type PassthroughService = AccountPoolService<KiroAttemptService<Upstream<ReplayBody<Full<Bytes>>>>>;

/// The Anthropic stack: conversion once, the pool, the per-attempt Kiro request.
type AnthropicStack =
    AnthropicService<AccountPoolService<KiroAttemptService<Upstream<ReplayBody<KiroRequestBody>>>>>;

enum Inner {
    Passthrough {
        service: PassthroughService,
        upstream: UpstreamBase,
    },
    Anthropic(AnthropicStack),
}

struct Proxy {
    inner: Inner,
    body_cap: usize,
    body_timeout: Duration,
    gate: RequestGate,
    client_keys: Option<ClientKeys>,
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
    /// Serves `layer` over the upstream on `listener` until [`shutdown`](Self::shutdown).
    pub fn start(
        listener: tokio::net::TcpListener,
        pool: Pool,
        layer: AccountPoolLayer,
        options: ProxyOptions,
    ) -> Result<Gateway, BoxError> {
        let addr = listener.local_addr()?;
        let inner = match &options.api {
            Api::Passthrough => Inner::Passthrough {
                service: layer.layer(KiroAttemptLayer::new().keep_uri().layer(Upstream::new()?)),
                upstream: UpstreamBase::parse(&options.upstream)?,
            },
            Api::Anthropic { config, base_url } => {
                let attempt = match base_url {
                    Some(url) => KiroAttemptLayer::new().base_url(url)?,
                    None => KiroAttemptLayer::new(),
                };
                let pool_layer = layer.model_extractor(RequestedModel::extractor());
                Inner::Anthropic(
                    AnthropicLayer::new(config.clone())
                        .layer(pool_layer.layer(attempt.layer(Upstream::new()?))),
                )
            }
        };
        let proxy = Arc::new(Proxy {
            inner,
            body_cap: options.body_cap,
            body_timeout: options.body_timeout,
            gate: options.gate.clone(),
            client_keys: options.client_keys.clone(),
        });
        let mut events = None;
        // `/admin` is served by a router that holds the admin API, with the proxy stack as its
        // fallback (as it always was); every other request goes straight to the proxy stack.
        let admin = options.admin.clone().map(|config| {
            events = Some(config.events_closer());
            axum::Router::new()
                .nest("/admin", admin::router(pool, config))
                .fallback_service(proxy_stack(proxy.clone(), &options))
        });
        let app = Front {
            admin,
            proxy: proxy_stack(proxy, &options),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = ServerLimits {
            header_read_timeout: options.header_read_timeout,
            max_connections: options.max_connections.max(1),
        };
        let task = tokio::spawn(serve(listener, app, limits, stopped));
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

/// The proxy route as one `ServiceBuilder` stack, outermost first: panics become a 500,
/// credentials are marked sensitive ([`mark_sensitive`]), every request is traced, the method and
/// request target are checked, then the client's key (from the headers, before any body byte
/// is read), then the body is capped; [`forward`] reads it, checks it and sends it through the
/// pool. Generic over the request body: [`Front`] hands it hyper's own, the admin router's
/// fallback axum's.
#[allow(clippy::result_large_err)] // tower-http's `ValidateRequest` signature
fn proxy_stack<B>(
    proxy: Arc<Proxy>,
    options: &ProxyOptions,
) -> impl tower::Service<
    http::Request<B>,
    Response = http::Response<ProxyBody>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<http::Response<ProxyBody>, std::convert::Infallible>> + Send,
> + Clone
       + Send
       + Sync
       + 'static
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let cap = options.body_cap;
    // The stack is cloned for every request: its layers hold this one `Arc` between them.
    let checks = proxy.clone();
    tower::ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(|_panic| {
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "the gateway failed on this request",
            )
        }))
        .map_request(mark_sensitive::<B>)
        .layer(TraceLayer::new_for_http())
        .layer(ValidateRequestHeaderLayer::custom(
            move |request: &mut http::Request<B>| {
                let checked = checks
                    .gate
                    .check(request.method(), request.uri(), request.version())
                    .and_then(|()| match &checks.client_keys {
                        Some(keys) => keys.check(request.headers()),
                        None => Ok(()),
                    });
                checked.map_err(|response| response.map(Either::Right))
            },
        ))
        .map_response(
            move |response: http::Response<tower_http::limit::ResponseBody<Body>>| {
                // The limit layer's own 413 (a declared length over the cap) in the JSON shape.
                let from_limit = response.status() == StatusCode::PAYLOAD_TOO_LARGE
                    && !is_json(response.headers());
                if from_limit {
                    too_large(cap).map(Either::Right)
                } else {
                    response.map(Either::Left)
                }
            },
        )
        .layer(RequestBodyLimitLayer::new(cap))
        .service_fn(move |request| {
            // Boxed where it is made (one allocation): every layer above moves its future,
            // and a pointer is cheaper to move than the forwarding state.
            let forwarded = Box::pin(forward(proxy.clone(), request));
            async move { Ok::<_, std::convert::Infallible>(forwarded.await) }
        })
}

/// Marks the client's credentials sensitive: `authorization`, `proxy-authorization`, `cookie`
/// and `x-api-key` never show in traces or `Debug` output, and HTTP/2 never indexes them. One
/// pass over the headers (tower-http's `SetSensitiveRequestHeaders` looks each name up with
/// `HeaderMap::entry`, which also makes room for an insert: four lookups per request).
fn mark_sensitive<B>(mut request: http::Request<B>) -> http::Request<B> {
    for (name, value) in request.headers_mut().iter_mut() {
        if *name == header::AUTHORIZATION
            || *name == header::PROXY_AUTHORIZATION
            || *name == header::COOKIE
            || name.as_str() == "x-api-key"
        {
            value.set_sensitive(true);
        }
    }
    request
}

/// The proxy stack's response body: tower-http's panic catcher boxes the body once.
pub type ProxyBody = tower_http::body::UnsyncBoxBody<Bytes, BoxError>;

/// The gateway's front door: `/admin` and the paths under it, as axum's router matches them, go
/// to a router that holds the admin API (with the proxy stack as its fallback); every other
/// request goes straight to the proxy stack, with no router, boxed service or boxed future on
/// the way.
#[derive(Clone)]
pub struct Front<P> {
    admin: Option<axum::Router>,
    proxy: P,
}

impl<P, PB> Service<http::Request<hyper::body::Incoming>> for Front<P>
where
    P: Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<PB>,
        Error = std::convert::Infallible,
    >,
{
    type Response = http::Response<Either<PB, Body>>;
    type Error = std::convert::Infallible;
    type Future = FrontFuture<P::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // axum's router is always ready.
        self.proxy.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        let path = request.uri().path();
        match &mut self.admin {
            Some(router) if path == "/admin" || path.starts_with("/admin/") => FrontFuture::Admin {
                inner: router.call(request),
            },
            _ => FrontFuture::Proxy {
                inner: self.proxy.call(request),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Front`]'s future: the proxy stack's or the admin router's.
    #[project = FrontFutureProj]
    pub enum FrontFuture<F> {
        Proxy { #[pin] inner: F },
        Admin { #[pin] inner: axum::routing::future::RouteFuture<std::convert::Infallible> },
    }
}

impl<F, PB> Future for FrontFuture<F>
where
    F: Future<Output = Result<http::Response<PB>, std::convert::Infallible>>,
{
    type Output = Result<http::Response<Either<PB, Body>>, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            FrontFutureProj::Proxy { inner } => inner.poll(cx).map_ok(|r| r.map(Either::Left)),
            FrontFutureProj::Admin { inner } => inner.poll(cx).map_ok(|r| r.map(Either::Right)),
        }
    }
}

/// Connection limits of the server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Accepts connections (at most `limits.max_connections` at once) and serves `app` on each
/// with hyper-util's HTTP/1 + HTTP/2 server, until `stopped`; then waits for the connections'
/// requests in flight to finish.
///
/// A connection with no request in flight for `limits.header_read_timeout` is closed
/// gracefully, whatever its protocol: HTTP/1's header timer does not cover HTTP/2, whose
/// keep-alive pings only catch a peer that stopped answering, so an HTTP/2 client that answers
/// pings and sends nothing would otherwise keep its connection slot for ever.
pub async fn serve<A, B>(
    listener: tokio::net::TcpListener,
    app: A,
    limits: ServerLimits,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()>
where
    A: Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    A::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut builder = ConnectionBuilder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let max = limits.max_connections.clamp(
        1,
        tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize),
    );
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let (closing, closing_seen) = tokio::sync::watch::channel(false);
    loop {
        let slot = tokio::select! {
            biased;
            _ = &mut stopped => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            biased;
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (builder, app, mut closing) = (builder.clone(), app.clone(), closing_seen.clone());
        let idle_limit = limits.header_read_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            // hyper-util's protocol detection (HTTP/1 or HTTP/2) reads the first bytes without
            // a timer: a client that sends nothing is closed here after the header timeout.
            let mut probe = [0u8; 1];
            match tokio::time::timeout(idle_limit, stream.peek(&mut probe)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let activity = Arc::new(Activity::new());
            let tracked = {
                let activity = activity.clone();
                tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let guard = activity.begin();
                    let call = app.clone().oneshot(request);
                    async move {
                        let response = call.await?;
                        Ok::<_, std::convert::Infallible>(response.map(|body| Tracked {
                            body,
                            _guard: guard,
                        }))
                    }
                })
            };
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(tracked),
            );
            tokio::pin!(connection);
            let mut tick = tokio::time::interval((idle_limit / 4).max(Duration::from_millis(10)));
            let mut closing_down = false;
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    _ = closing.changed(), if !closing_down => {
                        closing_down = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    _ = tick.tick(), if !closing_down => {
                        if activity.idle_for() >= idle_limit {
                            closing_down = true;
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    // Connections finish their requests in flight, then give their slots back.
    let _ = closing.send(true);
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}

/// Requests in flight on one connection, and since when it has had none.
struct Activity {
    started: std::time::Instant,
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds after `started` when the last request ended.
    idle_since_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: std::time::Instant::now(),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            idle_since_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ActivityGuard(self.clone())
    }

    /// How long the connection has had no request in flight (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        let since =
            Duration::from_millis(self.idle_since_ms.load(std::sync::atomic::Ordering::SeqCst));
        self.started.elapsed().saturating_sub(since)
    }
}

/// One request in flight, until its response body is done or dropped.
struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let now = self.0.started.elapsed().as_millis() as u64;
        self.0
            .idle_since_ms
            .fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it ends.
    struct Tracked<B> {
        #[pin]
        body: B,
        _guard: ActivityGuard,
    }
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Connection-level headers a proxy must not forward (RFC 9110 §7.6.1), plus the client's own
/// credentials (`authorization`, `x-api-key`: the pool injects the account's, and a client key
/// never leaves the gateway) and `host` (the upstream's is set: [`UpstreamBase::host`] in
/// pass-through mode, the client's for each Kiro endpoint in Anthropic mode).
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
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.get(..16)
            .is_some_and(|v| v.eq_ignore_ascii_case(b"application/json"))
            || v.windows(4).any(|w| w.eq_ignore_ascii_case(b"json"))
    })
}

/// Removes what must not be forwarded from a request's headers, in place: the
/// [`dropped_request_header`]s and the headers the client named in `Connection`, which are
/// hop-by-hop too (RFC 9110 §7.6.1). A `Content-Length` that is exactly `keep_length` (the
/// body as read, forwarded unchanged) is kept, so the client does not format it again;
/// any other is dropped and the client sets the length of what it sends. The client's `Host`
/// is replaced by `host` (the upstream's, made once at start) or, without one, dropped and
/// left to the client.
fn strip_request_headers(
    headers: &mut http::HeaderMap,
    keep_length: Option<usize>,
    host: Option<&HeaderValue>,
) {
    // The two that every request has, by name; then one scan for the others, which are rare.
    match host {
        Some(host) => {
            headers.insert(header::HOST, host.clone());
        }
        None => {
            headers.remove(header::HOST);
        }
    }
    let keep = keep_length.is_some_and(|len| {
        let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
        let first = values.next();
        values.next().is_none()
            && first.is_some_and(|value| is_decimal(value.as_bytes(), len as u64))
    });
    if !keep {
        headers.remove(header::CONTENT_LENGTH);
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    // Few headers, few to drop: scan again after each removal rather than collect the names.
    while let Some(name) = headers
        .keys()
        // `Host` and `Content-Length` are settled above: the upstream's `Host` stays even if
        // the client names it in `Connection`.
        .find(|name| {
            *name != header::HOST
                && ((dropped_request_header(name) && *name != header::CONTENT_LENGTH)
                    || named.contains(name))
        })
        .cloned()
    {
        headers.remove(&name);
    }
}

/// Whether `text` is `value` in plain decimal digits, as `Content-Length` writes it.
fn is_decimal(text: &[u8], value: u64) -> bool {
    !text.is_empty()
        && text.iter().all(u8::is_ascii_digit)
        && text.iter().try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        }) == Some(value)
}

/// Reads a body (capped by the limit layer) within `timeout` in all: tower-http's body timeout
/// restarts on every frame, so a client trickling one byte at a time would pass it.
async fn read_body<B>(body: B, cap: usize, timeout: Duration) -> Result<Bytes, Response>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match tokio::time::timeout(timeout, collect_data(body)).await {
        Err(_) => Err(error_response(
            StatusCode::REQUEST_TIMEOUT,
            "timeout_error",
            &format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f64()
            ),
        )),
        Ok(Err(e)) => {
            let e: BoxError = e.into();
            if e.downcast_ref::<LengthLimitError>().is_some() {
                Err(too_large(cap))
            } else {
                Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "the request body could not be read",
                ))
            }
        }
        Ok(Ok(data)) => Ok(data),
    }
}

/// A body's data as one `Bytes` (trailers ignored, as `Collected::to_bytes` does): the frame
/// itself when there is one, as with most requests (no copy, no list), else the frames joined.
async fn collect_data<B>(body: B) -> Result<Bytes, B::Error>
where
    B: http_body::Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut data = Bytes::new();
    let mut joined: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame?.into_data() else {
            continue;
        };
        if let Some(joined) = &mut joined {
            joined.extend_from_slice(&chunk);
        } else if data.is_empty() {
            data = chunk;
        } else {
            let mut both = bytes::BytesMut::with_capacity(data.len() + chunk.len());
            both.extend_from_slice(&data);
            both.extend_from_slice(&chunk);
            joined = Some(both);
        }
    }
    Ok(joined.map_or(data, bytes::BytesMut::freeze))
}

fn too_large(cap: usize) -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        &format!("the request body is larger than the limit of {cap} bytes"),
    )
}

/// Forwards one request, already past the gate and the client check, through the pool.
async fn forward<B>(proxy: Arc<Proxy>, request: http::Request<B>) -> Response
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    let uri = match &proxy.inner {
        Inner::Passthrough { upstream, .. } => match upstream.join_request(&parts.uri) {
            Ok(uri) => uri,
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &e.to_string(),
                )
            }
        },
        // Routed by `AnthropicService` on its path; the Kiro URI is set per attempt.
        Inner::Anthropic(_) => parts.uri.clone(),
    };
    let bytes = match read_body(body, proxy.body_cap, proxy.body_timeout).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    if !bytes.is_empty() && is_json(&parts.headers) {
        if let Err(message) = check_json(&bytes) {
            return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", &message);
        }
    }
    // A new request (HTTP/1.1, no extensions) with the client's method and headers, less those
    // that must not be forwarded.
    let (keep_length, host) = match &proxy.inner {
        Inner::Passthrough { upstream, .. } => (Some(bytes.len()), Some(upstream.host())),
        // The body is rewritten, and each Kiro endpoint's `Host` is set by the client.
        Inner::Anthropic(_) => (None, None),
    };
    strip_request_headers(&mut parts.headers, keep_length, host);
    let mut upstream = http::Request::new(Full::new(bytes));
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = parts.headers;
    let result = match &proxy.inner {
        Inner::Passthrough { service, .. } => service
            .clone()
            .oneshot(upstream)
            .await
            .map(|r| r.map(Body::new)),
        Inner::Anthropic(service) => match service.clone().oneshot(upstream).await {
            Ok(response) => Ok(response.map(Body::new)),
            Err(never) => match never {},
        },
    };
    match result {
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
            // 529 has no standard reason phrase: say what Anthropic's clients expect.
            if parts.status.as_u16() == 529 {
                parts
                    .extensions
                    .insert(hyper::ext::ReasonPhrase::from_static(b"Overloaded"));
            }
            // Streamed as it arrives: hyper polls the layer's body frame by frame. Boxed once
            // (`Body`): the response then moves through the layers above as a pointer.
            Response::from_parts(parts, body)
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
/// first run after their interval. They run until the returned [`KiroTasks`] is dropped.
pub async fn kiro_startup(
    pool: &Pool,
    refresh_every: Duration,
    probe_every: Duration,
) -> KiroTasks {
    kiro::refresh_pass(pool).await;
    kiro::probe_pass(pool).await;
    // Each waits its interval, then holds the library's task, which stops when this one is
    // aborted (the task is dropped with it).
    let later =
        |pool: Pool, every: Duration, start: fn(&Pool, Duration) -> kiro::BackgroundTask| {
            tokio::spawn(async move {
                tokio::time::sleep(every).await;
                let _task = start(&pool, every);
                drop(pool); // the library's task ends by itself once the pool is dropped
                std::future::pending::<()>().await;
            })
        };
    KiroTasks(vec![
        later(pool.clone(), refresh_every, kiro::spawn_refresher),
        later(pool.clone(), probe_every, kiro::spawn_usage_prober),
    ])
}

/// The Kiro refresher and usage prober [`kiro_startup`] started; dropping this stops them.
#[derive(Debug, Default)]
pub struct KiroTasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for KiroTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
