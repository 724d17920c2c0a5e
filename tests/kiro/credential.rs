//! KiroCredential against KiroMock: token-file shapes, bad files, refresh, single flight,
//! rotation, atomic write-back, injection, the background refresher.
#![cfg(all(feature = "kiro", feature = "test-util"))]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;

use crate::support::CapturedLogs;
use serde_json::{json, Value};
use tower_account_pool::credential::{Credential, CredentialError, RefreshMode};
use tower_account_pool::kiro::{
    self, AuthMethod, KiroCredential, KiroError, KiroOptions, KiroPoolExt,
};
use tower_account_pool::testing::{KiroMock, RefreshRule};
use tower_account_pool::{Account, HealthState, Pool};

const SECRET_RT: &str = "aorAAAAAG-refresh-secret-0001";
const SECRET_AT: &str = "aoaAAAAAG-access-secret-0001";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kiro-test-{name}-{}-{:x}",
        std::process::id(),
        fastrand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fastrand_u64() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn write(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    path
}

fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn iso_in(d: Duration) -> String {
    kiro::token_file::format_iso8601(SystemTime::now() + d)
}

fn options(mock: &KiroMock) -> KiroOptions {
    KiroOptions::with_base_url(mock.url())
}

fn assert_no_secret(text: &str) {
    for secret in [SECRET_RT, SECRET_AT, "client-secret-xyz"] {
        assert!(!text.contains(secret), "secret leaked in: {text}");
    }
}

// ===== shapes =====

#[tokio::test]
async fn social_file_loads_and_injects() {
    let mock = KiroMock::start().await;
    let dir = temp_dir("social");
    let path = write(
        &dir,
        "kiro-auth-token.json",
        &json!({"accessToken": SECRET_AT, "refreshToken": SECRET_RT, "expiresAt": iso_in(Duration::from_secs(3600)),
                "authMethod": "social", "provider": "Google", "profileArn": "arn:aws:codewhisperer:us-east-1:1:profile/P"}),
    );
    let cred = KiroCredential::from_file(&path, options(&mock)).unwrap();
    assert_eq!(cred.auth_method(), Some(AuthMethod::Social));
    assert_eq!(
        cred.field("profileArn").as_deref(),
        Some("arn:aws:codewhisperer:us-east-1:1:profile/P")
    );
    assert_eq!(cred.field("region").as_deref(), Some("us-east-1"));
    assert_eq!(cred.field("authMethod").as_deref(), Some("social"));

    let mut a = HeaderMap::new();
    cred.apply(&mut a).unwrap();
    assert_eq!(a["authorization"], format!("Bearer {SECRET_AT}").as_str());
    assert!(a["authorization"].is_sensitive());
    let mut b = HeaderMap::new();
    cred.apply(&mut b).unwrap();
    let (ia, ib) = (
        a["amz-sdk-invocation-id"].to_str().unwrap(),
        b["amz-sdk-invocation-id"].to_str().unwrap(),
    );
    assert_ne!(ia, ib, "a fresh invocation id per apply");
    assert_eq!(ia.len(), 36);
    assert_eq!(&ia[14..15], "4", "UUID v4");

    // No secret in Debug or masked output.
    assert_no_secret(&format!("{cred:?}"));
    assert_no_secret(&format!("{:?}", cred.masked()));
    assert_eq!(cred.masked().last4.as_deref(), Some("0001"));
    // IfNeeded far from expiry: no upstream call.
    cred.refresh(RefreshMode::IfNeeded).await.unwrap();
    assert_eq!(mock.refresh_calls(), 0);
}

#[tokio::test]
async fn idc_file_refreshes_at_the_oidc_endpoint_without_profile_arn() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token(
        "bob",
        SECRET_RT,
        RefreshRule {
            client: Some(("client-id-1".into(), "client-secret-xyz".into())),
            ..RefreshRule::default()
        },
    );
    let dir = temp_dir("idc");
    let path = write(
        &dir,
        "kiro-auth-token-1.json",
        &json!({"accessToken": SECRET_AT, "refreshToken": SECRET_RT, "expiresAt": iso_in(Duration::from_secs(60)),
                "clientId": "client-id-1", "clientSecret": "client-secret-xyz", "authMethod": "IdC",
                "provider": "BuilderId", "region": "eu-west-1", "profileArn": "arn:should-not-be-sent"}),
    );
    let cred = KiroCredential::from_file(&path, options(&mock)).unwrap();
    assert_eq!(cred.auth_method(), Some(AuthMethod::Idc));
    assert_eq!(cred.field("region").as_deref(), Some("eu-west-1"));
    assert_eq!(
        cred.field("profileArn"),
        None,
        "IdC accounts never expose a profileArn"
    );
    // One minute left: inside the 5-minute window.
    cred.refresh(RefreshMode::IfNeeded).await.unwrap();
    let calls = mock.requests_to("/token");
    assert_eq!(calls.len(), 1);
    let body: Value = serde_json::from_slice(&calls[0].body).unwrap();
    assert_eq!(
        body,
        json!({"refreshToken": SECRET_RT, "clientId": "client-id-1", "clientSecret": "client-secret-xyz", "grantType": "refresh_token"})
    );
    assert!(mock.requests_to("/refreshToken").is_empty());
    let file = read(&path);
    assert!(file["accessToken"].as_str().unwrap().starts_with("at-bob-"));
    assert_eq!(file["clientSecret"], "client-secret-xyz");
}

#[tokio::test]
async fn web_callback_file_with_epoch_ms_is_social_and_keeps_its_format() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token(
        "carol",
        SECRET_RT,
        RefreshRule {
            profile_arn: Some("arn:aws:codewhisperer:us-east-1:2:profile/C".into()),
            ..RefreshRule::default()
        },
    );
    let dir = temp_dir("web");
    let expired_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 1000;
    let path = write(
        &dir,
        "web.json",
        &json!({"accessToken": SECRET_AT, "refreshToken": SECRET_RT, "expiresAt": expired_ms,
                "machineid": "m-1", "provider": "Github", "createdAt": 1, "createdBy": "web-oauth"}),
    );
    let cred = KiroCredential::from_file(&path, options(&mock)).unwrap();
    assert_eq!(
        cred.auth_method(),
        Some(AuthMethod::Social),
        "no client id/secret: social"
    );
    assert_eq!(cred.field("profileArn"), None);
    cred.refresh(RefreshMode::IfNeeded).await.unwrap();
    assert_eq!(mock.requests_to("/refreshToken").len(), 1);
    assert_eq!(
        cred.field("profileArn").as_deref(),
        Some("arn:aws:codewhisperer:us-east-1:2:profile/C")
    );
    let file = read(&path);
    assert!(
        file["expiresAt"].is_u64(),
        "epoch-ms files stay epoch ms: {file}"
    );
    assert!(file["expiresAt"].as_u64().unwrap() > expired_ms + 3_000_000);
    assert_eq!(file["createdBy"], "web-oauth");
    assert_eq!(file["machineid"], "m-1");
    assert_eq!(
        file["profileArn"],
        "arn:aws:codewhisperer:us-east-1:2:profile/C"
    );
}

#[tokio::test]
async fn manual_import_refreshes_as_social() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token("dave", SECRET_RT, RefreshRule::default());
    let dir = temp_dir("manual");
    let path = write(
        &dir,
        "manual.json",
        &json!({"accessToken": SECRET_AT, "refreshToken": SECRET_RT, "profileArn": "arn:p", "expiresAt": iso_in(Duration::ZERO),
                "authMethod": "manual-import", "provider": "Manual"}),
    );
    let cred = KiroCredential::from_file(&path, options(&mock)).unwrap();
    assert_eq!(cred.auth_method(), Some(AuthMethod::Social));
    cred.refresh(RefreshMode::IfNeeded).await.unwrap();
    assert_eq!(mock.requests_to("/refreshToken").len(), 1);
    assert!(mock.requests_to("/token").is_empty());
}

#[tokio::test]
async fn refresh_token_only_file_starts_and_fetches_a_token() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token("erin", SECRET_RT, RefreshRule::default());
    let dir = temp_dir("rt-only");
    let path = write(
        &dir,
        "rt.json",
        &json!({"refreshToken": SECRET_RT, "extra": {"keep": true}}),
    );
    let cred = KiroCredential::from_file(&path, options(&mock)).unwrap();
    let err = cred.apply(&mut HeaderMap::new()).unwrap_err();
    assert!(matches!(err, CredentialError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("no access token yet"), "{err}");
    cred.refresh(RefreshMode::IfNeeded).await.unwrap();
    let mut headers = HeaderMap::new();
    cred.apply(&mut headers).unwrap();
    let token = headers["authorization"]
        .to_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned();
    assert!(mock.access_tokens_of("erin").contains(&token));
    let file = read(&path);
    assert_eq!(file["accessToken"], token.as_str());
    assert_eq!(file["extra"], json!({"keep": true}));
    assert!(
        kiro::token_file::parse_iso8601(file["expiresAt"].as_str().unwrap()).unwrap()
            > SystemTime::now() + Duration::from_secs(3500)
    );
}

#[tokio::test]
async fn inline_credentials_refresh_in_memory() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token(
        "fay",
        SECRET_RT,
        RefreshRule {
            rotate: true,
            ..RefreshRule::default()
        },
    );
    let cred = KiroCredential::from_json(
        &json!({"refreshToken": SECRET_RT}).to_string(),
        options(&mock),
    )
    .unwrap();
    assert_eq!(cred.path(), None);
    cred.refresh(RefreshMode::Forced).await.unwrap();
    assert!(cred.has_access_token());
    // The rotated token is used next time; the old one is dead at the mock.
    cred.refresh(RefreshMode::Forced).await.unwrap();
    let calls = mock.requests_to("/refreshToken");
    assert_eq!(calls.len(), 2);
    let second: Value = serde_json::from_slice(&calls[1].body).unwrap();
    assert!(second["refreshToken"]
        .as_str()
        .unwrap()
        .starts_with("rt-fay-"));
}

// ===== bad files =====

fn load_err(dir: &Path, name: &str, content: &str) -> KiroError {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    let err = KiroCredential::from_file(&path, KiroOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()),
        "names the file: {text}"
    );
    assert_no_secret(&text);
    assert_no_secret(&format!("{err:?}"));
    err
}

#[test]
fn bad_token_files_give_clear_errors() {
    let dir = temp_dir("bad");
    let e = load_err(
        &dir,
        "broken.json",
        &format!("{{\"refreshToken\": \"{SECRET_RT}\", "),
    );
    assert!(
        e.to_string()
            .contains("is not valid JSON: unexpected end of file at line 1"),
        "{e}"
    );

    let e = load_err(
        &dir,
        "syntax.json",
        &format!("{{\"refreshToken\": {SECRET_RT}}}"),
    );
    assert!(
        e.to_string()
            .contains("not valid JSON: syntax error at line 1 column"),
        "{e}"
    );

    let e = load_err(&dir, "array.json", "[1,2]");
    assert!(e.to_string().ends_with("must hold a JSON object"), "{e}");

    let e = load_err(&dir, "empty.json", r#"{"provider":"Google"}"#);
    assert!(e.to_string().contains("missing `refreshToken`"), "{e}");

    let e = load_err(
        &dir,
        "idc.json",
        &json!({"refreshToken": SECRET_RT, "authMethod": "IdC", "clientId": "client-id-1"})
            .to_string(),
    );
    assert_eq!(
        e,
        KiroError::IdcWithoutClient {
            path: dir.join("idc.json").display().to_string(),
            missing: "clientSecret"
        }
    );
    assert!(
        e.to_string().contains(
            "authMethod IdC needs clientId and clientSecret to refresh, missing clientSecret"
        ),
        "{e}"
    );

    let e = load_err(
        &dir,
        "idc2.json",
        &json!({"refreshToken": SECRET_RT, "authMethod": "IdC"}).to_string(),
    );
    assert!(
        e.to_string().contains("missing clientId and clientSecret"),
        "{e}"
    );

    let e = load_err(
        &dir,
        "method.json",
        &json!({"refreshToken": SECRET_RT, "authMethod": "magic"}).to_string(),
    );
    assert!(
        e.to_string()
            .contains("`authMethod` must be `social`, `IdC`"),
        "{e}"
    );

    let e = load_err(
        &dir,
        "expiry.json",
        &json!({"refreshToken": SECRET_RT, "expiresAt": "soon"}).to_string(),
    );
    assert!(
        e.to_string()
            .contains("`expiresAt` must be an ISO 8601 date or epoch milliseconds"),
        "{e}"
    );

    let e = load_err(&dir, "type.json", &json!({"refreshToken": 5}).to_string());
    assert!(
        e.to_string().contains("`refreshToken` must be a string"),
        "{e}"
    );

    let missing = dir.join("nope.json");
    let e = KiroCredential::from_file(&missing, KiroOptions::default()).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "cannot read Kiro token file `{}`",
            missing.display()
        )),
        "{e}"
    );

    // Nothing was rewritten.
    assert_eq!(
        std::fs::read_to_string(dir.join("array.json")).unwrap(),
        "[1,2]"
    );
}

#[tokio::test]
async fn a_broken_file_makes_only_that_account_unavailable() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token("good", SECRET_RT, RefreshRule::default());
    let dir = temp_dir("pool-broken");
    let good = write(&dir, "good.json", &json!({"refreshToken": SECRET_RT}));
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let pool = Pool::builder()
        .account(Account::new(
            "good",
            KiroCredential::open(&good, options(&mock)),
        ))
        .account(Account::new(
            "bad",
            KiroCredential::open(&bad, options(&mock)),
        ))
        .build()
        .unwrap();
    kiro::refresh_pass(&pool).await;
    let snapshot = pool.snapshot();
    let good_state = snapshot.account("good").unwrap();
    let bad_state = snapshot.account("bad").unwrap();
    assert_eq!(good_state.state, HealthState::Healthy);
    assert_eq!(bad_state.state, HealthState::AuthInvalid);
    let reason = bad_state.reason.clone().unwrap_or_default();
    assert!(
        reason.contains(&bad.display().to_string()) && reason.contains("not valid JSON"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read_to_string(&bad).unwrap(),
        "{not json",
        "a broken file is never overwritten"
    );

    // Fixing the file and refreshing brings the account back.
    std::fs::write(&bad, json!({"refreshToken": SECRET_RT}).to_string()).unwrap();
    pool.refresh_credential("bad").await.unwrap();
    assert_eq!(
        pool.snapshot().account("bad").unwrap().state,
        HealthState::Healthy
    );
}

// ===== refresh =====

#[tokio::test]
async fn forced_refresh_ignores_the_window() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token("gus", SECRET_RT, RefreshRule::default());
    let dir = temp_dir("forced");
    let path = write(
        &dir,
        "t.json",
        &json!({"accessToken": SECRET_AT, "refreshToken": SECRET_RT, "expiresAt": iso_in(Duration::from_secs(50 * 60))}),
    );
    let cred = KiroCredential::from_file(&path, options(&mock)).unwrap();
    cred.refresh(RefreshMode::IfNeeded).await.unwrap();
    assert_eq!(
        mock.refresh_calls(),
        0,
        "50 minutes left: outside the window"
    );
    cred.refresh(RefreshMode::Forced).await.unwrap();
    assert_eq!(mock.refresh_calls(), 1, "forced refresh ignores the window");
    assert_ne!(read(&path)["accessToken"], SECRET_AT);
}

#[tokio::test]
async fn custom_window_is_honoured() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token("hal", SECRET_RT, RefreshRule::default());
    let dir = temp_dir("window");
    let path = write(
        &dir,
        "t.json",
        &json!({"accessToken": SECRET_AT, "refreshToken": SECRET_RT, "expiresAt": iso_in(Duration::from_secs(50 * 60))}),
    );
    let opts = KiroOptions {
        refresh_window: Duration::from_secs(55 * 60),
        ..options(&mock)
    };
    let cred = KiroCredential::from_file(&path, opts).unwrap();
    cred.refresh(RefreshMode::IfNeeded).await.unwrap();
    assert_eq!(mock.refresh_calls(), 1);
    cred.refresh(RefreshMode::IfNeeded).await.unwrap();
    assert_eq!(mock.refresh_calls(), 1, "fresh token: nothing to do");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_refreshes_make_one_call() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token(
        "ivy",
        SECRET_RT,
        RefreshRule {
            rotate: true,
            delay: Duration::from_millis(200),
            ..RefreshRule::default()
        },
    );
    let dir = temp_dir("single-flight");
    let path = write(
        &dir,
        "t.json",
        &json!({"accessToken": SECRET_AT, "refreshToken": SECRET_RT, "expiresAt": iso_in(Duration::ZERO)}),
    );
    let cred = Arc::new(KiroCredential::from_file(&path, options(&mock)).unwrap());
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let cred = cred.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mode = if i % 2 == 0 {
                RefreshMode::Forced
            } else {
                RefreshMode::IfNeeded
            };
            cred.refresh(mode).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(mock.refresh_calls(), 1, "exactly one upstream refresh");
    // The rotated refresh token is kept, in memory and on disk.
    let rotated = mock.refresh_tokens_of("ivy");
    assert_eq!(rotated.len(), 1);
    assert_eq!(read(&path)["refreshToken"], rotated[0].as_str());
}

#[tokio::test]
async fn rotation_is_kept_across_refreshes_and_restarts() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token(
        "jay",
        SECRET_RT,
        RefreshRule {
            rotate: true,
            ..RefreshRule::default()
        },
    );
    let dir = temp_dir("rotation");
    let path = write(
        &dir,
        "t.json",
        &json!({"refreshToken": SECRET_RT, "authMethod": "social"}),
    );
    let cred = KiroCredential::from_file(&path, options(&mock)).unwrap();
    for _ in 0..3 {
        cred.refresh(RefreshMode::Forced).await.unwrap();
    }
    assert_eq!(mock.refresh_calls(), 3);
    // A new process (a new credential from the same file) uses the last rotated token.
    let restarted = KiroCredential::from_file(&path, options(&mock)).unwrap();
    restarted.refresh(RefreshMode::Forced).await.unwrap();
    assert_eq!(mock.refresh_calls(), 4);
    assert_eq!(
        mock.requests_to("/refreshToken")
            .last()
            .unwrap()
            .account
            .as_deref(),
        Some("jay")
    );
}

#[cfg(unix)]
#[tokio::test]
async fn write_back_is_atomic_0600_and_keeps_unknown_fields() {
    use std::os::unix::fs::PermissionsExt;
    let mock = KiroMock::start().await;
    mock.accept_refresh_token(
        "kim",
        SECRET_RT,
        RefreshRule {
            rotate: true,
            ..RefreshRule::default()
        },
    );
    let dir = temp_dir("atomic");
    let path = write(
        &dir,
        "t.json",
        &json!({"refreshToken": SECRET_RT, "provider": "Google", "nested": {"a": [1, 2]}, "accountNumber": 7}),
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cred = KiroCredential::from_file(&path, options(&mock)).unwrap();

    // A reader polling the file while refreshes happen never sees a partial file.
    let reader_path = path.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader_stop = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut reads = 0;
        while !reader_stop.load(std::sync::atomic::Ordering::Relaxed) {
            let bytes = std::fs::read(&reader_path).unwrap();
            let v: Value = serde_json::from_slice(&bytes).expect("never a partial file");
            assert!(v["refreshToken"].is_string());
            reads += 1;
        }
        reads
    });
    for _ in 0..20 {
        cred.refresh(RefreshMode::Forced).await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);

    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let file = read(&path);
    assert_eq!(file["provider"], "Google");
    assert_eq!(file["nested"], json!({"a": [1, 2]}));
    assert_eq!(file["accountNumber"], 7);
    assert_eq!(
        file["refreshToken"],
        mock.refresh_tokens_of("kim")[0].as_str()
    );
    // No temp files left behind (only the token file and its lock file).
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["t.json".to_owned(), "t.json.lock".to_owned()]);
}

#[tokio::test]
async fn refresh_failures_are_classified_without_secrets() {
    let mock = KiroMock::start().await;
    let dir = temp_dir("failures");
    // Unknown refresh token: the real 400 body → Invalid.
    let path = write(
        &dir,
        "dead.json",
        &json!({"accessToken": SECRET_AT, "refreshToken": SECRET_RT}),
    );
    let cred = KiroCredential::from_file(&path, options(&mock)).unwrap();
    let err = cred.refresh(RefreshMode::Forced).await.unwrap_err();
    assert!(matches!(err, CredentialError::Invalid(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("HTTP 400: Invalid refresh token provided"),
        "{err}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));
    assert_no_secret(&err.to_string());
    assert_eq!(
        read(&path)["accessToken"],
        SECRET_AT,
        "a failed refresh changes nothing"
    );

    // IdC with the wrong client secret → invalid_client, Invalid.
    mock.accept_refresh_token(
        "lee",
        "rt-lee-0000000001",
        RefreshRule {
            client: Some(("cid".into(), "right-secret".into())),
            ..RefreshRule::default()
        },
    );
    let idc = KiroCredential::from_json(
        &json!({"refreshToken": "rt-lee-0000000001", "clientId": "cid", "clientSecret": "client-secret-xyz"}).to_string(),
        options(&mock),
    ).unwrap();
    let err = idc.refresh(RefreshMode::Forced).await.unwrap_err();
    assert!(matches!(err, CredentialError::Invalid(_)), "{err:?}");
    assert_no_secret(&err.to_string());

    // 5xx → Unavailable (retried later).
    mock.accept_refresh_token(
        "max",
        "rt-max-0000000001",
        RefreshRule {
            fail_status: Some(503),
            ..RefreshRule::default()
        },
    );
    let flaky = KiroCredential::from_json(
        &json!({"refreshToken": "rt-max-0000000001"}).to_string(),
        options(&mock),
    )
    .unwrap();
    let err = flaky.refresh(RefreshMode::Forced).await.unwrap_err();
    assert!(matches!(err, CredentialError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("HTTP 503"), "{err}");

    // Network failure → Unavailable.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let offline = KiroCredential::from_json(
        &json!({"refreshToken": SECRET_RT}).to_string(),
        KiroOptions::with_base_url(format!("http://{closed}")),
    )
    .unwrap();
    let err = offline.refresh(RefreshMode::Forced).await.unwrap_err();
    assert!(matches!(err, CredentialError::Unavailable(_)), "{err:?}");
    assert_no_secret(&err.to_string());
}

#[tokio::test]
async fn pool_refresher_refreshes_unused_accounts_and_marks_dead_ones() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token("near", "rt-near-000000001", RefreshRule::default());
    let dir = temp_dir("refresher");
    let near = write(
        &dir,
        "near.json",
        &json!({"accessToken": SECRET_AT, "refreshToken": "rt-near-000000001", "expiresAt": iso_in(Duration::from_secs(120))}),
    );
    let far = write(
        &dir,
        "far.json",
        &json!({"accessToken": SECRET_AT, "refreshToken": "rt-far-0000000001", "expiresAt": iso_in(Duration::from_secs(7200))}),
    );
    let dead = write(
        &dir,
        "dead.json",
        &json!({"accessToken": SECRET_AT, "refreshToken": "rt-dead-000000001", "expiresAt": iso_in(Duration::from_secs(10))}),
    );
    let pool = Pool::builder()
        .account(Account::new(
            "near",
            KiroCredential::from_file(&near, options(&mock)).unwrap(),
        ))
        .account(Account::new(
            "far",
            KiroCredential::from_file(&far, options(&mock)).unwrap(),
        ))
        .account(Account::new(
            "dead",
            KiroCredential::from_file(&dead, options(&mock)).unwrap(),
        ))
        .account(Account::new(
            "plain",
            tower_account_pool::credential::BearerToken::new("static-token"),
        ))
        .build()
        .unwrap();
    let handle = kiro::spawn_refresher(&pool, Duration::from_secs(3600));
    // The first pass runs at once; wait for its calls and for near's token file to be
    // rewritten (the mock counts a call before the credential writes the answer back, and
    // aborting the task earlier would cut the write short).
    for _ in 0..1000 {
        if mock.refresh_calls() >= 2
            && pool.snapshot().account("dead").unwrap().state == HealthState::AuthInvalid
            && read(&near)["accessToken"] != SECRET_AT
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.abort();
    let accounts: Vec<Option<String>> = mock
        .requests_to("/refreshToken")
        .iter()
        .map(|r| r.account.clone())
        .collect();
    assert_eq!(
        accounts.len(),
        2,
        "near and dead are inside the window, far is not: {accounts:?}"
    );
    assert!(accounts.contains(&Some("near".into())));
    assert_ne!(read(&near)["accessToken"], SECRET_AT);
    assert_eq!(read(&far)["accessToken"], SECRET_AT);
    let snapshot = pool.snapshot();
    assert_eq!(
        snapshot.account("near").unwrap().state,
        HealthState::Healthy
    );
    assert_eq!(
        snapshot.account("dead").unwrap().state,
        HealthState::AuthInvalid
    );
    assert_eq!(
        snapshot.account("plain").unwrap().state,
        HealthState::Healthy
    );
}

#[tokio::test]
async fn another_process_refresh_is_adopted_not_repeated() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token(
        "ned",
        SECRET_RT,
        RefreshRule {
            rotate: true,
            ..RefreshRule::default()
        },
    );
    let dir = temp_dir("adopt");
    let path = write(
        &dir,
        "t.json",
        &json!({"accessToken": SECRET_AT, "refreshToken": SECRET_RT, "expiresAt": iso_in(Duration::from_secs(60))}),
    );
    let first = KiroCredential::from_file(&path, options(&mock)).unwrap();
    let second = KiroCredential::from_file(&path, options(&mock)).unwrap();
    first.refresh(RefreshMode::IfNeeded).await.unwrap();
    // The second "process" still holds the old tokens; its refresh re-reads the file under the
    // lock and adopts the new ones instead of spending the (now rotated away) refresh token.
    second.refresh(RefreshMode::IfNeeded).await.unwrap();
    assert_eq!(mock.refresh_calls(), 1);
    let (mut a, mut b) = (HeaderMap::new(), HeaderMap::new());
    first.apply(&mut a).unwrap();
    second.apply(&mut b).unwrap();
    assert_eq!(a["authorization"], b["authorization"]);
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let capture = CapturedLogs::default();
    let _guard = capture.start(tracing::Level::TRACE);

    let mock = KiroMock::start().await;
    mock.accept_refresh_token(
        "zed",
        SECRET_RT,
        RefreshRule {
            rotate: true,
            ..RefreshRule::default()
        },
    );
    let dir = temp_dir("logs");
    let path = write(
        &dir,
        "t.json",
        &json!({"accessToken": SECRET_AT, "refreshToken": SECRET_RT, "clientSecret": "client-secret-xyz", "clientId": "c", "expiresAt": iso_in(Duration::ZERO)}),
    );
    // IdC (client id and secret present): the mock's /token accepts any client for this rule.
    let cred = KiroCredential::from_file(&path, options(&mock)).unwrap();
    cred.refresh(RefreshMode::IfNeeded).await.unwrap();
    let rotated = mock.refresh_tokens_of("zed").pop().unwrap();
    let issued = mock.access_tokens_of("zed").pop().unwrap();
    // A failed refresh (the old token is dead) and a broken file.
    let stale = KiroCredential::from_json(
        &json!({"refreshToken": SECRET_RT}).to_string(),
        options(&mock),
    )
    .unwrap();
    let _ = stale.refresh(RefreshMode::Forced).await.unwrap_err();
    let broken = dir.join("broken.json");
    std::fs::write(&broken, format!("{{\"refreshToken\": \"{SECRET_RT}\"")).unwrap();
    let _ = KiroCredential::open(&broken, options(&mock));
    let pool = Pool::builder()
        .account(Account::new("zed", cred))
        .build()
        .unwrap();
    pool.probe_kiro_account("zed").await.unwrap();

    let logs = capture.text();
    assert!(
        logs.contains("Kiro token refreshed"),
        "the refresh is logged: {logs}"
    );
    assert!(logs.contains("not valid JSON"), "the broken file is logged");
    assert_no_secret(&logs);
    assert!(!logs.contains(&rotated), "rotated refresh token leaked");
    assert!(!logs.contains(&issued), "issued access token leaked");
}

#[tokio::test]
async fn a_file_corrupted_after_load_is_left_alone_and_tokens_stay_in_memory() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token(
        "oz",
        SECRET_RT,
        RefreshRule {
            rotate: true,
            ..RefreshRule::default()
        },
    );
    let dir = temp_dir("corrupt-later");
    let path = write(&dir, "t.json", &json!({"refreshToken": SECRET_RT}));
    let cred = KiroCredential::from_file(&path, options(&mock)).unwrap();
    std::fs::write(&path, "{oops").unwrap();
    cred.refresh(RefreshMode::Forced).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{oops",
        "never overwritten"
    );
    // The rotated refresh token lives on in memory: the next refresh uses it.
    cred.refresh(RefreshMode::Forced).await.unwrap();
    assert_eq!(mock.refresh_calls(), 2);
    let second: Value = serde_json::from_slice(&mock.requests_to("/refreshToken")[1].body).unwrap();
    assert!(second["refreshToken"]
        .as_str()
        .unwrap()
        .starts_with("rt-oz-"));
}

#[tokio::test]
async fn a_removed_token_file_is_not_recreated_and_tokens_stay_in_memory() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token(
        "gone",
        SECRET_RT,
        RefreshRule {
            rotate: true,
            ..RefreshRule::default()
        },
    );
    let dir = temp_dir("removed-later");
    let path = write(
        &dir,
        "t.json",
        &json!({"refreshToken": SECRET_RT, "authMethod": "social"}),
    );
    let cred = KiroCredential::from_file(&path, options(&mock)).unwrap();
    std::fs::remove_file(&path).unwrap();
    cred.refresh(RefreshMode::Forced).await.unwrap();
    assert!(!path.exists(), "a file of tokens alone is not written back");
    cred.refresh(RefreshMode::Forced).await.unwrap();
    assert_eq!(
        mock.refresh_calls(),
        2,
        "the rotated token, kept in memory, was used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_caller_gives_up_still_keeps_the_rotated_token() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token(
        "slow",
        SECRET_RT,
        RefreshRule {
            rotate: true,
            delay: Duration::from_millis(300),
            ..RefreshRule::default()
        },
    );
    let dir = temp_dir("given-up");
    let path = write(&dir, "t.json", &json!({"refreshToken": SECRET_RT}));
    let cred = KiroCredential::from_file(&path, options(&mock)).unwrap();
    // The caller stops waiting (a request deadline) while the upstream is rotating the token.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(50), cred.refresh(RefreshMode::Forced)).await;
    assert!(gave_up.is_err());
    let started = std::time::Instant::now();
    let rotated = loop {
        if let [rotated] = &mock.refresh_tokens_of("slow")[..] {
            if read(&path)["refreshToken"] == rotated.as_str() {
                break rotated.clone();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the rotated refresh token never reached the file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // And the next refresh uses it (the old one is dead at the mock).
    cred.refresh(RefreshMode::Forced).await.unwrap();
    let last: Value =
        serde_json::from_slice(&mock.requests_to("/refreshToken").last().unwrap().body).unwrap();
    assert_eq!(last["refreshToken"], rotated.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_credentials_on_one_file_refresh_once_under_the_file_lock() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token(
        "pat",
        SECRET_RT,
        RefreshRule {
            rotate: true,
            delay: Duration::from_millis(100),
            ..RefreshRule::default()
        },
    );
    let dir = temp_dir("file-lock");
    let path = write(
        &dir,
        "t.json",
        &json!({"accessToken": SECRET_AT, "refreshToken": SECRET_RT, "expiresAt": iso_in(Duration::from_secs(30))}),
    );
    // Two credentials stand for two processes sharing the token file.
    let creds = [
        Arc::new(KiroCredential::from_file(&path, options(&mock)).unwrap()),
        Arc::new(KiroCredential::from_file(&path, options(&mock)).unwrap()),
    ];
    let mut tasks = Vec::new();
    for i in 0..20 {
        let cred = creds[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            cred.refresh(RefreshMode::IfNeeded).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        mock.refresh_calls(),
        1,
        "one refresh for both holders of the file"
    );
    let (mut a, mut b) = (HeaderMap::new(), HeaderMap::new());
    creds[0].apply(&mut a).unwrap();
    creds[1].apply(&mut b).unwrap();
    assert_eq!(a["authorization"], b["authorization"]);
}

#[tokio::test]
async fn absurd_lifetimes_are_capped_not_panicking() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token(
        "quinn",
        SECRET_RT,
        RefreshRule {
            expires_in: Some(u64::MAX),
            ..RefreshRule::default()
        },
    );
    let cred = KiroCredential::from_json(
        &json!({"refreshToken": SECRET_RT}).to_string(),
        options(&mock),
    )
    .unwrap();
    cred.refresh(RefreshMode::Forced).await.unwrap();
    let expires = cred.expires_at().unwrap();
    assert!(expires <= SystemTime::now() + Duration::from_secs(30 * 86_400));
    assert!(expires > SystemTime::now() + Duration::from_secs(29 * 86_400));
    // No expiresIn at all: one hour.
    mock.accept_refresh_token(
        "rae",
        "rt-rae-0000000001",
        RefreshRule {
            expires_in: None,
            ..RefreshRule::default()
        },
    );
    let cred = KiroCredential::from_json(
        &json!({"refreshToken": "rt-rae-0000000001"}).to_string(),
        options(&mock),
    )
    .unwrap();
    cred.refresh(RefreshMode::Forced).await.unwrap();
    let left = cred
        .expires_at()
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
        "{left:?}"
    );
}
