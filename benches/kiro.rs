//! Kiro hot-path costs: injecting a `KiroCredential` (bearer + a fresh invocation id) beside a
//! static `BearerToken`, classifying the first frame of a stream, decoding a reply, and the
//! Anthropic conversions (`convert/request/*` beside `serde_json::from_slice::<Value>` of the
//! same body; `convert/stream/*` in bytes of event-stream input per second).
//!
//! ```text
//! cargo bench --features kiro --bench kiro
//! ```

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::HeaderMap;
use serde_json::{json, Value};
use tower_account_pool::credential::{BearerToken, Credential};
use tower_account_pool::kiro::anthropic::{
    convert_request_with_id, with_profile_arn, AnswerContext, AnthropicConfig, StreamConverter,
};
use tower_account_pool::kiro::eventstream::{Decoder, Message};
use tower_account_pool::kiro::{classify_stream_start, KiroCredential, KiroOptions};

const TOKEN: &str = "aoaAAAAAG-bench-access-token-0123456789";

fn inject(c: &mut Criterion) {
    let kiro = KiroCredential::from_json(
        &format!(r#"{{"accessToken":"{TOKEN}","refreshToken":"r","authMethod":"social"}}"#),
        KiroOptions::default(),
    )
    .unwrap();
    let bearer = BearerToken::new(TOKEN);
    let mut group = c.benchmark_group("inject");
    let mut headers = HeaderMap::with_capacity(4);
    group.bench_function("bearer_token", |b| {
        b.iter(|| bearer.apply(black_box(&mut headers)).unwrap())
    });
    group.bench_function("kiro_credential", |b| {
        b.iter(|| kiro.apply(black_box(&mut headers)).unwrap())
    });
    group.finish();
}

fn stream(c: &mut Criterion) {
    let mut reply = Vec::new();
    for i in 0..20 {
        let payload = format!(r#"{{"content":"chunk number {i} of the answer"}}"#);
        reply.extend(
            Message::event("assistantResponseEvent", payload)
                .encode()
                .unwrap(),
        );
    }
    let mut group = c.benchmark_group("eventstream");
    group.bench_function("classify_stream_start", |b| {
        b.iter(|| classify_stream_start(black_box(&reply), None))
    });
    group.bench_function("decode_20_frames_in_1k_chunks", |b| {
        b.iter(|| {
            let mut decoder = Decoder::new();
            let mut n = 0;
            for chunk in reply.chunks(1024) {
                decoder.push(chunk);
                while let Some(m) = decoder.next_message().unwrap() {
                    n += m.payload.len();
                }
            }
            n
        })
    });
    group.finish();
}

/// A small request: system, one user message, one tool.
fn small_request() -> Vec<u8> {
    json!({"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,
        "system":[{"type":"text","text":"You are a helpful assistant.","cache_control":{"type":"ephemeral"}}],
        "tools":[{"name":"Read","description":"Reads a file from the local filesystem.",
                  "input_schema":{"type":"object","properties":{"file_path":{"type":"string"}},"required":["file_path"]}}],
        "messages":[{"role":"user","content":"What is in /etc/hostname?"}]})
    .to_string()
    .into_bytes()
}

/// 20 turns, about 30 KiB: text, tool calls and their results, a system prompt and 3 tools.
fn long_request() -> Vec<u8> {
    let paragraph = "The quick brown fox jumps over the lazy dog; \"quoted\" text and a tab\t. ";
    let mut messages = Vec::new();
    for i in 0..10 {
        messages.push(json!({"role":"user","content":[
            {"type":"text","text":paragraph.repeat(22)},
            {"type":"tool_result","tool_use_id":format!("toolu_{i}"),"content":paragraph.repeat(8)}]}));
        messages.push(json!({"role":"assistant","content":[
            {"type":"text","text":paragraph.repeat(5)},
            {"type":"tool_use","id":format!("toolu_{}", i + 1),"name":"Read","input":{"file_path":format!("/src/file_{i}.rs")}}]}));
    }
    messages.push(json!({"role":"user","content":"Summarize."}));
    let schema = json!({"type":"object","properties":{"file_path":{"type":"string"},"limit":{"type":"integer"}},"required":["file_path"]});
    let body = json!({"model":"claude-sonnet-4-5","max_tokens":32000,"stream":true,
        "system":[{"type":"text","text":paragraph.repeat(10)}],
        "tools":[{"name":"Read","description":"Reads a file.","input_schema":schema},
                 {"name":"Write","description":"Writes a file.","input_schema":schema},
                 {"name":"Bash","description":"Runs a command.","input_schema":schema}],
        "metadata":{"user_id":"user_x_account_y_session_0f0e0d0c-0b0a-4908-8706-050403020100"},
        "messages":messages})
    .to_string()
    .into_bytes();
    assert!(
        (28 * 1024..34 * 1024).contains(&body.len()),
        "{}",
        body.len()
    );
    body
}

fn convert_requests(c: &mut Criterion) {
    let config = AnthropicConfig::default();
    let mut group = c.benchmark_group("convert/request");
    for (name, body) in [
        ("small", small_request()),
        ("20_turns_30KiB", long_request()),
    ] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{name}/from_slice_value"), |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(&body)).unwrap())
        });
        group.bench_function(name, |b| {
            b.iter(|| {
                let converted =
                    convert_request_with_id(black_box(&body), &config, "conversation").unwrap();
                // The per-attempt part too: the social account's profileArn spliced in.
                with_profile_arn(
                    &converted.body,
                    Some("arn:aws:codewhisperer:us-east-1:1:profile/A"),
                )
            })
        });
    }
    group.finish();
}

fn answer_context() -> AnswerContext {
    AnswerContext {
        message_id: "msg_bench".into(),
        model: "claude-sonnet-4-5".into(),
        context_window: 200_000,
        thinking: true,
        stop_sequences: vec![],
        tool_names: Default::default(),
        input_tokens: 1000,
    }
}

/// 1 MiB of event stream: text frames of about 60 characters (with a thinking segment first).
fn text_stream() -> Vec<u8> {
    let mut out = Message::event(
        "assistantResponseEvent",
        r#"{"content":"<thinking>\nLet me think about it.</thinking>\n\n"}"#,
    )
    .encode()
    .unwrap();
    let mut i = 0u64;
    while out.len() < 1024 * 1024 {
        let payload =
            json!({"content": format!("word {i} of a long answer, with \"quotes\" and ünïcödé. ")});
        out.extend(
            Message::event("assistantResponseEvent", payload.to_string())
                .encode()
                .unwrap(),
        );
        i += 1;
    }
    out
}

/// Text, then 20 tool calls whose input arrives in 10 fragments each.
fn tools_stream() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..20 {
        out.extend(
            Message::event(
                "assistantResponseEvent",
                format!(r#"{{"content":"Calling tool {i}. "}}"#),
            )
            .encode()
            .unwrap(),
        );
    }
    for t in 0..20 {
        let id = format!("tooluse_{t:022}");
        out.extend(
            Message::event(
                "toolUseEvent",
                json!({"name":"Write","toolUseId":id,"input":""}).to_string(),
            )
            .encode()
            .unwrap(),
        );
        for f in 0..10 {
            let fragment = if f == 0 {
                "{\"content\":\"".to_owned()
            } else if f == 9 {
                "end\"}".to_owned()
            } else {
                format!("line {f} of the file\\n")
            };
            out.extend(
                Message::event(
                    "toolUseEvent",
                    json!({"name":"Write","toolUseId":id,"input":fragment}).to_string(),
                )
                .encode()
                .unwrap(),
            );
        }
        out.extend(
            Message::event(
                "toolUseEvent",
                json!({"name":"Write","toolUseId":id,"stop":true}).to_string(),
            )
            .encode()
            .unwrap(),
        );
    }
    out.extend(
        Message::event("contextUsageEvent", r#"{"contextUsagePercentage":12.5}"#)
            .encode()
            .unwrap(),
    );
    out
}

fn convert_streams(c: &mut Criterion) {
    let mut group = c.benchmark_group("convert/stream");
    for (name, bytes) in [("text_1MiB", text_stream()), ("tools", tools_stream())] {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut converter = StreamConverter::sse(answer_context());
                let mut out = 0usize;
                // As it arrives from the network: 16 KiB reads.
                for chunk in black_box(&bytes).chunks(16 * 1024) {
                    converter.push(chunk);
                    out += converter.take_output().len();
                }
                converter.finish();
                out + converter.take_output().len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, inject, stream, convert_requests, convert_streams);
criterion_main!(benches);
