//! The event-stream codec: every header type, both CRCs, truncation, incremental decoding.
#![cfg(feature = "kiro")]

use tower_account_pool::kiro::eventstream::{
    decode, decode_all, DecodeError, Decoder, HeaderValue, Message,
};

fn every_header_type() -> Message {
    Message::new(br#"{"content":"x"}"#.to_vec())
        .with_header("t", HeaderValue::Bool(true))
        .with_header("f", HeaderValue::Bool(false))
        .with_header("byte", HeaderValue::Byte(-7))
        .with_header("i16", HeaderValue::Int16(-1234))
        .with_header("i32", HeaderValue::Int32(0x1234_5678))
        .with_header("i64", HeaderValue::Int64(-9_000_000_000))
        .with_header("bytes", HeaderValue::Bytes(vec![0, 1, 2, 255]))
        .with_header(
            ":event-type",
            HeaderValue::String("assistantResponseEvent".into()),
        )
        .with_header("ts", HeaderValue::Timestamp(1_764_000_000_123))
        .with_header("id", HeaderValue::Uuid(*b"0123456789abcdef"))
}

#[test]
fn every_header_type_round_trips() {
    let message = every_header_type();
    let bytes = message.encode().unwrap();
    let (decoded, used) = decode(&bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(decoded, message);
    let tags: Vec<u8> = decoded.headers.iter().map(|h| h.value.type_tag()).collect();
    assert_eq!(tags, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
}

#[test]
fn known_frame_layout() {
    // An empty message: 16 bytes, prelude CRC of [0,0,0,16,0,0,0,0] is 0x05c248eb.
    let bytes = Message::default().encode().unwrap();
    assert_eq!(&bytes[..8], &[0, 0, 0, 16, 0, 0, 0, 0]);
    assert_eq!(&bytes[8..12], &0x05c2_48ebu32.to_be_bytes());
    assert_eq!(&bytes[12..], &0x7d98_c8ffu32.to_be_bytes());
    assert_eq!(decode_all(&bytes).unwrap(), vec![Message::default()]);
}

#[test]
fn bad_prelude_crc_is_rejected() {
    let mut bytes = every_header_type().encode().unwrap();
    bytes[9] ^= 0x01;
    assert!(matches!(
        decode(&bytes),
        Err(DecodeError::PreludeCrc { .. })
    ));
    // A corrupted length is caught by the prelude CRC too, before it is trusted.
    let mut bytes = every_header_type().encode().unwrap();
    bytes[3] ^= 0x40;
    assert!(matches!(
        decode(&bytes),
        Err(DecodeError::PreludeCrc { .. })
    ));
}

#[test]
fn bad_message_crc_is_rejected() {
    let mut bytes = every_header_type().encode().unwrap();
    let last = bytes.len() - 6; // a payload byte
    bytes[last] ^= 0xff;
    let err = decode(&bytes).unwrap_err();
    assert!(matches!(err, DecodeError::MessageCrc { .. }), "{err}");
    assert!(err.to_string().contains("message CRC mismatch"));
}

#[test]
fn truncated_frames_wait_then_fail_at_the_end() {
    let bytes = every_header_type().encode().unwrap();
    for cut in [0, 5, 11, 12, 30, bytes.len() - 1] {
        assert_eq!(decode(&bytes[..cut]).unwrap(), None, "cut at {cut}");
    }
    let mut decoder = Decoder::new();
    decoder.push(&bytes[..bytes.len() - 3]);
    assert!(decoder.next_message().unwrap().is_none());
    assert_eq!(
        decoder.finish(),
        Err(DecodeError::Truncated {
            needed: bytes.len(),
            available: bytes.len() - 3
        })
    );
    let mut decoder = Decoder::new();
    decoder.push(&bytes[..7]);
    assert_eq!(
        decoder.finish(),
        Err(DecodeError::Truncated {
            needed: 12,
            available: 7
        })
    );
    assert!(decode_all(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn decodes_byte_by_byte_across_frames() {
    let a = Message::event("assistantResponseEvent", br#"{"content":"a"}"#.to_vec());
    let b = Message::exception(
        "ThrottlingException",
        br#"{"message":"slow down"}"#.to_vec(),
    );
    let mut stream = a.encode().unwrap();
    stream.extend(b.encode().unwrap());
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    for byte in &stream {
        decoder.push(std::slice::from_ref(byte));
        while let Some(m) = decoder.next_message().unwrap() {
            out.push(m);
        }
    }
    decoder.finish().unwrap();
    assert_eq!(out, vec![a, b]);
    assert_eq!(out[1].message_type(), Some("exception"));
    assert_eq!(out[1].exception_type(), Some("ThrottlingException"));
}

fn frame_with_raw_headers(headers: &[u8]) -> Vec<u8> {
    let total = 16 + headers.len();
    let mut out = Vec::new();
    out.extend((total as u32).to_be_bytes());
    out.extend((headers.len() as u32).to_be_bytes());
    out.extend(crc32fast::hash(&out).to_be_bytes());
    out.extend(headers);
    out.extend(crc32fast::hash(&out).to_be_bytes());
    out
}

#[test]
fn malformed_headers_are_rejected() {
    // Type 10 does not exist.
    let bytes = frame_with_raw_headers(&[1, b'x', 10]);
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::UnknownHeaderType {
            name: "x".into(),
            tag: 10
        })
    );
    // A string header whose length runs past the block.
    let bytes = frame_with_raw_headers(&[1, b'x', 7, 0, 9, b'a']);
    assert!(matches!(decode(&bytes), Err(DecodeError::BadHeader(_))));
    // An int64 cut short.
    let bytes = frame_with_raw_headers(&[1, b'x', 5, 0, 0]);
    assert!(matches!(decode(&bytes), Err(DecodeError::BadHeader(_))));
}

#[test]
fn impossible_lengths_are_rejected() {
    let mut out = Vec::new();
    out.extend(8u32.to_be_bytes());
    out.extend(0u32.to_be_bytes());
    out.extend(crc32fast::hash(&out).to_be_bytes());
    assert_eq!(decode(&out), Err(DecodeError::InvalidLength(8)));

    let mut out = Vec::new();
    out.extend(20u32.to_be_bytes());
    out.extend(10u32.to_be_bytes());
    out.extend(crc32fast::hash(&out).to_be_bytes());
    assert_eq!(
        decode(&out),
        Err(DecodeError::HeadersOverflow {
            headers: 10,
            total: 20
        })
    );
}

/// Re-seals a frame's CRCs after a mutation so the decoder reaches the header parser.
fn reseal(frame: &mut [u8]) {
    let prelude = crc32fast::hash(&frame[..8]);
    frame[8..12].copy_from_slice(&prelude.to_be_bytes());
    let end = frame.len() - 4;
    let message = crc32fast::hash(&frame[..end]);
    frame[end..].copy_from_slice(&message.to_be_bytes());
}

#[test]
fn mutated_frames_never_panic() {
    let original = every_header_type().encode().unwrap();
    let mut rng = fastrand::Rng::with_seed(42);
    for round in 0..20_000 {
        let mut frame = original.clone();
        for _ in 0..rng.usize(1..4) {
            // Mutate the header block (bytes 12..) so lengths and tags go wrong.
            let at = rng.usize(12..frame.len() - 4);
            frame[at] = rng.u8(..);
        }
        reseal(&mut frame);
        let _ = decode(&frame);
        // Random garbage in random chunks.
        let mut decoder = Decoder::new();
        let garbage: Vec<u8> = (0..rng.usize(..64)).map(|_| rng.u8(..)).collect();
        for chunk in garbage.chunks(rng.usize(1..8)) {
            decoder.push(chunk);
            if decoder.next_message().is_err() {
                break;
            }
        }
        let _ = decoder.finish();
        if round % 1000 == 0 {
            assert_eq!(decode(&original).unwrap().unwrap().1, original.len());
        }
    }
}
