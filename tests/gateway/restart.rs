//! Restart: the gateway (`examples/gateway/proxy.rs` with the SQLite store) runs in a child
//! process under load and is killed with SIGKILL; the store must open cleanly and hold every
//! account's state older than the flush interval; a new gateway on the same file starts with
//! that state (a cooling account stays out of rotation).
//!
//! The child is this test binary again, running the ignored `gateway_child_process` test.
#![cfg(all(feature = "kiro", feature = "admin", feature = "sqlite"))]

use crate::proxy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use tokio::io::{AsyncBufReadExt, BufReader};
use tower_account_pool::admin::AdminConfig;
use tower_account_pool::credential::BearerToken;
use tower_account_pool::store::{SqliteStore, Store, StoreHandle, WriterConfig};
use tower_account_pool::{Account, AccountPoolLayer, Pool};

const ACCOUNTS: usize = 8;
/// Without a model, so rate limits are account-wide: model-scoped cooldowns are not part of
/// `PersistedState` and do not survive a restart.
const REQUEST: &str = r#"{"messages":[{"role":"user","content":"hi"}]}"#;
const COOLING: usize = 3;
const NO_QUOTA: usize = 5;
const ADMIN_TOKEN: &str = "restart-test-admin-token-0123456789";
/// The writer's counter interval (the default), and the slack allowed on a loaded machine.
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
const SLACK: Duration = Duration::from_millis(500);

fn token(i: usize) -> String {
    format!("sk-restart-account-{i}")
}

/// The child: a gateway over `GATEWAY_RESTART_UPSTREAM` with the SQLite store at
/// `GATEWAY_RESTART_DB`; prints `LISTENING <addr>` and serves until killed.
#[tokio::test]
#[ignore = "the child process of the restart test"]
async fn gateway_child_process() {
    let (Ok(db), Ok(upstream)) = (
        std::env::var("GATEWAY_RESTART_DB"),
        std::env::var("GATEWAY_RESTART_UPSTREAM"),
    ) else {
        panic!("run by gateway_survives_sigkill_with_its_state");
    };
    let pool = Pool::builder()
        .accounts(
            (0..ACCOUNTS).map(|i| Account::new(format!("acct-{i}"), BearerToken::new(token(i)))),
        )
        .build()
        .unwrap();
    let store = SqliteStore::open(&db).expect("the store opens cleanly");
    let _store = StoreHandle::start_with(
        &pool,
        store,
        WriterConfig::default().interval(FLUSH_INTERVAL),
    )
    .await
    .unwrap();
    let mut options = proxy::ProxyOptions::new(upstream);
    options.admin = Some(AdminConfig::new(ADMIN_TOKEN).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway =
        proxy::Gateway::start(listener, pool.clone(), AccountPoolLayer::new(pool), options)
            .unwrap();
    println!("LISTENING {}", gateway.addr());
    std::future::pending::<()>().await;
}

type Arrivals = Arc<Mutex<HashMap<usize, Vec<Instant>>>>;

async fn upstream(arrivals: Arrivals) -> SocketAddr {
    let by_token: HashMap<String, usize> = (0..ACCOUNTS)
        .map(|i| (format!("Bearer {}", token(i)), i))
        .collect();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let account = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| by_token.get(v).copied());
        let arrivals = arrivals.clone();
        async move {
            let Some(account) = account else {
                return (StatusCode::UNAUTHORIZED, "unknown token").into_response();
            };
            arrivals.lock().unwrap().entry(account).or_default().push(Instant::now());
            tokio::time::sleep(Duration::from_millis(2)).await;
            match account {
                COOLING => (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "3600"), ("content-type", "application/json")],
                    r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
                )
                    .into_response(),
                NO_QUOTA => (
                    StatusCode::PAYMENT_REQUIRED,
                    [("content-type", "application/json")],
                    r#"{"type":"error","error":{"type":"billing_error","message":"monthly quota exceeded"}}"#,
                )
                    .into_response(),
                _ => (StatusCode::OK, r#"{"ok":true}"#).into_response(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn spawn_child(db: &Path, upstream: SocketAddr) -> (tokio::process::Child, SocketAddr) {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "restart::gateway_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GATEWAY_RESTART_DB", db)
        .env("GATEWAY_RESTART_UPSTREAM", format!("http://{upstream}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // libtest prints `test gateway_child_process ... ` on the same line.
            if let Some(at) = line.find("LISTENING ") {
                return line[at + "LISTENING ".len()..]
                    .trim()
                    .parse::<SocketAddr>()
                    .unwrap();
            }
        }
        panic!("the child ended without listening");
    })
    .await
    .expect("the child listens within 30 s");
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// Clients sending requests until aborted.
fn load(addr: SocketAddr, clients: usize) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    let client = reqwest::Client::new();
    for _ in 0..clients {
        let client = client.clone();
        set.spawn(async move {
            loop {
                let _ = client
                    .post(format!("http://{addr}/v1/messages"))
                    .header("content-type", "application/json")
                    .body(REQUEST)
                    .send()
                    .await
                    .map(|r| r.bytes());
            }
        });
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_survives_sigkill_with_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gateway.db");
    let arrivals: Arrivals = Arc::default();
    let upstream = upstream(arrivals.clone()).await;

    let (mut child, addr) = spawn_child(&db, upstream).await;
    let mut clients = load(addr, 12);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let killed_at = Instant::now();
    child.start_kill().unwrap(); // SIGKILL, mid-load
    child.wait().await.unwrap();
    clients.abort_all();
    while clients.join_next().await.is_some() {}

    // The store opens cleanly and holds what was older than the flush interval.
    let stored = SqliteStore::open(&db)
        .expect("the store opens cleanly after SIGKILL")
        .load()
        .await
        .unwrap();
    let stored: HashMap<String, _> = stored
        .into_iter()
        .map(|a| (a.id.to_string(), a.state))
        .collect();
    let arrivals_then = arrivals.lock().unwrap().clone();
    let horizon = killed_at - FLUSH_INTERVAL - SLACK;
    let mut total = 0;
    for i in 0..ACCOUNTS {
        let state = stored
            .get(&format!("acct-{i}"))
            .unwrap_or_else(|| panic!("acct-{i} is in the store"));
        let times = arrivals_then.get(&i).cloned().unwrap_or_default();
        let before_horizon = times.iter().filter(|t| **t <= horizon).count() as u64;
        println!(
            "acct-{i}: {} arrivals, {before_horizon} before the horizon, {} stored",
            times.len(),
            state.counters.requests
        );
        assert!(
            state.counters.requests >= before_horizon,
            "acct-{i}: stored {} requests, but {before_horizon} arrived more than {:?} before the kill",
            state.counters.requests,
            FLUSH_INTERVAL + SLACK
        );
        assert!(state.counters.requests <= times.len() as u64);
        total += times.len();
    }
    assert!(total > 100, "the load reached the upstream: {total}");
    assert_eq!(stored["acct-3"].state.to_string(), "rate_limited");
    assert_eq!(stored["acct-5"].state.to_string(), "quota_exhausted");

    // A new gateway on the same file starts with that state.
    let (mut child, addr) = spawn_child(&db, upstream).await;
    let restarted_at = Instant::now();
    let account = reqwest::Client::new()
        .get(format!("http://{addr}/admin/accounts/acct-{COOLING}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(account.status(), 200);
    let account: serde_json::Value =
        serde_json::from_slice(&account.bytes().await.unwrap()).unwrap();
    assert_eq!(account["state"], "rateLimited", "{account}");
    for _ in 0..30 {
        let response = reqwest::Client::new()
            .post(format!("http://{addr}/v1/messages"))
            .header("content-type", "application/json")
            .body(REQUEST)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let after = arrivals.lock().unwrap().clone();
    for i in [COOLING, NO_QUOTA] {
        let late = after
            .get(&i)
            .map_or(0, |ts| ts.iter().filter(|t| **t >= restarted_at).count());
        assert_eq!(late, 0, "acct-{i} was sent requests after the restart");
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}
