//! `examples/gateway` as a test: the demo's core (Kiro mock, pool file with token files, SQLite
//! store, the proxy with the admin router) and the table it prints; graceful shutdown.
#![cfg(all(
    feature = "kiro",
    feature = "test-util",
    feature = "sqlite",
    feature = "admin"
))]

#[path = "../examples/gateway/demo.rs"]
mod demo;
#[path = "../examples/gateway/proxy.rs"]
mod proxy;

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
    // (the clients send none), and the rest of the client's body unchanged.
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
        assert_eq!(body["model"], demo::MODEL);
        assert_eq!(
            body["conversationState"]["currentMessage"]["userInputMessage"]["content"],
            "Hello"
        );
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
            .post(format!("http://{addr}/generateAssistantResponse"))
            .header("content-type", "application/json")
            .header("x-api-key", key)
            .body(
                r#"{"model":"claude-sonnet-4-5","conversationState":{"currentMessage":{"userInputMessage":{"content":"Hello","modelId":"claude-sonnet-4.5"}}}}"#,
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
    let frames = tower_account_pool::kiro::eventstream::decode_all(&body).unwrap();
    let text: String = frames
        .iter()
        .filter(|m| m.event_type() == Some("assistantResponseEvent"))
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert!(
        text.contains("slow") && text.contains("but complete"),
        "{text}"
    );
    assert_eq!(stored, demo::ACCOUNTS.len());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}
