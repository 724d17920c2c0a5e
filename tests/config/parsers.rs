//! Property tests over every parser that reads input from outside (issue 11, "fuzz the
//! parsers"): arbitrary bytes and structured near-valid input give a clear error, never a panic,
//! and the parsers agree with their reference (serde_json, the encoder, decoding in one piece).
//!
//! Each property runs 10,000 cases on small inputs, so the file stays fast in debug builds.

use std::borrow::Cow;
use std::path::Path;

use proptest::prelude::*;
use serde_json::{Map, Value};
use tower_account_pool::config::PoolFile;
use tower_account_pool::layer::{JsonModel, RequestExtractor};

const CASES: u32 = 10_000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        // Shrinking stays bounded: a failure is reported within seconds, not minutes.
        max_shrink_iters: 2_000,
        // A failure is turned into a named regression test instead of a seed file.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Short strings of any characters (cheaper to generate than a regex strategy).
fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=max).prop_map(String::from_iter)
}

/// Small JSON values of every kind, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text(12).prop_map(Value::String),
        prop::sample::select(vec![
            "model",
            "",
            " ",
            "a\nb",
            "\u{0}",
            "é",
            "x-api-key",
            "-1",
            "1e400",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((text(6), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

// ===== the model extractor =====

fn model_of(body: &[u8]) -> Option<String> {
    let (parts, _) = http::Request::new(()).into_parts();
    JsonModel.extract(&parts, body).map(Cow::into_owned)
}

/// What a JSON parser (the upstream's) reads as the top-level `model` string.
fn parsed_model(body: &[u8]) -> Option<Option<String>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    Some(match value {
        Value::Object(map) => map.get("model").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    })
}

/// A top-level JSON object whose keys include `model` spelled plainly, with escapes, twice, or
/// almost (`Model`, `model `), with arbitrary values and whitespace.
fn model_body() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        r#""model""#,
        r#""mod\u0065l""#,
        r#""\u006dodel""#,
        r#""model ""#,
        r#""Model""#,
        r#""messages""#,
        r#""m\"odel""#,
        r#""""#,
        r#""\\model""#,
    ]);
    let value = prop_oneof![
        3 => text(8).prop_map(|s| Value::String(s).to_string()),
        1 => Just(r#""a\"b\\c\u00e9""#.to_owned()),
        2 => json_value().prop_map(|v| v.to_string()),
        1 => json_value().prop_map(|v| serde_json::to_string_pretty(&v).unwrap()),
    ];
    let ws = prop::sample::select(vec!["", " ", "\n\t", "\r\n  "]);
    prop::collection::vec((key, value, ws.clone(), ws), 0..6).prop_map(|members| {
        let inner: Vec<String> = members
            .into_iter()
            .map(|(k, v, a, b)| format!("{a}{k}{b}:{a}{v}{b}"))
            .collect();
        format!("{{{}}}", inner.join(","))
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_model_extractor_takes_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = model_of(&body);
    }

    #[test]
    fn the_model_extractor_takes_arbitrary_json_text(body in "[{}\\[\\]\":,\\\\ a-z0-9u]{0,48}") {
        let _ = model_of(body.as_bytes());
    }

    /// Duplicate and escaped `model` keys cannot make the layer select for another model than
    /// the one the upstream reads.
    #[test]
    fn the_model_extractor_reads_what_a_json_parser_reads(body in model_body()) {
        if let Some(expected) = parsed_model(body.as_bytes()) {
            prop_assert_eq!(model_of(body.as_bytes()), expected, "{}", body);
        }
    }

    /// Any cut of a body (a prefix held under the replay cap) is safe to scan.
    #[test]
    fn the_model_extractor_takes_any_prefix(body in model_body(), cut in any::<prop::sample::Index>()) {
        let bytes = body.as_bytes();
        let _ = model_of(&bytes[..cut.index(bytes.len() + 1)]);
    }
}

// ===== pool files =====

const POOL_FIELDS: &[&str] = &[
    "uuid",
    "apiKey",
    "bearerToken",
    "headerName",
    "KIRO_OAUTH_CREDS_FILE_PATH",
    "KIRO_OAUTH_CREDS_BASE64",
    "isDisabled",
    "models",
    "notSupportedModels",
    "weight",
    "priority",
    "maxInFlight",
    "checkModelName",
    "baseUrl",
    "isHealthy",
    "errorCount",
    "usageCount",
    "lastUsed",
    "lastErrorTime",
    "lastErrorMessage",
    "lastHealthCheckTime",
    "lastHealthCheckModel",
    "checkHealth",
    "cachedEmail",
    "cachedUserId",
    "unknownField",
];

/// Values a pool file field may hold or be mistyped as.
fn pool_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => json_value(),
        2 => prop::sample::select(vec![
            "acct-1", "acct-2", "", " ", "sk-live-0123456789", "Bearer x", "x-api-key",
            "bad header", "a\nb", "/tmp/none.json", "eyJyZWZyZXNoVG9rZW4iOiJydCJ9",
            "not base64!", "2026-01-01T00:00:00Z", "yesterday", "http://127.0.0.1:1",
            "claude-sonnet-4-5",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
        1 => prop::sample::select(vec![
            Value::from(0), Value::from(1), Value::from(-1), Value::from(u32::MAX),
            Value::from(u64::MAX), Value::from(1.5), Value::from(1e300), Value::Bool(true),
        ]),
        1 => prop::collection::vec("[a-z0-9.-]{0,8}", 0..3)
            .prop_map(|v| Value::Array(v.into_iter().map(Value::String).collect())),
    ]
}

/// A value of the right type for `field` (which may still be refused: `0` weight, a bad
/// header name, …).
fn valid_pool_value(field: &'static str) -> BoxedStrategy<Value> {
    let small = |v: Vec<&'static str>| {
        prop::sample::select(v)
            .prop_map(|s| Value::String(s.to_owned()))
            .boxed()
    };
    match field {
        "isDisabled" | "isHealthy" | "checkHealth" => any::<bool>().prop_map(Value::Bool).boxed(),
        "weight" | "priority" | "maxInFlight" | "errorCount" => prop_oneof![
            0u64..5,
            Just(u64::from(u32::MAX)),
            Just(u64::from(u32::MAX) + 1)
        ]
        .prop_map(Value::from)
        .boxed(),
        "usageCount" => any::<u64>().prop_map(Value::from).boxed(),
        "lastUsed" | "lastErrorTime" | "lastHealthCheckTime" => prop_oneof![
            prop_oneof![0u64..4_000_000_000_000, Just(u64::MAX)].prop_map(Value::from),
            small(vec![
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:00:00.123+02:00",
                "1969-12-31T23:59:59Z",
                "9999-12-31T23:59:59.999Z",
                "2026-02-30T00:00:00Z",
            ]),
        ]
        .boxed(),
        "models" | "notSupportedModels" => prop::collection::vec(text(6), 0..3)
            .prop_map(|v| Value::Array(v.into_iter().map(Value::String).collect()))
            .boxed(),
        "headerName" => small(vec!["x-api-key", "authorization", "bad header", ""]),
        "baseUrl" => small(vec![
            "http://127.0.0.1:1",
            "https://example.com/v1",
            "",
            "::",
        ]),
        "KIRO_OAUTH_CREDS_BASE64" => small(vec![
            "eyJyZWZyZXNoVG9rZW4iOiJydCJ9",
            "eyJyZWZyZXNoVG9rZW4iOiJydCJ9==",
            "not base64!",
            "W10=",
        ]),
        _ => prop_oneof![text(8), Just("sk-live-0123456789".to_owned())]
            .prop_map(Value::String)
            .boxed(),
    }
}

fn pool_entry() -> impl Strategy<Value = Value> {
    let field = prop::sample::select(POOL_FIELDS).prop_flat_map(|field| {
        let value = prop_oneof![4 => valid_pool_value(field), 1 => pool_value()];
        (Just(field), value)
    });
    prop::collection::vec(field, 0..4).prop_map(|fields| {
        Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    })
}

/// A pool file in any of its shapes (or none), with entries mixing valid and invalid fields.
fn pool_document() -> impl Strategy<Value = Value> {
    // Most entries start valid (a unique id and a key) and then get arbitrary fields, so
    // that many documents parse and the render round trip is exercised.
    let entry = (
        prop::bool::weighted(0.9),
        prop_oneof![9 => pool_entry(), 1 => json_value()],
    );
    let entries = prop::collection::vec(entry, 0..4).prop_map(|entries| {
        entries
            .into_iter()
            .enumerate()
            .map(|(i, (valid_base, extra))| match (valid_base, extra) {
                (true, Value::Object(fields)) => {
                    let mut entry = Map::new();
                    entry.insert("uuid".into(), Value::String(format!("acct-{i}")));
                    entry.insert("apiKey".into(), Value::String(format!("sk-fuzz-{i}")));
                    entry.extend(fields);
                    Value::Object(entry)
                }
                (_, other) => other,
            })
            .collect::<Vec<_>>()
    });
    (
        entries,
        prop_oneof![3 => 0..3u8, 1 => 3..5u8],
        prop::collection::vec((text(6), json_value()), 0..2),
    )
        .prop_map(|(entries, shape, other)| {
            let list = Value::Array(entries);
            let mut top: Map<String, Value> = other.into_iter().collect();
            match shape {
                0 => return list,
                1 => {
                    top.insert("accounts".into(), list);
                }
                2 => {
                    top.insert("claude-kiro-oauth".into(), list);
                }
                3 => {
                    top.insert("accounts".into(), list.clone());
                    top.insert("claude-kiro-oauth".into(), list);
                }
                _ => {
                    top.insert("accounts".into(), Value::String("not a list".into()));
                }
            }
            Value::Object(top)
        })
}

/// The property below is not vacuous: many generated files parse, with accounts.
#[test]
fn generated_pool_files_often_parse() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let parsed = (0..500)
        .filter(|_| {
            let doc = pool_document().new_tree(&mut runner).unwrap().current();
            parse_pool(doc.to_string().as_bytes()).is_ok_and(|f| !f.entries().is_empty())
        })
        .count();
    assert!(
        parsed > 50,
        "only {parsed} of 500 generated pool files parse with accounts"
    );
}

fn parse_pool(bytes: &[u8]) -> Result<PoolFile, String> {
    PoolFile::parse(Path::new("fuzz-pool.json"), bytes).map_err(|e| e.to_string())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn pool_files_take_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Err(message) = parse_pool(&bytes) {
            prop_assert!(message.contains("fuzz-pool.json"), "{}", message);
        }
    }

    /// Near-valid pool files: a clear error naming the file, or a file that renders back to
    /// text that loads to the same accounts.
    #[test]
    fn pool_files_take_arbitrary_json(doc in pool_document()) {
        let text = doc.to_string();
        match parse_pool(text.as_bytes()) {
            Err(message) => prop_assert!(message.contains("fuzz-pool.json"), "{}", message),
            Ok(file) => {
                let rendered = file.render();
                let again = parse_pool(rendered.as_bytes());
                prop_assert!(again.is_ok(), "{} rendered as {} fails: {:?}", text, rendered, again.err());
                let ids = |f: &PoolFile| -> Vec<String> {
                    f.entries().iter().map(|e| e.id().to_string()).collect()
                };
                prop_assert_eq!(ids(&again.unwrap()), ids(&file));
            }
        }
    }
}

// ===== Kiro: event streams and token files =====

#[cfg(feature = "kiro")]
mod kiro {
    use super::*;
    use tower_account_pool::kiro::eventstream::{
        decode, decode_all, DecodeError, Decoder, Header, HeaderValue, Message, PRELUDE_LEN,
    };
    use tower_account_pool::kiro::token_file::{format_iso8601, parse_iso8601};
    use tower_account_pool::kiro::{KiroCredential, KiroOptions};

    /// CRC-32 (IEEE), to build frames whose checksums are right around arbitrary contents.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A frame with correct lengths and CRCs around an arbitrary header block and payload, so
    /// that the header parser sees the bytes.
    fn framed(headers: &[u8], payload: &[u8]) -> Vec<u8> {
        let total = (PRELUDE_LEN + headers.len() + payload.len() + 4) as u32;
        let mut out = Vec::with_capacity(total as usize);
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        let prelude_crc = crc32(&out);
        out.extend_from_slice(&prelude_crc.to_be_bytes());
        out.extend_from_slice(headers);
        out.extend_from_slice(payload);
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            any::<bool>().prop_map(HeaderValue::Bool),
            any::<i8>().prop_map(HeaderValue::Byte),
            any::<i16>().prop_map(HeaderValue::Int16),
            any::<i32>().prop_map(HeaderValue::Int32),
            any::<i64>().prop_map(HeaderValue::Int64),
            prop::collection::vec(any::<u8>(), 0..12).prop_map(HeaderValue::Bytes),
            text(12).prop_map(HeaderValue::String),
            any::<i64>().prop_map(HeaderValue::Timestamp),
            any::<[u8; 16]>().prop_map(HeaderValue::Uuid),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            prop::collection::vec(("[:a-z-]{1,12}", header_value()), 0..4),
            prop::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(headers, payload)| Message {
                headers: headers
                    .into_iter()
                    .map(|(name, value)| Header { name, value })
                    .collect(),
                payload,
            })
    }

    /// Feeds `chunks` one by one, taking every message as soon as it completes; the messages,
    /// and the error that stopped decoding (or `finish`'s verdict).
    fn feed<'a>(
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> (Vec<Message>, Result<(), DecodeError>) {
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.push(chunk);
            loop {
                match decoder.next_message() {
                    Ok(Some(m)) => out.push(m),
                    Ok(None) => break,
                    Err(e) => return (out, Err(e)),
                }
            }
        }
        let end = decoder.finish();
        (out, end)
    }

    /// `bytes` cut at the given positions.
    fn split<'a>(bytes: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
    }

    /// Bytes that are partly well-formed frames and partly damage.
    fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            3 => message().prop_map(|m| m.encode().expect("small messages encode")),
            2 => (prop::collection::vec(any::<u8>(), 0..24), prop::collection::vec(any::<u8>(), 0..8))
                .prop_map(|(h, p)| framed(&h, &p)),
            1 => prop::collection::vec(any::<u8>(), 0..20),
        ];
        (
            prop::collection::vec(piece, 0..4),
            any::<prop::sample::Index>(),
            any::<u8>(),
        )
            .prop_map(|(pieces, at, flip)| {
                let mut bytes = pieces.concat();
                // Sometimes damage one byte.
                if flip % 4 == 0 && !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] ^= flip | 1;
                }
                bytes
            })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn the_decoder_takes_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Err(e) = decode_all(&bytes) {
                prop_assert!(e.to_string().starts_with("event-stream "), "{}", e);
            }
            let _ = decode(&bytes);
        }

        /// Frames with right lengths and CRCs but arbitrary header blocks reach the header
        /// parser, which refuses bad ones with a clear error.
        #[test]
        fn the_header_parser_takes_arbitrary_blocks(
            headers in prop::collection::vec(any::<u8>(), 0..40),
            payload in prop::collection::vec(any::<u8>(), 0..8),
        ) {
            let bytes = framed(&headers, &payload);
            match decode_all(&bytes) {
                Ok(messages) => {
                    prop_assert_eq!(messages.len(), 1);
                    prop_assert_eq!(&messages[0].payload, &payload);
                    // What decoded re-encodes to the same bytes.
                    prop_assert_eq!(messages[0].encode().unwrap(), bytes);
                }
                Err(e) => prop_assert!(
                    matches!(e, DecodeError::BadHeader(_) | DecodeError::UnknownHeaderType { .. }),
                    "{}", e
                ),
            }
        }

        #[test]
        fn encode_then_decode_is_the_identity(messages in prop::collection::vec(message(), 1..4)) {
            let bytes: Vec<u8> = messages.iter().flat_map(|m| m.encode().unwrap()).collect();
            prop_assert_eq!(decode_all(&bytes).unwrap(), messages);
        }

        /// Decoding in chunks cut anywhere gives what decoding in one piece gives: the same
        /// messages and the same error, for good and damaged streams alike.
        #[test]
        fn decoding_split_anywhere_equals_decoding_whole(
            bytes in stream_bytes(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let whole = feed([bytes.as_slice()]);
            let pieces = feed(split(&bytes, &cuts));
            prop_assert_eq!(&pieces, &whole);
            let bytewise = feed(bytes.chunks(1));
            prop_assert_eq!(bytewise, whole);
        }
    }

    // ===== token files =====

    const SECRET_AT: &str = "at-SECRET-0123456789abcdef";
    const SECRET_RT: &str = "rt-SECRET-0123456789abcdef";

    const TOKEN_FIELDS: &[&str] = &[
        "accessToken",
        "refreshToken",
        "expiresAt",
        "authMethod",
        "clientId",
        "clientSecret",
        "profileArn",
        "region",
        "provider",
        "other",
    ];

    fn token_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            3 => json_value(),
            3 => prop::sample::select(vec![
                SECRET_AT, SECRET_RT, "", "  ", "social", "IdC", "idc", "builder-id", "magic",
                "2026-01-01T00:00:00Z", "2026-13-01T00:00:00Z", "2026-01-01T00:00:00.5+01:00",
                "us-east-1", "arn:aws:codewhisperer:us-east-1:1:profile/P",
            ])
            .prop_map(|s| Value::String(s.to_owned())),
            1 => prop::sample::select(vec![
                Value::from(0), Value::from(-1), Value::from(1_767_225_600_000u64),
                Value::from(u64::MAX), Value::from(i64::MIN), Value::from(1e300), Value::from(-0.5),
            ]),
        ]
    }

    fn token_document() -> impl Strategy<Value = Value> {
        prop_oneof![
            8 => prop::collection::vec((prop::sample::select(TOKEN_FIELDS), token_value()), 0..8)
                .prop_map(|f| Value::Object(f.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
            1 => json_value(),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn token_json_takes_arbitrary_text(text in text(48)) {
            if let Err(e) = KiroCredential::from_json(&text, KiroOptions::default()) {
                prop_assert!(e.to_string().contains("<inline credentials>"), "{}", e);
            }
        }

        /// Near-valid token files: an error or a credential, and neither its error message nor
        /// its Debug output holds a token.
        #[test]
        fn token_json_never_leaks_a_token(doc in token_document()) {
            let text = doc.to_string();
            match KiroCredential::from_json(&text, KiroOptions::default()) {
                Err(e) => {
                    let shown = format!("{e} {e:?}");
                    prop_assert!(!shown.contains("SECRET"), "{}", shown);
                }
                Ok(credential) => {
                    let shown = format!("{credential:?}");
                    prop_assert!(!shown.contains("SECRET"), "{}", shown);
                }
            }
        }

        #[test]
        fn iso_dates_take_arbitrary_text(text in prop_oneof!["[0-9T:.Z+ -]{0,30}", text(30)]) {
            let _ = parse_iso8601(&text);
        }

        /// Every time the token file writer emits (milliseconds, 1970 to 9999) reads back.
        #[test]
        fn iso_dates_round_trip(millis in 0u64..253_402_300_799_999) {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis);
            prop_assert_eq!(parse_iso8601(&format_iso8601(t)), Some(t));
        }
    }

    /// Token files from disk: arbitrary bytes (not only UTF-8) give an error naming the file.
    #[test]
    fn token_files_take_arbitrary_bytes() {
        use proptest::test_runner::TestRunner;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.json");
        let mut runner = TestRunner::new(config());
        let bytes = prop_oneof![
            2 => prop::collection::vec(any::<u8>(), 0..48),
            1 => token_document().prop_map(|d| d.to_string().into_bytes()),
        ];
        runner
            .run(&bytes, |bytes| {
                std::fs::write(&path, &bytes).unwrap();
                if let Err(e) = KiroCredential::from_file(&path, KiroOptions::default()) {
                    let shown = e.to_string();
                    prop_assert!(shown.contains("token.json"), "{}", shown);
                    prop_assert!(!shown.contains("SECRET"), "{}", shown);
                }
                Ok(())
            })
            .unwrap();
    }
}
