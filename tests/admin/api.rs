//! The admin API against an in-process router (`tower::ServiceExt::oneshot`).
#![cfg(all(feature = "admin", feature = "test-util"))]

use crate::admin_support;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::Router;
use serde_json::Value;
use tower_account_pool::admin::{self, AdminConfig, AdminConfigError, SelectionLatency};
use tower_account_pool::credential::{ApiKey, BearerToken};
use tower_account_pool::{
    health::HealthPolicy, health::RateLimitScope, Account, HealthState, Outcome, Pool,
    SelectRequest,
};

use admin_support::*;

fn pool() -> Pool {
    Pool::builder()
        .account(Account::new("acct-a", BearerToken::new(BEARER_A)))
        .account(Account::new("acct-b", BearerToken::new(BEARER_B)).priority(1))
        .account(Account::new(
            "acct-c",
            ApiKey::new("x-api-key", API_KEY_C).unwrap(),
        ))
        .build()
        .unwrap()
}

fn app(pool: &Pool) -> Router {
    admin::router(pool.clone(), AdminConfig::new(ADMIN_TOKEN).unwrap())
}

/// Every route behind the token, with a body that would be valid.
const PROTECTED: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/accounts", None),
    ("GET", "/accounts?shape=legacy", None),
    ("GET", "/accounts/acct-a", None),
    (
        "POST",
        "/accounts",
        Some(r#"{"id":"new-one","bearerToken":"sk-new-token-000000"}"#),
    ),
    ("PATCH", "/accounts/acct-a", Some(r#"{"weight":2}"#)),
    ("DELETE", "/accounts/acct-c", None),
    ("POST", "/accounts/reset", None),
    ("POST", "/accounts/acct-a/reset", None),
    ("POST", "/accounts/acct-a/refresh", None),
    ("POST", "/accounts/acct-a/probe", None),
    ("GET", "/metrics", None),
    ("GET", "/events", None),
];

#[tokio::test]
async fn every_protected_route_needs_the_token() {
    let pool = pool();
    let app = app(&pool);
    for &(method, path, body) in PROTECTED {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        for token in [None, Some("wrong-token-but-long-enough"), Some("")] {
            let reply = send(&app, method.clone(), path, token, body).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {token:?}"
            );
            assert_eq!(
                reply.headers["www-authenticate"],
                "Bearer realm=\"account-pool-admin\""
            );
            let (kind, message) = reply.error();
            assert_eq!(kind, "unauthorized");
            let expected = if token.is_none() {
                "missing admin token: send `Authorization: Bearer <token>`"
            } else {
                "invalid admin token"
            };
            assert_eq!(message, expected, "{method} {path}");
        }
        // The token under another scheme is refused too.
        let request = axum::http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header("authorization", format!("Basic {ADMIN_TOKEN}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let response = tower::ServiceExt::oneshot(app.clone(), request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // Nothing was changed by the refused calls.
    assert_eq!(pool.len(), 3);
    assert_eq!(
        pool.snapshot().account("acct-a").unwrap().settings.weight,
        1
    );
}

#[tokio::test]
async fn every_protected_route_works_with_the_token() {
    let pool = pool();
    let app = app(&pool);
    let expected = [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::CREATED,
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::OK,
        // A static bearer token cannot be refreshed; no prober is configured.
        StatusCode::CONFLICT,
        StatusCode::NOT_IMPLEMENTED,
        StatusCode::OK,
    ];
    for (&(method, path, body), status) in PROTECTED.iter().zip(expected) {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let reply = authed(&app, method.clone(), path, body).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.text);
    }
    // /events is a stream: checked in its own test.
    assert_eq!(pool.len(), 3, "one added, one removed");
    assert_eq!(
        pool.snapshot().account("acct-a").unwrap().settings.weight,
        2
    );
}

#[tokio::test]
async fn health_and_dashboard_are_open() {
    let pool = pool();
    let app = app(&pool);
    let reply = send(&app, Method::GET, "/health", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        serde_json::json!({"status": "ok", "routable": 3, "total": 3})
    );

    let reply = send(&app, Method::GET, "/no/such/route", None, None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reply.error(),
        (
            "not_found".to_owned(),
            "no such admin route (see the admin module docs for the list)".to_owned()
        )
    );

    let reply = send(&app, Method::PUT, "/health", None, None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.error().1, "this admin route does not take PUT");

    let page = send(&app, Method::GET, "/", None, None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"));
    assert!(page.text.contains("<title>Account pool</title>"));
    // The page is static: no account data, no external assets.
    assert!(!page.text.contains("acct-a"));
    assert!(!page.text.contains("http://") && !page.text.contains("https://"));
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
}

#[test]
fn a_config_needs_a_real_token() {
    assert_eq!(
        AdminConfig::new("").unwrap_err(),
        AdminConfigError::EmptyToken
    );
    let short = AdminConfig::new("short-token").unwrap_err();
    assert_eq!(
        short.to_string(),
        "the admin token is too short: use at least 16 characters (for example 32 random hex digits)"
    );
    let spaced = AdminConfig::new("a token with spaces in it").unwrap_err();
    assert_eq!(
        spaced.to_string(),
        "the admin token must be printable ASCII without spaces"
    );
    let missing = AdminConfig::from_env("TAP_ADMIN_TEST_UNSET_VARIABLE").unwrap_err();
    assert_eq!(
        missing.to_string(),
        "environment variable `TAP_ADMIN_TEST_UNSET_VARIABLE` is not set: it must hold the admin token"
    );
    let config = AdminConfig::new(ADMIN_TOKEN).unwrap();
    assert!(!format!("{config:?}").contains(ADMIN_TOKEN));
}

#[tokio::test]
async fn list_accounts_with_stats() {
    let pool = pool();
    pool.report_probe("acct-b", Outcome::Suspended).unwrap();
    pool.disable("acct-c").unwrap();
    let lease = pool.select(&SelectRequest::default()).unwrap();
    lease.report(Outcome::Transient);
    let app = app(&pool);

    let reply = authed(&app, Method::GET, "/accounts", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let v = reply.json();
    assert_eq!(
        v["stats"],
        serde_json::json!({
            "total": 3, "healthy": 1, "coolingDown": 0, "unhealthy": 1, "disabled": 1,
            "routable": 1, "totalUsage": 1, "totalErrors": 1
        })
    );
    let accounts = v["accounts"].as_array().unwrap();
    let ids: Vec<&str> = accounts.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["acct-a", "acct-c", "acct-b"], "priority order");
    let b = &accounts[2];
    assert_eq!(b["state"], "suspended");
    assert_eq!(
        b["credential"],
        serde_json::json!({"kind": "bearer", "last4": "2222"})
    );
    assert_eq!(accounts[1]["state"], "disabled");
    assert_eq!(accounts[0]["consecutiveFailures"], 1);

    let one = authed(&app, Method::GET, "/accounts/acct-b", None).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json(), *b);
}

#[tokio::test]
async fn legacy_shape_uses_the_older_names() {
    let pool = pool();
    pool.report_probe("acct-b", Outcome::Suspended).unwrap();
    pool.disable("acct-c").unwrap();
    let lease = pool.select(&SelectRequest::default()).unwrap();
    lease.report(Outcome::Success);
    let lease = pool.select(&SelectRequest::default()).unwrap();
    lease.report(Outcome::Transient);
    let app = app(&pool);

    let reply = authed(&app, Method::GET, "/accounts?shape=legacy", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let v = reply.json();
    let object = v.as_object().unwrap();
    assert_eq!(
        object.keys().collect::<Vec<_>>(),
        ["claude-kiro-oauth", "_accountPoolStats"]
    );
    assert_eq!(
        v["_accountPoolStats"],
        serde_json::json!({
            "healthy": 0, "checking": 1, "banned": 2, "total": 3,
            "totalUsageCount": 1, "totalErrorCount": 1
        })
    );
    let accounts = v["claude-kiro-oauth"].as_array().unwrap();
    let a = accounts.iter().find(|a| a["uuid"] == "acct-a").unwrap();
    assert_eq!(a["isHealthy"], true);
    assert_eq!(a["isDisabled"], false);
    assert_eq!(a["usageCount"], 1);
    assert_eq!(a["errorCount"], 1);
    assert_eq!(a["poolType"], "checking");
    assert_eq!(a["notSupportedModels"], serde_json::json!([]));
    let last_used = a["lastUsed"].as_str().unwrap();
    assert!(
        last_used.ends_with('Z') && last_used.len() == 24,
        "{last_used}"
    );
    assert_eq!(a["lastErrorMessage"], "transient");
    let b = accounts.iter().find(|a| a["uuid"] == "acct-b").unwrap();
    assert_eq!(b["isHealthy"], false);
    assert_eq!(b["poolType"], "banned");
    assert_eq!(b["errorStatus"]["statusType"], "banned");
    let c = accounts.iter().find(|a| a["uuid"] == "acct-c").unwrap();
    assert_eq!(c["isDisabled"], true);
    assert_eq!(c["poolType"], "disabled");

    let bad = authed(&app, Method::GET, "/accounts?shape=grouped", None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        bad.error().1,
        "unknown shape `grouped`: use `legacy`, or leave it out"
    );
}

#[tokio::test]
async fn unknown_ids_are_404_everywhere() {
    let pool = pool();
    let app = app(&pool);
    for (method, path, body) in [
        (Method::GET, "/accounts/nope", None),
        (Method::PATCH, "/accounts/nope", Some(r#"{"weight":2}"#)),
        (Method::PATCH, "/accounts/nope", Some("not json")),
        (Method::DELETE, "/accounts/nope", None),
        (Method::POST, "/accounts/nope/reset", None),
        (Method::POST, "/accounts/nope/refresh", None),
        (Method::POST, "/accounts/nope/probe", None),
        (Method::GET, "/accounts/n%6Fpe", None),
    ] {
        let reply = authed(&app, method.clone(), path, body).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(
            reply.error(),
            ("not_found".to_owned(), "unknown account `nope`".to_owned())
        );
    }
    assert_eq!(pool.len(), 3);

    let reply = authed(&app, Method::GET, "/accounts/%FF", None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.error().1,
        "the account id in the path is not valid UTF-8"
    );
}

#[tokio::test]
async fn add_accounts() {
    let pool = pool();
    let app = app(&pool);
    let reply = authed(
        &app,
        Method::POST,
        "/accounts",
        Some(
            r#"{"uuid":"acct-d","bearerToken":"sk-added-SECRET-9999-wxyz","weight":3,"priority":2,
                "maxInFlight":5,"models":["m1","m2"],"notSupportedModels":["m3"],"probeModel":"m1",
                "baseUrl":"https://upstream.test/v1","enabled":false}"#,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let v = reply.json();
    assert_eq!(v["id"], "acct-d");
    assert_eq!(
        v["credential"],
        serde_json::json!({"kind": "bearer", "last4": "wxyz"})
    );
    assert!(!reply.text.contains("sk-added-SECRET"));
    let snapshot = pool.snapshot();
    let d = snapshot.account("acct-d").unwrap();
    assert_eq!(d.settings.weight, 3);
    assert_eq!(d.settings.priority, 2);
    assert_eq!(d.settings.max_in_flight, Some(5));
    assert_eq!(
        d.settings.models.as_deref(),
        Some(&["m1".to_owned(), "m2".to_owned()][..])
    );
    assert_eq!(d.settings.not_supported_models, ["m3"]);
    assert_eq!(d.settings.probe_model.as_deref(), Some("m1"));
    assert!(!d.settings.enabled);
    assert_eq!(d.state, HealthState::Disabled);

    let reply = authed(
        &app,
        Method::POST,
        "/accounts",
        Some(r#"{"id":"acct-e","apiKey":"key-added-SECRET-8888","headerName":"x-goog-api-key"}"#),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let lease = pool
        .select(&SelectRequest::default().excluding(&["acct-a".into(), "acct-c".into()]))
        .unwrap();
    assert_eq!(lease.id().as_str(), "acct-e", "tier 0 first");
    let mut headers = http::HeaderMap::new();
    lease.credential().apply(&mut headers).unwrap();
    assert_eq!(headers["x-goog-api-key"], "key-added-SECRET-8888");
}

#[tokio::test]
async fn duplicate_ids_are_409_and_keep_the_original() {
    let pool = pool();
    let app = app(&pool);
    for body in [
        r#"{"id":"acct-a","bearerToken":"sk-other-token-0000-zzzz"}"#,
        r#"{"uuid":"acct-a","apiKey":"other-key-0000-yyyy"}"#,
    ] {
        let reply = authed(&app, Method::POST, "/accounts", Some(body)).await;
        assert_eq!(reply.status, StatusCode::CONFLICT);
        assert_eq!(
            reply.error(),
            (
                "conflict".to_owned(),
                "an account with id `acct-a` already exists".to_owned()
            )
        );
    }
    assert_eq!(pool.len(), 3);
    let snapshot = pool.snapshot();
    let a = snapshot.account("acct-a").unwrap();
    assert_eq!(a.credential.last4.as_deref(), Some("1111"));
}

#[tokio::test]
async fn bad_add_bodies_are_400_with_a_message() {
    let pool = pool();
    let app = app(&pool);
    let cases: &[(&str, &str)] = &[
        ("", "the body is empty: send a JSON object"),
        ("{", "the body is not valid JSON: EOF while parsing an object at line 1 column 1"),
        ("[1]", "the body must be a JSON object"),
        (r#"{"bearerToken":"sk-x-000000000000"}"#, "`id` is required"),
        (r#"{"id":"","bearerToken":"sk-x-000000000000"}"#, "`id` must not be empty"),
        (
            r#"{"id":"a/b","bearerToken":"sk-x-000000000000"}"#,
            "`id` may only contain letters, digits and `. _ : @ + -`, at most 128 characters",
        ),
        (
            r#"{"id":"x","uuid":"y","bearerToken":"sk-x-000000000000"}"#,
            "give either `id` or `uuid` (its older name), not both",
        ),
        (r#"{"id":7,"bearerToken":"sk-x-000000000000"}"#, "`id` must be a string"),
        (
            r#"{"id":"x"}"#,
            "a credential is required: `bearerToken`, or `apiKey` with an optional `headerName` (default `x-api-key`)",
        ),
        (
            r#"{"id":"x","bearerToken":"sk-a-000000000000","apiKey":"k-000000000000"}"#,
            "give either `bearerToken` or `apiKey`, not both",
        ),
        (r#"{"id":"x","bearerToken":"  "}"#, "`bearerToken` must not be empty"),
        (
            r#"{"id":"x","bearerToken":"bad\nSECRET-newline"}"#,
            "`bearerToken` is not a valid HTTP header value",
        ),
        (
            r#"{"id":"x","bearerToken":"sk-a-000000000000","headerName":"x-key"}"#,
            "`headerName` only applies with `apiKey`",
        ),
        (
            r#"{"id":"x","apiKey":"k-000000000000","headerName":"bad header"}"#,
            "`headerName` `bad header` is not a valid HTTP header name",
        ),
        (
            r#"{"id":"x","bearerToken":"sk-a-000000000000","KIRO_OAUTH_CREDS_FILE_PATH":"/etc/passwd"}"#,
            "unknown field `KIRO_OAUTH_CREDS_FILE_PATH`; expected one of `id`, `uuid`, `bearerToken`, `apiKey`, `headerName`, `enabled`, `models`, `notSupportedModels`, `weight`, `priority`, `maxInFlight`, `probeModel`, `baseUrl`",
        ),
        (
            r#"{"id":"x","bearerToken":"sk-a-000000000000","weight":0}"#,
            "`weight` must be an integer from 1 to 4294967295",
        ),
        (
            r#"{"id":"x","bearerToken":"sk-a-000000000000","weight":"SECRET-in-weight"}"#,
            "`weight` must be an integer from 1 to 4294967295",
        ),
        (
            r#"{"id":"x","bearerToken":"sk-a-000000000000","maxInFlight":0}"#,
            "`maxInFlight` must be an integer from 1 to 4294967295",
        ),
        (
            r#"{"id":"x","bearerToken":"sk-a-000000000000","priority":-1}"#,
            "`priority` must be an integer from 0 to 4294967295",
        ),
        (
            r#"{"id":"x","bearerToken":"sk-a-000000000000","enabled":"yes"}"#,
            "`enabled` must be true or false",
        ),
        (
            r#"{"id":"x","bearerToken":"sk-a-000000000000","models":[]}"#,
            "`models` must not be empty: use null to allow every model",
        ),
        (
            r#"{"id":"x","bearerToken":"sk-a-000000000000","models":"m1"}"#,
            "`models` must be an array of model names",
        ),
        (
            r#"{"id":"x","bearerToken":"sk-a-000000000000","notSupportedModels":[""]}"#,
            "`notSupportedModels`: a model name must be 1 to 200 characters without control characters",
        ),
        (
            r#"{"id":"x","bearerToken":"sk-a-000000000000","baseUrl":"ftp://x"}"#,
            "`baseUrl` must start with http:// or https://",
        ),
        (
            r#"{"id":"x","bearerToken":"sk-a-000000000000","baseUrl":"https://user:SECRET-pw@host/"}"#,
            "`baseUrl` must not contain credentials (user:password@)",
        ),
        (
            r#"{"id":"x","bearerToken":"sk-a-000000000000","baseUrl":"https://host/v1?key=SECRET"}"#,
            "`baseUrl` must not have a query or fragment (put keys in the credential)",
        ),
        (
            r#"{"id":"reset","bearerToken":"sk-a-000000000000"}"#,
            "`id` must not be `reset`, `.` or `..`: the admin API could not address it",
        ),
        (
            r#"{"id":"..","bearerToken":"sk-a-000000000000"}"#,
            "`id` must not be `reset`, `.` or `..`: the admin API could not address it",
        ),
    ];
    for (body, message) in cases {
        let reply = authed(&app, Method::POST, "/accounts", Some(body)).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.text
        );
        assert_eq!(
            reply.error(),
            ("invalid_request".to_owned(), (*message).to_owned()),
            "{body}"
        );
        assert!(
            !reply.text.contains("SECRET"),
            "{body} echoed: {}",
            reply.text
        );
    }
    assert_eq!(pool.ids().len(), 3, "nothing was added");
}

#[tokio::test]
async fn patch_changes_settings_and_enables() {
    let pool = pool();
    let app = app(&pool);
    let reply = authed(
        &app,
        Method::PATCH,
        "/accounts/acct-a",
        Some(r#"{"enabled":false,"weight":4,"priority":3,"maxInFlight":2,"models":["m1"],"notSupportedModels":["m2"],"probeModel":"m1","baseUrl":"http://up.test"}"#),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json()["state"], "disabled");
    let snapshot = pool.snapshot();
    let a = snapshot.account("acct-a").unwrap();
    assert!(!a.settings.enabled);
    assert_eq!(a.settings.weight, 4);
    assert_eq!(a.settings.priority, 3);
    assert_eq!(a.settings.max_in_flight, Some(2));
    assert_eq!(a.settings.models.as_deref(), Some(&["m1".to_owned()][..]));
    assert_eq!(a.settings.not_supported_models, ["m2"]);
    assert_eq!(a.settings.base_url.as_deref(), Some("http://up.test"));

    let reply = authed(
        &app,
        Method::PATCH,
        "/accounts/acct-a",
        Some(r#"{"enabled":true,"models":null,"maxInFlight":null,"notSupportedModels":null,"probeModel":null,"baseUrl":null}"#),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let snapshot = pool.snapshot();
    let a = snapshot.account("acct-a").unwrap();
    assert!(a.settings.enabled);
    assert_eq!(a.state, HealthState::Healthy);
    assert_eq!(a.settings.models, None);
    assert_eq!(a.settings.max_in_flight, None);
    assert!(a.settings.not_supported_models.is_empty());
    assert_eq!(a.settings.probe_model, None);
    assert_eq!(a.settings.weight, 4, "untouched fields stay");
}

#[tokio::test]
async fn bad_patch_bodies_are_400_and_change_nothing() {
    let pool = pool();
    let app = app(&pool);
    let before = pool.snapshot().account("acct-a").unwrap().settings.clone();
    let cases: &[(&str, &str)] = &[
        (
            "{}",
            "the body changes nothing: give at least one of `enabled`, `models`, `notSupportedModels`, `weight`, `priority`, `maxInFlight`, `probeModel`, `baseUrl`",
        ),
        (
            r#"{"id":"renamed"}"#,
            "unknown field `id`; expected one of `enabled`, `models`, `notSupportedModels`, `weight`, `priority`, `maxInFlight`, `probeModel`, `baseUrl`",
        ),
        (
            r#"{"bearerToken":"sk-SECRET-rotate-000"}"#,
            "unknown field `bearerToken`; expected one of `enabled`, `models`, `notSupportedModels`, `weight`, `priority`, `maxInFlight`, `probeModel`, `baseUrl`",
        ),
        // A valid field next to a bad one: nothing is applied.
        (r#"{"weight":5,"enabled":1}"#, "`enabled` must be true or false"),
        (r#"{"weight":0}"#, "`weight` must be an integer from 1 to 4294967295"),
        ("nope", "the body is not valid JSON: expected ident at line 1 column 2"),
    ];
    for (body, message) in cases {
        let reply = authed(&app, Method::PATCH, "/accounts/acct-a", Some(body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.error().1, *message, "{body}");
        assert!(!reply.text.contains("SECRET"));
    }
    assert_eq!(pool.snapshot().account("acct-a").unwrap().settings, before);
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let pool = pool();
    let app = admin::router(
        pool.clone(),
        AdminConfig::new(ADMIN_TOKEN).unwrap().body_limit(256),
    );
    let big = format!(
        r#"{{"id":"big","bearerToken":"sk-big-token-0000","models":["{}"]}}"#,
        "m".repeat(300)
    );
    let reply = authed(&app, Method::POST, "/accounts", Some(&big)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        reply.error(),
        (
            "payload_too_large".to_owned(),
            "the request body is larger than the admin API accepts".to_owned()
        )
    );
    assert_eq!(pool.len(), 3);
}

#[tokio::test]
async fn delete_and_reset() {
    let pool = pool();
    let app = app(&pool);
    let reply = authed(&app, Method::DELETE, "/accounts/acct-c", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), serde_json::json!({"removed": "acct-c"}));
    assert_eq!(pool.ids(), ["acct-a", "acct-b"]);

    pool.report_probe("acct-a", Outcome::Suspended).unwrap();
    pool.report_probe("acct-b", Outcome::AuthInvalid).unwrap();
    let reply = authed(&app, Method::POST, "/accounts/acct-a/reset", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["state"], "healthy");
    assert_eq!(
        pool.snapshot().account("acct-b").unwrap().state,
        HealthState::AuthInvalid
    );
    let reply = authed(&app, Method::POST, "/accounts/reset", None).await;
    assert_eq!(reply.json(), serde_json::json!({"reset": 2}));
    assert!(pool
        .snapshot()
        .accounts
        .iter()
        .all(|a| a.state == HealthState::Healthy));
}

#[tokio::test]
async fn refresh_uses_the_credential() {
    let credential = shared_refreshable();
    let pool = Pool::builder()
        .account(Account::with_shared_credential("oauth", credential.clone()))
        .account(Account::new("static", BearerToken::new(BEARER_A)))
        .build()
        .unwrap();
    let app = app(&pool);

    let reply = authed(&app, Method::POST, "/accounts/static/refresh", None).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(
        reply.error(),
        (
            "not_refreshable".to_owned(),
            "account `static`: credential of kind `bearer` cannot be refreshed".to_owned()
        )
    );

    pool.report_probe("oauth", Outcome::Suspended).unwrap();
    let before = credential.refreshes();
    let reply = authed(&app, Method::POST, "/accounts/oauth/refresh", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(credential.refreshes(), before + 1);

    reject_refreshes(&credential);
    let reply = authed(&app, Method::POST, "/accounts/oauth/refresh", None).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.error(),
        (
            "refresh_failed".to_owned(),
            "account `oauth`: credential rejected: the upstream said no".to_owned()
        )
    );
    assert_eq!(
        pool.snapshot().account("oauth").unwrap().state,
        HealthState::AuthInvalid
    );
}

#[tokio::test]
async fn probe_reports_its_outcome() {
    let pool = pool();
    pool.report_probe("acct-b", Outcome::Suspended).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen_in_probe = seen.clone();
    let config = AdminConfig::new(ADMIN_TOKEN)
        .unwrap()
        .prober(move |target| {
            let mut headers = http::HeaderMap::new();
            target.credential.apply(&mut headers).unwrap();
            seen_in_probe.lock().unwrap().push((
                target.id.to_string(),
                headers["authorization"].to_str().unwrap().to_owned(),
            ));
            async move {
                if target.id.as_str() == "acct-a" {
                    Outcome::Suspended
                } else {
                    Outcome::Success
                }
            }
        });
    let app = admin::router(pool.clone(), config);

    let reply = authed(&app, Method::POST, "/accounts/acct-b/probe", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let v = reply.json();
    assert_eq!(v["outcome"], "success");
    assert_eq!(v["account"]["state"], "healthy");
    assert!(!reply.text.contains(BEARER_B));

    let reply = authed(&app, Method::POST, "/accounts/acct-a/probe", None).await;
    assert_eq!(reply.json()["outcome"], "suspended");
    assert_eq!(
        pool.snapshot().account("acct-a").unwrap().state,
        HealthState::Suspended
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("acct-b".to_owned(), format!("Bearer {BEARER_B}")),
            ("acct-a".to_owned(), format!("Bearer {BEARER_A}")),
        ]
    );

    let without = app_without_prober(&pool);
    let reply = authed(&without, Method::POST, "/accounts/acct-a/probe", None).await;
    assert_eq!(reply.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(
        reply.error(),
        (
            "probe_not_configured".to_owned(),
            "no prober is configured: set one with AdminConfig::prober".to_owned()
        )
    );
}

fn app_without_prober(pool: &Pool) -> Router {
    app(pool)
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_hangs_times_out_and_reports_nothing() {
    let pool = pool();
    let config = AdminConfig::new(ADMIN_TOKEN)
        .unwrap()
        .probe_timeout(Duration::from_secs(2))
        .prober(|_| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Outcome::Transient
        });
    let app = admin::router(pool.clone(), config);
    let reply = authed(&app, Method::POST, "/accounts/acct-a/probe", None).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        reply.error().1,
        "the probe of `acct-a` did not finish within 2 s; nothing was reported"
    );
    assert_eq!(
        pool.snapshot()
            .account("acct-a")
            .unwrap()
            .counters
            .outcomes(),
        0
    );
}

#[tokio::test]
async fn metrics_in_prometheus_text() {
    let pool = pool();
    let latency = SelectionLatency::new();
    let app = admin::router(
        pool.clone(),
        AdminConfig::new(ADMIN_TOKEN)
            .unwrap()
            .selection_latency(latency.clone()),
    );
    let lease = latency.select(&pool, &SelectRequest::default()).unwrap();
    let held = latency.select(&pool, &SelectRequest::default()).unwrap();
    lease.report(Outcome::rate_limited(None));
    pool.record_retry();
    pool.disable("acct-b").unwrap();
    pool.disable("acct-a").unwrap();
    pool.disable("acct-c").unwrap();
    assert!(latency.select(&pool, &SelectRequest::default()).is_err());

    let reply = authed(&app, Method::GET, "/metrics", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = reply.text;
    for line in [
        "# TYPE account_pool_account_requests_total counter",
        "account_pool_account_requests_total{account=\"acct-a\"} 1",
        "account_pool_account_requests_total{account=\"acct-c\"} 1",
        "account_pool_account_outcomes_total{account=\"acct-a\",class=\"rate_limited\"} 1",
        "account_pool_account_outcomes_total{account=\"acct-a\",class=\"success\"} 0",
        "account_pool_account_state{account=\"acct-b\",state=\"disabled\"} 1",
        "account_pool_account_state{account=\"acct-b\",state=\"healthy\"} 0",
        "account_pool_account_in_flight{account=\"acct-c\"} 1",
        "account_pool_account_in_flight{account=\"acct-a\"} 0",
        "account_pool_selections_total 2",
        "account_pool_exhaustions_total 1",
        "account_pool_retries_total 1",
        "account_pool_routable_accounts 0",
        "account_pool_accounts{group=\"disabled\"} 3",
        "# TYPE account_pool_selection_duration_seconds histogram",
        "account_pool_selection_duration_seconds_bucket{le=\"+Inf\"} 3",
        "account_pool_selection_duration_seconds_count 3",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    // Every sample line is `name{labels} value` or `name value` with a numeric value.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample: {line}");
    }
    drop(held);
}

/// `/health` agrees with `select` whatever state the pool is in.
#[tokio::test(start_paused = true)]
async fn health_agrees_with_select_in_every_state() {
    type Setup = fn(&Pool) -> Option<tower_account_pool::pool::Lease>;
    let cases: &[(&str, Setup)] = &[
        ("healthy", |_| None),
        ("rate limited", |p| {
            p.report_probe(
                "solo",
                Outcome::RateLimited {
                    retry_after: Some(Duration::from_secs(30)),
                    scope: RateLimitScope::Account,
                },
            )
            .unwrap();
            None
        }),
        ("quota exhausted", |p| {
            p.report_probe("solo", Outcome::QuotaExhausted { reset_at: None })
                .unwrap();
            None
        }),
        ("auth expired", |p| {
            p.report_probe("solo", Outcome::AuthExpired).unwrap();
            None
        }),
        ("auth invalid", |p| {
            p.report_probe("solo", Outcome::AuthInvalid).unwrap();
            None
        }),
        ("suspended", |p| {
            p.report_probe("solo", Outcome::Suspended).unwrap();
            None
        }),
        ("ejected", |p| {
            p.report_probe("solo", Outcome::Transient).unwrap();
            None
        }),
        ("disabled", |p| {
            p.disable("solo").unwrap();
            None
        }),
        ("at capacity", |p| {
            Some(p.select(&SelectRequest::default()).unwrap())
        }),
        ("model cooldown only", |p| {
            let lease = p.select(&SelectRequest::for_model("m1")).unwrap();
            lease.report(Outcome::rate_limited(Some(Duration::from_secs(60))));
            None
        }),
    ];
    for &(name, setup) in cases {
        let pool = Pool::builder()
            .account(Account::new("solo", BearerToken::new(BEARER_A)).max_in_flight(1))
            .health(
                HealthPolicy::default()
                    .with_max_errors(1)
                    .with_panic_threshold(0),
            )
            .build()
            .unwrap();
        let app = app(&pool);
        let held = setup(&pool);
        check_health(&app, &pool, name).await;

        // Time passes: cooldowns and ejections end (ejection → half-open probe).
        tokio::time::advance(Duration::from_secs(7 * 3600)).await;
        check_health(&app, &pool, &format!("{name}, 7 h later")).await;
        drop(held);
        check_health(&app, &pool, &format!("{name}, lease released")).await;
    }
}

async fn check_health(app: &Router, pool: &Pool, case: &str) {
    let reply = send(app, Method::GET, "/health", None, None).await;
    let routable = pool.snapshot().available();
    let v: Value = reply.json();
    let lease = pool.select(&SelectRequest::default());
    let selectable = lease.is_ok();
    assert_eq!(
        reply.status == StatusCode::OK,
        selectable,
        "{case}: /health said {} but select {}",
        reply.status,
        if selectable { "succeeded" } else { "failed" }
    );
    assert_eq!(v["routable"], routable, "{case}");
    assert_eq!(
        v["status"],
        if selectable { "ok" } else { "unavailable" },
        "{case}"
    );
    // A probe lease must not count as a failure: report it as served.
    if let Ok(lease) = lease {
        lease.report(Outcome::Success);
    }
}

#[tokio::test]
async fn half_open_reads_unavailable_while_its_probe_runs() {
    let pool = Pool::builder()
        .account(Account::new("solo", BearerToken::new(BEARER_A)))
        .health(
            HealthPolicy::default()
                .with_max_errors(1)
                .with_panic_threshold(0)
                .with_ejection_base(Duration::from_millis(1))
                .with_ejection_max(Duration::from_millis(1)),
        )
        .build()
        .unwrap();
    let app = app(&pool);
    pool.report_probe("solo", Outcome::Transient).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let probe = pool.select(&SelectRequest::default()).unwrap();
    assert!(probe.is_probe());
    assert_eq!(pool.snapshot().accounts[0].state, HealthState::HalfOpen);
    check_health(&app, &pool, "half-open with its probe in flight").await;
    let reply = send(&app, Method::GET, "/health", None, None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    probe.report(Outcome::Success);
    check_health(&app, &pool, "after the probe").await;
}

#[tokio::test]
async fn events_stream_state_changes() {
    use futures_util::StreamExt;

    let pool = pool();
    let app = app(&pool);
    let request = axum::http::Request::builder()
        .uri("/events")
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut frames = response.into_body().into_data_stream();
    async fn next(
        frames: &mut (impl futures_util::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
    ) -> String {
        let frame = tokio::time::timeout(Duration::from_secs(5), frames.next())
            .await
            .expect("an event within 5 s")
            .expect("the stream stays open")
            .unwrap();
        String::from_utf8(frame.to_vec()).unwrap()
    }
    assert_eq!(next(&mut frames).await, "event: ready\ndata: {}\n\n");

    pool.disable("acct-b").unwrap();
    let frame = next(&mut frames).await;
    let data = frame
        .strip_prefix("event: state\ndata: ")
        .and_then(|f| f.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("unexpected frame {frame:?}"));
    let change: Value = serde_json::from_str(data).unwrap();
    assert_eq!(change["account"], "acct-b");
    assert_eq!(change["from"], "healthy");
    assert_eq!(change["to"], "disabled");
    assert_eq!(change["reason"], "disabled by operator");
}

#[tokio::test]
async fn a_slow_event_reader_is_told_what_it_missed() {
    use futures_util::StreamExt;

    let pool = pool();
    let request = axum::http::Request::builder()
        .uri("/events")
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(app(&pool), request)
        .await
        .unwrap();
    // 1200 changes while nobody reads: more than the pool's event buffer (1024) holds.
    for _ in 0..600 {
        pool.disable("acct-a").unwrap();
        pool.enable("acct-a").unwrap();
    }
    let mut frames = response.into_body().into_data_stream();
    let mut texts = Vec::new();
    for _ in 0..3 {
        let frame = tokio::time::timeout(Duration::from_secs(5), frames.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        texts.push(String::from_utf8(frame.to_vec()).unwrap());
    }
    assert_eq!(texts[0], "event: ready\ndata: {}\n\n");
    assert_eq!(texts[1], "event: lagged\ndata: {\"missed\":176}\n\n");
    assert!(texts[2].starts_with("event: state\n"), "{}", texts[2]);
}
