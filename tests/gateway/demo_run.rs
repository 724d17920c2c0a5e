//! `examples/gateway` as a test: the demo's core (Kiro mock, pool file with token files, SQLite
//! store, the proxy with the admin router) and the table it prints; graceful shutdown.
#![cfg(all(
    feature = "kiro",
    feature = "test-util",
    feature = "sqlite",
    feature = "admin"
))]

use crate::demo;
use crate::proxy;

use std::net::SocketAddr;
use std::time::Duration;

use tower_account_pool::testing::Reply;

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn row<'a>(rows: &'a [demo::Row], id: &str) -> &'a demo::Row {
    rows.iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no row for {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_every_client_and_its_table_tells_each_account_apart() {
    let demo = demo::start(any_port(), None).await.unwrap();
    let tally = demo.traffic(120, 6, Duration::from_millis(20)).await;
    let rows = demo.rows();
    let table = demo::render(&rows, &tally);
    println!("{table}");

    // Every client got the answer of a working account.
    assert_eq!(tally.statuses.get(&200), Some(&120), "{table}");
    assert_eq!((tally.failed, tally.broken_bodies), (0, 0), "{table}");

    // Each misbehaving account is told apart, with its reason.
    let throttled = row(&rows, "kiro-throttled");
    assert_eq!(throttled.state, "rate_limited", "{table}");
    assert!(
        throttled.rate_limited >= 1 && throttled.successes == 0,
        "{table}"
    );
    assert!(throttled.reason.contains("rate limited"), "{table}");

    let expired = row(&rows, "kiro-expired");
    assert_eq!(expired.refreshes, 1, "refreshed once at start: {table}");
    assert_eq!(expired.state, "healthy", "{table}");
    assert!(expired.successes > 0 && expired.auth == 0, "{table}");

    let quota = row(&rows, "kiro-no-quota");
    assert_eq!(
        (quota.state.as_str(), quota.quota_exhausted, quota.requests),
        ("quota_exhausted", 1, 1),
        "tried once, then left alone until the reset: {table}"
    );
    assert!(quota.reason.contains("quota"), "{table}");

    let suspended = row(&rows, "kiro-suspended");
    assert_eq!(
        (
            suspended.state.as_str(),
            suspended.suspended,
            suspended.requests
        ),
        ("suspended", 1, 1),
        "{table}"
    );

    for id in ["kiro-ok-1", "kiro-ok-2", "kiro-ok-3"] {
        let ok = row(&rows, id);
        assert_eq!(ok.state, "healthy", "{table}");
        assert!(ok.successes > 0, "{table}");
        assert_eq!(ok.successes, ok.requests, "{table}");
    }
    // The pool's count per account equals what the upstream received with its token.
    for r in &rows {
        assert_eq!(r.requests as usize, r.upstream_saw, "{}: {table}", r.id);
    }
    // Each chat request carried its own account's profileArn, set by the gateway per attempt
    // (the clients send none), and the Anthropic request converted for Kiro.
    let chats = demo.mock.requests_to("/generateAssistantResponse");
    assert!(!chats.is_empty());
    for chat in &chats {
        let account = chat.account.as_deref().expect("a known token");
        let body: serde_json::Value = serde_json::from_slice(&chat.body).unwrap();
        assert_eq!(body["profileArn"], demo::profile_arn(account), "{body}");
        let length = chat
            .headers
            .get("content-length")
            .expect("a content-length");
        assert_eq!(length.to_str().unwrap(), chat.body.len().to_string());
        let message = &body["conversationState"]["currentMessage"]["userInputMessage"];
        assert_eq!(message["modelId"], "claude-sonnet-4.5", "{body}");
        assert_eq!(message["content"], "Hello", "{body}");
        assert!(chat.rejection.is_none(), "{:?}", chat.rejection);
    }
    let successes: u64 = rows.iter().map(|r| r.successes).sum();
    assert_eq!(successes, 120, "one upstream success per client request");

    // The table shows every account, its state and the client summary.
    for (id, _) in demo::ACCOUNTS {
        assert!(
            table.lines().any(|l| l.starts_with(id)),
            "{id} in the table"
        );
    }
    assert!(table.starts_with("account "));
    assert!(table.contains("clients: 120 requests"), "{table}");
    assert!(table.contains("120 × 200"), "{table}");

    // The dashboard is served, and the admin API takes the printed token.
    let client = reqwest::Client::new();
    let page = client.get(demo.dashboard_url()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let accounts = client
        .get(format!("{}/accounts", demo.dashboard_url()))
        .bearer_auth(&demo.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(accounts.status(), 200);
    let refused = client
        .get(format!("{}/accounts", demo.dashboard_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // A Claude client's session: a stream, a message, a tool round trip, thinking.
    let session = demo.claude_session().await.unwrap();
    println!("{}", demo::render_session(&session));
    assert_eq!(
        session.streamed_events,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(session.streamed_text, "Hello from Kiro");
    assert_eq!(session.message["type"], "message");
    assert_eq!(session.message["model"], demo::MODEL);
    assert_eq!(session.message["content"][0]["text"], "Hello from Kiro");
    assert_eq!(session.tool_call["stop_reason"], "tool_use");
    let call = &session.tool_call["content"][0];
    assert_eq!(call["type"], "tool_use");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["input"], serde_json::json!({"city": "Paris"}));
    assert_eq!(
        session.tool_answer["content"][0]["text"],
        "It is 18 °C and sunny in Paris."
    );
    // The follow-up's tool_result reached Kiro as a toolResult with the call's id.
    let follow_up = demo
        .mock
        .requests_to("/generateAssistantResponse")
        .into_iter()
        .rev()
        .find(|r| !r.tool_result_ids().is_empty())
        .expect("the tool result reached Kiro");
    assert_eq!(follow_up.tool_result_ids(), [call["id"].as_str().unwrap()]);
    assert_eq!(session.thinking["content"][0]["type"], "thinking");
    assert_eq!(
        session.thinking["content"][0]["thinking"],
        "A greeting: a short, friendly answer is enough."
    );
    assert_eq!(
        session.thinking["content"][1]["text"],
        "Hello! How can I help?"
    );

    // Shutdown flushes every account to the SQLite file.
    assert_eq!(demo.shutdown().await.unwrap(), demo::ACCOUNTS.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_request_in_flight_finish_and_then_refuses_connections() {
    let demo = demo::start(any_port(), None).await.unwrap();
    for id in ["kiro-ok-1", "kiro-ok-2", "kiro-ok-3", "kiro-expired"] {
        demo.mock.script(
            id,
            [Reply::Slow {
                delay: Duration::from_millis(400),
                reply: Box::new(Reply::success(&["slow", " but complete"])),
            }],
        );
    }
    let addr = demo.gateway.addr();
    let key = demo.client_key.clone();
    let in_flight = tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(format!("http://{addr}/v1/messages"))
            .header("content-type", "application/json")
            .header("x-api-key", key)
            .body(
                r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hello"}]}"#,
            )
            .send()
            .await
            .expect("a response");
        let status = response.status();
        (status, response.bytes().await.expect("the whole body"))
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stored = demo.shutdown().await.unwrap();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    let message: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        message["content"][0]["text"], "slow but complete",
        "{message}"
    );
    assert_eq!(stored, demo::ACCOUNTS.len());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_mode_forwards_kiro_bodies_with_each_accounts_profile_arn() {
    use tower_account_pool::kiro::KiroClassifier;
    use tower_account_pool::{AccountPoolLayer, Pool};
    let mock = tower_account_pool::testing::KiroMock::start().await;
    let pool = Pool::builder()
        .accounts(["social-1", "social-2"].map(|id| social_account(&mock, id)))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let gateway = proxy::Gateway::start(
        listener,
        pool.clone(),
        AccountPoolLayer::new(pool).classifier(KiroClassifier::default()),
        proxy::ProxyOptions::new(mock.url()),
    )
    .unwrap();
    let body = r#"{"conversationState":{"currentMessage":{"userInputMessage":{"content":"Hi","modelId":"claude-sonnet-4.5"}}}}"#;
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .post(format!(
                "http://{}/generateAssistantResponse",
                gateway.addr()
            ))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let chats = mock.requests_to("/generateAssistantResponse");
    assert_eq!(chats.len(), 2);
    for chat in chats {
        let account = chat.account.as_deref().unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&chat.body).unwrap();
        assert_eq!(sent["profileArn"], demo::profile_arn(account));
        assert_eq!(
            sent["conversationState"]["currentMessage"]["userInputMessage"]["content"],
            "Hi"
        );
        assert_eq!(
            chat.headers["content-length"].to_str().unwrap(),
            chat.body.len().to_string()
        );
    }
    gateway.shutdown().await.unwrap();
}

/// The Python interpreter that has the official `anthropic` SDK: `ANTHROPIC_SDK_PYTHON` (which
/// `.ci/run` sets to a venv it fills from PyPI), else `python3` when it can import it. `None`
/// (the test says it skipped) only outside CI.
fn sdk_python() -> Option<String> {
    let imports = |python: &str| {
        std::process::Command::new(python)
            .args(["-c", "import anthropic"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Ok(python) = std::env::var("ANTHROPIC_SDK_PYTHON") {
        assert!(
            imports(&python),
            "ANTHROPIC_SDK_PYTHON={python} cannot import the anthropic SDK"
        );
        return Some(python);
    }
    if imports("python3") {
        return Some("python3".into());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the Anthropic SDK test: set ANTHROPIC_SDK_PYTHON (.ci/run does)"
    );
    None
}

/// A Kiro social-login account `id` whose access token `mock` accepts, with the demo's ARN.
fn social_account(
    mock: &tower_account_pool::testing::KiroMock,
    id: &str,
) -> tower_account_pool::Account {
    use tower_account_pool::kiro::{KiroCredential, KiroOptions};
    mock.accept_access_token(id, &format!("at-{id}"));
    let json = format!(
        r#"{{"accessToken":"at-{id}","refreshToken":"rt-{id}","authMethod":"social","profileArn":"{}","expiresAt":"2099-01-01T00:00:00Z"}}"#,
        demo::profile_arn(id)
    );
    let credential =
        KiroCredential::from_json(&json, KiroOptions::with_base_url(mock.url())).unwrap();
    tower_account_pool::Account::new(id, credential)
}

/// A gateway in `anthropic` mode over one Kiro account of `mock` that answers every chat
/// request with `reply`.
async fn one_account_gateway(
    mock: &tower_account_pool::testing::KiroMock,
    id: &str,
    reply: Reply,
    key: &str,
) -> proxy::Gateway {
    use tower_account_pool::kiro::anthropic::AnthropicConfig;
    use tower_account_pool::kiro::KiroClassifier;
    use tower_account_pool::{AccountPoolLayer, Pool};
    mock.script(id, std::iter::repeat_n(reply, 100));
    let pool = Pool::builder()
        .account(social_account(mock, id))
        .build()
        .unwrap();
    let mut options = proxy::ProxyOptions::new(mock.url());
    options.api = proxy::Api::Anthropic {
        config: AnthropicConfig::default(),
        base_url: Some(mock.url()),
    };
    options.client_keys = Some(proxy::ClientKeys::parse(key).unwrap());
    let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    proxy::Gateway::start(
        listener,
        pool.clone(),
        AccountPoolLayer::new(pool).classifier(KiroClassifier::default()),
        options,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_anthropic_sdk_works_through_the_gateway() {
    let Some(python) = sdk_python() else {
        println!("skipped: no Python with the anthropic SDK (set ANTHROPIC_SDK_PYTHON)");
        return;
    };
    let demo = demo::start(any_port(), None).await.unwrap();
    let others = tower_account_pool::testing::KiroMock::start().await;
    let throttled = one_account_gateway(
        &others,
        "always-throttled",
        Reply::Throttled {
            retry_after: Some(30),
        },
        &demo.client_key,
    )
    .await;
    let suspended = one_account_gateway(
        &others,
        "always-suspended",
        Reply::Suspended,
        &demo.client_key,
    )
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/anthropic_sdk.py");
    let output = tokio::process::Command::new(&python)
        .arg(script)
        .env("GATEWAY_URL", format!("http://{}", demo.gateway.addr()))
        .env("GATEWAY_KEY", &demo.client_key)
        .env("THROTTLED_URL", format!("http://{}", throttled.addr()))
        .env("SUSPENDED_URL", format!("http://{}", suspended.addr()))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    println!("{stdout}");
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    // The follow-up's tool_result reached Kiro as a toolResult with the call's id.
    let id = seen["tool_use_id"].as_str().unwrap();
    let follow_up = demo
        .mock
        .requests_to("/generateAssistantResponse")
        .into_iter()
        .find(|r| !r.tool_result_ids().is_empty())
        .expect("the tool result reached Kiro");
    assert_eq!(follow_up.tool_result_ids(), [id]);
    // Nothing the SDK sent was refused by Kiro's checks.
    for chat in demo.mock.requests_to("/generateAssistantResponse") {
        assert!(chat.rejection.is_none(), "{:?}", chat.rejection);
    }
    throttled.shutdown().await.unwrap();
    suspended.shutdown().await.unwrap();
    demo.shutdown().await.unwrap();
}
