//! Converting pool files to the current shape, and writing files atomically.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::error::ConfigError;
use crate::config::file::{PoolFile, PoolShape};

/// Options of [`migrate`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateOptions {
    /// Where to write the result; `None` rewrites the source file in place.
    pub out: Option<PathBuf>,
    /// Only report what would change.
    pub dry_run: bool,
}

/// What [`migrate`] did, or would do in a dry run. Holds no secret: `Display` lists the
/// changes, never the file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The file read.
    pub source: PathBuf,
    /// The file written (or that would be).
    pub target: PathBuf,
    /// The shape the source was in.
    pub from: PoolShape,
    /// Number of accounts.
    pub accounts: usize,
    /// What changes, one line each. Empty when the target is already up to date.
    pub changes: Vec<String>,
    /// The backup of the target made before it was replaced.
    pub backup: Option<PathBuf>,
    /// Whether the target was written.
    pub written: bool,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl MigrationReport {
    /// True when there is nothing to do: the target already holds the current shape.
    pub fn is_up_to_date(&self) -> bool {
        self.changes.is_empty()
    }
}

impl fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (source, target) = (self.source.display(), self.target.display());
        if self.changes.is_empty() {
            return writeln!(
                f,
                "{target}: already in the current shape ({} accounts); nothing to do",
                self.accounts
            );
        }
        let verb = if self.dry_run {
            "would change"
        } else {
            "changed"
        };
        writeln!(f, "{source}: {} accounts, {}", self.accounts, self.from)?;
        for change in &self.changes {
            writeln!(f, "  - {change}")?;
        }
        if let Some(backup) = &self.backup {
            writeln!(f, "backup: {}", backup.display())?;
        }
        if self.dry_run {
            writeln!(f, "dry run: {verb} {target}; nothing written")
        } else {
            writeln!(f, "{verb} {target}")
        }
    }
}

/// Converts a pool file to the current shape `{"accounts": [...]}`.
///
/// Reads `source` (any of the three shapes; bad input fails with the loader's error and
/// nothing is written), then writes the result to `options.out` or back to `source`:
/// unknown account fields and other top-level keys are kept, derived fields (`errorStatus`,
/// `poolType`) are dropped. Before an existing file is replaced, it is copied to
/// `<file>.bak-<unix-ms>`; both writes are atomic with mode 0600. When the target already holds
/// the current shape nothing is written, so running it twice changes nothing the second time.
///
/// ```
/// use tower_account_pool::config::{migrate, MigrateOptions, PoolShape};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("provider_pools.json");
/// std::fs::write(&path, r#"{"claude-kiro-oauth": [{"uuid": "a", "poolType": "healthy"}]}"#)?;
///
/// let report = migrate(&path, &MigrateOptions::default())?;
/// assert_eq!(report.from, PoolShape::Grouped);
/// assert!(report.written && report.backup.is_some());
/// let text = std::fs::read_to_string(&path)?;
/// assert_eq!(text, "{\n  \"accounts\": [\n    {\n      \"uuid\": \"a\"\n    }\n  ]\n}\n");
///
/// let again = migrate(&path, &MigrateOptions::default())?;
/// assert!(again.is_up_to_date() && !again.written);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn migrate(
    source: impl AsRef<Path>,
    options: &MigrateOptions,
) -> Result<MigrationReport, ConfigError> {
    let source = source.as_ref();
    let bytes = std::fs::read(source).map_err(|e| ConfigError::read(source, &e))?;
    let file = PoolFile::parse(source, &bytes)?;
    let target = options.out.clone().unwrap_or_else(|| source.to_owned());
    let rendered = file.render();

    let mut changes = Vec::new();
    if !file.shape().is_current() {
        changes.push(format!(
            "convert {} to {{\"accounts\": [...]}}",
            file.shape()
        ));
    }
    for key in file.other_keys() {
        if file.shape() == PoolShape::Grouped {
            changes.push(format!(
                "keep top-level key `{key}` as it is (it is not loaded as accounts)"
            ));
        }
    }
    for entry in file.entries() {
        let derived = entry.derived_fields();
        if !derived.is_empty() {
            changes.push(format!(
                "account `{}` (index {}): drop derived fields {}",
                entry.id(),
                entry.index(),
                derived
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }

    let existing = if target == source {
        Some(bytes)
    } else {
        match std::fs::read(&target) {
            Ok(existing) => Some(existing),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ConfigError::read(&target, &e)),
        }
    };
    let target_current = existing.as_deref() == Some(rendered.as_bytes());
    if (target == source && changes.is_empty()) || target_current {
        changes.clear();
    } else if target != source {
        changes.push(match &existing {
            Some(_) => format!("replace {}", target.display()),
            None => format!("create {}", target.display()),
        });
    }

    let mut report = MigrationReport {
        source: source.to_owned(),
        target: target.clone(),
        from: file.shape(),
        accounts: file.entries().len(),
        changes,
        backup: None,
        written: false,
        dry_run: options.dry_run,
    };
    if report.changes.is_empty() || options.dry_run {
        return Ok(report);
    }
    if let Some(existing) = &existing {
        let backup = backup_path(&target);
        write_atomic(&backup, existing).map_err(|e| ConfigError::write(&backup, &e))?;
        report.backup = Some(backup);
    }
    write_atomic(&target, rendered.as_bytes()).map_err(|e| ConfigError::write(&target, &e))?;
    report.written = true;
    Ok(report)
}

/// `<path>.bak-<unix-ms>`, moved forward a millisecond at a time past existing files.
fn backup_path(path: &Path) -> PathBuf {
    let mut ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    loop {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".bak-{ms}"));
        let candidate = PathBuf::from(name);
        if !candidate.exists() {
            return candidate;
        }
        ms += 1;
    }
}

/// Replaces `path` with `bytes` atomically: a temporary file in the same directory, written
/// and fsynced, made mode 0600 (on Unix), renamed over `path`, then the directory fsynced. A
/// reader sees the old content or the new, never a mix; a crash leaves the old file intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::private_file::replace(path, bytes)
}
