//! Pool files: shape detection, account entries, and rendering in the current shape.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::error::{describe, ConfigError};

mod build;
mod entry;
mod parse;
mod render;

pub use entry::{AccountEntry, CredentialSpec, FileState};
pub(crate) use parse::{file_state_of, parse_entry};

/// The key of the current shape, `{"accounts": [...]}`.
pub const ACCOUNTS_KEY: &str = "accounts";
/// The key of the older system's grouped shape, `{"claude-kiro-oauth": [...]}`.
pub const LEGACY_GROUP_KEY: &str = "claude-kiro-oauth";
/// Fields the older system's admin UI derived and persisted by accident. They are dropped when
/// a file is rewritten.
pub const DERIVED_FIELDS: &[&str] = &["errorStatus", "poolType"];
/// The header an inline `apiKey` is sent in when `headerName` is not set.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";

/// The shape a pool file was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolShape {
    /// `{"accounts": [...]}`: the current shape.
    Accounts,
    /// `[...]`: a bare array of accounts.
    BareArray,
    /// `{"claude-kiro-oauth": [...]}`: the older system's accounts grouped by provider type.
    Grouped,
}

impl PoolShape {
    /// True for the current shape.
    pub fn is_current(self) -> bool {
        self == PoolShape::Accounts
    }
}

impl fmt::Display for PoolShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolShape::Accounts => r#"{"accounts": [...]}"#,
            PoolShape::BareArray => "a bare array [...]",
            PoolShape::Grouped => r#"the old grouped shape {"claude-kiro-oauth": [...]}"#,
        })
    }
}

/// A parsed pool file: its shape, its accounts, and the other top-level keys it holds.
#[derive(Clone)]
pub struct PoolFile {
    path: PathBuf,
    shape: PoolShape,
    entries: Vec<AccountEntry>,
    other: Map<String, Value>,
}

impl fmt::Debug for PoolFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolFile")
            .field("path", &self.path)
            .field("shape", &self.shape)
            .field("entries", &self.entries)
            .field("other_keys", &self.other_keys())
            .finish()
    }
}

impl PoolFile {
    /// A pool file of these entries (a source other than a file: the older system's database).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn from_entries(path: &Path, entries: Vec<AccountEntry>) -> PoolFile {
        PoolFile {
            path: path.to_owned(),
            shape: PoolShape::Accounts,
            entries,
            other: Map::new(),
        }
    }

    /// Reads and parses a pool file, then logs a `warn` when it is in the old grouped shape
    /// (naming the file and the migration command) and one for top-level keys that are not
    /// loaded. The file is only read.
    pub fn load(path: impl AsRef<Path>) -> Result<PoolFile, ConfigError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| ConfigError::read(path, &e))?;
        let file = Self::parse(path, &bytes)?;
        file.warn_about_shape();
        Ok(file)
    }

    /// Parses pool file content; `path` is only used in messages. Logs nothing.
    pub fn parse(path: impl AsRef<Path>, bytes: &[u8]) -> Result<PoolFile, ConfigError> {
        let path = path.as_ref();
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::json(path, &e))?;
        let (shape, items, other) = match value {
            Value::Array(items) => (PoolShape::BareArray, items, Map::new()),
            Value::Object(map) => {
                let key = match (
                    map.contains_key(ACCOUNTS_KEY),
                    map.contains_key(LEGACY_GROUP_KEY),
                ) {
                    (true, true) => {
                        return Err(ConfigError::AmbiguousShape {
                            path: path.to_owned(),
                        })
                    }
                    (true, false) => ACCOUNTS_KEY,
                    (false, true) => LEGACY_GROUP_KEY,
                    (false, false) => {
                        return Err(ConfigError::UnknownShape {
                            path: path.to_owned(),
                            found: describe_object(&map),
                        })
                    }
                };
                let mut list = None;
                let mut other = Map::new();
                for (k, v) in map {
                    if k == key {
                        list = Some(v);
                    } else {
                        other.insert(k, v);
                    }
                }
                let items = match list {
                    Some(Value::Array(items)) => items,
                    found => {
                        return Err(ConfigError::ListNotArray {
                            path: path.to_owned(),
                            key: key.to_owned(),
                            found: describe(&found.unwrap_or(Value::Null)),
                        })
                    }
                };
                let shape = if key == ACCOUNTS_KEY {
                    PoolShape::Accounts
                } else {
                    PoolShape::Grouped
                };
                (shape, items, other)
            }
            other => {
                return Err(ConfigError::UnknownShape {
                    path: path.to_owned(),
                    found: describe(&other),
                })
            }
        };
        let mut seen: HashMap<String, usize> = HashMap::with_capacity(items.len());
        let mut entries = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let Value::Object(raw) = item else {
                return Err(ConfigError::NotAnObject {
                    path: path.to_owned(),
                    index,
                    found: describe(&item),
                });
            };
            let entry = parse_entry(path, index, raw)?;
            if let Some(&first) = seen.get(entry.id.as_str()) {
                return Err(ConfigError::DuplicateId {
                    path: path.to_owned(),
                    index,
                    id: entry.id.to_string(),
                    first,
                });
            }
            seen.insert(entry.id.to_string(), index);
            entries.push(entry);
        }
        Ok(PoolFile {
            path: path.to_owned(),
            shape,
            entries,
            other,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder the file is in: relative credential paths in it are resolved against it
    /// (by [`accounts`](Self::accounts), [`build`](Self::build) and
    /// [`build_from_file`](crate::config::PoolBuilderExt::build_from_file); give it to other resolvers, e.g.
    /// [`TokenFileResolver::base_dir`](crate::config::TokenFileResolver::base_dir) or `KiroResolver::base_dir`).
    pub fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        }
    }

    /// The shape it was found in.
    pub fn shape(&self) -> PoolShape {
        self.shape
    }

    /// The accounts, in file order.
    pub fn entries(&self) -> &[AccountEntry] {
        &self.entries
    }

    /// Top-level keys other than the list of accounts. They are not loaded, and are kept as
    /// they are when the file is rewritten.
    pub fn other_keys(&self) -> Vec<&str> {
        self.other.keys().map(String::as_str).collect()
    }
}

fn quote_keys<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    keys.map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_object(map: &Map<String, Value>) -> String {
    if map.is_empty() {
        return "an empty object".to_owned();
    }
    const SHOWN: usize = 5;
    let mut keys = quote_keys(map.keys().take(SHOWN));
    if map.len() > SHOWN {
        keys.push_str(", ...");
    }
    format!("an object with keys {keys}")
}
