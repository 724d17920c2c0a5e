//! [`MemoryStore`]: a store in process memory, the default and the reference for the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{merge, AccountWrite, CounterTotals, Store, StoreError, StoredAccount};
use crate::account::AccountId;
use crate::pool::PersistedState;

/// A store in process memory: the default, and a reference for the others. Clones share the
/// same data.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    accounts: Arc<Mutex<HashMap<AccountId, PersistedState>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// What the store holds for one account.
    pub fn get(&self, id: &str) -> Option<PersistedState> {
        self.lock().get(id).cloned()
    }

    /// Puts an account's state in the store (e.g. before a pool starts from it).
    pub fn insert(&self, id: impl Into<AccountId>, state: PersistedState) {
        self.lock().insert(id.into(), state);
    }

    /// Number of accounts held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, PersistedState>> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn load(&self) -> Result<Vec<StoredAccount>, StoreError> {
        Ok(self
            .lock()
            .iter()
            .map(|(id, state)| StoredAccount {
                id: id.clone(),
                state: state.clone(),
            })
            .collect())
    }

    async fn write(&self, batch: Vec<AccountWrite>) -> Result<CounterTotals, StoreError> {
        let mut accounts = self.lock();
        let now = std::time::SystemTime::now();
        let mut totals = Vec::with_capacity(batch.len());
        for write in batch {
            let stored = accounts.entry(write.id.clone()).or_default();
            merge::merge(stored, &write, now);
            totals.push((write.id, stored.counters));
        }
        Ok(totals)
    }
}
