//! What the gateway checks before a request may reach the pool: the client's key, the request
//! target and method, and the body's JSON. Every check decides from data the client cannot use
//! to choose where a credential goes: the upstream URL is built by [`UpstreamBase::join`], which
//! keeps the configured scheme, host and port whatever the request target says.
#![allow(dead_code)]
// The checks answer as tower-http's `ValidateRequest` does: `Result<(), Response>`, the
// response by value.
#![allow(clippy::result_large_err)]

use std::fmt;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use subtle::ConstantTimeEq;

/// The environment variable holding the client keys (comma-separated).
pub const CLIENT_KEYS_VAR: &str = "GATEWAY_API_KEY";

/// A JSON error in Anthropic's shape (`{"type":"error","error":{"type":…,"message":…}}`), the
/// shape the layer uses for its own answers.
pub fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// The keys clients must present (`x-api-key: KEY` or `Authorization: Bearer KEY`).
///
/// Compared in constant time against every key; never printed (`Debug` shows the count only).
#[derive(Clone)]
pub struct ClientKeys {
    keys: Arc<[Box<[u8]>]>,
}

impl fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKeys({} keys, redacted)", self.keys.len())
    }
}

impl ClientKeys {
    /// Parses `GATEWAY_API_KEY`'s value: keys separated by commas, surrounding blanks ignored.
    /// A key is 1 to 512 visible ASCII characters; at least one key is needed. Errors name the
    /// key by its position, never by its text.
    pub fn parse(text: &str) -> Result<ClientKeys, String> {
        let mut keys = Vec::new();
        for (index, key) in text.split(',').enumerate() {
            let key = key.trim();
            if key.is_empty() {
                continue;
            }
            if key.len() > 512 || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "{CLIENT_KEYS_VAR}: key {} must be 1 to 512 visible ASCII characters \
                     (no spaces or control characters)",
                    index + 1
                ));
            }
            keys.push(key.as_bytes().to_vec().into_boxed_slice());
        }
        if keys.is_empty() {
            return Err(format!(
                "{CLIENT_KEYS_VAR} holds no key (expected one or more, separated by commas)"
            ));
        }
        Ok(ClientKeys { keys: keys.into() })
    }

    /// A fresh random key (48 hex characters) and the keys holding only it.
    pub fn generate() -> (ClientKeys, String) {
        let key = format!(
            "sk-gw-{:032x}{:016x}",
            fastrand::u128(..),
            fastrand::u64(..)
        );
        let keys = ClientKeys::parse(&key).expect("a generated key is valid");
        (keys, key)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether `presented` is one of the keys: every key is compared, in constant time.
    fn matches(&self, presented: &[u8]) -> bool {
        let mut found = subtle::Choice::from(0);
        for key in self.keys.iter() {
            found |= key.as_ref().ct_eq(presented);
        }
        found.into()
    }

    /// Checks a request's headers: `Ok` when it presents a valid key, else the 401 to send.
    /// Decided from the headers alone, before any body is read.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Response> {
        let mut presented = false;
        let mut valid = false;
        for value in headers.get_all("x-api-key") {
            presented = true;
            valid |= self.matches(value.as_bytes());
        }
        for value in headers.get_all(header::AUTHORIZATION) {
            presented = true;
            let bytes = value.as_bytes();
            if bytes.len() > 7 && bytes[..7].eq_ignore_ascii_case(b"bearer ") {
                valid |= self.matches(trim_ascii(&bytes[7..]));
            }
        }
        match (presented, valid) {
            (_, true) => Ok(()),
            (false, _) => Err(error_response(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "this gateway needs a client API key: send it as `x-api-key` or \
                 `Authorization: Bearer`",
            )),
            (true, false) => Err(error_response(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid client API key",
            )),
        }
    }
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != b' ').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| *b != b' ')
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

/// The upstream every request goes to: scheme, host and port fixed at start, plus an optional
/// base path that request paths are appended to.
#[derive(Debug, Clone)]
pub struct UpstreamBase {
    scheme: Scheme,
    authority: Authority,
    /// The base path without its trailing `/` (empty for the root).
    path: String,
    /// The `Host` header every forwarded request carries: the host, and the port unless it is
    /// the scheme's default (as HTTP clients write it).
    host: HeaderValue,
}

impl UpstreamBase {
    /// Parses `http://host:port[/base]` or `https://…`; a query or fragment is refused.
    pub fn parse(url: &str) -> Result<UpstreamBase, String> {
        let uri: Uri = url
            .parse()
            .map_err(|_| format!("upstream `{url}` is not a URL"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => {
                return Err(format!(
                    "upstream `{url}` must start with http:// or https://"
                ))
            }
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("upstream `{url}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "upstream `{url}` must not hold a user name or password"
            ));
        }
        if uri.query().is_some() || url.contains('#') {
            return Err(format!(
                "upstream `{url}` must not hold a query or fragment"
            ));
        }
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => format!("{}:{port}", authority.host()),
            _ => authority.host().to_owned(),
        };
        let host = HeaderValue::try_from(host)
            .map_err(|_| format!("upstream `{url}` has a host no header can hold"))?;
        Ok(UpstreamBase {
            scheme,
            authority,
            path: uri.path().trim_end_matches('/').to_owned(),
            host,
        })
    }

    /// The `Host` header for the upstream, made once: set on each forwarded request so the
    /// client does not format it per request.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// The upstream URL for an origin-form request target (`/path?query`): the base's scheme,
    /// host and port, the base path followed by the target. Anything else (`*`, a target that
    /// does not start with `/`) is refused: the result can never point elsewhere.
    pub fn join(&self, target: &str) -> Result<Uri, TargetError> {
        if !target.starts_with('/') {
            return Err(TargetError::NotOriginForm);
        }
        let mut path_and_query = String::with_capacity(self.path.len() + target.len());
        path_and_query.push_str(&self.path);
        path_and_query.push_str(target);
        let path_and_query: PathAndQuery = path_and_query
            .parse()
            .map_err(|_| TargetError::Unparsable)?;
        self.with_target(path_and_query)
    }

    /// The base's scheme and authority with `path_and_query`, checked to point at the base.
    fn with_target(&self, path_and_query: PathAndQuery) -> Result<Uri, TargetError> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        let uri = Uri::from_parts(parts).map_err(|_| TargetError::Unparsable)?;
        // The parts were set one by one: a target cannot have moved them. Checked anyway, byte
        // for byte, as this is where a credential's destination is decided.
        if uri.scheme() != Some(&self.scheme)
            || uri.authority().map(Authority::as_str) != Some(self.authority.as_str())
        {
            return Err(TargetError::Unparsable);
        }
        Ok(uri)
    }
}

impl UpstreamBase {
    /// [`join`](Self::join) for a request's URI as the server parsed it: with no base path its
    /// path and query are taken as they are (the same bytes `join` would parse again).
    pub fn join_request(&self, request: &Uri) -> Result<Uri, TargetError> {
        let target = match request.path_and_query() {
            Some(target) if self.path.is_empty() && target.as_str().starts_with('/') => target,
            other => return self.join(other.map_or("/", |p| p.as_str())),
        };
        self.with_target(target.clone())
    }
}

/// Why a request target cannot be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// `*`, absolute-form (`http://host/…`) or authority-form (`host:port`).
    NotOriginForm,
    /// Characters a URI cannot hold.
    Unparsable,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::NotOriginForm => f.write_str(
                "only origin-form request targets (`/path?query`) are forwarded, \
                 not `*`, absolute-form or authority-form",
            ),
            TargetError::Unparsable => f.write_str("the request path cannot be forwarded"),
        }
    }
}

/// Which requests may be forwarded: the methods, and the forms of request target.
#[derive(Debug, Clone)]
pub struct RequestGate {
    methods: Arc<[Method]>,
    allow: HeaderValue,
}

impl Default for RequestGate {
    fn default() -> Self {
        RequestGate::new([Method::GET, Method::POST, Method::HEAD]).expect("a valid method list")
    }
}

impl RequestGate {
    /// A gate that forwards `methods` (`CONNECT` can never be forwarded).
    pub fn new(methods: impl IntoIterator<Item = Method>) -> Result<RequestGate, String> {
        let mut list: Vec<Method> = Vec::new();
        for method in methods {
            if method == Method::CONNECT {
                return Err("CONNECT cannot be forwarded".into());
            }
            if !list.contains(&method) {
                list.push(method);
            }
        }
        if list.is_empty() {
            return Err("at least one method must be allowed".into());
        }
        let allow = list
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        Ok(RequestGate {
            methods: list.into(),
            allow: HeaderValue::from_str(&allow).map_err(|_| "invalid method name")?,
        })
    }

    /// Parses `GET,POST,HEAD`.
    pub fn parse(text: &str) -> Result<RequestGate, String> {
        let methods = text
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("`{m}` is not an HTTP method"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        RequestGate::new(methods)
    }

    /// Checks a request's method and target; `Err` is the answer to send. `/admin` and
    /// everything under it belong to the admin router (404 here, where it did not match).
    pub fn check(&self, method: &Method, uri: &Uri, version: Version) -> Result<(), Response> {
        let path = uri.path();
        if is_admin_path(path) {
            return Err(error_response(
                StatusCode::NOT_FOUND,
                "not_found_error",
                "no such admin route (`/admin` is the admin API's and is never proxied)",
            ));
        }
        if !self.methods.contains(method) {
            let mut response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                &format!(
                    "method {method} is not forwarded (allowed: {})",
                    self.allow.to_str().unwrap_or_default()
                ),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, self.allow.clone());
            return Err(response);
        }
        // HTTP/2 always carries scheme and authority; HTTP/1 does only in absolute-form.
        let absolute = version < Version::HTTP_2 && uri.authority().is_some();
        if absolute || !path.starts_with('/') {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &TargetError::NotOriginForm.to_string(),
            ));
        }
        Ok(())
    }
}

/// Whether `path` names `/admin` or a path under it, however spelled: percent-escapes decoded,
/// repeated slashes collapsed, any case (`//admin`, `/%61dmin/x`, `/ADMIN`).
pub fn is_admin_path(path: &str) -> bool {
    // The first 8 canonical bytes decide (`/admin/` is 7): a fixed buffer, no allocation.
    let bytes = path.as_bytes();
    let mut canonical = [0u8; 8];
    let mut len = 0;
    let mut i = 0;
    while i < bytes.len() && len < canonical.len() {
        let mut byte = bytes[i];
        i += 1;
        if byte == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(high), Some(low)) = (
                bytes.get(i).copied().and_then(hex),
                bytes.get(i + 1).copied().and_then(hex),
            ) {
                byte = (high * 16 + low) as u8;
                i += 2;
            }
        }
        if byte == b'/' && len > 0 && canonical[len - 1] == b'/' {
            continue;
        }
        canonical[len] = byte.to_ascii_lowercase();
        len += 1;
    }
    let canonical = &canonical[..len];
    canonical == b"/admin" || canonical.starts_with(b"/admin/")
}

/// Checks a JSON body strictly: valid UTF-8 everywhere (serde_json does not check the bytes of
/// strings it skips), then valid JSON. The error names the byte offset or line and column.
pub fn check_json(body: &[u8]) -> Result<(), String> {
    // ASCII (most bodies) is UTF-8, and a quicker test.
    let utf8 = match body.is_ascii() {
        true => Ok(()),
        false => std::str::from_utf8(body).map(|_| ()),
    };
    if let Err(e) = utf8 {
        return Err(format!(
            "the request body is not valid UTF-8 at byte offset {}",
            e.valid_up_to()
        ));
    }
    if plain_json(body) {
        return Ok(());
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| format!("the request body is not valid JSON: {e}"))
}

/// Deepest nesting [`plain_json`] follows; deeper bodies go to serde_json (whose own limit
/// is 128).
const PLAIN_JSON_DEPTH: u32 = 64;

/// Bytes that a JSON string holds as they are: not `"`, `\\` or a control character.
static PLAIN_STRING_BYTE: [bool; 256] = {
    let mut table = [true; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = false;
        byte += 1;
    }
    table[b'"' as usize] = false;
    table[b'\\' as usize] = false;
    table
};

/// A quick pass over a body that is valid UTF-8: `true` when it is one JSON value (RFC 8259
/// grammar, as serde_json reads it) nested at most [`PLAIN_JSON_DEPTH`] deep. It accepts
/// nothing serde_json refuses; `false` only means "not sure", and serde_json then decides and
/// names the error. A quarter of serde_json's cost on a typical request: the check runs on
/// every request.
fn plain_json(body: &[u8]) -> bool {
    fn ws(b: &[u8], mut i: usize) -> usize {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(i) {
            i += 1;
        }
        i
    }
    /// `b[i]` is `"`: the index after the closing quote.
    fn string(b: &[u8], mut i: usize) -> Option<usize> {
        i += 1;
        loop {
            // Plain string bytes in a tight loop; the match below sees only the others.
            while b.get(i).is_some_and(|&c| PLAIN_STRING_BYTE[usize::from(c)]) {
                i += 1;
            }
            match *b.get(i)? {
                b'"' => return Some(i + 1),
                b'\\' => match *b.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
                    _ => return None,
                },
                0..=0x1f => return None,
                _ => i += 1,
            }
        }
    }
    fn digits(b: &[u8], mut i: usize) -> usize {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    }
    /// `b[i]` starts a number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(b: &[u8], mut i: usize) -> Option<usize> {
        if b[i] == b'-' {
            i += 1;
        }
        match *b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => i = digits(b, i + 1),
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            let end = digits(b, i + 1);
            if end == i + 1 {
                return None;
            }
            i = end;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            let end = digits(b, i);
            if end == i {
                return None;
            }
            i = end;
        }
        // Digits right after the number (`01`, `1.5.2` ends at `.`) are refused by what
        // follows: only whitespace, `,`, `]`, `}` or the end may.
        Some(i)
    }
    fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
        (b.get(i..i + word.len())? == word).then_some(i + word.len())
    }

    let b = body;
    // One bit per open container, 1 for an object.
    let (mut objects, mut depth) = (0u64, 0u32);
    let mut i = 0;
    'value: loop {
        i = ws(b, i);
        let Some(&first) = b.get(i) else {
            return false;
        };
        let parsed = match first {
            b'{' | b'[' => {
                if depth == PLAIN_JSON_DEPTH {
                    return false;
                }
                let object = first == b'{';
                objects = objects << 1 | u64::from(object);
                depth += 1;
                i = ws(b, i + 1);
                match (b.get(i), object) {
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        objects >>= 1;
                        depth -= 1;
                        Some(i + 1)
                    }
                    (Some(b'"'), true) => {
                        let Some(end) = string(b, i) else {
                            return false;
                        };
                        i = ws(b, end);
                        if b.get(i) != Some(&b':') {
                            return false;
                        }
                        i += 1;
                        continue 'value;
                    }
                    (_, true) => return false,
                    (_, false) => continue 'value,
                }
            }
            b'"' => string(b, i),
            b'-' | b'0'..=b'9' => number(b, i),
            b't' => literal(b, i, b"true"),
            b'f' => literal(b, i, b"false"),
            b'n' => literal(b, i, b"null"),
            _ => None,
        };
        let Some(end) = parsed else {
            return false;
        };
        i = end;
        // After a value: close containers, or a comma and the next member.
        loop {
            i = ws(b, i);
            if depth == 0 {
                return i == b.len();
            }
            let object = objects & 1 == 1;
            match (b.get(i), object) {
                (Some(b','), false) => {
                    i += 1;
                    continue 'value;
                }
                (Some(b','), true) => {
                    i = ws(b, i + 1);
                    if b.get(i) != Some(&b'"') {
                        return false;
                    }
                    let Some(end) = string(b, i) else {
                        return false;
                    };
                    i = ws(b, end);
                    if b.get(i) != Some(&b':') {
                        return false;
                    }
                    i += 1;
                    continue 'value;
                }
                (Some(b'}'), true) | (Some(b']'), false) => {
                    objects >>= 1;
                    depth -= 1;
                    i += 1;
                }
                _ => return false,
            }
        }
    }
}
