//! `AnthropicLayer` → `AccountPoolLayer` (Kiro classifier) → `KiroAttemptLayer` → an in-process
//! Kiro stand-in (a `tower::service_fn` answering event-stream bytes): routing, the converted
//! body replayed on another account with that account's `profileArn`, failover on an exception
//! frame at the start of a stream, the error mapping, count_tokens, models, and pings while the
//! upstream is silent (paused time).
#![cfg(feature = "kiro")]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower::{service_fn, util::BoxCloneService, ServiceBuilder, ServiceExt};
use tower_account_pool::kiro::anthropic::{
    AnthropicBody, AnthropicConfig, AnthropicLayer, KiroAttemptLayer, KiroRequestBody,
    RequestedModel,
};
use tower_account_pool::kiro::eventstream::Message;
use tower_account_pool::kiro::{KiroClassifier, KiroCredential, KiroOptions};
use tower_account_pool::layer::{AccountPoolLayer, ReplayBody, SelectedAccount};
use tower_account_pool::{Account, Pool, Strategy};

/// The stand-in's response body: whole, or fed through a channel (for silences).
enum TestBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            TestBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            TestBody::Channel(rx) => rx.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d)))),
        }
    }
}

enum Reply {
    Stream(Vec<u8>),
    Status(u16, &'static str),
    Channel(mpsc::Receiver<Bytes>),
}

struct Seen {
    account: String,
    uri: String,
    body: Bytes,
    headers: http::HeaderMap,
    model: Option<String>,
}

#[derive(Clone, Default)]
struct Kiro {
    script: Arc<Mutex<HashMap<String, VecDeque<Reply>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Kiro {
    fn script(&self, account: &str, reply: Reply) {
        self.script
            .lock()
            .unwrap()
            .entry(account.into())
            .or_default()
            .push_back(reply);
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Vec<Seen>> {
        self.seen.lock().unwrap()
    }

    fn service(
        &self,
    ) -> BoxCloneService<Request<ReplayBody<KiroRequestBody>>, Response<TestBody>, Infallible> {
        let kiro = self.clone();
        BoxCloneService::new(service_fn(
            move |request: Request<ReplayBody<KiroRequestBody>>| {
                let kiro = kiro.clone();
                async move {
                    let account = request
                        .extensions()
                        .get::<SelectedAccount>()
                        .expect("the pool names the account")
                        .id()
                        .to_string();
                    let model = request
                        .extensions()
                        .get::<RequestedModel>()
                        .map(|m| m.0.clone());
                    let uri = request.uri().to_string();
                    let headers = request.headers().clone();
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    kiro.seen().push(Seen {
                        account: account.clone(),
                        uri,
                        body,
                        headers,
                        model,
                    });
                    let reply = kiro
                        .script
                        .lock()
                        .unwrap()
                        .get_mut(&account)
                        .and_then(VecDeque::pop_front)
                        .unwrap_or_else(|| Reply::Stream(texts(&[&format!("Hi from {account}")])));
                    let response = match reply {
                        Reply::Stream(bytes) => Response::new(TestBody::Full(Some(bytes.into()))),
                        Reply::Channel(rx) => Response::new(TestBody::Channel(rx)),
                        Reply::Status(status, body) => {
                            let mut response = Response::new(TestBody::Full(Some(
                                Bytes::from_static(body.as_bytes()),
                            )));
                            *response.status_mut() = StatusCode::from_u16(status).unwrap();
                            if status == 429 {
                                response.headers_mut().insert("retry-after", 30.into());
                            }
                            response
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            },
        ))
    }
}

fn texts(chunks: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend(event(
            "assistantResponseEvent",
            &json!({ "content": chunk }),
        ));
    }
    out
}

fn event(kind: &str, payload: &Value) -> Vec<u8> {
    Message::event(kind, payload.to_string()).encode().unwrap()
}

fn exception(kind: &str, message: &str) -> Vec<u8> {
    Message::exception(kind, json!({ "message": message }).to_string())
        .encode()
        .unwrap()
}

fn social(name: &str) -> Account {
    let json = format!(
        r#"{{"accessToken":"at-{name}","refreshToken":"rt-{name}","authMethod":"social",
            "profileArn":"arn:aws:codewhisperer:us-east-1:0:profile/{name}",
            "expiresAt":"2099-01-01T00:00:00Z"}}"#
    );
    Account::new(
        name,
        KiroCredential::from_json(&json, KiroOptions::default()).unwrap(),
    )
}

fn idc(name: &str, region: &str) -> Account {
    let json = format!(
        r#"{{"accessToken":"at-{name}","refreshToken":"rt-{name}","authMethod":"IdC",
            "clientId":"cid","clientSecret":"cs","region":"{region}",
            "expiresAt":"2099-01-01T00:00:00Z"}}"#
    );
    Account::new(
        name,
        KiroCredential::from_json(&json, KiroOptions::default()).unwrap(),
    )
}

type Stack = BoxCloneService<
    Request<Full<Bytes>>,
    Response<AnthropicBody<tower_account_pool::layer::ResponseBody<TestBody>>>,
    Infallible,
>;

fn stack(kiro: &Kiro, pool: Pool, config: AnthropicConfig, base: Option<&str>) -> Stack {
    let attempt = match base {
        Some(url) => KiroAttemptLayer::new().base_url(url).unwrap(),
        None => KiroAttemptLayer::new(),
    };
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(AnthropicLayer::new(config))
            .layer(
                AccountPoolLayer::new(pool)
                    .classifier(KiroClassifier::default())
                    .model_extractor(RequestedModel::extractor()),
            )
            .layer(attempt)
            .service(kiro.service()),
    )
}

fn pool(accounts: Vec<Account>) -> Pool {
    Pool::builder()
        .accounts(accounts)
        .strategy(Strategy::FillFirst)
        .build()
        .unwrap()
}

fn post(path: &str, body: Value) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("x-api-key", "client-key-secret")
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14",
        )
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn hello(stream: bool) -> Value {
    json!({"model":"claude-sonnet-4-5","max_tokens":100,"stream":stream,
           "metadata":{"user_id":"u"},"messages":[{"role":"user","content":"Hello"}]})
}

async fn call(
    service: &Stack,
    request: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = service.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn json_of(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

/// `(event name, data)` pairs of an SSE body; each data's `type` must repeat the name.
fn events(body: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with("\n\n"), "{text}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], json!(name));
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn a_retry_replays_the_converted_body_with_each_accounts_profile_arn() {
    let kiro = Kiro::default();
    kiro.script(
        "alice",
        Reply::Status(
            429,
            r#"{"__type":"ThrottlingException","message":"Too many requests"}"#,
        ),
    );
    kiro.script("bob", Reply::Status(500, r#"{"message":"boom"}"#));
    let service = stack(
        &kiro,
        pool(vec![
            social("alice"),
            social("bob"),
            idc("carol", "eu-west-1"),
        ]),
        AnthropicConfig::default(),
        Some("http://127.0.0.1:9/base/"),
    );
    let (status, headers, body) = call(&service, post("/v1/messages", hello(false))).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(headers["content-type"], "application/json");
    let message = json_of(&body);
    assert_eq!(
        message["content"],
        json!([{"type":"text","text":"Hi from carol"}])
    );
    assert_eq!(message["model"], "claude-sonnet-4-5");
    assert_eq!(message["stop_reason"], "end_turn");
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));

    let seen = kiro.seen();
    assert_eq!(
        seen.iter().map(|s| s.account.as_str()).collect::<Vec<_>>(),
        ["alice", "bob", "carol"]
    );
    let carol = std::str::from_utf8(&seen[2].body).unwrap();
    assert!(carol.starts_with(r#"{"conversationState":{"#), "{carol}");
    assert!(!carol.contains("profileArn"));
    for (s, name) in seen[..2].iter().zip(["alice", "bob"]) {
        let arn = format!(r#"{{"profileArn":"arn:aws:codewhisperer:us-east-1:0:profile/{name}","#);
        let body = std::str::from_utf8(&s.body).unwrap();
        assert!(body.starts_with(&arn), "{body}");
        // The same converted body, replayed: only the account's field differs.
        assert_eq!(&body[arn.len()..], &carol[1..]);
    }
    for s in seen.iter() {
        assert_eq!(s.uri, "http://127.0.0.1:9/base/generateAssistantResponse");
        assert_eq!(s.headers["content-type"], "application/json");
        assert_eq!(
            s.headers["authorization"],
            format!("Bearer at-{}", s.account).as_str()
        );
        assert!(s.headers.get("x-api-key").is_none());
        assert!(s.headers.get("anthropic-beta").is_none());
        assert_eq!(s.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
        let body: Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(
            body["conversationState"]["currentMessage"]["userInputMessage"]["content"],
            "Hello"
        );
    }
}

#[tokio::test]
async fn without_a_base_url_each_account_uses_its_region() {
    let kiro = Kiro::default();
    kiro.script("carol", Reply::Status(429, r#"{"message":"slow down"}"#));
    let service = stack(
        &kiro,
        pool(vec![idc("carol", "eu-west-1"), social("alice")]),
        AnthropicConfig::default(),
        None,
    );
    let (status, _, _) = call(&service, post("/v1/messages", hello(false))).await;
    assert_eq!(status, StatusCode::OK);
    let seen = kiro.seen();
    assert_eq!(
        seen[0].uri,
        "https://q.eu-west-1.amazonaws.com/generateAssistantResponse"
    );
    assert_eq!(
        seen[1].uri,
        "https://q.us-east-1.amazonaws.com/generateAssistantResponse"
    );
}

#[tokio::test]
async fn streams_sse_and_fails_over_on_an_exception_frame_before_content() {
    let kiro = Kiro::default();
    kiro.script(
        "alice",
        Reply::Stream(exception("ThrottlingException", "Too many requests")),
    );
    let mut answer = texts(&["Hello", " there"]);
    answer.extend(event("toolUseEvent", &json!({"name":"Read","toolUseId":"tooluse_1","input":"{\"file_path\":\"/a\"}","stop":true})));
    answer.extend(event(
        "contextUsageEvent",
        &json!({"contextUsagePercentage":2.0}),
    ));
    kiro.script("bob", Reply::Stream(answer));
    let service = stack(
        &kiro,
        pool(vec![social("alice"), social("bob")]),
        AnthropicConfig::default(),
        Some("http://kiro.test"),
    );
    let (status, headers, body) = call(&service, post("/v1/messages?beta=true", hello(true))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    let events = events(&body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[0].1["message"]["model"], "claude-sonnet-4-5");
    assert_eq!(
        events[5].1["content_block"],
        json!({"type":"tool_use","id":"tooluse_1","name":"Read","input":{}})
    );
    assert_eq!(events[8].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(events[8].1["usage"]["input_tokens"], 4000);
    assert_eq!(kiro.seen().len(), 2);
}

#[tokio::test]
async fn an_exception_after_content_ends_the_sse_stream_with_an_error_event() {
    let kiro = Kiro::default();
    let mut answer = texts(&["partial"]);
    answer.extend(exception("InternalServerException", "lost it"));
    kiro.script("alice", Reply::Stream(answer));
    let service = stack(
        &kiro,
        pool(vec![social("alice")]),
        AnthropicConfig::default(),
        Some("http://kiro.test"),
    );
    let (status, _, body) = call(&service, post("/v1/messages", hello(true))).await;
    assert_eq!(status, StatusCode::OK);
    let events = events(&body);
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "api_error");
    assert_eq!(
        data["error"]["message"],
        "the upstream failed mid-answer (InternalServerException): lost it"
    );
    assert!(!events.iter().any(|(n, _)| n == "message_stop"));

    // Without streaming, the same answer is an error response.
    let mut answer = texts(&["partial"]);
    answer.extend(exception("InternalServerException", "lost it"));
    kiro.script("alice", Reply::Stream(answer));
    let (status, _, body) = call(&service, post("/v1/messages", hello(false))).await;
    assert_eq!(status.as_u16(), 500);
    assert_eq!(json_of(&body)["error"]["type"], "api_error");
}

/// Sends `bytes` as the upstream's 200 stream, three bytes a chunk.
fn trickle(kiro: &Kiro, account: &str, bytes: &[u8]) {
    let (tx, rx) = mpsc::channel(bytes.len().div_ceil(3).max(1));
    for chunk in bytes.chunks(3) {
        tx.try_send(Bytes::copy_from_slice(chunk)).unwrap();
    }
    kiro.script(account, Reply::Channel(rx));
}

#[tokio::test]
async fn an_exception_before_any_content_is_an_http_error_with_retry_after() {
    let metadata = || {
        let mut bytes = event("messageMetadataEvent", &json!({"conversationId":"c"}));
        bytes.extend(event(
            "contextUsageEvent",
            &json!({"contextUsagePercentage":1.5}),
        ));
        bytes.extend(event(
            "meteringEvent",
            &json!({"unit":"credit","usage":0.01}),
        ));
        bytes
    };
    let cases: Vec<(&str, u16, &str, Option<&str>)> = vec![
        ("ThrottlingException", 429, "rate_limit_error", Some("10")),
        (
            "ServiceQuotaExceededException",
            429,
            "rate_limit_error",
            Some("10"),
        ),
        ("ValidationException", 400, "invalid_request_error", None),
        ("InternalServerException", 500, "api_error", Some("10")),
        (
            "ServiceUnavailableException",
            529,
            "overloaded_error",
            Some("10"),
        ),
    ];
    for (exception_type, status, kind, retry_after) in cases {
        for stream in [true, false] {
            for split in [false, true] {
                let kiro = Kiro::default();
                let mut bytes = metadata();
                bytes.extend(exception(exception_type, "no luck"));
                if split {
                    trickle(&kiro, "alice", &bytes);
                } else {
                    kiro.script("alice", Reply::Stream(bytes));
                }
                let service = stack(
                    &kiro,
                    pool(vec![social("alice")]),
                    AnthropicConfig::default(),
                    Some("http://kiro.test"),
                );
                let (got, headers, body) =
                    call(&service, post("/v1/messages", hello(stream))).await;
                let case = format!("{exception_type} stream={stream} split={split}");
                assert_eq!(got.as_u16(), status, "{case}");
                assert_eq!(headers["content-type"], "application/json", "{case}");
                assert_eq!(
                    headers.get("retry-after").map(|v| v.to_str().unwrap()),
                    retry_after,
                    "{case}"
                );
                let error = json_of(&body);
                assert_eq!(error["type"], "error", "{case}");
                assert_eq!(error["error"]["type"], kind, "{case}");
                assert_eq!(
                    error["error"]["message"],
                    format!("the upstream answered {exception_type} before any content: no luck"),
                    "{case}"
                );
            }
        }
    }

    // As the first frame: the pool fails over to the next account, and the last one's
    // exception is still an HTTP error, never a 200 holding an `error` event.
    for stream in [true, false] {
        let kiro = Kiro::default();
        kiro.script(
            "alice",
            Reply::Stream(exception("ThrottlingException", "Too many requests")),
        );
        trickle(
            &kiro,
            "bob",
            &exception("ThrottlingException", "Too many requests"),
        );
        let service = stack(
            &kiro,
            pool(vec![social("alice"), social("bob")]),
            AnthropicConfig::default(),
            Some("http://kiro.test"),
        );
        let (got, headers, body) = call(&service, post("/v1/messages", hello(stream))).await;
        assert_eq!(got.as_u16(), 429, "stream={stream}");
        assert!(headers.contains_key("retry-after"), "stream={stream}");
        let error = json_of(&body);
        assert_eq!(error["error"]["type"], "rate_limit_error");
        assert!(
            !error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("mid-answer"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn metadata_then_content_streams_everything_read_before_the_head() {
    let kiro = Kiro::default();
    let mut bytes = event("contextUsageEvent", &json!({"contextUsagePercentage":1.0}));
    bytes.extend(texts(&["Hel", "lo"]));
    bytes.extend(exception("ThrottlingException", "late"));
    trickle(&kiro, "alice", &bytes);
    let service = stack(
        &kiro,
        pool(vec![social("alice")]),
        AnthropicConfig::default(),
        Some("http://kiro.test"),
    );
    let (status, headers, body) = call(&service, post("/v1/messages", hello(true))).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    let got = events(&body);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(got[2].1["delta"]["text"], "Hel");
    assert_eq!(got[3].1["delta"]["text"], "lo");
    assert_eq!(
        got[4].1["error"]["message"],
        "the upstream failed mid-answer (ThrottlingException): late"
    );

    // Metadata only, then the end: an empty answer, whole.
    let mut bytes = event("meteringEvent", &json!({"unit":"credit","usage":0.01}));
    bytes.extend(event(
        "contextUsageEvent",
        &json!({"contextUsagePercentage":1.0}),
    ));
    trickle(&kiro, "alice", &bytes);
    let (status, _, body) = call(&service, post("/v1/messages", hello(true))).await;
    assert_eq!(status, 200);
    let names: Vec<String> = events(&body).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
}

#[tokio::test]
async fn upstream_errors_map_to_anthropic_errors() {
    let kiro = Kiro::default();
    let one = || pool(vec![social("alice")]);
    let cases: Vec<(Reply, u16, &str, &str)> = vec![
        (
            Reply::Status(
                400,
                r#"{"__type":"ValidationException","message":"Improperly formed request."}"#,
            ),
            400,
            "invalid_request_error",
            "Kiro rejected the request (400): Improperly formed request.",
        ),
        (
            Reply::Status(
                400,
                r#"{"message":"Input is too long.","reason":"CONTENT_LENGTH_EXCEEDS_THRESHOLD"}"#,
            ),
            400,
            "invalid_request_error",
            "prompt is too long: Kiro answered: Input is too long.",
        ),
        (
            Reply::Status(
                429,
                r#"{"__type":"ThrottlingException","message":"Too many requests"}"#,
            ),
            429,
            "rate_limit_error",
            "rate limited: Too many requests",
        ),
        (
            Reply::Status(
                402,
                r#"{"message":"Monthly limit","reason":"MONTHLY_REQUEST_COUNT"}"#,
            ),
            429,
            "rate_limit_error",
            "the account's Kiro quota is exhausted: Monthly limit",
        ),
        (
            Reply::Status(
                403,
                r#"{"message":"Your account is temporarily suspended"}"#,
            ),
            529,
            "overloaded_error",
            "the upstream rejected the account (403): Your account is temporarily suspended",
        ),
        (
            Reply::Status(503, r#"{"message":"try later"}"#),
            529,
            "overloaded_error",
            "the upstream is overloaded (503): try later",
        ),
        (
            Reply::Status(529, r#"{"message":"busy"}"#),
            529,
            "overloaded_error",
            "the upstream is overloaded (529): busy",
        ),
        (
            Reply::Status(500, r#"{"message":"boom"}"#),
            500,
            "api_error",
            "the upstream failed (500): boom",
        ),
        (
            Reply::Status(502, "bad gateway"),
            500,
            "api_error",
            "the upstream failed (502): bad gateway",
        ),
    ];
    for (reply, status, kind, message) in cases {
        kiro.script("alice", reply);
        let service = stack(
            &kiro,
            one(),
            AnthropicConfig::default(),
            Some("http://kiro.test"),
        );
        let (got, headers, body) = call(&service, post("/v1/messages", hello(false))).await;
        let error = json_of(&body);
        assert_eq!(got.as_u16(), status, "{error}");
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["type"], kind);
        assert_eq!(error["error"]["message"], message);
        if matches!(status, 429 | 500 | 529) {
            assert!(headers.contains_key("retry-after"), "{kind}");
        }
        let id = headers["request-id"].to_str().unwrap();
        assert!(id.starts_with("req_") && id.len() == 28, "{id}");
    }
}

#[tokio::test]
async fn pool_exhaustion_is_429_when_rate_limited_and_529_otherwise() {
    let kiro = Kiro::default();
    kiro.script("alice", Reply::Status(429, r#"{"message":"slow"}"#));
    kiro.script("bob", Reply::Status(429, r#"{"message":"slow"}"#));
    let service = stack(
        &kiro,
        pool(vec![social("alice"), social("bob")]),
        AnthropicConfig::default(),
        Some("http://kiro.test"),
    );
    let (status, _, _) = call(&service, post("/v1/messages", hello(false))).await;
    assert_eq!(status, 429);
    // Both cool down now: the pool itself says so.
    let (status, headers, body) = call(&service, post("/v1/messages", hello(true))).await;
    assert_eq!(status, 429);
    let error = json_of(&body);
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("no account available (2 rate limited)"),
        "{error}"
    );
    let after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&after), "{after}");

    let disabled = Pool::builder()
        .account(social("alice").enabled(false))
        .build()
        .unwrap();
    let service = stack(
        &kiro,
        disabled,
        AnthropicConfig::default(),
        Some("http://kiro.test"),
    );
    let (status, headers, body) = call(&service, post("/v1/messages", hello(false))).await;
    assert_eq!(status.as_u16(), 529);
    assert_eq!(headers["retry-after"], "10");
    assert_eq!(
        json_of(&body)["error"]["message"],
        "no account available (1 disabled)"
    );
}

#[tokio::test]
async fn local_routes_and_request_errors() {
    let kiro = Kiro::default();
    let service = stack(
        &kiro,
        pool(vec![social("alice")]),
        AnthropicConfig::default().body_limit(4096),
        Some("http://kiro.test"),
    );
    let (status, _, body) = call(
        &service,
        post(
            "/v1/messages/count_tokens?beta=true",
            json!({"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"abcdefgh"}]}),
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&body), json!({"input_tokens":2}));

    let get = |path: &str| Request::get(path).body(Full::new(Bytes::new())).unwrap();
    let (status, _, body) = call(&service, get("/v1/models?beta=true&limit=2")).await;
    assert_eq!(status, 200);
    let list = json_of(&body);
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        list["data"][0],
        json!({"type":"model","id":"claude-sonnet-4-5-20250929","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z","max_input_tokens":200000,"max_tokens":64000})
    );
    assert_eq!(list["has_more"], true);
    assert_eq!(list["first_id"], "claude-sonnet-4-5-20250929");
    assert_eq!(list["last_id"], "claude-sonnet-4-6");
    let (_, _, body) = call(
        &service,
        get("/v1/models?after_id=claude-sonnet-4-6&limit=100"),
    )
    .await;
    let rest = json_of(&body);
    assert_eq!(rest["first_id"], "claude-opus-4-5-20251101");
    assert_eq!(rest["has_more"], false);
    let (status, _, body) = call(&service, get("/v1/models/claude-haiku-4-5")).await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["id"], "claude-haiku-4-5-20251001");
    let (status, _, body) = call(&service, get("/v1/models/gpt-4o")).await;
    assert_eq!(status, 404);
    assert_eq!(
        json_of(&body),
        json!({"type":"error","error":{"type":"not_found_error","message":"model `gpt-4o` not found"}})
    );

    let (status, _, body) = call(&service, get("/v1/messages")).await;
    assert_eq!(status, 404);
    assert_eq!(
        json_of(&body)["error"]["message"],
        "no route for GET /v1/messages; served: POST /v1/messages, POST /v1/messages/count_tokens, GET /v1/models"
    );
    let (status, _, _) = call(&service, post("/api/event_logging/batch", json!({}))).await;
    assert_eq!(status, 404);

    let (status, _, body) = call(
        &service,
        post(
            "/v1/messages",
            json!({"model":"gpt-4o","max_tokens":1,"messages":[{"role":"user","content":"x"}]}),
        ),
    )
    .await;
    assert_eq!(status, 400);
    assert!(json_of(&body)["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with(
            "model `gpt-4o` is not served here; known models: claude-sonnet-4-5-20250929"
        ));

    let (status, _, body) = call(
        &service,
        post("/v1/messages", json!({"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"x".repeat(5000)}]})),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(
        json_of(&body),
        json!({"type":"error","error":{"type":"request_too_large","message":"the request body is larger than 4096 bytes"}})
    );
    // None of these reached Kiro.
    assert!(kiro.seen().is_empty());
}

#[tokio::test(start_paused = true)]
async fn pings_while_the_upstream_is_silent() {
    let kiro = Kiro::default();
    let (tx, rx) = mpsc::channel(4);
    tx.send(Bytes::from(texts(&["first"]))).await.unwrap();
    kiro.script("alice", Reply::Channel(rx));
    let service = stack(
        &kiro,
        pool(vec![social("alice")]),
        AnthropicConfig::default().ping_interval(Duration::from_secs(5)),
        Some("http://kiro.test"),
    );
    let response = service
        .oneshot(post("/v1/messages", hello(true)))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut seen = Vec::new();
    // message_start, then the first text, with no ping in between.
    while !String::from_utf8_lossy(&seen).contains("first") {
        seen.extend_from_slice(&body.frame().await.unwrap().unwrap().into_data().unwrap());
    }
    assert!(!String::from_utf8_lossy(&seen).contains("ping"));
    let silent = tokio::time::Instant::now();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&frame[..], b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
    assert_eq!(silent.elapsed(), Duration::from_secs(5));
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&frame[..], b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
    assert_eq!(silent.elapsed(), Duration::from_secs(10));
    tx.send(Bytes::from(texts(&[" second"]))).await.unwrap();
    drop(tx);
    let mut rest = Vec::new();
    while let Some(frame) = body.frame().await {
        rest.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    let events = events(&rest);
    assert_eq!(events[0].1["delta"]["text"], " second");
    assert_eq!(events.last().unwrap().0, "message_stop");
    assert_eq!(silent.elapsed(), Duration::from_secs(10));
}
