//! The migration: old shapes to `{"accounts": [...]}`, backups, atomic writes, idempotence,
//! dry runs, bad input left untouched, and the `migrate` example as a process.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use tower_account_pool::config::{migrate, MigrateOptions, PoolFile, PoolShape};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

/// Copies a fixture into a fresh directory.
fn staged(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::copy(fixture(name), &path).unwrap();
    (dir, path)
}

fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The accounts of two files are the same: ids, settings, credentials, state, and every field
/// except the derived ones, in the same order.
fn assert_same_accounts(a: &PoolFile, b: &PoolFile) {
    assert_eq!(a.entries().len(), b.entries().len());
    for (x, y) in a.entries().iter().zip(b.entries()) {
        assert_eq!(x.id(), y.id());
        assert_eq!(x.settings(), y.settings());
        assert_eq!(x.credential(), y.credential());
        assert_eq!(x.state(), y.state());
        assert_eq!(x.to_json(), y.to_json());
        let keys_x: Vec<_> = x.to_json().keys().cloned().collect();
        let keys_y: Vec<_> = y.to_json().keys().cloned().collect();
        assert_eq!(keys_x, keys_y, "field order is kept");
    }
}

#[test]
fn the_grouped_shape_migrates_in_place_with_a_backup_and_round_trips() {
    let (dir, path) = staged("provider_pools.json");
    let original = std::fs::read(&path).unwrap();
    let before = PoolFile::parse(&path, &original).unwrap();

    let report = migrate(&path, &MigrateOptions::default()).unwrap();
    assert_eq!(report.from, PoolShape::Grouped);
    assert_eq!(report.accounts, 3);
    assert!(report.written);
    assert_eq!(
        report.changes,
        vec![
            r#"convert the old grouped shape {"claude-kiro-oauth": [...]} to {"accounts": [...]}"#
                .to_owned(),
            "keep top-level key `gemini-cli-oauth` as it is (it is not loaded as accounts)"
                .to_owned(),
            "account `2f1c5a7e-0b8d-4c1a-9e3f-1a2b3c4d5e01` (index 0): drop derived fields `errorStatus`, `poolType`".to_owned(),
            "account `2f1c5a7e-0b8d-4c1a-9e3f-1a2b3c4d5e02` (index 1): drop derived fields `errorStatus`, `poolType`".to_owned(),
        ]
    );

    // The backup holds the original bytes, named <file>.bak-<unix-ms>.
    let backup = report.backup.clone().unwrap();
    let name = backup.file_name().unwrap().to_string_lossy().into_owned();
    let ms: u128 = name
        .strip_prefix("provider_pools.json.bak-")
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms > 1_700_000_000_000);
    assert_eq!(std::fs::read(&backup).unwrap(), original);
    assert_eq!(
        listing(dir.path()),
        BTreeSet::from(["provider_pools.json".to_owned(), name.clone()])
    );
    #[cfg(unix)]
    {
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&backup), 0o600);
    }

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("{\n  \"accounts\": [\n    {\n      \"KIRO_OAUTH_CREDS_FILE_PATH\""));
    assert!(!text.contains("errorStatus") && !text.contains("poolType"));
    for kept in [
        "cachedAt",
        "lastRetryableError",
        "PROJECT_ID",
        "lastHealthCheck\"",
    ] {
        assert!(text.contains(kept), "{kept} kept");
    }
    assert!(
        !text.contains("账户被封禁"),
        "it was inside a derived field"
    );
    let after = PoolFile::load(&path).unwrap();
    assert_eq!(after.shape(), PoolShape::Accounts);
    assert_eq!(after.other_keys(), vec!["gemini-cli-oauth"]);
    assert_same_accounts(&before, &after);
    let gemini: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        gemini["gemini-cli-oauth"][0]["GEMINI_OAUTH_CREDS_FILE_PATH"],
        "gemini/creds.json"
    );
}

#[test]
fn running_it_twice_changes_nothing_the_second_time() {
    let (dir, path) = staged("provider_pools.json");
    migrate(&path, &MigrateOptions::default()).unwrap();
    let migrated = std::fs::read(&path).unwrap();
    let files = listing(dir.path());

    let again = migrate(&path, &MigrateOptions::default()).unwrap();
    assert!(again.is_up_to_date());
    assert!(!again.written);
    assert_eq!(again.backup, None);
    assert_eq!(again.from, PoolShape::Accounts);
    assert_eq!(std::fs::read(&path).unwrap(), migrated);
    assert_eq!(listing(dir.path()), files, "no new backup");
    assert_eq!(
        again.to_string(),
        format!(
            "{}: already in the current shape (3 accounts); nothing to do\n",
            path.display()
        )
    );
}

#[test]
fn a_bare_array_migrates_and_round_trips() {
    let (_dir, path) = staged("bare_array.json");
    let before = PoolFile::load(&path).unwrap();
    let report = migrate(&path, &MigrateOptions::default()).unwrap();
    assert_eq!(report.from, PoolShape::BareArray);
    assert_eq!(
        report.changes,
        vec![r#"convert a bare array [...] to {"accounts": [...]}"#.to_owned()]
    );
    let after = PoolFile::load(&path).unwrap();
    assert_eq!(after.shape(), PoolShape::Accounts);
    assert_same_accounts(&before, &after);
    assert!(migrate(&path, &MigrateOptions::default())
        .unwrap()
        .is_up_to_date());
}

#[test]
fn a_current_file_is_left_alone_unless_it_holds_derived_fields() {
    let (dir, path) = staged("account_pool.json");
    let original = std::fs::read(&path).unwrap();
    let report = migrate(&path, &MigrateOptions::default()).unwrap();
    assert!(report.is_up_to_date() && !report.written);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        original,
        "formatting is not churned"
    );
    assert_eq!(listing(dir.path()).len(), 1);

    std::fs::write(
        &path,
        r#"{"accounts": [{"uuid": "a", "poolType": "healthy", "x": 1}], "note": "kept"}"#,
    )
    .unwrap();
    let report = migrate(&path, &MigrateOptions::default()).unwrap();
    assert_eq!(
        report.changes,
        vec!["account `a` (index 0): drop derived fields `poolType`".to_owned()]
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\n  \"accounts\": [\n    {\n      \"uuid\": \"a\",\n      \"x\": 1\n    }\n  ],\n  \"note\": \"kept\"\n}\n"
    );
}

#[test]
fn out_writes_elsewhere_and_leaves_the_source_alone() {
    let (dir, source) = staged("provider_pools.json");
    let original = std::fs::read(&source).unwrap();
    let out = dir.path().join("account_pool.json");
    let options = MigrateOptions {
        out: Some(out.clone()),
        dry_run: false,
    };
    let report = migrate(&source, &options).unwrap();
    assert!(report.written);
    assert_eq!(report.backup, None, "nothing was replaced");
    assert_eq!(
        report.changes.last().unwrap(),
        &format!("create {}", out.display())
    );
    assert_eq!(std::fs::read(&source).unwrap(), original);
    assert_eq!(PoolFile::load(&out).unwrap().shape(), PoolShape::Accounts);
    #[cfg(unix)]
    assert_eq!(mode(&out), 0o600);

    // Twice: the target already holds the result.
    let files = listing(dir.path());
    let again = migrate(&source, &options).unwrap();
    assert!(again.is_up_to_date() && !again.written);
    assert_eq!(listing(dir.path()), files);

    // A different existing target is backed up before it is replaced.
    std::fs::write(&out, "old content").unwrap();
    let replaced = migrate(&source, &options).unwrap();
    let backup = replaced.backup.unwrap();
    assert!(backup
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("account_pool.json.bak-"));
    assert_eq!(std::fs::read(&backup).unwrap(), b"old content");
}

#[test]
fn a_dry_run_reports_the_changes_and_writes_nothing() {
    let (dir, path) = staged("provider_pools.json");
    let original = std::fs::read(&path).unwrap();
    let report = migrate(
        &path,
        &MigrateOptions {
            out: None,
            dry_run: true,
        },
    )
    .unwrap();
    assert!(!report.written && report.backup.is_none());
    assert_eq!(report.changes.len(), 4);
    assert_eq!(std::fs::read(&path).unwrap(), original);
    assert_eq!(listing(dir.path()).len(), 1);
    let text = report.to_string();
    assert!(text.contains("  - convert the old grouped shape"), "{text}");
    assert!(
        text.ends_with(&format!(
            "dry run: would change {}; nothing written\n",
            path.display()
        )),
        "{text}"
    );
}

#[test]
fn bad_input_is_rejected_and_left_byte_for_byte_unchanged() {
    for (content, message) in [
        (
            "{\"claude-kiro-oauth\": [",
            "invalid JSON at line 1, column 23: EOF while parsing a list",
        ),
        (
            r#"[{"uuid": "a"}, {"uuid": "a"}]"#,
            "account at index 1 repeats uuid `a` (first used at index 0)",
        ),
        (
            r#"{"claude-kiro-oauth": [{"uuid": "a", "errorCount": "many"}]}"#,
            "account at index 0: field `errorCount` must be a non-negative integer, found a string",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.json");
        std::fs::write(&path, content).unwrap();
        for dry_run in [true, false] {
            let error = migrate(&path, &MigrateOptions { out: None, dry_run }).unwrap_err();
            assert_eq!(error.to_string(), format!("{}: {message}", path.display()));
        }
        assert_eq!(std::fs::read(&path).unwrap(), content.as_bytes());
        assert_eq!(
            listing(dir.path()),
            BTreeSet::from(["pool.json".to_owned()])
        );
    }
}

/// Runs the example as a process, the way an operator would.
fn run_example(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--example", "migrate", "--"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs")
}

#[test]
fn the_example_migrates_and_fails_clearly_on_bad_input() {
    let (dir, path) = staged("provider_pools.json");
    let path_text = path.to_str().unwrap();

    let dry = run_example(&[path_text, "--dry-run"]);
    assert!(dry.status.success(), "{dry:?}");
    let stdout = String::from_utf8_lossy(&dry.stdout);
    assert!(stdout.contains("dry run: would change"), "{stdout}");
    assert_eq!(listing(dir.path()).len(), 1);

    let real = run_example(&[path_text]);
    assert!(real.status.success(), "{real:?}");
    assert_eq!(listing(dir.path()).len(), 2, "file and backup");
    let again = run_example(&[path_text]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"accounts\": 3}").unwrap();
    let failed = run_example(&[bad.to_str().unwrap()]);
    assert_eq!(failed.status.code(), Some(1));
    // `cargo run` may print build output first; the example's own output ends stderr.
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.ends_with(&format!(
            "error: {}: `accounts` must be an array of accounts, found a number\nnothing was written\n",
            bad.display()
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&bad).unwrap(), b"{\"accounts\": 3}");

    let usage = run_example(&["--out"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("usage: migrate PATH"));
}

mod arbitrary_input {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the bytes, the migration never panics; when it fails the file is untouched
        /// and nothing is created beside it, and when it succeeds the result loads in the
        /// current shape.
        #[test]
        fn migration_never_panics_and_never_damages_what_it_cannot_read(
            bytes in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..256),
                prop::collection::vec(("[a-f]", any::<bool>()), 0..4).prop_map(|accounts| {
                    let entries: Vec<String> = accounts
                        .iter()
                        .map(|(id, derived)| match derived {
                            true => format!(r#"{{"uuid": "{id}", "poolType": "healthy"}}"#),
                            false => format!(r#"{{"uuid": "{id}", "weight": 2}}"#),
                        })
                        .collect();
                    format!(r#"{{"claude-kiro-oauth": [{}]}}"#, entries.join(", ")).into_bytes()
                }),
            ]
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("pool.json");
            std::fs::write(&path, &bytes).unwrap();
            match migrate(&path, &MigrateOptions::default()) {
                Err(_) => {
                    prop_assert_eq!(std::fs::read(&path).unwrap(), bytes);
                    prop_assert_eq!(listing(dir.path()).len(), 1);
                }
                Ok(report) => {
                    prop_assert!(report.written);
                    let file = PoolFile::load(&path).unwrap();
                    prop_assert_eq!(file.shape(), PoolShape::Accounts);
                    prop_assert!(migrate(&path, &MigrateOptions::default()).unwrap().is_up_to_date());
                }
            }
        }
    }
}
