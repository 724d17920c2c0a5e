//! Anthropic Messages request → CodeWhisperer `generateAssistantResponse` body.
//!
//! See the [module docs](super) for the rules; [`convert_request`] is the entry point.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::AnthropicError;
use super::json::{self, write_str};
use super::AnthropicConfig;

/// Kiro's limits as this converter enforces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest tool name sent (default 63): longer names are shortened to exactly this length
    /// as `<prefix>_<8 hex digits of a hash of the full name>` and mapped back in the answer.
    pub max_tool_name_len: usize,
    /// Longest tool description sent, in characters (default 10 000): longer ones are cut.
    pub max_description_chars: usize,
    /// Most tools declared by the client (default 128): more is a 400.
    pub max_tools: usize,
    /// Most prompt text, in bytes (system, messages, tool results, tool definitions; images
    /// not counted; default 700 000, where Kiro answers "Input is too long"): more is a 400
    /// whose message says `prompt is too long`, which makes Claude Code compact.
    pub max_prompt_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tool_name_len: 63,
            max_description_chars: 10_000,
            max_tools: 128,
            max_prompt_bytes: 700_000,
        }
    }
}

/// The result of [`convert_request`]: the CodeWhisperer body and what the answer's conversion
/// needs to know.
#[derive(Clone)]
pub struct ConvertedRequest {
    /// The `generateAssistantResponse` JSON body (no `profileArn`: that is set per attempt).
    pub body: Bytes,
    /// The model name as the client sent it (echoed in the answer).
    pub model: String,
    /// The model table's id for it (what the pool selects accounts for).
    pub model_id: String,
    /// The Kiro `modelId`.
    pub kiro_model: String,
    /// The model's context window (for `contextUsagePercentage`).
    pub context_window: u64,
    /// `stream: true` was asked.
    pub stream: bool,
    /// Thinking was asked (`enabled` or `adaptive`): `<thinking>` is parsed out of the answer.
    pub thinking: bool,
    /// The client's `stop_sequences` (applied to the answer's text).
    pub stop_sequences: Vec<String>,
    /// Shortened tool names and their originals.
    pub tool_names: ToolNames,
    /// Estimated input tokens (see the module docs for the method).
    pub input_tokens: u64,
}

impl fmt::Debug for ConvertedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConvertedRequest")
            .field("body_len", &self.body.len())
            .field("model", &self.model)
            .field("kiro_model", &self.kiro_model)
            .field("stream", &self.stream)
            .field("thinking", &self.thinking)
            .field("input_tokens", &self.input_tokens)
            .finish_non_exhaustive()
    }
}

/// Tool names shortened for Kiro, and the originals they stand for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolNames {
    map: Vec<(String, String)>,
    /// Position in `map` of each short name.
    index: HashMap<String, usize>,
}

impl ToolNames {
    /// The client's name for a name Kiro answered with (unchanged when it was not shortened).
    pub fn original<'a>(&'a self, sent: &'a str) -> &'a str {
        self.index
            .get(sent)
            .map(|&at| &self.map[at])
            .or_else(|| {
                self.map
                    .iter()
                    .find(|(short, _)| short.eq_ignore_ascii_case(sent))
            })
            .map_or(sent, |(_, original)| original.as_str())
    }

    /// How many names were shortened.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No name was shortened.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn shorten(&mut self, name: &str, limit: usize) -> String {
        let short = shorten_tool_name(name, limit);
        if short != name && !self.index.contains_key(&short) {
            self.index.insert(short.clone(), self.map.len());
            self.map.push((short.clone(), name.to_owned()));
        }
        short
    }
}

/// A tool name as sent to Kiro: unchanged up to `limit` bytes, else the longest prefix that
/// leaves room for `_` and 8 hex digits of the FNV-1a hash of the whole name (deterministic).
pub fn shorten_tool_name(name: &str, limit: usize) -> String {
    if name.len() <= limit {
        return name.to_owned();
    }
    let hash = json::fnv1a(name.as_bytes(), json::FNV_OFFSET);
    let mut cut = limit.saturating_sub(9);
    while cut > 0 && !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{:08x}", &name[..cut], (hash >> 32) as u32 ^ hash as u32)
}

// ===== parsing =====

/// A string borrowed from the body when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// `content`: a string or a list of blocks (null: no blocks).
enum Content<'a> {
    Text(Str<'a>),
    Blocks(Vec<Block<'a>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of content blocks")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Str(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Str(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Content::Text(Str(Cow::Owned(v))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content::Blocks(Vec::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content::Blocks(Vec::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut blocks = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(64));
                while let Some(block) = seq.next_element()? {
                    blocks.push(block);
                }
                Ok(Content::Blocks(blocks))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    thinking: Option<Str<'a>>,
    #[serde(borrow, default)]
    source: Option<Source<'a>>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_use_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(default)]
    is_error: Option<bool>,
}

#[derive(Deserialize)]
struct Source<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    media_type: Option<Str<'a>>,
    #[serde(borrow, default)]
    data: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Str<'a>,
    #[serde(borrow)]
    content: Content<'a>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    description: Option<Str<'a>>,
    #[serde(borrow, default)]
    input_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Thinking {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    budget_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct OutputConfig {
    #[serde(default)]
    effort: Option<String>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow, default)]
    user_id: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow, default)]
    system: Option<Content<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(borrow, default)]
    stop_sequences: Option<Vec<Str<'a>>>,
    #[serde(borrow, default)]
    tools: Option<Vec<Tool<'a>>>,
    #[serde(default)]
    thinking: Option<Thinking>,
    #[serde(default)]
    output_config: Option<OutputConfig>,
    #[serde(borrow, default)]
    metadata: Option<Metadata<'a>>,
}

// ===== conversion =====

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    User,
    Assistant,
}

struct Image<'a> {
    format: &'static str,
    data: Cow<'a, str>,
}

struct ToolResult {
    id: String,
    text: String,
    is_error: bool,
}

struct ToolUse<'a> {
    id: String,
    name: String,
    input: Option<&'a RawValue>,
}

struct Turn<'a> {
    role: Role,
    text: String,
    images: Vec<Image<'a>>,
    results: Vec<ToolResult>,
    uses: Vec<ToolUse<'a>>,
}

impl<'a> Turn<'a> {
    fn new(role: Role, text: impl Into<String>) -> Self {
        Turn {
            role,
            text: text.into(),
            images: Vec::new(),
            results: Vec::new(),
            uses: Vec::new(),
        }
    }
}

fn push_text(out: &mut String, text: &str, sep: &str) {
    if text.is_empty() {
        return;
    }
    if !out.is_empty() {
        out.push_str(sep);
    }
    out.push_str(text);
}

fn image<'a>(source: Option<Source<'a>>, at: &str) -> Result<Image<'a>, AnthropicError> {
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

struct Builder<'a, 'c> {
    config: &'c AnthropicConfig,
    names: ToolNames,
    turns: Vec<Turn<'a>>,
}

impl<'a> Builder<'a, '_> {
    fn message(&mut self, i: usize, message: Message<'a>) -> Result<(), AnthropicError> {
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

/// The conversation id Claude Code's `metadata.user_id` carries, if it is a UUID.
fn session_id(user_id: &str) -> Option<String> {
    let candidate: Cow<'_, str> = if user_id.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(user_id).ok()?;
        Cow::Owned(v.get("session_id")?.as_str()?.to_owned())
    } else {
        let at = user_id.rfind("session_")?;
        Cow::Borrowed(&user_id[at + "session_".len()..])
    };
    let c = candidate.as_bytes();
    let is_uuid = c.len() == 36
        && c.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    is_uuid.then(|| candidate.to_ascii_lowercase())
}

/// A fresh random UUID v4 (not secret: `fastrand`).
pub(crate) fn random_uuid() -> String {
    let mut buf = [0u8; 36];
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_be_bytes())
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

fn parse_error(e: serde_json::Error) -> AnthropicError {
    AnthropicError::invalid_request(format!(
        "the request body is not a valid Messages request: {e}"
    ))
}

/// Converts an Anthropic Messages request body into a CodeWhisperer body. The conversation id
/// is Claude Code's session id (from `metadata.user_id`) when there is one, else a random
/// UUID.
pub fn convert_request(
    body: &[u8],
    config: &AnthropicConfig,
) -> Result<ConvertedRequest, AnthropicError> {
    convert(body, config, None, true)
}

/// [`convert_request`] with the conversation id to use when the request carries no session
/// id (deterministic output, for tests).
pub fn convert_request_with_id(
    body: &[u8],
    config: &AnthropicConfig,
    conversation_id: &str,
) -> Result<ConvertedRequest, AnthropicError> {
    convert(body, config, Some(conversation_id), true)
}

/// Estimated input tokens of a Messages (or count_tokens) request, by the same method as the
/// converter. The model must be known; the tool-count and prompt-size [`Limits`] do not apply
/// (a client sizing its context wants the number, even above them).
pub fn count_tokens(body: &[u8], config: &AnthropicConfig) -> Result<u64, AnthropicError> {
    convert(
        body,
        config,
        Some("00000000-0000-4000-8000-000000000000"),
        false,
    )
    .map(|c| c.input_tokens)
}

struct Writer {
    out: Vec<u8>,
    /// Token units (see `json::token_units`) of the prompt text written.
    units: u64,
    /// Bytes of prompt text written.
    text_bytes: usize,
    images: u64,
}

impl Writer {
    fn text(&mut self, s: &str) {
        self.units += json::token_units(s);
        self.text_bytes += s.len();
        write_str(&mut self.out, s);
    }

    fn raw_json(&mut self, raw: &str) {
        self.units += json::token_units(raw);
        self.text_bytes += raw.len();
        self.out.extend_from_slice(raw.as_bytes());
    }

    fn user(&mut self, turn: &Turn<'_>, content: &str, model: &str, tools: Option<&[u8]>) {
        self.out
            .extend_from_slice(br#"{"userInputMessage":{"content":"#);
        self.text(content);
        self.out.extend_from_slice(br#","modelId":"#);
        write_str(&mut self.out, model);
        self.out.extend_from_slice(br#","origin":"AI_EDITOR""#);
        if !turn.images.is_empty() {
            self.out.extend_from_slice(br#","images":["#);
            for (i, image) in turn.images.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                self.images += 1;
                self.out.extend_from_slice(br#"{"format":""#);
                self.out.extend_from_slice(image.format.as_bytes());
                self.out.extend_from_slice(br#"","source":{"bytes":"#);
                write_str(&mut self.out, &image.data);
                self.out.extend_from_slice(b"}}");
            }
            self.out.push(b']');
        }
        let tools = tools.filter(|t| !t.is_empty());
        if !turn.results.is_empty() || tools.is_some() {
            self.out
                .extend_from_slice(br#","userInputMessageContext":{"#);
            if !turn.results.is_empty() {
                self.out.extend_from_slice(br#""toolResults":["#);
                for (i, r) in turn.results.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.out.extend_from_slice(br#"{"toolUseId":"#);
                    write_str(&mut self.out, &r.id);
                    self.out.extend_from_slice(br#","content":[{"text":"#);
                    let text = if r.text.is_empty() {
                        "(no output)"
                    } else {
                        &r.text
                    };
                    self.text(text);
                    self.out.extend_from_slice(br#"}],"status":"#);
                    if r.is_error {
                        self.out.extend_from_slice(br#""error","isError":true}"#);
                    } else {
                        self.out.extend_from_slice(br#""success"}"#);
                    }
                }
                self.out.push(b']');
                if tools.is_some() {
                    self.out.push(b',');
                }
            }
            if let Some(tools) = tools {
                self.out.extend_from_slice(br#""tools":["#);
                self.out.extend_from_slice(tools);
                self.out.push(b']');
            }
            self.out.push(b'}');
        }
        self.out.extend_from_slice(b"}}");
    }

    fn assistant(&mut self, turn: &Turn<'_>) {
        self.out
            .extend_from_slice(br#"{"assistantResponseMessage":{"content":"#);
        let content = match (turn.text.is_empty(), turn.uses.is_empty()) {
            (false, _) => turn.text.as_str(),
            (true, false) => " ",
            (true, true) => "...",
        };
        self.text(content);
        if !turn.uses.is_empty() {
            self.out.extend_from_slice(br#","toolUses":["#);
            for (i, u) in turn.uses.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                self.out.extend_from_slice(br#"{"toolUseId":"#);
                write_str(&mut self.out, &u.id);
                self.out.extend_from_slice(br#","name":"#);
                self.text(&u.name);
                self.out.extend_from_slice(br#","input":"#);
                match u.input.map(RawValue::get) {
                    Some(raw) if raw.trim_start().starts_with('{') => self.raw_json(raw),
                    _ => self.out.extend_from_slice(b"{}"),
                }
                self.out.push(b'}');
            }
            self.out.push(b']');
        }
        self.out.extend_from_slice(b"}}");
    }
}

/// The top level of a tool input schema, read without copying: enough to know whether Kiro
/// takes it as it is.
#[derive(Deserialize)]
struct SchemaTop<'a> {
    #[serde(rename = "type", default)]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    properties: Option<&'a RawValue>,
    /// Read only to check that it is an array of strings.
    #[serde(rename = "required", borrow, default)]
    _required: Option<Vec<&'a str>>,
}

/// Whether `schema` (trimmed JSON) can go to Kiro unchanged: an object with no `null`
/// anywhere, whose top-level `type` is a non-empty string, `properties` (when present) an
/// object and `required` (when present) an array of strings. A duplicate or escaped key, or
/// anything else unusual, takes the normalising path.
fn schema_is_well_formed(schema: &str) -> bool {
    if !schema.starts_with('{') || schema.contains("null") {
        return false;
    }
    match serde_json::from_str::<SchemaTop<'_>>(schema) {
        Ok(top) => {
            top.kind.is_some_and(|k| !k.is_empty())
                && top
                    .properties
                    .is_none_or(|p| p.get().trim_start().starts_with('{'))
        }
        Err(_) => false,
    }
}

/// A tool input schema as Kiro accepts it: an object with a `type`, `properties` an object,
/// `required` a list of strings, no `null` values. Schemas that need no change (see
/// [`schema_is_well_formed`]) are copied as they are.
fn write_schema(w: &mut Writer, raw: Option<&RawValue>) {
    const EMPTY: &str = r#"{"type":"object","properties":{}}"#;
    let Some(raw) = raw.map(RawValue::get) else {
        w.raw_json(EMPTY);
        return;
    };
    let trimmed = raw.trim();
    if schema_is_well_formed(trimmed) {
        w.raw_json(trimmed);
        return;
    }
    let value: serde_json::Value = serde_json::from_str(trimmed).unwrap_or_default();
    let serde_json::Value::Object(mut map) = strip_nulls(value) else {
        w.raw_json(EMPTY);
        return;
    };
    if map
        .get("type")
        .and_then(|t| t.as_str())
        .is_none_or(str::is_empty)
    {
        map.insert("type".into(), "object".into());
    }
    let properties_ok = match map.get("properties") {
        Some(p) => p.is_object(),
        None => map.get("type").and_then(|t| t.as_str()) != Some("object"),
    };
    if !properties_ok {
        map.insert(
            "properties".into(),
            serde_json::Value::Object(Default::default()),
        );
    }
    if let Some(required) = map.get_mut("required") {
        match required {
            serde_json::Value::Array(items) => items.retain(|i| i.is_string()),
            _ => *required = serde_json::Value::Array(Vec::new()),
        }
    }
    let text = serde_json::Value::Object(map).to_string();
    w.raw_json(&text);
}

fn strip_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .into_iter()
                .filter(|v| !v.is_null())
                .map(strip_nulls)
                .collect(),
        ),
        other => other,
    }
}

fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

fn thinking_prefix(request: &Request<'_>) -> Option<String> {
    let thinking = request.thinking.as_ref()?;
    match thinking.kind.as_deref() {
        Some("enabled") => {
            let budget = thinking.budget_tokens.unwrap_or(20_000).clamp(1024, 24_576);
            Some(format!(
                "<thinking_mode>enabled</thinking_mode><max_thinking_length>{budget}</max_thinking_length>"
            ))
        }
        Some("adaptive") => {
            let effort = request
                .output_config
                .as_ref()
                .and_then(|o| o.effort.as_deref())
                .filter(|e| matches!(*e, "low" | "medium" | "high"))
                .unwrap_or("high");
            Some(format!(
                "<thinking_mode>adaptive</thinking_mode><thinking_effort>{effort}</thinking_effort>"
            ))
        }
        _ => None,
    }
}

fn convert(
    body: &[u8],
    config: &AnthropicConfig,
    conversation_id: Option<&str>,
    enforce_limits: bool,
) -> Result<ConvertedRequest, AnthropicError> {
    let request: Request<'_> = serde_json::from_slice(body).map_err(parse_error)?;
    let Some(model_name) = request.model.as_deref() else {
        return Err(AnthropicError::invalid_request("model: field required"));
    };
    let model = config.models.resolve(model_name)?;
    let thinking_prefix = thinking_prefix(&request);

    // System text: the top-level system, thinking instructions first.
    let mut system = String::new();
    match &request.system {
        Some(Content::Text(t)) => system.push_str(t),
        Some(Content::Blocks(blocks)) => {
            for b in blocks {
                if let Some(t) = &b.text {
                    push_text(&mut system, t, "\n");
                }
            }
        }
        None => {}
    }
    if let Some(prefix) = &thinking_prefix {
        if !system.contains("<thinking_mode>") {
            system = if system.is_empty() {
                prefix.clone()
            } else {
                format!("{prefix}\n{system}")
            };
        }
    }

    let Some(messages) = request.messages else {
        return Err(AnthropicError::invalid_request("messages: field required"));
    };
    if messages.is_empty() {
        return Err(AnthropicError::invalid_request(
            "messages: at least one message is required",
        ));
    }
    let mut builder = Builder {
        config,
        names: ToolNames::default(),
        turns: Vec::with_capacity(messages.len() + 3),
    };
    for (i, message) in messages.into_iter().enumerate() {
        builder.message(i, message)?;
    }
    let mut names = builder.names;
    let mut turns = Vec::with_capacity(builder.turns.len() + 3);
    if !system.is_empty() {
        turns.push(Turn::new(Role::User, system));
        turns.push(Turn::new(
            Role::Assistant,
            "I will follow these instructions.",
        ));
    }
    for turn in builder.turns {
        let expected = match turns.last() {
            None => Role::User,
            Some(last) if last.role == Role::User => Role::Assistant,
            Some(_) => Role::User,
        };
        if turn.role != expected {
            turns.push(match expected {
                Role::User => Turn::new(Role::User, "Continue"),
                Role::Assistant => Turn::new(Role::Assistant, "..."),
            });
        }
        turns.push(turn);
    }
    // The current message is a user message: a trailing assistant turn (a prefill) stays in
    // the history and the model is asked to continue.
    if turns.last().is_some_and(|t| t.role == Role::Assistant) {
        turns.push(Turn::new(Role::User, "Continue"));
    }

    // Tool calls and results pair up: an assistant turn's calls are answered by the next
    // (user) turn's results. Unanswered calls and results for no call are dropped.
    for k in 0..turns.len() {
        if turns[k].role != Role::User {
            continue;
        }
        let (before, rest) = turns.split_at_mut(k);
        let user = &mut rest[0];
        match before.last_mut() {
            Some(assistant) if assistant.role == Role::Assistant => {
                // Hash sets keep this linear in the number of calls and results.
                let answered: HashSet<&str> = user.results.iter().map(|r| r.id.as_str()).collect();
                assistant.uses.retain(|u| answered.contains(u.id.as_str()));
                drop(answered);
                // Each call takes its first result; repeats and strays find no id left.
                let mut open: HashSet<&str> =
                    assistant.uses.iter().map(|u| u.id.as_str()).collect();
                user.results.retain(|r| open.remove(r.id.as_str()));
            }
            _ => user.results.clear(),
        }
    }

    let limits = &config.limits;
    let mut w = Writer {
        out: Vec::with_capacity(body.len() + 512),
        units: 0,
        text_bytes: 0,
        images: 0,
    };

    // Tool definitions (written once, placed in the current message).
    let mut tools_out = Writer {
        out: Vec::new(),
        units: 0,
        text_bytes: 0,
        images: 0,
    };
    // Names declared so far, ASCII-lowercased (Kiro matches them case-insensitively).
    let mut declared: HashSet<String> = HashSet::new();
    let client_tools = request.tools.unwrap_or_default();
    let is_client_tool = |tool: &Tool<'_>| tool.kind.as_deref().is_none_or(|k| k == "custom");
    // The cap is checked before any schema is written.
    let count = client_tools.iter().filter(|t| is_client_tool(t)).count();
    if enforce_limits && count > limits.max_tools {
        return Err(AnthropicError::invalid_request(format!(
            "tools: {count} tools were sent; Kiro accepts at most {}",
            limits.max_tools
        )));
    }
    for (i, tool) in client_tools.iter().enumerate() {
        if !is_client_tool(tool) {
            // Anthropic server tools (web search, code execution...): Kiro rejects them.
            continue;
        }
        let Some(name) = tool.name.as_deref().filter(|n| !n.is_empty()) else {
            return Err(AnthropicError::invalid_request(format!(
                "tools.{i}.name: required"
            )));
        };
        let name = names.shorten(name, limits.max_tool_name_len);
        let description = tool
            .description
            .as_deref()
            .filter(|d| !d.trim().is_empty())
            .unwrap_or(&name);
        let description = truncate_chars(description, limits.max_description_chars);
        if !tools_out.out.is_empty() {
            tools_out.out.push(b',');
        }
        tools_out
            .out
            .extend_from_slice(br#"{"toolSpecification":{"name":"#);
        tools_out.text(&name);
        tools_out.out.extend_from_slice(br#","description":"#);
        tools_out.text(description);
        tools_out
            .out
            .extend_from_slice(br#","inputSchema":{"json":"#);
        write_schema(&mut tools_out, tool.input_schema);
        tools_out.out.extend_from_slice(b"}}}");
        declared.insert(name.to_ascii_lowercase());
    }
    // Every tool the history calls must be declared.
    for turn in &turns {
        for u in &turn.uses {
            if declared.insert(u.name.to_ascii_lowercase()) {
                if !tools_out.out.is_empty() {
                    tools_out.out.push(b',');
                }
                tools_out
                    .out
                    .extend_from_slice(br#"{"toolSpecification":{"name":"#);
                tools_out.text(&u.name);
                tools_out.out.extend_from_slice(
                    br#","description":"Tool used in conversation history","inputSchema":{"json":{"type":"object","properties":{},"additionalProperties":true}}}}"#,
                );
            }
        }
    }

    let conversation_id = request
        .metadata
        .as_ref()
        .and_then(|m| m.user_id.as_deref())
        .and_then(session_id)
        .or_else(|| conversation_id.map(str::to_owned))
        .unwrap_or_else(random_uuid);

    let kiro_model = model.kiro_id.as_str();
    w.out.extend_from_slice(
        br#"{"conversationState":{"agentTaskType":"vibe","chatTriggerType":"MANUAL","conversationId":"#,
    );
    write_str(&mut w.out, &conversation_id);
    w.out.extend_from_slice(br#","currentMessage":"#);
    let (current, history) = turns.split_last().expect("at least one turn");
    let content = match (current.text.is_empty(), current.results.is_empty()) {
        (false, _) => current.text.as_str(),
        (true, false) => "Tool results provided.",
        (true, true) => "Continue",
    };
    w.user(current, content, kiro_model, Some(&tools_out.out));
    if !history.is_empty() {
        w.out.extend_from_slice(br#","history":["#);
        for (i, turn) in history.iter().enumerate() {
            if i > 0 {
                w.out.push(b',');
            }
            match turn.role {
                Role::User => {
                    let content = match (turn.text.is_empty(), turn.results.is_empty()) {
                        (false, _) => turn.text.as_str(),
                        (true, false) => "Tool results provided.",
                        (true, true) => "Continue",
                    };
                    w.user(turn, content, kiro_model, None);
                }
                Role::Assistant => w.assistant(turn),
            }
        }
        w.out.push(b']');
    }
    w.out.extend_from_slice(b"}}");

    let text_bytes = w.text_bytes + tools_out.text_bytes;
    if enforce_limits && text_bytes > limits.max_prompt_bytes {
        let tokens = json::units_to_tokens(w.units + tools_out.units);
        return Err(AnthropicError::invalid_request(format!(
            "prompt is too long: about {tokens} tokens ({text_bytes} bytes) > {} bytes maximum \
             Kiro accepts",
            limits.max_prompt_bytes
        )));
    }
    let input_tokens = json::units_to_tokens(w.units + tools_out.units) + 1600 * w.images;
    Ok(ConvertedRequest {
        body: Bytes::from(w.out),
        model: model_name.to_owned(),
        model_id: model.id.clone(),
        kiro_model: kiro_model.to_owned(),
        context_window: model.context_window,
        stream: request.stream.unwrap_or(false),
        thinking: thinking_prefix.is_some(),
        stop_sequences: request
            .stop_sequences
            .unwrap_or_default()
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.0.into_owned())
            .collect(),
        tool_names: names,
        input_tokens: input_tokens.max(1),
    })
}
