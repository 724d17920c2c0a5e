//! The older gateway's schemas (v1 `providers`, v2 `accounts`) as this store finds them, and
//! the side table it keeps its own state in.

use std::time::SystemTime;

use rusqlite::{Connection, TransactionBehavior};

use super::{to_i64, Db};
use crate::store::codec::COUNTER_NAMES;
use crate::time;

/// The `provider_type` this crate writes into a schema v1 database.
pub const V1_PROVIDER_TYPE: &str = "claude-kiro-oauth";

/// The side table holding the state the older schemas have no column for.
pub const STATE_TABLE: &str = "tap_account_state";

/// Schema v2 of the older gateway, exactly (`PRAGMA user_version = 2`).
pub(super) const SCHEMA_V2: &str = "
CREATE TABLE accounts (
  id INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT UNIQUE NOT NULL, config TEXT NOT NULL,
  is_healthy INTEGER DEFAULT 1, is_disabled INTEGER DEFAULT 0, error_count INTEGER DEFAULT 0,
  usage_count INTEGER DEFAULT 0, last_used TEXT, last_error_time TEXT, last_error_message TEXT,
  last_health_check_time TEXT, last_health_check_model TEXT, cached_email TEXT, cached_user_id TEXT,
  not_supported_models TEXT, created_at TEXT DEFAULT (datetime('now')),
  updated_at TEXT DEFAULT (datetime('now')));
CREATE TABLE usage_cache (
  id INTEGER PRIMARY KEY AUTOINCREMENT, account_uuid TEXT NOT NULL, usage_data TEXT NOT NULL,
  cached_at TEXT DEFAULT (datetime('now')), expires_at TEXT NOT NULL, UNIQUE(account_uuid));
CREATE TABLE health_check_history (
  id INTEGER PRIMARY KEY AUTOINCREMENT, account_uuid TEXT NOT NULL, is_healthy INTEGER NOT NULL,
  check_model TEXT, error_message TEXT, check_time TEXT DEFAULT (datetime('now')));
CREATE INDEX idx_accounts_uuid ON accounts(uuid);
CREATE INDEX idx_accounts_healthy ON accounts(is_healthy, is_disabled);
CREATE INDEX idx_usage_cache_expires ON usage_cache(expires_at);
CREATE INDEX idx_health_history_uuid ON health_check_history(account_uuid);
CREATE INDEX idx_health_history_time ON health_check_history(check_time);
";

/// Indexes of schema v1, dropped by the migration.
pub(super) const V1_INDEXES: &[&str] = &[
    "idx_providers_type",
    "idx_providers_healthy",
    "idx_usage_cache_expires",
    "idx_health_history_uuid",
    "idx_providers_type_health",
    "idx_usage_cache_type_expires",
    "idx_health_history_time",
];

/// Which of the older gateway's schemas a database has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaVersion {
    /// `providers` table with `provider_type` (opened in place, tables unchanged).
    V1,
    /// `accounts` table, `PRAGMA user_version = 2`.
    V2,
}

pub(super) fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

pub(super) fn column_exists(
    conn: &Connection,
    table: &str,
    column: &str,
) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
    for name in names {
        if name? == column {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(super) fn detect(conn: &Connection) -> rusqlite::Result<Option<SchemaVersion>> {
    Ok(if table_exists(conn, "accounts")? {
        Some(SchemaVersion::V2)
    } else if table_exists(conn, "providers")? {
        Some(SchemaVersion::V1)
    } else {
        None
    })
}

fn state_table_sql() -> String {
    let counters: Vec<String> = COUNTER_NAMES
        .iter()
        .map(|c| format!("{c} INTEGER NOT NULL DEFAULT 0"))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
           uuid TEXT PRIMARY KEY NOT NULL,
           state TEXT NOT NULL DEFAULT 'healthy',
           reason TEXT,
           until_ms INTEGER,
           ejection_level INTEGER NOT NULL DEFAULT 0,
           consecutive_failures INTEGER NOT NULL DEFAULT 0,
           last_used_ms INTEGER,
           last_error_ms INTEGER,
           last_error_class TEXT,
           last_error_message TEXT,
           {},
           updated_at_ms INTEGER NOT NULL DEFAULT 0,
           model_cooldowns TEXT,
           since_ms INTEGER,
           reset_ms INTEGER,
           recovered_ms INTEGER,
           enabled INTEGER,
           enabled_at_ms INTEGER)",
        counters.join(",\n           ")
    )
}

/// Columns the side table gained after its first version, added when a database is opened.
const LATER_COLUMNS: &[(&str, &str)] = &[
    ("model_cooldowns", "TEXT"),
    ("since_ms", "INTEGER"),
    ("reset_ms", "INTEGER"),
    ("recovered_ms", "INTEGER"),
    ("enabled", "INTEGER"),
    ("enabled_at_ms", "INTEGER"),
];

fn create_state_table(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&state_table_sql())?;
    // Side tables of earlier versions gain the columns they lack.
    for (column, kind) in LATER_COLUMNS {
        if !column_exists(conn, STATE_TABLE, column)? {
            conn.execute_batch(&format!(
                "ALTER TABLE {STATE_TABLE} ADD COLUMN {column} {kind}"
            ))?;
        }
    }
    Ok(())
}

/// `is_disabled` changed by an older tool (or by hand) is an operator's word: newer than the
/// enable or disable the side table holds, so it is adopted there (with the time it was seen),
/// and every process applies it. Rows the side table has no word for take the column's.
pub(super) fn adopt_disabled_columns(conn: &Connection, table: &str) -> rusqlite::Result<usize> {
    let column = format!(
        "(SELECT coalesce(a.is_disabled, 0) FROM {table} a WHERE a.uuid = {STATE_TABLE}.uuid)"
    );
    conn.execute(
        &format!(
            "UPDATE {STATE_TABLE} SET enabled = CASE WHEN {column} = 0 THEN 1 ELSE 0 END
             WHERE enabled IS NULL AND EXISTS (SELECT 1 FROM {table} a WHERE a.uuid = {STATE_TABLE}.uuid)"
        ),
        [],
    )?;
    let now_ms = to_i64(time::millis(&SystemTime::now()));
    conn.execute(
        &format!(
            "UPDATE {STATE_TABLE} SET enabled = CASE WHEN {column} = 0 THEN 1 ELSE 0 END,
               enabled_at_ms = max(coalesce(enabled_at_ms, 0) + 1, ?1)
             WHERE (enabled <> 0) = ({column} <> 0)"
        ),
        [now_ms],
    )
}

impl Db {
    /// Creates the side table (and turns WAL on) the first time the store is used. A schema
    /// v1 database is left untouched by [`SqliteStore::open`], so that a migration's backup
    /// is the original.
    pub(super) fn ensure_ready(&mut self) -> rusqlite::Result<()> {
        if self.ready {
            return Ok(());
        }
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode, "sqlite: WAL could not be enabled");
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        create_state_table(&tx)?;
        tx.commit()?;
        self.data_version = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        self.ready = true;
        Ok(())
    }
}
