//! Serving one request: the account its token belongs to, the body checked as Kiro would, the
//! request recorded, and the route's answer.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::refresh::refresh;
use super::response::{invalid_token, json_error, rejected, render, respond, MockResponse};
use super::{default_usage, RecordedRequest, Reply, State};
use crate::testing::kiro_validation;

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

pub(super) async fn handle(
    state: Arc<Mutex<State>>,
    abort: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<MockResponse, Infallible> {
    use http_body_util_lite::collect;
    let (parts, body) = req.into_parts();
    let body = collect(body).await;
    let path = parts.uri.path().to_owned();
    let token = bearer(&parts.headers);
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let chat = parts.method == Method::POST
        && matches!(
            path.as_str(),
            "/generateAssistantResponse" | "/SendMessageStreaming"
        );
    let (account, rejection) = {
        let s = lock();
        let account = match path.as_str() {
            "/refreshToken" | "/token" => parsed
                .as_ref()
                .and_then(|v| v.get("refreshToken"))
                .and_then(Value::as_str)
                .and_then(|t| s.refresh.get(t))
                .map(|(a, _)| a.clone()),
            _ => token.as_ref().and_then(|t| s.access.get(t)).cloned(),
        };
        // Kiro checks the token first, then the body.
        let rejection = (chat && account.is_some())
            .then(|| kiro_validation::check(&body, &s.validation).err())
            .flatten();
        (account, rejection)
    };
    lock().requests.push(RecordedRequest {
        method: parts.method.clone(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body: body.clone(),
        token: token.clone(),
        account: account.clone(),
        json: parsed.clone(),
        rejection: rejection.as_ref().map(|r| r.detail.clone()),
    });
    let response = match (parts.method.clone(), path.as_str()) {
        (Method::POST, "/generateAssistantResponse" | "/SendMessageStreaming") => {
            match (account, rejection) {
                (None, _) => invalid_token(),
                (Some(_), Some(rejection)) => rejected(&rejection),
                (Some(account), None) => {
                    let (scripted, responder) = {
                        let mut state = lock();
                        let scripted = state
                            .scripts
                            .get_mut(&account)
                            .and_then(VecDeque::pop_front);
                        (scripted, state.responder.clone())
                    };
                    let reply = scripted.unwrap_or_else(|| match (responder, &parsed) {
                        (Some(respond), Some(body)) => respond(body),
                        _ => Reply::success(&["Hello", " from Kiro"]),
                    });
                    render(reply, &abort).await
                }
            }
        }
        (Method::GET, "/getUsageLimits") => match account {
            None => invalid_token(),
            Some(account) => {
                let usage = lock()
                    .usage
                    .get(&account)
                    .cloned()
                    .unwrap_or_else(|| default_usage(&account));
                respond(
                    200,
                    "application/json",
                    &[],
                    vec![Bytes::from(usage.to_string())],
                    false,
                )
            }
        },
        (Method::POST, "/refreshToken" | "/token") => refresh(&state, &path, parsed.as_ref()).await,
        _ => json_error(
            404,
            "UnknownOperationException",
            json!({"message": "Unknown operation"}),
        ),
    };
    Ok(response)
}

/// Collecting a request body without another dependency.
mod http_body_util_lite {
    use bytes::{Bytes, BytesMut};
    use http_body::Body;
    use hyper::body::Incoming;
    use std::pin::Pin;

    pub(super) async fn collect(mut body: Incoming) -> Bytes {
        let mut out = BytesMut::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        out.extend_from_slice(&data);
                    }
                }
                Err(_) => break,
            }
        }
        out.freeze()
    }
}
