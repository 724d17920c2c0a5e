//! Wrap an axum `Router` with the account pool.
//!
//! The router's handler reads the account the layer selected (`Extension<SelectedAccount>`)
//! and calls an LLM-like upstream with the credential the layer injected. The upstream rate
//! limits the first account; the layer classifies the 429, cools that account down and retries
//! on the next one — the client only sees the success.
//!
//! Runs against in-process servers: `cargo run --example axum_router`.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tower::Layer;
use tower_account_pool::credential::BearerToken;
use tower_account_pool::layer::{AccountPoolLayer, SelectedAccount};
use tower_account_pool::{Account, Pool, Strategy};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the example saw, for its integration test.
pub struct Summary {
    /// (status, account, attempt) of each client request.
    pub requests: Vec<(u16, String, String)>,
    /// Retries the pool recorded.
    pub retries: u64,
}

async fn serve(router: Router) -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// The upstream: account `alpha` is rate limited, the others are served.
fn upstream() -> Router {
    Router::new().route(
        "/v1/messages",
        post(|headers: HeaderMap| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if auth == "Bearer token-alpha" {
                let error = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#;
                return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "30")], error).into_response();
            }
            Json(serde_json::json!({"type": "message", "content": [{"type": "text", "text": "Hello!"}]}))
                .into_response()
        }),
    )
}

#[derive(Clone)]
struct AppState {
    client: reqwest::Client,
    upstream: String,
}

/// The app's handler: forwards the request upstream with the injected credential.
async fn messages(
    State(state): State<AppState>,
    Extension(account): Extension<SelectedAccount>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sent = state
        .client
        .post(&state.upstream)
        .header("authorization", headers["authorization"].clone())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let Ok(upstream) = sent else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let retry_after = upstream.headers().get("retry-after").cloned();
    let bytes = upstream.bytes().await.unwrap_or_default();
    let mut response = (
        status,
        [
            ("x-account", account.id().to_string()),
            ("x-attempt", account.attempt().to_string()),
        ],
        bytes,
    )
        .into_response();
    if let Some(value) = retry_after {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

/// Starts the upstream and the app, sends three requests, and reports what happened.
pub async fn run() -> Result<Summary, BoxError> {
    let upstream = serve(upstream()).await?;

    let pool = Pool::builder()
        .account(Account::new("alpha", BearerToken::new("token-alpha")))
        .account(Account::new("beta", BearerToken::new("token-beta")))
        .strategy(Strategy::FillFirst)
        .build()?;

    let handlers = Router::new()
        .route("/v1/messages", post(messages))
        .with_state(AppState {
            client: reqwest::Client::new(),
            upstream: format!("http://{upstream}/v1/messages"),
        });
    // The whole router behind the pool: every request gets an account.
    let app = Router::new().fallback_service(AccountPoolLayer::new(pool.clone()).layer(handlers));
    let app_addr = serve(app).await?;

    let client = reqwest::Client::new();
    let mut requests = Vec::new();
    for i in 1..=3 {
        let response = client
            .post(format!("http://{app_addr}/v1/messages"))
            .header("content-type", "application/json")
            .body(r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}"#)
            .send()
            .await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let (account, attempt) = (header("x-account"), header("x-attempt"));
        let status = response.status().as_u16();
        println!(
            "request {i}: {status} from account {account} (attempt {attempt}): {}",
            response.text().await?
        );
        requests.push((status, account, attempt));
    }

    for account in pool.snapshot().accounts {
        println!(
            "account {:>5}: {:<8} {}",
            account.id,
            account.state.as_str(),
            account
                .model_cooldowns
                .first()
                .map(|c| format!("cooling down on {}", c.model))
                .unwrap_or_default()
        );
    }
    let retries = pool.stats().retries;
    println!("retries: {retries}");
    Ok(Summary { requests, retries })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let summary = run().await?;
    assert_eq!(
        summary.requests[0],
        (200, "beta".into(), "2".into()),
        "failover on the first request"
    );
    Ok(())
}
