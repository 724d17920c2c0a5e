//! No secret in `Debug` output or tracing logs, whatever path a request takes.

use crate::layer_support;
use crate::support;

use bytes::Bytes;
use http_body_util::Full;
use layer_support::{body_text, json_request, Reply, Upstream};
use support::CapturedLogs;
use tower::{Layer, ServiceExt};
use tower_account_pool::credential::{ApiKey, BearerToken};
use tower_account_pool::layer::{AccountPoolLayer, SelectedAccount};
use tower_account_pool::{Account, Pool, Strategy};

const SECRETS: [&str; 3] = [
    "sk-ant-SECRETalpha-0000",
    "sk-ant-SECRETbravo-1111",
    "key-SECRETcharlie-2222",
];

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        // Not the secret, nor any long part of it (a masked last-4 is fine).
        assert!(!text.contains(secret), "{what} leaks a secret: {text}");
        assert!(
            !text.contains(&secret[..12]),
            "{what} leaks a secret's start: {text}"
        );
        assert!(!text.contains("SECRET"), "{what} leaks a secret: {text}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn secrets_stay_out_of_debug_output_and_logs() {
    let captured = CapturedLogs::default();
    let _guard = captured.start(tracing::Level::TRACE);

    let pool = Pool::builder()
        .account(Account::new("alpha", BearerToken::new(SECRETS[0])))
        .account(Account::new("bravo", BearerToken::new(SECRETS[1])))
        .account(Account::new(
            "charlie",
            ApiKey::new("x-api-key", SECRETS[2]).unwrap(),
        ))
        .strategy(Strategy::FillFirst)
        .build()
        .unwrap();
    let upstream = Upstream::new();
    // alpha: 401 and a static token cannot refresh; bravo: 503; charlie serves.
    upstream.script(SECRETS[0], [Reply::status(401)]);
    upstream.script(SECRETS[1], [Reply::status(503)]);
    let layer = AccountPoolLayer::new(pool.clone());
    let service = layer.clone().layer(upstream.service::<Full<Bytes>>());
    assert_no_secret("the layer", &format!("{layer:?}"));
    assert_no_secret("the service", &format!("{service:?}"));

    let response = service.clone().oneshot(json_request("m")).await.unwrap();
    assert_eq!(response.status(), 200);
    let selected = response
        .extensions()
        .get::<SelectedAccount>()
        .unwrap()
        .clone();
    assert_eq!(selected.id().as_str(), "charlie");
    assert_no_secret("the selected account", &format!("{selected:?}"));
    assert_no_secret("the response", &format!("{response:?}"));
    body_text(response).await;

    // Exhaustion: alpha's credential is invalid, the others are disabled.
    pool.disable("bravo").unwrap();
    pool.disable("charlie").unwrap();
    let response = service.oneshot(json_request("m")).await.unwrap();
    assert_no_secret("the exhaustion answer", &format!("{response:?}"));
    let text = body_text(response).await;
    assert!(text.contains("no account available"), "{text}");
    assert_no_secret("the exhaustion body", &text);

    // The upstream did receive the secrets, as sensitive headers.
    let calls = upstream.calls();
    assert_eq!(calls[0].token, SECRETS[0]);
    assert!(calls[0].authorization_sensitive);

    assert_no_secret("the pool snapshot", &format!("{:?}", pool.snapshot()));
    let logs = captured.text();
    assert!(
        logs.contains("retrying on another account"),
        "logs were captured: {logs}"
    );
    assert!(logs.contains("alpha") && logs.contains("bravo"), "{logs}");
    assert_no_secret("the logs", &logs);
}
