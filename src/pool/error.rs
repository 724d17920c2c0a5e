//! [`BuildError`] and [`PoolError`].

use crate::account::AccountId;
use crate::credential::CredentialError;

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
    /// The health policy is inconsistent.
    #[error("{0}")]
    InvalidPolicy(String),
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
    /// A store could not write the pool's state.
    #[error("store {0}")]
    Store(String),
    /// The credential could not be refreshed.
    #[error("account `{id}`: {source}")]
    Credential {
        /// The account.
        id: AccountId,
        /// What went wrong.
        source: CredentialError,
    },
}
