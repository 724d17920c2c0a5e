//! Frames decoded from the upstream's bytes without copying, the event payloads the
//! converter reads, and what an exception frame means for the client.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::kiro::anthropic::error::{AnthropicError, ErrorKind};
use crate::kiro::eventstream::{DecodeError, MAX_MESSAGE_LEN, MIN_MESSAGE_LEN, PRELUDE_LEN};

#[derive(Deserialize)]
pub(super) struct TextEvent<'a> {
    #[serde(borrow, default)]
    pub(super) content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct ReasoningEvent<'a> {
    #[serde(borrow, default)]
    pub(super) text: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "reasoningText")]
    pub(super) reasoning_text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct ToolEvent<'a> {
    #[serde(borrow, default)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "toolUseId")]
    pub(super) tool_use_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) input: Option<&'a RawValue>,
    #[serde(default)]
    pub(super) stop: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct ContextEvent {
    #[serde(default, rename = "contextUsagePercentage")]
    pub(super) percentage: Option<f64>,
}

/// One frame, borrowed from the input.
pub(super) struct Frame<'a> {
    pub(super) message_type: Option<&'a str>,
    pub(super) event_type: Option<&'a str>,
    pub(super) exception_type: Option<&'a str>,
    pub(super) payload: &'a [u8],
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Decodes the frame at the start of `buf` without copying: `Ok(None)` until it is whole.
pub(super) fn frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
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

/// What an exception frame in the stream means for the client; `mid_answer` when answer
/// content came before it.
pub(super) fn exception_error(
    exception: Option<&str>,
    payload: &[u8],
    mid_answer: bool,
) -> AnthropicError {
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
