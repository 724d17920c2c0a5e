//! [`KiroCredential`]: a Kiro OAuth account loaded from a token file or inline JSON.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::HeaderMap;

use super::refresh;
use super::token_file::{self, TokenFields, TokenUpdate};
use super::usage::KiroUsage;
use crate::credential::{
    BoxFuture, Credential, CredentialError, MaskedCredential, RefreshMode, SharedCredential,
};

/// The credential kind reported by [`Credential::kind`].
pub const KIND: &str = "kiro-oauth";
/// Default proactive-refresh window before expiry.
pub const DEFAULT_REFRESH_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Default timeout of one refresh or usage call.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifetime assumed when a refresh response gives neither `expiresIn` nor `expiresAt`.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// The per-request id header Kiro clients send.
pub static INVOCATION_ID: HeaderName = HeaderName::from_static("amz-sdk-invocation-id");

const INSTANCE_FIELD: &str = "kiroCredentialInstance";

/// How a Kiro account refreshes its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// Kiro social login (Google, GitHub), also manual imports: refreshed at
    /// `prod.{region}.auth.desktop.kiro.dev/refreshToken`; sends a `profileArn`.
    Social,
    /// AWS IAM Identity Center / Builder ID: refreshed at `oidc.{region}.amazonaws.com/token`
    /// with the file's `clientId` and `clientSecret`; never sends a `profileArn`.
    Idc,
}

impl AuthMethod {
    /// Parses a file's `authMethod` (`social`, `manual-import` → social; `IdC`, `builder-id`,
    /// `iam` → IdC), ignoring case.
    pub fn parse(value: &str) -> Option<AuthMethod> {
        match value.trim().to_ascii_lowercase().as_str() {
            "social" | "manual-import" | "manual" => Some(AuthMethod::Social),
            "idc" | "builder-id" | "builderid" | "iam" | "sso" => Some(AuthMethod::Idc),
            _ => None,
        }
    }

    /// `social` or `idc`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Social => "social",
            AuthMethod::Idc => "idc",
        }
    }
}

/// A token file or inline credentials that cannot be used. Names the file, never holds a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KiroError {
    /// The file could not be read.
    #[error("cannot read Kiro token file `{path}`: {detail}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        detail: String,
    },
    /// The file is not valid JSON.
    #[error("Kiro token file `{path}` is not valid JSON: {detail}")]
    Json {
        /// The file.
        path: String,
        /// What and where (line, column); never the content.
        detail: String,
    },
    /// The JSON is not an object.
    #[error("Kiro token file `{path}` must hold a JSON object")]
    NotAnObject {
        /// The file.
        path: String,
    },
    /// A required field is missing.
    #[error("Kiro token file `{path}`: missing `{field}`: {hint}")]
    MissingField {
        /// The file.
        path: String,
        /// The field.
        field: &'static str,
        /// What to do.
        hint: &'static str,
    },
    /// A field has the wrong type or an unusable value.
    #[error("Kiro token file `{path}`: `{field}` must be {expected}")]
    InvalidField {
        /// The file.
        path: String,
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// An IdC / Builder ID account lacks its OIDC client registration.
    #[error(
        "Kiro token file `{path}`: authMethod IdC needs clientId and clientSecret to refresh, missing {missing}; \
         copy them into this file (the Kiro IDE keeps them in a separate <hash>.json beside its token file)"
    )]
    IdcWithoutClient {
        /// The file.
        path: String,
        /// Which of the two is missing.
        missing: &'static str,
    },
}

/// Where refresh and usage calls go. `None` uses the region's production URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KiroEndpoints {
    /// Social refresh base (default `https://prod.{region}.auth.desktop.kiro.dev`).
    pub social_base: Option<String>,
    /// IdC refresh base (default `https://oidc.{region}.amazonaws.com`).
    pub oidc_base: Option<String>,
    /// Usage-limits base (default `https://q.{region}.amazonaws.com`).
    pub q_base: Option<String>,
}

impl KiroEndpoints {
    /// Every endpoint at one base URL (a mock upstream or a proxy).
    pub fn all(base: impl Into<String>) -> Self {
        let base = base.into();
        KiroEndpoints {
            social_base: Some(base.clone()),
            oidc_base: Some(base.clone()),
            q_base: Some(base),
        }
    }

    pub(crate) fn social(&self, region: &str) -> String {
        match &self.social_base {
            Some(b) => format!("{}/refreshToken", b.trim_end_matches('/')),
            None => format!("https://prod.{region}.auth.desktop.kiro.dev/refreshToken"),
        }
    }

    pub(crate) fn oidc(&self, region: &str) -> String {
        match &self.oidc_base {
            Some(b) => format!("{}/token", b.trim_end_matches('/')),
            None => format!("https://oidc.{region}.amazonaws.com/token"),
        }
    }

    pub(crate) fn q(&self, region: &str) -> String {
        match &self.q_base {
            Some(b) => b.trim_end_matches('/').to_owned(),
            None => format!("https://q.{region}.amazonaws.com"),
        }
    }
}

/// Options shared by the constructors of [`KiroCredential`].
#[derive(Debug, Clone)]
pub struct KiroOptions {
    /// Refresh and usage URLs.
    pub endpoints: KiroEndpoints,
    /// [`RefreshMode::IfNeeded`] refreshes only this close to expiry (default 5 min).
    pub refresh_window: Duration,
    /// Timeout of one refresh or usage call (default 30 s).
    pub http_timeout: Duration,
    /// The HTTP client (default: one shared rustls client).
    pub client: Option<reqwest::Client>,
}

impl Default for KiroOptions {
    fn default() -> Self {
        KiroOptions {
            endpoints: KiroEndpoints::default(),
            refresh_window: DEFAULT_REFRESH_WINDOW,
            http_timeout: DEFAULT_HTTP_TIMEOUT,
            client: None,
        }
    }
}

impl KiroOptions {
    /// Default options with every endpoint at `base`.
    pub fn with_base_url(base: impl Into<String>) -> Self {
        KiroOptions {
            endpoints: KiroEndpoints::all(base),
            ..KiroOptions::default()
        }
    }
}

fn shared_client() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .user_agent(concat!("tower-account-pool/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("the default rustls client builds")
        })
        .clone()
}

/// The token state; swapped whole on refresh so `apply` reads it without a lock.
pub(crate) struct TokenState {
    pub(crate) bearer: Option<HeaderValue>,
    pub(crate) fields: Option<TokenFields>,
    /// Why the file could not be loaded (the account is unusable until it is fixed).
    pub(crate) load_error: Option<KiroError>,
}

impl TokenState {
    fn from_fields(fields: TokenFields) -> Self {
        let bearer = fields.access_token.as_deref().and_then(|token| {
            let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        TokenState {
            bearer,
            fields: Some(fields),
            load_error: None,
        }
    }

    fn broken(error: KiroError) -> Self {
        TokenState {
            bearer: None,
            fields: None,
            load_error: Some(error),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) instance: u64,
    pub(crate) path: Option<PathBuf>,
    pub(crate) options: KiroOptions,
    pub(crate) client: reqwest::Client,
    pub(crate) state: ArcSwap<TokenState>,
    refresh_lock: tokio::sync::Mutex<()>,
    refresh_generation: AtomicU64,
    last_result: Mutex<Result<(), CredentialError>>,
    /// Fingerprint of the tokens last read from or written to the file: a re-read adopts the
    /// file only when someone else changed it since (not when our own write-back failed).
    disk_tokens: AtomicU64,
    pub(crate) usage: Mutex<Option<KiroUsage>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.instance);
    }
}

fn registry() -> &'static Mutex<HashMap<u64, Weak<Inner>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<u64, Weak<Inner>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// A Kiro (AWS CodeWhisperer) OAuth account.
///
/// Cloning is cheap and every clone shares one token state, one refresh and one usage record.
/// Hand one clone to the pool ([`Account::new`](crate::Account::new)) and keep another, or get it
/// back from the pool with [`KiroCredential::from_shared`].
///
/// - [`apply`](Credential::apply) sets `Authorization: Bearer …` (sensitive) and a fresh
///   `amz-sdk-invocation-id` (UUID v4). Without an access token yet it fails with
///   [`CredentialError::Unavailable`] (a refresh fetches one).
/// - [`refresh`](Credential::refresh): social accounts at `/refreshToken`, IdC accounts at the
///   OIDC `/token` endpoint; single flight (concurrent callers share one upstream call);
///   [`RefreshMode::IfNeeded`] acts only inside the refresh window; rotated refresh tokens are
///   kept and the token file is rewritten atomically (unknown fields kept, mode 0600). A refresh
///   first takes an advisory lock on `<file>.lock` and re-reads the file, so several processes
///   sharing a token file refresh it once and adopt each other's tokens.
/// - [`field`](Credential::field): `profileArn` (social accounts only), `region`, `authMethod`,
///   and after a usage probe `email` and `nextDateReset` (epoch milliseconds).
#[derive(Clone)]
pub struct KiroCredential {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for KiroCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.load();
        let mut d = f.debug_struct("KiroCredential");
        d.field("path", &self.inner.path);
        match &state.fields {
            Some(fields) => d
                .field("auth_method", &fields.auth_method)
                .field("region", &fields.region)
                .field("has_access_token", &fields.access_token.is_some())
                .field("has_refresh_token", &fields.refresh_token.is_some())
                .field("expires_at", &fields.expires_at),
            None => d.field("load_error", &state.load_error),
        };
        d.finish_non_exhaustive()
    }
}

impl KiroCredential {
    fn build(path: Option<PathBuf>, state: TokenState, options: KiroOptions) -> Self {
        let disk_tokens = state.fields.as_ref().map_or(0, fingerprint);
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let instance = NEXT.fetch_add(1, Ordering::Relaxed);
        let client = options.client.clone().unwrap_or_else(shared_client);
        let inner = Arc::new(Inner {
            instance,
            path,
            options,
            client,
            state: ArcSwap::from_pointee(state),
            refresh_lock: tokio::sync::Mutex::new(()),
            refresh_generation: AtomicU64::new(0),
            last_result: Mutex::new(Ok(())),
            disk_tokens: AtomicU64::new(disk_tokens),
            usage: Mutex::new(None),
        });
        registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(instance, Arc::downgrade(&inner));
        KiroCredential { inner }
    }

    /// Loads a token file (`KIRO_OAUTH_CREDS_FILE_PATH`). Fails on a missing or bad file with an
    /// error naming it.
    pub fn from_file(path: impl AsRef<Path>, options: KiroOptions) -> Result<Self, KiroError> {
        let path = path.as_ref().to_path_buf();
        let fields = read_file(&path)?;
        Ok(Self::build(
            Some(path),
            TokenState::from_fields(fields),
            options,
        ))
    }

    /// Loads a token file, but never fails: a missing or bad file gives a credential whose
    /// `apply` and `refresh` return [`CredentialError::Invalid`] with the reason, so only that
    /// account is unavailable. Each refresh re-reads the file, so fixing it brings the account
    /// back (the pool retries `AuthInvalid` refreshes on a schedule, or reset it by hand).
    pub fn open(path: impl AsRef<Path>, options: KiroOptions) -> Self {
        let path = path.as_ref().to_path_buf();
        let state = match read_file(&path) {
            Ok(fields) => TokenState::from_fields(fields),
            Err(e) => {
                tracing::warn!(error = %e, "Kiro account unavailable until its token file is fixed");
                TokenState::broken(e)
            }
        };
        Self::build(Some(path), state, options)
    }

    /// Inline credentials: the same JSON object a token file holds. Refreshed tokens stay in
    /// memory.
    pub fn from_json(json: &str, options: KiroOptions) -> Result<Self, KiroError> {
        let fields = token_file::parse(json.as_bytes(), None)?;
        Ok(Self::build(None, TokenState::from_fields(fields), options))
    }

    /// The [`KiroCredential`] behind a pool's shared credential, if it is one.
    pub fn from_shared(credential: &SharedCredential) -> Option<KiroCredential> {
        if credential.kind() != KIND {
            return None;
        }
        let instance: u64 = credential.field(INSTANCE_FIELD)?.parse().ok()?;
        let weak = registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&instance)?
            .clone();
        weak.upgrade().map(|inner| KiroCredential { inner })
    }

    /// The token file, if the credential has one.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The auth method, unless the file failed to load.
    pub fn auth_method(&self) -> Option<AuthMethod> {
        self.inner
            .state
            .load()
            .fields
            .as_ref()
            .map(|f| f.auth_method)
    }

    /// The account's region (default `us-east-1`), unless the file failed to load.
    pub fn region(&self) -> Option<String> {
        self.inner
            .state
            .load()
            .fields
            .as_ref()
            .map(|f| f.region.clone())
    }

    /// The `profileArn` of a social account (IdC accounts never send one).
    pub fn profile_arn(&self) -> Option<String> {
        let state = self.inner.state.load();
        let fields = state.fields.as_ref()?;
        (fields.auth_method == AuthMethod::Social)
            .then(|| fields.profile_arn.clone())
            .flatten()
    }

    /// Why the token file could not be loaded, if it could not.
    pub fn load_error(&self) -> Option<KiroError> {
        self.inner.state.load().load_error.clone()
    }

    /// Whether an access token is held.
    pub fn has_access_token(&self) -> bool {
        self.inner.state.load().bearer.is_some()
    }

    /// The last usage the probe saw.
    pub fn last_usage(&self) -> Option<KiroUsage> {
        self.inner
            .usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// When the quota resets according to the last usage probe (`nextDateReset`).
    pub fn quota_reset(&self) -> Option<SystemTime> {
        self.last_usage().and_then(|u| u.next_reset)
    }

    pub(crate) fn set_usage(&self, usage: KiroUsage) {
        *self.inner.usage.lock().unwrap_or_else(|e| e.into_inner()) = Some(usage);
    }

    /// The access token, for the usage call. Crate-private: tokens never leave the crate
    /// except as sensitive header values.
    pub(crate) fn bearer(&self) -> Option<HeaderValue> {
        self.inner.state.load().bearer.clone()
    }

    fn needs_refresh(&self, fields: &TokenFields) -> bool {
        if fields.access_token.is_none() {
            return true;
        }
        match fields.expires_at {
            None => true,
            Some(at) => match at.duration_since(SystemTime::now()) {
                Ok(left) => left <= self.inner.options.refresh_window,
                Err(_) => true,
            },
        }
    }

    async fn refresh_single_flight(&self, mode: RefreshMode) -> Result<(), CredentialError> {
        let inner = &self.inner;
        if mode == RefreshMode::IfNeeded {
            // Fast path: nothing to do, no lock, no I/O.
            let state = inner.state.load();
            if let Some(fields) = &state.fields {
                if !self.needs_refresh(fields) {
                    return Ok(());
                }
            }
        }
        // The refresh runs to its end in a task of its own, even if this caller stops waiting
        // (a request deadline, a client gone, a task aborted at shutdown): once the upstream
        // has rotated the refresh token, the new one must be kept and written back, and the
        // token file's lock released only after that.
        let this = self.clone();
        match tokio::spawn(async move { this.refresh_flight(mode).await }).await {
            Ok(result) => result,
            Err(_) => Err(CredentialError::Unavailable(
                "the Kiro token refresh task failed".into(),
            )),
        }
    }

    async fn refresh_flight(&self, mode: RefreshMode) -> Result<(), CredentialError> {
        let inner = &self.inner;
        let observed = inner.refresh_generation.load(Ordering::Acquire);
        let _flight = inner.refresh_lock.lock().await;
        if inner.refresh_generation.load(Ordering::Acquire) != observed {
            // Another caller refreshed while we waited: share its result.
            return inner
                .last_result
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
        }
        let result = self.refresh_locked(mode).await;
        *inner.last_result.lock().unwrap_or_else(|e| e.into_inner()) = result.clone();
        inner.refresh_generation.fetch_add(1, Ordering::AcqRel);
        result
    }

    async fn refresh_locked(&self, mode: RefreshMode) -> Result<(), CredentialError> {
        let inner = &self.inner;
        let origin = token_file::origin_name(inner.path.as_deref());
        // Cross-process: lock `<file>.lock`, then re-read the file (another process may have
        // refreshed it, or an operator fixed it).
        let mut _file_lock = None;
        if let Some(path) = inner.path.clone() {
            let joined = tokio::task::spawn_blocking(move || {
                let lock = token_file::lock_file(&path);
                (lock, read_file(&path))
            })
            .await;
            let (lock, reread) = match joined {
                Ok(pair) => pair,
                Err(_) => {
                    return Err(CredentialError::Unavailable(format!(
                        "reading Kiro token file `{origin}` was interrupted"
                    )))
                }
            };
            match lock {
                Ok(file) => _file_lock = Some(file),
                Err(e) => {
                    tracing::warn!(file = %origin, error = %e, "cannot lock the Kiro token file; refreshing without the cross-process lock")
                }
            }
            let current = inner.state.load_full();
            match reread {
                Ok(fields) => {
                    let on_disk = fingerprint(&fields);
                    let changed = current.fields.is_none()
                        || inner.disk_tokens.load(Ordering::Acquire) != on_disk;
                    if changed {
                        inner.disk_tokens.store(on_disk, Ordering::Release);
                        let usable = !self.needs_refresh(&fields);
                        tracing::info!(file = %origin, "Kiro token file changed on disk; adopting it");
                        inner.state.store(Arc::new(TokenState::from_fields(fields)));
                        if usable {
                            return Ok(());
                        }
                    }
                }
                Err(e) if current.fields.is_none() => {
                    inner.state.store(Arc::new(TokenState::broken(e.clone())));
                    return Err(CredentialError::Invalid(e.to_string()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Kiro token file unreadable; keeping the tokens in memory");
                }
            }
        }
        let state = inner.state.load_full();
        let Some(fields) = state.fields.clone() else {
            let e = state.load_error.clone().map_or_else(
                || format!("Kiro credential `{origin}` has no tokens"),
                |e| e.to_string(),
            );
            return Err(CredentialError::Invalid(e));
        };
        if mode == RefreshMode::IfNeeded && !self.needs_refresh(&fields) {
            return Ok(());
        }
        let Some(refresh_token) = fields.refresh_token.clone() else {
            if mode == RefreshMode::IfNeeded
                && fields.access_token.is_some()
                && fields.expires_at.is_none_or(|at| at > SystemTime::now())
            {
                return Ok(());
            }
            return Err(CredentialError::Invalid(format!(
                "Kiro credential `{origin}` has no refreshToken; sign in again and replace it"
            )));
        };
        let refreshed = refresh::call(
            &inner.client,
            &inner.options,
            &fields,
            &refresh_token,
            &origin,
        )
        .await?;
        let mut next = fields.clone();
        next.access_token = Some(refreshed.access_token.clone());
        if let Some(rotated) = &refreshed.refresh_token {
            next.refresh_token = Some(rotated.clone());
        }
        if let Some(arn) = &refreshed.profile_arn {
            next.profile_arn = Some(arn.clone());
        }
        next.expires_at = Some(refreshed.expires_at);
        inner
            .state
            .store(Arc::new(TokenState::from_fields(next.clone())));
        tracing::info!(file = %origin, auth_method = next.auth_method.as_str(), rotated = refreshed.refresh_token.is_some(), "Kiro token refreshed");
        if let Some(path) = inner.path.clone() {
            let expiry_format = next.expiry_format;
            let written = tokio::task::spawn_blocking(move || {
                token_file::write_back(
                    &path,
                    &TokenUpdate {
                        access_token: &refreshed.access_token,
                        refresh_token: refreshed.refresh_token.as_deref(),
                        expires_at: refreshed.expires_at,
                        expiry_format,
                        profile_arn: refreshed.profile_arn.as_deref(),
                    },
                )
            })
            .await;
            match written {
                Ok(Ok(())) => inner
                    .disk_tokens
                    .store(fingerprint(&next), Ordering::Release),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "refreshed Kiro token kept in memory only")
                }
                Err(_) => {
                    tracing::error!(file = %origin, "writing the Kiro token file was interrupted")
                }
            }
        }
        Ok(())
    }
}

/// A fingerprint of a file's tokens (never the tokens themselves).
fn fingerprint(fields: &TokenFields) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let mut hasher = KEYS.get_or_init(Default::default).build_hasher();
    fields.access_token.hash(&mut hasher);
    fields.refresh_token.hash(&mut hasher);
    hasher.finish()
}

fn read_file(path: &Path) -> Result<TokenFields, KiroError> {
    let bytes = std::fs::read(path).map_err(|e| KiroError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    token_file::parse(&bytes, Some(path))
}

/// A fresh UUID v4 as a header value. Invocation ids only need to be unique, not secret, so
/// they come from the per-thread `fastrand` generator (no system call per request).
pub(crate) fn invocation_id() -> HeaderValue {
    let mut buf = [0u8; 36];
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_be_bytes())
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buf);
    HeaderValue::from_str(id).expect("a UUID is a valid header value")
}

impl Credential for KiroCredential {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn apply(&self, headers: &mut HeaderMap) -> Result<(), CredentialError> {
        let state = self.inner.state.load();
        match &state.bearer {
            Some(bearer) => {
                headers.insert(AUTHORIZATION, bearer.clone());
                headers.insert(INVOCATION_ID.clone(), invocation_id());
                Ok(())
            }
            None => Err(match &state.load_error {
                Some(e) => CredentialError::Invalid(e.to_string()),
                None => CredentialError::Unavailable(format!(
                    "Kiro credential `{}` has no access token yet; a refresh will fetch one",
                    token_file::origin_name(self.inner.path.as_deref())
                )),
            }),
        }
    }

    fn expires_at(&self) -> Option<SystemTime> {
        self.inner
            .state
            .load()
            .fields
            .as_ref()
            .and_then(|f| f.expires_at)
    }

    fn refresh(&self, mode: RefreshMode) -> BoxFuture<'_, Result<(), CredentialError>> {
        Box::pin(self.refresh_single_flight(mode))
    }

    fn field(&self, name: &str) -> Option<String> {
        match name {
            "profileArn" => self.profile_arn(),
            "region" => self.region(),
            "authMethod" => self.auth_method().map(|m| m.as_str().to_owned()),
            "email" => self.last_usage().and_then(|u| u.email),
            "nextDateReset" => self.quota_reset().map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis()
                    .to_string()
            }),
            INSTANCE_FIELD => Some(self.inner.instance.to_string()),
            _ => None,
        }
    }

    fn masked(&self) -> MaskedCredential {
        let state = self.inner.state.load();
        let mut masked = match state
            .fields
            .as_ref()
            .and_then(|f| f.refresh_token.as_deref().or(f.access_token.as_deref()))
        {
            Some(secret) => MaskedCredential::from_secret(KIND, secret),
            None => MaskedCredential {
                kind: KIND,
                last4: None,
                path: None,
            },
        };
        masked.path = self.inner.path.as_ref().map(|p| p.display().to_string());
        masked
    }
}
