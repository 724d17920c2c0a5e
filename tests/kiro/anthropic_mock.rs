//! The Anthropic layer over real HTTP: a hyper client to the Kiro mock, through the pool with
//! the Kiro classifier. A reply's text comes back as SSE and as a Message; an invalid token is
//! refreshed and the converted body sent again; a throttled account gives way to the next;
//! a mid-stream connection reset ends the stream with an `error` event; malformed tool schemas
//! are normalized into what the mock's validation (Kiro's rules) accepts.
#![cfg(all(feature = "kiro", feature = "test-util"))]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tower::{ServiceBuilder, ServiceExt};
use tower_account_pool::kiro::anthropic::{
    AnthropicConfig, AnthropicLayer, KiroAttemptLayer, KiroRequestBody, RequestedModel,
};
use tower_account_pool::kiro::{KiroClassifier, KiroCredential, KiroOptions};
use tower_account_pool::layer::{AccountPoolLayer, ReplayBody};
use tower_account_pool::testing::{KiroMock, RefreshRule, Reply};
use tower_account_pool::{Account, Pool, Strategy};

fn account(mock: &KiroMock, name: &str) -> Account {
    let json = format!(
        r#"{{"accessToken":"at-{name}","refreshToken":"rt-{name}","authMethod":"social",
            "profileArn":"arn:aws:codewhisperer:us-east-1:0:profile/{name}",
            "expiresAt":"2099-01-01T00:00:00Z"}}"#
    );
    let credential =
        KiroCredential::from_json(&json, KiroOptions::with_base_url(mock.url())).unwrap();
    mock.accept_access_token(name, &format!("at-{name}"));
    mock.accept_refresh_token(name, &format!("rt-{name}"), RefreshRule::default());
    Account::new(name, credential)
}

async fn send(mock: &KiroMock, pool: &Pool, stream: bool) -> (u16, String) {
    let body = json!({"model":"claude-sonnet-4-5","max_tokens":100,"stream":stream,
                      "messages":[{"role":"user","content":"Hello"}]});
    send_body(mock, pool, body).await
}

async fn send_body(mock: &KiroMock, pool: &Pool, body: Value) -> (u16, String) {
    let client: Client<_, ReplayBody<KiroRequestBody>> =
        Client::builder(TokioExecutor::new()).build_http();
    let service = ServiceBuilder::new()
        .layer(AnthropicLayer::new(AnthropicConfig::default()))
        .layer(
            AccountPoolLayer::new(pool.clone())
                .classifier(KiroClassifier::default())
                .model_extractor(RequestedModel::extractor()),
        )
        .layer(KiroAttemptLayer::new().base_url(&mock.url()).unwrap())
        .service(client);
    let request = http::Request::post("/v1/messages?beta=true")
        .header("x-api-key", "client-key")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn sent_bodies(mock: &KiroMock) -> Vec<(String, Value)> {
    mock.requests_to("/generateAssistantResponse")
        .into_iter()
        .map(|r| {
            (
                r.account.unwrap_or_default(),
                serde_json::from_slice(&r.body).unwrap(),
            )
        })
        .collect()
}

async fn two_accounts() -> (KiroMock, Pool) {
    let mock = KiroMock::start().await;
    let pool = Pool::builder()
        .account(account(&mock, "alice"))
        .account(account(&mock, "bob"))
        .strategy(Strategy::FillFirst)
        .build()
        .unwrap();
    (mock, pool)
}

#[tokio::test]
async fn a_reply_comes_back_as_a_message_and_as_sse() {
    let (mock, pool) = two_accounts().await;
    mock.script(
        "alice",
        [Reply::success(&["Hel", "lo!"]), Reply::success(&["Again"])],
    );
    let (status, body) = send(&mock, &pool, false).await;
    assert_eq!(status, 200, "{body}");
    let message: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(message["content"], json!([{"type":"text","text":"Hello!"}]));
    assert_eq!(message["stop_reason"], "end_turn");

    let (status, body) = send(&mock, &pool, true).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("event: message_start\n"), "{body}");
    assert!(
        body.contains(r#"{"type":"text_delta","text":"Again"}"#),
        "{body}"
    );
    assert!(body.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));

    let sent = sent_bodies(&mock);
    assert_eq!(sent.len(), 2);
    for (account, body) in sent {
        assert_eq!(account, "alice");
        assert_eq!(
            body["profileArn"],
            "arn:aws:codewhisperer:us-east-1:0:profile/alice"
        );
        assert_eq!(
            body["conversationState"]["currentMessage"]["userInputMessage"]["modelId"],
            "claude-sonnet-4.5"
        );
    }
}

#[tokio::test]
async fn an_invalid_token_is_refreshed_and_a_throttled_account_gives_way() {
    let (mock, pool) = two_accounts().await;
    mock.script(
        "alice",
        [
            Reply::InvalidToken,
            Reply::Throttled {
                retry_after: Some(20),
            },
        ],
    );
    mock.script("bob", [Reply::success(&["from bob"])]);
    let (status, body) = send(&mock, &pool, false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["content"][0]["text"],
        "from bob"
    );
    let sent = sent_bodies(&mock);
    let accounts: Vec<&str> = sent.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(accounts, ["alice", "alice", "bob"]);
    // The converted body is replayed: only the account's profileArn differs.
    let strip = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("profileArn");
        v
    };
    assert_eq!(strip(&sent[0].1), strip(&sent[2].1));
    assert_eq!(
        sent[2].1["profileArn"],
        "arn:aws:codewhisperer:us-east-1:0:profile/bob"
    );
}

#[tokio::test]
async fn a_connection_reset_mid_stream_ends_with_an_error_event() {
    let (mock, pool) = two_accounts().await;
    mock.script(
        "alice",
        [Reply::ResetMidStream {
            after: vec!["partial".into()],
        }],
    );
    let (status, body) = send(&mock, &pool, true).await;
    assert_eq!(status, 200);
    assert!(
        body.contains(r#"{"type":"text_delta","text":"partial"}"#),
        "{body}"
    );
    assert!(
        body.contains("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\""),
        "{body}"
    );
    assert!(!body.contains("message_stop"));
}

#[tokio::test]
async fn malformed_tool_schemas_are_normalized_before_they_reach_kiro() {
    let (mock, pool) = two_accounts().await;
    let body = json!({"model":"claude-sonnet-4-5","max_tokens":100,"messages":[{"role":"user","content":"Hello"}],
        "tools":[
            {"name":"a","input_schema":{"type":"object","properties":{"a":{"type":"string"}},"required":"a"}},
            {"name":"b","input_schema":{"properties":{"type":{"type":"string"}}}},
            {"name":"c","input_schema":{"type":"object","properties":[],"required":["x",1]}}]});
    let (status, answer) = send_body(&mock, &pool, body).await;
    assert_eq!(status, 200, "{answer}");
    let requests = mock.requests_to("/generateAssistantResponse");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].rejection, None);
}
