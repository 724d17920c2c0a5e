//! The layer's own answers: a typed `Rejection` in the extensions of every one, and the
//! `on_rejection` hook that replaces the default body.

use crate::layer_support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use layer_support::{body_text, json_request, Reply, Upstream};
use tower::{Layer, ServiceExt};
use tower_account_pool::credential::BearerToken;
use tower_account_pool::layer::{AccountPoolLayer, Rejection, SelectedAccount};
use tower_account_pool::{Account, Exhausted, Pool};

const MODEL: &str = "claude-sonnet-4-5";

fn pool(ids: &[&str]) -> Pool {
    Pool::builder()
        .accounts(
            ids.iter()
                .map(|id| Account::new(*id, BearerToken::new(format!("tok-{id}")))),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn exhaustion_carries_its_rejection_and_the_bare_exhausted() {
    let pool = Pool::builder()
        .account(Account::new("a", BearerToken::new("tok-a")).enabled(false))
        .build()
        .unwrap();
    let response = AccountPoolLayer::new(pool)
        .layer(Upstream::new().service::<Full<Bytes>>())
        .oneshot(json_request(MODEL))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let rejection = *response.extensions().get::<Rejection>().unwrap();
    let exhausted = *response.extensions().get::<Exhausted>().unwrap();
    assert_eq!(rejection, Rejection::Exhausted(exhausted));
    assert_eq!(rejection.status(), StatusCode::SERVICE_UNAVAILABLE);
    let expected = rejection.to_response();
    assert_eq!(body_text(response).await.as_bytes(), &expected.body()[..]);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_answer_carries_its_rejection_and_account() {
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::status(200).slow(Duration::from_secs(60))]);
    let response = AccountPoolLayer::new(pool(&["a"]))
        .deadline(Duration::from_secs(5))
        .layer(upstream.service::<Full<Bytes>>())
        .oneshot(json_request(MODEL))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        response.extensions().get::<Rejection>(),
        Some(&Rejection::UpstreamTimeout)
    );
    let selected = response.extensions().get::<SelectedAccount>().unwrap();
    assert_eq!(selected.id().as_str(), "a");
}

#[tokio::test]
async fn on_rejection_makes_the_answer_and_the_layer_keeps_the_extensions() {
    let upstream = Upstream::new();
    // A static token answered 401 cannot be refreshed: the credential is rejected, and with
    // one attempt there is no retry.
    upstream.script("tok-a", [Reply::status(401)]);
    let layer = AccountPoolLayer::new(pool(&["a"]))
        .max_attempts(1)
        .on_rejection(|rejection: &Rejection| {
            http::Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .header("x-rejection", "1")
                .body(format!("rejected: {rejection}"))
                .unwrap()
        });
    let response = layer
        .layer(upstream.service::<Full<Bytes>>())
        .oneshot(json_request(MODEL))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["x-rejection"], "1");
    assert_eq!(
        response.extensions().get::<Rejection>(),
        Some(&Rejection::CredentialRejected)
    );
    assert!(response.extensions().get::<SelectedAccount>().is_some());
    assert_eq!(
        body_text(response).await,
        format!("rejected: {}", Rejection::CredentialRejected)
    );
}
