//! Bad clients against the gateway (`examples/gateway/proxy.rs`): malformed JSON, bodies over
//! the cap (declared and chunked), a slowloris-style body, 10,000 open connections. Each
//! gets a clear error, nothing reaches an account, and the gateway keeps serving others.
#![cfg(all(feature = "kiro", feature = "admin"))]

#[path = "../examples/gateway/proxy.rs"]
mod proxy;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_account_pool::credential::BearerToken;
use tower_account_pool::{Account, AccountPoolLayer, Pool};

const CAP: usize = 4096;
const GOOD: &str = r#"{"model":"claude-sonnet-4-5","messages":[]}"#;

struct Setup {
    gateway: proxy::Gateway,
    upstream_calls: Arc<AtomicUsize>,
    pool: Pool,
}

async fn setup() -> Setup {
    let upstream_calls = Arc::new(AtomicUsize::new(0));
    let calls = upstream_calls.clone();
    let app = axum::Router::new().fallback(post(move |body: String| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { format!(r#"{{"echo":{}}}"#, body.len()) }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let pool = Pool::builder()
        .account(Account::new("a", BearerToken::new("sk-bad-clients-a")))
        .account(Account::new("b", BearerToken::new("sk-bad-clients-b")))
        .build()
        .unwrap();
    let mut options = proxy::ProxyOptions::new(format!("http://{upstream}"));
    options.body_cap = CAP;
    options.body_timeout = Duration::from_millis(500);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = proxy::Gateway::start(
        listener,
        pool.clone(),
        AccountPoolLayer::new(pool.clone()),
        options,
    )
    .unwrap();
    Setup {
        gateway,
        upstream_calls,
        pool,
    }
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/v1/messages")
}

async fn post_json(addr: SocketAddr, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(url(addr))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("a response");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, body)
}

fn message(body: &serde_json::Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

/// Sends one good request and expects the upstream's answer.
async fn still_serving(addr: SocketAddr) {
    let (status, body) = post_json(addr, GOOD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["echo"], GOOD.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_gets_400_naming_the_place_and_reaches_no_account() {
    let s = setup().await;
    let addr = s.gateway.addr();
    let (status, body) = post_json(addr, r#"{"model":"claude-sonnet-4-5","messages":[}"#).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(
        message(&body),
        "the request body is not valid JSON: expected value at line 1 column 42"
    );
    assert_eq!(s.upstream_calls.load(Ordering::SeqCst), 0);
    assert_eq!(s.pool.stats().selections, 0, "no account was used");
    still_serving(addr).await;
    assert_eq!(s.upstream_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_cap_get_413_declared_or_chunked() {
    let s = setup().await;
    let addr = s.gateway.addr();
    let big = format!(r#"{{"model":"m","pad":"{}"}}"#, "x".repeat(CAP));
    let expected = format!("the request body is larger than the limit of {CAP} bytes");

    // Declared with Content-Length.
    let (status, body) = post_json(addr, big.clone()).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["type"], "request_too_large");
    assert_eq!(message(&body), expected);

    // Chunked: no length up front, the cap is hit while reading.
    let chunks: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(512)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let stream = futures_util::stream::iter(chunks);
    let (status, body) = post_json(addr, reqwest::Body::wrap_stream(stream)).await;
    assert_eq!(status, 413);
    assert_eq!(message(&body), expected);

    // Exactly at the cap is fine.
    let at_cap = format!(r#"{{"pad":"{}"}}"#, "x".repeat(CAP - 10));
    assert_eq!(at_cap.len(), CAP);
    let (status, _) = post_json(addr, at_cap).await;
    assert_eq!(status, 200);
    assert_eq!(
        s.upstream_calls.load(Ordering::SeqCst),
        1,
        "only the body within the cap"
    );
}

/// Opens a raw connection and sends a request head announcing `length` bytes of body.
async fn raw_head(addr: SocketAddr, length: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_gets_408_while_others_are_served() {
    let s = setup().await;
    let addr = s.gateway.addr();
    // A slowloris: the head, then one byte of a 100-byte body, then nothing.
    let mut slow = raw_head(addr, 100).await;
    slow.write_all(b"{").await.unwrap();
    // Meanwhile others are served at once.
    for _ in 0..5 {
        still_serving(addr).await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        loop {
            let n = slow.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the slow client got an answer in time");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("the request body did not arrive within 0.5 s"),
        "{text}"
    );
    assert_eq!(s.upstream_calls.load(Ordering::SeqCst), 5);
}

/// The child of the 10,000-connection test: opens `HOLD_COUNT` connections to `HOLD_ADDR`
/// (half idle, half stalled in the middle of a body), prints `HELD <n>` and keeps them.
#[tokio::test]
#[ignore = "the child process of ten_thousand_connections_do_not_stop_the_gateway"]
async fn connection_holder_process() {
    let (Ok(addr), Ok(count)) = (std::env::var("HOLD_ADDR"), std::env::var("HOLD_COUNT")) else {
        panic!("run by ten_thousand_connections_do_not_stop_the_gateway");
    };
    let addr: SocketAddr = addr.parse().unwrap();
    let count: usize = count.parse().unwrap();
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let stream = if i % 2 == 0 {
            TcpStream::connect(addr).await.unwrap()
        } else {
            let mut stream = raw_head(addr, 10).await;
            stream.write_all(b"{\"a\"").await.unwrap();
            stream
        };
        held.push(stream);
    }
    println!("HELD {}", held.len());
    std::future::pending::<()>().await;
}

/// Resident memory of this process in KiB (Linux).
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_do_not_stop_the_gateway() {
    use tokio::io::AsyncBufReadExt;
    const CONNECTIONS: usize = 10_000;
    let s = setup().await;
    let addr = s.gateway.addr();
    still_serving(addr).await;
    let before = resident_kib();
    // The connections come from another process: each end takes a descriptor, and one
    // process holding both ends of 10,000 connections would pass the machine's limit of 20,000.
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "connection_holder_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HOLD_ADDR", addr.to_string())
        .env("HOLD_COUNT", CONNECTIONS.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let held = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find("HELD ") {
                return line[at + 5..].trim().parse::<usize>().unwrap();
            }
        }
        panic!("the holder ended before holding its connections");
    })
    .await
    .expect("10,000 connections within 60 s");
    assert_eq!(held, CONNECTIONS);
    for _ in 0..10 {
        still_serving(addr).await;
    }
    let during = resident_kib();
    println!(
        "resident memory: {before} KiB before, {during} KiB with {CONNECTIONS} connections open ({} KiB each)",
        during.saturating_sub(before) / CONNECTIONS as u64
    );
    // Bounded: well under 64 KiB per open connection (a buffered body per connection would not be).
    assert!(
        during.saturating_sub(before) < 64 * CONNECTIONS as u64,
        "{before} KiB -> {during} KiB"
    );
    assert_eq!(s.upstream_calls.load(Ordering::SeqCst), 11);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    still_serving(addr).await;
}

#[tokio::test]
async fn an_open_dashboard_event_stream_does_not_hold_the_shutdown() {
    let pool = Pool::builder()
        .account(Account::new("a", BearerToken::new("sk-bad-clients-a")))
        .build()
        .unwrap();
    let token = "admin-token-for-the-events-test";
    let mut options = proxy::ProxyOptions::new("http://127.0.0.1:9");
    options.admin = Some(tower_account_pool::admin::AdminConfig::new(token).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway =
        proxy::Gateway::start(listener, pool.clone(), AccountPoolLayer::new(pool), options)
            .unwrap();
    // A dashboard's event stream, open and idle.
    let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /admin/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("event: ready") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("the ready event")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..n]);
    }
    // Graceful shutdown ends the stream instead of waiting for the dashboard to go away.
    tokio::time::timeout(Duration::from_secs(5), gateway.shutdown())
        .await
        .expect("the shutdown does not wait for the event stream")
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the connection closes")
        .unwrap();
}
