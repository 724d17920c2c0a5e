//! Kiro (AWS CodeWhisperer) accounts: OAuth token files, refresh, the usage probe and the Kiro
//! classifier (feature `kiro`).
//!
//! ```
//! use std::time::Duration;
//! use tower_account_pool::kiro::{self, KiroCredential, KiroOptions};
//! use tower_account_pool::{Account, Pool};
//!
//! # let dir = std::env::temp_dir().join(format!("kiro-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! # let path = dir.join("kiro-auth-token.json");
//! # std::fs::write(&path, r#"{"refreshToken":"aorAAAAAG-doc-example","authMethod":"social"}"#).unwrap();
//! // A token file holding only a refresh token starts fine: the first refresh fetches a token.
//! let credential = KiroCredential::from_file(&path, KiroOptions::default())?;
//! assert_eq!(credential.auth_method(), Some(kiro::AuthMethod::Social));
//! assert_eq!(credential.region().as_deref(), Some("us-east-1"));
//!
//! let pool = Pool::builder().account(Account::new("kiro-1", credential)).build()?;
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! # rt.block_on(async {
//! // Refresh every Kiro account of the pool before it expires, used or not, for as long as
//! // `refresher` is kept (dropping it stops the task).
//! let refresher = kiro::spawn_refresher(&pool, Duration::from_secs(60));
//! # drop(refresher);
//! # });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - [`KiroCredential`]: loads every token-file shape, infers and validates the
//!   [`AuthMethod`], refreshes (single flight, rotation, atomic write-back), injects
//!   `Authorization` and `amz-sdk-invocation-id`.
//! - [`classify_response`] / [`classify_stream_start`]: the Kiro classifier rows;
//!   [`quota_reset_of`] gives them a pool credential's `nextDateReset`.
//! - [`probe`] / [`KiroPoolExt::probe_kiro_account`]: the usage-limits probe, feeding quota state.
//! - [`refresh_pass`] / [`probe_pass`]: one pass of either over every Kiro account, awaited.
//! - [`spawn_refresher`] / [`spawn_usage_prober`]: background tasks over every Kiro account,
//!   each running until its [`BackgroundTask`] is dropped.
//! - [`eventstream`]: the AWS event-stream framing (CRC-checked decoder and encoder).
//! - [`anthropic`]: the Anthropic Messages API over Kiro accounts ([`anthropic::AnthropicLayer`]
//!   converts requests and answers; [`anthropic::KiroAttemptLayer`] sets the account's
//!   `profileArn` and endpoint per attempt).
//!
//! Quota-aware selection: an exhausted account is skipped through `Outcome::QuotaExhausted`
//! until its reset, which the classifier and the probe both report; the probe also records
//! each account's `nextDateReset` with [`Pool::set_quota_reset`], so that
//! [`Strategy::SoonestReset`](crate::Strategy::SoonestReset) spends first the quota that is
//! renewed first.

pub mod anthropic;
pub mod classify;
mod credential;
pub mod eventstream;
mod refresh;
pub mod token_file;
mod usage;

pub use classify::{
    classify_frame, classify_response, classify_stream_start, retry_after, KiroClassifier,
    MONTHLY_QUOTA_MARKER, QUOTA_PATTERNS, SUSPENSION_PATTERNS,
};
pub use credential::{
    AuthMethod, KiroCredential, KiroEndpoints, KiroError, KiroOptions, DEFAULT_HTTP_TIMEOUT,
    DEFAULT_REFRESH_WINDOW, DEFAULT_TOKEN_LIFETIME, INVOCATION_ID, KIND,
};
pub use usage::{probe, KiroPoolExt, KiroUsage, ProbeError};

use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};

use crate::credential::RefreshMode;
use crate::health::HealthState;
use crate::pool::{AccountHandle, Pool};

/// When a pool credential's quota resets, as its last usage probe said (`None` for other
/// credentials or before the first probe). Pass it to [`classify_response`] and
/// [`classify_stream_start`]. Reads the credential's `nextDateReset` field: no lock.
pub fn quota_reset_of(
    credential: &dyn crate::credential::Credential,
) -> Option<std::time::SystemTime> {
    quota_reset_in(credential.field("nextDateReset")?.as_str())
}

/// The `nextDateReset` credential field (epoch milliseconds) as a time.
pub(crate) fn quota_reset_in(field: &str) -> Option<std::time::SystemTime> {
    let ms: u64 = field.parse().ok()?;
    std::time::UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// Kiro accounts of the pool, as they are now.
fn kiro_accounts(pool: &Pool) -> Vec<AccountHandle> {
    pool.accounts()
        .into_iter()
        .filter(|a| a.credential().kind() == KIND)
        .collect()
}

/// One proactive-refresh pass over every Kiro account: `refresh(IfNeeded)` on each (a no-op
/// outside the refresh window). A rejected refresh marks the account `AuthInvalid` with the
/// reason; an account waiting on its credential becomes healthy when the refresh succeeds.
/// Accounts already in `AuthExpired` / `AuthInvalid` are left to the pool's own retry schedule.
pub async fn refresh_pass(pool: &Pool) {
    let mut tasks = JoinSet::new();
    for account in kiro_accounts(pool) {
        if matches!(
            account.state(),
            HealthState::AuthExpired | HealthState::AuthInvalid
        ) {
            continue;
        }
        tasks.spawn(async move {
            if let Err(e) = account.refresh_credential(RefreshMode::IfNeeded).await {
                tracing::warn!(account = %account.id(), error = %e, "Kiro proactive refresh failed");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// One usage-probe pass: [`KiroPoolExt::probe_kiro_account`] on every enabled Kiro account at
/// once, each result reported to the pool (a failed probe is logged by the probe itself).
pub async fn probe_pass(pool: &Pool) {
    let mut tasks = JoinSet::new();
    for account in kiro_accounts(pool) {
        if !account.settings().enabled {
            continue;
        }
        let pool = pool.clone();
        tasks.spawn(async move {
            let _ = pool.probe_kiro_account(account.id().as_str()).await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// A Kiro background task ([`spawn_refresher`], [`spawn_usage_prober`]), running until this
/// value is dropped or [`abort`](Self::abort)ed, like [`FileWatch`](crate::config::FileWatch)
/// and [`StoreHandle`](crate::store::StoreHandle): keep it for as long as the task should run.
/// The task also ends by itself once its pool is dropped.
#[must_use = "the task stops when this value is dropped: keep it for as long as the task should run"]
#[derive(Debug)]
pub struct BackgroundTask {
    task: JoinHandle<()>,
}

impl BackgroundTask {
    /// Stops the task now (a pass under way is cut short).
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Whether the task has ended (aborted, or its pool dropped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for BackgroundTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Refreshes every Kiro account of the pool (used or not) every `interval`, starting now, until
/// the returned [`BackgroundTask`] is dropped or the pool is.
pub fn spawn_refresher(pool: &Pool, interval: Duration) -> BackgroundTask {
    let weak = pool.downgrade();
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(pool) = weak.upgrade() else { return };
            refresh_pass(&pool).await;
        }
    });
    BackgroundTask { task }
}

/// Probes every Kiro account's usage limits every `interval` (± 10 % jitter), starting now, and
/// reports each result to the pool ([`KiroPoolExt::probe_kiro_account`]), until the returned
/// [`BackgroundTask`] is dropped or the pool is.
pub fn spawn_usage_prober(pool: &Pool, interval: Duration) -> BackgroundTask {
    let weak = pool.downgrade();
    let task = tokio::spawn(async move {
        loop {
            let Some(pool) = weak.upgrade() else { return };
            probe_pass(&pool).await;
            drop(pool);
            let jitter = 0.9 + fastrand::f64() * 0.2;
            tokio::time::sleep(interval.mul_f64(jitter)).await;
        }
    });
    BackgroundTask { task }
}

/// Opens the `KIRO_OAUTH_CREDS_FILE_PATH` of each pool-file account as a [`KiroCredential`],
/// for [`PoolFile::build_with`](crate::config::PoolFile::build_with) and
/// [`FileWatcher::resolver`](crate::config::FileWatcher::resolver).
///
/// Relative paths are resolved against [`base_dir`](KiroResolver::base_dir) when set (give it
/// the pool file's folder, [`PoolFile::dir`](crate::config::PoolFile::dir), so that the pool
/// file's paths mean the same wherever the process starts), else against the working
/// directory, as the older gateway did. A missing or broken token file loads its account
/// unavailable, with the reason naming the file; fixing the file brings it back on the next
/// refresh.
///
/// ```no_run
/// use tower_account_pool::config::PoolFile;
/// use tower_account_pool::kiro::{KiroOptions, KiroResolver};
/// use tower_account_pool::Pool;
///
/// let file = PoolFile::load("configs/account_pool.json")?;
/// let resolver = KiroResolver::new(KiroOptions::default()).base_dir(file.dir());
/// let pool = file.build_with(Pool::builder(), &resolver)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct KiroResolver {
    options: KiroOptions,
    base_dir: Option<std::path::PathBuf>,
}

impl KiroResolver {
    /// A resolver whose credentials use `options` (endpoints, refresh window, HTTP timeout).
    pub fn new(options: KiroOptions) -> Self {
        KiroResolver {
            options,
            base_dir: None,
        }
    }

    /// Resolves relative token paths against `dir` (e.g. the pool file's folder).
    pub fn base_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.base_dir = Some(dir.into());
        self
    }
}

impl crate::config::CredentialResolver for KiroResolver {
    fn open(
        &self,
        path: &std::path::Path,
        _entry: &crate::config::AccountEntry,
    ) -> crate::config::OpenedCredential {
        let full = match &self.base_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        };
        let credential = KiroCredential::open(full, self.options.clone());
        let unavailable = credential.load_error().map(|e| e.to_string());
        crate::config::OpenedCredential {
            credential: Arc::new(credential),
            unavailable,
        }
    }

    /// `KIRO_OAUTH_CREDS_BASE64`: a Kiro credential from the decoded JSON. Refreshed tokens
    /// are kept in memory only (there is no file to write them to).
    fn open_inline(
        &self,
        json: &str,
        _entry: &crate::config::AccountEntry,
    ) -> crate::config::OpenedCredential {
        match KiroCredential::from_json(json, self.options.clone()) {
            Ok(credential) => crate::config::OpenedCredential {
                credential: Arc::new(credential),
                unavailable: None,
            },
            Err(e) => crate::config::UnusableCredential::opened(format!(
                "inline credentials (`KIRO_OAUTH_CREDS_BASE64`): {e}"
            )),
        }
    }
}
