//! Credentials stored in files (`KIRO_OAUTH_CREDS_FILE_PATH`), behind a pluggable
//! [`CredentialResolver`].
//!
//! The default resolver, [`TokenFileResolver`], opens each file as a [`TokenFileCredential`]:
//! the file's `accessToken` sent as a bearer token. A later resolver (the Kiro OAuth credential)
//! replaces it by implementing the same trait. A file that is missing, unreadable or invalid does
//! not fail the pool: the account loads, unavailable, with the reason in its state.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderMap;

use crate::config::file::AccountEntry;
use crate::credential::{
    BearerToken, BoxFuture, Credential, CredentialError, MaskedCredential, RefreshMode,
    SharedCredential,
};

/// A credential opened from a file, and whether the account can use it right now.
#[derive(Debug, Clone)]
pub struct OpenedCredential {
    /// The credential. It is installed even when unusable, so that a later refresh (or a fixed
    /// file) can bring the account back.
    pub credential: SharedCredential,
    /// Why the account cannot use it now (never a secret). `None` when it is ready.
    pub unavailable: Option<String>,
}

/// Turns the file path an account names (`KIRO_OAUTH_CREDS_FILE_PATH`) into a credential.
///
/// Implementations must not fail the pool for one bad file: they return a credential that
/// reports the problem (its [`apply`](Credential::apply) fails, its
/// [`refresh`](Credential::refresh) tries again) together with the reason in
/// [`OpenedCredential::unavailable`]. The credential's [`masked`](Credential::masked) `path`
/// should be `path` as written in the pool file, so that a [file watch](crate::config::FileWatch)
/// can recognise it in a running pool.
pub trait CredentialResolver: Send + Sync + fmt::Debug + 'static {
    /// Opens the credential stored at `path` (as written in the pool file) for `entry`.
    fn open(&self, path: &Path, entry: &AccountEntry) -> OpenedCredential;

    /// Opens inline credentials (`KIRO_OAUTH_CREDS_BASE64`, already decoded to a JSON object
    /// of a token file's shape) for `entry`. The default sends the object's `accessToken` as
    /// a bearer token and refreshes nothing; an object without one leaves the account
    /// unavailable, with the reason.
    fn open_inline(&self, json: &str, entry: &AccountEntry) -> OpenedCredential {
        let _ = entry;
        let token = serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v.get("accessToken")?.as_str().map(str::to_owned))
            .filter(|t| !t.is_empty());
        match token.map(|t| BearerToken::try_new(&t)) {
            Some(Ok(bearer)) => OpenedCredential {
                credential: Arc::new(bearer),
                unavailable: None,
            },
            Some(Err(_)) => UnusableCredential::opened(
                "the inline credentials' `accessToken` is not a valid header value",
            ),
            None => UnusableCredential::opened("the inline credentials hold no `accessToken`"),
        }
    }
}

/// Inline credentials that could not be opened: every use and every refresh fails with the
/// reason, so the account stays unavailable and keeps saying why (until the pool file is
/// fixed and reloaded).
#[derive(Debug)]
pub struct UnusableCredential {
    reason: String,
}

impl UnusableCredential {
    /// The credential and the reason, as a resolver returns them.
    pub fn opened(reason: impl Into<String>) -> OpenedCredential {
        let reason = reason.into();
        OpenedCredential {
            credential: Arc::new(UnusableCredential {
                reason: reason.clone(),
            }),
            unavailable: Some(reason),
        }
    }
}

impl Credential for UnusableCredential {
    fn kind(&self) -> &'static str {
        "unusable"
    }

    fn apply(&self, _headers: &mut HeaderMap) -> Result<(), CredentialError> {
        Err(CredentialError::Invalid(self.reason.clone()))
    }

    fn refresh(&self, _mode: RefreshMode) -> BoxFuture<'_, Result<(), CredentialError>> {
        Box::pin(async move { Err(CredentialError::Invalid(self.reason.clone())) })
    }

    fn masked(&self) -> MaskedCredential {
        MaskedCredential {
            kind: "unusable",
            last4: None,
            path: None,
        }
    }
}

/// The default [`CredentialResolver`]: each file is a JSON object whose `accessToken` is sent
/// as a bearer token (see [`TokenFileCredential`]).
///
/// Relative paths are resolved against [`base_dir`](Self::base_dir) when set, else against
/// the process's working directory, as the older system did.
#[derive(Debug, Clone, Default)]
pub struct TokenFileResolver {
    base_dir: Option<PathBuf>,
}

impl TokenFileResolver {
    /// A resolver for paths relative to the working directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves relative paths against `dir`.
    pub fn base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(dir.into());
        self
    }
}

impl CredentialResolver for TokenFileResolver {
    fn open(&self, path: &Path, _entry: &AccountEntry) -> OpenedCredential {
        let full = match &self.base_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        };
        let credential = TokenFileCredential::open_at(full, path.display().to_string());
        let unavailable = credential.problem();
        OpenedCredential {
            credential: Arc::new(credential),
            unavailable,
        }
    }
}

enum Loaded {
    Ready {
        token: Arc<str>,
        bearer: BearerToken,
    },
    Failed(String),
}

/// A bearer token read from a JSON file's `accessToken` field (the token files the older
/// system kept per account). A stand-in until the Kiro OAuth credential: it does not refresh
/// tokens against an upstream; its [`refresh`](Credential::refresh) re-reads the file.
///
/// ```
/// use tower_account_pool::config::TokenFileCredential;
/// use tower_account_pool::credential::Credential;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("token.json");
/// std::fs::write(&path, r#"{"accessToken": "aoa-0123456789", "refreshToken": "aor-x"}"#)?;
/// let credential = TokenFileCredential::open(&path);
/// let mut headers = http::HeaderMap::new();
/// credential.apply(&mut headers)?;
/// assert_eq!(headers["authorization"], "Bearer aoa-0123456789");
///
/// let missing = TokenFileCredential::open(dir.path().join("gone.json"));
/// assert!(missing.problem().unwrap().contains("does not exist"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TokenFileCredential {
    path: PathBuf,
    shown: String,
    loaded: ArcSwap<Loaded>,
}

impl TokenFileCredential {
    /// Reads the token file at `path`. Never fails: a bad file gives a credential whose
    /// [`problem`](Self::problem) says why.
    pub fn open(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let shown = path.display().to_string();
        Self::open_at(path, shown)
    }

    /// Reads `path`, naming it `shown` in messages and in [`Credential::masked`].
    fn open_at(path: PathBuf, shown: String) -> Self {
        let loaded = read_token_file(&path, &shown);
        TokenFileCredential {
            path,
            shown,
            loaded: ArcSwap::from_pointee(loaded),
        }
    }

    /// Why the credential cannot be used now, if it cannot.
    pub fn problem(&self) -> Option<String> {
        match &**self.loaded.load() {
            Loaded::Ready { .. } => None,
            Loaded::Failed(reason) => Some(reason.clone()),
        }
    }

    /// The file, as the pool file names it.
    pub fn path(&self) -> &str {
        &self.shown
    }
}

/// Reads a token file; error messages name the file and never quote its content.
fn read_token_file(path: &Path, shown: &str) -> Loaded {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Loaded::Failed(format!("credential file `{shown}` does not exist"));
        }
        Err(e) => return Loaded::Failed(format!("cannot read credential file `{shown}`: {e}")),
    };
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(e) => {
            return Loaded::Failed(format!(
                "credential file `{shown}` is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ));
        }
    };
    let token = match value.get("accessToken").and_then(|t| t.as_str()) {
        Some(token) if !token.is_empty() => token,
        _ => {
            return Loaded::Failed(format!("credential file `{shown}` has no `accessToken`"));
        }
    };
    match BearerToken::try_new(token) {
        Ok(bearer) => Loaded::Ready {
            token: Arc::from(token),
            bearer,
        },
        Err(_) => Loaded::Failed(format!(
            "credential file `{shown}`: `accessToken` is not a valid header value"
        )),
    }
}

impl fmt::Debug for TokenFileCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFileCredential")
            .field("path", &self.shown)
            .field("problem", &self.problem())
            .finish_non_exhaustive()
    }
}

impl Credential for TokenFileCredential {
    fn kind(&self) -> &'static str {
        "token-file"
    }

    fn apply(&self, headers: &mut HeaderMap) -> Result<(), CredentialError> {
        match &**self.loaded.load() {
            Loaded::Ready { bearer, .. } => bearer.apply(headers),
            Loaded::Failed(reason) => Err(CredentialError::Invalid(reason.clone())),
        }
    }

    /// Re-reads the file. A forced refresh (the upstream rejected the token) fails when the file
    /// still holds the same token, so the account is marked invalid instead of looping.
    fn refresh(&self, mode: RefreshMode) -> BoxFuture<'_, Result<(), CredentialError>> {
        Box::pin(async move {
            let (path, shown) = (self.path.clone(), self.shown.clone());
            let fresh = match tokio::runtime::Handle::try_current() {
                // Off the async worker threads when there is a runtime.
                Ok(handle) => handle
                    .spawn_blocking(move || read_token_file(&path, &shown))
                    .await
                    .map_err(|e| CredentialError::Unavailable(e.to_string()))?,
                Err(_) => read_token_file(&path, &shown),
            };
            let previous = self.loaded.load_full();
            match (&fresh, &*previous) {
                (Loaded::Failed(reason), previous) => {
                    let reason = reason.clone();
                    if matches!(previous, Loaded::Failed(_)) {
                        self.loaded.store(Arc::new(fresh));
                    }
                    Err(CredentialError::Invalid(reason))
                }
                (Loaded::Ready { token: new, .. }, Loaded::Ready { token: old, .. })
                    if mode == RefreshMode::Forced && new == old =>
                {
                    Err(CredentialError::Invalid(format!(
                        "the token in credential file `{}` was rejected and the file has not changed",
                        self.shown
                    )))
                }
                (Loaded::Ready { .. }, _) => {
                    self.loaded.store(Arc::new(fresh));
                    Ok(())
                }
            }
        })
    }

    fn masked(&self) -> MaskedCredential {
        let mut masked = match &**self.loaded.load() {
            Loaded::Ready { token, .. } => MaskedCredential::from_secret("token-file", token),
            Loaded::Failed(_) => MaskedCredential {
                kind: "token-file",
                last4: None,
                path: None,
            },
        };
        masked.path = Some(self.shown.clone());
        masked
    }
}
