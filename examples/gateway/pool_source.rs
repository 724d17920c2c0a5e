//! Where the gateway's accounts come from: `--pool PATH` (a pool file, hot-reloaded) or
//! `--pool sqlite:PATH` (the older system's SQLite database, whose rows the SQLite store then
//! keeps up to date).

use std::path::{Path, PathBuf};

use tower_account_pool::config::{PoolFile, SqlitePool};
use tower_account_pool::kiro::{KiroOptions, KiroResolver};
use tower_account_pool::Pool;

/// The value of `--pool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolSource {
    /// A pool file.
    File(PathBuf),
    /// The older system's SQLite database (`sqlite:PATH`).
    Sqlite(PathBuf),
}

impl PoolSource {
    /// Reads `--pool`'s value.
    pub fn parse(arg: &Path) -> PoolSource {
        match arg.to_str().and_then(|a| a.strip_prefix("sqlite:")) {
            Some(db) => PoolSource::Sqlite(PathBuf::from(db)),
            None => PoolSource::File(arg.to_owned()),
        }
    }

    /// The pool, with Kiro token files resolved relative to the source's folder.
    pub fn build(
        &self,
        options: KiroOptions,
    ) -> Result<Pool, Box<dyn std::error::Error + Send + Sync>> {
        Ok(match self {
            PoolSource::File(path) => {
                let file = PoolFile::load(path)?;
                let resolver = KiroResolver::new(options).base_dir(file.dir());
                file.build_with(Pool::builder(), &resolver)?
            }
            PoolSource::Sqlite(path) => {
                let db = SqlitePool::load(path)?;
                let resolver = KiroResolver::new(options).base_dir(db.dir());
                db.build_with(Pool::builder(), &resolver)?
            }
        })
    }

    /// The pool file, for `--store json` (which keeps state in it).
    pub fn pool_file(&self) -> Result<&Path, String> {
        match self {
            PoolSource::File(path) => Ok(path),
            PoolSource::Sqlite(_) => Err(
                "--store json keeps state in a pool file; with --pool sqlite:PATH use --store \
                 sqlite:PATH (the default) or redis:URL"
                    .into(),
            ),
        }
    }

    /// The store used when `--store` is not given: the database itself for `sqlite:PATH`.
    pub fn default_store(&self) -> Option<String> {
        match self {
            PoolSource::File(_) => None,
            PoolSource::Sqlite(path) => Some(format!("sqlite:{}", path.display())),
        }
    }
}
