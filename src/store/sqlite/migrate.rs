//! The explicit move of a schema v1 database to v2 ([`SqliteStore::migrate_v1_to_v2`]).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, TransactionBehavior};

use super::schema::{table_exists, SchemaVersion, SCHEMA_V2, V1_INDEXES};
use super::{db_err, SqliteStore};
use crate::store::{StoreError, StoreErrorKind};

/// What [`SqliteStore::migrate_v1_to_v2`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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

impl SqliteStore {
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
            return Err(StoreError::new(
                StoreErrorKind::Schema,
                format!(
                    "{}: not a schema v1 database (no `providers` table); nothing to migrate",
                    self.inner.path.display()
                ),
            ));
        }
        if backup.exists() {
            return Err(StoreError::new(
                StoreErrorKind::Schema,
                format!(
                    "backup {} already exists; choose a new path",
                    backup.display()
                ),
            ));
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
            return Err(StoreError::new(StoreErrorKind::Schema, format!(
                "{}: `providers` holds several provider types ({}); schema v2 has no column for them, nothing was changed",
                self.inner.path.display(),
                types.join(", ")
            )));
        }
        db.conn.backup("main", &backup, None).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Database,
                format!("sqlite: backup to {}: {e}", backup.display()),
            )
            .with_source(e)
        })?;
        let check = Connection::open(&backup).and_then(|b| {
            b.query_row("SELECT count(*) FROM providers", [], |r| r.get::<_, i64>(0))
        });
        match check {
            Ok(_) => {}
            Err(e) => {
                return Err(StoreError::new(
                    StoreErrorKind::Database,
                    format!(
                        "sqlite: the backup {} does not open ({e}); nothing was changed",
                        backup.display()
                    ),
                )
                .with_source(e))
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
