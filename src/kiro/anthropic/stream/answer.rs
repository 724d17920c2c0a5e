//! The answer's frame: `message_start`, the stop reason and usage, the end of an SSE stream,
//! and the Message JSON.

use super::{Block, Open, StreamConverter};
use crate::kiro::anthropic::error::AnthropicError;
use crate::kiro::anthropic::json::{self, write_str, write_u64};

impl StreamConverter {
    pub(super) fn message_start(&mut self) {
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
