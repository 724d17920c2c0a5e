//! The reqwest recipe from the README: a `reqwest::Client` as the layer's inner service.

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_account_pool::credential::BearerToken;
use tower_account_pool::layer::{AccountPoolLayer, ReplayBody, SelectedAccount};
use tower_account_pool::{Account, Pool, Strategy};

async fn upstream() -> SocketAddr {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|headers: HeaderMap, body: Bytes| async move {
            match headers["authorization"].to_str().unwrap() {
                "Bearer sk-first-account" => (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after-ms", "2500")],
                    r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#.to_owned(),
                )
                    .into_response(),
                _ => (StatusCode::OK, String::from_utf8(body.to_vec()).unwrap()).into_response(),
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn a_reqwest_client_behind_the_pool_fails_over() {
    let addr = upstream().await;
    let pool = Pool::builder()
        .account(Account::new("first", BearerToken::new("sk-first-account")))
        .account(Account::new(
            "second",
            BearerToken::new("sk-second-account"),
        ))
        .strategy(Strategy::FillFirst)
        .build()
        .unwrap();

    // The recipe: convert the layer's request into a reqwest request and back.
    let client = reqwest::Client::new();
    let inner = tower::service_fn(move |request: http::Request<ReplayBody<Full<Bytes>>>| {
        let client = client.clone();
        async move {
            let request = reqwest::Request::try_from(request.map(reqwest::Body::wrap))?;
            let response = client.execute(request).await?;
            Ok::<_, reqwest::Error>(http::Response::from(response))
        }
    });
    let service = AccountPoolLayer::new(pool.clone()).layer(inner);

    let body = r#"{"model":"gpt-4o","messages":[]}"#;
    let request = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let selected = response
        .extensions()
        .get::<SelectedAccount>()
        .unwrap()
        .clone();
    assert_eq!((selected.id().as_str(), selected.attempt()), ("second", 2));
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        echoed, body,
        "the replayed body reached the second account whole"
    );

    let snapshot = pool.snapshot();
    let first = snapshot.account("first").unwrap();
    let until = first.model_cooldowns[0].until.unwrap();
    let left = until.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        left.as_millis() > 2000 && left.as_millis() <= 2500,
        "retry-after-ms honoured: {left:?}"
    );
}
