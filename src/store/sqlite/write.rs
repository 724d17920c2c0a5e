//! Writing a batch: each account's changes merged with what the side table holds, in one
//! transaction, then the older gateway's columns (and a new account's row) set from the result.

use std::time::SystemTime;

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::schema::{column_exists, table_exists, SchemaVersion, STATE_TABLE};
use super::{to_i64, Db};
use crate::health::HealthState;
use crate::store::codec::{
    counters_from_array, counters_to_array, model_cooldowns_to_json, COUNTERS, COUNTER_NAMES,
};
use crate::store::{merge, AccountWrite, CounterTotals, CredentialConfig};
use crate::time;

/// Writes an account's settings into the older system's `config` JSON, in its field names.
fn write_settings(
    config: &mut serde_json::Map<String, serde_json::Value>,
    settings: &crate::account::AccountSettings,
    credential: Option<&CredentialConfig>,
) {
    use serde_json::Value;
    config.insert("isDisabled".into(), Value::Bool(!settings.enabled));
    config.insert("weight".into(), settings.weight.into());
    config.insert("priority".into(), settings.priority.into());
    let mut optional = |key: &str, value: Option<Value>| match value {
        Some(v) => {
            config.insert(key.into(), v);
        }
        None => {
            config.remove(key);
        }
    };
    optional("maxInFlight", settings.max_in_flight.map(Value::from));
    optional(
        "models",
        settings.models.as_ref().map(|m| serde_json::json!(m)),
    );
    optional(
        "notSupportedModels",
        Some(serde_json::json!(settings.not_supported_models)),
    );
    optional(
        "checkModelName",
        settings.probe_model.clone().map(Value::from),
    );
    optional("baseUrl", settings.base_url.clone().map(Value::from));
    match credential {
        Some(CredentialConfig::File(path)) => {
            config.insert("KIRO_OAUTH_CREDS_FILE_PATH".into(), path.as_str().into());
        }
        Some(CredentialConfig::BearerToken(token)) => {
            config.insert("bearerToken".into(), token.as_str().into());
        }
        Some(CredentialConfig::ApiKey { header, key }) => {
            config.insert("apiKey".into(), key.as_str().into());
            config.insert("headerName".into(), header.as_str().into());
        }
        None => {}
    }
}

impl Db {
    pub(super) fn write(&mut self, batch: &[AccountWrite]) -> rusqlite::Result<CounterTotals> {
        self.ensure_ready()?;
        let schema = self.schema;
        let table = self.table();
        let now = SystemTime::now();
        let now_ms = to_i64(time::millis(&now));
        let has_check_model = column_exists(&self.conn, table, "check_model_name")?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut totals = Vec::with_capacity(batch.len());
        let counter_list = COUNTER_NAMES.join(", ");
        let counter_params: Vec<String> = (0..COUNTERS).map(|i| format!("?{}", 12 + i)).collect();
        let counter_updates: Vec<String> = COUNTER_NAMES
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let p = 12 + COUNTERS;
        let upsert = format!(
            "INSERT INTO {STATE_TABLE} (uuid, state, reason, until_ms, ejection_level,
               consecutive_failures, last_used_ms, last_error_ms, last_error_class,
               last_error_message, updated_at_ms, {counter_list}, model_cooldowns,
               since_ms, reset_ms, recovered_ms, enabled, enabled_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, {}, ?{p}, ?{}, ?{}, ?{}, ?{}, ?{})
             ON CONFLICT(uuid) DO UPDATE SET state = excluded.state, reason = excluded.reason,
               until_ms = excluded.until_ms, ejection_level = excluded.ejection_level,
               consecutive_failures = excluded.consecutive_failures,
               last_used_ms = excluded.last_used_ms, last_error_ms = excluded.last_error_ms,
               last_error_class = excluded.last_error_class,
               last_error_message = excluded.last_error_message,
               updated_at_ms = excluded.updated_at_ms, {},
               model_cooldowns = excluded.model_cooldowns, since_ms = excluded.since_ms,
               reset_ms = excluded.reset_ms, recovered_ms = excluded.recovered_ms,
               enabled = excluded.enabled, enabled_at_ms = excluded.enabled_at_ms",
            counter_params.join(", "),
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            counter_updates.join(", ")
        );
        for write in batch {
            let id = write.id.as_str();
            let previous = Self::read_state(&tx, id)?;
            let was_healthy = previous.as_ref().map(|p| p.state == HealthState::Healthy);
            let mut s = previous.unwrap_or_default();
            merge::merge(&mut s, write, now);
            let total = counters_to_array(&s.counters);
            let event = |t: &Option<SystemTime>| t.as_ref().map(|t| to_i64(time::millis(t)));
            let last_error_ms = s.last_error.as_ref().map(|e| to_i64(time::millis(&e.at)));
            let mut values: Vec<Box<dyn rusqlite::ToSql>> = vec![
                Box::new(id.to_owned()),
                Box::new(s.state.as_str()),
                Box::new(s.reason.clone()),
                Box::new(event(&s.until)),
                Box::new(i64::from(s.ejection_level)),
                Box::new(i64::from(s.consecutive_failures)),
                Box::new(event(&s.last_used)),
                Box::new(last_error_ms),
                Box::new(s.last_error.as_ref().map(|e| e.class.as_str())),
                Box::new(s.last_error.as_ref().map(|e| e.message.clone())),
                Box::new(now_ms),
            ];
            values.extend(
                total
                    .iter()
                    .map(|&d| Box::new(to_i64(d)) as Box<dyn rusqlite::ToSql>),
            );
            values.push(Box::new(model_cooldowns_to_json(&s.model_cooldowns)));
            values.push(Box::new(event(&s.since)));
            values.push(Box::new(event(&s.reset_at)));
            values.push(Box::new(event(&s.recovered_at)));
            values.push(Box::new(s.enabled.map(i64::from)));
            values.push(Box::new(event(&s.enabled_at)));
            tx.prepare_cached(&upsert)?
                .execute(rusqlite::params_from_iter(
                    values.iter().map(|v| v.as_ref()),
                ))?;
            // The older gateway's columns, from the merged state.
            let healthy = i64::from(s.state == HealthState::Healthy);
            let last_used = s
                .last_used
                .filter(|_| write.delta.requests > 0)
                .map(|t| time::format_sqlite(&t));
            let error_fields = write.state_changed || write.delta.errors() > 0;
            let last_error_time = s.last_error.as_ref().map(|e| time::format_sqlite(&e.at));
            let last_error_message = s.last_error.as_ref().map(|e| e.message.clone());
            let disabled = s.enabled.map(|e| i64::from(!e));
            let updated = tx
                .prepare_cached(&format!(
                    "UPDATE {table} SET
                       usage_count = coalesce(usage_count, 0) + ?2,
                       last_used = coalesce(?3, last_used),
                       is_healthy = ?4,
                       error_count = ?5,
                       last_error_time = CASE WHEN ?6 THEN ?7 ELSE last_error_time END,
                       last_error_message = CASE WHEN ?6 THEN ?8 ELSE last_error_message END,
                       is_disabled = CASE WHEN ?9 AND ?10 IS NOT NULL THEN ?10 ELSE is_disabled END,
                       updated_at = datetime('now')
                     WHERE uuid = ?1"
                ))?
                .execute(params![
                    id,
                    to_i64(write.delta.successes),
                    last_used,
                    healthy,
                    i64::from(s.consecutive_failures),
                    error_fields,
                    last_error_time,
                    last_error_message,
                    write.enabled_changed,
                    disabled,
                ])?;
            if updated == 0 {
                let config = match &write.settings {
                    Some(settings) => {
                        let mut config = serde_json::Map::new();
                        config.insert("uuid".into(), id.into());
                        write_settings(&mut config, settings, write.credential.as_ref());
                        serde_json::Value::Object(config).to_string()
                    }
                    None => serde_json::json!({ "uuid": id }).to_string(),
                };
                let disabled = disabled.unwrap_or(i64::from(!write.enabled));
                let values = params![
                    id,
                    config,
                    healthy,
                    disabled,
                    i64::from(s.consecutive_failures),
                    to_i64(total[1]),
                    s.last_used.map(|t| time::format_sqlite(&t)),
                    last_error_time,
                    last_error_message,
                    write
                        .settings
                        .as_ref()
                        .map(|s| serde_json::json!(s.not_supported_models).to_string()),
                ];
                match schema {
                    SchemaVersion::V2 => tx
                        .prepare_cached(
                            "INSERT INTO accounts (uuid, config, is_healthy, is_disabled,
                               error_count, usage_count, last_used, last_error_time, last_error_message,
                               not_supported_models)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                        )?
                        .execute(values)?,
                    SchemaVersion::V1 => tx
                        .prepare_cached(
                            "INSERT INTO providers (uuid, config, is_healthy, is_disabled,
                               error_count, usage_count, last_used, last_error_time, last_error_message,
                               not_supported_models, provider_type)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'claude-kiro-oauth')",
                        )?
                        .execute(values)?,
                };
            } else if let Some(settings) = &write.settings {
                // Settings changed here (the admin API): written back into the row, so that
                // the older tools see them.
                let config: Option<String> = tx
                    .prepare_cached(&format!("SELECT config FROM {table} WHERE uuid = ?1"))?
                    .query_row([id], |r| r.get(0))
                    .optional()?;
                let mut config = config
                    .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok())
                    .and_then(|v| match v {
                        serde_json::Value::Object(map) => Some(map),
                        _ => None,
                    })
                    .unwrap_or_default();
                write_settings(&mut config, settings, write.credential.as_ref());
                tx.prepare_cached(&format!(
                    "UPDATE {table} SET config = ?2, not_supported_models = ?3 WHERE uuid = ?1"
                ))?
                .execute(params![
                    id,
                    serde_json::Value::Object(config).to_string(),
                    serde_json::json!(settings.not_supported_models).to_string(),
                ])?;
                if has_check_model {
                    tx.prepare_cached(&format!(
                        "UPDATE {table} SET check_model_name = ?2 WHERE uuid = ?1"
                    ))?
                    .execute(params![id, settings.probe_model.clone()])?;
                }
            }
            // History records health flips, as the older gateway's checks did.
            let transitioned = was_healthy.is_some_and(|h| h != (s.state == HealthState::Healthy));
            if transitioned && table_exists(&tx, "health_check_history")? {
                let message = s.reason.clone();
                match schema {
                    SchemaVersion::V2 => tx
                        .prepare_cached(
                            "INSERT INTO health_check_history (account_uuid, is_healthy, error_message)
                             VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![id, healthy, message])?,
                    SchemaVersion::V1 => tx
                        .prepare_cached(
                            "INSERT INTO health_check_history (provider_uuid, provider_type, is_healthy, error_message)
                             VALUES (?1, 'claude-kiro-oauth', ?2, ?3)",
                        )?
                        .execute(params![id, healthy, message])?,
                };
            }
            totals.push((write.id.clone(), counters_from_array(&total)));
        }
        tx.commit()?;
        self.wrote = true;
        Ok(totals)
    }
}
