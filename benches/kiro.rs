//! Kiro hot-path costs: injecting a `KiroCredential` (bearer + a fresh invocation id) beside a
//! static `BearerToken`, classifying the first frame of a stream, and decoding a reply.
//!
//! ```text
//! cargo bench --features kiro --bench kiro
//! ```

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use tower_account_pool::credential::{BearerToken, Credential};
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

criterion_group!(benches, inject, stream);
criterion_main!(benches);
