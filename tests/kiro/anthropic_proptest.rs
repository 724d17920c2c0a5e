//! Hostile input never panics the Anthropic converters: arbitrary JSON and bytes into the
//! request converter, arbitrary bytes and arbitrary frames (split anywhere) into the stream
//! converter.
#![cfg(feature = "kiro")]

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tower_account_pool::kiro::anthropic::{
    convert_request, AnswerContext, AnthropicConfig, Limits, StreamConverter,
};
use tower_account_pool::kiro::eventstream::{HeaderValue, Message};

fn arb_json() -> impl Strategy<Value = Value> {
    arb_json_sized(5, 64)
}

fn arb_json_sized(depth: u32, size: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        prop_oneof![
            Just("user"),
            Just("assistant"),
            Just("system"),
            Just("text"),
            Just("image"),
            Just("tool_use"),
            Just("tool_result"),
            Just("thinking"),
            Just("base64"),
            Just("image/png"),
            Just("enabled"),
            Just("adaptive"),
            Just("claude-sonnet-4-5"),
            Just("<thinking>"),
            Just(""),
            Just("custom"),
        ]
        .prop_map(|s| Value::String(s.into())),
        ".{0,12}".prop_map(Value::String),
    ];
    let keys = prop_oneof![
        Just("model"),
        Just("messages"),
        Just("role"),
        Just("content"),
        Just("type"),
        Just("text"),
        Just("system"),
        Just("tools"),
        Just("name"),
        Just("input"),
        Just("input_schema"),
        Just("id"),
        Just("tool_use_id"),
        Just("is_error"),
        Just("source"),
        Just("media_type"),
        Just("data"),
        Just("thinking"),
        Just("budget_tokens"),
        Just("metadata"),
        Just("user_id"),
        Just("stream"),
        Just("stop_sequences"),
        Just("description"),
        Just("properties"),
        Just("required"),
    ];
    leaf.prop_recursive(depth, size, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..6).prop_map(|pairs| {
                let mut map = Map::new();
                for (k, v) in pairs {
                    map.insert(k.to_owned(), v);
                }
                Value::Object(map)
            }),
        ]
    })
}

/// A request shaped like a Messages request (mostly valid), with arbitrary values inside.
fn arb_request() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        Just("text"),
        Just("image"),
        Just("tool_use"),
        Just("tool_result"),
        Just("thinking"),
        Just("document"),
        Just("redacted_thinking"),
        Just("mid_conv_system"),
    ];
    let result_content = prop_oneof![
        ".{0,8}".prop_map(Value::String),
        prop::collection::vec(
            prop_oneof![
                ".{0,8}".prop_map(|t| json!({"type":"text","text":t})),
                Just(json!({"type":"image","source":{"type":"base64","media_type":"image/gif","data":"R0lG"}})),
                Just(json!({"type":"document","source":{"type":"text","data":"doc"}})),
            ],
            0..3,
        )
        .prop_map(Value::Array),
        arb_json_sized(1, 4),
    ];
    let ids = prop_oneof![Just("id1"), Just("id2"), Just("")];
    let block = (
        kind,
        arb_json_sized(2, 8),
        result_content,
        any::<bool>(),
        ids,
        ".{0,70}",
    )
        .prop_map(|(kind, input, content, flag, id, name)| {
            let source = if flag {
                json!({"type":"base64","media_type":"image/png","data":"AAAA"})
            } else {
                json!({"type":"url","url":"https://x"})
            };
            json!({"type": kind, "text": "t", "thinking": "th", "id": id, "name": name,
                   "tool_use_id": id, "input": input, "content": content, "source": source,
                   "is_error": flag, "cache_control": {"type":"ephemeral"}})
        });
    let content = prop_oneof![
        ".{0,8}".prop_map(Value::String),
        prop::collection::vec(block, 0..4).prop_map(Value::Array),
    ];
    let role = prop_oneof![Just("user"), Just("assistant"), Just("system")];
    let message =
        (role, content).prop_map(|(role, content)| json!({"role": role, "content": content}));
    let tool = (".{0,70}", prop::option::of(".{0,8}"), arb_json_sized(2, 8), prop::option::of(Just("web_search_20250305")))
        .prop_map(|(name, description, schema, kind)| {
            json!({"name": name, "description": description, "input_schema": schema, "type": kind})
        });
    let system = prop_oneof![
        Just(Value::Null),
        ".{0,8}".prop_map(Value::String),
        prop::collection::vec(".{0,8}".prop_map(|t| json!({"type":"text","text":t})), 0..3)
            .prop_map(Value::Array),
    ];
    let thinking = prop_oneof![
        Just(Value::Null),
        any::<u64>().prop_map(|b| json!({"type":"enabled","budget_tokens":b})),
        Just(json!({"type":"adaptive"})),
        Just(json!({"type":"disabled"})),
    ];
    (
        prop::collection::vec(message, 0..6),
        prop::collection::vec(tool, 0..3),
        system,
        thinking,
        prop::collection::vec(".{0,3}", 0..2),
    )
        .prop_map(|(messages, tools, system, thinking, stop)| {
            json!({"model":"claude-sonnet-4-5","max_tokens":10,"messages":messages,
                   "tools":tools,"system":system,"thinking":thinking,"stop_sequences":stop})
        })
}

fn config() -> AnthropicConfig {
    AnthropicConfig::default().limits(Limits {
        max_tool_name_len: 12,
        max_description_chars: 5,
        ..Limits::default()
    })
}

fn context(thinking: bool, stop: Vec<String>) -> AnswerContext {
    AnswerContext {
        message_id: "msg_p".into(),
        model: "m".into(),
        context_window: 200_000,
        thinking,
        stop_sequences: stop,
        tool_names: Default::default(),
        input_tokens: 1,
    }
}

fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
    let payload = prop_oneof![
        ".{0,16}".prop_map(|t| json!({ "content": t }).to_string()),
        prop_oneof![
            Just("<thinking>"),
            Just("</thinking>\n\n"),
            Just("\n"),
            Just("END")
        ]
        .prop_map(|t| json!({ "content": t }).to_string()),
        (".{0,4}", ".{0,8}", any::<bool>(), any::<bool>()).prop_map(|(id, input, stop, named)| {
            let mut v = json!({ "toolUseId": id, "input": input, "stop": stop });
            if named {
                v["name"] = json!("Tool");
            }
            v.to_string()
        }),
        any::<f64>().prop_map(|p| format!(r#"{{"contextUsagePercentage":{p}}}"#)),
        ".{0,16}",
    ];
    let kind = prop_oneof![
        Just("assistantResponseEvent"),
        Just("toolUseEvent"),
        Just("contextUsageEvent"),
        Just("reasoningContentEvent"),
        Just("meteringEvent"),
        Just("exception"),
    ];
    (kind, payload).prop_map(|(kind, payload)| {
        let message = if kind == "exception" {
            Message::exception("ThrottlingException", payload.into_bytes())
        } else {
            Message::event(kind, payload.into_bytes()).with_header("x-extra", HeaderValue::Int64(7))
        };
        message.encode().unwrap()
    })
}

/// The request strategy reaches the converter's depths: most generated requests convert.
#[test]
fn most_generated_requests_convert() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = arb_request();
    let total = 1000;
    let accepted = (0..total)
        .filter(|_| {
            let request = strategy.new_tree(&mut runner).unwrap().current();
            convert_request(request.to_string().as_bytes(), &config()).is_ok()
        })
        .count();
    assert!(
        accepted * 3 > total,
        "only {accepted} of {total} requests converted"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn arbitrary_json_never_panics_the_request_converter(value in arb_json(), model in any::<bool>()) {
        let mut value = value;
        if model {
            if let Value::Object(map) = &mut value {
                map.insert("model".into(), json!("claude-sonnet-4-5"));
            }
        }
        let body = value.to_string();
        if let Ok(converted) = convert_request(body.as_bytes(), &config()) {
            // Whatever is accepted converts to a JSON body.
            let parsed: Value = serde_json::from_slice(&converted.body).unwrap();
            prop_assert!(parsed["conversationState"]["currentMessage"]["userInputMessage"]["content"].is_string());
        }
    }

    #[test]
    fn arbitrary_messages_never_panic_the_request_converter(request in arb_request()) {
        if let Ok(converted) = convert_request(request.to_string().as_bytes(), &config()) {
            let parsed: Value = serde_json::from_slice(&converted.body).unwrap();
            let state = &parsed["conversationState"];
            prop_assert!(state["currentMessage"]["userInputMessage"]["content"].is_string());
            // The history alternates user / assistant and ends with an assistant turn.
            if let Some(history) = state["history"].as_array() {
                for (i, turn) in history.iter().enumerate() {
                    let key = if i % 2 == 0 { "userInputMessage" } else { "assistantResponseMessage" };
                    prop_assert!(turn.get(key).is_some(), "{}", parsed);
                }
                prop_assert!(history.len() % 2 == 0, "{}", parsed);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_request_converter(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = convert_request(&bytes, &config());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_stream_converter(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        cut in any::<prop::sample::Index>(),
    ) {
        let at = cut.index(bytes.len() + 1);
        let mut sse = StreamConverter::sse(context(true, vec!["x".into()]));
        sse.push(&bytes[..at]);
        sse.push(&bytes[at..]);
        sse.finish();
        let out = sse.take_output();
        prop_assert!(out.starts_with(b"event: message_start\n"));
        let mut message = StreamConverter::message(context(false, vec![]));
        message.push(&bytes);
        let _ = message.into_message();
    }

    #[test]
    fn arbitrary_frames_split_anywhere_give_the_same_answer(
        frames in prop::collection::vec(arb_frame(), 0..12),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        thinking in any::<bool>(),
    ) {
        let bytes: Vec<u8> = frames.concat();
        let ctx = context(thinking, vec!["END".into()]);
        let mut whole = StreamConverter::sse(ctx.clone());
        whole.push(&bytes);
        whole.finish();
        let expected = whole.take_output();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut split = StreamConverter::sse(ctx.clone());
        let mut out = Vec::new();
        let mut from = 0;
        for at in points.into_iter().chain([bytes.len()]) {
            split.push(&bytes[from..at]);
            out.extend_from_slice(&split.take_output());
            from = at;
        }
        split.finish();
        out.extend_from_slice(&split.take_output());
        prop_assert_eq!(&out[..], &expected[..]);
        let text = String::from_utf8(out).unwrap();
        let ended = text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        prop_assert!(ended || text.contains("event: error\n"), "{}", text);
        let mut message = StreamConverter::message(ctx);
        message.push(&bytes);
        if let Ok(json) = message.into_message() {
            let _: Value = serde_json::from_slice(&json).unwrap();
        }
    }
}
