//! Accounts: an id, a credential and user-owned settings.
//!
//! An [`Account`] is configuration. Everything the pool learns at runtime (health state, cooldowns,
//! counters) lives apart from it, in the pool, and is read through
//! [`Pool::snapshot`](crate::Pool::snapshot).
//!
//! ```
//! use tower_account_pool::{Account, credential::BearerToken};
//!
//! let account = Account::new("acct-1", BearerToken::new("sk-secret"))
//!     .weight(3)
//!     .priority(0)
//!     .max_in_flight(8)
//!     .allow_models(["claude-sonnet-4-5"])
//!     .deny_models(["claude-opus-4-5"]);
//!
//! assert_eq!(account.id().as_str(), "acct-1");
//! assert_eq!(account.settings().weight, 3);
//! // The secret never shows up in `Debug` output.
//! assert!(!format!("{account:?}").contains("sk-secret"));
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::credential::{Credential, SharedCredential};

/// The stable identity of an account (`uuid` in the older system's files).
///
/// Cloning is a reference-count increment; comparing first checks pointer identity.
#[derive(Clone, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(Arc<str>);

impl AccountId {
    /// Creates an id from any string.
    pub fn new(id: impl AsRef<str>) -> Self {
        AccountId(Arc::from(id.as_ref()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for AccountId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for AccountId {}

impl std::hash::Hash for AccountId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

impl PartialEq<str> for AccountId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for AccountId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl Borrow<str> for AccountId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for AccountId {
    fn from(id: &str) -> Self {
        AccountId::new(id)
    }
}

impl From<String> for AccountId {
    fn from(id: String) -> Self {
        AccountId(Arc::from(id))
    }
}

/// User-owned settings of an account. Runtime state is never stored here.
///
/// Its fields can be read and changed in place (as [`Pool::update_settings`](crate::Pool::update_settings)
/// hands them out); new settings start from [`Default`] and the `with_*` setters:
///
/// ```
/// use tower_account_pool::account::AccountSettings;
///
/// let settings = AccountSettings::default().with_weight(3).with_priority(1);
/// assert_eq!((settings.weight, settings.priority, settings.enabled), (3, 1, true));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AccountSettings {
    /// Whether the account may be selected at all (`!isDisabled` in the older system's files).
    pub enabled: bool,
    /// When set, only these models are served by this account (exact match).
    pub models: Option<Vec<String>>,
    /// Models this account never serves (`notSupportedModels`; exact match).
    pub not_supported_models: Vec<String>,
    /// Relative share for the weighted strategy. Must be at least 1. Default 1.
    pub weight: u32,
    /// Priority tier: tier 0 is used first; a higher tier only when every account of the tiers
    /// below it is unavailable. Default 0.
    pub priority: u32,
    /// Most requests this account may serve at once. `None` (default) means unlimited; zero is
    /// rejected when the pool is built.
    pub max_in_flight: Option<u32>,
    /// Model used by active probes (`checkModelName`).
    pub probe_model: Option<String>,
    /// Per-account upstream base URL, for handlers that route by account.
    pub base_url: Option<String>,
}

impl Default for AccountSettings {
    fn default() -> Self {
        AccountSettings {
            enabled: true,
            models: None,
            not_supported_models: Vec::new(),
            weight: 1,
            priority: 0,
            max_in_flight: None,
            probe_model: None,
            base_url: None,
        }
    }
}

impl AccountSettings {
    /// Sets [`enabled`](Self::enabled).
    pub fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Sets [`models`](Self::models).
    pub fn with_models(mut self, models: Option<Vec<String>>) -> Self {
        self.models = models;
        self
    }

    /// Sets [`not_supported_models`](Self::not_supported_models).
    pub fn with_not_supported_models(mut self, not_supported_models: Vec<String>) -> Self {
        self.not_supported_models = not_supported_models;
        self
    }

    /// Sets [`weight`](Self::weight).
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets [`priority`](Self::priority).
    pub fn with_priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets [`max_in_flight`](Self::max_in_flight).
    pub fn with_max_in_flight(mut self, max_in_flight: Option<u32>) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// Sets [`probe_model`](Self::probe_model).
    pub fn with_probe_model(mut self, probe_model: Option<String>) -> Self {
        self.probe_model = probe_model;
        self
    }

    /// Sets [`base_url`](Self::base_url).
    pub fn with_base_url(mut self, base_url: Option<String>) -> Self {
        self.base_url = base_url;
        self
    }

    /// Whether these settings allow `model` (no model always passes).
    pub fn allows_model(&self, model: Option<&str>) -> bool {
        let Some(model) = model else { return true };
        if self.not_supported_models.iter().any(|m| m == model) {
            return false;
        }
        match &self.models {
            Some(allowed) => allowed.iter().any(|m| m == model),
            None => true,
        }
    }

    /// Whether these settings restrict models at all (else every model passes).
    pub(crate) fn restricts_models(&self) -> bool {
        self.models.is_some() || !self.not_supported_models.is_empty()
    }
}

/// One upstream account: an id, a credential and its settings.
#[derive(Clone)]
pub struct Account {
    pub(crate) id: AccountId,
    pub(crate) credential: SharedCredential,
    pub(crate) settings: AccountSettings,
}

impl Account {
    /// A new, enabled account with default settings.
    pub fn new(id: impl Into<AccountId>, credential: impl Credential) -> Self {
        Self::with_shared_credential(id, Arc::new(credential))
    }

    /// A new account around a credential that is already shared.
    pub fn with_shared_credential(id: impl Into<AccountId>, credential: SharedCredential) -> Self {
        Account {
            id: id.into(),
            credential,
            settings: AccountSettings::default(),
        }
    }

    /// Replaces all settings at once.
    pub fn with_settings(mut self, settings: AccountSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Sets whether the account starts enabled.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.settings.enabled = enabled;
        self
    }

    /// Sets the weight used by [`Strategy::Weighted`](crate::Strategy::Weighted).
    pub fn weight(mut self, weight: u32) -> Self {
        self.settings.weight = weight;
        self
    }

    /// Sets the priority tier (0 first).
    pub fn priority(mut self, priority: u32) -> Self {
        self.settings.priority = priority;
        self
    }

    /// Caps the number of concurrent requests on this account.
    pub fn max_in_flight(mut self, max: u32) -> Self {
        self.settings.max_in_flight = Some(max);
        self
    }

    /// Restricts the account to these models.
    pub fn allow_models<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.models = Some(models.into_iter().map(Into::into).collect());
        self
    }

    /// Excludes these models from the account.
    pub fn deny_models<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.not_supported_models = models.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the model active probes use.
    pub fn probe_model(mut self, model: impl Into<String>) -> Self {
        self.settings.probe_model = Some(model.into());
        self
    }

    /// Sets a per-account upstream base URL.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.settings.base_url = Some(url.into());
        self
    }

    /// The account's id.
    pub fn id(&self) -> &AccountId {
        &self.id
    }

    /// The account's credential.
    pub fn credential(&self) -> &SharedCredential {
        &self.credential
    }

    /// The account's settings.
    pub fn settings(&self) -> &AccountSettings {
        &self.settings
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("credential", &self.credential)
            .field("settings", &self.settings)
            .finish()
    }
}

/// The account a request is being sent with, in the request's extensions (for a handler) and
/// in the response's (for the caller). It exposes the credential's read-only, non-secret
/// fields, never the secret.
///
/// ```
/// # use tower_account_pool::account::SelectedAccount;
/// fn handler(account: &SelectedAccount) -> String {
///     format!("{} (attempt {})", account.id(), account.attempt())
/// }
/// ```
#[derive(Clone)]
pub struct SelectedAccount {
    // The pool's own record of the account, shared with the request's lease: a clone touches
    // one reference count (already in cache from the lease's), not the id's and the
    // credential's (two more cache lines of an account this core may not have seen for a while).
    account: Arc<dyn AccountRecord>,
    attempt: u32,
}

/// The pool's record of an account, as [`SelectedAccount`] reads it.
pub(crate) trait AccountRecord: Send + Sync + 'static {
    fn id(&self) -> &AccountId;
    fn credential(&self) -> &SharedCredential;
}

impl SelectedAccount {
    pub(crate) fn new(account: Arc<dyn AccountRecord>, attempt: u32) -> Self {
        SelectedAccount { account, attempt }
    }

    /// The account's id.
    pub fn id(&self) -> &AccountId {
        self.account.id()
    }

    /// Which upstream call of the request this is, from 1 (a retry on the same account after a
    /// credential refresh counts as a call).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A read-only, non-secret credential field (for example a Kiro `profileArn`).
    pub fn field(&self, name: &str) -> Option<String> {
        self.account.credential().field(name)
    }

    /// The credential's kind (`bearer`, `api-key`, ...).
    pub fn credential_kind(&self) -> &'static str {
        self.account.credential().kind()
    }
}

impl fmt::Debug for SelectedAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelectedAccount")
            .field("id", self.id())
            .field("attempt", &self.attempt)
            .field("credential", &self.credential_kind())
            .finish()
    }
}
