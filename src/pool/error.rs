//! [`BuildError`] and [`PoolError`].

use std::fmt;
use std::sync::Arc;

use crate::account::AccountId;
use crate::credential::CredentialError;
pub use crate::health::PolicyError;

/// An invalid pool, account or policy, found when building or changing the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The pool has no accounts.
    #[error("the account pool is empty: add at least one account")]
    Empty,
    /// An account has an empty id.
    #[error("account at index {index} has an empty id")]
    EmptyId {
        /// Position of the account in the list given.
        index: usize,
    },
    /// Two accounts share an id.
    #[error("duplicate account id `{id}` at index {index} (first seen at index {first})")]
    DuplicateId {
        /// The repeated id.
        id: AccountId,
        /// Position of the repeat.
        index: usize,
        /// Position of the first account with this id.
        first: usize,
    },
    /// An account has weight 0.
    #[error("account `{id}` (index {index}): weight must be at least 1")]
    ZeroWeight {
        /// The account.
        id: AccountId,
        /// Its position.
        index: usize,
    },
    /// An account has a max in-flight of 0.
    #[error(
        "account `{id}` (index {index}): max in-flight must be at least 1 (leave it unset for no limit)"
    )]
    ZeroMaxInFlight {
        /// The account.
        id: AccountId,
        /// Its position.
        index: usize,
    },
    /// The health policy is inconsistent (which rule it breaks is the source).
    #[error("{0}")]
    InvalidPolicy(#[source] PolicyError),
    /// The affinity TTL is zero.
    #[error("the sticky-session TTL must be greater than zero")]
    ZeroAffinityTtl,
}

/// An error from a manual action on the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No account has this id.
    #[error("unknown account `{0}`")]
    UnknownAccount(AccountId),
    /// The change would make the pool invalid.
    #[error(transparent)]
    Invalid(#[from] BuildError),
    /// Stores could not write the pool's state when [`Pool::shutdown`](crate::Pool::shutdown)
    /// flushed them: which, and why (the first one is the source).
    #[error("store {0}")]
    Store(#[source] StoreFailures),
    /// The credential could not be refreshed.
    #[error("account `{id}`: {source}")]
    Credential {
        /// The account.
        id: AccountId,
        /// What went wrong.
        source: CredentialError,
    },
}

/// The error a store reports (a [`StoreError`](crate::store::StoreError) for the crate's
/// stores: downcast it to read its kind).
pub type StoreSource = dyn std::error::Error + Send + Sync + 'static;

/// One store that could not write everything when [`Pool::shutdown`](crate::Pool::shutdown)
/// flushed it: its name and its error (the source).
#[derive(Debug, Clone)]
pub struct StoreFailure {
    store: &'static str,
    error: Arc<StoreSource>,
}

impl StoreFailure {
    pub(crate) fn new(
        store: &'static str,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreFailure {
            store,
            error: Arc::new(error),
        }
    }

    /// The store's [`name`](crate::store::Store::name).
    pub fn store(&self) -> &'static str {
        self.store
    }

    /// Why it could not write: a [`StoreError`](crate::store::StoreError) for the crate's
    /// stores (`failure.error().downcast_ref::<StoreError>()`).
    pub fn error(&self) -> &StoreSource {
        &*self.error
    }
}

impl fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` could not write: {}", self.store, self.error)
    }
}

impl std::error::Error for StoreFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.error)
    }
}

impl PartialEq for StoreFailure {
    fn eq(&self, other: &Self) -> bool {
        self.store == other.store && self.error.to_string() == other.error.to_string()
    }
}

impl Eq for StoreFailure {}

/// Every store that failed one [`Pool::shutdown`](crate::Pool::shutdown) (at least one), in the
/// order they were attached. Displayed as their messages joined by `; `; the source is the first
/// one's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFailures(Vec<StoreFailure>);

impl StoreFailures {
    pub(crate) fn new(failures: Vec<StoreFailure>) -> Self {
        debug_assert!(!failures.is_empty());
        StoreFailures(failures)
    }

    /// The stores that failed.
    pub fn iter(&self) -> std::slice::Iter<'_, StoreFailure> {
        self.0.iter()
    }
}

impl fmt::Display for StoreFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StoreFailures {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .first()
            .map(|failure| failure.error() as &(dyn std::error::Error + 'static))
    }
}

impl<'a> IntoIterator for &'a StoreFailures {
    type Item = &'a StoreFailure;
    type IntoIter = std::slice::Iter<'a, StoreFailure>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}
