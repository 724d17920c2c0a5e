//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use tower_account_pool::credential::NoCredential;
use tower_account_pool::{Account, Pool, PoolBuilder, SelectRequest};

/// Accounts `a0`, `a1`, ... with no credential.
pub fn accounts(n: usize) -> Vec<Account> {
    (0..n)
        .map(|i| Account::new(format!("a{i}"), NoCredential))
        .collect()
}

/// A builder over `n` plain accounts.
pub fn builder(n: usize) -> PoolBuilder {
    Pool::builder().accounts(accounts(n))
}

/// Selects `times` times, reporting success each time, and counts the picks per account.
pub fn tally(pool: &Pool, request: &SelectRequest<'_>, times: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..times {
        let lease = pool.select(request).expect("an account");
        *counts.entry(lease.id().to_string()).or_default() += 1;
        lease.report(tower_account_pool::Outcome::Success);
    }
    counts
}

/// The ids picked by `times` selections (each reported successful).
pub fn picks(pool: &Pool, request: &SelectRequest<'_>, times: usize) -> Vec<String> {
    (0..times)
        .map(|_| {
            let lease = pool.select(request).expect("an account");
            let id = lease.id().to_string();
            lease.report(tower_account_pool::Outcome::Success);
            id
        })
        .collect()
}
