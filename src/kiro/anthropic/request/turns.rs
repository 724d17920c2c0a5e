//! Messages into turns: one turn per run of messages of one role, with the images, tool calls
//! and tool results their blocks carry.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::parse::{Block, Content, Message, Source};
use super::ToolNames;
use crate::kiro::anthropic::{AnthropicConfig, AnthropicError};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Role {
    User,
    Assistant,
}

pub(super) struct Image<'a> {
    pub(super) format: &'static str,
    pub(super) data: Cow<'a, str>,
}

pub(super) struct ToolResult {
    pub(super) id: String,
    pub(super) text: String,
    pub(super) is_error: bool,
}

pub(super) struct ToolUse<'a> {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) input: Option<&'a RawValue>,
}

pub(super) struct Turn<'a> {
    pub(super) role: Role,
    pub(super) text: String,
    pub(super) images: Vec<Image<'a>>,
    pub(super) results: Vec<ToolResult>,
    pub(super) uses: Vec<ToolUse<'a>>,
}

impl<'a> Turn<'a> {
    pub(super) fn new(role: Role, text: impl Into<String>) -> Self {
        Turn {
            role,
            text: text.into(),
            images: Vec::new(),
            results: Vec::new(),
            uses: Vec::new(),
        }
    }
}

pub(super) fn push_text(out: &mut String, text: &str, sep: &str) {
    if text.is_empty() {
        return;
    }
    if !out.is_empty() {
        out.push_str(sep);
    }
    out.push_str(text);
}

pub(super) fn image<'a>(source: Option<Source<'a>>, at: &str) -> Result<Image<'a>, AnthropicError> {
    let Some(source) = source else {
        return Err(AnthropicError::invalid_request(format!(
            "{at}.source: required for an image block"
        )));
    };
    match source.kind.as_deref() {
        Some("base64") => {}
        Some("url") => {
            return Err(AnthropicError::invalid_request(format!(
                "{at}.source: Kiro does not fetch image URLs; send the image as base64"
            )))
        }
        other => {
            return Err(AnthropicError::invalid_request(format!(
                "{at}.source.type: expected `base64`, got {}",
                other.map_or("nothing".to_owned(), |o| format!("`{o}`"))
            )))
        }
    }
    let format = match source.media_type.as_deref() {
        Some("image/jpeg") => "jpeg",
        Some("image/png") => "png",
        Some("image/gif") => "gif",
        Some("image/webp") => "webp",
        other => {
            return Err(AnthropicError::invalid_request(format!(
                "{at}.source.media_type: expected image/jpeg, image/png, image/gif or image/webp, got {}",
                other.map_or("nothing".to_owned(), |o| format!("`{o}`"))
            )))
        }
    };
    let data = source.data.map(|d| d.0).unwrap_or_default();
    if data.is_empty() {
        return Err(AnthropicError::invalid_request(format!(
            "{at}.source.data: the image data is empty"
        )));
    }
    Ok(Image { format, data })
}

/// A document block as text: text documents inline, others a placeholder.
fn document_text(source: Option<&Source<'_>>) -> String {
    match source {
        Some(s) if s.kind.as_deref() == Some("text") => {
            s.data.as_deref().unwrap_or_default().to_owned()
        }
        _ => "[a document was attached here; Kiro does not accept documents]".to_owned(),
    }
}

pub(super) struct Builder<'a, 'c> {
    pub(super) config: &'c AnthropicConfig,
    pub(super) names: ToolNames,
    pub(super) turns: Vec<Turn<'a>>,
}

impl<'a> Builder<'a, '_> {
    pub(super) fn message(&mut self, i: usize, message: Message<'a>) -> Result<(), AnthropicError> {
        let role = match &*message.role {
            "user" | "system" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                let other: String = other.chars().take(40).collect();
                return Err(AnthropicError::invalid_request(format!(
                    "messages.{i}.role: expected `user`, `assistant` or `system`, got `{other}`"
                )));
            }
        };
        let mut turn = Turn::new(role, String::new());
        let mut thinking = String::new();
        let text_sep = if role == Role::User { "\n" } else { "" };
        match message.content {
            Content::Text(text) => turn.text.push_str(&text),
            Content::Blocks(blocks) => {
                for (j, block) in blocks.into_iter().enumerate() {
                    self.block(i, j, role, block, &mut turn, &mut thinking, text_sep)?;
                }
            }
        }
        if !thinking.is_empty() {
            let mut text = String::with_capacity(thinking.len() + turn.text.len() + 24);
            text.push_str("<thinking>");
            text.push_str(&thinking);
            text.push_str("</thinking>");
            if !turn.text.is_empty() {
                text.push_str("\n\n");
                text.push_str(&turn.text);
            }
            turn.text = text;
        }
        // Consecutive turns of one role are one turn.
        match self.turns.last_mut() {
            Some(last) if last.role == role => {
                let sep = if role == Role::User { "\n" } else { "\n\n" };
                push_text(&mut last.text, &turn.text, sep);
                last.images.append(&mut turn.images);
                last.results.append(&mut turn.results);
                last.uses.append(&mut turn.uses);
            }
            _ => self.turns.push(turn),
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &mut self,
        i: usize,
        j: usize,
        role: Role,
        block: Block<'a>,
        turn: &mut Turn<'a>,
        thinking: &mut String,
        text_sep: &str,
    ) -> Result<(), AnthropicError> {
        let at = || format!("messages.{i}.content.{j}");
        match block.kind.as_deref().unwrap_or("text") {
            "text" | "mid_conv_system" => {
                if let Some(text) = &block.text {
                    push_text(&mut turn.text, text, text_sep);
                }
            }
            "image" => {
                let image = image(block.source, &at())?;
                turn.images.push(image);
            }
            "document" => push_text(
                &mut turn.text,
                &document_text(block.source.as_ref()),
                text_sep,
            ),
            "thinking" if role == Role::Assistant => {
                if let Some(t) = &block.thinking {
                    push_text(thinking, t, "\n");
                }
            }
            "tool_use" => {
                if role != Role::Assistant {
                    return Err(AnthropicError::invalid_request(format!(
                        "{}: `tool_use` blocks belong in assistant messages",
                        at()
                    )));
                }
                let id = block.id.map(|s| s.0.into_owned()).unwrap_or_default();
                let name = block.name.as_deref().unwrap_or_default();
                if id.is_empty() || name.is_empty() {
                    return Err(AnthropicError::invalid_request(format!(
                        "{}: a `tool_use` block needs an `id` and a `name`",
                        at()
                    )));
                }
                let name = self
                    .names
                    .shorten(name, self.config.limits.max_tool_name_len);
                turn.uses.push(ToolUse {
                    id,
                    name,
                    input: block.input,
                });
            }
            "tool_result" => {
                if role != Role::User {
                    return Err(AnthropicError::invalid_request(format!(
                        "{}: `tool_result` blocks belong in user messages",
                        at()
                    )));
                }
                let Some(id) = block.tool_use_id.filter(|id| !id.is_empty()) else {
                    return Err(AnthropicError::invalid_request(format!(
                        "{}.tool_use_id: required for a `tool_result` block",
                        at()
                    )));
                };
                let mut text = String::new();
                match block.content {
                    None => {}
                    Some(Content::Text(t)) => text.push_str(&t),
                    Some(Content::Blocks(parts)) => {
                        for (k, part) in parts.into_iter().enumerate() {
                            match part.kind.as_deref().unwrap_or("text") {
                                "image" => {
                                    let image =
                                        image(part.source, &format!("{}.content.{k}", at()))?;
                                    turn.images.push(image);
                                }
                                "document" => {
                                    push_text(&mut text, &document_text(part.source.as_ref()), "\n")
                                }
                                _ => {
                                    if let Some(t) = &part.text {
                                        push_text(&mut text, t, "\n");
                                    }
                                }
                            }
                        }
                    }
                }
                turn.results.push(ToolResult {
                    id: id.0.into_owned(),
                    text,
                    is_error: block.is_error.unwrap_or(false),
                });
            }
            // redacted_thinking, server tool blocks, search results, unknown types: Kiro has
            // no place for them.
            _ => {}
        }
        Ok(())
    }
}
