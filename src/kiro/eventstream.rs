//! The AWS event-stream binary framing Kiro streams its answers in.
//!
//! Each message is a 12-byte prelude (total length, headers length, prelude CRC32), typed
//! headers, a payload and a CRC32 of everything before it. Both CRCs are checked; every header
//! value type (0–9) is read and written. [`Decoder`] decodes incrementally from chunks as they
//! arrive.
//!
//! ```
//! use tower_account_pool::kiro::eventstream::{Decoder, Message};
//!
//! let bytes = Message::event("assistantResponseEvent", br#"{"content":"Hi"}"#.to_vec())
//!     .encode()
//!     .unwrap();
//! let mut decoder = Decoder::new();
//! decoder.push(&bytes[..5]); // a partial frame: nothing yet
//! assert!(decoder.next_message().unwrap().is_none());
//! decoder.push(&bytes[5..]);
//! let message = decoder.next_message().unwrap().unwrap();
//! assert_eq!(message.event_type(), Some("assistantResponseEvent"));
//! assert_eq!(message.payload, br#"{"content":"Hi"}"#);
//! decoder.finish().unwrap(); // nothing left over
//! ```

use std::fmt;

/// Bytes before the headers: total length, headers length, prelude CRC.
pub const PRELUDE_LEN: usize = 12;
/// The smallest possible message: a prelude and a message CRC.
pub const MIN_MESSAGE_LEN: usize = PRELUDE_LEN + 4;
/// The largest message accepted (16 MiB, the AWS limit).
pub const MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;

/// A typed header value (the AWS event-stream value types 0–9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Types 0 (true) and 1 (false): no value bytes.
    Bool(bool),
    /// Type 2: one signed byte.
    Byte(i8),
    /// Type 3: big-endian i16.
    Int16(i16),
    /// Type 4: big-endian i32.
    Int32(i32),
    /// Type 5: big-endian i64.
    Int64(i64),
    /// Type 6: bytes with a u16 length.
    Bytes(Vec<u8>),
    /// Type 7: UTF-8 string with a u16 length.
    String(String),
    /// Type 8: milliseconds since the Unix epoch, big-endian i64.
    Timestamp(i64),
    /// Type 9: 16 bytes.
    Uuid([u8; 16]),
}

impl HeaderValue {
    /// The wire type tag.
    pub fn type_tag(&self) -> u8 {
        match self {
            HeaderValue::Bool(true) => 0,
            HeaderValue::Bool(false) => 1,
            HeaderValue::Byte(_) => 2,
            HeaderValue::Int16(_) => 3,
            HeaderValue::Int32(_) => 4,
            HeaderValue::Int64(_) => 5,
            HeaderValue::Bytes(_) => 6,
            HeaderValue::String(_) => 7,
            HeaderValue::Timestamp(_) => 8,
            HeaderValue::Uuid(_) => 9,
        }
    }

    /// The value as a string, when it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// One header: a name (at most 255 bytes) and a typed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The header name, e.g. `:event-type`.
    pub name: String,
    /// Its value.
    pub value: HeaderValue,
}

/// One event-stream message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Headers, in wire order.
    pub headers: Vec<Header>,
    /// The payload (JSON for Kiro).
    pub payload: Vec<u8>,
}

impl Message {
    /// A message with a payload and no headers.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Message {
            headers: Vec::new(),
            payload: payload.into(),
        }
    }

    /// An `event` message as Kiro sends it: `:message-type`, `:event-type`, `:content-type`.
    pub fn event(event_type: &str, payload: impl Into<Vec<u8>>) -> Self {
        Message::new(payload)
            .with_header(":message-type", HeaderValue::String("event".into()))
            .with_header(":event-type", HeaderValue::String(event_type.into()))
            .with_header(
                ":content-type",
                HeaderValue::String("application/json".into()),
            )
    }

    /// An `exception` message: `:message-type: exception` with an `:exception-type`.
    pub fn exception(exception_type: &str, payload: impl Into<Vec<u8>>) -> Self {
        Message::new(payload)
            .with_header(":message-type", HeaderValue::String("exception".into()))
            .with_header(
                ":exception-type",
                HeaderValue::String(exception_type.into()),
            )
            .with_header(
                ":content-type",
                HeaderValue::String("application/json".into()),
            )
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: HeaderValue) -> Self {
        self.headers.push(Header {
            name: name.into(),
            value,
        });
        self
    }

    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| &h.value)
    }

    /// The first string header with this name.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(HeaderValue::as_str)
    }

    /// `:message-type` (`event`, `exception` or `error`).
    pub fn message_type(&self) -> Option<&str> {
        self.header_str(":message-type")
    }

    /// `:event-type` of an event.
    pub fn event_type(&self) -> Option<&str> {
        self.header_str(":event-type")
    }

    /// `:exception-type` of an exception.
    pub fn exception_type(&self) -> Option<&str> {
        self.header_str(":exception-type")
    }

    /// Encodes the message with both CRCs.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut headers = Vec::new();
        for header in &self.headers {
            let name = header.name.as_bytes();
            if name.is_empty() || name.len() > 255 {
                return Err(EncodeError::HeaderName(header.name.clone()));
            }
            headers.push(name.len() as u8);
            headers.extend_from_slice(name);
            headers.push(header.value.type_tag());
            match &header.value {
                HeaderValue::Bool(_) => {}
                HeaderValue::Byte(v) => headers.extend_from_slice(&v.to_be_bytes()),
                HeaderValue::Int16(v) => headers.extend_from_slice(&v.to_be_bytes()),
                HeaderValue::Int32(v) => headers.extend_from_slice(&v.to_be_bytes()),
                HeaderValue::Int64(v) | HeaderValue::Timestamp(v) => {
                    headers.extend_from_slice(&v.to_be_bytes())
                }
                HeaderValue::Bytes(b) => push_u16_prefixed(&mut headers, b, &header.name)?,
                HeaderValue::String(s) => {
                    push_u16_prefixed(&mut headers, s.as_bytes(), &header.name)?
                }
                HeaderValue::Uuid(u) => headers.extend_from_slice(u),
            }
        }
        let total = MIN_MESSAGE_LEN + headers.len() + self.payload.len();
        if total > MAX_MESSAGE_LEN {
            return Err(EncodeError::TooLarge(total));
        }
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&(total as u32).to_be_bytes());
        out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        let prelude_crc = crc32fast::hash(&out);
        out.extend_from_slice(&prelude_crc.to_be_bytes());
        out.extend_from_slice(&headers);
        out.extend_from_slice(&self.payload);
        let message_crc = crc32fast::hash(&out);
        out.extend_from_slice(&message_crc.to_be_bytes());
        Ok(out)
    }
}

fn push_u16_prefixed(out: &mut Vec<u8>, bytes: &[u8], name: &str) -> Result<(), EncodeError> {
    let len = u16::try_from(bytes.len()).map_err(|_| EncodeError::HeaderValue(name.into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// A message that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A header name is empty or longer than 255 bytes.
    #[error("event-stream header name `{0}` must be 1 to 255 bytes")]
    HeaderName(String),
    /// A bytes or string header value is longer than 65 535 bytes.
    #[error("event-stream header `{0}`: value longer than 65535 bytes")]
    HeaderValue(String),
    /// The message would exceed [`MAX_MESSAGE_LEN`].
    #[error("event-stream message of {0} bytes exceeds the 16 MiB limit")]
    TooLarge(usize),
}

/// A frame that cannot be decoded. After any error but [`DecodeError::Truncated`] the stream is
/// corrupt: framing cannot be recovered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The prelude CRC does not match.
    #[error(
        "event-stream prelude CRC mismatch: frame says {expected:#010x}, computed {computed:#010x}"
    )]
    PreludeCrc {
        /// The CRC in the frame.
        expected: u32,
        /// The CRC of the bytes received.
        computed: u32,
    },
    /// The message CRC does not match.
    #[error(
        "event-stream message CRC mismatch: frame says {expected:#010x}, computed {computed:#010x}"
    )]
    MessageCrc {
        /// The CRC in the frame.
        expected: u32,
        /// The CRC of the bytes received.
        computed: u32,
    },
    /// The total length is below 16 bytes or above 16 MiB.
    #[error("event-stream frame length {0} is outside 16 bytes to 16 MiB")]
    InvalidLength(u32),
    /// The headers do not fit in the frame.
    #[error("event-stream headers length {headers} does not fit a frame of {total} bytes")]
    HeadersOverflow {
        /// The headers length in the prelude.
        headers: u32,
        /// The frame's total length.
        total: u32,
    },
    /// A header is malformed (runs past the headers block, bad UTF-8, empty name).
    #[error("event-stream header block malformed: {0}")]
    BadHeader(&'static str),
    /// A header has a value type outside 0–9.
    #[error("event-stream header `{name}` has unknown value type {tag}")]
    UnknownHeaderType {
        /// The header name.
        name: String,
        /// The type tag.
        tag: u8,
    },
    /// The stream ended inside a frame.
    #[error("event-stream truncated: {available} bytes left over, frame needs {needed}")]
    Truncated {
        /// Bytes the frame needs (12 while the prelude itself is incomplete).
        needed: usize,
        /// Bytes received.
        available: usize,
    },
}

/// Decodes one message from the start of `buf`.
///
/// Returns the message and the bytes it used, or `Ok(None)` when `buf` holds only part of a
/// frame.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    if buf.len() < PRELUDE_LEN {
        return Ok(None);
    }
    let total = be_u32(&buf[0..4]);
    let headers_len = be_u32(&buf[4..8]);
    let expected = be_u32(&buf[8..12]);
    let computed = crc32fast::hash(&buf[0..8]);
    if expected != computed {
        return Err(DecodeError::PreludeCrc { expected, computed });
    }
    if (total as usize) < MIN_MESSAGE_LEN || total as usize > MAX_MESSAGE_LEN {
        return Err(DecodeError::InvalidLength(total));
    }
    let total_len = total as usize;
    if headers_len as usize > total_len - MIN_MESSAGE_LEN {
        return Err(DecodeError::HeadersOverflow {
            headers: headers_len,
            total,
        });
    }
    if buf.len() < total_len {
        return Ok(None);
    }
    let frame = &buf[..total_len];
    let expected = be_u32(&frame[total_len - 4..]);
    let computed = crc32fast::hash(&frame[..total_len - 4]);
    if expected != computed {
        return Err(DecodeError::MessageCrc { expected, computed });
    }
    let headers_end = PRELUDE_LEN + headers_len as usize;
    let headers = decode_headers(&frame[PRELUDE_LEN..headers_end])?;
    let payload = frame[headers_end..total_len - 4].to_vec();
    Ok(Some((Message { headers, payload }, total_len)))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn take<'a>(block: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], DecodeError> {
    let end = at
        .checked_add(n)
        .filter(|&end| end <= block.len())
        .ok_or(DecodeError::BadHeader(
            "a header runs past the header block",
        ))?;
    let bytes = &block[*at..end];
    *at = end;
    Ok(bytes)
}

fn decode_headers(block: &[u8]) -> Result<Vec<Header>, DecodeError> {
    let mut headers = Vec::new();
    let mut at = 0;
    while at < block.len() {
        let name_len = take(block, &mut at, 1)?[0] as usize;
        if name_len == 0 {
            return Err(DecodeError::BadHeader("empty header name"));
        }
        let name = std::str::from_utf8(take(block, &mut at, name_len)?)
            .map_err(|_| DecodeError::BadHeader("header name is not UTF-8"))?
            .to_owned();
        let tag = take(block, &mut at, 1)?[0];
        let value = match tag {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(take(block, &mut at, 1)?[0] as i8),
            3 => {
                let b = take(block, &mut at, 2)?;
                HeaderValue::Int16(i16::from_be_bytes([b[0], b[1]]))
            }
            4 => HeaderValue::Int32(be_u32(take(block, &mut at, 4)?) as i32),
            5 | 8 => {
                let b = take(block, &mut at, 8)?;
                let v = i64::from_be_bytes(b.try_into().expect("8 bytes"));
                if tag == 5 {
                    HeaderValue::Int64(v)
                } else {
                    HeaderValue::Timestamp(v)
                }
            }
            6 | 7 => {
                let b = take(block, &mut at, 2)?;
                let len = u16::from_be_bytes([b[0], b[1]]) as usize;
                let bytes = take(block, &mut at, len)?;
                if tag == 6 {
                    HeaderValue::Bytes(bytes.to_vec())
                } else {
                    HeaderValue::String(
                        std::str::from_utf8(bytes)
                            .map_err(|_| DecodeError::BadHeader("string header is not UTF-8"))?
                            .to_owned(),
                    )
                }
            }
            9 => HeaderValue::Uuid(take(block, &mut at, 16)?.try_into().expect("16 bytes")),
            tag => return Err(DecodeError::UnknownHeaderType { name, tag }),
        };
        headers.push(Header { name, value });
    }
    Ok(headers)
}

/// An incremental decoder: push chunks as they arrive, take messages as they complete.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("buffered", &(self.buf.len() - self.start))
            .finish()
    }
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete message, or `Ok(None)` until more bytes arrive.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        match decode(&self.buf[self.start..])? {
            Some((message, used)) => {
                self.start += used;
                if self.start > 4096 && self.start * 2 > self.buf.len() {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                Ok(Some(message))
            }
            None => Ok(None),
        }
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Declares the end of the stream: an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), DecodeError> {
        let rest = &self.buf[self.start..];
        if rest.is_empty() {
            return Ok(());
        }
        let needed = if rest.len() < PRELUDE_LEN {
            PRELUDE_LEN
        } else {
            be_u32(&rest[0..4]) as usize
        };
        Err(DecodeError::Truncated {
            needed,
            available: rest.len(),
        })
    }
}

/// Decodes a whole buffer into messages; an error if any frame is bad or the last is cut short.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Message>, DecodeError> {
    let mut decoder = Decoder::new();
    decoder.push(bytes);
    let mut out = Vec::new();
    while let Some(message) = decoder.next_message()? {
        out.push(message);
    }
    decoder.finish()?;
    Ok(out)
}
