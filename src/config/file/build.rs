//! A pool built from a pool file: accounts opened by a credential resolver, runtime state
//! seeded from the state fields, and the warnings a file's shape calls for.

use super::entry::INLINE_CREDENTIALS;
use super::{quote_keys, PoolFile, PoolShape};
use crate::account::Account;
use crate::config::credential::{CredentialResolver, TokenFileResolver};
use crate::config::error::ConfigError;
use crate::pool::{Pool, PoolBuilder};

impl PoolFile {
    /// The accounts, with credential files opened by a [`TokenFileResolver`] relative to the
    /// file's folder.
    pub fn accounts(&self) -> Vec<(Account, Option<String>)> {
        self.accounts_with(&TokenFileResolver::new().base_dir(self.dir()))
    }

    /// The accounts, with credential files opened by `resolver`. The second value says why an
    /// account cannot be used yet.
    pub fn accounts_with(
        &self,
        resolver: &dyn CredentialResolver,
    ) -> Vec<(Account, Option<String>)> {
        self.entries.iter().map(|e| e.open(resolver)).collect()
    }

    /// Builds a pool from this file with `builder`'s strategy, policy and TTL; credential files
    /// are opened by a [`TokenFileResolver`], relative paths against the file's folder. See
    /// [`build_with`](Self::build_with).
    pub fn build(&self, builder: PoolBuilder) -> Result<Pool, ConfigError> {
        self.build_with(builder, &TokenFileResolver::new().base_dir(self.dir()))
    }

    /// Builds a pool from this file. State fields seed each account's runtime state
    /// ([`FileState::persisted`](super::FileState::persisted)); an account whose credential
    /// file cannot be used starts `AuthInvalid` with the reason, and its file is read again every
    /// [`HealthPolicy::auth_invalid_retry`](crate::health::HealthPolicy::auth_invalid_retry).
    pub fn build_with(
        &self,
        builder: PoolBuilder,
        resolver: &dyn CredentialResolver,
    ) -> Result<Pool, ConfigError> {
        if self.entries.is_empty() {
            return Err(ConfigError::EmptyPool {
                path: self.path.clone(),
            });
        }
        let opened = self.accounts_with(resolver);
        let pool = builder
            .accounts(opened.iter().map(|(account, _)| account.clone()))
            .build()
            .map_err(|source| ConfigError::Pool {
                path: self.path.clone(),
                source,
            })?;
        for (entry, (_, unavailable)) in self.entries.iter().zip(&opened) {
            crate::config::seed_from_entry(&pool, entry, unavailable.as_deref());
        }
        Ok(pool)
    }

    /// Logs the old-shape and other-keys warnings, and one per account whose inline
    /// credentials override its credential file.
    pub(crate) fn warn_about_shape(&self) {
        self.warn_unseen(&mut std::collections::HashSet::new(), true);
    }

    /// The same warnings, each only once per `seen` (a file watch keeps one, so that a file
    /// reloaded again and again, e.g. because a store writes state into it, does not repeat
    /// them); with `log` false they are only recorded (the pool was built from this content,
    /// and its load already warned).
    pub(crate) fn warn_unseen(&self, seen: &mut std::collections::HashSet<String>, log: bool) {
        let path = self.path.display();
        for entry in self.entries.iter().filter(|e| e.file_path_ignored) {
            if seen.insert(format!("inline:{}", entry.id)) && log {
                tracing::warn!(
                    file = %path, index = entry.index, account = %entry.id,
                    "`{INLINE_CREDENTIALS}` takes precedence over `KIRO_OAUTH_CREDS_FILE_PATH`, as \
                     in the older system: the credential file is not read"
                );
            }
        }
        if self.shape == PoolShape::Grouped && seen.insert("grouped".into()) && log {
            tracing::warn!(
                file = %path,
                "{path}: loaded {}; convert it to {{\"accounts\": [...]}} with `cargo run --example migrate -- {path}`",
                self.shape
            );
        }
        if !self.other.is_empty() {
            let keys = quote_keys(self.other.keys());
            if seen.insert(format!("other:{keys}")) && log {
                tracing::warn!(
                    file = %path,
                    "{path}: top-level keys not loaded as accounts: {keys}; they are kept when the file is rewritten",
                );
            }
        }
    }
}
