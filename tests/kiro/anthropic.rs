//! `kiro::anthropic`: Anthropic request → exact CodeWhisperer body (golden), Kiro event stream →
//! exact SSE / Message JSON (golden, also fed split at every byte boundary), the request
//! errors, and the layers end to end over an in-process Kiro stand-in.
#![cfg(feature = "kiro")]

use bytes::Bytes;
use serde_json::{json, Value};
use tower_account_pool::kiro::anthropic::{
    convert_request, convert_request_with_id, count_tokens, shorten_tool_name, with_profile_arn,
    AnswerContext, AnthropicConfig, ErrorKind, Limits, ModelEntry, ModelTable, StreamConverter,
};
use tower_account_pool::kiro::eventstream::Message;

const CONV: &str = "11111111-1111-4111-8111-111111111111";

fn config() -> AnthropicConfig {
    AnthropicConfig::default()
}

/// The converted body as a string (exact bytes).
fn body_of(request: &Value) -> String {
    let converted = convert_request_with_id(request.to_string().as_bytes(), &config(), CONV)
        .unwrap_or_else(|e| panic!("conversion failed: {e}"));
    String::from_utf8(converted.body.to_vec()).unwrap()
}

/// The converted body must also be valid JSON equal to `expected`.
fn assert_body(request: Value, expected: &str) {
    let body = body_of(&request);
    assert_eq!(body, expected);
    let _: Value = serde_json::from_str(&body).expect("the body is JSON");
}

fn error_of(request: &str) -> (ErrorKind, String) {
    error_with(request, &config())
}

fn error_with(request: &str, config: &AnthropicConfig) -> (ErrorKind, String) {
    let e = convert_request(request.as_bytes(), config).expect_err("an error");
    (e.kind(), e.message().to_owned())
}

#[test]
fn golden_text() {
    assert_body(
        json!({"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"Hello"}]}),
        r#"{"conversationState":{"agentTaskType":"vibe","chatTriggerType":"MANUAL","conversationId":"11111111-1111-4111-8111-111111111111","currentMessage":{"userInputMessage":{"content":"Hello","modelId":"claude-sonnet-4.5","origin":"AI_EDITOR"}}}}"#,
    );
}

#[test]
fn golden_system_string_and_blocks() {
    let expected = r#"{"conversationState":{"agentTaskType":"vibe","chatTriggerType":"MANUAL","conversationId":"11111111-1111-4111-8111-111111111111","currentMessage":{"userInputMessage":{"content":"Hi","modelId":"claude-haiku-4.5","origin":"AI_EDITOR"}},"history":[{"userInputMessage":{"content":"You are terse.\nAnswer in English.","modelId":"claude-haiku-4.5","origin":"AI_EDITOR"}},{"assistantResponseMessage":{"content":"I will follow these instructions."}}]}}"#;
    assert_body(
        json!({"model":"claude-haiku-4-5","max_tokens":10,"system":"You are terse.\nAnswer in English.",
               "messages":[{"role":"user","content":"Hi"}]}),
        expected,
    );
    assert_body(
        json!({"model":"claude-haiku-4-5","max_tokens":10,
               "system":[{"type":"text","text":"You are terse."},
                         {"type":"text","text":"Answer in English.","cache_control":{"type":"ephemeral"}}],
               "messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}]}),
        expected,
    );
}

#[test]
fn golden_multi_turn_history_with_merging_and_images() {
    assert_body(
        json!({"model":"claude-opus-4-5","max_tokens":10,"messages":[
            {"role":"user","content":"First"},
            {"role":"user","content":[{"type":"text","text":"and more"}]},
            {"role":"assistant","content":"Answer one"},
            {"role":"assistant","content":[{"type":"text","text":"Answer two"}]},
            {"role":"user","content":[
                {"type":"text","text":"Look"},
                {"type":"image","source":{"type":"base64","media_type":"image/jpeg","data":"/9j/4AAQ"}}]}
        ]}),
        r#"{"conversationState":{"agentTaskType":"vibe","chatTriggerType":"MANUAL","conversationId":"11111111-1111-4111-8111-111111111111","currentMessage":{"userInputMessage":{"content":"Look","modelId":"claude-opus-4.5","origin":"AI_EDITOR","images":[{"format":"jpeg","source":{"bytes":"/9j/4AAQ"}}]}},"history":[{"userInputMessage":{"content":"First\nand more","modelId":"claude-opus-4.5","origin":"AI_EDITOR"}},{"assistantResponseMessage":{"content":"Answer one\n\nAnswer two"}}]}}"#,
    );
}

#[test]
fn golden_tool_round_trip_with_thinking() {
    assert_body(
        json!({"model":"claude-sonnet-4-5","max_tokens":4096,
            "thinking":{"type":"enabled","budget_tokens":2048},
            "tools":[{"name":"Read","description":"Read a file",
                      "input_schema":{"type":"object","properties":{"file_path":{"type":"string"}},"required":["file_path"]}}],
            "messages":[
                {"role":"user","content":"read /a"},
                {"role":"assistant","content":[
                    {"type":"thinking","thinking":"need file","signature":"sig"},
                    {"type":"text","text":"Reading."},
                    {"type":"tool_use","id":"tooluse_1","name":"Read","input":{"file_path":"/a"}}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"tooluse_1","content":"1\tline",
                                           "cache_control":{"type":"ephemeral"}}]}]}),
        r#"{"conversationState":{"agentTaskType":"vibe","chatTriggerType":"MANUAL","conversationId":"11111111-1111-4111-8111-111111111111","currentMessage":{"userInputMessage":{"content":"Tool results provided.","modelId":"claude-sonnet-4.5","origin":"AI_EDITOR","userInputMessageContext":{"toolResults":[{"toolUseId":"tooluse_1","content":[{"text":"1\tline"}],"status":"success"}],"tools":[{"toolSpecification":{"name":"Read","description":"Read a file","inputSchema":{"json":{"type":"object","properties":{"file_path":{"type":"string"}},"required":["file_path"]}}}}]}}},"history":[{"userInputMessage":{"content":"<thinking_mode>enabled</thinking_mode><max_thinking_length>2048</max_thinking_length>","modelId":"claude-sonnet-4.5","origin":"AI_EDITOR"}},{"assistantResponseMessage":{"content":"I will follow these instructions."}},{"userInputMessage":{"content":"read /a","modelId":"claude-sonnet-4.5","origin":"AI_EDITOR"}},{"assistantResponseMessage":{"content":"<thinking>need file</thinking>\n\nReading.","toolUses":[{"toolUseId":"tooluse_1","name":"Read","input":{"file_path":"/a"}}]}}]}}"#,
    );
}

#[test]
fn golden_tool_result_blocks_error_and_image() {
    assert_body(
        json!({"model":"claude-sonnet-4-5","max_tokens":10,"messages":[
            {"role":"user","content":"go"},
            {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"Shot","input":{}}]},
            {"role":"user","content":[
                {"type":"tool_result","tool_use_id":"t1","is_error":true,"content":[
                    {"type":"text","text":"failed"},{"type":"text","text":"twice"},
                    {"type":"image","source":{"type":"base64","media_type":"image/webp","data":"UklG"}}]},
                {"type":"text","text":"what now?"}]}]}),
        r#"{"conversationState":{"agentTaskType":"vibe","chatTriggerType":"MANUAL","conversationId":"11111111-1111-4111-8111-111111111111","currentMessage":{"userInputMessage":{"content":"what now?","modelId":"claude-sonnet-4.5","origin":"AI_EDITOR","images":[{"format":"webp","source":{"bytes":"UklG"}}],"userInputMessageContext":{"toolResults":[{"toolUseId":"t1","content":[{"text":"failed\ntwice"}],"status":"error","isError":true}],"tools":[{"toolSpecification":{"name":"Shot","description":"Tool used in conversation history","inputSchema":{"json":{"type":"object","properties":{},"additionalProperties":true}}}}]}}},"history":[{"userInputMessage":{"content":"go","modelId":"claude-sonnet-4.5","origin":"AI_EDITOR"}},{"assistantResponseMessage":{"content":" ","toolUses":[{"toolUseId":"t1","name":"Shot","input":{}}]}}]}}"#,
    );
}

/// The shape Claude Code 2.1.332 sends (claude-code-wire.md §5–6): system blocks with
/// `cache_control`, a `role: "system"` message, `metadata.user_id` as a JSON string,
/// `context_management`, `thinking.display`, tools with `$schema` and `defer_loading`, and a
/// follow-up with a string `tool_result` carrying `cache_control`.
#[test]
fn golden_claude_code_body() {
    let user_id = json!({"device_id":"ab".repeat(32),"account_uuid":"","session_id":"5A0C6E2B-3C1D-4E5F-8A9B-0C1D2E3F4A5B"}).to_string();
    let request = json!({
        "model":"claude-sonnet-4-5",
        "messages":[
            {"role":"user","content":[
                {"type":"text","text":"<system-reminder>env</system-reminder>"},
                {"type":"text","text":"Read /a","cache_control":{"type":"ephemeral"}}]},
            {"role":"system","content":[{"type":"text","text":"Environment: linux","cache_control":{"type":"ephemeral"}}]},
            {"role":"assistant","content":[
                {"type":"text","text":"I'll read it."},
                {"type":"tool_use","id":"toolu_01","name":"Read","input":{"file_path":"/a"}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01","content":"1\tx",
                                       "cache_control":{"type":"ephemeral"}}]}],
        "system":[
            {"type":"text","text":"x-anthropic-billing-header: cc_version=2.1.332.abc; cc_entrypoint=sdk-cli;"},
            {"type":"text","text":"You are Claude Code.","cache_control":{"type":"ephemeral"}}],
        "tools":[
            {"name":"Read","description":"Reads a file",
             "input_schema":{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object",
                             "properties":{"file_path":{"type":"string"},"limit":{"type":"integer","exclusiveMinimum":0,"maximum":9007199254740991_u64}},
                             "required":["file_path"],"additionalProperties":false}},
            {"name":"DeferredToolPlaceholder","description":"placeholder","defer_loading":true,"input_schema":{}}],
        "metadata":{"user_id":user_id},
        "max_tokens":32000,
        "thinking":{"type":"enabled","budget_tokens":31999,"display":"omitted"},
        "context_management":{"edits":[{"type":"clear_thinking_20251015","keep":"all"}]},
        "stream":true
    });
    let converted = convert_request(request.to_string().as_bytes(), &config()).unwrap();
    assert!(converted.stream);
    assert!(converted.thinking);
    assert_eq!(converted.model_id, "claude-sonnet-4-5-20250929");
    assert_eq!(
        String::from_utf8(converted.body.to_vec()).unwrap(),
        r#"{"conversationState":{"agentTaskType":"vibe","chatTriggerType":"MANUAL","conversationId":"5a0c6e2b-3c1d-4e5f-8a9b-0c1d2e3f4a5b","currentMessage":{"userInputMessage":{"content":"Tool results provided.","modelId":"claude-sonnet-4.5","origin":"AI_EDITOR","userInputMessageContext":{"toolResults":[{"toolUseId":"toolu_01","content":[{"text":"1\tx"}],"status":"success"}],"tools":[{"toolSpecification":{"name":"Read","description":"Reads a file","inputSchema":{"json":{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","properties":{"file_path":{"type":"string"},"limit":{"type":"integer","exclusiveMinimum":0,"maximum":9007199254740991}},"required":["file_path"],"additionalProperties":false}}}},{"toolSpecification":{"name":"DeferredToolPlaceholder","description":"placeholder","inputSchema":{"json":{"type":"object","properties":{}}}}}]}}},"history":[{"userInputMessage":{"content":"<thinking_mode>enabled</thinking_mode><max_thinking_length>24576</max_thinking_length>\nx-anthropic-billing-header: cc_version=2.1.332.abc; cc_entrypoint=sdk-cli;\nYou are Claude Code.","modelId":"claude-sonnet-4.5","origin":"AI_EDITOR"}},{"assistantResponseMessage":{"content":"I will follow these instructions."}},{"userInputMessage":{"content":"<system-reminder>env</system-reminder>\nRead /a\nEnvironment: linux","modelId":"claude-sonnet-4.5","origin":"AI_EDITOR"}},{"assistantResponseMessage":{"content":"I'll read it.","toolUses":[{"toolUseId":"toolu_01","name":"Read","input":{"file_path":"/a"}}]}}]}}"#
    );
}

#[test]
fn legacy_user_id_session_and_adaptive_thinking() {
    let request = json!({"model":"claude-opus-4-6","max_tokens":10,
        "metadata":{"user_id":"user_abc_account_def_session_0f0e0d0c-0b0a-4908-8706-050403020100"},
        "thinking":{"type":"adaptive"},"output_config":{"effort":"medium"},
        "messages":[{"role":"user","content":"Hi"}]});
    let body = body_of(&request);
    assert!(
        body.contains(r#""conversationId":"0f0e0d0c-0b0a-4908-8706-050403020100""#),
        "{body}"
    );
    assert!(body.contains(r#""content":"<thinking_mode>adaptive</thinking_mode><thinking_effort>medium</thinking_effort>""#), "{body}");
    assert!(body.contains(r#""modelId":"claude-opus-4.6""#));
    // No session id: a random UUID per request.
    let plain = json!({"model":"claude-opus-4-6","max_tokens":10,"messages":[{"role":"user","content":"Hi"}]});
    let a = convert_request(plain.to_string().as_bytes(), &config()).unwrap();
    let b = convert_request(plain.to_string().as_bytes(), &config()).unwrap();
    let id = |c: &tower_account_pool::kiro::anthropic::ConvertedRequest| {
        let v: Value = serde_json::from_slice(&c.body).unwrap();
        v["conversationState"]["conversationId"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(id(&a).len(), 36);
    assert_ne!(id(&a), id(&b));
}

#[test]
fn trailing_assistant_orphans_and_gaps() {
    // A prefill stays in the history and the model is asked to continue; a first assistant
    // turn gets a user turn before it; an unanswered tool call and an orphan result go.
    assert_body(
        json!({"model":"claude-sonnet-4-5","max_tokens":10,"messages":[
            {"role":"assistant","content":"Earlier"},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"nobody","content":"lost"},
                                      {"type":"text","text":"Q"}]},
            {"role":"assistant","content":[{"type":"text","text":"Calling"},
                                           {"type":"tool_use","id":"t9","name":"Bash","input":{"command":"ls"}}]},
            {"role":"user","content":"never mind"},
            {"role":"assistant","content":"{"}]}),
        r#"{"conversationState":{"agentTaskType":"vibe","chatTriggerType":"MANUAL","conversationId":"11111111-1111-4111-8111-111111111111","currentMessage":{"userInputMessage":{"content":"Continue","modelId":"claude-sonnet-4.5","origin":"AI_EDITOR"}},"history":[{"userInputMessage":{"content":"Continue","modelId":"claude-sonnet-4.5","origin":"AI_EDITOR"}},{"assistantResponseMessage":{"content":"Earlier"}},{"userInputMessage":{"content":"Q","modelId":"claude-sonnet-4.5","origin":"AI_EDITOR"}},{"assistantResponseMessage":{"content":"Calling"}},{"userInputMessage":{"content":"never mind","modelId":"claude-sonnet-4.5","origin":"AI_EDITOR"}},{"assistantResponseMessage":{"content":"{"}}]}}"#,
    );
}

#[test]
fn schemas_with_nulls_are_normalized_and_server_tools_dropped() {
    let body = body_of(&json!({"model":"claude-sonnet-4-5","max_tokens":10,
        "tools":[
            {"type":"web_search_20250305","name":"web_search","max_uses":8},
            {"name":"mcp_tool","description":"","input_schema":{"type":null,"properties":null,"required":null,"x":[1,null]}}],
        "messages":[{"role":"user","content":"Hi"}]}));
    assert!(
        body.contains(r#""tools":[{"toolSpecification":{"name":"mcp_tool","description":"mcp_tool","inputSchema":{"json":{"x":[1],"type":"object","properties":{}}}}}]"#),
        "{body}"
    );
    assert!(!body.contains("web_search"));
}

/// The `inputSchema.json` each declared tool is sent with, by name.
fn schemas_sent(tools: Value) -> Vec<(String, String)> {
    let body = body_of(
        &json!({"model":"claude-sonnet-4-5","max_tokens":10,"tools":tools,
        "messages":[{"role":"user","content":"Hi"}]}),
    );
    let parsed: Value = serde_json::from_str(&body).unwrap();
    parsed["conversationState"]["currentMessage"]["userInputMessage"]["userInputMessageContext"]
        ["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let spec = &t["toolSpecification"];
            (
                spec["name"].as_str().unwrap().to_owned(),
                spec["inputSchema"]["json"].to_string(),
            )
        })
        .collect()
}

#[test]
fn malformed_schemas_are_normalized_from_their_structure() {
    let sent = schemas_sent(json!([
        // `required` not an array: Kiro answers 400 "Improperly formed request".
        {"name":"a","input_schema":{"type":"object","properties":{"a":{"type":"string"}},"required":"a"}},
        // No top-level type, only a property named `type`.
        {"name":"b","input_schema":{"properties":{"type":{"type":"string"}}}},
        // An empty type, properties not an object, required with a number.
        {"name":"c","input_schema":{"type":"","properties":[],"required":["x",1]}},
        // A non-object type keeps its type; its non-object properties are replaced.
        {"name":"d","input_schema":{"type":"string","properties":"no"}},
        // The type is not a string.
        {"name":"f","input_schema":{"type":["object"],"properties":{}}},
        // Well formed: copied as it is (key order kept, no `properties` added to a non-object).
        {"name":"g","input_schema":{"required":["q"],"type":"object","properties":{"q":{"type":"string"}}}},
        {"name":"h","input_schema":{"type":"string"}}
    ]));
    let expected = [
        (
            "a",
            r#"{"type":"object","properties":{"a":{"type":"string"}},"required":[]}"#,
        ),
        (
            "b",
            r#"{"properties":{"type":{"type":"string"}},"type":"object"}"#,
        ),
        ("c", r#"{"type":"object","properties":{},"required":["x"]}"#),
        ("d", r#"{"type":"string","properties":{}}"#),
        ("f", r#"{"type":"object","properties":{}}"#),
        (
            "g",
            r#"{"required":["q"],"type":"object","properties":{"q":{"type":"string"}}}"#,
        ),
        ("h", r#"{"type":"string"}"#),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
    assert_eq!(sent, expected);

    // A repeated key (which `json!` cannot build): the last one wins, as in a JSON parser.
    let body = body_of_text(
        r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"Hi"}],
            "tools":[{"name":"e","input_schema":{"type":"object","type":"","properties":{}}}]}"#,
    );
    assert!(
        body.contains(r#""inputSchema":{"json":{"type":"object","properties":{}}}"#),
        "{body}"
    );
}

/// The converted body of a request given as text.
fn body_of_text(request: &str) -> String {
    let converted = convert_request_with_id(request.as_bytes(), &config(), CONV)
        .unwrap_or_else(|e| panic!("conversion failed: {e}"));
    String::from_utf8(converted.body.to_vec()).unwrap()
}

#[test]
fn twenty_thousand_tool_pairs_convert() {
    const N: usize = 20_000;
    // Distinct names over the 63-byte limit: each is shortened and declared as a placeholder.
    let name = |i: usize| format!("mcp__server__{i:0>60}");
    let mut uses: Vec<Value> = (0..N)
        .map(|i| json!({"type":"tool_use","id":format!("u{i}"),"name":name(i),"input":{}}))
        .collect();
    uses.push(json!({"type":"tool_use","id":"unanswered","name":"x","input":{}}));
    let mut results: Vec<Value> = (0..N)
        .map(|i| json!({"type":"tool_result","tool_use_id":format!("u{i}"),"content":"ok"}))
        .collect();
    results.push(json!({"type":"tool_result","tool_use_id":"u5","content":"again"}));
    results.push(json!({"type":"tool_result","tool_use_id":"stray","content":"?"}));
    let request = json!({"model":"claude-sonnet-4-5","max_tokens":10,"messages":[
        {"role":"user","content":"go"},
        {"role":"assistant","content":uses},
        {"role":"user","content":results}]});
    let config = config().limits(Limits {
        max_prompt_bytes: usize::MAX,
        ..Limits::default()
    });
    let converted = convert_request(request.to_string().as_bytes(), &config).unwrap();
    let body: Value = serde_json::from_slice(&converted.body).unwrap();
    let state = &body["conversationState"];
    let context = &state["currentMessage"]["userInputMessage"]["userInputMessageContext"];
    let results = context["toolResults"].as_array().unwrap();
    assert_eq!(results.len(), N);
    assert_eq!(results[5]["toolUseId"], "u5");
    assert_eq!(results[5]["content"][0]["text"], "ok");
    assert!(results.iter().all(|r| r["toolUseId"] != "stray"));
    let uses = state["history"][1]["assistantResponseMessage"]["toolUses"]
        .as_array()
        .unwrap();
    assert_eq!(uses.len(), N);
    assert_eq!(uses[N - 1]["toolUseId"], format!("u{}", N - 1));
    let tools = context["tools"].as_array().unwrap();
    assert_eq!(tools.len(), N);
    let short = shorten_tool_name(&name(7), 63);
    assert_eq!(uses[7]["name"], short.as_str());
    assert_eq!(tools[7]["toolSpecification"]["name"], short.as_str());
    // "x" (the unanswered call) is gone, so is its placeholder.
    assert!(tools.iter().all(|t| t["toolSpecification"]["name"] != "x"));
    assert_eq!(converted.tool_names.len(), N);
    assert_eq!(converted.tool_names.original(&short), name(7));
}

#[test]
fn the_tool_cap_is_checked_before_any_schema_is_written() {
    let config = config().limits(Limits {
        max_tools: 2,
        ..Limits::default()
    });
    // The third tool has no name: the cap answers first. Server tools do not count.
    let request = json!({"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"x"}],
        "tools":[{"name":"a"},{"name":"b"},{"input_schema":{}},{"type":"web_search_20250305","name":"w"}]});
    let (kind, message) = error_with(&request.to_string(), &config);
    assert_eq!(kind, ErrorKind::InvalidRequest);
    assert_eq!(message, "tools: 3 tools were sent; Kiro accepts at most 2");
}

#[test]
fn the_accounts_profile_arn_replaces_escaped_and_repeated_ones() {
    const ARN: &str = "arn:aws:codewhisperer:us-east-1:1:profile/OURS";
    let cases = [
        // An escaped key, which a byte search for `"profileArn"` misses.
        r#"{"profile\u0041rn":"arn:CLIENT","conversationState":{}}"#,
        r#"{"\u0070rofileArn":"arn:CLIENT","conversationState":{}}"#,
        // Repeated keys: a parser keeps the last.
        r#"{"profileArn":"arn:A","conversationState":{},"profileArn":"arn:CLIENT"}"#,
        r#"{"profileArn":"arn:A","profile\u0041rn":"arn:CLIENT","conversationState":{}}"#,
        r#"{"profile\u0041rn":"arn:A","conversationState":{},"profile\u0041rn":"arn:CLIENT"}"#,
        // Text after the object, which some parsers skip.
        r#"{"profile\u0041rn":"arn:CLIENT","conversationState":{}} {"profileArn":"x"}"#,
    ];
    for body in cases {
        let body = Bytes::from(body);
        // A social-login account: its ARN is the only one.
        let social = with_profile_arn(&body, Some(ARN));
        assert_eq!(
            std::str::from_utf8(&social).unwrap(),
            format!(r#"{{"profileArn":"{ARN}","conversationState":{{}}}}"#),
            "{body:?}"
        );
        // An IdC account: none at all.
        let idc = with_profile_arn(&body, None);
        assert_eq!(
            std::str::from_utf8(&idc).unwrap(),
            r#"{"conversationState":{}}"#,
            "{body:?}"
        );
    }
    // `\u` in a value only: the body is rebuilt, the value unchanged.
    let body = Bytes::from_static(br#"{"conversationState":{"x":"caf\u00e9"}}"#);
    let social: Value = serde_json::from_slice(&with_profile_arn(&body, Some(ARN))).unwrap();
    assert_eq!(
        social,
        json!({"profileArn": ARN, "conversationState": {"x": "café"}})
    );
    let idc: Value = serde_json::from_slice(&with_profile_arn(&body, None)).unwrap();
    assert_eq!(idc, json!({"conversationState": {"x": "café"}}));
}

#[test]
fn long_tool_names_are_shortened_deterministically_and_mapped_back() {
    let long = format!("mcp__{}__do_something_useful", "server".repeat(12));
    assert!(long.len() > 63);
    let short = shorten_tool_name(&long, 63);
    assert_eq!(short.len(), 63);
    assert_eq!(short, shorten_tool_name(&long, 63));
    assert!(short.starts_with(&long[..54]));
    assert_ne!(short, shorten_tool_name(&format!("{long}2"), 63));

    let request = json!({"model":"claude-sonnet-4-5","max_tokens":10,
        "tools":[{"name":long,"description":"d","input_schema":{"type":"object","properties":{}}}],
        "messages":[{"role":"user","content":"Hi"},
                    {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":long,"input":{}}]},
                    {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"ok"}]}]});
    let converted = convert_request(request.to_string().as_bytes(), &config()).unwrap();
    let body = String::from_utf8(converted.body.to_vec()).unwrap();
    assert!(!body.contains(&long));
    assert_eq!(
        body.matches(&format!("\"name\":\"{short}\"")).count(),
        2,
        "{body}"
    );
    assert_eq!(converted.tool_names.original(&short), long);

    // The answer names the tool with the short name; the client sees its own.
    let mut converter = StreamConverter::message(AnswerContext::new(&converted, "msg_t"));
    converter.push(&event(
        "toolUseEvent",
        &json!({"name":short,"toolUseId":"t2","input":"{}","stop":true}),
    ));
    converter.finish();
    let message: Value = serde_json::from_slice(&converter.into_message().unwrap()).unwrap();
    assert_eq!(message["content"][0]["name"], json!(long));
}

#[test]
fn descriptions_are_cut_at_the_limit() {
    let config = config().limits(Limits {
        max_description_chars: 5,
        ..Limits::default()
    });
    let request = json!({"model":"claude-sonnet-4-5","max_tokens":10,
        "tools":[{"name":"T","description":"ééééééé long","input_schema":{"type":"object"}}],
        "messages":[{"role":"user","content":"Hi"}]});
    let converted = convert_request(request.to_string().as_bytes(), &config).unwrap();
    let body = String::from_utf8(converted.body.to_vec()).unwrap();
    assert!(body.contains(r#""description":"ééééé","#), "{body}");
}

#[test]
fn unknown_model_names_the_known_ones() {
    let (kind, message) = error_of(
        r#"{"model":"claude-opus-5-5","max_tokens":1,"messages":[{"role":"user","content":"Hi"}]}"#,
    );
    assert_eq!(kind, ErrorKind::InvalidRequest);
    assert_eq!(
        message,
        "model `claude-opus-5-5` is not served here; known models: claude-sonnet-4-5-20250929, \
         claude-sonnet-4-5, claude-sonnet-4-6, claude-opus-4-5-20251101, claude-opus-4-5, \
         claude-opus-4-6, claude-haiku-4-5-20251001, claude-haiku-4-5, claude-sonnet-4-20250514, \
         claude-sonnet-4-0"
    );
    // A configured table serves it, by the configured Kiro id.
    let table = ModelTable::default()
        .with(ModelEntry::new("claude-opus-5-5", "claude-opus-4.6", "Opus").alias("opus"));
    let config = config().models(table);
    let c = convert_request(
        br#"{"model":"OPUS","max_tokens":1,"messages":[{"role":"user","content":"Hi"}]}"#,
        &config,
    )
    .unwrap();
    assert_eq!(c.kiro_model, "claude-opus-4.6");
    assert_eq!(c.model, "OPUS");
    assert_eq!(c.model_id, "claude-opus-5-5");
    let (_, empty) = error_with(
        r#"{"model":"x","messages":[]}"#,
        &AnthropicConfig::default().models(ModelTable::new()),
    );
    assert_eq!(
        empty,
        "model `x` is not served here; known models: none (the model table is empty)"
    );
}

#[test]
fn bad_requests_say_what_is_wrong() {
    let cases: &[(&str, &str)] = &[
        (r#"{"max_tokens":1,"messages":[]}"#, "model: field required"),
        (r#"{"model":"claude-sonnet-4-5"}"#, "messages: field required"),
        (r#"{"model":"claude-sonnet-4-5","messages":[]}"#, "messages: at least one message is required"),
        (
            r#"{"model":"claude-sonnet-4-5","messages":[{"role":"robot","content":"x"}]}"#,
            "messages.0.role: expected `user`, `assistant` or `system`, got `robot`",
        ),
        (
            r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://x/y.png"}}]}]}"#,
            "messages.0.content.0.source: Kiro does not fetch image URLs; send the image as base64",
        ),
        (
            r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/bmp","data":"Qk0="}}]}]}"#,
            "messages.0.content.0.source.media_type: expected image/jpeg, image/png, image/gif or image/webp, got `image/bmp`",
        ),
        (
            r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":[{"type":"tool_use","id":"a","name":"b","input":{}}]}]}"#,
            "messages.0.content.0: `tool_use` blocks belong in assistant messages",
        ),
        (
            r#"{"model":"claude-sonnet-4-5","messages":[{"role":"assistant","content":[{"type":"tool_result","tool_use_id":"a"}]}]}"#,
            "messages.0.content.0: `tool_result` blocks belong in user messages",
        ),
        (
            r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":[{"type":"tool_result","content":"x"}]}]}"#,
            "messages.0.content.0.tool_use_id: required for a `tool_result` block",
        ),
        (
            r#"{"model":"claude-sonnet-4-5","messages":[{"role":"assistant","content":[{"type":"tool_use","id":"a","input":{}}]}]}"#,
            "messages.0.content.0: a `tool_use` block needs an `id` and a `name`",
        ),
        (
            r#"{"model":"claude-sonnet-4-5","tools":[{"description":"x"}],"messages":[{"role":"user","content":"x"}]}"#,
            "tools.0.name: required",
        ),
    ];
    for (request, expected) in cases {
        let (kind, message) = error_of(request);
        assert_eq!(kind, ErrorKind::InvalidRequest, "{request}");
        assert_eq!(&message, expected, "{request}");
    }
    let (kind, message) = error_of("not json");
    assert_eq!(kind, ErrorKind::InvalidRequest);
    assert!(
        message.starts_with("the request body is not a valid Messages request: expected"),
        "{message}"
    );
    let (_, message) =
        error_of(r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":7}]}"#);
    assert!(
        message.contains("a string or a list of content blocks"),
        "{message}"
    );
}

#[test]
fn kiro_limits_give_clear_errors() {
    let config = config().limits(Limits {
        max_tools: 2,
        max_prompt_bytes: 100,
        ..Limits::default()
    });
    let tools: Vec<Value> = (0..3)
        .map(|i| json!({"name":format!("t{i}"),"input_schema":{"type":"object"}}))
        .collect();
    let request = json!({"model":"claude-sonnet-4-5","tools":tools,"messages":[{"role":"user","content":"x"}]});
    let (kind, message) = error_with(&request.to_string(), &config);
    assert_eq!(kind, ErrorKind::InvalidRequest);
    assert_eq!(message, "tools: 3 tools were sent; Kiro accepts at most 2");

    let request =
        json!({"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"x".repeat(101)}]});
    let (kind, message) = error_with(&request.to_string(), &config);
    assert_eq!(kind, ErrorKind::InvalidRequest);
    assert_eq!(
        message,
        "prompt is too long: about 26 tokens (101 bytes) > 100 bytes maximum Kiro accepts"
    );
}

#[test]
fn count_tokens_estimates_the_prompt() {
    let n = count_tokens(
        br#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"abcdefghijkl"}]}"#,
        &config(),
    )
    .unwrap();
    assert_eq!(n, 3); // 12 ASCII characters, a quarter token each
    let cjk = count_tokens(
        "{\"model\":\"claude-sonnet-4-5\",\"messages\":[{\"role\":\"user\",\"content\":\"日本語です\"}]}".as_bytes(),
        &config(),
    )
    .unwrap();
    assert_eq!(cjk, 4); // 5 characters at 2/3 token each, rounded up
    let image = count_tokens(
        br#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AA=="}}]}]}"#,
        &config(),
    )
    .unwrap();
    assert_eq!(image, 1600 + 2); // an image, and the `Continue` placeholder
}

// ===== answers =====

fn event(kind: &str, payload: &Value) -> Vec<u8> {
    Message::event(kind, payload.to_string()).encode().unwrap()
}

fn text_event(text: &str) -> Vec<u8> {
    event("assistantResponseEvent", &json!({ "content": text }))
}

fn context(thinking: bool) -> AnswerContext {
    AnswerContext {
        message_id: "msg_test".into(),
        model: "claude-sonnet-4-5".into(),
        context_window: 200_000,
        thinking,
        stop_sequences: vec![],
        tool_names: Default::default(),
        input_tokens: 10,
    }
}

/// Converts `bytes` in the given chunks: the SSE text and the Message JSON (or error).
fn run(ctx: &AnswerContext, chunks: &[&[u8]]) -> (String, Result<String, String>) {
    let mut sse = StreamConverter::sse(ctx.clone());
    let mut message = StreamConverter::message(ctx.clone());
    let mut out = Vec::new();
    for chunk in chunks {
        sse.push(chunk);
        message.push(chunk);
        out.extend_from_slice(&sse.take_output());
    }
    sse.finish();
    out.extend_from_slice(&sse.take_output());
    let message = message
        .into_message()
        .map(|m| String::from_utf8(m).unwrap())
        .map_err(|e| e.to_string());
    (String::from_utf8(out).unwrap(), message)
}

/// The same output whole, split in two at every byte boundary, and one byte at a time.
fn convert_every_way(ctx: &AnswerContext, bytes: &[u8]) -> (String, Result<String, String>) {
    let whole = run(ctx, &[bytes]);
    for at in 0..=bytes.len() {
        assert_eq!(
            run(ctx, &[&bytes[..at], &bytes[at..]]),
            whole,
            "split at {at}"
        );
    }
    let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(run(ctx, &bytewise), whole, "one byte at a time");
    whole
}

fn sse(events: &[(&str, Value)]) -> String {
    events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect()
}

fn start(input_tokens: u64) -> (&'static str, Value) {
    (
        "message_start",
        json!({"type":"message_start","message":{"id":"msg_test","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":input_tokens,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}),
    )
}

fn block_start(index: u64, block: Value) -> (&'static str, Value) {
    (
        "content_block_start",
        json!({"type":"content_block_start","index":index,"content_block":block}),
    )
}

fn delta(index: u64, delta: Value) -> (&'static str, Value) {
    (
        "content_block_delta",
        json!({"type":"content_block_delta","index":index,"delta":delta}),
    )
}

fn block_stop(index: u64) -> (&'static str, Value) {
    (
        "content_block_stop",
        json!({"type":"content_block_stop","index":index}),
    )
}

fn end(
    stop_reason: &str,
    stop_sequence: Value,
    input: u64,
    output: u64,
) -> [(&'static str, Value); 2] {
    [
        (
            "message_delta",
            json!({"type":"message_delta","delta":{"stop_reason":stop_reason,"stop_sequence":stop_sequence},"usage":{"input_tokens":input,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":output}}),
        ),
        ("message_stop", json!({"type":"message_stop"})),
    ]
}

#[test]
fn golden_text_stream() {
    let mut bytes = text_event("Hello");
    bytes.extend(text_event(", \"world\"\n"));
    bytes.extend(event(
        "meteringEvent",
        &json!({"unit":"credit","usage":0.01}),
    ));
    bytes.extend(event(
        "contextUsageEvent",
        &json!({"contextUsagePercentage":1.25}),
    ));
    let (out, message) = convert_every_way(&context(false), &bytes);
    let mut expected = vec![
        start(10),
        block_start(0, json!({"type":"text","text":""})),
        delta(0, json!({"type":"text_delta","text":"Hello"})),
        delta(0, json!({"type":"text_delta","text":", \"world\"\n"})),
        block_stop(0),
    ];
    expected.extend(end("end_turn", Value::Null, 2500, 4));
    assert_eq!(out, sse(&expected));
    assert_eq!(
        message.unwrap(),
        r#"{"id":"msg_test","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello, \"world\"\n"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":2500,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":4}}"#
    );
}

#[test]
fn golden_thinking_text_and_tool_stream() {
    let mut bytes = Vec::new();
    for chunk in [
        "\n\n<thin",
        "king>\nI should",
        " look.</think",
        "ing>\n",
        "\nDone",
    ] {
        bytes.extend(text_event(chunk));
    }
    bytes.extend(event(
        "toolUseEvent",
        &json!({"name":"Read","toolUseId":"t1","input":""}),
    ));
    bytes.extend(event(
        "toolUseEvent",
        &json!({"name":"Read","toolUseId":"t1","input":"{\"file_path\":"}),
    ));
    bytes.extend(event(
        "toolUseEvent",
        &json!({"name":"Read","toolUseId":"t1","input":"\"/a\"}"}),
    ));
    bytes.extend(event(
        "toolUseEvent",
        &json!({"name":"Read","toolUseId":"t1","stop":true}),
    ));
    bytes.extend(event(
        "contextUsageEvent",
        &json!({"contextUsagePercentage":1.5}),
    ));
    let (out, message) = convert_every_way(&context(true), &bytes);
    let signature = "kiro-emulated-thinking-db90f0ef27041758";
    let mut expected = vec![
        start(10),
        block_start(0, json!({"type":"thinking","thinking":""})),
        delta(0, json!({"type":"thinking_delta","thinking":"I should"})),
        delta(0, json!({"type":"thinking_delta","thinking":" look."})),
        delta(0, json!({"type":"signature_delta","signature":signature})),
        block_stop(0),
        block_start(1, json!({"type":"text","text":""})),
        delta(1, json!({"type":"text_delta","text":"Done"})),
        block_stop(1),
        block_start(
            2,
            json!({"type":"tool_use","id":"t1","name":"Read","input":{}}),
        ),
        delta(
            2,
            json!({"type":"input_json_delta","partial_json":"{\"file_path\":"}),
        ),
        delta(
            2,
            json!({"type":"input_json_delta","partial_json":"\"/a\"}"}),
        ),
        block_stop(2),
    ];
    expected.extend(end("tool_use", Value::Null, 3000, 9));
    assert_eq!(out, sse(&expected));
    assert_eq!(
        message.unwrap(),
        format!(
            r#"{{"id":"msg_test","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{{"type":"thinking","thinking":"I should look.","signature":"{signature}"}},{{"type":"text","text":"Done"}},{{"type":"tool_use","id":"t1","name":"Read","input":{{"file_path":"/a"}}}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{{"input_tokens":3000,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":9}}}}"#
        )
    );
}

#[test]
fn text_that_does_not_open_with_thinking_is_text() {
    let mut bytes = text_event("<thi");
    bytes.extend(text_event("s is <thinking> in prose"));
    let (out, _) = convert_every_way(&context(true), &bytes);
    let mut expected = vec![
        start(10),
        block_start(0, json!({"type":"text","text":""})),
        delta(
            0,
            json!({"type":"text_delta","text":"<this is <thinking> in prose"}),
        ),
        block_stop(0),
    ];
    expected.extend(end("end_turn", Value::Null, 10, 7));
    assert_eq!(out, sse(&expected));
}

#[test]
fn unterminated_thinking_is_closed_at_the_end() {
    let bytes = text_event("<thinking>still thinking</thi");
    let (out, message) = convert_every_way(&context(true), &bytes);
    assert!(
        out.contains(r#"{"type":"thinking_delta","thinking":"still thinking"}"#),
        "{out}"
    );
    assert!(
        out.contains(r#"{"type":"thinking_delta","thinking":"</thi"}"#),
        "{out}"
    );
    assert!(out.contains("signature_delta"));
    assert!(message
        .unwrap()
        .contains(r#""thinking":"still thinking</thi""#));
}

#[test]
fn stop_sequences_cut_the_text() {
    let mut ctx = context(false);
    ctx.stop_sequences = vec!["END".into(), "\n\nHuman:".into()];
    let mut bytes = text_event("one two E");
    bytes.extend(text_event("N"));
    bytes.extend(text_event("D three"));
    bytes.extend(event(
        "toolUseEvent",
        &json!({"name":"X","toolUseId":"t","input":"{}","stop":true}),
    ));
    let (out, message) = convert_every_way(&ctx, &bytes);
    let mut expected = vec![
        start(10),
        block_start(0, json!({"type":"text","text":""})),
        delta(0, json!({"type":"text_delta","text":"one two "})),
        block_stop(0),
    ];
    expected.extend(end("stop_sequence", json!("END"), 10, 2));
    assert_eq!(out, sse(&expected));
    let message: Value = serde_json::from_str(&message.unwrap()).unwrap();
    assert_eq!(message["stop_reason"], "stop_sequence");
    assert_eq!(message["stop_sequence"], "END");
    assert_eq!(
        message["content"],
        json!([{"type":"text","text":"one two "}])
    );
}

#[test]
fn an_exception_after_content_ends_the_stream_with_an_error_event() {
    let mut bytes = text_event("partial");
    bytes.extend(
        Message::exception(
            "ThrottlingException",
            br#"{"message":"Too many requests"}"#.to_vec(),
        )
        .encode()
        .unwrap(),
    );
    bytes.extend(text_event("never shown"));
    let (out, message) = convert_every_way(&context(false), &bytes);
    let expected = sse(&[
        start(10),
        block_start(0, json!({"type":"text","text":""})),
        delta(0, json!({"type":"text_delta","text":"partial"})),
        (
            "error",
            json!({"type":"error","error":{"type":"rate_limit_error","message":"the upstream failed mid-answer (ThrottlingException): Too many requests"}}),
        ),
    ]);
    assert_eq!(out, expected);
    assert_eq!(
        message.unwrap_err(),
        "rate_limit_error: the upstream failed mid-answer (ThrottlingException): Too many requests"
    );

    let mut bytes = text_event("x");
    bytes.extend(
        Message::exception("InternalServerException", b"boom".to_vec())
            .encode()
            .unwrap(),
    );
    let (out, _) = run(&context(false), &[&bytes]);
    assert!(out.ends_with("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"the upstream failed mid-answer (InternalServerException): boom\"}}\n\n"), "{out}");
}

#[test]
fn an_exception_before_content_says_so() {
    let mut bytes = event("meteringEvent", &json!({"unit":"credit","usage":0.1}));
    bytes.extend(
        Message::exception(
            "ThrottlingException",
            br#"{"message":"Too many requests"}"#.to_vec(),
        )
        .encode()
        .unwrap(),
    );
    for sse in [true, false] {
        let mut converter = if sse {
            StreamConverter::sse(context(false))
        } else {
            StreamConverter::message(context(false))
        };
        converter.push(&bytes[..bytes.len() / 2]);
        assert!(!converter.has_content() && !converter.is_done());
        converter.push(&bytes[bytes.len() / 2..]);
        assert!(converter.is_done());
        assert!(!converter.has_content());
        let error = converter.error().unwrap();
        assert_eq!(error.kind(), ErrorKind::RateLimit);
        assert_eq!(
            error.message(),
            "the upstream answered ThrottlingException before any content: Too many requests"
        );
    }
    let mut converter = StreamConverter::sse(context(false));
    converter.push(&text_event("Hi"));
    assert!(converter.has_content());
    // Empty text is not content.
    let mut converter = StreamConverter::sse(context(false));
    converter.push(&text_event(""));
    assert!(!converter.has_content());
}

#[test]
fn content_length_exceeded_is_max_tokens() {
    let mut bytes = text_event("long answer");
    bytes.extend(
        Message::exception("ContentLengthExceededException", b"{}".to_vec())
            .encode()
            .unwrap(),
    );
    let (out, message) = convert_every_way(&context(false), &bytes);
    assert!(out.contains(r#""stop_reason":"max_tokens""#), "{out}");
    assert!(out.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    assert!(message.unwrap().contains(r#""stop_reason":"max_tokens""#));
}

#[test]
fn tools_without_input_or_stop_and_truncated_tools() {
    // A no-argument tool: one frame with `input: ""`, never `stop`.
    let bytes = event(
        "toolUseEvent",
        &json!({"name":"List","toolUseId":"t1","input":""}),
    );
    let (out, message) = convert_every_way(&context(false), &bytes);
    let mut expected = vec![
        start(10),
        block_start(
            0,
            json!({"type":"tool_use","id":"t1","name":"List","input":{}}),
        ),
        delta(0, json!({"type":"input_json_delta","partial_json":"{}"})),
        block_stop(0),
    ];
    expected.extend(end("tool_use", Value::Null, 10, 1));
    assert_eq!(out, sse(&expected));
    assert!(message
        .unwrap()
        .contains(r#"{"type":"tool_use","id":"t1","name":"List","input":{}}"#));

    // Kiro cut a large tool call short: incomplete input, no stop.
    let mut bytes = event(
        "toolUseEvent",
        &json!({"name":"Write","toolUseId":"t2","input":"{\"content\":\"abc"}),
    );
    bytes.extend(event(
        "toolUseEvent",
        &json!({"toolUseId":"t2","input":"def"}),
    ));
    let (out, message) = convert_every_way(&context(false), &bytes);
    assert!(
        out.contains(r#"{"type":"input_json_delta","partial_json":"def"}"#),
        "{out}"
    );
    assert!(out.contains(r#""stop_reason":"max_tokens""#), "{out}");
    let message: Value = serde_json::from_str(&message.unwrap()).unwrap();
    assert_eq!(message["stop_reason"], "max_tokens");
    assert_eq!(message["content"][0]["input"], json!({}));

    // Two tools: a new id closes the previous; continuation frames carry only the id; a late
    // frame for a closed tool is ignored.
    let mut bytes = event(
        "toolUseEvent",
        &json!({"name":"A","toolUseId":"a","input":"{\"x\":"}),
    );
    bytes.extend(event(
        "toolUseEvent",
        &json!({"toolUseId":"a","input":"1}"}),
    ));
    bytes.extend(event(
        "toolUseEvent",
        &json!({"name":"B","toolUseId":"b","input":"{}","stop":true}),
    ));
    bytes.extend(event(
        "toolUseEvent",
        &json!({"name":"A","toolUseId":"a","input":"junk","stop":true}),
    ));
    let (_, message) = convert_every_way(&context(false), &bytes);
    let message: Value = serde_json::from_str(&message.unwrap()).unwrap();
    assert_eq!(
        message["content"],
        json!([{"type":"tool_use","id":"a","name":"A","input":{"x":1}},
               {"type":"tool_use","id":"b","name":"B","input":{}}])
    );
}

#[test]
fn broken_event_streams_are_api_errors() {
    let mut bytes = text_event("ok");
    let mut bad = text_event("bad");
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    bytes.extend(bad);
    let (out, message) = run(&context(false), &[&bytes]);
    assert!(out.contains("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"the upstream event stream is corrupt: event-stream message CRC mismatch: frame says"), "{out}");
    assert!(
        out.ends_with("}}\n\n") && !out.contains("message_stop"),
        "{out}"
    );
    assert!(message
        .unwrap_err()
        .starts_with("api_error: the upstream event stream is corrupt"));

    let whole = text_event("cut");
    let (out, message) = run(&context(false), &[&whole[..whole.len() - 3]]);
    assert!(
        out.contains("the upstream event stream ended inside a frame"),
        "{out}"
    );
    assert!(!out.contains("message_stop"));
    assert!(message.is_err());
}

#[test]
fn context_usage_at_100_percent_is_window_exceeded() {
    let mut bytes = text_event("x");
    bytes.extend(event(
        "contextUsageEvent",
        &json!({"contextUsagePercentage":100.0}),
    ));
    let (out, _) = run(&context(false), &[&bytes]);
    assert!(
        out.contains(r#""stop_reason":"model_context_window_exceeded""#),
        "{out}"
    );
    assert!(out.contains(r#""input_tokens":200000"#), "{out}");
}

#[test]
fn count_tokens_ignores_the_size_limits() {
    let config = config().limits(Limits {
        max_tools: 0,
        max_prompt_bytes: 10,
        ..Limits::default()
    });
    let request = json!({"model":"claude-sonnet-4-5","tools":[{"name":"T","input_schema":{"type":"object"}}],
                         "messages":[{"role":"user","content":"x".repeat(400)}]});
    let n = count_tokens(request.to_string().as_bytes(), &config).unwrap();
    assert!(n > 100, "{n}");
    let (_, message) = error_with(&request.to_string(), &config);
    assert_eq!(message, "tools: 1 tools were sent; Kiro accepts at most 0");
    let (_, message) = error_of(r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#);
    assert!(count_tokens(
        br#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
        &config
    )
    .unwrap_err()
    .message()
    .starts_with(&message[..20]));
}
