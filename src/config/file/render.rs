//! A pool file written back: in the current shape, with the accounts' state fields updated
//! from a snapshot.

use serde_json::{Map, Value};

use super::parse::parse_entry;
use super::{PoolFile, ACCOUNTS_KEY};
use crate::health::HealthState;
use crate::pool::PoolSnapshot;
use crate::time::format_iso;

impl PoolFile {
    /// The whole file in the current shape: `{"accounts": [...]}` first, then the other
    /// top-level keys unchanged. Unknown account fields are kept; derived fields are dropped.
    pub fn to_current_json(&self) -> Value {
        let mut top = Map::new();
        top.insert(
            ACCOUNTS_KEY.to_owned(),
            Value::Array(
                self.entries
                    .iter()
                    .map(|e| Value::Object(e.to_json()))
                    .collect(),
            ),
        );
        for (k, v) in &self.other {
            top.insert(k.clone(), v.clone());
        }
        Value::Object(top)
    }

    /// [`to_current_json`](Self::to_current_json) as pretty JSON (two-space indent, as the
    /// older system wrote) with a final newline.
    pub fn render(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.to_current_json())
            .unwrap_or_else(|_| String::from("{}"));
        text.push('\n');
        text
    }

    /// This file with each account's state fields updated from `snapshot`, in the older
    /// system's names, so old tools keep reading it. Unknown fields stay as they are; derived
    /// fields are dropped on [`render`](Self::render); accounts missing from the snapshot are
    /// left unchanged, and accounts only in the snapshot are not added (the file is the
    /// configuration).
    ///
    /// | field | written from |
    /// |---|---|
    /// | `isHealthy` | the runtime state is `healthy` |
    /// | `isDisabled` | the account is disabled |
    /// | `errorCount` | consecutive failures |
    /// | `usageCount` | lifetime successes |
    /// | `lastUsed` | last use, ISO 8601 |
    /// | `lastErrorTime`, `lastErrorMessage` | the last error (left as they are when there is none) |
    pub fn with_state(&self, snapshot: &PoolSnapshot) -> PoolFile {
        let mut file = self.clone();
        for entry in &mut file.entries {
            let Some(account) = snapshot.account(entry.id.as_str()) else {
                continue;
            };
            let raw = &mut entry.raw;
            raw.insert(
                "isHealthy".into(),
                Value::Bool(account.underlying_state == HealthState::Healthy),
            );
            raw.insert("isDisabled".into(), Value::Bool(!account.settings.enabled));
            raw.insert(
                "errorCount".into(),
                Value::from(account.consecutive_failures),
            );
            raw.insert("usageCount".into(), Value::from(account.counters.successes));
            if let Some(used) = account.last_used {
                raw.insert("lastUsed".into(), Value::from(format_iso(&used)));
            }
            if let Some(error) = &account.last_error {
                raw.insert("lastErrorTime".into(), Value::from(format_iso(&error.at)));
                raw.insert(
                    "lastErrorMessage".into(),
                    Value::from(error.message.clone()),
                );
            }
            if let Ok(parsed) = parse_entry(&file.path, entry.index, raw.clone()) {
                *entry = parsed;
            }
        }
        file
    }
}
