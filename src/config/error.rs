//! [`ConfigError`]: every way a pool file or a `config.json` can be rejected.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::pool::BuildError;

/// Why a pool file (or the older system's `config.json`) was rejected.
///
/// Every message starts with the file's path and names the place: the line and column of a
/// JSON syntax error, or the account's index (and field) for a bad account. Messages never hold
/// a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the file: {message}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        message: String,
    },
    /// The file is not valid JSON.
    #[error("{}: invalid JSON at line {line}, column {column}: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error (0 at the very start of an empty file).
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// The top-level value is none of the known shapes.
    #[error(
        "{}: unknown pool file shape: found {found}; expected {{\"accounts\": [...]}}, a bare array [...] or {{\"claude-kiro-oauth\": [...]}}",
        path.display()
    )]
    UnknownShape {
        /// The file.
        path: PathBuf,
        /// What the top-level value is.
        found: String,
    },
    /// Both the current and the old list of accounts are present.
    #[error(
        "{}: both `accounts` and `claude-kiro-oauth` are present; keep only one list of accounts",
        path.display()
    )]
    AmbiguousShape {
        /// The file.
        path: PathBuf,
    },
    /// The list of accounts is not an array.
    #[error("{}: `{key}` must be an array of accounts, found {found}", path.display())]
    ListNotArray {
        /// The file.
        path: PathBuf,
        /// The top-level key (`accounts` or `claude-kiro-oauth`).
        key: String,
        /// What it holds instead.
        found: String,
    },
    /// An account is not a JSON object.
    #[error("{}: account at index {index} must be an object, found {found}", path.display())]
    NotAnObject {
        /// The file.
        path: PathBuf,
        /// The account's position in its list.
        index: usize,
        /// What it is instead.
        found: String,
    },
    /// An account has no `uuid`.
    #[error("{}: account at index {index} has no `uuid`", path.display())]
    MissingId {
        /// The file.
        path: PathBuf,
        /// The account's position in its list.
        index: usize,
    },
    /// An account's `uuid` is an empty string.
    #[error("{}: account at index {index} has an empty `uuid`", path.display())]
    EmptyId {
        /// The file.
        path: PathBuf,
        /// The account's position in its list.
        index: usize,
    },
    /// Two accounts share a `uuid`.
    #[error(
        "{}: account at index {index} repeats uuid `{id}` (first used at index {first})",
        path.display()
    )]
    DuplicateId {
        /// The file.
        path: PathBuf,
        /// The position of the repeat.
        index: usize,
        /// The repeated id.
        id: String,
        /// The position of the first account with this id.
        first: usize,
    },
    /// A field holds a value of the wrong JSON type.
    #[error(
        "{}: account at index {index}: field `{field}` must be {expected}, found {found}",
        path.display()
    )]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The account's position in its list.
        index: usize,
        /// The field.
        field: String,
        /// The type it must have.
        expected: &'static str,
        /// The type it has.
        found: String,
    },
    /// A field has the right type but a value that cannot be used.
    #[error("{}: account at index {index}: field `{field}` {problem}", path.display())]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// The account's position in its list.
        index: usize,
        /// The field.
        field: String,
        /// What is wrong with it (never the value of a secret).
        problem: String,
    },
    /// An account names more than one credential.
    #[error(
        "{}: account at index {index} has more than one credential ({fields}); keep one",
        path.display()
    )]
    ConflictingCredentials {
        /// The file.
        path: PathBuf,
        /// The account's position in its list.
        index: usize,
        /// The credential fields found, e.g. "`apiKey`, `bearerToken`".
        fields: String,
    },
    /// The file holds no accounts, so no pool can be built from it (or reloaded to it).
    #[error("{}: the pool file holds no accounts", path.display())]
    EmptyPool {
        /// The file.
        path: PathBuf,
    },
    /// The accounts are well-formed but the pool rejected them.
    #[error("{}: {source}", path.display())]
    Pool {
        /// The file.
        path: PathBuf,
        /// What the pool said.
        source: BuildError,
    },
    /// The running pool refused the file's accounts.
    #[error("{}: {message}", path.display())]
    Rejected {
        /// The file.
        path: PathBuf,
        /// What the pool said.
        message: String,
    },
    /// A `config.json` is not a JSON object.
    #[error("{}: config.json must be an object, found {found}", path.display())]
    SettingsNotObject {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        found: String,
    },
    /// A `config.json` key holds a value that cannot be used.
    #[error("{}: `{key}` must be {expected}, found {found}", path.display())]
    Setting {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// The older system's SQLite database could not be read as a source of accounts.
    #[error("{}: {message}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// What is wrong (naming the table, row and column when it is one of them).
        message: String,
    },
    /// A file could not be written.
    #[error("{}: cannot write the file: {message}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        message: String,
    },
}

impl ConfigError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. }
            | ConfigError::Json { path, .. }
            | ConfigError::UnknownShape { path, .. }
            | ConfigError::AmbiguousShape { path }
            | ConfigError::ListNotArray { path, .. }
            | ConfigError::NotAnObject { path, .. }
            | ConfigError::MissingId { path, .. }
            | ConfigError::EmptyId { path, .. }
            | ConfigError::DuplicateId { path, .. }
            | ConfigError::WrongType { path, .. }
            | ConfigError::InvalidValue { path, .. }
            | ConfigError::ConflictingCredentials { path, .. }
            | ConfigError::EmptyPool { path }
            | ConfigError::Pool { path, .. }
            | ConfigError::Rejected { path, .. }
            | ConfigError::SettingsNotObject { path, .. }
            | ConfigError::Setting { path, .. }
            | ConfigError::Database { path, .. }
            | ConfigError::Write { path, .. } => path,
        }
    }

    pub(crate) fn read(path: &Path, err: &std::io::Error) -> Self {
        ConfigError::Read {
            path: path.to_owned(),
            message: err.to_string(),
        }
    }

    pub(crate) fn write(path: &Path, err: &std::io::Error) -> Self {
        ConfigError::Write {
            path: path.to_owned(),
            message: err.to_string(),
        }
    }

    /// A JSON syntax error. Only the parser's description is kept (for a syntax error it never
    /// quotes the input), without serde_json's own " at line L column C" suffix.
    pub(crate) fn json(path: &Path, err: &serde_json::Error) -> Self {
        let full = err.to_string();
        let suffix = format!(" at line {} column {}", err.line(), err.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
        ConfigError::Json {
            path: path.to_owned(),
            line: err.line(),
            column: err.column(),
            message,
        }
    }
}

/// Describes a JSON value's type for error messages: "a string", "an array", ...
pub(crate) fn describe(value: &Value) -> String {
    TypeName(value).to_string()
}

struct TypeName<'a>(&'a Value);

impl fmt::Display for TypeName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        })
    }
}
