//! The refresh endpoints: `POST /refreshToken` (social) and `POST /token` (IdC), by each
//! refresh token's [`RefreshRule`](super::RefreshRule).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{json, Value};

use super::response::{json_error, respond, MockResponse};
use super::State;

pub(super) async fn refresh(
    state: &Arc<Mutex<State>>,
    path: &str,
    body: Option<&Value>,
) -> MockResponse {
    let social = path == "/refreshToken";
    let invalid = || {
        if social {
            respond(
                400,
                "application/json",
                &[],
                vec![Bytes::from(
                    json!({"message": "Invalid refresh token provided"}).to_string(),
                )],
                false,
            )
        } else {
            json_error(
                400,
                "InvalidGrantException",
                json!({"error": "invalid_grant", "error_description": "Invalid refresh token provided"}),
            )
        }
    };
    let Some(body) = body else { return invalid() };
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    let Some(refresh_token) = text("refreshToken") else {
        return invalid();
    };
    let found = state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .refresh
        .get(&refresh_token)
        .cloned();
    let Some((account, rule)) = found else {
        return invalid();
    };
    if !rule.delay.is_zero() {
        tokio::time::sleep(rule.delay).await;
    }
    if let Some(status) = rule.fail_status {
        return json_error(
            status,
            "InternalServerException",
            json!({"message": "Service unavailable"}),
        );
    }
    if !social {
        let client_ok = match &rule.client {
            Some((id, secret)) => {
                text("clientId").as_deref() == Some(id.as_str())
                    && text("clientSecret").as_deref() == Some(secret.as_str())
            }
            None => text("clientId").is_some() && text("clientSecret").is_some(),
        };
        if !client_ok || text("grantType").as_deref() != Some("refresh_token") {
            return json_error(
                400,
                "InvalidClientException",
                json!({"error": "invalid_client", "error_description": "Invalid client credentials"}),
            );
        }
    }
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    s.issued += 1;
    let n = s.issued;
    let access = format!("at-{account}-{n}");
    s.access.insert(access.clone(), account.clone());
    let mut answer = json!({ "accessToken": access });
    if let Some(secs) = rule.expires_in {
        answer["expiresIn"] = json!(secs);
    }
    if rule.rotate {
        let rotated = format!("rt-{account}-{n}");
        s.refresh.remove(&refresh_token);
        s.refresh
            .insert(rotated.clone(), (account.clone(), rule.clone()));
        answer["refreshToken"] = json!(rotated);
    }
    if social {
        if let Some(arn) = &rule.profile_arn {
            answer["profileArn"] = json!(arn);
        }
    } else {
        answer["tokenType"] = json!("Bearer");
    }
    drop(s);
    respond(
        200,
        "application/json",
        &[],
        vec![Bytes::from(answer.to_string())],
        false,
    )
}
