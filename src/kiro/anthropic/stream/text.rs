//! Answer text: the `<thinking>` segment parsed out of it (when thinking was asked), stop
//! sequences matched across chunks, and the text and thinking deltas.

use super::{Block, Open, StreamConverter, Think};
use crate::kiro::anthropic::json::{self, write_str};

const THINKING_START: &str = "<thinking>";
const THINKING_END: &str = "</thinking>";

/// The longest suffix of `s` that is a proper prefix of `tag` (ASCII tags only), in bytes.
fn partial_suffix(s: &str, tag: &str) -> usize {
    let max = (tag.len() - 1).min(s.len());
    (1..=max)
        .rev()
        .find(|&n| s.as_bytes()[s.len() - n..] == tag.as_bytes()[..n])
        .unwrap_or(0)
}

impl StreamConverter {
    pub(super) fn text(&mut self, text: &str) {
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
    pub(super) fn flush_text(&mut self) {
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

    pub(super) fn thinking_delta(&mut self, text: &str) {
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
}
