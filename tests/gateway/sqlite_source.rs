//! The gateway's `--pool`: a pool file or `sqlite:PATH` (the older system's database), Kiro
//! token paths relative to the source's folder (issue 12, points 3 and 8).
#![cfg(all(feature = "kiro", feature = "sqlite"))]

use crate::pool_source;
use crate::support;

use std::path::{Path, PathBuf};

use pool_source::PoolSource;
use tower_account_pool::config::{PoolBuilderExt, PoolFile};
use tower_account_pool::kiro::{KiroOptions, KiroResolver};
use tower_account_pool::{HealthState, Pool};

const TOKEN: &str = r#"{"accessToken":"at-SECRET-000000000001","refreshToken":"rt-SECRET-000000000001",
    "expiresAt":"2099-01-01T00:00:00.000Z","authMethod":"social",
    "profileArn":"arn:aws:codewhisperer:us-east-1:1:profile/A"}"#;

/// A folder with `tokens/k1.json`; the working directory of the test is elsewhere.
fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tokens")).unwrap();
    std::fs::write(dir.path().join("tokens/k1.json"), TOKEN).unwrap();
    assert_ne!(std::env::current_dir().unwrap(), dir.path());
    dir
}

#[test]
fn the_pool_flag_reads_a_file_or_an_sqlite_database() {
    assert_eq!(
        PoolSource::parse(Path::new("sqlite:/var/lib/pool.db")),
        PoolSource::Sqlite(PathBuf::from("/var/lib/pool.db"))
    );
    assert_eq!(
        PoolSource::parse(Path::new("configs/account_pool.json")),
        PoolSource::File(PathBuf::from("configs/account_pool.json"))
    );
    assert_eq!(
        PoolSource::parse(Path::new("sqlite:pool.db")).default_store(),
        Some("sqlite:pool.db".to_owned())
    );
    assert_eq!(
        PoolSource::parse(Path::new("pool.json")).default_store(),
        None
    );
    assert_eq!(
        PoolSource::parse(Path::new("pool.json")).pool_file(),
        Ok(Path::new("pool.json"))
    );
    assert_eq!(
        PoolSource::parse(Path::new("sqlite:pool.db")).pool_file(),
        Err(
            "--store json keeps state in a pool file; with --pool sqlite:PATH use --store \
             sqlite:PATH (the default) or redis:URL"
                .to_owned()
        )
    );
}

#[test]
fn sqlite_source_loads_kiro_accounts_with_paths_relative_to_the_database() {
    let dir = folder();
    let db = dir.path().join("provider_pool.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(&format!(
        "{}{}",
        support::OLDER_V2_SCHEMA,
        r#"
         INSERT INTO accounts (uuid, config, is_disabled) VALUES
           ('k1', '{"uuid":"k1","KIRO_OAUTH_CREDS_FILE_PATH":"tokens/k1.json"}', 0),
           ('k2', '{"uuid":"k2","KIRO_OAUTH_CREDS_FILE_PATH":"tokens/k1.json"}', 1);"#
    ))
    .unwrap();
    drop(conn);
    let source = PoolSource::parse(Path::new(&format!("sqlite:{}", db.display())));
    let pool = source.build(KiroOptions::default()).unwrap();
    let snapshot = pool.snapshot();
    let k1 = snapshot.account("k1").unwrap();
    assert_eq!(k1.state, HealthState::Healthy, "{:?}", k1.reason);
    assert_eq!(k1.credential.kind, "kiro-oauth");
    assert_eq!(snapshot.account("k2").unwrap().state, HealthState::Disabled);
}

#[test]
fn kiro_resolver_resolves_relative_paths_against_its_base_dir() {
    let dir = folder();
    let path = dir.path().join("account_pool.json");
    std::fs::write(
        &path,
        r#"{"accounts": [{"uuid": "k1", "KIRO_OAUTH_CREDS_FILE_PATH": "tokens/k1.json"}]}"#,
    )
    .unwrap();
    let file = PoolFile::load(&path).unwrap();
    assert_eq!(file.dir(), dir.path());
    let pool = file
        .build_with(
            Pool::builder(),
            &KiroResolver::new(KiroOptions::default()).base_dir(file.dir()),
        )
        .unwrap();
    assert_eq!(
        pool.snapshot().account("k1").unwrap().state,
        HealthState::Healthy
    );
    // Without it, the path means the working directory's `tokens/k1.json`, which is not there.
    let pool = file
        .build_with(Pool::builder(), &KiroResolver::new(KiroOptions::default()))
        .unwrap();
    assert_eq!(
        pool.snapshot().account("k1").unwrap().state,
        HealthState::AuthInvalid
    );
    // And the gateway's pool file source uses the file's folder.
    let pool = PoolSource::parse(&path)
        .build(KiroOptions::default())
        .unwrap();
    assert_eq!(
        pool.snapshot().account("k1").unwrap().state,
        HealthState::Healthy
    );
}

#[test]
fn pool_files_resolve_token_files_against_their_own_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("token.json"),
        r#"{"accessToken": "at-0123456789"}"#,
    )
    .unwrap();
    let path = dir.path().join("account_pool.json");
    std::fs::write(
        &path,
        r#"[{"uuid": "a", "KIRO_OAUTH_CREDS_FILE_PATH": "token.json"}]"#,
    )
    .unwrap();
    let pool = Pool::builder().build_from_file(&path).unwrap();
    assert_eq!(
        pool.snapshot().account("a").unwrap().state,
        HealthState::Healthy
    );
}
