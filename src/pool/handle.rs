//! The pool's public hook for what sits around it (stores, configuration sources, provider
//! modules such as `kiro`): [`AccountHandle`]s to the accounts as they are now, and a
//! [`WeakPool`] for background tasks that must not keep the pool alive.
//!
//! ```
//! use tower_account_pool::{Account, HealthState, Pool};
//! use tower_account_pool::credential::NoCredential;
//!
//! let pool = Pool::builder()
//!     .account(Account::new("a", NoCredential))
//!     .account(Account::new("b", NoCredential))
//!     .build()?;
//!
//! let a = pool.account("a")?;
//! a.mark_credential_unusable("token file missing");
//! assert_eq!(a.state(), HealthState::AuthInvalid);
//! a.mark_credential_usable("token file restored");
//! assert_eq!(pool.account("a")?.state(), HealthState::Healthy);
//!
//! let ids: Vec<_> = pool.accounts().iter().map(|h| h.id().to_string()).collect();
//! assert_eq!(ids, ["a", "b"]);
//!
//! let weak = pool.downgrade();
//! assert!(weak.upgrade().is_some());
//! drop(pool);
//! assert!(weak.upgrade().is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::{Pool, Shared};
use crate::account::{AccountId, AccountSettings};
use crate::credential::{CredentialError, RefreshMode, SharedCredential};
use crate::health::{HealthState, Host, Runtime};
use crate::select::Slot;

/// One account of a [`Pool`] as it is now: its id, settings and credential, its health state,
/// and the few actions that sources of credentials need. Cheap to clone.
///
/// A handle stays valid after the account is changed or removed (it then describes the
/// account as it was); take a new one from [`Pool::account`] or [`Pool::accounts`] to see
/// changes.
#[derive(Clone)]
pub struct AccountHandle {
    pub(crate) slot: Arc<Slot>,
}

impl AccountHandle {
    pub(crate) fn new(slot: Arc<Slot>) -> Self {
        AccountHandle { slot }
    }

    /// The account's id.
    pub fn id(&self) -> &AccountId {
        &self.slot.id
    }

    /// Its settings.
    pub fn settings(&self) -> &AccountSettings {
        &self.slot.settings
    }

    /// Its credential.
    pub fn credential(&self) -> &SharedCredential {
        &self.slot.credential
    }

    /// Its health state as recorded: a cooldown that has ended still reads as the cooldown
    /// (a [`snapshot`](Pool::snapshot) says what selection would see) and a disabled account
    /// reads as its runtime state.
    pub fn state(&self) -> HealthState {
        self.slot.runtime.state()
    }

    /// Refreshes the credential (`mode`) and moves the account by the result, as
    /// [`Pool::refresh_credential`] does: an account waiting on its credential becomes healthy
    /// on success; a rejection marks it `AuthInvalid`, and a passing failure of an account
    /// waiting on its credential is retried on the health policy's schedule.
    pub async fn refresh_credential(&self, mode: RefreshMode) -> Result<(), CredentialError> {
        let slot = &self.slot;
        let generation = slot.runtime.generation.load(Ordering::Acquire);
        let result = slot.credential.refresh(mode).await;
        if let Some(selector) = slot.selector.upgrade() {
            selector.after_refresh(slot.member(), generation, &result, false);
        }
        result
    }

    /// Marks the account `AuthInvalid` because its credential cannot be used (`reason` is
    /// shown as the account's reason: it must not hold secrets). The credential's refresh is
    /// retried after the health policy's `auth_invalid_retry`; counters are kept.
    pub fn mark_credential_unusable(&self, reason: &str) {
        let slot = &self.slot;
        let Some(selector) = slot.selector.upgrade() else {
            return;
        };
        let health = &selector.health;
        let retry = health.policy.auth_invalid_retry;
        let until = health
            .clock
            .now_ms()
            .saturating_add(retry.as_millis() as u64);
        let generation = health.transition(
            &slot.runtime,
            HealthState::AuthInvalid,
            until,
            reason.to_owned(),
        );
        selector.schedule_refresh(slot.member(), retry, generation);
    }

    /// An account waiting on its credential (`AuthExpired` or `AuthInvalid`) becomes healthy:
    /// its credential was replaced by a usable one. Any other state is left as it is.
    pub fn mark_credential_usable(&self, reason: &str) {
        let slot = &self.slot;
        if !matches!(
            slot.runtime.state(),
            HealthState::AuthInvalid | HealthState::AuthExpired
        ) {
            return;
        }
        if let Some(selector) = slot.selector.upgrade() {
            selector
                .health
                .transition(&slot.runtime, HealthState::Healthy, 0, reason.to_owned());
        }
    }

    /// The account's runtime state, for the crate's stores.
    pub(crate) fn runtime(&self) -> &Arc<Runtime> {
        &self.slot.runtime
    }
}

impl fmt::Debug for AccountHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountHandle")
            .field("id", &self.slot.id)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// A [`Pool`] that does not keep it alive: what background tasks hold, upgrading it on each
/// round and stopping once the pool is gone.
#[derive(Clone, Default)]
pub struct WeakPool {
    shared: Weak<Shared>,
}

impl WeakPool {
    /// The pool, if any handle to it is still alive.
    pub fn upgrade(&self) -> Option<Pool> {
        self.shared.upgrade().map(|shared| Pool { shared })
    }
}

impl fmt::Debug for WeakPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakPool")
            .field("alive", &(self.shared.strong_count() > 0))
            .finish()
    }
}

impl Pool {
    /// Every account, in priority order, as it is now.
    pub fn accounts(&self) -> Vec<AccountHandle> {
        self.shared
            .roster
            .load()
            .slots
            .iter()
            .map(|s| AccountHandle::new(s.clone()))
            .collect()
    }

    /// One account by id.
    pub fn account(&self, id: &str) -> Result<AccountHandle, super::PoolError> {
        self.slot(id).map(AccountHandle::new)
    }

    /// A handle that does not keep the pool alive.
    pub fn downgrade(&self) -> WeakPool {
        WeakPool {
            shared: Arc::downgrade(&self.shared),
        }
    }
}
