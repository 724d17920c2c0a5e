//! Loading pool files: the three shapes, the older system's fields and state, credential files,
//! and every bad input with its exact message.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::support;

use http::HeaderMap;
use proptest::prelude::*;
use support::capture_logs;
use tower_account_pool::config::{
    ConfigError, CredentialSpec, PoolBuilderExt, PoolFile, PoolShape, TokenFileResolver,
};
use tower_account_pool::{health::OutcomeClass, HealthState, Pool, SelectRequest};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config")
}

fn resolver() -> TokenFileResolver {
    TokenFileResolver::new().base_dir(fixtures())
}

fn ms(at: std::time::SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH).unwrap().as_millis()
}

fn warnings(logs: &str) -> Vec<&str> {
    logs.lines().filter(|l| l.contains(" WARN ")).collect()
}

#[test]
fn the_current_shape_loads_our_settings_and_keeps_other_keys() {
    let path = fixtures().join("account_pool.json");
    let (file, logs) = capture_logs(|| PoolFile::load(&path).unwrap());
    assert_eq!(file.shape(), PoolShape::Accounts);
    assert_eq!(file.other_keys(), vec!["comment"]);
    let other_key_warnings = warnings(&logs);
    assert_eq!(other_key_warnings.len(), 1, "{logs}");
    assert!(other_key_warnings[0].contains("`comment`"), "{logs}");

    let main = &file.entries()[0];
    assert_eq!(main.id().as_str(), "anthropic-main");
    let s = main.settings();
    assert_eq!((s.weight, s.priority, s.max_in_flight), (3, 0, Some(8)));
    assert_eq!(
        s.models.as_deref(),
        Some(
            &[
                "claude-sonnet-4-5".to_owned(),
                "claude-haiku-4-5".to_owned()
            ][..]
        )
    );
    assert_eq!(s.base_url.as_deref(), Some("https://api.anthropic.example"));
    assert!(
        matches!(main.credential(), CredentialSpec::ApiKey { header, .. } if header == "x-api-key")
    );
    assert!(!format!("{file:?}").contains("sk-ant-fixture-key-0001"));

    let second = file.entries()[1].settings();
    assert_eq!(second.priority, 1);
    assert_eq!(second.not_supported_models, vec!["claude-opus-4-5"]);
    assert_eq!(second.probe_model.as_deref(), Some("claude-haiku-4-5"));

    let pool = file.build_with(Pool::builder(), &resolver()).unwrap();
    let snapshot = pool.snapshot();
    let kinds: Vec<_> = ["anthropic-main", "openai-compatible", "kiro-1"]
        .iter()
        .map(|id| snapshot.account(id).unwrap().credential.kind)
        .collect();
    assert_eq!(kinds, vec!["api-key", "bearer", "token-file"]);
    assert_eq!(snapshot.available(), 3);

    let lease = pool
        .select(&SelectRequest::for_model("claude-sonnet-4-5"))
        .unwrap();
    assert_eq!(lease.id().as_str(), "anthropic-main");
    let mut headers = HeaderMap::new();
    lease.credential().apply(&mut headers).unwrap();
    assert_eq!(headers["x-api-key"], "sk-ant-fixture-key-0001");

    // The token file's accessToken is sent as a bearer token.
    let mut headers = HeaderMap::new();
    let kiro = snapshot.account("kiro-1").unwrap();
    assert_eq!(
        kiro.credential.path.as_deref(),
        Some("kiro/kiro-auth-token-1.json")
    );
    let lease = pool
        .select(&SelectRequest::for_model("m").excluding(&["anthropic-main".into()]))
        .unwrap();
    assert_eq!(lease.id().as_str(), "kiro-1");
    lease.credential().apply(&mut headers).unwrap();
    assert_eq!(
        headers["authorization"],
        "Bearer aoaAAAAAGfixture-access-token-0001"
    );
}

#[test]
fn a_bare_array_loads_without_warnings() {
    let path = fixtures().join("bare_array.json");
    let (pool, logs) = capture_logs(|| Pool::builder().build_from_file(&path).unwrap());
    assert!(warnings(&logs).is_empty(), "{logs}");
    assert_eq!(PoolFile::load(&path).unwrap().shape(), PoolShape::BareArray);
    assert_eq!(pool.ids().len(), 2);
    assert_eq!(pool.snapshot().account("two").unwrap().settings.weight, 2);
}

#[test]
fn the_old_grouped_shape_loads_with_one_warning_naming_file_shape_and_command() {
    let path = fixtures().join("provider_pools.json");
    let (file, logs) = capture_logs(|| PoolFile::load(&path).unwrap());
    assert_eq!(file.shape(), PoolShape::Grouped);
    let warned = warnings(&logs);
    assert_eq!(warned.len(), 2, "{logs}");
    let shape = warned
        .iter()
        .filter(|l| l.contains("claude-kiro-oauth"))
        .collect::<Vec<_>>();
    assert_eq!(shape.len(), 1, "exactly one old-shape warning: {logs}");
    let command = format!("cargo run --example migrate -- {}", path.display());
    assert!(shape[0].contains(&path.display().to_string()), "{logs}");
    assert!(shape[0].contains(&command), "{logs}");
    // The other provider type is reported, not silently dropped.
    assert_eq!(file.other_keys(), vec!["gemini-cli-oauth"]);
    assert!(
        warned
            .iter()
            .any(|l| l.contains("`gemini-cli-oauth`") && l.contains("not loaded")),
        "{logs}"
    );
}

#[test]
fn state_fields_written_by_the_older_system_seed_the_runtime_state() {
    let file = PoolFile::load(fixtures().join("provider_pools.json")).unwrap();
    assert_eq!(file.entries().len(), 3);
    let first = &file.entries()[0];
    assert_eq!(first.state().check_health, Some(true));
    assert_eq!(
        first.state().cached_email.as_deref(),
        Some("user1@example.com")
    );
    assert_eq!(
        first.state().last_health_check_model.as_deref(),
        Some("claude-haiku-4-5")
    );
    assert_eq!(first.derived_fields(), vec!["errorStatus", "poolType"]);

    let pool = file.build_with(Pool::builder(), &resolver()).unwrap();
    let snapshot = pool.snapshot();

    let healthy = snapshot
        .account("2f1c5a7e-0b8d-4c1a-9e3f-1a2b3c4d5e01")
        .unwrap();
    assert_eq!(healthy.state, HealthState::Healthy);
    assert!(healthy.available);
    assert_eq!(healthy.consecutive_failures, 1);
    assert_eq!(healthy.counters.requests, 42);
    assert_eq!(healthy.counters.successes, 42);
    // The file's 2026-01-03T10:15:30.250Z is read exactly and restored exactly.
    assert_eq!(ms(first.state().last_used.unwrap()), 1_767_435_330_250);
    assert_eq!(ms(healthy.last_used.unwrap()), 1_767_435_330_250);
    let last_error = healthy.last_error.as_ref().unwrap();
    assert_eq!(last_error.message, "Connection failed: socket hang up");
    assert_eq!(last_error.class, OutcomeClass::Transient);
    assert_eq!(ms(last_error.at), 1_767_430_800_000);
    assert_eq!(
        healthy.settings.probe_model.as_deref(),
        Some("claude-haiku-4-5")
    );
    assert_eq!(
        healthy.settings.not_supported_models,
        vec!["claude-opus-4-5"]
    );

    let banned = snapshot
        .account("2f1c5a7e-0b8d-4c1a-9e3f-1a2b3c4d5e02")
        .unwrap();
    assert_eq!(banned.state, HealthState::Suspended);
    assert!(!banned.available);
    assert_eq!(
        banned.reason.as_deref(),
        Some("marked unhealthy in the pool file: Error processing response: Request failed with status code 403")
    );
    assert_eq!(banned.consecutive_failures, 5);
    assert_eq!(
        banned.settings.probe_model, None,
        "an empty checkModelName is no model"
    );
    // SQLite's datetime('now') format, UTC.
    assert_eq!(
        ms(banned.last_error.as_ref().unwrap().at),
        1_767_432_600_000
    );

    // Disabled, and its token file does not exist: the pool still loads.
    let disabled = snapshot
        .account("2f1c5a7e-0b8d-4c1a-9e3f-1a2b3c4d5e03")
        .unwrap();
    assert_eq!(disabled.state, HealthState::Disabled);
    assert_eq!(disabled.underlying_state, HealthState::AuthInvalid);
    assert_eq!(disabled.counters.requests, 7);
    pool.enable("2f1c5a7e-0b8d-4c1a-9e3f-1a2b3c4d5e03").unwrap();
    let enabled = pool.snapshot();
    let enabled = enabled
        .account("2f1c5a7e-0b8d-4c1a-9e3f-1a2b3c4d5e03")
        .unwrap();
    assert_eq!(enabled.state, HealthState::AuthInvalid);
    assert_eq!(
        enabled.reason.as_deref(),
        Some("credential file `kiro/kiro-auth-token-3.json` does not exist")
    );
    assert!(
        enabled.next_retry_at.is_some(),
        "the file is read again later"
    );

    // Only the healthy account serves.
    for _ in 0..3 {
        let lease = pool.select(&SelectRequest::default()).unwrap();
        assert_eq!(lease.id().as_str(), "2f1c5a7e-0b8d-4c1a-9e3f-1a2b3c4d5e01");
    }
}

#[test]
fn a_broken_credential_file_makes_only_its_account_unavailable_and_never_shows_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("good.json", r#"{"accessToken": "good-token-0123456789"}"#);
    write(
        "garbled.json",
        "{\"accessToken\": \"secret-token-in-broken-file",
    );
    write(
        "refresh-only.json",
        r#"{"refreshToken": "secret-refresh-token-0001"}"#,
    );
    write("number.json", r#"{"accessToken": 12345}"#);
    write(
        "pool.json",
        r#"{"accounts": [
            {"uuid": "good", "KIRO_OAUTH_CREDS_FILE_PATH": "good.json"},
            {"uuid": "garbled", "KIRO_OAUTH_CREDS_FILE_PATH": "garbled.json"},
            {"uuid": "refresh-only", "KIRO_OAUTH_CREDS_FILE_PATH": "refresh-only.json"},
            {"uuid": "number", "KIRO_OAUTH_CREDS_FILE_PATH": "number.json"},
            {"uuid": "missing", "KIRO_OAUTH_CREDS_FILE_PATH": "missing.json"}
        ]}"#,
    );
    let file = PoolFile::load(dir.path().join("pool.json")).unwrap();
    let pool = file
        .build_with(
            Pool::builder(),
            &TokenFileResolver::new().base_dir(dir.path()),
        )
        .unwrap();
    let snapshot = pool.snapshot();
    let reason = |id: &str| {
        let account = snapshot.account(id).unwrap();
        assert_eq!(account.state, HealthState::AuthInvalid, "{id}");
        assert!(!account.available);
        account.reason.clone().unwrap()
    };
    assert_eq!(
        reason("garbled"),
        "credential file `garbled.json` is not valid JSON (line 1, column 44)"
    );
    assert_eq!(
        reason("refresh-only"),
        "credential file `refresh-only.json` has no `accessToken`"
    );
    assert_eq!(
        reason("number"),
        "credential file `number.json` has no `accessToken`"
    );
    assert_eq!(
        reason("missing"),
        "credential file `missing.json` does not exist"
    );
    assert_eq!(
        snapshot.account("good").unwrap().state,
        HealthState::Healthy
    );
    assert_eq!(snapshot.available(), 1);

    let everything = format!("{snapshot:?} {pool:?} {file:?}");
    for secret in [
        "good-token-0123456789",
        "secret-token-in-broken-file",
        "secret-refresh-token",
    ] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

#[tokio::test(start_paused = true)]
async fn a_fixed_credential_file_is_picked_up_on_the_scheduled_retry() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pool.json"),
        r#"[{"uuid": "a", "KIRO_OAUTH_CREDS_FILE_PATH": "token.json"},
            {"uuid": "b", "bearerToken": "token-b"}]"#,
    )
    .unwrap();
    let file = PoolFile::load(dir.path().join("pool.json")).unwrap();
    let pool = file
        .build_with(
            Pool::builder(),
            &TokenFileResolver::new().base_dir(dir.path()),
        )
        .unwrap();
    assert_eq!(
        pool.snapshot().account("a").unwrap().state,
        HealthState::AuthInvalid
    );

    std::fs::write(
        dir.path().join("token.json"),
        r#"{"accessToken": "now-here"}"#,
    )
    .unwrap();
    let retry = pool.health_policy().auth_invalid_retry;
    tokio::time::sleep(retry + Duration::from_secs(1)).await;
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.account("a").unwrap().state, HealthState::Healthy);
    let lease = pool
        .select(&SelectRequest::default().excluding(&["b".into()]))
        .unwrap();
    let mut headers = HeaderMap::new();
    lease.credential().apply(&mut headers).unwrap();
    assert_eq!(headers["authorization"], "Bearer now-here");
}

/// Writes `content` as a pool file, checks that loading it fails with exactly `expected`
/// (`{path}` replaced by the file's path), and that the file is byte-for-byte unchanged and
/// nothing else appeared beside it.
fn assert_rejected(content: &str, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.json");
    std::fs::write(&path, content).unwrap();
    let expected = expected.replace("{path}", &path.display().to_string());

    let error = PoolFile::load(&path).unwrap_err();
    assert_eq!(error.to_string(), expected);
    assert_eq!(error.path(), path);
    let error = Pool::builder().build_from_file(&path).unwrap_err();
    assert_eq!(error.to_string(), expected);

    assert_eq!(std::fs::read(&path).unwrap(), content.as_bytes());
    let listing: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listing, vec!["pool.json"]);
}

const SHAPES: &str =
    r#"expected {"accounts": [...]}, a bare array [...] or {"claude-kiro-oauth": [...]}"#;

#[test]
fn invalid_json_names_the_line_and_column() {
    assert_rejected(
        "{\n  \"accounts\": [\n    {\"uuid\": \"a\",}\n  ]\n}",
        "{path}: invalid JSON at line 3, column 18: trailing comma",
    );
    assert_rejected(
        "",
        "{path}: invalid JSON at line 1, column 0: EOF while parsing a value",
    );
    assert_rejected(
        "{\"accounts\": [",
        "{path}: invalid JSON at line 1, column 14: EOF while parsing a list",
    );
    assert_rejected(
        "[{\"uuid\": \"a\"}] x",
        "{path}: invalid JSON at line 1, column 17: trailing characters",
    );
}

#[test]
fn an_unknown_shape_says_what_was_found() {
    assert_rejected(
        r#"{"providers": [], "other": 1}"#,
        &format!("{{path}}: unknown pool file shape: found an object with keys `providers`, `other`; {SHAPES}"),
    );
    assert_rejected(
        r#""hello""#,
        &format!("{{path}}: unknown pool file shape: found a string; {SHAPES}"),
    );
    assert_rejected(
        "{}",
        &format!("{{path}}: unknown pool file shape: found an empty object; {SHAPES}"),
    );
    assert_rejected(
        r#"{"accounts": [], "claude-kiro-oauth": []}"#,
        "{path}: both `accounts` and `claude-kiro-oauth` are present; keep only one list of accounts",
    );
    assert_rejected(
        r#"{"accounts": {"uuid": "a"}}"#,
        "{path}: `accounts` must be an array of accounts, found an object",
    );
    assert_rejected(
        r#"{"claude-kiro-oauth": null}"#,
        "{path}: `claude-kiro-oauth` must be an array of accounts, found null",
    );
    assert_rejected(
        r#"{"accounts": [{"uuid": "a"}, "b"]}"#,
        "{path}: account at index 1 must be an object, found a string",
    );
}

#[test]
fn a_missing_or_duplicate_id_names_the_index_and_id() {
    assert_rejected(
        r#"[{"uuid": "a"}, {"bearerToken": "t"}]"#,
        "{path}: account at index 1 has no `uuid`",
    );
    assert_rejected(
        r#"[{"uuid": null}]"#,
        "{path}: account at index 0 has no `uuid`",
    );
    assert_rejected(
        r#"[{"uuid": ""}]"#,
        "{path}: account at index 0 has an empty `uuid`",
    );
    assert_rejected(
        r#"{"claude-kiro-oauth": [{"uuid": "a"}, {"uuid": "b"}, {"uuid": "a"}]}"#,
        "{path}: account at index 2 repeats uuid `a` (first used at index 0)",
    );
}

#[test]
fn a_field_of_the_wrong_type_names_the_index_and_field() {
    let cases = [
        (r#"[{"uuid": 7}]"#, "account at index 0: field `uuid` must be a string, found a number"),
        (
            r#"[{"uuid": "a"}, {"uuid": "b", "isHealthy": "yes"}]"#,
            "account at index 1: field `isHealthy` must be a boolean, found a string",
        ),
        (
            r#"[{"uuid": "a", "isDisabled": 1}]"#,
            "account at index 0: field `isDisabled` must be a boolean, found a number",
        ),
        (
            r#"[{"uuid": "a", "weight": "3"}]"#,
            "account at index 0: field `weight` must be a non-negative integer, found a string",
        ),
        (
            r#"[{"uuid": "a", "errorCount": -1}]"#,
            "account at index 0: field `errorCount` must be a non-negative integer, found -1",
        ),
        (
            r#"[{"uuid": "a", "usageCount": 1.5}]"#,
            "account at index 0: field `usageCount` must be a non-negative integer, found 1.5",
        ),
        (
            r#"[{"uuid": "a", "models": ["x", 3]}]"#,
            "account at index 0: field `models[1]` must be a string, found a number",
        ),
        (
            r#"[{"uuid": "a", "notSupportedModels": "x"}]"#,
            "account at index 0: field `notSupportedModels` must be an array of strings, found a string",
        ),
        (
            r#"[{"uuid": "a", "lastUsed": true}]"#,
            "account at index 0: field `lastUsed` must be a timestamp string or epoch milliseconds, found a boolean",
        ),
        (
            r#"[{"uuid": "a", "KIRO_OAUTH_CREDS_FILE_PATH": ["x"]}]"#,
            "account at index 0: field `KIRO_OAUTH_CREDS_FILE_PATH` must be a string, found an array",
        ),
        (
            r#"[{"uuid": "a", "bearerToken": 1234567890}]"#,
            "account at index 0: field `bearerToken` must be a string, found a number",
        ),
    ];
    for (content, message) in cases {
        assert_rejected(content, &format!("{{path}}: {message}"));
    }
}

#[test]
fn unusable_values_name_the_index_and_field_but_never_a_secret() {
    let cases = [
        (r#"[{"uuid": "a", "weight": 0}]"#, "account at index 0: field `weight` must be at least 1"),
        (
            r#"[{"uuid": "a", "maxInFlight": 0}]"#,
            "account at index 0: field `maxInFlight` must be at least 1 (leave it out for no limit)",
        ),
        (
            r#"[{"uuid": "a", "priority": 4294967296}]"#,
            "account at index 0: field `priority` is too large (at most 4294967295)",
        ),
        (
            r#"[{"uuid": "a", "lastUsed": "last tuesday"}]"#,
            "account at index 0: field `lastUsed` is not a timestamp (expected ISO 8601 such as 2025-01-31T12:00:00.000Z)",
        ),
        (
            r#"[{"uuid": "a", "apiKey": "k", "bearerToken": "t", "KIRO_OAUTH_CREDS_FILE_PATH": "f"}]"#,
            "account at index 0 has more than one credential (`apiKey`, `bearerToken`, `KIRO_OAUTH_CREDS_FILE_PATH`); keep one",
        ),
        (
            r#"[{"uuid": "a", "headerName": "x-key"}]"#,
            "account at index 0: field `headerName` is set but `apiKey` is not",
        ),
        (
            r#"[{"uuid": "a", "apiKey": "k", "headerName": "bad header"}]"#,
            "account at index 0: field `headerName` is not a valid HTTP header name",
        ),
        (
            r#"[{"uuid": "a", "bearerToken": "secret-value\nwith-newline"}]"#,
            "account at index 0: field `bearerToken` is not a valid HTTP header value",
        ),
        (
            r#"[{"uuid": "a", "KIRO_OAUTH_CREDS_FILE_PATH": ""}]"#,
            "account at index 0: field `KIRO_OAUTH_CREDS_FILE_PATH` must not be empty",
        ),
        (
            r#"[{"uuid": "a", "KIRO_OAUTH_CREDS_BASE64": "not base64 at all: secret-value!"}]"#,
            "account at index 0: field `KIRO_OAUTH_CREDS_BASE64` is not valid base64",
        ),
        (
            // base64 of `["secret-value"]`: JSON, but not an object.
            r#"[{"uuid": "a", "KIRO_OAUTH_CREDS_BASE64": "WyJzZWNyZXQtdmFsdWUiXQ=="}]"#,
            "account at index 0: field `KIRO_OAUTH_CREDS_BASE64` does not decode to a JSON object",
        ),
        (
            r#"[{"uuid": "a", "apiKey": "k", "KIRO_OAUTH_CREDS_BASE64": "e30="}]"#,
            "account at index 0 has more than one credential (`apiKey`, `KIRO_OAUTH_CREDS_BASE64`); keep one",
        ),
    ];
    for (content, message) in cases {
        assert_rejected(content, &format!("{{path}}: {message}"));
    }
}

#[test]
fn a_file_without_accounts_loads_but_builds_no_pool() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.json");
    std::fs::write(&path, r#"{"accounts": []}"#).unwrap();
    assert!(PoolFile::load(&path).unwrap().entries().is_empty());
    let error = Pool::builder().build_from_file(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("{}: the pool file holds no accounts", path.display())
    );
    assert_eq!(std::fs::read(&path).unwrap(), br#"{"accounts": []}"#);
}

#[test]
fn a_missing_pool_file_is_a_read_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.json");
    let error = PoolFile::load(&path).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}: cannot read the file: ", path.display())),
        "{error}"
    );
    assert!(!path.exists());
}

#[test]
fn a_byte_order_mark_and_nulls_are_accepted() {
    let file = PoolFile::parse(
        "bom.json",
        "\u{feff}[{\"uuid\": \"a\", \"lastUsed\": null, \"weight\": null, \"lastUsed\": 1767435330250}]"
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(file.entries()[0].settings().weight, 1);
    assert_eq!(
        ms(file.entries()[0].state().last_used.unwrap()),
        1_767_435_330_250
    );
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "[a-zA-Z0-9 :.\\-]{0,24}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        let key = prop_oneof![
            Just("uuid".to_owned()),
            Just("accounts".to_owned()),
            Just("claude-kiro-oauth".to_owned()),
            Just("weight".to_owned()),
            Just("lastUsed".to_owned()),
            Just("apiKey".to_owned()),
            Just("headerName".to_owned()),
            Just("KIRO_OAUTH_CREDS_FILE_PATH".to_owned()),
            Just("models".to_owned()),
            Just("isHealthy".to_owned()),
            "[a-zA-Z]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_the_loader(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = PoolFile::parse("fuzz.json", &bytes);
        let _ = tower_account_pool::config::LegacyConfig::parse("config.json", &bytes);
    }

    #[test]
    fn json_shaped_input_never_panics_and_errors_name_the_file(value in json_value()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        match PoolFile::parse("fuzz.json", &bytes) {
            Ok(file) => {
                // Whatever loads renders to the current shape and loads again the same.
                let again = PoolFile::parse("fuzz.json", file.render().as_bytes()).unwrap();
                prop_assert_eq!(again.shape(), PoolShape::Accounts);
                prop_assert_eq!(again.entries().len(), file.entries().len());
                if !file.entries().is_empty() {
                    let _ = file.build(Pool::builder());
                }
            }
            Err(error) => prop_assert!(error.to_string().starts_with("fuzz.json: ")),
        }
    }
}

#[test]
fn state_is_written_back_in_the_old_names_keeping_unknown_fields() {
    let file = PoolFile::load(fixtures().join("provider_pools.json")).unwrap();
    let pool = file.build_with(Pool::builder(), &resolver()).unwrap();
    let first = "2f1c5a7e-0b8d-4c1a-9e3f-1a2b3c4d5e01";
    let lease = pool.select(&SelectRequest::default()).unwrap();
    assert_eq!(lease.id().as_str(), first);
    lease.report_with_message(tower_account_pool::Outcome::Transient, "upstream 503");
    let lease = pool.select(&SelectRequest::default()).unwrap();
    lease.report(tower_account_pool::Outcome::Success);

    let text = file.with_state(&pool.snapshot()).render();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let a = &value["accounts"][0];
    assert_eq!(a["isHealthy"], true);
    assert_eq!(a["errorCount"], 0, "the success reset it");
    assert_eq!(a["usageCount"], 43);
    assert_eq!(a["lastErrorMessage"], "upstream 503");
    let error_time = a["lastErrorTime"].as_str().unwrap();
    assert!(
        error_time.len() == 24 && error_time.ends_with('Z'),
        "{error_time}"
    );
    assert_eq!(
        a["cachedAt"], "2026-01-02T08:00:00.000Z",
        "unknown fields are kept"
    );
    assert_eq!(a["lastRetryableError"], "RATE_LIMIT_EXCEEDED");
    assert!(a.get("errorStatus").is_none() && a.get("poolType").is_none());

    let banned = &value["accounts"][1];
    assert_eq!(banned["isHealthy"], false);
    assert_eq!(banned["errorCount"], 5);
    assert_eq!(banned["PROJECT_ID"], "unused-project");
    let disabled = &value["accounts"][2];
    assert_eq!(disabled["isDisabled"], true);
    assert_eq!(
        disabled["isHealthy"], false,
        "its credential file is missing"
    );
    assert_eq!(value["gemini-cli-oauth"][0]["uuid"], "gemini-1");

    // What is written loads again, with the new state.
    let again = PoolFile::parse("again.json", text.as_bytes()).unwrap();
    assert_eq!(again.entries()[0].state().usage_count, Some(43));
    assert_eq!(again.entries()[0].state().error_count, Some(0));
    assert_eq!(
        again.entries()[0].state().last_error_message.as_deref(),
        Some("upstream 503")
    );
}

#[tokio::test]
async fn a_token_file_credential_rereads_its_file_on_refresh() {
    use tower_account_pool::config::TokenFileCredential;
    use tower_account_pool::credential::{Credential, CredentialError, RefreshMode};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    std::fs::write(&path, r#"{"accessToken": "first-token-0001"}"#).unwrap();
    let credential = TokenFileCredential::open(&path);
    let shown = path.display().to_string();
    assert_eq!(credential.problem(), None);
    let masked = credential.masked();
    assert_eq!(
        (masked.kind, masked.last4.as_deref()),
        ("token-file", Some("0001"))
    );
    assert_eq!(masked.path.as_deref(), Some(shown.as_str()));

    // The upstream rejected the token and the file still holds it: invalid, not a loop.
    assert_eq!(
        credential.refresh(RefreshMode::Forced).await,
        Err(CredentialError::Invalid(format!(
            "the token in credential file `{shown}` was rejected and the file has not changed"
        )))
    );
    assert_eq!(credential.refresh(RefreshMode::IfNeeded).await, Ok(()));

    std::fs::write(&path, r#"{"accessToken": "second-token-0002"}"#).unwrap();
    assert_eq!(credential.refresh(RefreshMode::Forced).await, Ok(()));
    let mut headers = HeaderMap::new();
    credential.apply(&mut headers).unwrap();
    assert_eq!(headers["authorization"], "Bearer second-token-0002");

    // A file that disappears fails the refresh but keeps the token it had.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        credential.refresh(RefreshMode::IfNeeded).await,
        Err(CredentialError::Invalid(format!(
            "credential file `{shown}` does not exist"
        )))
    );
    let mut headers = HeaderMap::new();
    credential.apply(&mut headers).unwrap();
    assert_eq!(headers["authorization"], "Bearer second-token-0002");
    assert!(!format!("{credential:?}").contains("second-token"));
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_reread_from_its_file_by_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token.json");
    std::fs::write(&token, r#"{"accessToken": "old-token"}"#).unwrap();
    std::fs::write(
        dir.path().join("pool.json"),
        r#"[{"uuid": "k", "KIRO_OAUTH_CREDS_FILE_PATH": "token.json"},
            {"uuid": "spare", "bearerToken": "spare-token"}]"#,
    )
    .unwrap();
    let pool = PoolFile::load(dir.path().join("pool.json"))
        .unwrap()
        .build_with(
            Pool::builder(),
            &TokenFileResolver::new().base_dir(dir.path()),
        )
        .unwrap();
    let only_k = ["spare".into()];

    // Another process refreshed the token file; the upstream rejects the old token.
    std::fs::write(&token, r#"{"accessToken": "new-token"}"#).unwrap();
    let lease = pool
        .select(&SelectRequest::default().excluding(&only_k))
        .unwrap();
    lease.report(tower_account_pool::Outcome::AuthExpired);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        pool.snapshot().account("k").unwrap().state,
        HealthState::Healthy
    );
    let lease = pool
        .select(&SelectRequest::default().excluding(&only_k))
        .unwrap();
    let mut headers = HeaderMap::new();
    lease.credential().apply(&mut headers).unwrap();
    assert_eq!(headers["authorization"], "Bearer new-token");

    // Rejected again and the file did not change: the account is marked invalid.
    lease.report(tower_account_pool::Outcome::AuthExpired);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let snapshot = pool.snapshot();
    let k = snapshot.account("k").unwrap();
    assert_eq!(k.state, HealthState::AuthInvalid);
    assert!(
        k.reason.as_deref().unwrap().contains(
            "the token in credential file `token.json` was rejected and the file has not changed"
        ),
        "{:?}",
        k.reason
    );
}

#[test]
fn inline_base64_credentials_send_their_access_token_and_win_over_the_file_path() {
    use base64::Engine as _;
    let json = r#"{"accessToken":"at-inline-SECRET-0001","refreshToken":"rt-inline-SECRET"}"#;
    let encoded = base64::engine::general_purpose::STANDARD.encode(json);
    let unpadded = encoded.trim_end_matches('=');
    let content = format!(
        r#"{{"accounts": [
            {{"uuid": "inline", "KIRO_OAUTH_CREDS_BASE64": "{encoded}"}},
            {{"uuid": "both", "KIRO_OAUTH_CREDS_BASE64": "{unpadded}",
              "KIRO_OAUTH_CREDS_FILE_PATH": "no-such-file.json"}},
            {{"uuid": "empty", "KIRO_OAUTH_CREDS_BASE64": "e30="}}
        ]}}"#
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.json");
    std::fs::write(&path, &content).unwrap();
    let (file, logs) = capture_logs(|| PoolFile::load(&path).unwrap());
    let warned = warnings(&logs);
    assert_eq!(warned.len(), 1, "{logs}");
    assert!(
        warned[0].contains("takes precedence over `KIRO_OAUTH_CREDS_FILE_PATH`")
            && warned[0].contains("account=both"),
        "{logs}"
    );
    for entry in &file.entries()[..2] {
        assert_eq!(
            entry.credential(),
            &CredentialSpec::Inline(json.to_owned()),
            "{}",
            entry.id()
        );
        assert_eq!(format!("{:?}", entry.credential()), "Inline(..)");
    }
    assert!(!format!("{file:?}").contains("SECRET"));

    let pool = file.build_with(Pool::builder(), &resolver()).unwrap();
    let snapshot = pool.snapshot();
    for id in ["inline", "both"] {
        assert_eq!(snapshot.account(id).unwrap().state, HealthState::Healthy);
    }
    // `{}` holds no token: only that account is unavailable, and says why.
    let empty = snapshot.account("empty").unwrap();
    assert_eq!(empty.state, HealthState::AuthInvalid);
    assert_eq!(
        empty.reason.as_deref(),
        Some("the inline credentials hold no `accessToken`")
    );
    let exclude = [tower_account_pool::AccountId::new("empty")];
    for _ in 0..2 {
        let lease = pool
            .select(&SelectRequest::default().excluding(&exclude))
            .unwrap();
        let mut headers = HeaderMap::new();
        lease.credential().apply(&mut headers).unwrap();
        assert_eq!(headers["authorization"], "Bearer at-inline-SECRET-0001");
    }
    // The file is written back as it was: the encoded field stays, nothing is decoded into it.
    let written = serde_json::Value::Object(file.entries()[0].to_json());
    assert_eq!(written["KIRO_OAUTH_CREDS_BASE64"], encoded.as_str());
}

#[tokio::test(start_paused = true)]
async fn unusable_inline_credentials_keep_saying_why_after_the_scheduled_retry() {
    let dir = tempfile::tempdir().unwrap();
    // base64 of `{}`: no `accessToken`.
    std::fs::write(
        dir.path().join("pool.json"),
        r#"[{"uuid": "a", "KIRO_OAUTH_CREDS_BASE64": "e30="},
            {"uuid": "b", "bearerToken": "token-b"}]"#,
    )
    .unwrap();
    let pool = PoolFile::load(dir.path().join("pool.json"))
        .unwrap()
        .build_with(Pool::builder(), &TokenFileResolver::new())
        .unwrap();
    let why = "the inline credentials hold no `accessToken`";
    let a = pool.snapshot().account("a").unwrap().clone();
    assert_eq!(
        (a.state, a.reason.as_deref()),
        (HealthState::AuthInvalid, Some(why))
    );
    assert_eq!(a.credential.kind, "unusable");

    let retry = pool.health_policy().auth_invalid_retry;
    tokio::time::sleep(retry + Duration::from_secs(1)).await;
    let a = pool.snapshot().account("a").unwrap().clone();
    assert_eq!(a.state, HealthState::AuthInvalid);
    let reason = a.reason.unwrap();
    assert!(reason.contains(why), "{reason}");
    // Only that account is out.
    for _ in 0..3 {
        let lease = pool.select(&SelectRequest::default()).unwrap();
        assert_eq!(lease.id().as_str(), "b");
    }
}
