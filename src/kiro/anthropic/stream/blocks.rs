//! Content blocks: tool calls and their input, and opening and closing blocks (with the
//! thinking block's signature).

use std::borrow::Cow;

use super::frame::ToolEvent;
use super::{Block, Open, StreamConverter};
use crate::kiro::anthropic::json::{self, write_str, write_u64};

impl StreamConverter {
    pub(super) fn tool(&mut self, event: ToolEvent<'_>) {
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

    pub(super) fn start_block(&mut self, kind: Open, content_block: &[u8]) {
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

    pub(super) fn delta_head(&mut self) {
        self.out.extend_from_slice(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
        );
        write_u64(&mut self.out, self.next_index - 1);
        self.out.extend_from_slice(br#","delta":"#);
    }

    fn signature_value(&self) -> String {
        format!("kiro-emulated-thinking-{:016x}", self.signature)
    }

    pub(super) fn close_block(&mut self) {
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
}
