//! The request-body checks [`KiroMock`](super::KiroMock) applies to chat requests.
//!
//! Kiro has no public API documentation; these are the rules gateways and issue threads observed
//! the real service to enforce (`shared/reference/anthropic-kiro.md` §2.4 and
//! `kiro-upstream.md` §8.3). A body that breaks one gets the status and body the real service
//! answers (`ValidationException`), so a converter tested against the mock fails the same way it
//! would against Kiro.

use serde_json::{Map, Value};

/// The `modelId`s Kiro is known to accept (`anthropic-kiro.md` §2.3, `kiro-upstream.md` §8.4).
pub const KIRO_MODEL_IDS: &[&str] = &[
    "claude-sonnet-4.6",
    "claude-sonnet-4.5",
    "claude-opus-4.5",
    "claude-opus-4.6",
    "claude-opus-4.7",
    "claude-opus-4.8",
    "claude-haiku-4.5",
    "CLAUDE_SONNET_4_5_20250929_V1_0",
    "CLAUDE_SONNET_4_20250514_V1_0",
];

/// The longest tool name accepted (longer names are refused; `anthropic-kiro.md` §2.4, §5.1).
pub const MAX_TOOL_NAME_LEN: usize = 64;

/// Input size above which the mock answers "Input is too long.": between the 710 000 characters
/// observed to pass and the 720 000 observed to fail (`kiro-upstream.md` §8.3).
pub const DEFAULT_MAX_INPUT_CHARS: usize = 715_000;

/// How strictly the mock checks chat request bodies.
///
/// The default is [`Validation::strict`]: every rule below is checked except the model table,
/// which is opt-in with [`Validation::kiro_model_ids`] or [`Validation::model_ids`] (the gateway
/// example's passthrough mode forwards whatever `modelId` its clients send).
///
/// Strict rules (each answered as the real service does, `x-amzn-errortype: ValidationException`):
///
/// | rule | status, `message` (`reason`) |
/// |---|---|
/// | the body is a JSON object | 400 `Improperly formed request.` |
/// | no field anywhere is `null` | 400 `Improperly formed request.` |
/// | `conversationState.currentMessage.userInputMessage` is present, with a string `content` | 400 `Improperly formed request.` |
/// | known fields have their types (strings, arrays, objects) | 400 `Improperly formed request.` |
/// | `history` alternates user / assistant, starting with a user turn and ending with an assistant turn | 400 `Improperly formed request.` |
/// | an assistant turn's `content` is not empty | **422** `Improperly formed request.` |
/// | each `toolUses[]` has a `toolUseId`, a `name` and an object `input` | 400 `Invalid tool use format.` (`REQUEST_BODY_INVALID`) |
/// | each history `toolUse` is answered by a `toolResult` with its id in the next user turn, and each `toolResult` answers a `toolUse` of the turn before | 400 `Improperly formed request.` |
/// | no `toolUseId` twice in one turn's `toolResults` | 400 `Improperly formed request.` |
/// | every tool used in history is declared in `currentMessage` `tools` (case-insensitive) | 400 `Improperly formed request.` |
/// | tools are `toolSpecification`s: a name of 1 to [`MAX_TOOL_NAME_LEN`] characters, a description, `inputSchema.json` an object whose `type` is a non-empty string, `properties` an object and `required` an array of strings | 400 `Improperly formed request.` |
/// | the text of all turns and tool results is at most [`Validation::max_input_chars`] characters | 400 `Input is too long.` (`CONTENT_LENGTH_EXCEEDS_THRESHOLD`) |
/// | `modelId`, where given, is not empty and, with a model table, is in it | 400 `Invalid model ID. Please select a different model to continue.` (`INVALID_MODEL_ID`) |
///
/// Unknown fields are accepted (nothing says Kiro refuses them). The refused request is recorded
/// with the mock's explanation in [`RecordedRequest::rejection`](super::RecordedRequest::rejection),
/// also sent as the `x-kiro-mock-rejection` response header; the body stays the real one.
///
/// ```
/// use tower_account_pool::testing::Validation;
///
/// // Strict, and only the model IDs Kiro is known to serve.
/// let strict = Validation::strict().kiro_model_ids();
/// // Only "is it JSON", as the mock did before it checked bodies.
/// let lenient = Validation::lenient();
/// assert_ne!(strict, lenient);
/// assert_eq!(Validation::default(), Validation::strict());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    strict: bool,
    model_ids: Option<Vec<String>>,
    max_input_chars: usize,
}

impl Default for Validation {
    fn default() -> Self {
        Validation::strict()
    }
}

impl Validation {
    /// Every rule in the table, no model table.
    pub fn strict() -> Validation {
        Validation {
            strict: true,
            model_ids: None,
            max_input_chars: DEFAULT_MAX_INPUT_CHARS,
        }
    }

    /// Only checks that the body is JSON (400 `Improperly formed request.` otherwise).
    pub fn lenient() -> Validation {
        Validation {
            strict: false,
            ..Validation::strict()
        }
    }

    /// Refuses any `modelId` not in `ids` with Kiro's `INVALID_MODEL_ID` answer.
    pub fn model_ids<I, S>(mut self, ids: I) -> Validation
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.model_ids = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    /// Refuses any `modelId` not in [`KIRO_MODEL_IDS`].
    pub fn kiro_model_ids(self) -> Validation {
        self.model_ids(KIRO_MODEL_IDS.iter().copied())
    }

    /// Sets the input size limit, in characters (default [`DEFAULT_MAX_INPUT_CHARS`]).
    pub fn max_input_chars(mut self, chars: usize) -> Validation {
        self.max_input_chars = chars;
        self
    }

    /// Whether the strict rules apply.
    pub fn is_strict(&self) -> bool {
        self.strict
    }
}

/// Why a body was refused: what the mock answers and its own explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub status: u16,
    pub message: &'static str,
    pub reason: Option<&'static str>,
    pub detail: String,
}

const IMPROPER: &str = "Improperly formed request.";

fn improper(detail: impl Into<String>) -> Rejection {
    Rejection {
        status: 400,
        message: IMPROPER,
        reason: None,
        detail: detail.into(),
    }
}

fn bad_tool_use(detail: impl Into<String>) -> Rejection {
    Rejection {
        status: 400,
        message: "Invalid tool use format.",
        reason: Some("REQUEST_BODY_INVALID"),
        detail: detail.into(),
    }
}

type Checked<T> = Result<T, Rejection>;

/// Checks a chat request body; the parsed body when it passes.
pub(crate) fn check(body: &[u8], rules: &Validation) -> Checked<Value> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| improper(format!("the body is not JSON: {e}")))?;
    if !rules.strict {
        return Ok(value);
    }
    Checker {
        rules,
        input_chars: 0,
    }
    .body(&value)?;
    Ok(value)
}

struct Checker<'a> {
    rules: &'a Validation,
    input_chars: usize,
}

/// One turn's tool traffic, for the pairing rules.
struct Turn<'v> {
    path: String,
    tool_uses: Vec<(&'v str, &'v str)>,
    tool_results: Vec<&'v str>,
}

fn object<'v>(value: &'v Value, path: &str) -> Checked<&'v Map<String, Value>> {
    value
        .as_object()
        .ok_or_else(|| improper(format!("{path} must be an object")))
}

fn required<'v>(map: &'v Map<String, Value>, key: &str, path: &str) -> Checked<&'v Value> {
    map.get(key)
        .ok_or_else(|| improper(format!("{path}.{key} is missing")))
}

fn string<'v>(value: &'v Value, path: &str) -> Checked<&'v str> {
    value
        .as_str()
        .ok_or_else(|| improper(format!("{path} must be a string")))
}

fn array<'v>(value: &'v Value, path: &str) -> Checked<&'v [Value]> {
    value
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| improper(format!("{path} must be an array")))
}

fn optional_string(map: &Map<String, Value>, key: &str, path: &str) -> Checked<()> {
    match map.get(key) {
        Some(v) => string(v, &format!("{path}.{key}")).map(|_| ()),
        None => Ok(()),
    }
}

/// The path of the first `null` in `value`, if any.
fn find_null(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::Null => Some(path.to_owned()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_null(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let child = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            find_null(v, &child)
        }),
        _ => None,
    }
}

impl<'a> Checker<'a> {
    fn body(&mut self, value: &Value) -> Checked<()> {
        let root = value
            .as_object()
            .ok_or_else(|| improper("the body must be a JSON object"))?;
        if let Some(path) = find_null(value, "") {
            return Err(improper(format!("{path} is null")));
        }
        optional_string(root, "profileArn", "body")?;
        let state = object(
            required(root, "conversationState", "body")?,
            "conversationState",
        )?;
        for key in [
            "chatTriggerType",
            "conversationId",
            "agentContinuationId",
            "agentTaskType",
        ] {
            optional_string(state, key, "conversationState")?;
        }
        let current = object(
            required(state, "currentMessage", "conversationState")?,
            "conversationState.currentMessage",
        )?;
        let current_path = "conversationState.currentMessage.userInputMessage";
        let current_user = required(
            current,
            "userInputMessage",
            "conversationState.currentMessage",
        )?;

        let mut turns = Vec::new();
        if let Some(history) = state.get("history") {
            let history = array(history, "conversationState.history")?;
            for (i, entry) in history.iter().enumerate() {
                let path = format!("conversationState.history[{i}]");
                let entry = object(entry, &path)?;
                let user_turn = i % 2 == 0;
                let (key, other) = if user_turn {
                    ("userInputMessage", "assistantResponseMessage")
                } else {
                    ("assistantResponseMessage", "userInputMessage")
                };
                if entry.contains_key(other) || !entry.contains_key(key) {
                    let previous = if user_turn { "assistant" } else { "user" };
                    return Err(improper(if i == 0 {
                        format!("{path}: history must start with a userInputMessage")
                    } else if entry.contains_key(other) {
                        format!(
                            "{path}: history must alternate, but two {} messages follow each other",
                            if user_turn { "assistant" } else { "user" }
                        )
                    } else {
                        format!("{path} must hold `{key}` after a {previous} message")
                    }));
                }
                let message_path = format!("{path}.{key}");
                let turn = if user_turn {
                    self.user_message(&entry[key], &message_path)?
                } else {
                    self.assistant_message(&entry[key], &message_path)?
                };
                turns.push(turn);
            }
            if history.len() % 2 == 1 {
                return Err(improper(format!(
                    "conversationState.history[{}]: history must end with an assistantResponseMessage",
                    history.len() - 1
                )));
            }
        }
        turns.push(self.user_message(current_user, current_path)?);

        let declared = declared_tools(current_user);
        for turn in &turns {
            for (_, name) in &turn.tool_uses {
                if !declared.iter().any(|d| d.eq_ignore_ascii_case(name)) {
                    return Err(improper(format!(
                        "{}: tool `{name}` is used in history but not declared in {current_path}.userInputMessageContext.tools",
                        turn.path
                    )));
                }
            }
        }
        pair_tools(&turns)?;

        if self.input_chars > self.rules.max_input_chars {
            return Err(Rejection {
                status: 400,
                message: "Input is too long.",
                reason: Some("CONTENT_LENGTH_EXCEEDS_THRESHOLD"),
                detail: format!(
                    "the input holds {} characters, more than {}",
                    self.input_chars, self.rules.max_input_chars
                ),
            });
        }
        Ok(())
    }

    fn user_message<'v>(&mut self, value: &'v Value, path: &str) -> Checked<Turn<'v>> {
        let message = object(value, path)?;
        let content = string(
            required(message, "content", path)?,
            &format!("{path}.content"),
        )?;
        self.input_chars += content.chars().count();
        optional_string(message, "origin", path)?;
        if let Some(model) = message.get("modelId") {
            let model = string(model, &format!("{path}.modelId"))?;
            let known = match &self.rules.model_ids {
                Some(ids) => ids.iter().any(|id| id == model),
                None => !model.is_empty(),
            };
            if !known {
                return Err(Rejection {
                    status: 400,
                    message: "Invalid model ID. Please select a different model to continue.",
                    reason: Some("INVALID_MODEL_ID"),
                    detail: format!("{path}.modelId `{model}` is not a model the mock serves"),
                });
            }
        }
        if let Some(images) = message.get("images") {
            for (i, image) in array(images, &format!("{path}.images"))?.iter().enumerate() {
                let image_path = format!("{path}.images[{i}]");
                let image = object(image, &image_path)?;
                string(
                    required(image, "format", &image_path)?,
                    &format!("{image_path}.format"),
                )?;
                let source_path = format!("{image_path}.source");
                let source = object(required(image, "source", &image_path)?, &source_path)?;
                string(
                    required(source, "bytes", &source_path)?,
                    &format!("{source_path}.bytes"),
                )?;
            }
        }
        let mut turn = Turn {
            path: path.to_owned(),
            tool_uses: Vec::new(),
            tool_results: Vec::new(),
        };
        let Some(context) = message.get("userInputMessageContext") else {
            return Ok(turn);
        };
        let context_path = format!("{path}.userInputMessageContext");
        let context = object(context, &context_path)?;
        if let Some(results) = context.get("toolResults") {
            let results_path = format!("{context_path}.toolResults");
            for (i, result) in array(results, &results_path)?.iter().enumerate() {
                let result_path = format!("{results_path}[{i}]");
                let result = object(result, &result_path)?;
                let id = string(
                    required(result, "toolUseId", &result_path)?,
                    &format!("{result_path}.toolUseId"),
                )?;
                if id.is_empty() {
                    return Err(improper(format!("{result_path}.toolUseId is empty")));
                }
                if turn.tool_results.contains(&id) {
                    return Err(improper(format!(
                        "{result_path}: toolUseId `{id}` appears twice in toolResults"
                    )));
                }
                turn.tool_results.push(id);
                if let Some(status) = result.get("status") {
                    let status = string(status, &format!("{result_path}.status"))?;
                    if status != "success" && status != "error" {
                        return Err(improper(format!(
                            "{result_path}.status must be `success` or `error`, not `{status}`"
                        )));
                    }
                }
                let content_path = format!("{result_path}.content");
                let content = array(required(result, "content", &result_path)?, &content_path)?;
                for (j, part) in content.iter().enumerate() {
                    let part_path = format!("{content_path}[{j}]");
                    let part = object(part, &part_path)?;
                    match (part.get("text"), part.get("json")) {
                        (Some(text), _) => {
                            let text = string(text, &format!("{part_path}.text"))?;
                            self.input_chars += text.chars().count();
                        }
                        (None, Some(json)) => self.input_chars += json.to_string().chars().count(),
                        (None, None) => {
                            return Err(improper(format!("{part_path} must hold `text` or `json`")))
                        }
                    }
                }
            }
        }
        if let Some(tools) = context.get("tools") {
            let tools_path = format!("{context_path}.tools");
            for (i, tool) in array(tools, &tools_path)?.iter().enumerate() {
                tool_spec(tool, &format!("{tools_path}[{i}]"))?;
            }
        }
        Ok(turn)
    }

    fn assistant_message<'v>(&mut self, value: &'v Value, path: &str) -> Checked<Turn<'v>> {
        let message = object(value, path)?;
        let content = string(
            required(message, "content", path)?,
            &format!("{path}.content"),
        )?;
        if content.is_empty() {
            return Err(Rejection {
                status: 422,
                message: IMPROPER,
                reason: None,
                detail: format!("{path}.content is empty"),
            });
        }
        self.input_chars += content.chars().count();
        let mut turn = Turn {
            path: path.to_owned(),
            tool_uses: Vec::new(),
            tool_results: Vec::new(),
        };
        if let Some(uses) = message.get("toolUses") {
            let uses_path = format!("{path}.toolUses");
            for (i, tool_use) in array(uses, &uses_path)?.iter().enumerate() {
                let use_path = format!("{uses_path}[{i}]");
                let tool_use = tool_use
                    .as_object()
                    .ok_or_else(|| bad_tool_use(format!("{use_path} must be an object")))?;
                let text = |key: &str| {
                    tool_use
                        .get(key)
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| {
                            bad_tool_use(format!("{use_path}.{key} must be a non-empty string"))
                        })
                };
                let (id, name) = (text("toolUseId")?, text("name")?);
                if !tool_use.get("input").is_some_and(Value::is_object) {
                    return Err(bad_tool_use(format!(
                        "{use_path}.input must be a JSON object"
                    )));
                }
                if turn.tool_uses.iter().any(|(seen, _)| *seen == id) {
                    return Err(bad_tool_use(format!(
                        "{use_path}: toolUseId `{id}` appears twice in toolUses"
                    )));
                }
                self.input_chars += tool_use["input"].to_string().chars().count();
                turn.tool_uses.push((id, name));
            }
        }
        Ok(turn)
    }
}

fn tool_spec(tool: &Value, path: &str) -> Checked<()> {
    let tool = object(tool, path)?;
    let spec_path = format!("{path}.toolSpecification");
    let spec = object(required(tool, "toolSpecification", path)?, &spec_path)?;
    let name = string(
        required(spec, "name", &spec_path)?,
        &format!("{spec_path}.name"),
    )?;
    let length = name.chars().count();
    if length == 0 || length > MAX_TOOL_NAME_LEN {
        return Err(improper(format!(
            "{spec_path}.name must be 1 to {MAX_TOOL_NAME_LEN} characters, not {length}"
        )));
    }
    string(
        required(spec, "description", &spec_path)?,
        &format!("{spec_path}.description"),
    )?;
    let schema_path = format!("{spec_path}.inputSchema");
    let schema = object(required(spec, "inputSchema", &spec_path)?, &schema_path)?;
    let json_path = format!("{schema_path}.json");
    let json = object(required(schema, "json", &schema_path)?, &json_path)?;
    let kind = string(
        required(json, "type", &json_path)?,
        &format!("{json_path}.type"),
    )?;
    if kind.is_empty() {
        return Err(improper(format!("{json_path}.type is empty")));
    }
    if let Some(properties) = json.get("properties") {
        object(properties, &format!("{json_path}.properties"))?;
    }
    if let Some(required_fields) = json.get("required") {
        let required_path = format!("{json_path}.required");
        for (i, field) in array(required_fields, &required_path)?.iter().enumerate() {
            string(field, &format!("{required_path}[{i}]"))?;
        }
    }
    Ok(())
}

fn declared_tools(current: &Value) -> Vec<&str> {
    current
        .pointer("/userInputMessageContext/tools")
        .and_then(Value::as_array)
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t.pointer("/toolSpecification/name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// Each assistant turn's tool uses are answered in the next user turn, and each tool result
/// answers a tool use of the turn before. `turns` alternates user, assistant, …, user.
fn pair_tools(turns: &[Turn<'_>]) -> Checked<()> {
    for (i, turn) in turns.iter().enumerate() {
        if i % 2 == 1 {
            let next = &turns[i + 1];
            for (id, name) in &turn.tool_uses {
                if !next.tool_results.contains(id) {
                    return Err(improper(format!(
                        "{}: toolUse `{id}` ({name}) has no toolResult in {}",
                        turn.path, next.path
                    )));
                }
            }
        } else {
            let previous = i.checked_sub(1).map(|p| &turns[p]);
            for id in &turn.tool_results {
                if !previous.is_some_and(|p| p.tool_uses.iter().any(|(u, _)| u == id)) {
                    return Err(improper(format!(
                        "{}: toolResult `{id}` answers no toolUse of the turn before",
                        turn.path
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({"conversationState": {
            "history": [
                {"userInputMessage": {"content": "Weather?", "modelId": "claude-sonnet-4.5"}},
                {"assistantResponseMessage": {"content": "Let me look.", "toolUses": [
                    {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Paris"}}]}}],
            "currentMessage": {"userInputMessage": {"content": "", "userInputMessageContext": {
                "toolResults": [{"toolUseId": "t1", "status": "success", "content": [{"text": "18"}]}],
                "tools": [{"toolSpecification": {"name": "get_weather", "description": "d",
                    "inputSchema": {"json": {"type": "object", "required": ["city"]}}}}]}}}}})
    }

    /// Every JSON pointer into `value`.
    fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    pointers(v, format!("{at}/{k}"), out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    pointers(v, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
        out.push(at);
    }

    #[test]
    fn the_example_body_is_valid() {
        let body = valid().to_string();
        assert_eq!(check(body.as_bytes(), &Validation::strict()), Ok(valid()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// The check never panics on a valid body with any one part replaced, and it only
        /// accepts the replacement when it keeps the body's shape.
        #[test]
        fn any_damaged_body_gets_an_answer(which in any::<prop::sample::Index>(), replacement in prop_oneof![
            Just(Value::Null), Just(json!("")), Just(json!(1)), Just(json!([])), Just(json!({})),
            Just(json!([{"x": 1}])), Just(json!("x"))]) {
            let mut body = valid();
            let mut all = Vec::new();
            pointers(&body, String::new(), &mut all);
            let at = &all[which.index(all.len())];
            if at.is_empty() {
                body = replacement;
            } else {
                *body.pointer_mut(at).unwrap() = replacement;
            }
            if let Err(rejection) = check(body.to_string().as_bytes(), &Validation::strict()) {
                prop_assert!(!rejection.detail.is_empty());
                prop_assert!([400, 422].contains(&rejection.status));
            }
        }
    }
}
