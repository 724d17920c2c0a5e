//! No response of the admin API ever holds a secret: upstream tokens, API keys, refresh
//! secrets, the admin token, credentials inside URLs.
#![cfg(all(feature = "admin", feature = "test-util"))]

use crate::admin_support;

use std::time::Duration;

use axum::http::Method;
use futures_util::StreamExt;
use tower_account_pool::admin::{self, AdminConfig};
use tower_account_pool::credential::{ApiKey, BearerToken};
use tower_account_pool::{Account, Outcome, Pool, SelectRequest};

use admin_support::*;

const URL_PASSWORD: &str = "url-password-SECRET-5555";

#[tokio::test]
async fn no_response_contains_a_secret() {
    let oauth = shared_refreshable();
    let pool = Pool::builder()
        .account(
            Account::new("acct-a", BearerToken::new(BEARER_A))
                .base_url(format!("https://svc:{URL_PASSWORD}@upstream.test/v1")),
        )
        .account(Account::new("acct-b", BearerToken::new(BEARER_B)))
        .account(Account::new(
            "acct-c",
            ApiKey::new("x-api-key", API_KEY_C).unwrap(),
        ))
        .account(Account::with_shared_credential("oauth", oauth.clone()))
        .build()
        .unwrap();
    let config = AdminConfig::new(ADMIN_TOKEN)
        .unwrap()
        .prober(|target| async move {
            match target.id.as_str() {
                "acct-b" => Outcome::Suspended,
                _ => Outcome::Success,
            }
        });
    let app = admin::router(pool.clone(), config);

    // Some history, so every field has something in it.
    let lease = pool.select(&SelectRequest::for_model("m1")).unwrap();
    lease.report_with_message(Outcome::rate_limited(None), "429 from upstream");
    let lease = pool.select(&SelectRequest::default()).unwrap();
    lease.report(Outcome::Transient);
    pool.report_probe("oauth", Outcome::AuthExpired).unwrap();

    // The event stream, open while everything below happens.
    let request = axum::http::Request::builder()
        .uri("/events")
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let events = tower::ServiceExt::oneshot(app.clone(), request)
        .await
        .unwrap();
    let mut transcript: Vec<String> = vec![format!("{:?}", events.headers())];
    let mut frames = events.into_body().into_data_stream();

    let calls: &[(Method, &str, Option<&str>)] = &[
        (Method::GET, "/", None),
        (Method::GET, "/health", None),
        (Method::GET, "/accounts", None),
        (Method::GET, "/accounts?shape=legacy", None),
        (Method::GET, "/accounts/acct-a", None),
        (Method::GET, "/accounts/oauth", None),
        (Method::GET, "/metrics", None),
        (
            Method::POST,
            "/accounts",
            Some(r#"{"id":"added","bearerToken":"sk-added-SECRET-6666-abcd"}"#),
        ),
        (
            Method::POST,
            "/accounts",
            Some(r#"{"id":"acct-a","bearerToken":"sk-dup-SECRET-7777-abcd"}"#),
        ),
        (
            Method::POST,
            "/accounts",
            Some(r#"{"id":"bad","bearerToken":"sk-bad-SECRET-8888\u0000"}"#),
        ),
        (
            Method::POST,
            "/accounts",
            Some(
                r#"{"id":"bad","apiKey":"key-SECRET-9999","headerName":"x-key","weight":"key-SECRET-9999"}"#,
            ),
        ),
        (
            Method::PATCH,
            "/accounts/acct-a",
            Some(r#"{"weight":2,"enabled":false}"#),
        ),
        (
            Method::PATCH,
            "/accounts/acct-a",
            Some(r#"{"enabled":true}"#),
        ),
        (Method::POST, "/accounts/acct-a/refresh", None),
        (Method::POST, "/accounts/oauth/refresh", None),
        (Method::POST, "/accounts/acct-b/probe", None),
        (Method::POST, "/accounts/acct-c/probe", None),
        (Method::POST, "/accounts/acct-b/reset", None),
        (Method::POST, "/accounts/reset", None),
        (Method::DELETE, "/accounts/added", None),
        (Method::GET, "/accounts", None),
        (Method::GET, "/metrics", None),
    ];
    for (method, path, body) in calls {
        // Once with the token, once with a wrong one that embeds a secret.
        for token in [Some(ADMIN_TOKEN), Some(BEARER_A), None] {
            let reply = send(&app, method.clone(), path, token, *body).await;
            transcript.push(format!(
                "{method} {path} -> {} {:?}\n{}",
                reply.status, reply.headers, reply.text
            ));
        }
    }
    reject_refreshes(&oauth);
    let reply = send(
        &app,
        Method::POST,
        "/accounts/oauth/refresh",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    transcript.push(reply.text);

    // Everything the event stream said meanwhile.
    while let Ok(Some(frame)) =
        tokio::time::timeout(Duration::from_millis(200), frames.next()).await
    {
        transcript.push(String::from_utf8(frame.unwrap().to_vec()).unwrap());
    }
    let all = transcript.join("\n");
    assert!(all.contains("event: state"), "the stream was read");
    assert!(
        all.contains("\"last4\":\"1111\""),
        "masked credentials are shown"
    );
    assert!(
        all.contains("https://***@upstream.test/v1"),
        "URL credentials redacted"
    );

    let mut secrets: Vec<&str> = SECRETS.to_vec();
    secrets.push(URL_PASSWORD);
    secrets.extend([
        "sk-added-SECRET-6666",
        "sk-dup-SECRET-7777",
        "sk-bad-SECRET-8888",
        "key-SECRET-9999",
    ]);
    for secret in secrets {
        assert!(
            !all.contains(secret),
            "a response holds the secret {secret}"
        );
    }
    assert!(!all.contains("SECRET"), "no part of any secret leaks");
}
