//! [`PoolBuilder`]: accounts, strategy, health policy and affinity TTL, validated at once.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use super::{BuildError, Pool, Shared};
use crate::account::{Account, AccountId, AccountSettings};
use crate::health::HealthPolicy;
use crate::select::{Selector, Strategy, DEFAULT_AFFINITY_TTL};

/// Builds a [`Pool`].
#[derive(Debug, Default)]
pub struct PoolBuilder {
    accounts: Vec<Account>,
    strategy: Strategy,
    policy: HealthPolicy,
    affinity_ttl: Option<Duration>,
}

impl PoolBuilder {
    /// Adds one account.
    pub fn account(mut self, account: Account) -> Self {
        self.accounts.push(account);
        self
    }

    /// Adds several accounts.
    pub fn accounts(mut self, accounts: impl IntoIterator<Item = Account>) -> Self {
        self.accounts.extend(accounts);
        self
    }

    /// Sets the selection strategy (default: round-robin).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the health policy (default: [`HealthPolicy::default`]).
    pub fn health(mut self, policy: HealthPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets how long a sticky session stays pinned after its last request (default 1 h).
    pub fn affinity_ttl(mut self, ttl: Duration) -> Self {
        self.affinity_ttl = Some(ttl);
        self
    }

    /// Validates everything and builds the pool.
    ///
    /// Fails on an empty pool, an empty or duplicate id, a weight of 0, a max in-flight of 0 or
    /// an inconsistent health policy.
    pub fn build(self) -> Result<Pool, BuildError> {
        if self.accounts.is_empty() {
            return Err(BuildError::Empty);
        }
        self.policy.validate().map_err(BuildError::InvalidPolicy)?;
        let ttl = self.affinity_ttl.unwrap_or(DEFAULT_AFFINITY_TTL);
        if ttl.is_zero() {
            return Err(BuildError::ZeroAffinityTtl);
        }
        validate_accounts(&self.accounts)?;
        Ok(Pool {
            shared: Arc::new(Shared {
                selector: Selector::new(self.accounts, self.strategy, self.policy, ttl),
                changing: Mutex::new(()),
                exhaustions: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                flushers: Mutex::new(Vec::new()),
            }),
        })
    }
}

pub(super) fn validate_settings(
    id: &AccountId,
    index: usize,
    s: &AccountSettings,
) -> Result<(), BuildError> {
    if id.as_str().is_empty() {
        return Err(BuildError::EmptyId { index });
    }
    if s.weight == 0 {
        return Err(BuildError::ZeroWeight {
            id: id.clone(),
            index,
        });
    }
    if s.max_in_flight == Some(0) {
        return Err(BuildError::ZeroMaxInFlight {
            id: id.clone(),
            index,
        });
    }
    Ok(())
}

pub(super) fn validate_accounts(accounts: &[Account]) -> Result<(), BuildError> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(accounts.len());
    for (index, account) in accounts.iter().enumerate() {
        validate_settings(&account.id, index, &account.settings)?;
        if let Some(&first) = seen.get(account.id.as_str()) {
            return Err(BuildError::DuplicateId {
                id: account.id.clone(),
                index,
                first,
            });
        }
        seen.insert(account.id.as_str(), index);
    }
    Ok(())
}
