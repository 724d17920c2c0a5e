//! Credentials: what an account injects into each request.
//!
//! A [`Credential`] applies itself to a request's headers, may report an expiry, may refresh
//! itself, and exposes read-only fields a handler may need. Secrets never appear in `Debug`
//! output, in errors or in [`Credential::masked`].
//!
//! ```
//! use http::HeaderMap;
//! use tower_account_pool::credential::{ApiKey, BearerToken, Credential};
//!
//! let mut headers = HeaderMap::new();
//! BearerToken::new("sk-live-1234").apply(&mut headers).unwrap();
//! assert_eq!(headers["authorization"], "Bearer sk-live-1234");
//! assert!(headers["authorization"].is_sensitive());
//!
//! let key = ApiKey::new("x-api-key", "key-0123456789abcd").unwrap();
//! key.apply(&mut headers).unwrap();
//! assert_eq!(headers["x-api-key"], "key-0123456789abcd");
//! assert_eq!(key.masked().last4.as_deref(), Some("abcd"));
//! assert!(!format!("{key:?}").contains("0123456789"));
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::HeaderMap;
use serde::Serialize;

/// A boxed, sendable future, as returned by [`Credential::refresh`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A credential shared between the pool and the requests using it.
pub type SharedCredential = Arc<dyn Credential>;

/// Whether a refresh may be skipped when the credential still looks valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshMode {
    /// Refresh only when inside the credential's own expiry window.
    IfNeeded,
    /// Refresh now, whatever the expiry says (the upstream rejected the token).
    Forced,
}

/// Why a credential could not be applied or refreshed. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The credential cannot refresh itself (a static key).
    #[error("credential of kind `{0}` cannot be refreshed")]
    NotRefreshable(&'static str),
    /// The upstream rejected the refresh: the credential is dead until an operator acts.
    #[error("credential rejected: {0}")]
    Invalid(String),
    /// The refresh could not be completed now (network, 5xx); try again later.
    #[error("credential temporarily unavailable: {0}")]
    Unavailable(String),
    /// The credential could not be turned into a header value.
    #[error("credential is not a valid header value for `{0}`")]
    InvalidHeader(String),
}

/// A credential with its secret masked, for admin views and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaskedCredential {
    /// The credential kind, e.g. `bearer`, `api-key`, `kiro-oauth`.
    pub kind: &'static str,
    /// The last four characters of the secret, when it is long enough to show them safely.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last4: Option<String>,
    /// The file the credential is stored in, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl MaskedCredential {
    /// Masks `secret`: only its last four characters are kept, and only if it has at least 12.
    pub fn from_secret(kind: &'static str, secret: &str) -> Self {
        let chars = secret.chars().count();
        let last4 = (chars >= 12).then(|| secret.chars().skip(chars - 4).collect());
        MaskedCredential {
            kind,
            last4,
            path: None,
        }
    }
}

/// Something that authenticates requests as one account.
///
/// Implementations keep their secrets out of `Debug`. The pool calls [`refresh`](Self::refresh)
/// with [`RefreshMode::Forced`] when the upstream says a token expired; implementations that can
/// refresh should make concurrent refreshes share one upstream call (single flight).
pub trait Credential: Send + Sync + fmt::Debug + 'static {
    /// A short, stable name for the kind of credential (`bearer`, `api-key`, ...).
    fn kind(&self) -> &'static str;

    /// Writes the credential into a request's headers, marked sensitive.
    fn apply(&self, headers: &mut HeaderMap) -> Result<(), CredentialError>;

    /// When the current secret expires, if known.
    fn expires_at(&self) -> Option<SystemTime> {
        None
    }

    /// Refreshes the secret. The default cannot refresh.
    fn refresh(&self, mode: RefreshMode) -> BoxFuture<'_, Result<(), CredentialError>> {
        let _ = mode;
        let kind = self.kind();
        Box::pin(async move { Err(CredentialError::NotRefreshable(kind)) })
    }

    /// A read-only, non-secret field a handler may need (for example a Kiro `profileArn`).
    fn field(&self, name: &str) -> Option<String> {
        let _ = name;
        None
    }

    /// The credential with its secret masked.
    fn masked(&self) -> MaskedCredential;
}

fn sensitive_value(value: &str, header: &str) -> Result<HeaderValue, CredentialError> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| CredentialError::InvalidHeader(header.to_owned()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// A static bearer token, sent as `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct BearerToken {
    value: HeaderValue,
    masked: MaskedCredential,
}

impl BearerToken {
    /// A bearer token.
    ///
    /// # Panics
    ///
    /// If the token contains characters not allowed in a header; use
    /// [`try_new`](Self::try_new) for untrusted input.
    pub fn new(token: impl AsRef<str>) -> Self {
        Self::try_new(token).expect("bearer token is not a valid header value")
    }

    /// A bearer token, or an error if it is not a valid header value.
    pub fn try_new(token: impl AsRef<str>) -> Result<Self, CredentialError> {
        let token = token.as_ref();
        Ok(BearerToken {
            value: sensitive_value(&format!("Bearer {token}"), "authorization")?,
            masked: MaskedCredential::from_secret("bearer", token),
        })
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerToken")
            .field("last4", &self.masked.last4)
            .finish_non_exhaustive()
    }
}

impl Credential for BearerToken {
    fn kind(&self) -> &'static str {
        "bearer"
    }

    fn apply(&self, headers: &mut HeaderMap) -> Result<(), CredentialError> {
        headers.insert(AUTHORIZATION, self.value.clone());
        Ok(())
    }

    fn masked(&self) -> MaskedCredential {
        self.masked.clone()
    }
}

/// A static API key sent in a named header (e.g. `x-api-key`).
#[derive(Clone)]
pub struct ApiKey {
    header: HeaderName,
    value: HeaderValue,
    masked: MaskedCredential,
}

impl ApiKey {
    /// An API key sent in `header`. Fails if the header name or key is not valid in HTTP.
    pub fn new(header: impl AsRef<str>, key: impl AsRef<str>) -> Result<Self, CredentialError> {
        let header_str = header.as_ref();
        let header = HeaderName::from_bytes(header_str.as_bytes())
            .map_err(|_| CredentialError::InvalidHeader(header_str.to_owned()))?;
        let key = key.as_ref();
        Ok(ApiKey {
            value: sensitive_value(key, header.as_str())?,
            header,
            masked: MaskedCredential::from_secret("api-key", key),
        })
    }

    /// The header the key is sent in.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("header", &self.header)
            .field("last4", &self.masked.last4)
            .finish_non_exhaustive()
    }
}

impl Credential for ApiKey {
    fn kind(&self) -> &'static str {
        "api-key"
    }

    fn apply(&self, headers: &mut HeaderMap) -> Result<(), CredentialError> {
        headers.insert(self.header.clone(), self.value.clone());
        Ok(())
    }

    fn masked(&self) -> MaskedCredential {
        self.masked.clone()
    }
}

/// No credential: requests go out unchanged. Useful for tests and for upstreams authenticated
/// elsewhere (mTLS, a sidecar).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCredential;

impl Credential for NoCredential {
    fn kind(&self) -> &'static str {
        "none"
    }

    fn apply(&self, _headers: &mut HeaderMap) -> Result<(), CredentialError> {
        Ok(())
    }

    fn masked(&self) -> MaskedCredential {
        MaskedCredential {
            kind: "none",
            last4: None,
            path: None,
        }
    }
}

/// Makes concurrent refreshes of one credential share a single upstream call.
///
/// Credential implementations keep one `SingleFlight` and run their refresh through
/// [`run`](Self::run): the first caller refreshes; callers that arrive while it runs wait and
/// get its result instead of refreshing again.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use tower_account_pool::credential::SingleFlight;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let flight = SingleFlight::new();
/// let calls = AtomicU32::new(0);
/// let refresh = || async {
///     calls.fetch_add(1, Ordering::SeqCst);
///     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
///     Ok(())
/// };
/// let (a, b, c) = tokio::join!(flight.run(refresh), flight.run(refresh), flight.run(refresh));
/// assert_eq!((a, b, c), (Ok(()), Ok(()), Ok(())));
/// assert_eq!(calls.load(Ordering::SeqCst), 1);
///
/// // Later refreshes call the upstream again.
/// flight.run(refresh).await.unwrap();
/// assert_eq!(calls.load(Ordering::SeqCst), 2);
/// # });
/// ```
#[derive(Debug, Default)]
pub struct SingleFlight {
    /// Completed refreshes so far, and the result of the last one.
    last: tokio::sync::Mutex<(u64, Option<Result<(), CredentialError>>)>,
    completed: std::sync::atomic::AtomicU64,
}

impl SingleFlight {
    /// A gate with no refresh run yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `refresh`, unless a refresh that started after this call was made completes first,
    /// in which case its result is returned.
    pub async fn run<F, Fut>(&self, refresh: F) -> Result<(), CredentialError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), CredentialError>>,
    {
        use std::sync::atomic::Ordering;
        let seen = self.completed.load(Ordering::Acquire);
        let mut last = self.last.lock().await;
        if last.0 != seen {
            // Someone refreshed while we waited for the gate: share their result.
            if let Some(result) = &last.1 {
                return result.clone();
            }
        }
        let result = refresh().await;
        last.0 += 1;
        last.1 = Some(result.clone());
        self.completed.store(last.0, Ordering::Release);
        result
    }
}
