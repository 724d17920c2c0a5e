//! Reading accounts: the side table's columns into a [`PersistedState`], at start (seeding
//! rows the older gateway wrote) and when another process committed.

use std::time::SystemTime;

use rusqlite::{OptionalExtension, TransactionBehavior};

use super::schema::{adopt_disabled_columns, STATE_TABLE};
use super::Db;
use crate::account::AccountId;
use crate::health::{HealthState, LastError, OutcomeClass};
use crate::pool::PersistedState;
use crate::store::codec::{
    counters_from_array, model_cooldowns_from_json, parse_state, CounterArray, COUNTERS,
    COUNTER_NAMES,
};
use crate::store::StoredAccount;
use crate::time;

fn class_from_str(s: &str) -> Option<OutcomeClass> {
    OutcomeClass::ALL.iter().copied().find(|c| c.as_str() == s)
}

impl Db {
    fn state_columns() -> String {
        format!(
            "s.state, s.reason, s.until_ms, s.ejection_level, s.consecutive_failures, s.last_used_ms, \
             s.last_error_ms, s.last_error_class, s.last_error_message, {}, s.model_cooldowns, \
             s.since_ms, s.reset_ms, s.recovered_ms, s.enabled, s.enabled_at_ms",
            COUNTER_NAMES
                .iter()
                .map(|c| format!("s.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Reads our state columns starting at `at`.
    fn state_row(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<PersistedState> {
        let state: String = row.get(at)?;
        let counters: CounterArray = {
            let mut a = [0u64; COUNTERS];
            for (i, v) in a.iter_mut().enumerate() {
                *v = row.get::<_, i64>(at + 9 + i)?.max(0) as u64;
            }
            a
        };
        let ms = |i: usize| -> rusqlite::Result<Option<SystemTime>> {
            Ok(row
                .get::<_, Option<i64>>(at + i)?
                .map(|v| time::from_millis(v.max(0) as u64)))
        };
        let event = |i: usize| -> rusqlite::Result<Option<SystemTime>> {
            Ok(row
                .get::<_, Option<i64>>(at + i)?
                .filter(|&v| v > 0)
                .map(|v| time::from_millis(v as u64)))
        };
        let last_error = match (
            ms(6)?,
            row.get::<_, Option<String>>(at + 7)?,
            row.get::<_, Option<String>>(at + 8)?,
        ) {
            (Some(t), class, Some(message)) => Some(LastError {
                at: t,
                class: class
                    .as_deref()
                    .and_then(class_from_str)
                    .unwrap_or(OutcomeClass::Transient),
                message,
            }),
            _ => None,
        };
        let extra = at + 10 + COUNTERS;
        Ok(PersistedState {
            state: parse_state(&state).unwrap_or(HealthState::Healthy),
            reason: row.get(at + 1)?,
            until: ms(2)?,
            ejection_level: row.get::<_, i64>(at + 3)?.clamp(0, u32::MAX as i64) as u32,
            consecutive_failures: row.get::<_, i64>(at + 4)?.clamp(0, u32::MAX as i64) as u32,
            counters: counters_from_array(&counters),
            last_used: ms(5)?,
            last_error,
            model_cooldowns: row
                .get::<_, Option<String>>(at + 9 + COUNTERS)?
                .map(|json| model_cooldowns_from_json(&json))
                .unwrap_or_default(),
            since: event(extra - at)?,
            reset_at: event(extra + 1 - at)?,
            recovered_at: event(extra + 2 - at)?,
            enabled: row.get::<_, Option<i64>>(extra + 3)?.map(|v| v != 0),
            enabled_at: event(extra + 4 - at)?,
        })
    }

    pub(super) fn load(&mut self) -> rusqlite::Result<Vec<StoredAccount>> {
        self.ensure_ready()?;
        let table = self.table();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Accounts the older gateway wrote and we never saw: seed our side row from its columns,
        // read as the pool file's fields are (`is_healthy = 0`: suspended until a reset or a
        // successful probe).
        tx.execute(
            &format!(
                "INSERT OR IGNORE INTO {STATE_TABLE} (uuid, state, reason, consecutive_failures,
                   successes, requests, last_error_message, last_error_class, updated_at_ms)
                 SELECT uuid,
                   CASE WHEN coalesce(is_healthy, 1) = 0 THEN 'suspended' ELSE 'healthy' END,
                   CASE WHEN coalesce(is_healthy, 1) = 0
                        THEN 'marked unhealthy in the database' ||
                             coalesce(': ' || last_error_message, ' (is_healthy = 0)')
                        ELSE NULL END,
                   coalesce(error_count, 0), coalesce(usage_count, 0), coalesce(usage_count, 0),
                   last_error_message,
                   CASE WHEN last_error_message IS NULL THEN NULL
                        WHEN coalesce(is_healthy, 1) = 0 THEN 'suspended' ELSE 'transient' END,
                   0
                 FROM {table}"
            ),
            [],
        )?;
        adopt_disabled_columns(&tx, table)?;
        let sql = format!(
            "SELECT a.uuid, a.last_used, a.last_error_time, {} FROM {table} a
             JOIN {STATE_TABLE} s ON s.uuid = a.uuid",
            Self::state_columns()
        );
        let rows = {
            let mut stmt = tx.prepare(&sql)?;
            let rows = stmt
                .query_map([], |row| {
                    let id: String = row.get(0)?;
                    let mut state = Self::state_row(row, 3)?;
                    let legacy = |i: usize| -> rusqlite::Result<Option<SystemTime>> {
                        Ok(row
                            .get::<_, Option<String>>(i)?
                            .as_deref()
                            .and_then(time::parse))
                    };
                    if state.last_used.is_none() {
                        state.last_used = legacy(1)?;
                    }
                    if let Some(e) = state.last_error.as_mut() {
                        if e.at == std::time::UNIX_EPOCH {
                            e.at = legacy(2)?.unwrap_or(std::time::UNIX_EPOCH);
                        }
                    }
                    Ok(StoredAccount {
                        id: AccountId::new(id),
                        state,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        tx.commit()?;
        Ok(rows)
    }

    /// One account's record in the side table, if it has one.
    pub(super) fn read_state(
        tx: &rusqlite::Transaction<'_>,
        id: &str,
    ) -> rusqlite::Result<Option<PersistedState>> {
        tx.prepare_cached(&format!(
            "SELECT {} FROM {STATE_TABLE} s WHERE s.uuid = ?1",
            Self::state_columns()
        ))?
        .query_row([id], |row| Self::state_row(row, 0))
        .optional()
    }

    pub(super) fn poll(&mut self) -> rusqlite::Result<Vec<StoredAccount>> {
        self.ensure_ready()?;
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if version == self.data_version && !self.wrote {
            return Ok(Vec::new());
        }
        self.wrote = false;
        self.data_version = version;
        // Another process committed: perhaps an older tool switching an account off.
        let table = self.table();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        adopt_disabled_columns(&tx, table)?;
        tx.commit()?;
        let sql = format!(
            "SELECT s.uuid, {} FROM {STATE_TABLE} s",
            Self::state_columns()
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map([], |row| {
                Ok(StoredAccount {
                    id: AccountId::new(row.get::<_, String>(0)?),
                    state: Self::state_row(row, 1)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}
