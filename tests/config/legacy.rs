//! The older system's `config.json`: the keys that map onto the pool, and their errors.

use std::time::Duration;

use tower_account_pool::config::LegacyConfig;
use tower_account_pool::{health::HealthPolicy, Pool};

#[test]
fn the_generated_config_of_the_older_system_maps_onto_the_pool() {
    // What the older system wrote when configs/config.json was missing (keys it did not share
    // with us are ignored).
    let config = LegacyConfig::parse(
        "configs/config.json",
        br#"{
            "REQUIRED_API_KEY": "123456",
            "MODEL_PROVIDER": "claude-kiro-oauth",
            "ACCOUNT_POOL_MODE": "legacy",
            "ACCOUNT_POOL_FILE_PATH": "./configs/account_pool.json",
            "PROVIDER_POOLS_FILE_PATH": "./configs/provider_pools.json",
            "MAX_ERROR_COUNT": 5,
            "REQUEST_MAX_RETRIES": 8,
            "REQUEST_BASE_DELAY": 3000,
            "CRON_NEAR_MINUTES": 15,
            "USE_SQLITE_POOL": false
        }"#,
    )
    .unwrap();
    let policy = config.health_policy(HealthPolicy::default());
    assert_eq!(policy.max_errors, 5);
    assert_eq!(
        policy.clone().with_max_errors(3),
        HealthPolicy::default(),
        "only max_errors changes"
    );
    assert_eq!(config.request_max_retries(), 8);
    assert_eq!(config.request_base_delay(), Duration::from_millis(3000));
    assert_eq!(
        config.pool_file().to_str(),
        Some("./configs/account_pool.json")
    );
    assert_eq!(
        config.provider_pools_file().to_str(),
        Some("./configs/provider_pools.json")
    );
    let pool = Pool::builder()
        .health(policy)
        .account(tower_account_pool::Account::new(
            "a",
            tower_account_pool::credential::NoCredential,
        ))
        .build()
        .unwrap();
    assert_eq!(pool.health_policy().max_errors, 5);
}

#[test]
fn missing_keys_fall_back_to_the_older_systems_code_defaults() {
    let config = LegacyConfig::parse("config.json", b"{}").unwrap();
    assert_eq!(config, LegacyConfig::default());
    assert_eq!(config.health_policy(HealthPolicy::default()).max_errors, 3);
    assert_eq!(config.request_max_retries(), 3);
    assert_eq!(config.request_base_delay(), Duration::from_secs(1));
    assert_eq!(
        config.pool_file().to_str(),
        Some("configs/account_pool.json")
    );
    assert_eq!(
        config.provider_pools_file().to_str(),
        Some("configs/provider_pools.json")
    );
}

#[test]
fn the_pool_file_is_located_as_the_older_system_did() {
    let dir = tempfile::tempdir().unwrap();
    let config = LegacyConfig::default();
    assert_eq!(config.locate_pool_file(dir.path()), None);
    std::fs::create_dir(dir.path().join("configs")).unwrap();
    let legacy = dir.path().join("configs/provider_pools.json");
    std::fs::write(&legacy, "{}").unwrap();
    assert_eq!(config.locate_pool_file(dir.path()), Some(legacy));
    let current = dir.path().join("configs/account_pool.json");
    std::fs::write(&current, "{}").unwrap();
    assert_eq!(config.locate_pool_file(dir.path()), Some(current));
}

#[test]
fn bad_values_name_the_file_and_key() {
    let cases: [(&[u8], &str); 8] = [
        (
            br#"{"MAX_ERROR_COUNT": "5"}"#,
            "config.json: `MAX_ERROR_COUNT` must be a non-negative integer, found a string",
        ),
        (br#"{"MAX_ERROR_COUNT": 0}"#, "config.json: `MAX_ERROR_COUNT` must be at least 1, found 0"),
        (
            br#"{"REQUEST_MAX_RETRIES": -1}"#,
            "config.json: `REQUEST_MAX_RETRIES` must be a non-negative integer of at most 4294967295, found -1",
        ),
        (
            br#"{"REQUEST_BASE_DELAY": 1.5}"#,
            "config.json: `REQUEST_BASE_DELAY` must be a non-negative integer of at most 4294967295, found 1.5",
        ),
        (
            br#"{"ACCOUNT_POOL_FILE_PATH": 3}"#,
            "config.json: `ACCOUNT_POOL_FILE_PATH` must be a non-empty string, found a number",
        ),
        (
            br#"{"PROVIDER_POOLS_FILE_PATH": ""}"#,
            "config.json: `PROVIDER_POOLS_FILE_PATH` must be a non-empty string, found an empty string",
        ),
        (br#"[1, 2]"#, "config.json: config.json must be an object, found an array"),
        (
            b"{\n  \"MAX_ERROR_COUNT\": 5,\n}",
            "config.json: invalid JSON at line 3, column 1: trailing comma",
        ),
    ];
    for (content, message) in cases {
        let error = LegacyConfig::parse("config.json", content).unwrap_err();
        assert_eq!(error.to_string(), message);
    }
}

#[test]
fn a_config_file_is_read_from_disk_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, r#"{"MAX_ERROR_COUNT": 2}"#).unwrap();
    assert_eq!(LegacyConfig::load(&path).unwrap().max_error_count, Some(2));
    assert_eq!(std::fs::read(&path).unwrap(), br#"{"MAX_ERROR_COUNT": 2}"#);
}
