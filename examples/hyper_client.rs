//! Wrap a hyper-util client with the account pool, as a custom proxy would.
//!
//! Three accounts share one upstream. The upstream drops the connection of the first account
//! (a connection reset), answers the second with Anthropic's `529 overloaded_error`, and
//! streams a server-sent-events answer to the third. The layer fails over twice; the stream
//! then passes through chunk by chunk, unbuffered.
//!
//! Runs against in-process servers: `cargo run --example hyper_client`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::{Layer, ServiceExt};
use tower_account_pool::credential::ApiKey;
use tower_account_pool::layer::{AccountPoolLayer, ReplayBody, SelectedAccount};
use tower_account_pool::{Account, Pool, Strategy};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the example saw, for its integration test.
pub struct Summary {
    pub status: u16,
    pub account: String,
    pub attempt: u32,
    /// The chunks as the client received them.
    pub chunks: Vec<String>,
    pub retries: u64,
}

/// A body fed by a channel: the upstream writes SSE events as it produces them.
struct Events(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// A stream of SSE events, one every 20 ms.
fn events() -> UpstreamBody {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for event in ["message_start", "content_block_delta", "message_stop"] {
            let chunk = Bytes::from(format!("event: {event}\ndata: {{}}\n\n"));
            if tx.send(chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Events(rx).boxed()
}

/// The upstream: a plain hyper server.
async fn upstream() -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let key = request
                        .headers()
                        .get("x-api-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    if key == "key-reset-000000" {
                        // Drop the connection without an answer.
                        return Err::<Response<UpstreamBody>, std::io::Error>(
                            std::io::ErrorKind::ConnectionReset.into(),
                        );
                    }
                    if key == "key-busy-0000000" {
                        let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
                        let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
                        *response.status_mut() = StatusCode::from_u16(529).expect("valid status");
                        return Ok(response);
                    }
                    let mut response = Response::new(events());
                    response.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static("text/event-stream"),
                    );
                    Ok(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Starts the upstream, sends one streaming request through the pool, reports what happened.
pub async fn run() -> Result<Summary, BoxError> {
    let addr = upstream().await?;
    let pool = Pool::builder()
        .account(Account::new(
            "reset",
            ApiKey::new("x-api-key", "key-reset-000000")?,
        ))
        .account(Account::new(
            "busy",
            ApiKey::new("x-api-key", "key-busy-0000000")?,
        ))
        .account(Account::new(
            "good",
            ApiKey::new("x-api-key", "key-good-0000000")?,
        ))
        .strategy(Strategy::FillFirst)
        .build()?;

    // The hyper-util client takes the layer's replayable bodies.
    let client: Client<_, ReplayBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build_http();
    let proxy = AccountPoolLayer::new(pool.clone()).layer(client);

    let request = Request::post(format!("http://{addr}/v1/messages"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"claude-sonnet-4-5","stream":true,"messages":[]}"#,
        )))?;
    let response = proxy.oneshot(request).await?;
    let selected = response
        .extensions()
        .get::<SelectedAccount>()
        .cloned()
        .ok_or("no selected account")?;
    let status = response.status().as_u16();
    println!(
        "{status} from account {} on attempt {}",
        selected.id(),
        selected.attempt()
    );

    let mut body = response.into_body();
    let mut chunks = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let text = String::from_utf8_lossy(&data).into_owned();
            println!("  chunk: {}", text.lines().next().unwrap_or_default());
            chunks.push(text);
        }
    }
    for account in pool.snapshot().accounts {
        let last_error = account.last_error.map(|e| e.message).unwrap_or_default();
        println!("account {}: {} {last_error}", account.id, account.state);
    }
    let retries = pool.stats().retries;
    println!("retries: {retries}");
    Ok(Summary {
        status,
        account: selected.id().to_string(),
        attempt: selected.attempt(),
        chunks,
        retries,
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let summary = run().await?;
    assert_eq!((summary.account.as_str(), summary.attempt), ("good", 3));
    Ok(())
}
