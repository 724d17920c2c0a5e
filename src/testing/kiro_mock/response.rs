//! Building the mock's responses: bodies fed through a channel (so frames can be paced and
//! connections broken), Kiro's error answers, and a scripted [`Reply`] rendered.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::Frame;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use super::reply::{Event, Reply};
use crate::kiro::eventstream::Message;
use crate::testing::kiro_validation::Rejection;

/// A response body fed through a channel, so the mock can pace frames and break connections.
pub(super) struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

pub(super) type MockResponse = Response<ChannelBody>;

pub(super) fn respond(
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    chunks: Vec<Bytes>,
    break_after: bool,
) -> MockResponse {
    let (tx, rx) = mpsc::channel(chunks.len() + 1);
    for chunk in chunks {
        let _ = tx.try_send(Ok(chunk));
    }
    if break_after {
        // Let the head and the first frames reach the client, then break the connection.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx
                .send(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "mock connection reset",
                )))
                .await;
        });
    }
    let mut builder = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header("x-amzn-requestid", "00000000-0000-4000-8000-000000000000");
    for (name, value) in extra {
        builder = builder.header(*name, value.as_str());
    }
    builder
        .body(ChannelBody { rx })
        .expect("a valid mock response")
}

pub(super) fn json_error(status: u16, error_type: &str, body: Value) -> MockResponse {
    respond(
        status,
        "application/x-amz-json-1.0",
        &[(
            "x-amzn-errortype",
            format!("{error_type}:http://internal.amazon.com/coral/com.amazon.kiro/"),
        )],
        vec![Bytes::from(body.to_string())],
        false,
    )
}

pub(super) fn event(event_type: &str, payload: Value) -> Bytes {
    Bytes::from(
        Message::event(event_type, payload.to_string())
            .encode()
            .expect("mock frames encode"),
    )
}

fn text_events(chunks: &[String]) -> Vec<Bytes> {
    chunks
        .iter()
        .map(|c| event("assistantResponseEvent", json!({ "content": c })))
        .collect()
}

/// Kiro's answer to a body the mock refused, with the mock's explanation in a header.
pub(super) fn rejected(rejection: &Rejection) -> MockResponse {
    let mut response = json_error(
        rejection.status,
        "ValidationException",
        json!({"message": rejection.message, "reason": rejection.reason}),
    );
    let detail: String = rejection
        .detail
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if let Ok(value) = http::HeaderValue::from_str(&detail) {
        response
            .headers_mut()
            .insert("x-kiro-mock-rejection", value);
    }
    response
}

pub(super) fn invalid_token() -> MockResponse {
    json_error(
        403,
        "AccessDeniedException",
        json!({"message": "The bearer token included in the request is invalid.", "reason": null}),
    )
}

pub(super) async fn render(reply: Reply, abort: &Notify) -> MockResponse {
    let stream = "application/vnd.amazon.eventstream";
    match reply {
        Reply::Success { chunks } => {
            let mut frames = text_events(&chunks);
            frames.push(event(
                "meteringEvent",
                json!({"unit": "credit", "usage": 0.01}),
            ));
            frames.push(event(
                "contextUsageEvent",
                json!({"contextUsagePercentage": 1.2}),
            ));
            respond(200, stream, &[], frames, false)
        }
        Reply::InvalidToken => invalid_token(),
        Reply::QuotaExhausted => json_error(
            402,
            "ThrottlingException",
            json!({"message": "Maximum Kiro usage reached for this month.", "reason": "MONTHLY_REQUEST_COUNT"}),
        ),
        Reply::Throttled { retry_after } => {
            let mut response = json_error(
                429,
                "ThrottlingException",
                json!({"message": "Too many requests, please wait before trying again.", "reason": null}),
            );
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
            }
            response
        }
        Reply::ServerError { status } => json_error(
            status,
            "InternalServerException",
            json!({"message": "Encountered an unexpected error when processing the request, please try again."}),
        ),
        Reply::Suspended => json_error(
            403,
            "AccessDeniedException",
            json!({"message": "Your User ID (u-1) temporarily is suspended. Please appeal.", "reason": "TEMPORARILY_SUSPENDED"}),
        ),
        Reply::Validation => json_error(
            400,
            "ValidationException",
            json!({"message": "Improperly formed request.", "reason": null}),
        ),
        Reply::ExceptionFrame {
            after,
            exception_type,
            message,
        } => {
            let mut frames = text_events(&after);
            frames.push(Bytes::from(
                Message::exception(&exception_type, json!({ "message": message }).to_string())
                    .encode()
                    .expect("mock frames encode"),
            ));
            respond(200, stream, &[], frames, false)
        }
        Reply::Slow { delay, reply } => {
            tokio::time::sleep(delay).await;
            Box::pin(render(*reply, abort)).await
        }
        Reply::ResetBeforeResponse => {
            abort.notify_one();
            std::future::pending().await
        }
        Reply::ResetMidStream { after } => respond(200, stream, &[], text_events(&after), true),
        Reply::Events { events } => {
            let frames: Option<Vec<Vec<Bytes>>> = events.iter().map(Event::frames).collect();
            match frames {
                Some(frames) => respond(200, stream, &[], frames.concat(), false),
                None => {
                    abort.notify_one();
                    std::future::pending().await
                }
            }
        }
        Reply::Raw {
            status,
            content_type,
            body,
        } => respond(status, &content_type, &[], vec![Bytes::from(body)], false),
    }
}
