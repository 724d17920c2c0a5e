//! Bad clients against the gateway (`examples/gateway/proxy.rs`): malformed JSON, bodies over
//! the cap (declared and chunked), a slowloris-style body, 10,000 open connections, requests
//! without a client key, hostile request targets and methods, slow or idle headers, invalid
//! UTF-8, the admin prefix. Each gets a clear error, nothing reaches an account, and the
//! gateway keeps serving others.
#![cfg(all(feature = "kiro", feature = "admin"))]

use crate::proxy;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_account_pool::credential::BearerToken;
use tower_account_pool::{Account, AccountPoolLayer, Pool};

const CAP: usize = 4096;
const GOOD: &str = r#"{"model":"claude-sonnet-4-5","messages":[]}"#;

struct Setup {
    gateway: proxy::Gateway,
    upstream_calls: Arc<AtomicUsize>,
    /// Every request the upstream received: method, path and query, headers.
    seen: Arc<Mutex<Vec<(String, String, http::HeaderMap)>>>,
    pool: Pool,
}

async fn setup() -> Setup {
    setup_with(|_| {}).await
}

/// The upstream answers `200 {"echo": <body length>}`, or the status and body a request asks
/// for with `x-answer-status` / `x-answer-body` (a test's stand-in for an upstream's error).
async fn setup_with(adjust: impl FnOnce(&mut proxy::ProxyOptions)) -> Setup {
    let upstream_calls = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<Vec<(String, String, http::HeaderMap)>>> = Arc::default();
    let calls = upstream_calls.clone();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        calls.fetch_add(1, Ordering::SeqCst);
        let (parts, body) = request.into_parts();
        record.lock().unwrap().push((
            parts.method.to_string(),
            parts.uri.to_string(),
            parts.headers.clone(),
        ));
        async move {
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let status = parts
                .headers
                .get("x-answer-status")
                .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
                .unwrap_or(200);
            let answer = match parts.headers.get("x-answer-body") {
                Some(text) => text.to_str().unwrap().to_owned(),
                None => format!(r#"{{"echo":{}}}"#, body.len()),
            };
            (
                http::StatusCode::from_u16(status).unwrap(),
                [("content-type", "application/json")],
                answer,
            )
        }
    });
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
    adjust(&mut options);
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
        seen,
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
            "bad_clients::connection_holder_process",
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

/// Sends `request` as raw bytes on a new connection and reads the answer until the server
/// closes the connection (requests here say `connection: close`).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("an answer and a close within 5 s")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// Nothing reached the upstream and no account was chosen, penalised or cooled down.
fn untouched(s: &Setup) {
    assert_eq!(
        s.upstream_calls.load(Ordering::SeqCst),
        0,
        "nothing was forwarded"
    );
    assert_eq!(s.pool.stats().selections, 0, "no account was used");
    for account in s.pool.snapshot().accounts {
        assert_eq!(account.state.to_string(), "healthy", "{}", account.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_targets_other_than_origin_form_never_reach_the_pool() {
    let s = setup().await;
    let addr = s.gateway.addr();
    // `OPTIONS *` used to send an account's key to port 80 of the upstream host.
    for _ in 0..4 {
        let answer = raw(
            addr,
            b"OPTIONS * HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&answer), 405, "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("allow: get, post, head"),
            "{answer}"
        );
    }
    let answer = raw(
        addr,
        b"GET * HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(
        answer.contains("only origin-form request targets"),
        "{answer}"
    );
    // Absolute-form naming another host and port.
    let answer = raw(
        addr,
        b"GET http://127.0.0.1:1/v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    // Authority-form.
    let answer = raw(
        addr,
        b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nhost: 127.0.0.1:80\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!([400, 405].contains(&status_of(&answer)), "{answer}");
    untouched(&s);
    still_serving(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_get_405_and_an_upstream_501_penalises_no_account() {
    let s = setup().await;
    let addr = s.gateway.addr();
    for method in ["FOO", "PROPFIND", "DELETE", "PUT"] {
        let answer = raw(
            addr,
            format!("{method} /v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&answer), 405, "{method}: {answer}");
        assert!(
            answer.contains(&format!("method {method} is not forwarded")),
            "{answer}"
        );
    }
    untouched(&s);
    // An allowed method the upstream does not implement: the request's fault, not the account's.
    let client = reqwest::Client::new();
    for _ in 0..6 {
        let response = client
            .post(url(addr))
            .header("x-answer-status", "501")
            .header("x-answer-body", r#"{"message":"not implemented"}"#)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 501);
    }
    assert_eq!(
        s.upstream_calls.load(Ordering::SeqCst),
        6,
        "no retries either"
    );
    for account in s.pool.snapshot().accounts {
        assert_eq!(account.state.to_string(), "healthy", "{}", account.id);
        assert_eq!(account.counters.transient, 0, "{}", account.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_methods_that_are_forwarded_are_configurable() {
    let s = setup_with(|o| o.gate = proxy::RequestGate::parse("post, put").unwrap()).await;
    let addr = s.gateway.addr();
    let answer = raw(
        addr,
        b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 405, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("allow: post, put"),
        "{answer}"
    );
    let response = reqwest::Client::new()
        .put(url(addr))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        proxy::RequestGate::parse("GET,CONNECT").unwrap_err(),
        "CONNECT cannot be forwarded"
    );
    assert_eq!(
        proxy::RequestGate::parse(" , ").unwrap_err(),
        "at least one method must be allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_whose_text_speaks_of_an_unsupported_model_is_the_clients() {
    let s = setup().await;
    let addr = s.gateway.addr();
    let echo = r#"{"type":"error","error":{"type":"invalid_request_error","message":"model claude-sonnet-4-5: value `x` not supported"}}"#;
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let response = client
            .post(url(addr))
            .header("content-type", "application/json")
            .header("x-answer-status", "400")
            .header("x-answer-body", echo)
            .body(GOOD)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
    }
    for account in s.pool.snapshot().accounts {
        assert_eq!(account.state.to_string(), "healthy", "{}", account.id);
        assert!(
            account.model_cooldowns.is_empty(),
            "{}: {:?}",
            account.id,
            account.model_cooldowns
        );
        assert_eq!(account.counters.model_unsupported, 0, "{}", account.id);
        assert_eq!(
            account.counters.client_errors, account.counters.requests,
            "{}",
            account.id
        );
    }
    // The model is still served.
    still_serving(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_need_a_key_checked_before_the_body_and_never_forwarded() {
    let keys = "first-client-key-0001, second-client-key-0002";
    let s = setup_with(|o| o.client_keys = Some(proxy::ClientKeys::parse(keys).unwrap())).await;
    let addr = s.gateway.addr();
    let client = reqwest::Client::new();
    let send = |key: Option<(&'static str, String)>| {
        let mut request = client
            .post(url(addr))
            .header("content-type", "application/json")
            .body(GOOD);
        if let Some((name, value)) = key {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let bytes = response.bytes().await.unwrap_or_default();
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            (status, body)
        }
    };
    let (status, body) = send(None).await;
    assert_eq!(status, 401);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
    assert!(message(&body).contains("needs a client API key"), "{body}");
    for wrong in [
        ("x-api-key", "first-client-key-000".to_owned()),
        ("authorization", "Bearer nope".to_owned()),
        (
            "authorization",
            "Basic Zmlyc3QtY2xpZW50LWtleS0wMDAx".to_owned(),
        ),
    ] {
        let (status, body) = send(Some(wrong.clone())).await;
        assert_eq!(status, 401, "{wrong:?}");
        assert_eq!(message(&body), "invalid client API key");
    }
    untouched(&s);
    let (status, _) = send(Some(("x-api-key", "first-client-key-0001".into()))).await;
    assert_eq!(status, 200);
    let (status, _) = send(Some((
        "authorization",
        "Bearer second-client-key-0002".into(),
    )))
    .await;
    assert_eq!(status, 200);
    // Headers the client names in `Connection` are hop-by-hop: not forwarded.
    let response = client
        .post(url(addr))
        .header("x-api-key", "first-client-key-0001")
        .header("connection", "keep-alive, X-Secret, Host")
        .header("x-secret", "hop")
        .header("x-kept", "end-to-end")
        .header("host", "evil.example")
        .body(GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    {
        let seen = s.seen.lock().unwrap();
        let (_, _, headers) = seen.last().unwrap();
        assert!(headers.get("x-secret").is_none(), "{headers:?}");
        assert_eq!(headers["x-kept"], "end-to-end");
        // The upstream's own `Host`, once: the client's never goes through, and naming it in
        // `Connection` changes nothing.
        let hosts: Vec<_> = headers.get_all("host").iter().collect();
        assert_eq!(hosts.len(), 1, "{headers:?}");
        assert!(
            hosts[0].to_str().unwrap().starts_with("127.0.0.1:"),
            "{headers:?}"
        );
    }
    // The client's key never left the gateway; the account's went instead.
    for (_, _, headers) in s.seen.lock().unwrap().iter() {
        let all = format!("{headers:?}");
        assert!(!all.contains("client-key"), "{all}");
        assert!(all.contains("sk-bad-clients-"), "{all}");
    }
    // Decided from the head: a body announced but never sent is not waited for.
    let mut stream = raw_head(addr, 1_000_000).await;
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_millis(400), stream.read(&mut answer))
        .await
        .expect("a 401 before the body (the body timeout is 500 ms)")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(s.upstream_calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_inside_a_json_string_gets_400_naming_the_offset() {
    let s = setup().await;
    let addr = s.gateway.addr();
    let body = b"{\"model\":\"claude-sonnet-4-5\",\"messages\":[\"\xc3\x28\"]}".to_vec();
    let (status, answer) = post_json(addr, body).await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["type"], "invalid_request_error");
    assert_eq!(
        message(&answer),
        "the request body is not valid UTF-8 at byte offset 42"
    );
    untouched(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_prefix_is_never_proxied() {
    let token = "admin-token-for-the-prefix-test";
    for admin in [false, true] {
        let s = setup_with(|o| {
            if admin {
                o.admin = Some(tower_account_pool::admin::AdminConfig::new(token).unwrap());
            }
        })
        .await;
        let addr = s.gateway.addr();
        for path in [
            "/admin",
            "/admin/",
            "/admin/nothing/here",
            "/admin/?x=1",
            "//admin",
            "/%61dmin/x",
            "/%2Fadmin",
            "/ADMIN/",
        ] {
            let answer = raw(
                addr,
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await;
            let status = status_of(&answer);
            assert!(
                [401, 404].contains(&status) || (admin && status == 200),
                "admin {admin}, {path}: {answer}"
            );
        }
        untouched(&s);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_idle_headers_and_idle_connections_are_closed() {
    let s = setup_with(|o| o.header_read_timeout = Duration::from_millis(300)).await;
    let addr = s.gateway.addr();
    let closed_within = |mut stream: TcpStream, limit: Duration| async move {
        let mut buffer = [0u8; 256];
        let mut read = Vec::new();
        tokio::time::timeout(limit, async {
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read.extend_from_slice(&buffer[..n]),
                }
            }
        })
        .await
        .is_ok()
    };
    // Nothing at all.
    let silent = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(silent, Duration::from_secs(3)).await,
        "a silent connection"
    );
    // A header one byte at a time, 100 ms apart: never finishes within the timeout.
    let mut dripping = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    for byte in b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n".iter() {
        if dripping.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    assert!(
        closed_within(dripping, Duration::from_secs(3)).await,
        "a dripping header"
    );
    // Idle after a complete request on a kept-alive connection.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(idle, Duration::from_secs(3)).await,
        "an idle keep-alive"
    );
    assert_eq!(s.upstream_calls.load(Ordering::SeqCst), 1);
    still_serving(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_capped_and_the_cap_frees_up() {
    let s = setup_with(|o| {
        o.max_connections = 3;
        o.header_read_timeout = Duration::from_millis(800);
    })
    .await;
    let addr = s.gateway.addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A fourth client waits (in the listen backlog) while three connections are open…
    let waiting = tokio::spawn(async move { post_json(addr, GOOD).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "served beyond the cap");
    assert_eq!(s.upstream_calls.load(Ordering::SeqCst), 0);
    // …and is served once the idle ones time out.
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served after the idle connections closed")
        .unwrap();
    assert_eq!(status, 200);
    drop(held);
}

/// The gateway's guards as units: the upstream join, client keys, the strict JSON check.
mod guard {
    use super::proxy::guard::*;
    use http::HeaderMap;

    #[test]
    fn join_keeps_scheme_host_and_port_for_hostile_targets() {
        let base = UpstreamBase::parse("http://127.0.0.1:8123").unwrap();
        let ok = base.join("/v1/messages?beta=true").unwrap();
        assert_eq!(
            ok.to_string(),
            "http://127.0.0.1:8123/v1/messages?beta=true"
        );
        for target in [
            "*",
            "",
            "http://evil.example/x",
            "evil.example:80",
            ":80/x",
            "@evil.example/x",
        ] {
            assert_eq!(
                base.join(target),
                Err(TargetError::NotOriginForm),
                "{target}"
            );
        }
        for target in [
            "//evil.example/x",
            "/@evil.example:80/",
            "/..%2f..%2f",
            "/:99/x",
            "/x?http://evil.example:80/",
        ] {
            let uri = base.join(target).unwrap();
            assert_eq!(uri.host(), Some("127.0.0.1"), "{target}");
            assert_eq!(uri.port_u16(), Some(8123), "{target}");
            assert_eq!(uri.scheme_str(), Some("http"), "{target}");
        }
        assert_eq!(base.join("/a b"), Err(TargetError::Unparsable));

        let based = UpstreamBase::parse("https://api.example:8443/base/").unwrap();
        assert_eq!(
            based.join("/v1").unwrap().to_string(),
            "https://api.example:8443/base/v1"
        );
    }

    #[test]
    fn the_upstream_host_header_names_the_port_unless_it_is_the_default() {
        for (url, host) in [
            ("http://127.0.0.1:8123", "127.0.0.1:8123"),
            ("https://api.example:8443/base/", "api.example:8443"),
            ("https://api.example:443", "api.example"),
            ("https://api.example", "api.example"),
            ("http://api.example:80/v1", "api.example"),
            ("http://api.example:443", "api.example:443"),
            ("http://[::1]:8080", "[::1]:8080"),
        ] {
            assert_eq!(UpstreamBase::parse(url).unwrap().host(), host, "{url}");
        }
    }

    #[test]
    fn upstreams_that_cannot_be_a_base_are_refused() {
        for (url, expected) in [
            ("ftp://x", "must start with http:// or https://"),
            ("http://user:pw@x/", "must not hold a user name or password"),
            ("http://x/?a=1", "must not hold a query or fragment"),
            ("nonsense", "must start with http:// or https://"),
        ] {
            let error = UpstreamBase::parse(url).unwrap_err();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }

    #[test]
    fn client_keys_parse_and_compare() {
        let keys = ClientKeys::parse(" key-one , ,key-two").unwrap();
        assert_eq!(keys.len(), 2);
        let headers = |name: &str, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
            headers
        };
        assert!(keys.check(&headers("x-api-key", "key-two")).is_ok());
        assert!(keys
            .check(&headers("authorization", "bearer key-one"))
            .is_ok());
        assert!(keys.check(&headers("x-api-key", "key-tw")).is_err());
        assert!(keys.check(&headers("authorization", "key-one")).is_err());
        assert_eq!(format!("{keys:?}"), "ClientKeys(2 keys, redacted)");
        assert!(ClientKeys::parse(" , ")
            .unwrap_err()
            .contains("holds no key"));
        let error = ClientKeys::parse("good,bad key").unwrap_err();
        assert!(error.contains("key 2"), "{error}");
        assert!(!error.contains("bad key"), "{error}");
    }

    #[test]
    fn strict_json_names_the_offset_of_bad_utf8() {
        assert_eq!(
            check_json(b"{\"a\":\"x\xff\"}"),
            Err("the request body is not valid UTF-8 at byte offset 7".into())
        );
        assert!(check_json(br#"{"a":"\u00e9"}"#).is_ok());
        assert!(check_json(b"{\"a\":")
            .unwrap_err()
            .contains("not valid JSON"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(10_000))]

        /// Whatever the request target, the URL keeps the upstream's scheme, host and port,
        /// and nothing panics.
        #[test]
        fn join_never_changes_the_destination(target in ".{0,40}", raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let base = UpstreamBase::parse("http://127.0.0.1:8123/base").unwrap();
            for target in [target.clone(), String::from_utf8_lossy(&raw).into_owned(), format!("/{target}")] {
                if let Ok(uri) = base.join(&target) {
                    proptest::prop_assert_eq!(uri.scheme_str(), Some("http"));
                    proptest::prop_assert_eq!(uri.host(), Some("127.0.0.1"));
                    proptest::prop_assert_eq!(uri.port_u16(), Some(8123));
                    proptest::prop_assert!(uri.path().starts_with("/base/"));
                }
            }
        }

        /// Arbitrary bytes: a clear error or Ok, never a panic; Ok only for valid UTF-8 JSON.
        #[test]
        fn the_json_check_accepts_only_valid_utf8_json(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            match check_json(&bytes) {
                Ok(()) => {
                    proptest::prop_assert!(std::str::from_utf8(&bytes).is_ok());
                    proptest::prop_assert!(serde_json::from_slice::<serde_json::Value>(&bytes).is_ok());
                }
                Err(message) => proptest::prop_assert!(message.starts_with("the request body is not valid")),
            }
        }

        /// Near-JSON from JSON's own alphabet (so that valid and invalid bodies are both
        /// common, unlike arbitrary bytes): the quick scan gives exactly serde_json's verdict
        /// and message.
        #[test]
        fn the_json_check_agrees_with_serde_json_on_near_json(text in r#"[\[\]{}:, "0-9a-z\\.eE+\-]{0,48}"#) {
            proptest::prop_assert_eq!(check_json(text.as_bytes()), super::reference_check(text.as_bytes()));
        }

        /// Valid documents with one byte replaced, inserted or removed: the same agreement.
        #[test]
        fn the_json_check_agrees_with_serde_json_on_mutated_documents(
            which in 0usize..4,
            at in 0usize..200,
            byte in proptest::sample::select(b"{}[]:,\"\\0123456789.eE+-tfnul x\t\n".to_vec()),
            edit in 0u8..3,
        ) {
            let documents = [
                r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"hi"}]}"#,
                r#"{"a":[1,-2.5e3,true,false,null,{"b":"c\"d\u00e9"}],"e":{}}"#,
                r#"[0,1.0,-0,1e-7,"\\",[],[[]],{"k":[{"x":null}]}]"#,
                r#"{"stream":true,"system":[{"type":"text","text":"a\nb"}],"tools":[]}"#,
            ];
            let mut body = documents[which].as_bytes().to_vec();
            let at = at % (body.len() + 1);
            match edit {
                0 if at < body.len() => body[at] = byte,
                1 => body.insert(at, byte),
                _ if at < body.len() => { body.remove(at); }
                _ => body.push(byte),
            }
            proptest::prop_assert_eq!(check_json(&body), super::reference_check(&body));
        }

        /// A JSON string with one byte replaced: invalid UTF-8 is named with its offset.
        #[test]
        fn bad_utf8_in_strings_is_found(text in "[a-z]{0,20}", at in 0usize..20, byte in 0x80u8..=0xff) {
            let mut body = format!(r#"{{"model":"{text}"}}"#).into_bytes();
            let at = 10 + at.min(text.len());
            body.insert(at, byte);
            if std::str::from_utf8(&body).is_err() {
                let message = check_json(&body).unwrap_err();
                proptest::prop_assert!(message.contains("not valid UTF-8 at byte offset"), "{}", message);
            }
        }
    }
}

/// The JSON check as it was before its quick scan: UTF-8, then serde_json.
fn reference_check(body: &[u8]) -> Result<(), String> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(format!(
            "the request body is not valid UTF-8 at byte offset {}",
            e.valid_up_to()
        ));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| format!("the request body is not valid JSON: {e}"))
}

/// The gateway example's binary, which `cargo test` builds beside the test binaries.
fn gateway_binary() -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap();
    let binary = deps
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join(format!("gateway{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is built by `cargo test --all-features`",
        binary.display()
    );
    binary
}

/// Waits for a gateway child to say it serves: that line (`Proxying http://ADDR …`) and ADDR.
async fn serving(child: &mut tokio::process::Child) -> (String, SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("Proxying") {
                return line;
            }
        }
        panic!("the gateway ended before serving");
    })
    .await
    .expect("the gateway starts");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (line, addr)
}

#[tokio::test]
async fn the_real_gateway_needs_client_keys_or_allow_anonymous() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool.json");
    std::fs::write(
        &pool,
        r#"{"accounts":[{"uuid":"a","apiKey":"sk-cli-test-key-a"}]}"#,
    )
    .unwrap();
    let run = |env: Option<&str>, extra: &[&str]| {
        let mut command = tokio::process::Command::new(gateway_binary());
        command
            .args([
                "--pool",
                pool.to_str().unwrap(),
                "--upstream",
                "http://127.0.0.1:9",
            ])
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("GATEWAY_API_KEY")
            .env_remove("GATEWAY_ADMIN_TOKEN")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(keys) = env {
            command.env("GATEWAY_API_KEY", keys);
        }
        command.spawn().unwrap()
    };
    let ended = |child: tokio::process::Child| async move {
        tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .expect("the gateway refuses to start and ends")
            .unwrap()
    };
    // Without GATEWAY_API_KEY: refuses to start, says why and what to do.
    let output = ended(run(None, &[])).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("GATEWAY_API_KEY is not set"), "{stderr}");
    assert!(stderr.contains("--allow-anonymous"), "{stderr}");
    // A variable that holds no key is refused too.
    let output = ended(run(Some(" , "), &[])).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("GATEWAY_API_KEY holds no key"), "{stderr}");

    // With --allow-anonymous: serves, with a warning.
    let mut child = run(None, &["--allow-anonymous"]);
    serving(&mut child).await;
    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning: GATEWAY_API_KEY is not set and --allow-anonymous was given"),
        "{stderr}"
    );
    // With keys: serves, and the keys are never printed.
    let mut child = run(Some("cli-client-key-1,cli-client-key-2"), &[]);
    let (line, addr) = serving(&mut child).await;
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/messages"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();
    let all = format!(
        "{line}{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!all.contains("cli-client-key"), "{all}");
}

/// The real binary in `anthropic` mode (the default for a Kiro pool): a token file, the Kiro
/// mock as upstream and refresh base, a model added with `--models`.
#[cfg(feature = "test-util")]
#[tokio::test]
async fn the_real_gateway_serves_the_anthropic_api_for_a_kiro_pool() {
    let mock = tower_account_pool::testing::KiroMock::start().await;
    mock.accept_access_token("kiro-cli", "at-kiro-cli");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kiro-cli.json"),
        r#"{"accessToken":"at-kiro-cli","refreshToken":"rt-kiro-cli","authMethod":"social","profileArn":"arn:aws:codewhisperer:us-east-1:1:profile/CLI","expiresAt":"2099-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let pool = dir.path().join("pool.json");
    std::fs::write(
        &pool,
        format!(
            r#"{{"accounts":[{{"uuid":"kiro-cli","KIRO_OAUTH_CREDS_FILE_PATH":"{}"}}]}}"#,
            dir.path().join("kiro-cli.json").display()
        ),
    )
    .unwrap();
    let models = dir.path().join("models.json");
    let run = |models_json: &str| {
        std::fs::write(&models, models_json).unwrap();
        tokio::process::Command::new(gateway_binary())
            .args(["--pool", pool.to_str().unwrap(), "--upstream", &mock.url()])
            .args(["--kiro-auth-base", &mock.url(), "--listen", "127.0.0.1:0"])
            .args(["--models", models.to_str().unwrap()])
            .env("GATEWAY_API_KEY", "cli-anthropic-key")
            .env_remove("GATEWAY_ADMIN_TOKEN")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    // A models file the gateway cannot read is refused at start, naming the place.
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        run(r#"[{"id":"claude-opus-5-5"}]"#).wait_with_output(),
    )
    .await
    .expect("ends")
    .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("model at index 0 needs a non-empty string `kiroId`"),
        "{stderr}"
    );

    let mut child =
        run(r#"[{"id":"claude-opus-5-5","kiroId":"claude-opus-4.6","aliases":["opus"]}]"#);
    let (line, addr) = serving(&mut child).await;
    assert!(line.contains("(anthropic API)"), "{line}");
    let client = reqwest::Client::new();
    let models: serde_json::Value = serde_json::from_slice(
        &client
            .get(format!("http://{addr}/v1/models"))
            .header("x-api-key", "cli-anthropic-key")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&"claude-opus-5-5"), "{ids:?}");
    let response = client
        .post(format!("http://{addr}/v1/messages?beta=true"))
        .header("authorization", "Bearer cli-anthropic-key")
        .header("content-type", "application/json")
        .body(r#"{"model":"opus","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let message: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(
        message["content"][0]["text"], "Hello from Kiro",
        "{message}"
    );
    let chat = mock.requests_to("/generateAssistantResponse");
    assert_eq!(chat.len(), 1);
    let body = chat[0].json.clone().unwrap();
    assert_eq!(
        body["conversationState"]["currentMessage"]["userInputMessage"]["modelId"],
        "claude-opus-4.6"
    );
    assert_eq!(
        body["profileArn"],
        "arn:aws:codewhisperer:us-east-1:1:profile/CLI"
    );
    // The usage probe at start went to the same base.
    assert!(!mock.requests_to("/getUsageLimits").is_empty());
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_too() {
    let s = setup_with(|o| o.header_read_timeout = Duration::from_millis(300)).await;
    let addr = s.gateway.addr();
    for requests in [0, 1] {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut send, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        // The connection task answers the server's pings: only idleness can end it.
        let connection = tokio::spawn(connection);
        for _ in 0..requests {
            let request = http::Request::post(format!("http://{addr}/v1/messages"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    GOOD.as_bytes(),
                )))
                .unwrap();
            let response = send.send_request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
        }
        tokio::time::timeout(Duration::from_secs(5), connection)
            .await
            .unwrap_or_else(|_| {
                panic!("an idle HTTP/2 connection after {requests} requests is closed")
            })
            .unwrap()
            .ok();
    }
    assert_eq!(s.upstream_calls.load(Ordering::SeqCst), 1);
    still_serving(addr).await;
}
