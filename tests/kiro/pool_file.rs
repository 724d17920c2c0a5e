//! Pool files whose accounts name Kiro token files load them as `KiroCredential`s; a missing
//! token file makes only its account unavailable, with a reason that names the file.
#![cfg(feature = "kiro")]

use tower_account_pool::config::PoolFile;
use tower_account_pool::kiro::{KiroOptions, KiroResolver};
use tower_account_pool::{HealthState, Pool, SelectRequest};

#[test]
fn kiro_token_files_load_through_the_resolver() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("kiro-auth-token-1.json");
    std::fs::write(
        &token,
        r#"{"accessToken":"at-SECRET-000000000001","refreshToken":"rt-SECRET-000000000001",
            "expiresAt":"2099-01-01T00:00:00.000Z","authMethod":"social",
            "profileArn":"arn:aws:codewhisperer:us-east-1:1:profile/A"}"#,
    )
    .unwrap();
    let missing = dir.path().join("kiro-auth-token-2.json");
    let pool_file = dir.path().join("provider_pools.json");
    std::fs::write(
        &pool_file,
        format!(
            r#"{{"claude-kiro-oauth": [
                {{"uuid": "k1", "KIRO_OAUTH_CREDS_FILE_PATH": "{}"}},
                {{"uuid": "k2", "KIRO_OAUTH_CREDS_FILE_PATH": "{}"}}
            ]}}"#,
            token.display(),
            missing.display()
        ),
    )
    .unwrap();

    let file = PoolFile::load(&pool_file).unwrap();
    let pool = file
        .build_with(Pool::builder(), &KiroResolver::new(KiroOptions::default()))
        .unwrap();
    let snapshot = pool.snapshot();
    let k1 = snapshot.account("k1").unwrap();
    assert_eq!(k1.state, HealthState::Healthy);
    assert_eq!(k1.credential.kind, "kiro-oauth");
    assert_eq!(k1.credential.path.as_deref(), token.to_str());
    let k2 = snapshot.account("k2").unwrap();
    assert_eq!(k2.state, HealthState::AuthInvalid);
    let reason = k2.reason.as_deref().unwrap();
    assert!(reason.contains("kiro-auth-token-2.json"), "{reason}");

    // Requests go to the account that works, with its bearer token and profile.
    let lease = pool.select(&SelectRequest::default()).unwrap();
    assert_eq!(lease.id().as_str(), "k1");
    let mut headers = http::HeaderMap::new();
    lease.credential().apply(&mut headers).unwrap();
    assert_eq!(headers["authorization"], "Bearer at-SECRET-000000000001");
    assert_eq!(
        lease.credential().field("profileArn").as_deref(),
        Some("arn:aws:codewhisperer:us-east-1:1:profile/A")
    );
    drop(lease);
    let everything = format!(
        "{:?}{}",
        pool.snapshot(),
        serde_json::to_string(&pool.snapshot()).unwrap()
    );
    assert!(!everything.contains("SECRET"), "{everything}");
}

#[test]
fn inline_base64_kiro_credentials_load_as_kiro_credentials() {
    use base64::Engine as _;
    let json = r#"{"accessToken":"at-SECRET-000000000003","refreshToken":"rt-SECRET-000000000003",
                   "expiresAt":"2099-01-01T00:00:00.000Z",
                   "profileArn":"arn:aws:codewhisperer:us-east-1:3:profile/C"}"#;
    let idc_without_secret = r#"{"refreshToken":"rt-SECRET-4","authMethod":"IdC"}"#;
    let engine = base64::engine::general_purpose::STANDARD;
    let dir = tempfile::tempdir().unwrap();
    let pool_file = dir.path().join("pool.json");
    std::fs::write(
        &pool_file,
        format!(
            r#"[{{"uuid": "k3", "KIRO_OAUTH_CREDS_BASE64": "{}"}},
                {{"uuid": "k4", "KIRO_OAUTH_CREDS_BASE64": "{}"}}]"#,
            engine.encode(json),
            engine.encode(idc_without_secret)
        ),
    )
    .unwrap();
    let pool = PoolFile::load(&pool_file)
        .unwrap()
        .build_with(Pool::builder(), &KiroResolver::new(KiroOptions::default()))
        .unwrap();
    let snapshot = pool.snapshot();
    let k3 = snapshot.account("k3").unwrap();
    assert_eq!(k3.state, HealthState::Healthy);
    assert_eq!(k3.credential.kind, "kiro-oauth");
    assert_eq!(k3.credential.path, None);
    // An IdC credential without its client id and secret: a clear reason, that account only.
    let k4 = snapshot.account("k4").unwrap();
    assert_eq!(k4.state, HealthState::AuthInvalid);
    let reason = k4.reason.as_deref().unwrap();
    assert!(
        reason.starts_with("inline credentials (`KIRO_OAUTH_CREDS_BASE64`): ")
            && reason.contains("client"),
        "{reason}"
    );
    assert!(!format!("{snapshot:?}").contains("SECRET"));

    let lease = pool.select(&SelectRequest::default()).unwrap();
    assert_eq!(lease.id().as_str(), "k3");
    let mut headers = http::HeaderMap::new();
    lease.credential().apply(&mut headers).unwrap();
    assert_eq!(headers["authorization"], "Bearer at-SECRET-000000000003");
    assert_eq!(
        lease.credential().field("profileArn").as_deref(),
        Some("arn:aws:codewhisperer:us-east-1:3:profile/C")
    );
}
