//! The per-attempt part: what depends on the account the pool chose.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Request, Uri};
use tower_layer::Layer;
use tower_service::Service;

use crate::layer::{ReplayBody, SelectedAccount};

/// The Kiro chat path.
pub const GENERATE_PATH: &str = "/generateAssistantResponse";

/// A [`Layer`] that sits inside [`AccountPoolLayer`](crate::layer::AccountPoolLayer) and, per
/// attempt, adapts the converted request to the account the pool chose (the
/// [`SelectedAccount`] in the request extensions):
///
/// - **`profileArn`**: a Kiro social-login account's ARN is set as the body's top-level
///   `profileArn`; a Builder ID / IdC account has none, and any `profileArn` in the body is
///   removed. The field is spliced into the buffered bytes (the JSON is re-parsed only when the
///   body already holds a `profileArn` or a `\u` escape, which could spell one). Bodies larger than the pool's replay cap are streamed
///   and cannot be rewritten: they go as they are. Other credential kinds' bodies are left
///   alone.
/// - **URI**: `<base>/generateAssistantResponse` with a fixed base URL when one is configured
///   ([`base_url`](Self::base_url): tests, private endpoints), else the account's region
///   endpoint `https://q.{region}.amazonaws.com/generateAssistantResponse` (region from the
///   credential, default `us-east-1`); or the request's own URI, untouched, with
///   [`keep_uri`](Self::keep_uri) (a pass-through proxy that already chose the URL).
///
/// ```
/// use tower_account_pool::kiro::anthropic::KiroAttemptLayer;
///
/// let layer = KiroAttemptLayer::new().base_url("http://127.0.0.1:9000/").unwrap();
/// assert_eq!(
///     layer.uri_for(None).to_string(),
///     "http://127.0.0.1:9000/generateAssistantResponse"
/// );
/// let by_region = KiroAttemptLayer::new();
/// assert_eq!(
///     by_region.uri_for(Some("eu-central-1")).to_string(),
///     "https://q.eu-central-1.amazonaws.com/generateAssistantResponse"
/// );
/// ```
#[derive(Clone, Default)]
pub struct KiroAttemptLayer {
    base: Option<Arc<Uri>>,
    keep_uri: bool,
}

impl fmt::Debug for KiroAttemptLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KiroAttemptLayer")
            .field("base", &self.base.as_deref().map(Uri::to_string))
            .field("keep_uri", &self.keep_uri)
            .finish()
    }
}

/// A base URL that is not an absolute `http(s)` URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Kiro base URL `{0}` is not an absolute http(s) URL")]
pub struct InvalidBaseUrl(pub String);

impl KiroAttemptLayer {
    /// Requests go to each account's region endpoint.
    pub fn new() -> Self {
        KiroAttemptLayer::default()
    }

    /// Requests keep the URI they arrive with: only the `profileArn` is set per attempt.
    ///
    /// ```
    /// use tower_account_pool::kiro::anthropic::KiroAttemptLayer;
    ///
    /// let layer = KiroAttemptLayer::new().keep_uri();
    /// assert!(layer.keeps_uri());
    /// ```
    pub fn keep_uri(mut self) -> Self {
        self.keep_uri = true;
        self.base = None;
        self
    }

    /// Whether requests keep their own URI ([`keep_uri`](Self::keep_uri)).
    pub fn keeps_uri(&self) -> bool {
        self.keep_uri
    }

    /// Requests go to `<url>/generateAssistantResponse` whatever the account.
    pub fn base_url(mut self, url: &str) -> Result<Self, InvalidBaseUrl> {
        let full = format!("{}{GENERATE_PATH}", url.trim_end_matches('/'));
        let uri: Uri = full.parse().map_err(|_| InvalidBaseUrl(url.to_owned()))?;
        if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
            return Err(InvalidBaseUrl(url.to_owned()));
        }
        self.base = Some(Arc::new(uri));
        self.keep_uri = false;
        Ok(self)
    }

    /// The URI an attempt goes to, for an account in `region`.
    pub fn uri_for(&self, region: Option<&str>) -> Uri {
        if let Some(base) = &self.base {
            return Uri::clone(base);
        }
        let region = region
            .filter(|r| {
                !r.is_empty()
                    && r.len() <= 32
                    && r.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
            .unwrap_or("us-east-1");
        format!("https://q.{region}.amazonaws.com{GENERATE_PATH}")
            .parse()
            .expect("a validated region makes a valid URI")
    }
}

impl<S> Layer<S> for KiroAttemptLayer {
    type Service = KiroAttemptService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KiroAttemptService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`KiroAttemptLayer`].
#[derive(Clone, Debug)]
pub struct KiroAttemptService<S> {
    inner: S,
    layer: KiroAttemptLayer,
}

impl<S, B> Service<Request<ReplayBody<B>>> for KiroAttemptService<S>
where
    S: Service<Request<ReplayBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReplayBody<B>>) -> S::Future {
        let selected = request.extensions().get::<SelectedAccount>().cloned();
        if !self.layer.keep_uri {
            let region = selected.as_ref().and_then(|s| s.field("region"));
            *request.uri_mut() = self.layer.uri_for(region.as_deref());
        }
        if let Some(selected) = selected.filter(|s| s.credential_kind() == crate::kiro::KIND) {
            let arn = selected.field("profileArn");
            if let Some(bytes) = request.body().buffered_bytes() {
                let rewritten = with_profile_arn(bytes, arn.as_deref());
                let len = rewritten.len();
                if request.body_mut().replace_buffered(rewritten)
                    && request.headers().contains_key(CONTENT_LENGTH)
                {
                    request
                        .headers_mut()
                        .insert(CONTENT_LENGTH, http::HeaderValue::from(len));
                }
            }
        }
        self.inner.call(request)
    }
}

/// `body` (a JSON object) with its top-level `profileArn` set to `arn`, or removed when `arn`
/// is `None`. Bodies without a `profileArn` and without any `\u` escape are not parsed: the
/// field is spliced in after the opening brace (or the body is returned as it is). Bodies that
/// hold `"profileArn"` (once or more) or a `\u` escape (which could spell the key) are parsed
/// and rebuilt from their first JSON value, so the result holds exactly one top-level
/// `profileArn` (`arn`), or none. Bodies that are not a JSON object are returned unchanged.
///
/// ```
/// use bytes::Bytes;
/// use tower_account_pool::kiro::anthropic::with_profile_arn;
///
/// let body = Bytes::from_static(br#"{"conversationState":{}}"#);
/// let social = with_profile_arn(&body, Some("arn:aws:codewhisperer:us-east-1:1:profile/X"));
/// assert_eq!(&social[..], br#"{"profileArn":"arn:aws:codewhisperer:us-east-1:1:profile/X","conversationState":{}}"#);
/// let builder_id = with_profile_arn(&social, None);
/// assert_eq!(&builder_id[..], br#"{"conversationState":{}}"#);
/// ```
pub fn with_profile_arn(body: &Bytes, arn: Option<&str>) -> Bytes {
    const FIELD: &[u8] = b"\"profileArn\"";
    // A key can be spelled with `\u` escapes (`"profile\u0041rn"`), which a byte search does
    // not see: a body holding any `\u` is parsed, so the rebuilt body has exactly one
    // `profileArn`, ours (a parser keeps the last of duplicate keys).
    let must_parse =
        memchr::memmem::find(body, FIELD).is_some() || memchr::memmem::find(body, b"\\u").is_some();
    if !must_parse {
        let Some(arn) = arn else {
            return body.clone();
        };
        let start = body.iter().position(|b| !b.is_ascii_whitespace());
        let Some(start) = start.filter(|&i| body[i] == b'{') else {
            return body.clone();
        };
        let rest = &body[start + 1..];
        let empty = rest
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'}');
        let mut out = Vec::with_capacity(body.len() + arn.len() + 16);
        out.extend_from_slice(b"{\"profileArn\":");
        super::json::write_str(&mut out, arn);
        if !empty {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        return Bytes::from(out);
    }
    // The first JSON value only: text after it (which some parsers skip) is dropped.
    let first = serde_json::Deserializer::from_slice(body)
        .into_iter::<serde_json::Value>()
        .next();
    match first {
        Some(Ok(serde_json::Value::Object(mut map))) => {
            map.shift_remove("profileArn");
            let mut out = Vec::with_capacity(body.len() + 16);
            out.push(b'{');
            if let Some(arn) = arn {
                out.extend_from_slice(b"\"profileArn\":");
                super::json::write_str(&mut out, arn);
            }
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 || arn.is_some() {
                    out.push(b',');
                }
                super::json::write_str(&mut out, k);
                out.push(b':');
                serde_json::to_writer(&mut out, v).expect("writing JSON to a Vec cannot fail");
            }
            out.push(b'}');
            Bytes::from(out)
        }
        _ => body.clone(),
    }
}
