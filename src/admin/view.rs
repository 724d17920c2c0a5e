//! What the admin API shows of accounts: the current shape and the older system's shape.

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::body::redact_url;
use crate::health::HealthState;
use crate::pool::{AccountSnapshot, PoolSnapshot};

/// The key the older system grouped its accounts under.
pub(crate) const LEGACY_GROUP: &str = "claude-kiro-oauth";

/// Counts over a snapshot, for `GET /accounts`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Stats {
    pub(crate) total: usize,
    /// Accounts whose state is `healthy`.
    pub(crate) healthy: usize,
    /// Accounts that come back by themselves: rate limited, out of quota, ejected, half-open.
    pub(crate) cooling_down: usize,
    /// Accounts that need their credential fixed or an operator: auth expired or invalid,
    /// suspended.
    pub(crate) unhealthy: usize,
    pub(crate) disabled: usize,
    /// Accounts that could take a request now (the selection predicate).
    pub(crate) routable: usize,
    /// Leases handed out, summed.
    pub(crate) total_usage: u64,
    /// Outcomes that were the accounts' fault, summed.
    pub(crate) total_errors: u64,
}

/// Which group of [`Stats`] a state belongs to.
pub(crate) fn state_group(state: HealthState) -> &'static str {
    match state {
        HealthState::Healthy => "healthy",
        HealthState::RateLimited
        | HealthState::QuotaExhausted
        | HealthState::Ejected
        | HealthState::HalfOpen => "coolingDown",
        HealthState::AuthExpired | HealthState::AuthInvalid | HealthState::Suspended => "unhealthy",
        HealthState::Disabled => "disabled",
        // Only model-scoped; an account as a whole never reads as this.
        HealthState::ModelUnsupported => "healthy",
    }
}

pub(crate) fn stats(snapshot: &PoolSnapshot) -> Stats {
    let mut stats = Stats {
        total: snapshot.accounts.len(),
        routable: snapshot.available(),
        ..Stats::default()
    };
    for account in &snapshot.accounts {
        match state_group(account.state) {
            "healthy" => stats.healthy += 1,
            "coolingDown" => stats.cooling_down += 1,
            "unhealthy" => stats.unhealthy += 1,
            _ => stats.disabled += 1,
        }
        stats.total_usage += account.counters.requests;
        stats.total_errors += account.counters.errors();
    }
    stats
}

/// One account as the API shows it: the snapshot (credential masked), with any credentials in
/// the base URL redacted.
pub(crate) fn account(snapshot: &AccountSnapshot) -> Value {
    let mut value = serde_json::to_value(snapshot).unwrap_or(Value::Null);
    if let Some(url) = value.get_mut("settings").and_then(|s| s.get_mut("baseUrl")) {
        if let Some(s) = url.as_str() {
            *url = Value::String(redact_url(s));
        }
    }
    value
}

pub(crate) fn accounts(snapshot: &PoolSnapshot) -> Value {
    json!({
        "accounts": snapshot.accounts.iter().map(account).collect::<Vec<_>>(),
        "stats": stats(snapshot),
        "strategy": snapshot.strategy,
    })
}

/// The older system's shape: `{"claude-kiro-oauth": [...], "_accountPoolStats": {...}}`.
///
/// Field meanings: `isHealthy` is "not out of rotation by its own state" (the disabled switch
/// is apart, in `isDisabled`), `usageCount` counts successful requests, `errorCount` counts
/// transient failures since the last success, `lastUsed`/`lastErrorTime` are ISO-8601 strings.
pub(crate) fn legacy(snapshot: &PoolSnapshot) -> Value {
    let mut healthy = 0u64;
    let mut checking = 0u64;
    let mut banned = 0u64;
    let mut usage = 0u64;
    let mut errors = 0u64;
    let accounts: Vec<Value> = snapshot
        .accounts
        .iter()
        .map(|a| {
            let account = legacy_account(a);
            match account["poolType"].as_str() {
                Some("healthy") => healthy += 1,
                Some("checking") => checking += 1,
                _ => banned += 1,
            }
            usage += account["usageCount"].as_u64().unwrap_or(0);
            errors += account["errorCount"].as_u64().unwrap_or(0);
            account
        })
        .collect();
    let mut out = Map::new();
    out.insert(LEGACY_GROUP.to_owned(), Value::Array(accounts));
    out.insert(
        "_accountPoolStats".to_owned(),
        json!({
            "healthy": healthy,
            "checking": checking,
            "banned": banned,
            "total": healthy + checking + banned,
            "totalUsageCount": usage,
            "totalErrorCount": errors,
        }),
    );
    Value::Object(out)
}

fn legacy_account(a: &AccountSnapshot) -> Value {
    let is_disabled = !a.settings.enabled;
    let is_healthy = matches!(a.underlying_state, HealthState::Healthy);
    let error_count = u64::from(a.consecutive_failures);
    let pool_type = if is_disabled {
        "disabled"
    } else if !is_healthy {
        "banned"
    } else if error_count > 0 {
        "checking"
    } else {
        "healthy"
    };
    let status_type = match a.underlying_state {
        HealthState::Healthy | HealthState::ModelUnsupported | HealthState::Disabled => "ok",
        HealthState::Suspended => "banned",
        HealthState::QuotaExhausted => "quota_exceeded",
        HealthState::AuthExpired | HealthState::AuthInvalid => "expired",
        HealthState::RateLimited => "rate_limit",
        HealthState::Ejected | HealthState::HalfOpen => "server_error",
    };
    json!({
        "uuid": a.id,
        "isHealthy": is_healthy,
        "isDisabled": is_disabled,
        "usageCount": a.counters.successes,
        "errorCount": error_count,
        "lastUsed": a.last_used.map(|t| crate::time::format_iso(&t)),
        "lastErrorTime": a.last_error.as_ref().map(|e| crate::time::format_iso(&e.at)),
        "lastErrorMessage": a.last_error.as_ref().map(|e| e.message.clone()),
        "notSupportedModels": a.settings.not_supported_models,
        "checkModelName": a.settings.probe_model,
        "KIRO_OAUTH_CREDS_FILE_PATH": a.credential.path,
        "credential": a.credential,
        "errorStatus": { "statusType": status_type, "message": a.reason },
        "poolType": pool_type,
    })
}
