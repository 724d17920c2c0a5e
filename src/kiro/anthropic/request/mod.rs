//! Anthropic Messages request → CodeWhisperer `generateAssistantResponse` body.
//!
//! See the [module docs](super) for the rules; [`convert_request`] is the entry point.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;

use super::error::AnthropicError;
use super::json;
use super::AnthropicConfig;

mod body;
mod convert;
mod parse;
mod turns;

use convert::convert;

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
