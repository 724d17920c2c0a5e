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
