//! [`SqlitePool`]: the older system's SQLite database as a source of accounts.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::Value;

use crate::account::Account;
use crate::config::credential::{CredentialResolver, TokenFileResolver};
use crate::config::error::ConfigError;
use crate::config::file::{parse_entry, AccountEntry, PoolFile};
use crate::pool::{Pool, PoolBuilder};

/// The `provider_type` of the accounts read from a schema v1 database.
const V1_TYPE: &str = "claude-kiro-oauth";

/// The columns that override the `config` JSON, with the field each one sets.
const COLUMNS: &[(&str, &str)] = &[
    ("is_disabled", "isDisabled"),
    ("not_supported_models", "notSupportedModels"),
    ("check_model_name", "checkModelName"),
    ("is_healthy", "isHealthy"),
    ("error_count", "errorCount"),
    ("usage_count", "usageCount"),
    ("last_used", "lastUsed"),
    ("last_error_time", "lastErrorTime"),
    ("last_error_message", "lastErrorMessage"),
    ("last_health_check_time", "lastHealthCheckTime"),
    ("last_health_check_model", "lastHealthCheckModel"),
    ("cached_email", "cachedEmail"),
    ("cached_user_id", "cachedUserId"),
];

/// The accounts of the older system's SQLite database (its SQLite mode), for a
/// [`PoolBuilder`]: schema v2 (`accounts`) or v1 (`providers`, the `claude-kiro-oauth` rows).
///
/// Each row's `config` JSON holds the account as a pool file would (credentials and settings,
/// the same field names); the row's **columns win over it**, as they did in the older system
/// (which selected with `WHERE is_disabled = 0` and never looked at the JSON's flags):
///
/// | column | field it sets |
/// |---|---|
/// | `uuid` | `uuid` |
/// | `is_disabled` | `isDisabled` |
/// | `not_supported_models` (a JSON array) | `notSupportedModels` |
/// | `check_model_name` (when the table has it) | `checkModelName` |
/// | `is_healthy`, `error_count`, `usage_count`, `last_used`, `last_error_time`, `last_error_message` | the state fields, read as a pool file's (`is_healthy = 0`: suspended until a reset or a successful probe) |
/// | `last_health_check_time`, `last_health_check_model`, `cached_email`, `cached_user_id` | the probe and identity fields |
///
/// A `NULL` column leaves the JSON's value. The database is opened read-only: loading never
/// changes it (a v1 database stays as it is). Relative credential paths are resolved against
/// the database's folder by [`build`](Self::build).
///
/// Run the [`SqliteStore`](crate::store::SqliteStore) on the same file to keep the state
/// there: it writes the columns back as the older system did, and accounts added or changed
/// through the admin API are written to the same rows (their settings into `config` and the
/// columns), so older tools keep working. An account switched on or off through
/// `is_disabled` by an older tool, while the pool runs or while it is stopped, follows the
/// column (it is an operator's word, newer than any the store held).
///
/// ```
/// use tower_account_pool::config::SqlitePool;
/// use tower_account_pool::store::{SqliteStore, StoreHandle};
/// use tower_account_pool::{HealthState, Pool};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("provider_pool.db");
/// // A database of the older system (schema v2): `b` was switched off through its column only.
/// SqliteStore::open(&path)?;
/// rusqlite::Connection::open(&path)?.execute_batch(
///     r#"INSERT INTO accounts (uuid, config, is_disabled) VALUES
///          ('a', '{"uuid":"a","bearerToken":"token-a"}', 0),
///          ('b', '{"uuid":"b","bearerToken":"token-b","isDisabled":false}', 1);"#,
/// )?;
/// let pool = SqlitePool::load(&path)?.build(Pool::builder())?;
/// let handle = StoreHandle::start(&pool, SqliteStore::open(&path)?).await?;
/// assert_eq!(pool.snapshot().account("b").unwrap().state, HealthState::Disabled);
/// handle.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqlitePool {
    file: PoolFile,
}

fn database(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::Database {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl SqlitePool {
    /// Reads the accounts of the database at `path` (read-only).
    pub fn load(path: impl AsRef<Path>) -> Result<SqlitePool, ConfigError> {
        let path = path.as_ref();
        if let Err(e) = std::fs::metadata(path) {
            return Err(ConfigError::read(path, &e));
        }
        let sql_err = |e: rusqlite::Error| database(path, format!("sqlite: {e}"));
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql_err)?;
        let table_exists = |name: &str| -> Result<bool, ConfigError> {
            conn.query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(sql_err)
        };
        let (table, v1) = if table_exists("accounts")? {
            ("accounts", false)
        } else if table_exists("providers")? {
            ("providers", true)
        } else {
            return Err(database(
                path,
                "not a database of the older system: it has neither an `accounts` table \
                 (schema v2) nor a `providers` table (schema v1)",
            ));
        };
        let present: Vec<String> = {
            let mut stmt = conn
                .prepare(&format!("PRAGMA table_info({table})"))
                .map_err(sql_err)?;
            let names = stmt
                .query_map([], |r| r.get::<_, String>(1))
                .map_err(sql_err)?
                .collect::<Result<_, _>>()
                .map_err(sql_err)?;
            names
        };
        for required in ["uuid", "config"] {
            if !present.iter().any(|c| c == required) {
                return Err(database(
                    path,
                    format!("table `{table}` has no `{required}` column"),
                ));
            }
        }
        let columns: Vec<(&str, &str)> = COLUMNS
            .iter()
            .copied()
            .filter(|(c, _)| present.iter().any(|p| p == c))
            .collect();
        let mut select = String::from("SELECT uuid, config");
        for (column, _) in &columns {
            select.push_str(", ");
            select.push_str(column);
        }
        select.push_str(&format!(" FROM {table}"));
        if v1 {
            let others: i64 = conn
                .query_row(
                    "SELECT count(*) FROM providers WHERE provider_type <> ?1",
                    [V1_TYPE],
                    |r| r.get(0),
                )
                .map_err(sql_err)?;
            if others > 0 {
                tracing::warn!(
                    database = %path.display(), rows = others,
                    "rows of `providers` with another provider_type than `{V1_TYPE}` are not loaded"
                );
            }
            select.push_str(" WHERE provider_type = ?1");
        }
        select.push_str(" ORDER BY id");
        let mut stmt = conn.prepare(&select).map_err(sql_err)?;
        let params: Vec<&dyn rusqlite::ToSql> = if v1 { vec![&V1_TYPE] } else { vec![] };
        let rows: Vec<(String, String, Vec<rusqlite::types::Value>)> = stmt
            .query_map(params.as_slice(), |row| {
                let mut values = Vec::with_capacity(columns.len());
                for i in 0..columns.len() {
                    values.push(row.get::<_, rusqlite::types::Value>(2 + i)?);
                }
                Ok((row.get(0)?, row.get(1)?, values))
            })
            .map_err(sql_err)?
            .collect::<Result<_, _>>()
            .map_err(sql_err)?;
        let mut entries = Vec::with_capacity(rows.len());
        for (index, (uuid, config, values)) in rows.into_iter().enumerate() {
            let mut map = match serde_json::from_str::<Value>(&config) {
                Ok(Value::Object(map)) => map,
                _ => {
                    return Err(database(
                        path,
                        format!("{table} row `{uuid}`: `config` is not a JSON object"),
                    ))
                }
            };
            map.insert("uuid".into(), Value::String(uuid.clone()));
            for ((column, field), value) in columns.iter().zip(values) {
                if let Some(value) = column_value(column, value).map_err(|problem| {
                    database(path, format!("{table} row `{uuid}`: `{column}` {problem}"))
                })? {
                    map.insert((*field).into(), value);
                }
            }
            entries.push(parse_entry(path, index, map)?);
        }
        Ok(SqlitePool {
            file: PoolFile::from_entries(path, entries),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The database's folder (relative credential paths are resolved against it).
    pub fn dir(&self) -> PathBuf {
        self.file.dir()
    }

    /// The accounts, in row order, as pool file entries (the JSON with the columns applied).
    pub fn entries(&self) -> &[AccountEntry] {
        self.file.entries()
    }

    /// The accounts, with credential files opened by a [`TokenFileResolver`] relative to the
    /// database's folder.
    pub fn accounts(&self) -> Vec<(Account, Option<String>)> {
        self.file.accounts()
    }

    /// The accounts, with credential files opened by `resolver`.
    pub fn accounts_with(
        &self,
        resolver: &dyn CredentialResolver,
    ) -> Vec<(Account, Option<String>)> {
        self.file.accounts_with(resolver)
    }

    /// Builds a pool, as [`PoolFile::build`] does (state seeded from the columns).
    pub fn build(&self, builder: PoolBuilder) -> Result<Pool, ConfigError> {
        self.build_with(builder, &TokenFileResolver::new().base_dir(self.dir()))
    }

    /// Builds a pool with another credential resolver, as [`PoolFile::build_with`] does.
    pub fn build_with(
        &self,
        builder: PoolBuilder,
        resolver: &dyn CredentialResolver,
    ) -> Result<Pool, ConfigError> {
        self.file.build_with(builder, resolver)
    }
}

/// A column's value as the JSON field it overrides; `None` for `NULL`.
fn column_value(column: &str, value: rusqlite::types::Value) -> Result<Option<Value>, String> {
    use rusqlite::types::Value as Sql;
    Ok(match (column, value) {
        (_, Sql::Null) => None,
        ("is_disabled" | "is_healthy", Sql::Integer(i)) => Some(Value::Bool(i != 0)),
        ("is_disabled" | "is_healthy", Sql::Text(t)) => {
            Some(Value::Bool(!matches!(t.trim(), "0" | "" | "false")))
        }
        ("error_count" | "usage_count", Sql::Integer(i)) => Some(Value::from(i.max(0))),
        ("error_count" | "usage_count", Sql::Text(t)) => t
            .trim()
            .parse::<u64>()
            .map(|n| Some(Value::from(n)))
            .map_err(|_| "is not a non-negative integer".to_owned())?,
        ("not_supported_models", Sql::Text(t)) if t.trim().is_empty() => None,
        ("not_supported_models", Sql::Text(t)) => match serde_json::from_str::<Value>(&t) {
            Ok(list @ Value::Array(_)) => Some(list),
            _ => return Err("is not a JSON array of model names".into()),
        },
        (_, Sql::Text(t)) => Some(Value::String(t)),
        (_, Sql::Integer(i)) => Some(Value::from(i)),
        (_, Sql::Real(r)) => Some(Value::from(r)),
        (_, Sql::Blob(_)) => return Err("holds a blob".into()),
    })
}
