//! What the layer reads from a request: the model it is for and its affinity key, both by a
//! [`RequestExtractor`].
//!
//! ```
//! use tower_account_pool::layer::{AffinityHeader, JsonModel, RequestExtractor};
//!
//! let request = http::Request::builder().header("x-session-id", "conv-42").body(()).unwrap();
//! let (parts, _) = request.into_parts();
//! let body = br#"{"model":"claude-sonnet-4-5","messages":[]}"#;
//! assert_eq!(JsonModel.extract(&parts, body).as_deref(), Some("claude-sonnet-4-5"));
//! let session = AffinityHeader::new("x-session-id").unwrap();
//! assert_eq!(session.extract(&parts, body).as_deref(), Some("conv-42"));
//! ```

use std::borrow::Cow;
use std::fmt;

use http::header::HeaderName;
use http::request::Parts;

/// Reads a string from a request's head and its buffered body (which may be only a prefix of
/// the body when the body is larger than the replay cap). The layer uses one for each of two
/// roles: the request's model
/// ([`model_extractor`](super::AccountPoolLayer::model_extractor), default [`JsonModel`]) and
/// its affinity key ([`affinity_extractor`](super::AccountPoolLayer::affinity_extractor),
/// default none).
///
/// Closures `Fn(&Parts, &[u8]) -> Option<String>` are extractors too.
///
/// ```
/// use tower_account_pool::layer::RequestExtractor;
///
/// // The model is the last segment of the path: `/v1/models/{model}:generate`.
/// let from_path = |parts: &http::request::Parts, _body: &[u8]| {
///     let last = parts.uri.path().rsplit('/').next()?;
///     Some(last.split(':').next()?.to_owned())
/// };
/// let (parts, _) = http::Request::post("/v1/models/gemini-2.5-pro:generate").body(()).unwrap().into_parts();
/// assert_eq!(from_path.extract(&parts, b"").as_deref(), Some("gemini-2.5-pro"));
/// ```
pub trait RequestExtractor: Send + Sync + 'static {
    /// The value, if the request has one.
    fn extract<'a>(&self, parts: &'a Parts, body: &'a [u8]) -> Option<Cow<'a, str>>;
}

impl<F> RequestExtractor for F
where
    F: Fn(&Parts, &[u8]) -> Option<String> + Send + Sync + 'static,
{
    fn extract<'a>(&self, parts: &'a Parts, body: &'a [u8]) -> Option<Cow<'a, str>> {
        self(parts, body).map(Cow::Owned)
    }
}

/// The default model extractor: the top-level `"model"` string of a JSON body.
///
/// It scans the body without building a document: the top-level keys to the end (a later
/// duplicate `model` is the one the upstream's parser reads), with every value skipped by its
/// structure alone. It works on a prefix of a body too large to buffer as long as the field
/// comes before the cut.
///
/// ```
/// use tower_account_pool::layer::{JsonModel, RequestExtractor};
///
/// let (parts, _) = http::Request::new(()).into_parts();
/// let body = br#"{"messages":[{"model":"not this one"}],"model":"claude-sonnet-4-5","stream":true}"#;
/// assert_eq!(JsonModel.extract(&parts, body).as_deref(), Some("claude-sonnet-4-5"));
/// assert_eq!(JsonModel.extract(&parts, b"not json").as_deref(), None);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonModel;

impl RequestExtractor for JsonModel {
    fn extract<'a>(&self, _parts: &'a Parts, body: &'a [u8]) -> Option<Cow<'a, str>> {
        top_level_string(body, b"model")
    }
}

/// No model: every request is selected as "any model".
#[derive(Debug, Clone, Copy, Default)]
pub struct NoModel;

impl RequestExtractor for NoModel {
    fn extract<'a>(&self, _parts: &'a Parts, _body: &'a [u8]) -> Option<Cow<'a, str>> {
        None
    }
}

/// No affinity key (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAffinity;

impl RequestExtractor for NoAffinity {
    fn extract<'a>(&self, _parts: &'a Parts, _body: &'a [u8]) -> Option<Cow<'a, str>> {
        None
    }
}

/// The value of a request header (e.g. `x-session-id` as the affinity key).
///
/// ```
/// use tower_account_pool::layer::{AffinityHeader, RequestExtractor};
///
/// let request = http::Request::builder().header("x-session-id", "conv-42").body(()).unwrap();
/// let (parts, _) = request.into_parts();
/// let key = AffinityHeader::new("x-session-id").unwrap();
/// assert_eq!(key.extract(&parts, b"").as_deref(), Some("conv-42"));
/// ```
#[derive(Clone)]
pub struct AffinityHeader(HeaderName);

impl AffinityHeader {
    /// Reads `header`; fails if the name is not a valid header name.
    pub fn new(header: &str) -> Result<Self, http::header::InvalidHeaderName> {
        Ok(AffinityHeader(HeaderName::from_bytes(header.as_bytes())?))
    }
}

impl fmt::Debug for AffinityHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AffinityHeader").field(&self.0).finish()
    }
}

impl RequestExtractor for AffinityHeader {
    fn extract<'a>(&self, parts: &'a Parts, _body: &'a [u8]) -> Option<Cow<'a, str>> {
        let value = parts.headers.get(&self.0)?.to_str().ok()?;
        (!value.is_empty()).then_some(Cow::Borrowed(value))
    }
}

/// The string value of `key` in the top-level JSON object of `body`, without building the
/// rest: the top-level keys are scanned (values skipped by structure), so that the value read
/// is the one the upstream's parser will read. A key written with escapes, or `key` given
/// twice (JSON parsers keep the last), falls back to a full parse rather than trusting the
/// first plain match.
pub(crate) fn top_level_string<'a>(body: &'a [u8], key: &[u8]) -> Option<Cow<'a, str>> {
    // The value's quotes, once `key` was seen.
    let mut found: Option<(usize, usize, bool)> = None;
    match scan_keys(body, key, &mut found) {
        Scan::Reparse => return parsed_string(body, key),
        // A body cut short (a prefix of a body too large to hold) or broken after the key
        // keeps what was seen; the upstream judges the rest.
        Scan::Done | Scan::CutShort | Scan::Invalid => {}
    }
    let (start, end, escaped) = found?;
    if escaped {
        serde_json::from_slice::<String>(&body[start..=end])
            .ok()
            .map(Cow::Owned)
    } else {
        std::str::from_utf8(&body[start + 1..end])
            .ok()
            .map(Cow::Borrowed)
    }
}

enum Scan {
    Done,
    CutShort,
    Invalid,
    Reparse,
}

fn scan_keys(body: &[u8], key: &[u8], found: &mut Option<(usize, usize, bool)>) -> Scan {
    macro_rules! at {
        ($i:expr) => {
            match body.get($i) {
                Some(b) => *b,
                None => return Scan::CutShort,
            }
        };
    }
    macro_rules! or_cut {
        ($e:expr) => {
            match $e {
                Some(v) => v,
                None => return Scan::CutShort,
            }
        };
    }
    let mut i = skip_ws(body, 0);
    if at!(i) != b'{' {
        return Scan::Invalid;
    }
    // Whether `key` was seen, with a string value or not: a later duplicate wins.
    let mut seen = false;
    i += 1;
    loop {
        i = skip_ws(body, i);
        match at!(i) {
            b'"' => {}
            b'}' => return Scan::Done,
            _ => return Scan::Invalid,
        }
        let (name_end, name_escaped) = or_cut!(string_end(body, i + 1));
        let name = &body[i + 1..name_end];
        i = skip_ws(body, name_end + 1);
        if at!(i) != b':' {
            return Scan::Invalid;
        }
        i = skip_ws(body, i + 1);
        if name_escaped || (name == key && seen) {
            return Scan::Reparse;
        }
        if name == key {
            seen = true;
            // A value that is not a string names no model, but scanning goes on: a duplicate
            // key later in the body is the one the upstream reads.
            if at!(i) == b'"' {
                let (end, escaped) = or_cut!(string_end(body, i + 1));
                *found = Some((i, end, escaped));
                i = end + 1;
            } else {
                i = or_cut!(skip_value(body, i));
            }
        } else {
            i = or_cut!(skip_value(body, i));
        }
        i = skip_ws(body, i);
        match at!(i) {
            b',' => i += 1,
            b'}' => return Scan::Done,
            _ => return Scan::Invalid,
        }
    }
}

/// `key`'s string value the way a JSON parser reads the body (the last of duplicates).
fn parsed_string<'a>(body: &[u8], key: &[u8]) -> Option<Cow<'a, str>> {
    let key = std::str::from_utf8(key).ok()?;
    match serde_json::from_slice::<serde_json::Value>(body).ok()? {
        serde_json::Value::Object(mut map) => match map.remove(key)? {
            serde_json::Value::String(s) => Some(Cow::Owned(s)),
            _ => None,
        },
        _ => None,
    }
}

fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while matches!(body.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// The index of the closing quote of a string whose content starts at `i`, and whether it
/// holds escapes.
#[inline(always)]
fn string_end(body: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        i += quote_or_backslash(body.get(i..)?)?;
        match body[i] {
            b'"' => return Some((i, escaped)),
            _ => {
                escaped = true;
                i += 2;
            }
        }
    }
}

/// The index of the first `"` or `\\` in `text`. Most keys and short values end within a few
/// bytes: those are searched a word (8 bytes) at a time, where a vectorised search would cost
/// more to set up than to run; past [`WORD_SCAN`] bytes, long string content (most of a request
/// body's bytes) is left to memchr's vectorised search.
#[inline(always)]
fn quote_or_backslash(text: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGHS: u64 = ONES << 7;
    let mut at = 0;
    while at < WORD_SCAN {
        let Some(word) = text.get(at..at + 8) else {
            // Fewer than 8 bytes left.
            let tail = text.get(at..)?;
            return tail
                .iter()
                .position(|&b| b == b'"' || b == b'\\')
                .map(|found| at + found);
        };
        let word = u64::from_le_bytes(word.try_into().ok()?);
        // A byte of `quotes` or `backslashes` is zero where `word` holds that byte; the lowest
        // flagged byte is exact (a borrow only flags bytes above a zero one).
        let quotes = word ^ (ONES * u64::from(b'"'));
        let backslashes = word ^ (ONES * u64::from(b'\\'));
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
        let found = zero(quotes) | zero(backslashes);
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    memchr::memchr2(b'"', b'\\', &text[at..]).map(|found| at + found)
}

/// How many bytes [`quote_or_backslash`] searches a word at a time.
const WORD_SCAN: usize = 32;

/// The index just after the JSON value starting at `i` (structure only; not validated).
fn skip_value(body: &[u8], mut i: usize) -> Option<usize> {
    match body.get(i)? {
        b'"' => Some(string_end(body, i + 1)?.0 + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match body.get(i)? {
                    b'"' => {
                        i = string_end(body, i + 1)?.0;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            while !matches!(
                body.get(i),
                None | Some(b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
            ) {
                i += 1;
            }
            Some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(body: &str) -> Option<String> {
        top_level_string(body.as_bytes(), b"model").map(Cow::into_owned)
    }

    #[test]
    fn quote_or_backslash_finds_the_first_of_either_at_every_offset() {
        for len in 0..80 {
            for at in 0..=len {
                for stop in [b'"', b'\\'] {
                    let mut text = vec![b'x'; len];
                    // Bytes that differ from `"` or `\` by one bit, and high bytes.
                    for (i, b) in text.iter_mut().enumerate() {
                        *b = [b'x', b'#', b'!', b'\x5d', b'\xa2', b'\xdc', b'\x02'][i % 7];
                    }
                    if at < len {
                        text[at] = stop;
                        if at + 1 < len {
                            text[at + 1] = b'"';
                        }
                    }
                    let expected = text.iter().position(|&b| b == b'"' || b == b'\\');
                    assert_eq!(quote_or_backslash(&text), expected, "len {len} at {at}");
                }
            }
        }
    }

    #[test]
    fn finds_the_top_level_model_only() {
        assert_eq!(model(r#"{"model":"m"}"#).as_deref(), Some("m"));
        assert_eq!(
            model(r#" { "a" : [1, {"model":"x"}, "]"], "b":{"c":"}"}, "n": -1.5e3, "t": true, "model" : "m2" }"#)
                .as_deref(),
            Some("m2")
        );
        assert_eq!(model(r#"{"model":"a\"b"}"#).as_deref(), Some("a\"b"));
        // What the upstream's parser reads: an escaped key is the key, the last duplicate wins.
        assert_eq!(model(r#"{"mod\u0065l":"x"}"#).as_deref(), Some("x"));
        assert_eq!(
            model(r#"{"model":"cheap","messages":[],"mod\u0065l":"dear"}"#).as_deref(),
            Some("dear")
        );
        assert_eq!(
            model(r#"{"model":"cheap","messages":[],"model":"dear"}"#).as_deref(),
            Some("dear")
        );
        assert_eq!(
            model(r#"{"model":"m","x":[1,2],"y":{"model":"no"}}"#).as_deref(),
            Some("m")
        );
        assert_eq!(model(r#"{"model":3}"#), None);
        // Found by tests/config/parsers.rs: a first `model` that is not a string must not hide a
        // later duplicate (the upstream reads the last one).
        assert_eq!(model(r#"{"model":null,"model":""}"#).as_deref(), Some(""));
        assert_eq!(
            model(r#"{"model":{"a":1},"messages":[],"model":"dear"}"#).as_deref(),
            Some("dear")
        );
        assert_eq!(model(r#"{"model":"dear","model":null}"#), None);
        assert_eq!(model(r#"{"other":"x"}"#), None);
        assert_eq!(model(r#"["model","x"]"#), None);
        assert_eq!(model(""), None);
        // A prefix cut after the field still works; one cut before it does not panic.
        assert_eq!(
            model(r#"{"model":"m","messages":[{"content":"aaaa"#).as_deref(),
            Some("m")
        );
        assert_eq!(model(r#"{"messages":[{"content":"aaaa"#), None);
        assert_eq!(model(r#"{"a":"\"#), None);
    }
}
