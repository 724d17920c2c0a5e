//! Converts a pool file to the current shape `{"accounts": [...]}`.
//!
//! ```sh
//! cargo run --example migrate -- configs/provider_pools.json --out configs/account_pool.json
//! cargo run --example migrate -- configs/account_pool.json --dry-run
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

const USAGE: &str = "usage: migrate PATH [--out PATH] [--dry-run]";

fn parse_args(args: impl Iterator<Item = String>) -> Result<(PathBuf, MigrateOptions), String> {
    let mut source = None;
    let mut options = MigrateOptions::default();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dry-run" => options.dry_run = true,
            "--out" => match args.next() {
                Some(out) if !out.starts_with("--") => options.out = Some(PathBuf::from(out)),
                _ => return Err("--out needs a path".to_owned()),
            },
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with("--") => return Err(format!("unknown option `{flag}`")),
            path if source.is_none() => source = Some(PathBuf::from(path)),
            extra => return Err(format!("unexpected argument `{extra}`")),
        }
    }
    let source = source.ok_or_else(|| "missing PATH".to_owned())?;
    Ok((source, options))
}

fn main() -> ExitCode {
    let (source, options) = match parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
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
