//! What the layer reads from a request: the model it is for and its affinity key.

use std::borrow::Cow;
use std::fmt;

use http::header::HeaderName;
use http::request::Parts;

/// Finds the model a request is for, from its head and its buffered body (which may be only a
/// prefix of the body when the body is larger than the replay cap).
///
/// Closures `Fn(&Parts, &[u8]) -> Option<String>` are extractors too.
pub trait ModelExtractor: Send + Sync + 'static {
    /// The model, if the request names one.
    fn model<'a>(&self, parts: &'a Parts, body: &'a [u8]) -> Option<Cow<'a, str>>;
}

impl<F> ModelExtractor for F
where
    F: Fn(&Parts, &[u8]) -> Option<String> + Send + Sync + 'static,
{
    fn model<'a>(&self, parts: &'a Parts, body: &'a [u8]) -> Option<Cow<'a, str>> {
        self(parts, body).map(Cow::Owned)
    }
}

/// The default model extractor: the top-level `"model"` string of a JSON body.
///
/// It scans the body without building a document, stops at the field, and works on a prefix of
/// a body too large to buffer as long as the field comes before the cut.
///
/// ```
/// use tower_account_pool::layer::{JsonModel, ModelExtractor};
///
/// let (parts, _) = http::Request::new(()).into_parts();
/// let body = br#"{"messages":[{"model":"not this one"}],"model":"claude-sonnet-4-5","stream":true}"#;
/// assert_eq!(JsonModel.model(&parts, body).as_deref(), Some("claude-sonnet-4-5"));
/// assert_eq!(JsonModel.model(&parts, b"not json").as_deref(), None);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonModel;

impl ModelExtractor for JsonModel {
    fn model<'a>(&self, _parts: &'a Parts, body: &'a [u8]) -> Option<Cow<'a, str>> {
        top_level_string(body, b"model")
    }
}

/// No model: every request is selected as "any model".
#[derive(Debug, Clone, Copy, Default)]
pub struct NoModel;

impl ModelExtractor for NoModel {
    fn model<'a>(&self, _parts: &'a Parts, _body: &'a [u8]) -> Option<Cow<'a, str>> {
        None
    }
}

/// Finds a request's affinity (sticky-session) key.
///
/// Closures `Fn(&Parts, &[u8]) -> Option<String>` are extractors too.
pub trait AffinityExtractor: Send + Sync + 'static {
    /// The key, if the request has one.
    fn affinity_key<'a>(&self, parts: &'a Parts, body: &'a [u8]) -> Option<Cow<'a, str>>;
}

impl<F> AffinityExtractor for F
where
    F: Fn(&Parts, &[u8]) -> Option<String> + Send + Sync + 'static,
{
    fn affinity_key<'a>(&self, parts: &'a Parts, body: &'a [u8]) -> Option<Cow<'a, str>> {
        self(parts, body).map(Cow::Owned)
    }
}

/// No affinity key (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAffinity;

impl AffinityExtractor for NoAffinity {
    fn affinity_key<'a>(&self, _parts: &'a Parts, _body: &'a [u8]) -> Option<Cow<'a, str>> {
        None
    }
}

/// The affinity key is the value of a request header (e.g. `x-session-id`).
///
/// ```
/// use tower_account_pool::layer::{AffinityExtractor, AffinityHeader};
///
/// let request = http::Request::builder().header("x-session-id", "conv-42").body(()).unwrap();
/// let (parts, _) = request.into_parts();
/// let key = AffinityHeader::new("x-session-id").unwrap();
/// assert_eq!(key.affinity_key(&parts, b"").as_deref(), Some("conv-42"));
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

impl AffinityExtractor for AffinityHeader {
    fn affinity_key<'a>(&self, parts: &'a Parts, _body: &'a [u8]) -> Option<Cow<'a, str>> {
        let value = parts.headers.get(&self.0)?.to_str().ok()?;
        (!value.is_empty()).then_some(Cow::Borrowed(value))
    }
}

/// The string value of `key` in the top-level JSON object of `body`, without parsing the rest.
pub(crate) fn top_level_string<'a>(body: &'a [u8], key: &[u8]) -> Option<Cow<'a, str>> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(body, i);
        match body.get(i)? {
            b'"' => {}
            b'}' => return None,
            _ => return None,
        }
        let (name_end, name_escaped) = string_end(body, i + 1)?;
        let name = &body[i + 1..name_end];
        i = skip_ws(body, name_end + 1);
        if body.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(body, i + 1);
        if !name_escaped && name == key {
            if body.get(i) != Some(&b'"') {
                return None;
            }
            let (end, escaped) = string_end(body, i + 1)?;
            let raw = &body[i + 1..end];
            return if escaped {
                serde_json::from_slice::<String>(&body[i..=end])
                    .ok()
                    .map(Cow::Owned)
            } else {
                std::str::from_utf8(raw).ok().map(Cow::Borrowed)
            };
        }
        i = skip_value(body, i)?;
        i = skip_ws(body, i);
        match body.get(i)? {
            b',' => i += 1,
            _ => return None,
        }
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
fn string_end(body: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        match body.get(i)? {
            b'"' => return Some((i, escaped)),
            b'\\' => {
                escaped = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
}

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
    fn finds_the_top_level_model_only() {
        assert_eq!(model(r#"{"model":"m"}"#).as_deref(), Some("m"));
        assert_eq!(
            model(r#" { "a" : [1, {"model":"x"}, "]"], "b":{"c":"}"}, "n": -1.5e3, "t": true, "model" : "m2" }"#)
                .as_deref(),
            Some("m2")
        );
        assert_eq!(model(r#"{"model":"a\"b"}"#).as_deref(), Some("a\"b"));
        assert_eq!(model(r#"{"mod\u0065l":"x"}"#), None);
        assert_eq!(model(r#"{"model":3}"#), None);
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
