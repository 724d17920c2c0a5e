//! The Kiro classifier through the layer, against the Kiro mock: an exception frame at the
//! start of a 200 stream fails over to another account before the client sees anything, and a
//! 403 invalid-token answer refreshes the token and resends on the same account, and a quota
//! exhaustion lasts until the reset the account's usage probe reported.
#![cfg(all(feature = "kiro", feature = "test-util"))]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};
use tower_account_pool::kiro::eventstream::decode_all;
use tower_account_pool::kiro::{KiroClassifier, KiroCredential, KiroOptions, KiroPoolExt};
use tower_account_pool::layer::{AccountPoolLayer, ReplayBody, SelectedAccount};
use tower_account_pool::testing::{KiroMock, RefreshRule, Reply};
use tower_account_pool::{Account, HealthState, Pool, Strategy};

fn kiro_account(mock: &KiroMock, name: &str) -> Account {
    let json = format!(
        r#"{{"accessToken":"at-{name}","refreshToken":"rt-{name}","authMethod":"social",
            "profileArn":"arn:aws:codewhisperer:us-east-1:0:profile/{name}",
            "expiresAt":"2099-01-01T00:00:00Z"}}"#
    );
    let credential = KiroCredential::from_json(&json, KiroOptions::with_base_url(mock.url()))
        .expect("valid inline credentials");
    mock.accept_access_token(name, &format!("at-{name}"));
    mock.accept_refresh_token(name, &format!("rt-{name}"), RefreshRule::default());
    Account::new(name, credential)
}

/// A Kiro mock and a pool of `alice` and `bob`, asked in that order (fill-first).
async fn alice_then_bob() -> (KiroMock, Pool) {
    let mock = KiroMock::start().await;
    let pool = Pool::builder()
        .account(kiro_account(&mock, "alice"))
        .account(kiro_account(&mock, "bob"))
        .strategy(Strategy::FillFirst)
        .build()
        .unwrap();
    (mock, pool)
}

async fn send(mock: &KiroMock, pool: &Pool) -> (http::StatusCode, SelectedAccount, Vec<String>) {
    let client: Client<_, ReplayBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build_http();
    let service = AccountPoolLayer::new(pool.clone())
        .classifier(KiroClassifier::default())
        .layer(client);
    let request = http::Request::post(format!("{}/generateAssistantResponse", mock.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"claude-sonnet-4-5","conversationState":{"currentMessage":{"userInputMessage":{"content":"Hello","modelId":"claude-sonnet-4.5"}}}}"#,
        )))
        .unwrap();
    let response = service.oneshot(request).await.expect("a response");
    let status = response.status();
    let selected = response
        .extensions()
        .get::<SelectedAccount>()
        .cloned()
        .expect("the selected account");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let texts = decode_all(&body)
        .unwrap()
        .iter()
        .filter(|m| m.event_type() == Some("assistantResponseEvent"))
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    (status, selected, texts)
}

#[tokio::test]
async fn an_exception_frame_at_the_start_of_a_stream_fails_over() {
    let (mock, pool) = alice_then_bob().await;
    mock.script(
        "alice",
        [Reply::ExceptionFrame {
            after: vec![],
            exception_type: "ThrottlingException".into(),
            message: "Too many requests, please wait before trying again.".into(),
        }],
    );
    mock.script("bob", [Reply::success(&["Hello", " from bob"])]);

    let (status, selected, texts) = send(&mock, &pool).await;
    assert_eq!(status, 200);
    assert_eq!((selected.id().as_str(), selected.attempt()), ("bob", 2));
    assert_eq!(
        texts.len(),
        2,
        "bob's whole stream reached the client: {texts:?}"
    );
    assert!(texts[0].contains("Hello"));
    let alice = pool.snapshot().account("alice").unwrap().clone();
    assert_eq!(alice.state, HealthState::RateLimited);
    assert_eq!(alice.counters.rate_limited, 1);
}

#[tokio::test]
async fn an_invalid_token_is_refreshed_and_resent_on_the_same_account() {
    let (mock, pool) = alice_then_bob().await;
    // The mock no longer takes alice's token: the first answer is 403 invalid token.
    mock.revoke_access_token("at-alice");
    mock.script("alice", [Reply::success(&["after refresh"])]);

    let (status, selected, texts) = send(&mock, &pool).await;
    assert_eq!(status, 200);
    assert_eq!(selected.id().as_str(), "alice");
    assert_eq!(texts.len(), 1);
    assert_eq!(mock.refresh_calls(), 1, "exactly one refresh");
    let chats = mock.requests_to("/generateAssistantResponse");
    assert_eq!(chats.len(), 2, "the original request and its resend");
    assert!(chats.iter().all(|r| r.account.as_deref() != Some("bob")));
    assert_eq!(
        pool.snapshot().account("alice").unwrap().state,
        HealthState::Healthy
    );
}

#[tokio::test]
async fn a_quota_exhausted_account_waits_for_its_probed_reset_not_the_month_end() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let (mock, pool) = alice_then_bob().await;
    // The usage probe says alice's quota resets in ten days (not at the month's end), with
    // requests left for now.
    let reset_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 10 * 24 * 3600;
    mock.set_usage(
        "alice",
        serde_json::json!({"nextDateReset": reset_secs,
                           "usageBreakdownList": [{"currentUsage": 10, "usageLimit": 50}]}),
    );
    pool.probe_kiro_account("alice").await.unwrap();
    let probed = pool.snapshot().account("alice").unwrap().clone();
    assert_eq!(probed.state, HealthState::Healthy);
    assert_eq!(
        probed.quota_reset,
        Some(UNIX_EPOCH + Duration::from_secs(reset_secs)),
        "the probe records the reset for Strategy::SoonestReset"
    );
    mock.script(
        "alice",
        [tower_account_pool::testing::Reply::Raw {
            status: 402,
            content_type: "application/json".into(),
            body: br#"{"message":"You have reached the limit.","reason":"MONTHLY_REQUEST_COUNT"}"#
                .to_vec(),
        }],
    );
    mock.script("bob", [Reply::success(&["Hello"])]);

    let (status, selected, _) = send(&mock, &pool).await;
    assert_eq!(status, 200);
    assert_eq!(selected.id().as_str(), "bob");
    let alice = pool.snapshot().account("alice").unwrap().clone();
    assert_eq!(alice.state, HealthState::QuotaExhausted);
    let until = alice
        .next_retry_at
        .expect("a reset time")
        .duration_since(UNIX_EPOCH)
        .unwrap();
    assert!(
        until.abs_diff(Duration::from_secs(reset_secs)) < Duration::from_secs(2),
        "alice returns at the probed reset ({reset_secs} s), not at {until:?}"
    );
}

/// An exception sent before any content fails over however the upstream cuts the bytes (one
/// byte per chunk here) and when metadata-only frames come first.
#[tokio::test]
async fn an_exception_before_content_fails_over_even_in_pieces_and_after_metadata() {
    use std::convert::Infallible;
    use tower_account_pool::kiro::eventstream::Message;

    let mock = KiroMock::start().await;
    let pool = Pool::builder()
        .account(kiro_account(&mock, "alice"))
        .account(kiro_account(&mock, "bob"))
        .strategy(Strategy::FillFirst)
        .build()
        .unwrap();
    let metadata = Message::event("messageMetadataEvent", br#"{"conversationId":"c"}"#);
    let throttled = Message::exception("ThrottlingException", br#"{"message":"slow down"}"#);
    let text = Message::event("assistantResponseEvent", br#"{"content":"Hi"}"#);
    for first in [
        vec![throttled.clone()],
        vec![metadata.clone(), throttled.clone()],
    ] {
        let alice_stream: Vec<u8> = first.iter().flat_map(|m| m.encode().unwrap()).collect();
        let bob_stream: Vec<u8> = [metadata.clone(), text.clone()]
            .iter()
            .flat_map(|m| m.encode().unwrap())
            .collect();
        let upstream = tower::service_fn(move |request: http::Request<ReplayBody<Full<Bytes>>>| {
            let who = request
                .extensions()
                .get::<SelectedAccount>()
                .unwrap()
                .id()
                .to_string();
            let bytes = if who == "alice" {
                alice_stream.clone()
            } else {
                bob_stream.clone()
            };
            async move {
                // One byte per chunk.
                let chunks: Vec<Result<http_body::Frame<Bytes>, Infallible>> = bytes
                    .into_iter()
                    .map(|b| Ok(http_body::Frame::data(Bytes::from(vec![b]))))
                    .collect();
                let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
                Ok::<_, Infallible>(http::Response::new(body))
            }
        });
        pool.reset_all();
        let service = AccountPoolLayer::new(pool.clone())
            .classifier(KiroClassifier::default())
            .layer(upstream);
        let request = http::Request::post("http://kiro.test/generateAssistantResponse")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        let selected = response
            .extensions()
            .get::<SelectedAccount>()
            .cloned()
            .unwrap();
        assert_eq!(selected.id().as_str(), "bob", "failed over from alice");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let frames = decode_all(&body).unwrap();
        assert_eq!(
            frames.last().unwrap().event_type(),
            Some("assistantResponseEvent")
        );
        assert_eq!(
            pool.snapshot().account("alice").unwrap().state,
            HealthState::RateLimited
        );
    }
}
