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
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::kiro_validation::Validation;

mod refresh;
mod reply;
mod response;
mod server;

pub use reply::{Event, RefreshRule, Reply};
use server::handle;

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
