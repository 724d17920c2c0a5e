//! Shared helpers of the admin tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;
use tower_account_pool::credential::CredentialError;
use tower_account_pool::testing::MockCredential;

pub const ADMIN_TOKEN: &str = "admin-token-SECRET-7c1f09d2e4b6";
pub const BEARER_A: &str = "sk-upstream-SECRET-aaaa-1111";
pub const BEARER_B: &str = "sk-upstream-SECRET-bbbb-2222";
pub const API_KEY_C: &str = "key-upstream-SECRET-cccc-3333";
pub const REFRESH_SECRET: &str = "refresh-SECRET-dddd-4444";

/// Every secret a test hands to the pool or the router.
pub const SECRETS: &[&str] = &[ADMIN_TOKEN, BEARER_A, BEARER_B, API_KEY_C, REFRESH_SECRET];

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The `{"error": {"type", "message"}}` of an error reply.
    pub fn error(&self) -> (String, String) {
        let v = self.json();
        (
            v["error"]["type"].as_str().expect("error.type").to_owned(),
            v["error"]["message"]
                .as_str()
                .expect("error.message")
                .to_owned(),
        )
    }
}

pub async fn send(
    app: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

pub async fn authed(app: &Router, method: Method, path: &str, body: Option<&str>) -> Reply {
    send(app, method, path, Some(ADMIN_TOKEN), body).await
}

/// A refreshable credential that counts its refreshes and can be told to fail.
pub fn shared_refreshable() -> Arc<MockCredential> {
    Arc::new(
        MockCredential::new("test-oauth", REFRESH_SECRET).path("/var/lib/pool/test-oauth.json"),
    )
}

/// Makes the credential's refreshes fail as an upstream that rejects them would.
pub fn reject_refreshes(credential: &MockCredential) {
    credential.fail_refreshes_with(Some(CredentialError::Invalid(
        "the upstream said no".into(),
    )));
}
