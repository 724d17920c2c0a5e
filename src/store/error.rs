//! [`StoreError`]: what a store or the writer reports when it fails, as a
//! [kind](StoreErrorKind) and a message, with the underlying error as its
//! [`source`](std::error::Error::source) where there is one.

use std::error::Error;
use std::fmt;

/// The underlying error a [`StoreError`] carries.
type Source = Box<dyn Error + Send + Sync + 'static>;

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// Reading or writing a file failed (the source is the [`std::io::Error`]).
    Io,
    /// Another process holds the pool file open for writing.
    Locked,
    /// The file does not parse or has an unknown shape; it is left untouched.
    Corrupt,
    /// A database error (with the `sqlite` feature, the source is the `rusqlite::Error`).
    Database,
    /// The store's schema cannot be used as it is.
    Schema,
    /// The store could not be reached (with the `redis` feature, the source is the
    /// `redis::RedisError` when there is one).
    Unavailable,
    /// The writer has stopped.
    Stopped,
}

/// An error from a store. Messages name the file or server, never a secret.
///
/// [`kind`](Self::kind) says what failed; the message ([`Display`](fmt::Display)) stands on its
/// own (it includes the underlying error's text, as logs and [`WriterStats::last_error`] show
/// only the message), and [`source`](Error::source) returns the underlying error itself (an
/// [`std::io::Error`], a `rusqlite::Error`, a `redis::RedisError`, a `serde_json::Error`, ...)
/// where there is one.
///
/// A [`Store`] of your own builds its errors with [`new`](Self::new) and
/// [`with_source`](Self::with_source):
///
/// ```
/// use tower_account_pool::store::{StoreError, StoreErrorKind};
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
/// let err = StoreError::new(StoreErrorKind::Unavailable, format!("my-store: {io}")).with_source(io);
/// assert_eq!(err.kind(), StoreErrorKind::Unavailable);
/// assert_eq!(err.to_string(), "my-store: refused");
/// assert!(std::error::Error::source(&err).is_some());
/// ```
///
/// [`WriterStats::last_error`]: super::WriterStats::last_error
/// [`Store`]: super::Store
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    source: Option<Source>,
}

impl StoreError {
    /// An error of `kind` with `message` (shown as it is) and no source.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The same error with `source` as its underlying error. The message is unchanged: it
    /// should already say what went wrong.
    pub fn with_source(mut self, source: impl Into<Source>) -> StoreError {
        self.source = Some(source.into());
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Reading or writing `path` failed.
    pub(crate) fn io(path: impl fmt::Display, source: std::io::Error) -> StoreError {
        StoreError::new(StoreErrorKind::Io, format!("{path}: {source}")).with_source(source)
    }

    /// Another process holds the pool file `path` open for writing (its lock file `lock`).
    pub(crate) fn locked(path: impl fmt::Display, lock: impl fmt::Display) -> StoreError {
        StoreError::new(
            StoreErrorKind::Locked,
            format!(
                "pool file `{path}` is already open for writing by another process (lock \
                 `{lock}` is held); a JSON pool file has a single writer: to share a pool \
                 between processes use the SQLite store (one host) or the Redis store (several \
                 hosts)"
            ),
        )
    }

    /// The file `path` does not parse or has an unknown shape (`message`: what is wrong).
    pub(crate) fn corrupt(path: impl fmt::Display, message: impl fmt::Display) -> StoreError {
        StoreError::new(
            StoreErrorKind::Corrupt,
            format!("{path}: {message}; the file was not modified"),
        )
    }

    /// The writer has stopped.
    pub(crate) fn stopped() -> StoreError {
        StoreError::new(StoreErrorKind::Stopped, "the store writer has stopped")
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn Error + 'static))
    }
}
