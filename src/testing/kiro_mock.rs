//! [`KiroMock`]: an in-process Kiro upstream on `127.0.0.1:0`.
//!
//! It serves `POST /generateAssistantResponse` (and `/SendMessageStreaming`),
//! `GET /getUsageLimits`, `POST /refreshToken` (social) and `POST /token` (IdC). Accounts are
//! named; each has access tokens and refresh tokens the mock accepts, a script of chat
//! [`Reply`]s (success streams, 403 invalid token, 402 quota, 429 with or without
//! `Retry-After`, 5xx, suspension, validation errors, exception frames, slow answers,
//! connection resets, and streams of [`Event`]s: text, emulated thinking, tool calls whose input
//! arrives in fragments, context usage) and a usage document. Chat bodies are checked as
//! strictly as the real service is known to check them ([`Validation`]; a refused body gets
//! Kiro's `ValidationException` answer and leaves the script untouched). Refresh endpoints
//! issue access tokens, rotate refresh tokens when asked, and reject unknown refresh tokens
//! with the real 400 body. Every request is recorded, with its body parsed
//! ([`RecordedRequest::json`]).
//!
//! ```
//! use tower_account_pool::kiro::eventstream::decode_all;
//! use tower_account_pool::testing::{KiroMock, Reply};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let mock = KiroMock::start().await;
//! mock.accept_access_token("alice", "at-alice");
//! mock.script("alice", [Reply::success(&["Hel", "lo"])]);
//!
//! let body = serde_json::json!({"conversationState": {"currentMessage": {
//!     "userInputMessage": {"content": "Hi", "modelId": "claude-sonnet-4.5"}}}});
//! let response = reqwest::Client::new()
//!     .post(format!("{}/generateAssistantResponse", mock.url()))
//!     .bearer_auth("at-alice")
//!     .body(body.to_string())
//!     .send()
//!     .await
//!     .unwrap();
//! assert_eq!(response.status(), 200);
//! let frames = decode_all(&response.bytes().await.unwrap()).unwrap();
//! assert_eq!(frames[0].event_type(), Some("assistantResponseEvent"));
//! assert_eq!(mock.requests()[0].account.as_deref(), Some("alice"));
//! assert_eq!(mock.requests()[0].current_message().unwrap()["content"], "Hi");
//!
//! // A body Kiro would refuse gets Kiro's answer.
//! let refused = reqwest::Client::new()
//!     .post(format!("{}/generateAssistantResponse", mock.url()))
//!     .bearer_auth("at-alice")
//!     .body(r#"{"conversationState": {}}"#)
//!     .send()
//!     .await
//!     .unwrap();
//! assert_eq!(refused.status(), 400);
//! assert_eq!(
//!     refused.text().await.unwrap(),
//!     r#"{"message":"Improperly formed request.","reason":null}"#
//! );
//! # });
//! ```

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body::Frame;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::kiro_validation::{self, Rejection, Validation};
use crate::kiro::eventstream::Message;

/// One scripted chat answer.
///
/// Failures are variants; successful streams are [`Reply::success`] (text) or a list of
/// [`Event`]s, built directly with [`Reply::events`] or with the shortcuts:
///
/// ```
/// use tower_account_pool::testing::{Event, Reply};
///
/// // A tool call whose input JSON arrives in two frames, closed like a real reply.
/// let tool = Reply::tool_use("get_weather", "tooluse_1", [r#"{"city":"#, r#""Paris"}"#]);
/// assert_eq!(tool, Reply::events([
///     Event::tool_use("get_weather", "tooluse_1", [r#"{"city":"#, r#""Paris"}"#]),
///     Event::metering(0.01),
///     Event::context_usage(1.2),
/// ]));
///
/// // Thinking, then the answer.
/// let thought = Reply::thinking("Short question.", "Yes.");
///
/// // Text, then a tool call; then an exception frame once the content has started.
/// let broken = Reply::success(&["Let me check."])
///     .then(Event::tool_use("get_weather", "tooluse_2", ["{}"]))
///     .then(Event::exception("InternalServerException", "Encountered an unexpected error"));
/// # let _ = (thought, broken);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// 200: one `assistantResponseEvent` per chunk, then `meteringEvent` and `contextUsageEvent`.
    Success {
        /// The text chunks.
        chunks: Vec<String>,
    },
    /// 403 `The bearer token included in the request is invalid.`
    InvalidToken,
    /// 402 with `MONTHLY_REQUEST_COUNT`.
    QuotaExhausted,
    /// 429 `ThrottlingException`, with `Retry-After` in seconds when given.
    Throttled {
        /// The `Retry-After` header.
        retry_after: Option<u64>,
    },
    /// A 5xx `InternalServerException`.
    ServerError {
        /// The status (500, 503, …).
        status: u16,
    },
    /// 403 `Your User ID temporarily is suspended…`.
    Suspended,
    /// 400 `ValidationException`.
    Validation,
    /// 200, the chunks as events, then an exception frame (first frame when `after` is empty).
    ExceptionFrame {
        /// Events before the exception.
        after: Vec<String>,
        /// The `:exception-type`.
        exception_type: String,
        /// The exception's message.
        message: String,
    },
    /// Waits, then answers.
    Slow {
        /// How long to wait before the answer.
        delay: Duration,
        /// The answer.
        reply: Box<Reply>,
    },
    /// Closes the connection before any response.
    ResetBeforeResponse,
    /// 200, the chunks as events, then the connection breaks.
    ResetMidStream {
        /// Events before the break.
        after: Vec<String>,
    },
    /// 200: exactly these events, in order (see [`Event`]); nothing is added.
    Events {
        /// The events, each one or more frames.
        events: Vec<Event>,
    },
    /// Any status, content type and body bytes.
    Raw {
        /// The status.
        status: u16,
        /// The content type.
        content_type: String,
        /// The body.
        body: Vec<u8>,
    },
}

impl Reply {
    /// A success stream of these chunks.
    pub fn success(chunks: &[&str]) -> Reply {
        Reply::Success {
            chunks: chunks.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    /// 200: exactly these events, in order.
    pub fn events(events: impl IntoIterator<Item = Event>) -> Reply {
        Reply::Events {
            events: events.into_iter().collect(),
        }
    }

    /// 200: one finished tool call ([`Event::tool_use`]), then `meteringEvent` and
    /// `contextUsageEvent` as a real reply ends.
    pub fn tool_use<I, S>(name: &str, tool_use_id: &str, input_fragments: I) -> Reply
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Reply::events([
            Event::tool_use(name, tool_use_id, input_fragments),
            Event::metering(0.01),
            Event::context_usage(1.2),
        ])
    }

    /// 200: `thought` as emulated thinking ([`Event::thinking`], 5 characters a frame), the
    /// `answer` as one text frame, then `meteringEvent` and `contextUsageEvent`.
    pub fn thinking(thought: &str, answer: &str) -> Reply {
        Reply::events([
            Event::thinking(thought, 5),
            Event::text(answer),
            Event::metering(0.01),
            Event::context_usage(1.2),
        ])
    }

    /// Appends an event. A [`Reply::Success`] becomes the equivalent [`Reply::Events`] with
    /// `event` before its closing `meteringEvent` and `contextUsageEvent`, a
    /// [`Reply::Events`] gets `event` last; any other reply is returned unchanged.
    pub fn then(self, event: Event) -> Reply {
        match self {
            Reply::Success { chunks } => {
                let mut events: Vec<Event> = chunks.into_iter().map(Event::Text).collect();
                events.extend([event, Event::metering(0.01), Event::context_usage(1.2)]);
                Reply::Events { events }
            }
            Reply::Events { mut events } => {
                events.push(event);
                Reply::Events { events }
            }
            other => other,
        }
    }
}

/// One piece of a scripted [`Reply::Events`] stream: one or more event-stream frames.
///
/// ```
/// use tower_account_pool::kiro::eventstream::decode_all;
/// use tower_account_pool::testing::{Event, KiroMock, Reply};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let mock = KiroMock::start().await;
/// mock.accept_access_token("alice", "at-alice");
/// // Thinking, a sentence, a tool call whose input arrives in three pieces, the context use.
/// mock.script("alice", [Reply::events([
///     Event::thinking("The user wants the weather.", 8),
///     Event::text("Let me look."),
///     Event::tool_use("get_weather", "tooluse_1", [r#"{"ci"#, r#"ty": "Par"#, r#"is"}"#]),
///     Event::context_usage(12.5),
/// ])]);
///
/// let body = serde_json::json!({"conversationState": {"currentMessage": {
///     "userInputMessage": {"content": "Weather in Paris?", "modelId": "claude-sonnet-4.5"}}}});
/// let response = reqwest::Client::new()
///     .post(format!("{}/generateAssistantResponse", mock.url()))
///     .bearer_auth("at-alice")
///     .body(body.to_string())
///     .send()
///     .await
///     .unwrap();
/// let frames = decode_all(&response.bytes().await.unwrap()).unwrap();
/// let kinds: Vec<_> = frames.iter().map(|f| f.event_type().unwrap()).collect();
/// assert_eq!(kinds.iter().filter(|k| **k == "toolUseEvent").count(), 5); // start, 3 pieces, stop
/// assert_eq!(kinds.last(), Some(&"contextUsageEvent"));
/// # });
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// One `assistantResponseEvent` `{"content": …}`.
    Text(String),
    /// Emulated thinking: the text `<thinking>{text}</thinking>\n\n` (the form the converter
    /// parses back, `anthropic-kiro.md` §4.2) cut into `assistantResponseEvent`s of
    /// `frame_chars` characters each, so the tags are split across frames too.
    Thinking {
        /// The thought, without the tags.
        text: String,
        /// Characters per frame (at least 1).
        frame_chars: usize,
    },
    /// A tool call: a `toolUseEvent` `{"name", "toolUseId", "input": ""}`, one per input
    /// fragment with `"input": fragment`, then (when `stop`) one with `"stop": true`. Every
    /// frame carries `name` and `toolUseId`.
    ToolUse {
        /// The tool name.
        name: String,
        /// The `toolUseId` (Kiro's look like `tooluse_…`).
        tool_use_id: String,
        /// The input JSON, in the pieces it arrives in.
        input: Vec<String>,
        /// Whether the closing `stop: true` frame is sent (Kiro leaves it out for a call cut
        /// off upstream, `anthropic-kiro.md` §3.1).
        stop: bool,
    },
    /// One `contextUsageEvent` `{"contextUsagePercentage": …}`.
    ContextUsage(f64),
    /// One `meteringEvent` `{"unit": "credit", "usage": …}`.
    Metering(f64),
    /// An exception frame (`:message-type: exception`) with `{"message": …}`.
    Exception {
        /// The `:exception-type` header.
        exception_type: String,
        /// The message.
        message: String,
    },
    /// Any frame, as given. One that cannot be encoded (a header value over 65,535 bytes, a
    /// frame over 16 MiB) is a mistake in the test: the mock drops the connection.
    Frame(Message),
}

impl Event {
    /// One text frame.
    pub fn text(text: impl Into<String>) -> Event {
        Event::Text(text.into())
    }

    /// Emulated thinking cut into frames of `frame_chars` characters ([`Event::Thinking`]).
    pub fn thinking(text: impl Into<String>, frame_chars: usize) -> Event {
        Event::Thinking {
            text: text.into(),
            frame_chars,
        }
    }

    /// A finished tool call whose input JSON arrives in these fragments ([`Event::ToolUse`]).
    pub fn tool_use<I, S>(name: &str, tool_use_id: &str, input_fragments: I) -> Event
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Event::ToolUse {
            name: name.to_owned(),
            tool_use_id: tool_use_id.to_owned(),
            input: input_fragments.into_iter().map(Into::into).collect(),
            stop: true,
        }
    }

    /// A tool call cut off before its `stop: true` frame.
    pub fn unfinished_tool_use<I, S>(name: &str, tool_use_id: &str, input_fragments: I) -> Event
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        match Event::tool_use(name, tool_use_id, input_fragments) {
            Event::ToolUse {
                name,
                tool_use_id,
                input,
                ..
            } => Event::ToolUse {
                name,
                tool_use_id,
                input,
                stop: false,
            },
            other => other,
        }
    }

    /// One `contextUsageEvent` with this percentage.
    pub fn context_usage(percentage: f64) -> Event {
        Event::ContextUsage(percentage)
    }

    /// One `meteringEvent` with this usage.
    pub fn metering(usage: f64) -> Event {
        Event::Metering(usage)
    }

    /// An exception frame.
    pub fn exception(exception_type: &str, message: &str) -> Event {
        Event::Exception {
            exception_type: exception_type.to_owned(),
            message: message.to_owned(),
        }
    }

    /// The encoded frames; `None` for a scripted [`Event::Frame`] that cannot be encoded.
    fn frames(&self) -> Option<Vec<Bytes>> {
        Some(match self {
            Event::Text(text) => vec![event("assistantResponseEvent", json!({ "content": text }))],
            Event::Thinking { text, frame_chars } => {
                let whole: Vec<char> = format!("<thinking>{text}</thinking>\n\n").chars().collect();
                whole
                    .chunks((*frame_chars).max(1))
                    .map(|c| {
                        let chunk: String = c.iter().collect();
                        event("assistantResponseEvent", json!({ "content": chunk }))
                    })
                    .collect()
            }
            Event::ToolUse {
                name,
                tool_use_id,
                input,
                stop,
            } => {
                let frame = |extra: (&str, Value)| {
                    let mut payload = json!({"name": name, "toolUseId": tool_use_id});
                    payload[extra.0] = extra.1;
                    event("toolUseEvent", payload)
                };
                let mut frames = vec![frame(("input", json!("")))];
                frames.extend(input.iter().map(|piece| frame(("input", json!(piece)))));
                if *stop {
                    frames.push(frame(("stop", json!(true))));
                }
                frames
            }
            Event::ContextUsage(pct) => vec![event(
                "contextUsageEvent",
                json!({ "contextUsagePercentage": pct }),
            )],
            Event::Metering(usage) => vec![event(
                "meteringEvent",
                json!({"unit": "credit", "usage": usage}),
            )],
            Event::Exception {
                exception_type,
                message,
            } => vec![Bytes::from(
                Message::exception(exception_type, json!({ "message": message }).to_string())
                    .encode()
                    .expect("mock frames encode"),
            )],
            Event::Frame(message) => match message.encode() {
                Ok(bytes) => vec![Bytes::from(bytes)],
                Err(_) => return None,
            },
        })
    }
}

/// How the mock answers one refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRule {
    /// Issue a new refresh token and forget this one.
    pub rotate: bool,
    /// `expiresIn` of issued tokens, in seconds (`None`: the field is left out).
    pub expires_in: Option<u64>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Answer this status with an `InternalServerException` instead (5xx tests).
    pub fail_status: Option<u16>,
    /// `profileArn` returned by the social endpoint.
    pub profile_arn: Option<String>,
    /// For IdC: the `clientId` and `clientSecret` the request must carry.
    pub client: Option<(String, String)>,
}

impl Default for RefreshRule {
    fn default() -> Self {
        RefreshRule {
            rotate: false,
            expires_in: Some(3600),
            delay: Duration::ZERO,
            fail_status: None,
            profile_arn: None,
            client: None,
        }
    }
}

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The method.
    pub method: Method,
    /// The path.
    pub path: String,
    /// The raw query string.
    pub query: Option<String>,
    /// The headers as received (including `authorization`).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The bearer token sent, if any.
    pub token: Option<String>,
    /// The account the token (bearer or refresh) belongs to, if the mock knows it.
    pub account: Option<String>,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// Why the mock refused a chat request body ([`Validation`]), in its own words (the
    /// answer itself carries Kiro's message).
    pub rejection: Option<String>,
}

impl RecordedRequest {
    /// `conversationState.currentMessage.userInputMessage` of a chat request.
    pub fn current_message(&self) -> Option<&Value> {
        self.json
            .as_ref()?
            .pointer("/conversationState/currentMessage/userInputMessage")
    }

    /// The `toolUseId`s of the current message's `toolResults`, in order.
    pub fn tool_result_ids(&self) -> Vec<&str> {
        self.current_message()
            .and_then(|m| m.pointer("/userInputMessageContext/toolResults"))
            .and_then(Value::as_array)
            .map(|results| {
                results
                    .iter()
                    .filter_map(|r| r.get("toolUseId").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    access: HashMap<String, String>,
    refresh: HashMap<String, (String, RefreshRule)>,
    scripts: HashMap<String, VecDeque<Reply>>,
    usage: HashMap<String, Value>,
    requests: Vec<RecordedRequest>,
    issued: u64,
    validation: Validation,
    responder: Option<Responder>,
}

/// Chooses the reply to a chat request whose account has no scripted reply left, from the
/// parsed request body (see [`KiroMock::respond_with`]).
pub type Responder = Arc<dyn Fn(&Value) -> Reply + Send + Sync>;

/// The in-process Kiro upstream. Dropping it stops accepting connections.
pub struct KiroMock {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

impl fmt::Debug for KiroMock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KiroMock")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for KiroMock {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl KiroMock {
    /// Starts the mock on `127.0.0.1:0`.
    pub async fn start() -> KiroMock {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let abort = Arc::new(Notify::new());
                    let service_abort = abort.clone();
                    let service = hyper::service::service_fn(move |req| {
                        handle(state.clone(), service_abort.clone(), req)
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = abort.notified() => {}
                    }
                });
            }
        });
        KiroMock {
            addr,
            state,
            accept,
        }
    }

    /// Answers chat requests that find no scripted reply for their account with
    /// `responder(body)` instead of the default `Hello from Kiro` (scripted replies still come
    /// first): a reply chosen by what the request asks, e.g. a tool call when tools are
    /// declared.
    ///
    /// ```
    /// use tower_account_pool::testing::{KiroMock, Reply};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let mock = KiroMock::start().await;
    /// mock.respond_with(|body| {
    ///     let message = &body["conversationState"]["currentMessage"]["userInputMessage"];
    ///     match message["content"].as_str() {
    ///         Some(text) if text.contains("weather") => {
    ///             Reply::tool_use("get_weather", "tooluse_1", [r#"{"city":"#, r#""Paris"}"#])
    ///         }
    ///         _ => Reply::success(&["Hi"]),
    ///     }
    /// });
    /// # });
    /// ```
    pub fn respond_with(&self, responder: impl Fn(&Value) -> Reply + Send + Sync + 'static) {
        self.state.lock().unwrap().responder = Some(Arc::new(responder));
    }

    /// `http://127.0.0.1:<port>`: use it as every Kiro base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Accepts `token` as a bearer token of `account`.
    pub fn accept_access_token(&self, account: &str, token: &str) {
        self.with(|s| s.access.insert(token.to_owned(), account.to_owned()));
    }

    /// Stops accepting a bearer token (it gets the 403 invalid-token answer).
    pub fn revoke_access_token(&self, token: &str) {
        self.with(|s| s.access.remove(token));
    }

    /// Accepts `token` as a refresh token of `account`.
    pub fn accept_refresh_token(&self, account: &str, token: &str, rule: RefreshRule) {
        self.with(|s| {
            s.refresh
                .insert(token.to_owned(), (account.to_owned(), rule))
        });
    }

    /// Queues chat answers for `account`; when the queue is empty the answer is a success.
    pub fn script(&self, account: &str, replies: impl IntoIterator<Item = Reply>) {
        self.with(|s| {
            s.scripts
                .entry(account.to_owned())
                .or_default()
                .extend(replies)
        });
    }

    /// How chat request bodies are checked from now on (default [`Validation::strict`]).
    pub fn set_validation(&self, validation: Validation) {
        self.with(|s| s.validation = validation);
    }

    /// The usage document `/getUsageLimits` returns for `account`.
    pub fn set_usage(&self, account: &str, usage: Value) {
        self.with(|s| s.usage.insert(account.to_owned(), usage));
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.with(|s| s.requests.clone())
    }

    /// Requests received on `path`.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.path == path)
                .cloned()
                .collect()
        })
    }

    /// Calls to the two refresh endpoints.
    pub fn refresh_calls(&self) -> usize {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.path == "/refreshToken" || r.path == "/token")
                .count()
        })
    }

    /// The refresh tokens currently accepted for `account`.
    pub fn refresh_tokens_of(&self, account: &str) -> Vec<String> {
        self.with(|s| {
            s.refresh
                .iter()
                .filter(|(_, (a, _))| a == account)
                .map(|(t, _)| t.clone())
                .collect()
        })
    }

    /// The access tokens currently accepted for `account`.
    pub fn access_tokens_of(&self, account: &str) -> Vec<String> {
        self.with(|s| {
            s.access
                .iter()
                .filter(|(_, a)| *a == account)
                .map(|(t, _)| t.clone())
                .collect()
        })
    }
}

/// The default usage document: 10 of 50 used, reset in 10 days.
pub(crate) fn default_usage(account: &str) -> Value {
    let reset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + 10 * 86_400;
    json!({
        "daysUntilReset": 10,
        "nextDateReset": reset,
        "subscriptionInfo": {"subscriptionTitle": "KIRO FREE", "type": "Q_DEVELOPER_STANDALONE_FREE"},
        "userInfo": {"email": format!("{account}@example.com"), "userId": format!("user-{account}")},
        "usageBreakdownList": [{
            "resourceType": "AGENTIC_REQUEST",
            "displayName": "Credit",
            "unit": "credit",
            "currentUsage": 10,
            "usageLimit": 50,
            "nextDateReset": reset
        }]
    })
}

// ===== the server =====

/// A response body fed through a channel, so the mock can pace frames and break connections.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

type MockResponse = Response<ChannelBody>;

fn respond(
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    chunks: Vec<Bytes>,
    break_after: bool,
) -> MockResponse {
    let (tx, rx) = mpsc::channel(chunks.len() + 1);
    for chunk in chunks {
        let _ = tx.try_send(Ok(chunk));
    }
    if break_after {
        // Let the head and the first frames reach the client, then break the connection.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx
                .send(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "mock connection reset",
                )))
                .await;
        });
    }
    let mut builder = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header("x-amzn-requestid", "00000000-0000-4000-8000-000000000000");
    for (name, value) in extra {
        builder = builder.header(*name, value.as_str());
    }
    builder
        .body(ChannelBody { rx })
        .expect("a valid mock response")
}

fn json_error(status: u16, error_type: &str, body: Value) -> MockResponse {
    respond(
        status,
        "application/x-amz-json-1.0",
        &[(
            "x-amzn-errortype",
            format!("{error_type}:http://internal.amazon.com/coral/com.amazon.kiro/"),
        )],
        vec![Bytes::from(body.to_string())],
        false,
    )
}

fn event(event_type: &str, payload: Value) -> Bytes {
    Bytes::from(
        Message::event(event_type, payload.to_string())
            .encode()
            .expect("mock frames encode"),
    )
}

fn text_events(chunks: &[String]) -> Vec<Bytes> {
    chunks
        .iter()
        .map(|c| event("assistantResponseEvent", json!({ "content": c })))
        .collect()
}

/// Kiro's answer to a body the mock refused, with the mock's explanation in a header.
fn rejected(rejection: &Rejection) -> MockResponse {
    let mut response = json_error(
        rejection.status,
        "ValidationException",
        json!({"message": rejection.message, "reason": rejection.reason}),
    );
    let detail: String = rejection
        .detail
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if let Ok(value) = http::HeaderValue::from_str(&detail) {
        response
            .headers_mut()
            .insert("x-kiro-mock-rejection", value);
    }
    response
}

fn invalid_token() -> MockResponse {
    json_error(
        403,
        "AccessDeniedException",
        json!({"message": "The bearer token included in the request is invalid.", "reason": null}),
    )
}

async fn render(reply: Reply, abort: &Notify) -> MockResponse {
    let stream = "application/vnd.amazon.eventstream";
    match reply {
        Reply::Success { chunks } => {
            let mut frames = text_events(&chunks);
            frames.push(event(
                "meteringEvent",
                json!({"unit": "credit", "usage": 0.01}),
            ));
            frames.push(event(
                "contextUsageEvent",
                json!({"contextUsagePercentage": 1.2}),
            ));
            respond(200, stream, &[], frames, false)
        }
        Reply::InvalidToken => invalid_token(),
        Reply::QuotaExhausted => json_error(
            402,
            "ThrottlingException",
            json!({"message": "Maximum Kiro usage reached for this month.", "reason": "MONTHLY_REQUEST_COUNT"}),
        ),
        Reply::Throttled { retry_after } => {
            let mut response = json_error(
                429,
                "ThrottlingException",
                json!({"message": "Too many requests, please wait before trying again.", "reason": null}),
            );
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
            }
            response
        }
        Reply::ServerError { status } => json_error(
            status,
            "InternalServerException",
            json!({"message": "Encountered an unexpected error when processing the request, please try again."}),
        ),
        Reply::Suspended => json_error(
            403,
            "AccessDeniedException",
            json!({"message": "Your User ID (u-1) temporarily is suspended. Please appeal.", "reason": "TEMPORARILY_SUSPENDED"}),
        ),
        Reply::Validation => json_error(
            400,
            "ValidationException",
            json!({"message": "Improperly formed request.", "reason": null}),
        ),
        Reply::ExceptionFrame {
            after,
            exception_type,
            message,
        } => {
            let mut frames = text_events(&after);
            frames.push(Bytes::from(
                Message::exception(&exception_type, json!({ "message": message }).to_string())
                    .encode()
                    .expect("mock frames encode"),
            ));
            respond(200, stream, &[], frames, false)
        }
        Reply::Slow { delay, reply } => {
            tokio::time::sleep(delay).await;
            Box::pin(render(*reply, abort)).await
        }
        Reply::ResetBeforeResponse => {
            abort.notify_one();
            std::future::pending().await
        }
        Reply::ResetMidStream { after } => respond(200, stream, &[], text_events(&after), true),
        Reply::Events { events } => {
            let frames: Option<Vec<Vec<Bytes>>> = events.iter().map(Event::frames).collect();
            match frames {
                Some(frames) => respond(200, stream, &[], frames.concat(), false),
                None => {
                    abort.notify_one();
                    std::future::pending().await
                }
            }
        }
        Reply::Raw {
            status,
            content_type,
            body,
        } => respond(status, &content_type, &[], vec![Bytes::from(body)], false),
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

async fn handle(
    state: Arc<Mutex<State>>,
    abort: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<MockResponse, Infallible> {
    use http_body_util_lite::collect;
    let (parts, body) = req.into_parts();
    let body = collect(body).await;
    let path = parts.uri.path().to_owned();
    let token = bearer(&parts.headers);
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let chat = parts.method == Method::POST
        && matches!(
            path.as_str(),
            "/generateAssistantResponse" | "/SendMessageStreaming"
        );
    let (account, rejection) = {
        let s = lock();
        let account = match path.as_str() {
            "/refreshToken" | "/token" => parsed
                .as_ref()
                .and_then(|v| v.get("refreshToken"))
                .and_then(Value::as_str)
                .and_then(|t| s.refresh.get(t))
                .map(|(a, _)| a.clone()),
            _ => token.as_ref().and_then(|t| s.access.get(t)).cloned(),
        };
        // Kiro checks the token first, then the body.
        let rejection = (chat && account.is_some())
            .then(|| kiro_validation::check(&body, &s.validation).err())
            .flatten();
        (account, rejection)
    };
    lock().requests.push(RecordedRequest {
        method: parts.method.clone(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body: body.clone(),
        token: token.clone(),
        account: account.clone(),
        json: parsed.clone(),
        rejection: rejection.as_ref().map(|r| r.detail.clone()),
    });
    let response = match (parts.method.clone(), path.as_str()) {
        (Method::POST, "/generateAssistantResponse" | "/SendMessageStreaming") => {
            match (account, rejection) {
                (None, _) => invalid_token(),
                (Some(_), Some(rejection)) => rejected(&rejection),
                (Some(account), None) => {
                    let (scripted, responder) = {
                        let mut state = lock();
                        let scripted = state
                            .scripts
                            .get_mut(&account)
                            .and_then(VecDeque::pop_front);
                        (scripted, state.responder.clone())
                    };
                    let reply = scripted.unwrap_or_else(|| match (responder, &parsed) {
                        (Some(respond), Some(body)) => respond(body),
                        _ => Reply::success(&["Hello", " from Kiro"]),
                    });
                    render(reply, &abort).await
                }
            }
        }
        (Method::GET, "/getUsageLimits") => match account {
            None => invalid_token(),
            Some(account) => {
                let usage = lock()
                    .usage
                    .get(&account)
                    .cloned()
                    .unwrap_or_else(|| default_usage(&account));
                respond(
                    200,
                    "application/json",
                    &[],
                    vec![Bytes::from(usage.to_string())],
                    false,
                )
            }
        },
        (Method::POST, "/refreshToken" | "/token") => refresh(&state, &path, parsed.as_ref()).await,
        _ => json_error(
            404,
            "UnknownOperationException",
            json!({"message": "Unknown operation"}),
        ),
    };
    Ok(response)
}

async fn refresh(state: &Arc<Mutex<State>>, path: &str, body: Option<&Value>) -> MockResponse {
    let social = path == "/refreshToken";
    let invalid = || {
        if social {
            respond(
                400,
                "application/json",
                &[],
                vec![Bytes::from(
                    json!({"message": "Invalid refresh token provided"}).to_string(),
                )],
                false,
            )
        } else {
            json_error(
                400,
                "InvalidGrantException",
                json!({"error": "invalid_grant", "error_description": "Invalid refresh token provided"}),
            )
        }
    };
    let Some(body) = body else { return invalid() };
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    let Some(refresh_token) = text("refreshToken") else {
        return invalid();
    };
    let found = state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .refresh
        .get(&refresh_token)
        .cloned();
    let Some((account, rule)) = found else {
        return invalid();
    };
    if !rule.delay.is_zero() {
        tokio::time::sleep(rule.delay).await;
    }
    if let Some(status) = rule.fail_status {
        return json_error(
            status,
            "InternalServerException",
            json!({"message": "Service unavailable"}),
        );
    }
    if !social {
        let client_ok = match &rule.client {
            Some((id, secret)) => {
                text("clientId").as_deref() == Some(id.as_str())
                    && text("clientSecret").as_deref() == Some(secret.as_str())
            }
            None => text("clientId").is_some() && text("clientSecret").is_some(),
        };
        if !client_ok || text("grantType").as_deref() != Some("refresh_token") {
            return json_error(
                400,
                "InvalidClientException",
                json!({"error": "invalid_client", "error_description": "Invalid client credentials"}),
            );
        }
    }
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    s.issued += 1;
    let n = s.issued;
    let access = format!("at-{account}-{n}");
    s.access.insert(access.clone(), account.clone());
    let mut answer = json!({ "accessToken": access });
    if let Some(secs) = rule.expires_in {
        answer["expiresIn"] = json!(secs);
    }
    if rule.rotate {
        let rotated = format!("rt-{account}-{n}");
        s.refresh.remove(&refresh_token);
        s.refresh
            .insert(rotated.clone(), (account.clone(), rule.clone()));
        answer["refreshToken"] = json!(rotated);
    }
    if social {
        if let Some(arn) = &rule.profile_arn {
            answer["profileArn"] = json!(arn);
        }
    } else {
        answer["tokenType"] = json!("Bearer");
    }
    drop(s);
    respond(
        200,
        "application/json",
        &[],
        vec![Bytes::from(answer.to_string())],
        false,
    )
}

/// Collecting a request body without another dependency.
mod http_body_util_lite {
    use bytes::{Bytes, BytesMut};
    use http_body::Body;
    use hyper::body::Incoming;
    use std::pin::Pin;

    pub(super) async fn collect(mut body: Incoming) -> Bytes {
        let mut out = BytesMut::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        out.extend_from_slice(&data);
                    }
                }
                Err(_) => break,
            }
        }
        out.freeze()
    }
}
