//! Kiro event stream → Anthropic SSE events or one Message JSON.
//!
//! [`StreamConverter`] is fed the upstream's bytes as they arrive, split anywhere, and
//! produces the same output whatever the split: frames are decoded (both CRCs checked) without
//! copying when a chunk holds whole frames, and every rule below works on frame content, never
//! on chunk boundaries.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::{AnthropicError, ErrorKind};
use super::json::{self, write_str, write_u64};
use super::request::{ConvertedRequest, ToolNames};
use crate::kiro::eventstream::{DecodeError, MAX_MESSAGE_LEN, MIN_MESSAGE_LEN, PRELUDE_LEN};

const THINKING_START: &str = "<thinking>";
const THINKING_END: &str = "</thinking>";

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

#[derive(Deserialize)]
struct TextEvent<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ReasoningEvent<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "reasoningText")]
    reasoning_text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ToolEvent<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "toolUseId")]
    tool_use_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(default)]
    stop: Option<bool>,
}

#[derive(Deserialize)]
struct ContextEvent {
    #[serde(default, rename = "contextUsagePercentage")]
    percentage: Option<f64>,
}

/// One frame, borrowed from the input.
struct Frame<'a> {
    message_type: Option<&'a str>,
    event_type: Option<&'a str>,
    exception_type: Option<&'a str>,
    payload: &'a [u8],
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Decodes the frame at the start of `buf` without copying: `Ok(None)` until it is whole.
fn frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    if buf.len() < PRELUDE_LEN {
        return Ok(None);
    }
    let total = be_u32(&buf[0..4]);
    let headers_len = be_u32(&buf[4..8]);
    let expected = be_u32(&buf[8..12]);
    let computed = crc32fast::hash(&buf[0..8]);
    if expected != computed {
        return Err(DecodeError::PreludeCrc { expected, computed });
    }
    let total_len = total as usize;
    if !(MIN_MESSAGE_LEN..=MAX_MESSAGE_LEN).contains(&total_len) {
        return Err(DecodeError::InvalidLength(total));
    }
    if headers_len as usize > total_len - MIN_MESSAGE_LEN {
        return Err(DecodeError::HeadersOverflow {
            headers: headers_len,
            total,
        });
    }
    if buf.len() < total_len {
        return Ok(None);
    }
    let expected = be_u32(&buf[total_len - 4..total_len]);
    let computed = crc32fast::hash(&buf[..total_len - 4]);
    if expected != computed {
        return Err(DecodeError::MessageCrc { expected, computed });
    }
    let headers_end = PRELUDE_LEN + headers_len as usize;
    let block = &buf[PRELUDE_LEN..headers_end];
    let mut frame = Frame {
        message_type: None,
        event_type: None,
        exception_type: None,
        payload: &buf[headers_end..total_len - 4],
    };
    let bad = DecodeError::BadHeader("a header runs past the header block");
    let mut at = 0usize;
    while at < block.len() {
        let name_len = block[at] as usize;
        at += 1;
        if name_len == 0 {
            return Err(DecodeError::BadHeader("empty header name"));
        }
        let name = block.get(at..at + name_len).ok_or(bad.clone())?;
        at += name_len;
        let tag = *block.get(at).ok_or(bad.clone())?;
        at += 1;
        let skip = match tag {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4 => 4,
            5 | 8 => 8,
            9 => 16,
            6 | 7 => {
                let len = block.get(at..at + 2).ok_or(bad.clone())?;
                let len = u16::from_be_bytes([len[0], len[1]]) as usize;
                at += 2;
                let value = block.get(at..at + len).ok_or(bad.clone())?;
                if tag == 7 {
                    let value = std::str::from_utf8(value)
                        .map_err(|_| DecodeError::BadHeader("string header is not UTF-8"))?;
                    match name {
                        b":message-type" => frame.message_type = Some(value),
                        b":event-type" => frame.event_type = Some(value),
                        b":exception-type" | b":error-code" => frame.exception_type = Some(value),
                        _ => {}
                    }
                }
                len
            }
            tag => {
                return Err(DecodeError::UnknownHeaderType {
                    name: String::from_utf8_lossy(name).into_owned(),
                    tag,
                })
            }
        };
        if block.len() < at + skip {
            return Err(bad);
        }
        at += skip;
    }
    Ok(Some((frame, total_len)))
}

/// The longest suffix of `s` that is a proper prefix of `tag` (ASCII tags only), in bytes.
fn partial_suffix(s: &str, tag: &str) -> usize {
    let max = (tag.len() - 1).min(s.len());
    (1..=max)
        .rev()
        .find(|&n| s.as_bytes()[s.len() - n..] == tag.as_bytes()[..n])
        .unwrap_or(0)
}

/// What an exception frame in the stream means for the client; `mid_answer` when answer
/// content came before it.
fn exception_error(exception: Option<&str>, payload: &[u8], mid_answer: bool) -> AnthropicError {
    let message = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("Message"))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&payload[..payload.len().min(512)]).into_owned()
        });
    let kind_name = exception.unwrap_or("an upstream error");
    let text = format!("{message} {}", String::from_utf8_lossy(payload));
    if text.contains("CONTENT_LENGTH_EXCEEDS_THRESHOLD") || text.contains("Input is too long") {
        return AnthropicError::invalid_request(format!(
            "prompt is too long: Kiro answered {kind_name}: {message}"
        ));
    }
    let kind = match exception.unwrap_or_default() {
        t if t.contains("Throttling") || t.contains("TooManyRequests") || t.contains("Quota") => {
            ErrorKind::RateLimit
        }
        _ if text.contains(crate::kiro::MONTHLY_QUOTA_MARKER) => ErrorKind::RateLimit,
        t if t.contains("Validation") => ErrorKind::InvalidRequest,
        t if t.contains("InternalServer") || t.contains("InternalFailure") => ErrorKind::Api,
        _ => ErrorKind::Overloaded,
    };
    let message = if mid_answer {
        format!("the upstream failed mid-answer ({kind_name}): {message}")
    } else {
        format!("the upstream answered {kind_name} before any content: {message}")
    };
    AnthropicError::new(kind, message)
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

    // ===== text, thinking, stop sequences =====

    fn text(&mut self, text: &str) {
        if self.stopped.is_some() || text.is_empty() {
            return;
        }
        match &mut self.think {
            Think::Off => self.plain(text),
            Think::After(n) => {
                let mut rest = text;
                while *n > 0 && rest.starts_with('\n') {
                    rest = &rest[1..];
                    *n -= 1;
                }
                if !rest.is_empty() {
                    self.think = Think::Off;
                    self.plain(rest);
                }
            }
            Think::Detect(pending) => {
                pending.push_str(text);
                let trimmed = pending.trim_start();
                if let Some(rest) = trimmed.strip_prefix(THINKING_START) {
                    let rest = rest.to_owned();
                    self.think = Think::Inside {
                        hold: String::new(),
                        strip_newline: true,
                    };
                    self.text(&rest);
                } else if !THINKING_START.starts_with(trimmed) {
                    let pending = std::mem::take(pending);
                    self.think = Think::Off;
                    self.plain(&pending);
                }
            }
            Think::Inside {
                hold,
                strip_newline,
            } => {
                let mut s = std::mem::take(hold);
                s.push_str(text);
                if *strip_newline && !s.is_empty() {
                    if s.starts_with('\n') {
                        s.remove(0);
                    }
                    *strip_newline = false;
                }
                if let Some(at) = s.find(THINKING_END) {
                    let rest = s[at + THINKING_END.len()..].to_owned();
                    self.thinking_delta(&s[..at]);
                    self.close_thinking();
                    self.think = Think::After(2);
                    self.text(&rest);
                } else {
                    let keep = partial_suffix(&s, THINKING_END);
                    let emit = s.len() - keep;
                    if let Think::Inside { hold, .. } = &mut self.think {
                        hold.push_str(&s[emit..]);
                    }
                    self.thinking_delta(&s[..emit]);
                }
            }
        }
    }

    /// Flushes text held back by the thinking parser and the stop-sequence matcher.
    fn flush_text(&mut self) {
        match std::mem::replace(&mut self.think, Think::Off) {
            Think::Detect(pending) => {
                if !pending.trim().is_empty() {
                    self.plain(&pending);
                }
            }
            Think::Inside { hold, .. } => {
                self.thinking_delta(&hold);
                self.close_thinking();
                self.think = Think::After(2);
            }
            other => self.think = other,
        }
        if !self.stop_hold.is_empty() {
            let held = std::mem::take(&mut self.stop_hold);
            self.text_delta(&held);
        }
    }

    /// Answer text, through the stop-sequence matcher.
    fn plain(&mut self, text: &str) {
        if self.ctx.stop_sequences.is_empty() {
            self.text_delta(text);
            return;
        }
        let mut s = std::mem::take(&mut self.stop_hold);
        s.push_str(text);
        let hit = self
            .ctx
            .stop_sequences
            .iter()
            .filter_map(|seq| s.find(seq.as_str()).map(|at| (at, seq)))
            .min_by_key(|(at, _)| *at)
            .map(|(at, seq)| (at, seq.clone()));
        if let Some((at, seq)) = hit {
            self.text_delta(&s[..at]);
            self.stopped = Some(seq);
            return;
        }
        let keep = self
            .ctx
            .stop_sequences
            .iter()
            .map(|seq| {
                let max = (seq.len().saturating_sub(1)).min(s.len());
                (1..=max)
                    .rev()
                    .find(|&n| {
                        s.is_char_boundary(s.len() - n) && seq.starts_with(&s[s.len() - n..])
                    })
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let emit = s.len() - keep;
        self.text_delta(&s[..emit]);
        self.stop_hold.push_str(&s[emit..]);
    }

    fn text_delta(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if self.open != Open::Text {
            self.close_block();
            self.start_block(Open::Text, br#"{"type":"text","text":""}"#);
        }
        self.output_units += json::token_units(text);
        if self.sse {
            self.delta_head();
            self.out
                .extend_from_slice(br#"{"type":"text_delta","text":"#);
            write_str(&mut self.out, text);
            self.out.extend_from_slice(b"}}\n\n");
        } else if let Some(Block::Text(t)) = self.blocks.last_mut() {
            t.push_str(text);
        }
    }

    fn thinking_delta(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if self.open != Open::Thinking {
            self.close_block();
            self.start_block(Open::Thinking, br#"{"type":"thinking","thinking":""}"#);
        }
        self.output_units += json::token_units(text);
        self.signature = json::fnv1a(text.as_bytes(), self.signature);
        if self.sse {
            self.delta_head();
            self.out
                .extend_from_slice(br#"{"type":"thinking_delta","thinking":"#);
            write_str(&mut self.out, text);
            self.out.extend_from_slice(b"}}\n\n");
        } else if let Some(Block::Thinking(t, _)) = self.blocks.last_mut() {
            t.push_str(text);
        }
    }

    fn close_thinking(&mut self) {
        if self.open == Open::Thinking {
            self.close_block();
        }
    }

    // ===== tools =====

    fn tool(&mut self, event: ToolEvent<'_>) {
        if self.stopped.is_some() {
            return;
        }
        let fragment: Option<Cow<'_, str>> = event.input.map(|raw| {
            let raw = raw.get();
            if raw.starts_with('"') {
                serde_json::from_str::<Cow<'_, str>>(raw).unwrap_or(Cow::Borrowed(""))
            } else if raw == "null" {
                Cow::Borrowed("")
            } else {
                Cow::Borrowed(raw)
            }
        });
        match event.tool_use_id.as_deref().filter(|id| !id.is_empty()) {
            Some(id) if self.open == Open::Tool && self.tool_id == id => {}
            Some(id) => {
                if self.closed_tools.contains(id) {
                    return;
                }
                self.flush_text();
                self.close_block();
                let sent = event.name.as_deref().unwrap_or_default();
                let name = match self.ctx.tool_names.original(sent) {
                    "" => "unknown_tool".to_owned(),
                    n => n.to_owned(),
                };
                self.tool_id.clear();
                self.tool_id.push_str(id);
                self.tool_input.clear();
                self.tool_input_sent = false;
                self.saw_tool = true;
                let mut start = Vec::with_capacity(64 + id.len() + name.len());
                start.extend_from_slice(br#"{"type":"tool_use","id":"#);
                write_str(&mut start, id);
                start.extend_from_slice(br#","name":"#);
                write_str(&mut start, &name);
                start.extend_from_slice(br#","input":{}}"#);
                if !self.sse {
                    self.blocks.push(Block::Tool {
                        id: id.to_owned(),
                        name,
                        input: String::new(),
                    });
                }
                self.start_block(Open::Tool, &start);
            }
            None if self.open == Open::Tool => {}
            None => return,
        }
        if let Some(fragment) = fragment.filter(|f| !f.is_empty()) {
            self.input_delta(&fragment);
        }
        if event.stop == Some(true) {
            self.close_block();
        }
    }

    fn input_delta(&mut self, fragment: &str) {
        self.tool_input.push_str(fragment);
        self.tool_input_sent = true;
        self.output_units += json::token_units(fragment);
        if self.sse {
            self.delta_head();
            self.out
                .extend_from_slice(br#"{"type":"input_json_delta","partial_json":"#);
            write_str(&mut self.out, fragment);
            self.out.extend_from_slice(b"}}\n\n");
        } else if let Some(Block::Tool { input, .. }) = self.blocks.last_mut() {
            input.push_str(fragment);
        }
    }

    // ===== blocks =====

    fn start_block(&mut self, kind: Open, content_block: &[u8]) {
        self.open = kind;
        let index = self.next_index;
        self.next_index += 1;
        if self.sse {
            self.out.extend_from_slice(
                b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":",
            );
            write_u64(&mut self.out, index);
            self.out.extend_from_slice(br#","content_block":"#);
            self.out.extend_from_slice(content_block);
            self.out.extend_from_slice(b"}\n\n");
        } else {
            match kind {
                Open::Text => self.blocks.push(Block::Text(String::new())),
                Open::Thinking => self
                    .blocks
                    .push(Block::Thinking(String::new(), String::new())),
                // Tool blocks are pushed by `tool`, which knows the id and name.
                Open::Tool | Open::None => {}
            }
        }
    }

    fn delta_head(&mut self) {
        self.out.extend_from_slice(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
        );
        write_u64(&mut self.out, self.next_index - 1);
        self.out.extend_from_slice(br#","delta":"#);
    }

    fn signature_value(&self) -> String {
        format!("kiro-emulated-thinking-{:016x}", self.signature)
    }

    fn close_block(&mut self) {
        match self.open {
            Open::None => return,
            Open::Thinking => {
                let signature = self.signature_value();
                self.signature = json::FNV_OFFSET;
                if self.sse {
                    self.delta_head();
                    self.out
                        .extend_from_slice(br#"{"type":"signature_delta","signature":"#);
                    write_str(&mut self.out, &signature);
                    self.out.extend_from_slice(b"}}\n\n");
                } else if let Some(Block::Thinking(_, s)) = self.blocks.last_mut() {
                    *s = signature;
                }
            }
            Open::Tool => {
                if !self.tool_input_sent {
                    // A tool without parameters: Kiro sends no input at all.
                    self.input_delta("{}");
                }
                let id = std::mem::take(&mut self.tool_id);
                self.closed_tools.insert(id);
            }
            Open::Text => {}
        }
        self.open = Open::None;
        if self.sse {
            self.out.extend_from_slice(
                b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":",
            );
            write_u64(&mut self.out, self.next_index - 1);
            self.out.extend_from_slice(b"}\n\n");
        }
    }

    fn message_start(&mut self) {
        self.out.extend_from_slice(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":",
        );
        write_str(&mut self.out, &self.ctx.message_id);
        self.out
            .extend_from_slice(br#","type":"message","role":"assistant","content":[],"model":"#);
        write_str(&mut self.out, &self.ctx.model);
        self.out.extend_from_slice(
            br#","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":"#,
        );
        write_u64(&mut self.out, self.ctx.input_tokens);
        self.out.extend_from_slice(
            br#","cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}"#,
        );
        self.out.extend_from_slice(b"\n\n");
    }

    fn stop_reason(&self) -> &'static str {
        if self.stopped.is_some() {
            "stop_sequence"
        } else if self.context_exceeded {
            "model_context_window_exceeded"
        } else if self.max_tokens || self.truncated_tool {
            "max_tokens"
        } else if self.saw_tool {
            "tool_use"
        } else {
            "end_turn"
        }
    }

    fn usage(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"input_tokens":"#);
        write_u64(out, self.context_tokens.unwrap_or(self.ctx.input_tokens));
        out.extend_from_slice(
            br#","cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":"#,
        );
        write_u64(out, json::units_to_tokens(self.output_units).max(1));
        out.push(b'}');
    }

    /// The upstream ended: flush what is held, close the open block, and (SSE) write
    /// `message_delta` and `message_stop`. A stream cut inside a frame is an error.
    pub fn finish(&mut self) {
        if self.done {
            return;
        }
        if !self.buf.is_empty() {
            let n = self.buf.len();
            self.fail(AnthropicError::api(format!(
                "the upstream event stream ended inside a frame ({n} bytes left over)"
            )));
            return;
        }
        if self.stopped.is_none() {
            self.flush_text();
        }
        if self.open == Open::Tool
            && !self.tool_input.trim().is_empty()
            && serde_json::from_str::<serde::de::IgnoredAny>(&self.tool_input).is_err()
        {
            // Kiro cut a tool call short (no `stop`, incomplete input): the answer ran out.
            self.truncated_tool = true;
        }
        self.close_block();
        self.done = true;
        if self.sse {
            self.out.extend_from_slice(
                b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"",
            );
            self.out.extend_from_slice(self.stop_reason().as_bytes());
            self.out.extend_from_slice(br#"","stop_sequence":"#);
            match &self.stopped {
                Some(seq) => write_str(&mut self.out, seq),
                None => self.out.extend_from_slice(b"null"),
            }
            self.out.extend_from_slice(br#"},"usage":"#);
            let mut usage = Vec::with_capacity(128);
            self.usage(&mut usage);
            self.out.extend_from_slice(&usage);
            self.out.extend_from_slice(
                b"}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            );
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

    /// The Message JSON (after [`finish`](Self::finish)), or the error that ended the answer.
    pub fn into_message(mut self) -> Result<Vec<u8>, AnthropicError> {
        if !self.done {
            self.finish();
        }
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        let mut out = Vec::with_capacity(256 + self.blocks.iter().map(block_len).sum::<usize>());
        out.extend_from_slice(br#"{"id":"#);
        write_str(&mut out, &self.ctx.message_id);
        out.extend_from_slice(br#","type":"message","role":"assistant","model":"#);
        write_str(&mut out, &self.ctx.model);
        out.extend_from_slice(br#","content":["#);
        for (i, block) in self.blocks.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match block {
                Block::Text(t) => {
                    out.extend_from_slice(br#"{"type":"text","text":"#);
                    write_str(&mut out, t);
                }
                Block::Thinking(t, s) => {
                    out.extend_from_slice(br#"{"type":"thinking","thinking":"#);
                    write_str(&mut out, t);
                    out.extend_from_slice(br#","signature":"#);
                    write_str(&mut out, s);
                }
                Block::Tool { id, name, input } => {
                    out.extend_from_slice(br#"{"type":"tool_use","id":"#);
                    write_str(&mut out, id);
                    out.extend_from_slice(br#","name":"#);
                    write_str(&mut out, name);
                    out.extend_from_slice(br#","input":"#);
                    let input = input.trim();
                    let object = input.starts_with('{')
                        && serde_json::from_str::<serde::de::IgnoredAny>(input).is_ok();
                    out.extend_from_slice(if object { input.as_bytes() } else { b"{}" });
                }
            }
            out.push(b'}');
        }
        out.extend_from_slice(br#"],"stop_reason":""#);
        out.extend_from_slice(self.stop_reason().as_bytes());
        out.extend_from_slice(br#"","stop_sequence":"#);
        match &self.stopped {
            Some(seq) => write_str(&mut out, seq),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(br#","usage":"#);
        self.usage(&mut out);
        out.push(b'}');
        Ok(out)
    }
}

fn block_len(block: &Block) -> usize {
    match block {
        Block::Text(t) => t.len() + 32,
        Block::Thinking(t, s) => t.len() + s.len() + 48,
        Block::Tool { id, name, input } => id.len() + name.len() + input.len() + 48,
    }
}
