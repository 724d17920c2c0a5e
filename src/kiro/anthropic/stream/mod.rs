//! Kiro event stream → Anthropic SSE events or one Message JSON.
//!
//! [`StreamConverter`] is fed the upstream's bytes as they arrive, split anywhere, and
//! produces the same output whatever the split: frames are decoded (both CRCs checked) without
//! copying when a chunk holds whole frames, and every rule below works on frame content, never
//! on chunk boundaries.

use std::collections::HashSet;
use std::fmt;

use bytes::Bytes;

use super::error::AnthropicError;
use super::json;
use super::request::{ConvertedRequest, ToolNames};

mod answer;
mod blocks;
mod frame;
mod text;

use frame::{exception_error, frame, ContextEvent, Frame, ReasoningEvent, TextEvent, ToolEvent};

/// What the answer's conversion needs from the request.
#[derive(Debug, Clone)]
pub struct AnswerContext {
    /// The `id` of the answer (`msg_…`).
    pub message_id: String,
    /// The model as the client named it (echoed).
    pub model: String,
    /// The model's context window, for `contextUsagePercentage`.
    pub context_window: u64,
    /// Parse `<thinking>…</thinking>` at the start of the answer into a thinking block.
    pub thinking: bool,
    /// Cut the text at the first of these and stop with `stop_reason: "stop_sequence"`.
    pub stop_sequences: Vec<String>,
    /// Shortened tool names to map back.
    pub tool_names: ToolNames,
    /// The input-token estimate, used until (unless) a `contextUsageEvent` says better.
    pub input_tokens: u64,
}

impl AnswerContext {
    /// The context of a converted request's answer.
    pub fn new(request: &ConvertedRequest, message_id: impl Into<String>) -> Self {
        AnswerContext {
            message_id: message_id.into(),
            model: request.model.clone(),
            context_window: request.context_window,
            thinking: request.thinking,
            stop_sequences: request.stop_sequences.clone(),
            tool_names: request.tool_names.clone(),
            input_tokens: request.input_tokens,
        }
    }
}

/// A fresh `msg_…` id.
pub fn message_id() -> String {
    format!("msg_{:032x}", fastrand::u128(..))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    Thinking,
    Tool,
}

enum Think {
    /// Not asked: all text is text.
    Off,
    /// At the start: text held while it may still be whitespace and `<thinking>`.
    Detect(String),
    /// Inside the thinking segment: the held tail may be the start of `</thinking>`.
    Inside { hold: String, strip_newline: bool },
    /// After `</thinking>`: up to this many leading newlines are dropped.
    After(u8),
}

enum Block {
    Text(String),
    Thinking(String, String),
    Tool {
        id: String,
        name: String,
        input: String,
    },
}

/// Converts a Kiro event stream into Anthropic SSE (`stream: true`) or one Message JSON.
///
/// ```
/// use tower_account_pool::kiro::anthropic::{AnswerContext, StreamConverter};
/// use tower_account_pool::kiro::eventstream::Message;
///
/// let context = AnswerContext {
///     message_id: "msg_1".into(),
///     model: "claude-sonnet-4-5".into(),
///     context_window: 200_000,
///     thinking: false,
///     stop_sequences: vec![],
///     tool_names: Default::default(),
///     input_tokens: 10,
/// };
/// let frame = Message::event("assistantResponseEvent", br#"{"content":"Hi"}"#.to_vec())
///     .encode()
///     .unwrap();
/// let mut sse = StreamConverter::sse(context.clone());
/// sse.push(&frame[..7]); // any split
/// sse.push(&frame[7..]);
/// sse.finish();
/// let out = String::from_utf8(sse.take_output().to_vec()).unwrap();
/// assert!(out.starts_with("event: message_start\n"));
/// assert!(out.contains(r#"{"type":"text_delta","text":"Hi"}"#));
/// assert!(out.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
///
/// let mut message = StreamConverter::message(context);
/// message.push(&frame);
/// message.finish();
/// let json: serde_json::Value = serde_json::from_slice(&message.into_message().unwrap()).unwrap();
/// assert_eq!(json["content"][0]["text"], "Hi");
/// assert_eq!(json["stop_reason"], "end_turn");
/// ```
pub struct StreamConverter {
    ctx: AnswerContext,
    sse: bool,
    /// Undecoded upstream bytes.
    buf: Vec<u8>,
    /// SSE output not yet taken.
    out: Vec<u8>,
    next_index: u64,
    open: Open,
    tool_id: String,
    tool_input: String,
    tool_input_sent: bool,
    closed_tools: HashSet<String>,
    think: Think,
    stop_hold: String,
    stopped: Option<String>,
    saw_tool: bool,
    truncated_tool: bool,
    max_tokens: bool,
    context_exceeded: bool,
    context_tokens: Option<u64>,
    output_units: u64,
    signature: u64,
    blocks: Vec<Block>,
    error: Option<AnthropicError>,
    done: bool,
    /// Answer content (text, thinking, a tool call) has arrived.
    content_seen: bool,
}

impl fmt::Debug for StreamConverter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamConverter")
            .field("sse", &self.sse)
            .field("buffered", &self.buf.len())
            .field("blocks", &self.next_index)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl StreamConverter {
    /// A converter producing Anthropic SSE; `message_start` is already in the output.
    pub fn sse(ctx: AnswerContext) -> Self {
        let mut c = Self::new(ctx, true);
        c.message_start();
        c
    }

    /// A converter building one Message JSON ([`into_message`](Self::into_message)).
    pub fn message(ctx: AnswerContext) -> Self {
        Self::new(ctx, false)
    }

    fn new(ctx: AnswerContext, sse: bool) -> Self {
        let think = if ctx.thinking {
            Think::Detect(String::new())
        } else {
            Think::Off
        };
        StreamConverter {
            ctx,
            sse,
            buf: Vec::new(),
            out: Vec::with_capacity(1024),
            next_index: 0,
            open: Open::None,
            tool_id: String::new(),
            tool_input: String::new(),
            tool_input_sent: false,
            closed_tools: HashSet::new(),
            think,
            stop_hold: String::new(),
            stopped: None,
            saw_tool: false,
            truncated_tool: false,
            max_tokens: false,
            context_exceeded: false,
            context_tokens: None,
            output_units: 0,
            signature: json::FNV_OFFSET,
            blocks: Vec::new(),
            error: None,
            done: false,
            content_seen: false,
        }
    }

    /// Answer content (text, thinking or a tool call) has arrived from the upstream; until
    /// then only metadata (usage, metering, …) has. An error before any content can still
    /// be answered with an HTTP error status instead of a 200 stream.
    pub fn has_content(&self) -> bool {
        self.content_seen
    }

    /// The answer ended (with `message_stop` or an `error` event): nothing more is produced.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The SSE bytes produced so far (empty for a Message converter).
    pub fn take_output(&mut self) -> Bytes {
        if self.out.is_empty() {
            return Bytes::new();
        }
        let cap = self.out.capacity().clamp(1024, 64 * 1024);
        Bytes::from(std::mem::replace(&mut self.out, Vec::with_capacity(cap)))
    }

    /// SSE bytes are waiting in the output.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Feeds upstream bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.done {
            return;
        }
        if self.buf.is_empty() {
            let used = self.frames(chunk);
            if !self.done {
                self.buf.extend_from_slice(&chunk[used..]);
            }
        } else {
            self.buf.extend_from_slice(chunk);
            let buf = std::mem::take(&mut self.buf);
            let used = self.frames(&buf);
            self.buf = buf;
            self.buf.drain(..used);
            if self.done {
                self.buf.clear();
            }
        }
    }

    /// Decodes and handles every whole frame at the start of `bytes`; returns the bytes used.
    fn frames(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        while !self.done {
            match frame(&bytes[at..]) {
                Ok(Some((frame, used))) => {
                    at += used;
                    self.handle(frame);
                }
                Ok(None) => break,
                Err(e) => {
                    self.fail(AnthropicError::api(format!(
                        "the upstream event stream is corrupt: {e}"
                    )));
                    break;
                }
            }
        }
        at
    }

    fn handle(&mut self, frame: Frame<'_>) {
        match frame.message_type {
            Some("exception") | Some("error") => {
                if frame
                    .exception_type
                    .is_some_and(|t| t.contains("ContentLengthExceeded"))
                {
                    // The answer hit Kiro's output limit: a normal end, cut short.
                    self.max_tokens = true;
                    self.finish();
                    return;
                }
                let mid_answer = self.content_seen;
                self.fail(exception_error(
                    frame.exception_type,
                    frame.payload,
                    mid_answer,
                ));
                return;
            }
            _ => {}
        }
        match frame.event_type {
            Some("assistantResponseEvent") => {
                if let Ok(TextEvent {
                    content: Some(text),
                }) = serde_json::from_slice(frame.payload)
                {
                    self.content_seen |= !text.is_empty();
                    self.text(&text);
                }
            }
            Some("reasoningContentEvent") => {
                if let Ok(event) = serde_json::from_slice::<ReasoningEvent<'_>>(frame.payload) {
                    if let Some(t) = event.text.or(event.reasoning_text) {
                        self.content_seen |= !t.is_empty();
                        if self.stopped.is_none() && !t.is_empty() {
                            self.thinking_delta(&t);
                        }
                    }
                }
            }
            Some("toolUseEvent") => {
                if let Ok(event) = serde_json::from_slice::<ToolEvent<'_>>(frame.payload) {
                    self.content_seen = true;
                    self.tool(event);
                }
            }
            Some("contextUsageEvent") => {
                if let Ok(ContextEvent {
                    percentage: Some(pct),
                }) = serde_json::from_slice(frame.payload)
                {
                    if pct.is_finite() && pct >= 0.0 {
                        let tokens = (pct * self.ctx.context_window as f64 / 100.0).round();
                        self.context_tokens = Some(tokens.min(u64::MAX as f64) as u64);
                        self.context_exceeded = pct >= 100.0;
                    }
                }
            }
            // meteringEvent, followupPromptEvent, messageMetadataEvent, unknown: nothing to
            // tell the client.
            _ => {}
        }
    }

    /// The answer failed: SSE gets an `error` event (and nothing after it); a Message
    /// converter keeps the error for [`into_message`](Self::into_message).
    pub fn fail(&mut self, error: AnthropicError) {
        if self.done {
            return;
        }
        self.done = true;
        if self.sse {
            error.write_sse(&mut self.out);
        }
        self.error = Some(error);
    }

    /// The error that ended the answer, if one did.
    pub fn error(&self) -> Option<&AnthropicError> {
        self.error.as_ref()
    }
}
