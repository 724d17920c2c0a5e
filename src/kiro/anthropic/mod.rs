//! The Anthropic Messages API over Kiro accounts: a tower layer that turns Anthropic requests
//! into CodeWhisperer `generateAssistantResponse` calls and the Kiro event stream back into
//! Anthropic answers (feature `kiro`).
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_account_pool::kiro::anthropic::{
//!     AnthropicConfig, AnthropicLayer, KiroAttemptLayer, RequestedModel,
//! };
//! use tower_account_pool::kiro::eventstream::Message;
//! use tower_account_pool::kiro::{KiroClassifier, KiroCredential, KiroOptions};
//! use tower_account_pool::layer::{AccountPoolLayer, ReplayBody};
//! use tower_account_pool::{Account, Pool};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let credential = KiroCredential::from_json(
//!     r#"{"accessToken":"at","refreshToken":"rt","authMethod":"social",
//!         "profileArn":"arn:aws:codewhisperer:us-east-1:1:profile/A","expiresAt":"2099-01-01T00:00:00Z"}"#,
//!     KiroOptions::default(),
//! )?;
//! let pool = Pool::builder().account(Account::new("kiro-1", credential)).build()?;
//!
//! // Stands in for an HTTP client: answers with a Kiro event stream.
//! let kiro = service_fn(|request: Request<ReplayBody<_>>| async move {
//!     assert_eq!(request.uri(), "http://127.0.0.1:9/generateAssistantResponse");
//!     let body = request.into_body().collect().await.unwrap().to_bytes();
//!     assert!(body.starts_with(br#"{"profileArn":"arn:aws:codewhisperer:us-east-1:1:profile/A","#));
//!     let mut stream = Vec::new();
//!     for event in [r#"{"content":"Hello"}"#, r#"{"content":" there"}"#] {
//!         stream.extend(Message::event("assistantResponseEvent", event).encode().unwrap());
//!     }
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(stream))))
//! });
//!
//! let service = ServiceBuilder::new()
//!     .layer(AnthropicLayer::new(AnthropicConfig::default()))
//!     .layer(
//!         AccountPoolLayer::new(pool)
//!             .classifier(KiroClassifier::default())
//!             .model_extractor(RequestedModel::extractor()),
//!     )
//!     .layer(KiroAttemptLayer::new().base_url("http://127.0.0.1:9")?)
//!     .service(kiro);
//!
//! let request = Request::post("/v1/messages?beta=true")
//!     .header("x-api-key", "client key")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"claude-sonnet-4-5","max_tokens":100,
//!         "messages":[{"role":"user","content":"Hi"}]}"#)))?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! let body = response.into_body().collect().await?.to_bytes();
//! let message: serde_json::Value = serde_json::from_slice(&body)?;
//! assert_eq!(message["content"][0]["text"], "Hello there");
//! assert_eq!(message["stop_reason"], "end_turn");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Composition
//!
//! [`AnthropicLayer`] is the outer layer. It routes by path (the query string, such as Claude
//! Code's `?beta=true`, is ignored):
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/messages` | converted **once** into a CodeWhisperer body and sent to the inner service (the pool), so a retry on another account replays the converted body |
//! | `POST /v1/messages/count_tokens` | `{"input_tokens": n}`, computed here |
//! | `GET /v1/models`, `GET /v1/models/{id}` | the [`ModelTable`], in Anthropic's list / model shape |
//! | anything else | 404 `not_found_error` |
//!
//! Every answer carries a `request-id` header (`req_…`), as Anthropic's do.
//!
//! Inside [`AccountPoolLayer`](crate::layer::AccountPoolLayer), [`KiroAttemptLayer`] sets
//! what depends on the chosen account, per attempt: the `profileArn` and the URI. The pool
//! finds the model through [`RequestedModel::extractor`] (the converted body has no top-level
//! `model`). The inner service receives `POST <uri>` with `content-type: application/json`,
//! `accept: application/json` and the credential's headers; none of the client's headers (its
//! API key, `anthropic-*`) are forwarded.
//!
//! # Request conversion
//!
//! - `model`: looked up in the [`ModelTable`] (id or alias, ASCII case-insensitive); an
//!   unknown model is a 400 `invalid_request_error` naming the known ones, never a fallback.
//! - `system` (string or text blocks, joined with `\n`) becomes the first history pair: a user
//!   turn with the text, an assistant turn `I will follow these instructions.`.
//! - `thinking` `enabled` (budget clamped to 1 024–24 576, default 20 000) or `adaptive`
//!   (effort from `output_config.effort`: low/medium/high, else high) puts Kiro's thinking tags
//!   (`<thinking_mode>…`) before the system text; the answer's leading `<thinking>…</thinking>`
//!   becomes a thinking block.
//! - `messages`: `role: "system"` messages (Claude Code sends them) are user turns;
//!   consecutive turns of one role merge (user text joined with `\n`, assistant with `\n\n`);
//!   the history alternates user/assistant (a `Continue` / `...` turn fills a gap); a trailing
//!   assistant turn (a prefill) stays in the history and the current message is `Continue`.
//!   The last user turn is the current message; its empty content becomes
//!   `Tool results provided.` (only tool results) or `Continue`.
//! - Blocks: `text` joined; `image` (base64 jpeg/png/gif/webp) → `images` (a URL source or
//!   another media type is a 400); `document` → its text for text documents, a placeholder
//!   line otherwise; earlier `thinking` → `<thinking>…</thinking>` before the assistant text
//!   (signature dropped); `redacted_thinking` and server-tool blocks dropped; `tool_use` →
//!   `toolUses` (input copied as it is); `tool_result` → `toolResults` (`content` string or
//!   blocks: text joined with `\n`, images moved to the turn's `images`; `is_error` →
//!   `status: "error"`, `isError: true`; an empty result is sent as `(no output)`).
//! - Tool pairing: an assistant turn's calls without a result in the next turn are removed,
//!   results for no call (or repeated) are removed (Kiro rejects both).
//! - `tools`: client tools become `toolSpecification`s in the current message; server tools
//!   (`type` other than `custom`, e.g. `web_search_20250305`) are dropped; a schema is copied
//!   when its top level is well formed (`type` a non-empty string, `properties` an object and
//!   `required` an array of strings where present, no `null` anywhere), else normalized
//!   (nulls removed, `type`, `properties`, `required` fixed); an empty description becomes the tool name; every tool the history
//!   calls but the request does not declare gets a placeholder definition.
//! - [`Limits`]: tool names over 63 bytes are shortened deterministically and mapped back in
//!   the answer; descriptions are cut at 10 000 characters; more than 128 tools, or more than
//!   700 000 bytes of prompt text, is a 400 (the latter says `prompt is too long`, which makes
//!   Claude Code compact).
//! - `metadata.user_id`: Claude Code's session id (legacy `…_session_<uuid>` or JSON
//!   `session_id`) becomes the `conversationId`; otherwise a random UUID.
//! - Dropped, never an error: `max_tokens` (Kiro has no such field), `temperature`, `top_p`,
//!   `top_k`, `tool_choice` (Kiro cannot force a tool), `cache_control` on any block,
//!   `context_management`, `service_tier`, `container`, the `anthropic-beta` and
//!   `anthropic-version` headers, and unknown fields.
//! - `stop_sequences` are applied to the answer: its text is cut at the first match, and the
//!   answer ends with `stop_reason: "stop_sequence"`.
//!
//! # Answer conversion
//!
//! [`StreamConverter`] reads the event stream as it arrives (any split):
//! `assistantResponseEvent` → text, `reasoningContentEvent` → thinking, `toolUseEvent` →
//! `tool_use` blocks (input streamed as `input_json_delta` fragments as they come; a tool with
//! no input gets `{}`; names mapped back), `contextUsageEvent` → usage. Block indices count
//! from 0 in start order; a thinking block ends with a `signature_delta` (an opaque
//! `kiro-emulated-thinking-…` value: the thinking is prompt-emulated and the signature is
//! dropped when the client sends it back). With `stream: true` the answer is Anthropic SSE,
//! with a `ping` event whenever the upstream is silent for the
//! [`ping_interval`](AnthropicConfig::ping_interval); otherwise one Message JSON.
//!
//! `stop_reason`: `stop_sequence` when one matched; `model_context_window_exceeded` when
//! Kiro's context usage reached 100 %; `max_tokens` when Kiro cut the answer
//! (`ContentLengthExceededException`, or a tool call whose input ends incomplete);
//! `tool_use` when a tool was called; else `end_turn`.
//!
//! **Usage**: `input_tokens` is Kiro's `contextUsagePercentage` × the model's context window
//! / 100 when the stream reports it (in `message_delta`; `message_start` carries the
//! estimate), else an estimate over the converted prompt text: ASCII characters count ¼
//! token, other characters ⅔ token (1.5 characters per token), plus 1 600 per image.
//! `output_tokens` is the same estimate over the answer's text, thinking and tool input. No
//! cache is reported (`cache_*_input_tokens` are 0).
//!
//! # Errors
//!
//! Every error is Anthropic-shaped ([`AnthropicError`]): a bad request or an unknown model
//! 400 `invalid_request_error`; a body over [`body_limit`](AnthropicConfig::body_limit) 413
//! `request_too_large`. Upstream answers map as: Kiro 400 → 400 (`Input is too long` →
//! `prompt is too long: …`); 402 / 429 / every candidate rate limited or out of quota (the
//! layer's [`Rejection::Exhausted`]) → 429 `rate_limit_error` with `retry-after`; 401 /
//! 403 (the account's credential, not the client's key), 503, 529 and no account able to
//! serve otherwise → 529 `overloaded_error` with `retry-after`; other 5xx → 500 `api_error`
//! with `retry-after`; 408 / 504 → 504 `timeout_error`; a failure of the inner service → 529.
//!
//! An exception frame at the start of the stream fails over inside the pool (the Kiro
//! classifier peeks at it). When the pool still hands out a stream that fails before any
//! answer content (an exception first, or after metadata-only frames such as
//! `messageMetadataEvent` or `meteringEvent`; a read error; a cut frame), the client gets an
//! HTTP error, also with `stream: true` (the answer's head waits for the first content):
//! `ThrottlingException` and quota exceptions → 429 `rate_limit_error`, validation
//! exceptions and `Input is too long` → 400 `invalid_request_error`, internal-server
//! exceptions and read errors → 500 `api_error`, others → 529 `overloaded_error`; the
//! retryable ones carry `retry-after` ([`default_retry_after`](AnthropicConfig::default_retry_after)).
//! An exception after content ends the SSE stream with an `error` event (a Message answer
//! becomes the error instead).
//! [`AnthropicError::authentication`] and [`AnthropicError::permission`] are for a gateway's
//! own client authentication.

mod attempt;
mod error;
mod json;
mod models;
mod request;
mod stream;

pub use attempt::{
    with_profile_arn, InvalidBaseUrl, KiroAttemptLayer, KiroAttemptService, GENERATE_PATH,
};
pub use error::{AnthropicError, ErrorKind};
pub use models::{ModelEntry, ModelTable};
pub use request::{
    convert_request, convert_request_with_id, count_tokens, shorten_tool_name, ConvertedRequest,
    Limits, ToolNames,
};
pub use stream::{message_id, AnswerContext, StreamConverter};

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tower_layer::Layer;
use tower_service::Service;

use crate::layer::{Rejection, RequestExtractor};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The layer's settings.
#[derive(Debug, Clone)]
pub struct AnthropicConfig {
    /// The served models (default [`ModelTable::default`]).
    pub models: ModelTable,
    /// Kiro's limits (default [`Limits::default`]).
    pub limits: Limits,
    /// Largest request body read (default 32 MiB, Anthropic's own limit); larger is a 413.
    /// Converted bodies above the pool's
    /// [`replay_cap`](crate::layer::AccountPoolLayer::replay_cap) (default 16 MiB) are sent
    /// once, never retried, and get no `profileArn`: keep the two in step.
    pub body_limit: usize,
    /// A `ping` event is sent when the upstream has been silent this long (default 15 s).
    pub ping_interval: Duration,
    /// `retry-after` when no account can serve and the pool knows no earlier time (default
    /// 10 s).
    pub default_retry_after: Duration,
}

impl Default for AnthropicConfig {
    fn default() -> Self {
        AnthropicConfig {
            models: ModelTable::default(),
            limits: Limits::default(),
            body_limit: 32 * 1024 * 1024,
            ping_interval: Duration::from_secs(15),
            default_retry_after: Duration::from_secs(10),
        }
    }
}

impl AnthropicConfig {
    /// Sets the model table.
    pub fn models(mut self, models: ModelTable) -> Self {
        self.models = models;
        self
    }

    /// Sets the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the request body cap.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Sets the ping interval.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Sets the default `retry-after`.
    pub fn default_retry_after(mut self, after: Duration) -> Self {
        self.default_retry_after = after;
        self
    }
}

/// The model a converted request is for (the [`ModelTable`] id), in the inner request's
/// extensions. [`RequestedModel::extractor`] gives it to the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedModel(pub String);

impl RequestedModel {
    /// A [`RequestExtractor`] reading this extension, for
    /// [`AccountPoolLayer::model_extractor`](crate::layer::AccountPoolLayer::model_extractor).
    pub fn extractor() -> RequestedModelExtractor {
        RequestedModelExtractor
    }
}

/// Reads [`RequestedModel`] from the request extensions.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestedModelExtractor;

impl RequestExtractor for RequestedModelExtractor {
    fn extract<'a>(
        &self,
        parts: &'a http::request::Parts,
        _body: &'a [u8],
    ) -> Option<Cow<'a, str>> {
        parts
            .extensions
            .get::<RequestedModel>()
            .map(|m| Cow::Borrowed(m.0.as_str()))
    }
}

/// The converted request's body: the CodeWhisperer JSON, in one frame.
#[derive(Clone, Default)]
pub struct KiroRequestBody {
    data: Option<Bytes>,
}

impl fmt::Debug for KiroRequestBody {
    /// The length only: the body is the client's conversation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KiroRequestBody")
            .field("len", &self.data.as_ref().map_or(0, Bytes::len))
            .finish()
    }
}

impl KiroRequestBody {
    /// A body of `data`.
    pub fn new(data: Bytes) -> Self {
        KiroRequestBody {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl Body for KiroRequestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// The outer layer. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct AnthropicLayer {
    config: Arc<AnthropicConfig>,
}

impl AnthropicLayer {
    /// A layer with `config`.
    pub fn new(config: AnthropicConfig) -> Self {
        AnthropicLayer {
            config: Arc::new(config),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AnthropicConfig {
        &self.config
    }
}

impl<S> Layer<S> for AnthropicLayer {
    type Service = AnthropicService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AnthropicService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`AnthropicLayer`]. It never fails: every failure is an Anthropic
/// error answer.
#[derive(Clone)]
pub struct AnthropicService<S> {
    inner: S,
    config: Arc<AnthropicConfig>,
}

impl<S> fmt::Debug for AnthropicService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S> AnthropicService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

type BoxedResponse<RB> =
    Pin<Box<dyn Future<Output = Result<Response<AnthropicBody<RB>>, Infallible>> + Send>>;

/// The future of [`AnthropicService`]: reads the body, converts, calls the inner service and
/// reads the upstream stream: the whole of it for a Message answer, up to the first content
/// (or the end) for an SSE answer, so a failure before any content is an HTTP error. One boxed future per request, as
/// [`AccountPoolService`](crate::layer::AccountPoolService)'s.
pub struct ResponseFuture<RB> {
    inner: BoxedResponse<RB>,
}

impl<RB> fmt::Debug for ResponseFuture<RB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<RB> Future for ResponseFuture<RB> {
    type Output = Result<Response<AnthropicBody<RB>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S, B, RB> Service<Request<B>> for AnthropicService<S>
where
    S: Service<Request<KiroRequestBody>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Unpin + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<AnthropicBody<RB>>;
    type Error = Infallible;
    type Future = ResponseFuture<RB>;

    /// Always ready: the inner service's readiness is awaited by the request that needs it
    /// (local routes do not).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let config = self.config.clone();
        ResponseFuture {
            inner: Box::pin(async move {
                let mut response = serve(config, inner, request).await;
                // Every answer names itself, as Anthropic's do (SDKs show it as the request id).
                if let Ok(id) =
                    HeaderValue::from_str(&format!("req_{:024x}", fastrand::u128(..) >> 32))
                {
                    response.headers_mut().insert("request-id", id);
                }
                Ok(response)
            }),
        }
    }
}

enum Route<'a> {
    Messages,
    CountTokens,
    Models,
    Model(&'a str),
    NotFound,
}

fn route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    let path = path.trim_end_matches('/');
    match (method, path) {
        (&Method::POST, "/v1/messages") => Route::Messages,
        (&Method::POST, "/v1/messages/count_tokens") => Route::CountTokens,
        (&Method::GET, "/v1/models") => Route::Models,
        (&Method::GET, p) if p.starts_with("/v1/models/") => {
            Route::Model(&p["/v1/models/".len()..])
        }
        _ => Route::NotFound,
    }
}

fn local<RB>(status: StatusCode, json: Vec<u8>) -> Response<AnthropicBody<RB>> {
    let mut response = Response::new(AnthropicBody::full(Bytes::from(json)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response<RB>(error: AnthropicError) -> Response<AnthropicBody<RB>> {
    error.into_response().map(AnthropicBody::full)
}

/// Reads a body up to `limit` bytes: `Err` is the error answer.
async fn read_body<B>(mut body: B, limit: usize) -> Result<Bytes, AnthropicError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let too_large = || {
        AnthropicError::new(
            ErrorKind::RequestTooLarge,
            format!("the request body is larger than {limit} bytes"),
        )
    };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut held = 0usize;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| {
            AnthropicError::invalid_request(format!(
                "the request body could not be read: {}",
                e.into()
            ))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        held += data.len();
        if held > limit {
            return Err(too_large());
        }
        match (&first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut buf = BytesMut::with_capacity(held * 2);
                buf.extend_from_slice(head);
                buf.extend_from_slice(&data);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(data), None) => data,
        (None, None) => Bytes::new(),
    })
}

async fn serve<S, B, RB>(
    config: Arc<AnthropicConfig>,
    mut inner: S,
    request: Request<B>,
) -> Response<AnthropicBody<RB>>
where
    S: Service<Request<KiroRequestBody>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Unpin,
    RB::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    match route(&parts.method, path) {
        Route::NotFound => {
            let shown: String = path.chars().take(200).collect();
            return error_response(AnthropicError::not_found(format!(
                "no route for {} {shown}; served: POST /v1/messages, POST /v1/messages/count_tokens, GET /v1/models",
                parts.method
            )));
        }
        Route::Models => return local(StatusCode::OK, config.models.list_json(parts.uri.query())),
        Route::Model(id) => {
            return match config.models.info_json(id) {
                Some(json) => local(StatusCode::OK, json),
                None => {
                    let shown: String = id.chars().take(100).collect();
                    error_response(AnthropicError::not_found(format!(
                        "model `{shown}` not found"
                    )))
                }
            }
        }
        Route::CountTokens | Route::Messages => {}
    }
    let counting = matches!(route(&parts.method, path), Route::CountTokens);
    let bytes = match read_body(body, config.body_limit).await {
        Ok(bytes) => bytes,
        Err(e) => return error_response(e),
    };
    if counting {
        return match count_tokens(&bytes, &config) {
            Ok(n) => {
                let mut out = Vec::with_capacity(32);
                out.extend_from_slice(br#"{"input_tokens":"#);
                json::write_u64(&mut out, n);
                out.push(b'}');
                local(StatusCode::OK, out)
            }
            Err(e) => error_response(e),
        };
    }
    let converted = match convert_request(&bytes, &config) {
        Ok(c) => c,
        Err(e) => return error_response(e),
    };
    drop(bytes);
    let context = AnswerContext::new(&converted, message_id());
    let stream = converted.stream;

    let mut upstream = Request::new(KiroRequestBody::new(converted.body.clone()));
    *upstream.method_mut() = Method::POST;
    *upstream.uri_mut() = http::Uri::from_static(GENERATE_PATH);
    *upstream.extensions_mut() = parts.extensions;
    upstream
        .extensions_mut()
        .insert(RequestedModel(converted.model_id.clone()));
    let headers = upstream.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(converted.body.len()));
    drop(converted);

    if let Err(e) = std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
        return error_response(AnthropicError::overloaded(format!(
            "the upstream service is not available: {}",
            e.into()
        )));
    }
    let response = match inner.call(upstream).await {
        Ok(response) => response,
        Err(e) => {
            return error_response(
                AnthropicError::overloaded(format!("the upstream call failed: {}", e.into()))
                    .with_retry_after(Some(config.default_retry_after)),
            )
        }
    };
    let (head, mut body) = response.into_parts();
    if !head.status.is_success() {
        let text = read_body(&mut body, 64 * 1024).await.unwrap_or_default();
        let error = upstream_error(&head, &text, config.default_retry_after);
        let mut response = error_response(error);
        *response.extensions_mut() = head.extensions;
        return response;
    }
    if stream {
        // The head waits for the first content (or the end): an error before any content is
        // an HTTP error, which clients retry, instead of a 200 holding an `error` event. What
        // was read is kept: the SSE body starts with the converter's output so far.
        let mut converter = StreamConverter::sse(context);
        while !converter.has_content() && !converter.is_done() {
            read_into(&mut body, &mut converter).await;
        }
        if let Some(error) = early_error(&converter, &config) {
            let mut response = error_response(error);
            *response.extensions_mut() = head.extensions;
            return response;
        }
        let mut response = Response::new(AnthropicBody::sse(body, converter, config.ping_interval));
        *response.extensions_mut() = head.extensions;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return response;
    }
    let mut converter = StreamConverter::message(context);
    while !converter.is_done() {
        read_into(&mut body, &mut converter).await;
    }
    if let Some(error) = early_error(&converter, &config) {
        let mut response = error_response(error);
        *response.extensions_mut() = head.extensions;
        return response;
    }
    let mut response = match converter.into_message() {
        Ok(json) => local(StatusCode::OK, json),
        Err(e) => error_response(e),
    };
    *response.extensions_mut() = head.extensions;
    response
}

/// Reads one upstream frame into `converter`: the end of the body finishes it, a read error
/// fails it.
async fn read_into<RB>(body: &mut RB, converter: &mut StreamConverter)
where
    RB: Body<Data = Bytes> + Unpin,
    RB::Error: Into<BoxError>,
{
    match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
        None => converter.finish(),
        Some(Ok(frame)) => {
            if let Ok(data) = frame.into_data() {
                converter.push(&data);
            }
        }
        Some(Err(e)) => converter.fail(AnthropicError::api(format!(
            "the upstream stream failed: {}",
            e.into()
        ))),
    }
}

/// The error that ended the answer before any content, with a `retry-after` when a retry
/// can help (rate limited, overloaded, an upstream failure): the client gets it as an HTTP
/// error status.
fn early_error(converter: &StreamConverter, config: &AnthropicConfig) -> Option<AnthropicError> {
    if converter.has_content() {
        return None;
    }
    let error = converter.error()?.clone();
    let retry = matches!(
        error.kind(),
        ErrorKind::RateLimit | ErrorKind::Overloaded | ErrorKind::Api
    );
    Some(if retry && error.retry_after().is_none() {
        error.with_retry_after(Some(config.default_retry_after))
    } else {
        error
    })
}

/// An upstream (or pool) error answer as an Anthropic error.
fn upstream_error(
    head: &http::response::Parts,
    body: &[u8],
    default_retry_after: Duration,
) -> AnthropicError {
    // Seconds, an HTTP date, or `retry-after-ms`.
    let retry_after = crate::kiro::retry_after(&head.headers);
    if let Some(exhausted) = head
        .extensions
        .get::<Rejection>()
        .and_then(Rejection::exhausted)
    {
        let after = exhausted.retry_after().or(Some(default_retry_after));
        let kind = if exhausted.is_rate_limited() {
            ErrorKind::RateLimit
        } else {
            ErrorKind::Overloaded
        };
        return AnthropicError::new(kind, exhausted.to_string()).with_retry_after(after);
    }
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("Message"))
                .or_else(|| v.get("error").and_then(|e| e.get("message")))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            text.chars().take(300).collect::<String>()
        });
    let text = String::from_utf8_lossy(body);
    let status = head.status.as_u16();
    match status {
        400 if text.contains("CONTENT_LENGTH_EXCEEDS_THRESHOLD")
            || text.contains("Input is too long") =>
        {
            AnthropicError::invalid_request(format!("prompt is too long: Kiro answered: {message}"))
        }
        402 => AnthropicError::new(
            ErrorKind::RateLimit,
            format!("the account's Kiro quota is exhausted: {message}"),
        )
        .with_retry_after(retry_after.or(Some(default_retry_after))),
        429 => AnthropicError::new(ErrorKind::RateLimit, format!("rate limited: {message}"))
            .with_retry_after(retry_after.or(Some(default_retry_after))),
        401 | 403 => AnthropicError::overloaded(format!(
            "the upstream rejected the account ({status}): {message}"
        ))
        .with_retry_after(retry_after.or(Some(default_retry_after))),
        408 | 504 => {
            AnthropicError::new(ErrorKind::Timeout, format!("upstream timeout: {message}"))
        }
        413 => AnthropicError::new(ErrorKind::RequestTooLarge, message),
        400..=499 => AnthropicError::invalid_request(format!(
            "Kiro rejected the request ({status}): {message}"
        )),
        503 | 529 => {
            AnthropicError::overloaded(format!("the upstream is overloaded ({status}): {message}"))
                .with_retry_after(retry_after.or(Some(default_retry_after)))
        }
        _ => AnthropicError::api(format!("the upstream failed ({status}): {message}"))
            .with_retry_after(retry_after.or(Some(default_retry_after))),
    }
}

const PING: &[u8] = b"event: ping\ndata: {\"type\":\"ping\"}\n\n";

/// The response body: a JSON answer, or the SSE stream converted from the upstream as it
/// arrives, with `ping` events while the upstream is silent. It never fails: an upstream
/// failure mid-stream is an SSE `error` event.
pub struct AnthropicBody<RB> {
    inner: BodyInner<RB>,
}

enum BodyInner<RB> {
    Full(Option<Bytes>),
    Sse {
        body: RB,
        converter: Box<StreamConverter>,
        ping: Pin<Box<tokio::time::Sleep>>,
        interval: Duration,
    },
}

impl<RB> fmt::Debug for AnthropicBody<RB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            BodyInner::Full(data) => f
                .debug_struct("AnthropicBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            BodyInner::Sse { converter, .. } => f
                .debug_struct("AnthropicBody::Sse")
                .field("converter", converter)
                .finish_non_exhaustive(),
        }
    }
}

impl<RB> AnthropicBody<RB> {
    /// A body of `data`.
    pub fn full(data: Bytes) -> Self {
        AnthropicBody {
            inner: BodyInner::Full((!data.is_empty()).then_some(data)),
        }
    }

    /// An SSE body converting `upstream` with `converter`, pinging after `interval` of
    /// silence. Call within a tokio runtime (the ping timer).
    pub fn sse(upstream: RB, converter: StreamConverter, interval: Duration) -> Self {
        AnthropicBody {
            inner: BodyInner::Sse {
                body: upstream,
                converter: Box::new(converter),
                ping: Box::pin(tokio::time::sleep(interval)),
                interval,
            },
        }
    }
}

impl<RB> Body for AnthropicBody<RB>
where
    RB: Body<Data = Bytes> + Unpin,
    RB::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().inner {
            BodyInner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyInner::Sse {
                body,
                converter,
                ping,
                interval,
            } => loop {
                if converter.has_output() {
                    return Poll::Ready(Some(Ok(Frame::data(converter.take_output()))));
                }
                if converter.is_done() {
                    return Poll::Ready(None);
                }
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            converter.push(&data);
                        }
                        ping.as_mut().reset(tokio::time::Instant::now() + *interval);
                    }
                    Poll::Ready(Some(Err(e))) => converter.fail(AnthropicError::api(format!(
                        "the upstream stream failed: {}",
                        e.into()
                    ))),
                    Poll::Ready(None) => converter.finish(),
                    Poll::Pending => {
                        return match ping.as_mut().poll(cx) {
                            Poll::Ready(()) => {
                                ping.as_mut().reset(tokio::time::Instant::now() + *interval);
                                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(PING)))))
                            }
                            Poll::Pending => Poll::Pending,
                        };
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            BodyInner::Full(data) => data.is_none(),
            BodyInner::Sse { converter, .. } => converter.is_done() && !converter.has_output(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            BodyInner::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            BodyInner::Sse { .. } => SizeHint::new(),
        }
    }
}
