//! Atomic replacement of files that may hold secrets (pool files, token files, state).
//!
//! One implementation for the whole crate: a temporary file beside the target, created with
//! mode 0600, written and fsynced, renamed over the target, and the directory fsynced. Readers
//! see the old file or the new one, never a partial one; a failure leaves the target untouched
//! and removes the temporary file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The prefix of this crate's temporary files for `path` (`.<name>.tmp-`), so leftovers of a
/// crash can be recognised and removed.
pub(crate) fn temp_prefix(path: &Path) -> Option<String> {
    Some(format!(".{}.tmp-", path.file_name()?.to_string_lossy()))
}

/// Replaces `path` with `bytes` atomically, mode 0600.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = temp_prefix(path)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let temp = dir.join(format!(
        "{prefix}{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, path)?;
        #[cfg(unix)]
        File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}
