//! [`SqliteStore`]: one database shared by the processes of one host, in the older gateway's
//! schema.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::codec::{
    counters_from_array, counters_to_array, model_cooldowns_from_json, model_cooldowns_to_json,
    parse_state, CounterArray, COUNTERS, COUNTER_NAMES,
};
use super::json::run_blocking;
use super::{time, AccountWrite, CounterTotals, Store, StoreError, StoredAccount};
use crate::account::AccountId;
use crate::health::{HealthState, LastError, OutcomeClass};
use crate::pool::PersistedState;

/// The `provider_type` this crate writes into a schema v1 database.
pub const V1_PROVIDER_TYPE: &str = "claude-kiro-oauth";

/// The side table holding the state the older schemas have no column for.
pub const STATE_TABLE: &str = "tap_account_state";

/// Schema v2 of the older gateway, exactly (`PRAGMA user_version = 2`).
const SCHEMA_V2: &str = "
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
const V1_INDEXES: &[&str] = &[
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

/// What [`SqliteStore::migrate_v1_to_v2`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The backup written before anything changed.
    pub backup: PathBuf,
    /// Rows moved from `providers` to `accounts`.
    pub accounts: u64,
    /// Rows moved in `usage_cache`.
    pub usage_cache: u64,
    /// Rows moved in `health_check_history`.
    pub health_history: u64,
}

/// Runtime state in SQLite, shared by several processes of one host.
///
/// - It creates and uses the older gateway's **schema v2** (`accounts`, `usage_cache`,
///   `health_check_history`, exact columns, `datetime('now')` times), writing `is_healthy`,
///   `error_count`, `usage_count`, `last_used`, `last_error_time`, `last_error_message` and
///   `updated_at` the way it did, so its tools keep reading the database.
/// - State those tables have no column for (state, reason, deadline, ejection level, counters
///   per outcome, as INTEGER epoch ms; model cooldowns as a JSON array) lives in a side table
///   of its own, `tap_account_state` (a side table of an earlier version gains the
///   `model_cooldowns` column when opened).
/// - It opens a **schema v1** database (`providers` with `provider_type`) in place without
///   changing its tables: rows it adds get `provider_type = 'claude-kiro-oauth'`, reads ignore
///   the column, so an older and a newer gateway can share the database while migrating.
///   Opening changes nothing in it: the side table is created (and WAL turned on) when the
///   store is first used, so [`migrate_v1_to_v2`](Self::migrate_v1_to_v2), the explicit move to
///   v2, backs up the untouched original (through SQLite's online backup API).
/// - Each write merges, in its transaction, what a process changed with what the side table
///   holds (see the [merge rules](super#writes-merge-never-overwrite)), then sets the older
///   columns from the result (`is_disabled` when an operator enabled or disabled the account);
///   settings changed at runtime (the admin API) are written into the row's `config` JSON and
///   its columns, and an account new to the database gets a row with them, so the older tools
///   and [`SqlitePool`](crate::config::SqlitePool) read them back. `is_healthy = 0` set by the
///   older gateway reads as a suspension (as a pool file's `isHealthy: false`).
/// - WAL, `synchronous = NORMAL`, `busy_timeout` 5 s. Counters change by increments in one
///   transaction per batch (no lost update across processes); `PRAGMA data_version` tells when
///   another process committed, so its state changes are applied here within
///   [`WriterConfig::sync_interval`](super::WriterConfig::sync_interval).
/// - State transitions are recorded in `health_check_history`; rows older than
///   [`history_retention`](Self::history_retention) (7 days) are pruned by
///   [`Store::maintain`] (hourly).
///
/// ```
/// use tower_account_pool::store::{SchemaVersion, SqliteStore};
///
/// let dir = std::env::temp_dir().join(format!("tap-sqlite-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let store = SqliteStore::open(dir.join("provider_pool.db"))?;
/// assert_eq!(store.schema(), SchemaVersion::V2); // a new database gets the older schema v2
/// # drop(store);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    db: Mutex<Db>,
    retention: Mutex<Duration>,
}

#[derive(Debug)]
struct Db {
    conn: Connection,
    schema: SchemaVersion,
    data_version: i64,
    /// The side table exists and WAL is on.
    ready: bool,
    /// This process wrote since the last poll: the next poll reads what the merge kept (a
    /// write that lost to another process's state must learn it).
    wrote: bool,
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(format!("sqlite: {e}"))
}

fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

fn column_exists(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
    for name in names {
        if name? == column {
            return Ok(true);
        }
    }
    Ok(false)
}

fn detect(conn: &Connection) -> rusqlite::Result<Option<SchemaVersion>> {
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
fn adopt_disabled_columns(conn: &Connection, table: &str) -> rusqlite::Result<usize> {
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
    let now_ms = to_i64(time::epoch_ms(&SystemTime::now()));
    conn.execute(
        &format!(
            "UPDATE {STATE_TABLE} SET enabled = CASE WHEN {column} = 0 THEN 1 ELSE 0 END,
               enabled_at_ms = max(coalesce(enabled_at_ms, 0) + 1, ?1)
             WHERE (enabled <> 0) = ({column} <> 0)"
        ),
        [now_ms],
    )
}

/// Writes an account's settings into the older system's `config` JSON, in its field names.
fn write_settings(
    config: &mut serde_json::Map<String, serde_json::Value>,
    settings: &crate::account::AccountSettings,
    credential: Option<&super::CredentialConfig>,
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
        Some(super::CredentialConfig::File(path)) => {
            config.insert("KIRO_OAUTH_CREDS_FILE_PATH".into(), path.as_str().into());
        }
        Some(super::CredentialConfig::BearerToken(token)) => {
            config.insert("bearerToken".into(), token.as_str().into());
        }
        Some(super::CredentialConfig::ApiKey { header, key }) => {
            config.insert("apiKey".into(), key.as_str().into());
            config.insert("headerName".into(), header.as_str().into());
        }
        None => {}
    }
}

fn class_from_str(s: &str) -> Option<OutcomeClass> {
    OutcomeClass::ALL.iter().copied().find(|c| c.as_str() == s)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Opens (or creates, with schema v2) a database. Blocking, but quick: it sets the pragmas,
    /// detects the schema and creates the side table if needed.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = Connection::open(&path).map_err(|e| {
            StoreError::Database(format!("sqlite: cannot open {}: {e}", path.display()))
        })?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        conn.execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(db_err)?;
        let schema = {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .map_err(db_err)?;
            let schema = match detect(&tx).map_err(db_err)? {
                Some(schema) => schema,
                None => {
                    tx.execute_batch(SCHEMA_V2).map_err(db_err)?;
                    tx.execute_batch("PRAGMA user_version = 2")
                        .map_err(db_err)?;
                    SchemaVersion::V2
                }
            };
            tx.commit().map_err(db_err)?;
            schema
        };
        let mut db = Db {
            conn,
            schema,
            data_version: 0,
            ready: false,
            wrote: false,
        };
        if schema == SchemaVersion::V1 {
            // Untouched until first used (or migrated, after its backup).
            tracing::info!(
                path = %path.display(),
                "sqlite: schema v1 (`providers`) opened in place; its tables are left as they are"
            );
        } else {
            db.ensure_ready().map_err(db_err)?;
        }
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                db: Mutex::new(db),
                retention: Mutex::new(Duration::from_secs(7 * 24 * 60 * 60)),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The schema the database has now.
    pub fn schema(&self) -> SchemaVersion {
        self.inner.lock().schema
    }

    /// How long `health_check_history` rows are kept (default 7 days).
    pub fn history_retention(self, retention: Duration) -> Self {
        *self
            .inner
            .retention
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = retention;
        self
    }

    /// Moves a schema v1 database to v2, as the older gateway's own migration did, after a
    /// backup to `backup` through SQLite's online backup API (which includes what is still in
    /// the WAL). Every row is kept; `provider_type` is dropped. Refuses a database holding
    /// more than one `provider_type`. Other processes should have closed the database.
    /// Blocking; call it from a migration tool or `spawn_blocking`.
    pub fn migrate_v1_to_v2(
        &self,
        backup: impl AsRef<Path>,
    ) -> Result<MigrationReport, StoreError> {
        let backup = backup.as_ref().to_path_buf();
        let mut db = self.inner.lock();
        if db.schema != SchemaVersion::V1 {
            return Err(StoreError::Schema(format!(
                "{}: not a schema v1 database (no `providers` table); nothing to migrate",
                self.inner.path.display()
            )));
        }
        if backup.exists() {
            return Err(StoreError::Schema(format!(
                "backup {} already exists; choose a new path",
                backup.display()
            )));
        }
        let types: Vec<String> = {
            let mut stmt = db
                .conn
                .prepare("SELECT DISTINCT provider_type FROM providers ORDER BY 1")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| r.get(0))
                .map_err(db_err)?
                .collect::<Result<_, _>>()
                .map_err(db_err)?;
            rows
        };
        if types.len() > 1 {
            return Err(StoreError::Schema(format!(
                "{}: `providers` holds several provider types ({}); schema v2 has no column for them, nothing was changed",
                self.inner.path.display(),
                types.join(", ")
            )));
        }
        db.conn.backup("main", &backup, None).map_err(|e| {
            StoreError::Database(format!("sqlite: backup to {}: {e}", backup.display()))
        })?;
        let check = Connection::open(&backup).and_then(|b| {
            b.query_row("SELECT count(*) FROM providers", [], |r| r.get::<_, i64>(0))
        });
        match check {
            Ok(_) => {}
            Err(e) => {
                return Err(StoreError::Database(format!(
                    "sqlite: the backup {} does not open ({e}); nothing was changed",
                    backup.display()
                )))
            }
        }
        let tx = db
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        for index in V1_INDEXES {
            tx.execute_batch(&format!("DROP INDEX IF EXISTS {index}"))
                .map_err(db_err)?;
        }
        let has_usage = table_exists(&tx, "usage_cache").map_err(db_err)?;
        let has_history = table_exists(&tx, "health_check_history").map_err(db_err)?;
        if has_usage {
            tx.execute_batch("ALTER TABLE usage_cache RENAME TO tap_v1_usage_cache")
                .map_err(db_err)?;
        }
        if has_history {
            tx.execute_batch(
                "ALTER TABLE health_check_history RENAME TO tap_v1_health_check_history",
            )
            .map_err(db_err)?;
        }
        tx.execute_batch(SCHEMA_V2).map_err(db_err)?;
        let accounts = tx
            .execute(
                "INSERT INTO accounts (id, uuid, config, is_healthy, is_disabled, error_count,
                   usage_count, last_used, last_error_time, last_error_message,
                   last_health_check_time, last_health_check_model, cached_email, cached_user_id,
                   not_supported_models, created_at, updated_at)
                 SELECT id, uuid, config, is_healthy, is_disabled, error_count, usage_count,
                   last_used, last_error_time, last_error_message, last_health_check_time,
                   last_health_check_model, cached_email, cached_user_id, not_supported_models,
                   created_at, updated_at FROM providers",
                [],
            )
            .map_err(db_err)? as u64;
        tx.execute_batch("DROP TABLE providers").map_err(db_err)?;
        let usage_cache = if has_usage {
            let n = tx
                .execute(
                    "INSERT OR REPLACE INTO usage_cache (id, account_uuid, usage_data, cached_at, expires_at)
                     SELECT id, provider_uuid, usage_data, cached_at, expires_at FROM tap_v1_usage_cache",
                    [],
                )
                .map_err(db_err)? as u64;
            tx.execute_batch("DROP TABLE tap_v1_usage_cache")
                .map_err(db_err)?;
            n
        } else {
            0
        };
        let health_history = if has_history {
            let n = tx
                .execute(
                    "INSERT INTO health_check_history (id, account_uuid, is_healthy, check_model, error_message, check_time)
                     SELECT id, provider_uuid, is_healthy, check_model, error_message, check_time
                     FROM tap_v1_health_check_history",
                    [],
                )
                .map_err(db_err)? as u64;
            tx.execute_batch("DROP TABLE tap_v1_health_check_history")
                .map_err(db_err)?;
            n
        } else {
            0
        };
        tx.execute_batch("PRAGMA user_version = 2")
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        db.schema = SchemaVersion::V2;
        // The database was left untouched until the backup existed; now it is used.
        db.ready = false;
        db.ensure_ready().map_err(db_err)?;
        tracing::info!(
            path = %self.inner.path.display(), backup = %backup.display(), accounts, usage_cache,
            health_history, "sqlite: migrated schema v1 to v2"
        );
        Ok(MigrationReport {
            backup,
            accounts,
            usage_cache,
            health_history,
        })
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Db {
    fn table(&self) -> &'static str {
        match self.schema {
            SchemaVersion::V1 => "providers",
            SchemaVersion::V2 => "accounts",
        }
    }

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
                .map(|v| time::from_epoch_ms(v.max(0) as u64)))
        };
        let event = |i: usize| -> rusqlite::Result<Option<SystemTime>> {
            Ok(row
                .get::<_, Option<i64>>(at + i)?
                .filter(|&v| v > 0)
                .map(|v| time::from_epoch_ms(v as u64)))
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

    /// Creates the side table (and turns WAL on) the first time the store is used. A schema
    /// v1 database is left untouched by [`SqliteStore::open`], so that a migration's backup
    /// is the original.
    fn ensure_ready(&mut self) -> rusqlite::Result<()> {
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

    fn load(&mut self) -> rusqlite::Result<Vec<StoredAccount>> {
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
    fn read_state(
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

    fn write(&mut self, batch: &[AccountWrite]) -> rusqlite::Result<CounterTotals> {
        self.ensure_ready()?;
        let schema = self.schema;
        let table = self.table();
        let now = SystemTime::now();
        let now_ms = to_i64(time::epoch_ms(&now));
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
            super::merge::merge(&mut s, write, now);
            let total = counters_to_array(&s.counters);
            let event = |t: &Option<SystemTime>| t.as_ref().map(|t| to_i64(time::epoch_ms(t)));
            let last_error_ms = s.last_error.as_ref().map(|e| to_i64(time::epoch_ms(&e.at)));
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
                .map(|t| time::to_sqlite(&t));
            let error_fields = write.state_changed || write.delta.errors() > 0;
            let last_error_time = s.last_error.as_ref().map(|e| time::to_sqlite(&e.at));
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
                    s.last_used.map(|t| time::to_sqlite(&t)),
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

    fn poll(&mut self) -> rusqlite::Result<Vec<StoredAccount>> {
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

    fn prune(&mut self, retention: Duration) -> rusqlite::Result<usize> {
        self.ensure_ready()?;
        if !table_exists(&self.conn, "health_check_history")? {
            return Ok(0);
        }
        self.conn.execute(
            "DELETE FROM health_check_history WHERE check_time < datetime('now', ?1)",
            [format!("-{} seconds", retention.as_secs())],
        )
    }
}

impl Store for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn load(&self) -> Result<Vec<StoredAccount>, StoreError> {
        let inner = self.inner.clone();
        run_blocking(move || inner.lock().load().map_err(db_err)).await
    }

    async fn write(&self, batch: Vec<AccountWrite>) -> Result<CounterTotals, StoreError> {
        let inner = self.inner.clone();
        run_blocking(move || inner.lock().write(&batch).map_err(db_err)).await
    }

    async fn poll_changes(&self, _ids: Vec<AccountId>) -> Result<Vec<StoredAccount>, StoreError> {
        let inner = self.inner.clone();
        run_blocking(move || inner.lock().poll().map_err(db_err)).await
    }

    async fn maintain(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        run_blocking(move || {
            let retention = *inner.retention.lock().unwrap_or_else(|e| e.into_inner());
            let pruned = inner.lock().prune(retention).map_err(db_err)?;
            if pruned > 0 {
                tracing::info!(path = %inner.path.display(), pruned, "sqlite: pruned old health history");
            }
            Ok(())
        })
        .await
    }
}
