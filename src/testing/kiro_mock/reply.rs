//! What the mock answers: scripted chat [`Reply`]s, the [`Event`]s of a stream, and the
//! [`RefreshRule`] of a refresh token.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use super::response::event;
use crate::kiro::eventstream::Message;

/// One scripted chat answer.
///
/// Failures are variants; successful streams are [`Reply::success`] (text) or a list of
/// [`Event`]s, built directly with [`Reply::events`] or with the shortcuts:
///
/// ```
/// use tower_account_pool::testing::{Event, Reply};
///
/// // A tool call whose input JSON arrives in two frames, closed like a real reply.
/// let tool = Reply::tool_use("get_weather", "tooluse_1", [r#"{"city":"#, r#""Paris"}"#]);
/// assert_eq!(tool, Reply::events([
///     Event::tool_use("get_weather", "tooluse_1", [r#"{"city":"#, r#""Paris"}"#]),
///     Event::metering(0.01),
///     Event::context_usage(1.2),
/// ]));
///
/// // Thinking, then the answer.
/// let thought = Reply::thinking("Short question.", "Yes.");
///
/// // Text, then a tool call; then an exception frame once the content has started.
/// let broken = Reply::success(&["Let me check."])
///     .then(Event::tool_use("get_weather", "tooluse_2", ["{}"]))
///     .then(Event::exception("InternalServerException", "Encountered an unexpected error"));
/// # let _ = (thought, broken);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// 200: one `assistantResponseEvent` per chunk, then `meteringEvent` and `contextUsageEvent`.
    Success {
        /// The text chunks.
        chunks: Vec<String>,
    },
    /// 403 `The bearer token included in the request is invalid.`
    InvalidToken,
    /// 402 with `MONTHLY_REQUEST_COUNT`.
    QuotaExhausted,
    /// 429 `ThrottlingException`, with `Retry-After` in seconds when given.
    Throttled {
        /// The `Retry-After` header.
        retry_after: Option<u64>,
    },
    /// A 5xx `InternalServerException`.
    ServerError {
        /// The status (500, 503, …).
        status: u16,
    },
    /// 403 `Your User ID temporarily is suspended…`.
    Suspended,
    /// 400 `ValidationException`.
    Validation,
    /// 200, the chunks as events, then an exception frame (first frame when `after` is empty).
    ExceptionFrame {
        /// Events before the exception.
        after: Vec<String>,
        /// The `:exception-type`.
        exception_type: String,
        /// The exception's message.
        message: String,
    },
    /// Waits, then answers.
    Slow {
        /// How long to wait before the answer.
        delay: Duration,
        /// The answer.
        reply: Box<Reply>,
    },
    /// Closes the connection before any response.
    ResetBeforeResponse,
    /// 200, the chunks as events, then the connection breaks.
    ResetMidStream {
        /// Events before the break.
        after: Vec<String>,
    },
    /// 200: exactly these events, in order (see [`Event`]); nothing is added.
    Events {
        /// The events, each one or more frames.
        events: Vec<Event>,
    },
    /// Any status, content type and body bytes.
    Raw {
        /// The status.
        status: u16,
        /// The content type.
        content_type: String,
        /// The body.
        body: Vec<u8>,
    },
}

impl Reply {
    /// A success stream of these chunks.
    pub fn success(chunks: &[&str]) -> Reply {
        Reply::Success {
            chunks: chunks.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    /// 200: exactly these events, in order.
    pub fn events(events: impl IntoIterator<Item = Event>) -> Reply {
        Reply::Events {
            events: events.into_iter().collect(),
        }
    }

    /// 200: one finished tool call ([`Event::tool_use`]), then `meteringEvent` and
    /// `contextUsageEvent` as a real reply ends.
    pub fn tool_use<I, S>(name: &str, tool_use_id: &str, input_fragments: I) -> Reply
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Reply::events([
            Event::tool_use(name, tool_use_id, input_fragments),
            Event::metering(0.01),
            Event::context_usage(1.2),
        ])
    }

    /// 200: `thought` as emulated thinking ([`Event::thinking`], 5 characters a frame), the
    /// `answer` as one text frame, then `meteringEvent` and `contextUsageEvent`.
    pub fn thinking(thought: &str, answer: &str) -> Reply {
        Reply::events([
            Event::thinking(thought, 5),
            Event::text(answer),
            Event::metering(0.01),
            Event::context_usage(1.2),
        ])
    }

    /// Appends an event. A [`Reply::Success`] becomes the equivalent [`Reply::Events`] with
    /// `event` before its closing `meteringEvent` and `contextUsageEvent`, a
    /// [`Reply::Events`] gets `event` last; any other reply is returned unchanged.
    pub fn then(self, event: Event) -> Reply {
        match self {
            Reply::Success { chunks } => {
                let mut events: Vec<Event> = chunks.into_iter().map(Event::Text).collect();
                events.extend([event, Event::metering(0.01), Event::context_usage(1.2)]);
                Reply::Events { events }
            }
            Reply::Events { mut events } => {
                events.push(event);
                Reply::Events { events }
            }
            other => other,
        }
    }
}

/// One piece of a scripted [`Reply::Events`] stream: one or more event-stream frames.
///
/// ```
/// use tower_account_pool::kiro::eventstream::decode_all;
/// use tower_account_pool::testing::{Event, KiroMock, Reply};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let mock = KiroMock::start().await;
/// mock.accept_access_token("alice", "at-alice");
/// // Thinking, a sentence, a tool call whose input arrives in three pieces, the context use.
/// mock.script("alice", [Reply::events([
///     Event::thinking("The user wants the weather.", 8),
///     Event::text("Let me look."),
///     Event::tool_use("get_weather", "tooluse_1", [r#"{"ci"#, r#"ty": "Par"#, r#"is"}"#]),
///     Event::context_usage(12.5),
/// ])]);
///
/// let body = serde_json::json!({"conversationState": {"currentMessage": {
///     "userInputMessage": {"content": "Weather in Paris?", "modelId": "claude-sonnet-4.5"}}}});
/// let response = reqwest::Client::new()
///     .post(format!("{}/generateAssistantResponse", mock.url()))
///     .bearer_auth("at-alice")
///     .body(body.to_string())
///     .send()
///     .await
///     .unwrap();
/// let frames = decode_all(&response.bytes().await.unwrap()).unwrap();
/// let kinds: Vec<_> = frames.iter().map(|f| f.event_type().unwrap()).collect();
/// assert_eq!(kinds.iter().filter(|k| **k == "toolUseEvent").count(), 5); // start, 3 pieces, stop
/// assert_eq!(kinds.last(), Some(&"contextUsageEvent"));
/// # });
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// One `assistantResponseEvent` `{"content": …}`.
    Text(String),
    /// Emulated thinking: the text `<thinking>{text}</thinking>\n\n` (the form the converter
    /// parses back, `anthropic-kiro.md` §4.2) cut into `assistantResponseEvent`s of
    /// `frame_chars` characters each, so the tags are split across frames too.
    Thinking {
        /// The thought, without the tags.
        text: String,
        /// Characters per frame (at least 1).
        frame_chars: usize,
    },
    /// A tool call: a `toolUseEvent` `{"name", "toolUseId", "input": ""}`, one per input
    /// fragment with `"input": fragment`, then (when `stop`) one with `"stop": true`. Every
    /// frame carries `name` and `toolUseId`.
    ToolUse {
        /// The tool name.
        name: String,
        /// The `toolUseId` (Kiro's look like `tooluse_…`).
        tool_use_id: String,
        /// The input JSON, in the pieces it arrives in.
        input: Vec<String>,
        /// Whether the closing `stop: true` frame is sent (Kiro leaves it out for a call cut
        /// off upstream, `anthropic-kiro.md` §3.1).
        stop: bool,
    },
    /// One `contextUsageEvent` `{"contextUsagePercentage": …}`.
    ContextUsage(f64),
    /// One `meteringEvent` `{"unit": "credit", "usage": …}`.
    Metering(f64),
    /// An exception frame (`:message-type: exception`) with `{"message": …}`.
    Exception {
        /// The `:exception-type` header.
        exception_type: String,
        /// The message.
        message: String,
    },
    /// Any frame, as given. One that cannot be encoded (a header value over 65,535 bytes, a
    /// frame over 16 MiB) is a mistake in the test: the mock drops the connection.
    Frame(Message),
}

impl Event {
    /// One text frame.
    pub fn text(text: impl Into<String>) -> Event {
        Event::Text(text.into())
    }

    /// Emulated thinking cut into frames of `frame_chars` characters ([`Event::Thinking`]).
    pub fn thinking(text: impl Into<String>, frame_chars: usize) -> Event {
        Event::Thinking {
            text: text.into(),
            frame_chars,
        }
    }

    /// A finished tool call whose input JSON arrives in these fragments ([`Event::ToolUse`]).
    pub fn tool_use<I, S>(name: &str, tool_use_id: &str, input_fragments: I) -> Event
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Event::ToolUse {
            name: name.to_owned(),
            tool_use_id: tool_use_id.to_owned(),
            input: input_fragments.into_iter().map(Into::into).collect(),
            stop: true,
        }
    }

    /// A tool call cut off before its `stop: true` frame.
    pub fn unfinished_tool_use<I, S>(name: &str, tool_use_id: &str, input_fragments: I) -> Event
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        match Event::tool_use(name, tool_use_id, input_fragments) {
            Event::ToolUse {
                name,
                tool_use_id,
                input,
                ..
            } => Event::ToolUse {
                name,
                tool_use_id,
                input,
                stop: false,
            },
            other => other,
        }
    }

    /// One `contextUsageEvent` with this percentage.
    pub fn context_usage(percentage: f64) -> Event {
        Event::ContextUsage(percentage)
    }

    /// One `meteringEvent` with this usage.
    pub fn metering(usage: f64) -> Event {
        Event::Metering(usage)
    }

    /// An exception frame.
    pub fn exception(exception_type: &str, message: &str) -> Event {
        Event::Exception {
            exception_type: exception_type.to_owned(),
            message: message.to_owned(),
        }
    }

    /// The encoded frames; `None` for a scripted [`Event::Frame`] that cannot be encoded.
    pub(super) fn frames(&self) -> Option<Vec<Bytes>> {
        Some(match self {
            Event::Text(text) => vec![event("assistantResponseEvent", json!({ "content": text }))],
            Event::Thinking { text, frame_chars } => {
                let whole: Vec<char> = format!("<thinking>{text}</thinking>\n\n").chars().collect();
                whole
                    .chunks((*frame_chars).max(1))
                    .map(|c| {
                        let chunk: String = c.iter().collect();
                        event("assistantResponseEvent", json!({ "content": chunk }))
                    })
                    .collect()
            }
            Event::ToolUse {
                name,
                tool_use_id,
                input,
                stop,
            } => {
                let frame = |extra: (&str, Value)| {
                    let mut payload = json!({"name": name, "toolUseId": tool_use_id});
                    payload[extra.0] = extra.1;
                    event("toolUseEvent", payload)
                };
                let mut frames = vec![frame(("input", json!("")))];
                frames.extend(input.iter().map(|piece| frame(("input", json!(piece)))));
                if *stop {
                    frames.push(frame(("stop", json!(true))));
                }
                frames
            }
            Event::ContextUsage(pct) => vec![event(
                "contextUsageEvent",
                json!({ "contextUsagePercentage": pct }),
            )],
            Event::Metering(usage) => vec![event(
                "meteringEvent",
                json!({"unit": "credit", "usage": usage}),
            )],
            Event::Exception {
                exception_type,
                message,
            } => vec![Bytes::from(
                Message::exception(exception_type, json!({ "message": message }).to_string())
                    .encode()
                    .expect("mock frames encode"),
            )],
            Event::Frame(message) => match message.encode() {
                Ok(bytes) => vec![Bytes::from(bytes)],
                Err(_) => return None,
            },
        })
    }
}

/// How the mock answers one refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRule {
    /// Issue a new refresh token and forget this one.
    pub rotate: bool,
    /// `expiresIn` of issued tokens, in seconds (`None`: the field is left out).
    pub expires_in: Option<u64>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Answer this status with an `InternalServerException` instead (5xx tests).
    pub fail_status: Option<u16>,
    /// `profileArn` returned by the social endpoint.
    pub profile_arn: Option<String>,
    /// For IdC: the `clientId` and `clientSecret` the request must carry.
    pub client: Option<(String, String)>,
}

impl Default for RefreshRule {
    fn default() -> Self {
        RefreshRule {
            rotate: false,
            expires_in: Some(3600),
            delay: Duration::ZERO,
            fail_status: None,
            profile_arn: None,
            client: None,
        }
    }
}
