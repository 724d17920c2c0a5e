//! The usage-limits probe: `GET {q}/getUsageLimits`, which spends no quota.
//!
//! [`probe`] reads an account's usage into a [`KiroUsage`] and stores it in the credential
//! (so the classifier knows `nextDateReset` and admin views can show it).
//! [`KiroPoolExt::probe_kiro_account`]
//! does the same for a pool account and reports the result to the pool: `Success` while quota
//! remains, `QuotaExhausted` until `nextDateReset` when it is used up, and the classified error
//! otherwise.
//!
//! ```
//! use tower_account_pool::kiro::KiroUsage;
//!
//! let usage = KiroUsage::from_json(&serde_json::json!({
//!     "nextDateReset": 1767225600,
//!     "userInfo": {"email": "dev@example.com", "userId": "u-1"},
//!     "subscriptionInfo": {"subscriptionTitle": "KIRO FREE"},
//!     "usageBreakdownList": [{"resourceType": "AGENTIC_REQUEST", "currentUsage": 40, "usageLimit": 50,
//!         "freeTrialInfo": {"currentUsage": 10, "usageLimit": 100}}]
//! }));
//! assert_eq!((usage.used, usage.limit, usage.remaining), (50.0, 150.0, 100.0));
//! assert_eq!(usage.email.as_deref(), Some("dev@example.com"));
//! assert!(!usage.is_exhausted());
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde::Serialize;
use serde_json::Value;

use super::classify::classify_response;
use super::credential::{invocation_id, KiroCredential, INVOCATION_ID};
use super::refresh::describe_network_error;
use crate::credential::{Credential, RefreshMode};
use crate::health::Outcome;
use crate::pool::{Pool, PoolError};

/// An account's usage, as `getUsageLimits` reported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KiroUsage {
    /// Used this period: Σ (`currentUsage` + free-trial `currentUsage`) over the breakdown.
    pub used: f64,
    /// The limit: Σ (`usageLimit` + free-trial `usageLimit`).
    pub limit: f64,
    /// `limit − used`, never below zero.
    pub remaining: f64,
    /// When the quota resets (`nextDateReset`, epoch seconds).
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_epoch_ms")]
    pub next_reset: Option<SystemTime>,
    /// The account's e-mail (`userInfo.email`).
    pub email: Option<String>,
    /// The account's user id (`userInfo.userId`).
    pub user_id: Option<String>,
    /// The subscription (`subscriptionInfo.subscriptionTitle`, else `type`).
    pub subscription: Option<String>,
    /// The unit of the first breakdown item (e.g. `credit`).
    pub unit: Option<String>,
}

mod opt_epoch_ms {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub(super) fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => {
                s.serialize_u64(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64)
            }
            None => s.serialize_none(),
        }
    }
}

fn number(v: &Value, keys: &[&str]) -> f64 {
    keys.iter()
        .find_map(|k| v.get(*k).and_then(Value::as_f64))
        .unwrap_or(0.0)
}

fn epoch_secs(v: Option<&Value>) -> Option<SystemTime> {
    let secs = v?.as_f64().filter(|s| *s > 0.0)?;
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)
}

impl KiroUsage {
    /// Reads the `getUsageLimits` response shape.
    pub fn from_json(v: &Value) -> KiroUsage {
        let mut used = 0.0;
        let mut limit = 0.0;
        let mut item_reset = None;
        let mut unit = None;
        for item in v
            .get("usageBreakdownList")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            used += number(item, &["currentUsageWithPrecision", "currentUsage"]);
            limit += number(item, &["usageLimitWithPrecision", "usageLimit"]);
            if let Some(trial) = item.get("freeTrialInfo") {
                used += number(trial, &["currentUsageWithPrecision", "currentUsage"]);
                limit += number(trial, &["usageLimitWithPrecision", "usageLimit"]);
            }
            item_reset = item_reset.or_else(|| epoch_secs(item.get("nextDateReset")));
            if unit.is_none() {
                unit = item.get("unit").and_then(Value::as_str).map(str::to_owned);
            }
        }
        let text = |a: &str, b: &str| {
            v.get(a)
                .and_then(|o| o.get(b))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        KiroUsage {
            used,
            limit,
            remaining: (limit - used).max(0.0),
            next_reset: epoch_secs(v.get("nextDateReset")).or(item_reset),
            email: text("userInfo", "email"),
            user_id: text("userInfo", "userId"),
            subscription: text("subscriptionInfo", "subscriptionTitle")
                .or_else(|| text("subscriptionInfo", "type")),
            unit,
        }
    }

    /// True when a limit is known and nothing remains.
    pub fn is_exhausted(&self) -> bool {
        self.limit > 0.0 && self.remaining <= 0.0
    }
}

/// Why a usage probe failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The credential could not be applied or refreshed.
    #[error(transparent)]
    Credential(#[from] crate::credential::CredentialError),
    /// The upstream answered with an error, classified.
    #[error("getUsageLimits answered HTTP {status}: classified as {}", outcome.class())]
    Upstream {
        /// The HTTP status.
        status: u16,
        /// Its classification.
        outcome: Outcome,
    },
    /// The call failed before an answer.
    #[error("getUsageLimits failed: {0}")]
    Network(String),
    /// The answer was not JSON.
    #[error("getUsageLimits answered with invalid JSON")]
    InvalidJson,
}

impl ProbeError {
    /// The outcome to report to the pool.
    pub fn outcome(&self) -> Outcome {
        match self {
            ProbeError::Credential(crate::credential::CredentialError::Unavailable(_))
            | ProbeError::Network(_)
            | ProbeError::InvalidJson => Outcome::Transient,
            ProbeError::Credential(_) => Outcome::AuthInvalid,
            ProbeError::Upstream { outcome, .. } => *outcome,
        }
    }
}

/// Reads an account's usage limits (refreshing the token first if it is near expiry) and
/// stores the result in the credential.
pub async fn probe(credential: &KiroCredential) -> Result<KiroUsage, ProbeError> {
    if !credential.has_access_token() {
        credential.refresh(RefreshMode::IfNeeded).await?;
    } else if let Err(e) = credential.refresh(RefreshMode::IfNeeded).await {
        tracing::debug!(error = %e, "proactive refresh before the usage probe failed; probing with the current token");
    }
    let bearer = credential.bearer().ok_or_else(|| {
        crate::credential::CredentialError::Unavailable("no access token after refresh".into())
    })?;
    let region = credential.region().unwrap_or_else(|| "us-east-1".into());
    let inner = &credential.inner;
    let mut url = format!(
        "{}/getUsageLimits?isEmailRequired=true&origin=AI_EDITOR&resourceType=AGENTIC_REQUEST",
        inner.options.endpoints.q(&region)
    );
    if let Some(arn) = credential.profile_arn() {
        url.push_str("&profileArn=");
        url.push_str(&percent_encode(&arn));
    }
    let response = inner
        .client
        .get(&url)
        .timeout(inner.options.http_timeout)
        .header(http::header::AUTHORIZATION, bearer)
        .header(INVOCATION_ID.clone(), invocation_id())
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| ProbeError::Network(describe_network_error(&e)))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .map_err(|e| ProbeError::Network(describe_network_error(&e)))?;
    if status != StatusCode::OK {
        let outcome = classify_response(status, &headers, &body, credential.quota_reset());
        return Err(ProbeError::Upstream {
            status: status.as_u16(),
            outcome,
        });
    }
    let value: Value = serde_json::from_slice(&body).map_err(|_| ProbeError::InvalidJson)?;
    let usage = KiroUsage::from_json(&value);
    credential.set_usage(usage.clone());
    Ok(usage)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::pool::Pool {}
}

/// The usage probe on a [`Pool`]'s Kiro accounts, as methods on the pool.
///
/// ```no_run
/// use tower_account_pool::kiro::KiroPoolExt;
/// # async fn run(pool: tower_account_pool::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let usage = pool.probe_kiro_account("alice").await?;
/// println!("{} of {} used", usage.used, usage.limit);
/// assert_eq!(pool.kiro_usage("alice")?, Some(usage));
/// # Ok(()) }
/// ```
pub trait KiroPoolExt: sealed::Sealed {
    /// Probes a Kiro account's usage limits and reports the result to the pool: `Success` while
    /// quota remains (which also ends `Suspended`, `AuthInvalid` and ejections, as any probe
    /// success does), `QuotaExhausted` until `nextDateReset` when it is used up, the classified
    /// error otherwise. Records `nextDateReset` with [`Pool::set_quota_reset`] (for
    /// [`Strategy::SoonestReset`](crate::Strategy::SoonestReset)). Returns the usage read.
    fn probe_kiro_account(
        &self,
        id: &str,
    ) -> impl std::future::Future<Output = Result<KiroUsage, PoolError>> + Send;

    /// The last usage the probe saw for a Kiro account (`None` for other accounts or before the
    /// first probe).
    fn kiro_usage(&self, id: &str) -> Result<Option<KiroUsage>, PoolError>;
}

impl KiroPoolExt for Pool {
    async fn probe_kiro_account(&self, id: &str) -> Result<KiroUsage, PoolError> {
        probe_account(self, id).await
    }

    fn kiro_usage(&self, id: &str) -> Result<Option<KiroUsage>, PoolError> {
        let account = self.account(id)?;
        Ok(KiroCredential::from_shared(account.credential()).and_then(|c| c.last_usage()))
    }
}

/// [`KiroPoolExt::probe_kiro_account`].
async fn probe_account(pool: &Pool, id: &str) -> Result<KiroUsage, PoolError> {
    let account = pool.account(id)?;
    let Some(credential) = KiroCredential::from_shared(account.credential()) else {
        return Err(PoolError::Credential {
            id: account.id().clone(),
            source: crate::credential::CredentialError::NotRefreshable(account.credential().kind()),
        });
    };
    match probe(&credential).await {
        Ok(usage) => {
            pool.set_quota_reset(id, usage.next_reset)?;
            let outcome = if usage.is_exhausted() {
                Outcome::QuotaExhausted {
                    reset_at: Some(usage.next_reset.unwrap_or_else(|| {
                        super::token_file::first_of_next_month_utc(SystemTime::now())
                    })),
                }
            } else {
                Outcome::Success
            };
            pool.report_probe(id, outcome)?;
            Ok(usage)
        }
        Err(e) => {
            tracing::info!(account = %account.id(), error = %e, "Kiro usage probe failed");
            let outcome = e.outcome();
            pool.report_probe(id, outcome)?;
            Err(PoolError::Credential {
                id: account.id().clone(),
                source: match e {
                    ProbeError::Credential(c) => c,
                    other => crate::credential::CredentialError::Unavailable(other.to_string()),
                },
            })
        }
    }
}
