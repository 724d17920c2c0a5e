//! [`SqliteStore`]: one database shared by the processes of one host, in the older gateway's
//! schema.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::json::run_blocking;
use super::{AccountWrite, CounterTotals, Store, StoreError, StoreErrorKind, StoredAccount};
use crate::account::AccountId;

mod migrate;
mod read;
mod schema;
mod write;

pub use migrate::MigrationReport;
use schema::{detect, table_exists, SCHEMA_V2};
pub use schema::{SchemaVersion, STATE_TABLE, V1_PROVIDER_TYPE};

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
    StoreError::new(StoreErrorKind::Database, format!("sqlite: {e}")).with_source(e)
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
            StoreError::new(
                StoreErrorKind::Database,
                format!("sqlite: cannot open {}: {e}", path.display()),
            )
            .with_source(e)
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
