//! Converts a pool file to the current shape `{"accounts": [...]}`.
//!
//! ```sh
//! cargo run --example migrate -- configs/provider_pools.json --out configs/account_pool.json
//! cargo run --example migrate -- configs/account_pool.json --dry-run
//! ```
//!
//! With the `sqlite` feature it also moves an older gateway's SQLite database from schema v1
//! (`providers`) to v2 (`accounts`), an explicit step never taken automatically, after an online
//! backup (the WAL included) to `<db>.bak-<unix-ms>` or `--backup PATH`:
//!
//! ```sh
//! cargo run --features sqlite --example migrate -- --sqlite-v1-to-v2 data/provider_pool.db
//! ```
//!
//! Reads the old grouped shape `{"claude-kiro-oauth": [...]}`, a bare array or the current
//! shape; keeps unknown fields and other top-level keys; drops the derived fields `errorStatus`
//! and `poolType`. Before replacing a file it writes `<file>.bak-<unix-ms>`; writes are atomic
//! with mode 0600. Running it again changes nothing. Exit status: 0 on success (or nothing to
//! do), 1 when the file cannot be read, parsed or written, 2 on bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use tower_account_pool::config::{migrate, MigrateOptions};

const USAGE: &str = "usage: migrate PATH [--out PATH] [--dry-run]\n       migrate --sqlite-v1-to-v2 DB [--backup PATH]   (feature `sqlite`)";

/// What the command was asked to do.
enum Task {
    /// Convert a pool file.
    PoolFile(PathBuf, MigrateOptions),
    /// Move a SQLite database from schema v1 to v2, backing it up first.
    SqliteV1ToV2 {
        db: PathBuf,
        backup: Option<PathBuf>,
    },
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Task, String> {
    let mut source = None;
    let mut options = MigrateOptions::default();
    let mut sqlite: Option<PathBuf> = None;
    let mut backup = None;
    let mut args = args.peekable();
    let path_arg = |flag: &str, next: Option<String>| match next {
        Some(path) if !path.starts_with("--") => Ok(PathBuf::from(path)),
        _ => Err(format!("{flag} needs a path")),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dry-run" => options.dry_run = true,
            "--out" => options.out = Some(path_arg("--out", args.next())?),
            "--sqlite-v1-to-v2" => sqlite = Some(path_arg("--sqlite-v1-to-v2", args.next())?),
            "--backup" => backup = Some(path_arg("--backup", args.next())?),
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with("--") => return Err(format!("unknown option `{flag}`")),
            path if source.is_none() => source = Some(PathBuf::from(path)),
            extra => return Err(format!("unexpected argument `{extra}`")),
        }
    }
    match (sqlite, source) {
        (Some(db), None) if options.out.is_none() && !options.dry_run => {
            Ok(Task::SqliteV1ToV2 { db, backup })
        }
        (Some(_), _) => Err("--sqlite-v1-to-v2 takes only --backup".to_owned()),
        (None, _) if backup.is_some() => Err("--backup goes with --sqlite-v1-to-v2".to_owned()),
        (None, source) => {
            let source = source.ok_or_else(|| "missing PATH".to_owned())?;
            Ok(Task::PoolFile(source, options))
        }
    }
}

#[cfg(feature = "sqlite")]
fn migrate_sqlite(db: &std::path::Path, backup: Option<PathBuf>) -> ExitCode {
    use tower_account_pool::store::SqliteStore;

    let backup = backup.unwrap_or_else(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        PathBuf::from(format!("{}.bak-{ms}", db.display()))
    });
    let result = SqliteStore::open(db).and_then(|store| store.migrate_v1_to_v2(&backup));
    match result {
        Ok(report) => {
            println!("backed up {} to {}", db.display(), report.backup.display());
            println!(
                "moved {} accounts, {} usage-cache rows and {} health-history rows to schema v2",
                report.accounts, report.usage_cache, report.health_history
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

#[cfg(not(feature = "sqlite"))]
fn migrate_sqlite(_db: &std::path::Path, _backup: Option<PathBuf>) -> ExitCode {
    eprintln!(
        "error: --sqlite-v1-to-v2 needs the `sqlite` feature: cargo run --features sqlite --example migrate -- --sqlite-v1-to-v2 DB"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let (source, options) = match parse_args(std::env::args().skip(1)) {
        Ok(Task::PoolFile(source, options)) => (source, options),
        Ok(Task::SqliteV1ToV2 { db, backup }) => return migrate_sqlite(&db, backup),
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match migrate(&source, &options) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            eprintln!("nothing was written");
            ExitCode::from(1)
        }
    }
}
