//! The conversion itself: system text and thinking mode, turns in alternating order, tool
//! calls paired with their results, tool definitions, the conversation id, the limits.

use std::borrow::Cow;
use std::collections::HashSet;

use bytes::Bytes;

use super::body::{write_schema, Writer};
use super::parse::{parse_error, Content, Request, Tool};
use super::turns::{push_text, Builder, Role, Turn};
use super::{ConvertedRequest, ToolNames};
use crate::kiro::anthropic::json::{self, write_str};
use crate::kiro::anthropic::{AnthropicConfig, AnthropicError};

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

pub(super) fn convert(
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
