//! [`MockCredential`]: a scripted, counting credential for tests.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use tower_account_pool::credential::{Credential, CredentialError, RefreshMode};
//! use tower_account_pool::testing::MockCredential;
//!
//! let credential = MockCredential::new("test-oauth", "secret-token")
//!     .refresh_results([Err(CredentialError::Invalid("invalid_grant".into()))]);
//!
//! // The scripted result first, then success.
//! assert!(credential.refresh(RefreshMode::Forced).await.is_err());
//! assert!(credential.refresh(RefreshMode::Forced).await.is_ok());
//! assert_eq!(credential.refreshes(), 2);
//!
//! // Told to fail, every further refresh fails with that error.
//! credential.fail_refreshes_with(Some(CredentialError::Unavailable("timeout".into())));
//! assert!(credential.refresh(RefreshMode::IfNeeded).await.is_err());
//! assert_eq!(
//!     credential.refresh_modes(),
//!     [RefreshMode::Forced, RefreshMode::Forced, RefreshMode::IfNeeded]
//! );
//! # });
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use http::{HeaderMap, HeaderValue};

use crate::credential::{BoxFuture, Credential, CredentialError, MaskedCredential, RefreshMode};

/// A credential for tests: it injects `Authorization: Bearer <secret>` (marked sensitive),
/// counts its refreshes and the modes they were asked in, and answers them from a script.
///
/// A refresh takes the next scripted result ([`refresh_results`](Self::refresh_results)); when
/// the script is empty it fails with the error set by
/// [`fail_refreshes_with`](Self::fail_refreshes_with), else succeeds. Its `Debug` output and
/// [`masked`](Credential::masked) view never show the secret.
pub struct MockCredential {
    kind: &'static str,
    secret: String,
    path: Option<String>,
    refreshes: AtomicUsize,
    modes: Mutex<Vec<RefreshMode>>,
    script: Mutex<VecDeque<Result<(), CredentialError>>>,
    failure: Mutex<Option<CredentialError>>,
}

impl MockCredential {
    /// A credential of `kind` whose header carries `secret` (an empty secret injects nothing).
    pub fn new(kind: &'static str, secret: impl Into<String>) -> Self {
        MockCredential {
            kind,
            secret: secret.into(),
            path: None,
            refreshes: AtomicUsize::new(0),
            modes: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            failure: Mutex::new(None),
        }
    }

    /// The file path its masked view names, as a file-backed credential's does.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Results for the next refreshes, in order.
    pub fn refresh_results(
        self,
        results: impl IntoIterator<Item = Result<(), CredentialError>>,
    ) -> Self {
        lock(&self.script).extend(results);
        self
    }

    /// Makes every refresh after the script fail with `error` (`None`: succeed again).
    pub fn fail_refreshes_with(&self, error: Option<CredentialError>) {
        *lock(&self.failure) = error;
    }

    /// How many refreshes were asked for.
    pub fn refreshes(&self) -> usize {
        self.refreshes.load(Ordering::SeqCst)
    }

    /// The mode of every refresh asked for, in order.
    pub fn refresh_modes(&self) -> Vec<RefreshMode> {
        lock(&self.modes).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl fmt::Debug for MockCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockCredential")
            .field("kind", &self.kind)
            .field("refreshes", &self.refreshes())
            .finish_non_exhaustive()
    }
}

impl Credential for MockCredential {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn apply(&self, headers: &mut HeaderMap) -> Result<(), CredentialError> {
        if self.secret.is_empty() {
            return Ok(());
        }
        let mut value = HeaderValue::try_from(format!("Bearer {}", self.secret))
            .map_err(|_| CredentialError::InvalidHeader("authorization".into()))?;
        value.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, value);
        Ok(())
    }

    fn refresh(&self, mode: RefreshMode) -> BoxFuture<'_, Result<(), CredentialError>> {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        lock(&self.modes).push(mode);
        let result = match lock(&self.script).pop_front() {
            Some(scripted) => scripted,
            None => match lock(&self.failure).clone() {
                Some(error) => Err(error),
                None => Ok(()),
            },
        };
        Box::pin(async move { result })
    }

    fn masked(&self) -> MaskedCredential {
        MaskedCredential {
            path: self.path.clone(),
            ..MaskedCredential::from_secret(self.kind, &self.secret)
        }
    }
}
