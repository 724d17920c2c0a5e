//! [`StoreError`]: what a store or the writer reports when it fails.

/// An error from a store. Messages name the file or server, never a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// Another process holds the pool file open for writing.
    #[error(
        "pool file `{path}` is already open for writing by another process (lock `{lock}` is held); \
         a JSON pool file has a single writer: to share a pool between processes use the SQLite \
         store (one host) or the Redis store (several hosts)"
    )]
    Locked {
        /// The pool file.
        path: String,
        /// The lock file.
        lock: String,
    },
    /// The file does not parse or has an unknown shape; it is left untouched.
    #[error("{path}: {message}; the file was not modified")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong, with line and column when known.
        message: String,
    },
    /// A database error.
    #[error("{0}")]
    Database(String),
    /// The store's schema cannot be used as it is.
    #[error("{0}")]
    Schema(String),
    /// The store could not be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The writer has stopped.
    #[error("the store writer has stopped")]
    Stopped,
}
