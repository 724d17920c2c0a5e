//! The Kiro classifier against KiroMock answers, the usage probe, and quota-exhausted accounts
//! skipped until their reset (virtual time).
#![cfg(all(feature = "kiro", feature = "test-util"))]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde_json::json;
use tower_account_pool::credential::{Credential, RefreshMode};
use tower_account_pool::kiro::eventstream::{Decoder, Message};
use tower_account_pool::kiro::{
    self, classify_frame, classify_response, classify_stream_start, KiroCredential, KiroOptions,
    KiroPoolExt,
};
use tower_account_pool::testing::{KiroMock, RefreshRule, Reply};
use tower_account_pool::{
    health::RateLimitScope, Account, HealthState, Outcome, Pool, SelectRequest,
};

/// A chat body the mock's strict validation accepts.
const CHAT_BODY: &str = r#"{"conversationState":{"chatTriggerType":"MANUAL","currentMessage":{"userInputMessage":{"content":"Hello","modelId":"claude-sonnet-4.5","origin":"AI_EDITOR"}}}}"#;

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

async fn chat(mock: &KiroMock, token: &str) -> Result<Answer, reqwest::Error> {
    let response = reqwest::Client::new()
        .post(format!("{}/generateAssistantResponse", mock.url()))
        .bearer_auth(token)
        .body(CHAT_BODY)
        .send()
        .await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await?.to_vec();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

async fn classify(mock: &KiroMock, reply: Reply, reset: Option<SystemTime>) -> Outcome {
    mock.script("acct", [reply]);
    let a = chat(mock, "at-acct").await.unwrap();
    if a.status.is_success() {
        classify_stream_start(&a.body, reset).expect("a whole frame")
    } else {
        classify_response(a.status, &a.headers, &a.body, reset)
    }
}

fn first_of_next_month() -> SystemTime {
    kiro::token_file::first_of_next_month_utc(SystemTime::now())
}

#[tokio::test]
async fn every_classifier_row() {
    let mock = KiroMock::start().await;
    mock.accept_access_token("acct", "at-acct");

    assert_eq!(
        classify(&mock, Reply::success(&["hi"]), None).await,
        Outcome::Success
    );
    assert_eq!(
        classify(&mock, Reply::InvalidToken, None).await,
        Outcome::AuthExpired
    );
    // An unknown token gets the same 403 from the mock.
    let a = chat(&mock, "at-unknown").await.unwrap();
    assert_eq!(
        classify_response(a.status, &a.headers, &a.body, None),
        Outcome::AuthExpired
    );

    assert_eq!(
        classify(&mock, Reply::QuotaExhausted, None).await,
        Outcome::QuotaExhausted {
            reset_at: Some(first_of_next_month())
        }
    );
    let probe_reset = SystemTime::now() + Duration::from_secs(3 * 86_400);
    assert_eq!(
        classify(&mock, Reply::QuotaExhausted, Some(probe_reset)).await,
        Outcome::QuotaExhausted {
            reset_at: Some(probe_reset)
        }
    );
    assert_eq!(
        classify(
            &mock,
            Reply::Throttled {
                retry_after: Some(17)
            },
            None
        )
        .await,
        Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(17)),
            scope: RateLimitScope::Account
        }
    );
    assert_eq!(
        classify(&mock, Reply::Throttled { retry_after: None }, None).await,
        Outcome::RateLimited {
            retry_after: None,
            scope: RateLimitScope::Account
        }
    );
    assert_eq!(
        classify(&mock, Reply::Suspended, None).await,
        Outcome::Suspended
    );
    assert_eq!(
        classify(&mock, Reply::Validation, None).await,
        Outcome::ClientError
    );
    for status in [500, 502, 503, 504] {
        assert_eq!(
            classify(&mock, Reply::ServerError { status }, None).await,
            Outcome::Transient,
            "{status}"
        );
    }
    // An exception frame at the start of a 2xx stream → its class.
    let frame = |t: &str, m: &str| Reply::ExceptionFrame {
        after: vec![],
        exception_type: t.into(),
        message: m.into(),
    };
    assert_eq!(
        classify(
            &mock,
            frame("ThrottlingException", "Too many requests"),
            None
        )
        .await,
        Outcome::RateLimited {
            retry_after: None,
            scope: RateLimitScope::Account
        }
    );
    assert_eq!(
        classify(
            &mock,
            frame("ThrottlingException", "MONTHLY_REQUEST_COUNT reached"),
            None
        )
        .await,
        Outcome::QuotaExhausted {
            reset_at: Some(first_of_next_month())
        }
    );
    assert_eq!(
        classify(
            &mock,
            frame("ValidationException", "Input is too long"),
            None
        )
        .await,
        Outcome::ClientError
    );
    assert_eq!(
        classify(&mock, frame("InternalServerException", "boom"), None).await,
        Outcome::Transient
    );
    assert_eq!(
        classify(
            &mock,
            frame(
                "AccessDeniedException",
                "The bearer token included in the request is invalid."
            ),
            None
        )
        .await,
        Outcome::AuthExpired
    );
}

#[test]
fn header_and_body_variants() {
    let mut headers = HeaderMap::new();
    // 400 with a ThrottlingException type and the monthly reason (older clients).
    let body = br#"{"__type":"com.amazon.aws.codewhisperer#ThrottlingException","message":"Maximum ... reached for this month.","reason":"MONTHLY_REQUEST_COUNT"}"#;
    assert!(matches!(
        classify_response(StatusCode::BAD_REQUEST, &headers, body, None),
        Outcome::QuotaExhausted { .. }
    ));
    // x-amzn-errortype ThrottlingException on a 400 → rate limited.
    headers.insert(
        "x-amzn-errortype",
        "ThrottlingException:http://internal.amazon.com/"
            .parse()
            .unwrap(),
    );
    assert!(matches!(
        classify_response(
            StatusCode::BAD_REQUEST,
            &headers,
            br#"{"message":"60-minute credit limit exceeded"}"#,
            None
        ),
        Outcome::RateLimited { .. }
    ));
    // Retry-After as an HTTP date.
    let mut headers = HeaderMap::new();
    let at = SystemTime::now() + Duration::from_secs(120);
    headers.insert("retry-after", httpdate::fmt_http_date(at).parse().unwrap());
    match classify_response(StatusCode::TOO_MANY_REQUESTS, &headers, b"", None) {
        Outcome::RateLimited {
            retry_after: Some(d),
            ..
        } => assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120)),
        other => panic!("{other:?}"),
    }
    let none = HeaderMap::new();
    for pattern in kiro::SUSPENSION_PATTERNS {
        let body = format!(r#"{{"message":"Account {pattern}."}}"#);
        assert_eq!(
            classify_response(StatusCode::FORBIDDEN, &none, body.as_bytes(), None),
            Outcome::Suspended,
            "{pattern}"
        );
    }
    assert!(matches!(
        classify_response(
            StatusCode::FORBIDDEN,
            &none,
            br#"{"message":"quota exceeded"}"#,
            None
        ),
        Outcome::QuotaExhausted { .. }
    ));
    assert_eq!(
        classify_response(StatusCode::UNAUTHORIZED, &none, b"", None),
        Outcome::AuthExpired
    );
    assert_eq!(
        classify_response(StatusCode::PAYMENT_REQUIRED, &none, b"{}", None),
        Outcome::QuotaExhausted {
            reset_at: Some(first_of_next_month())
        }
    );
    assert_eq!(
        classify_response(StatusCode::REQUEST_TIMEOUT, &none, b"", None),
        Outcome::Transient
    );
    assert_eq!(
        classify_response(StatusCode::NOT_FOUND, &none, b"", None),
        Outcome::ClientError
    );
    assert_eq!(
        classify_response(StatusCode::OK, &none, b"", None),
        Outcome::Success
    );
}

#[test]
fn stream_start_needs_a_whole_frame_and_rejects_garbage() {
    let exception = Message::exception("ThrottlingException", br#"{"message":"slow"}"#.to_vec())
        .encode()
        .unwrap();
    assert_eq!(classify_stream_start(&exception[..10], None), None);
    assert_eq!(
        classify_stream_start(&exception[..exception.len() - 1], None),
        None
    );
    assert!(matches!(
        classify_stream_start(&exception, None),
        Some(Outcome::RateLimited { .. })
    ));
    assert_eq!(
        classify_stream_start(b"<html>Service Unavailable</html>", None),
        Some(Outcome::Transient)
    );
    // `error` frames carry :error-code / :error-message headers.
    let error = Message::new(Vec::new())
        .with_header(
            ":message-type",
            kiro::eventstream::HeaderValue::String("error".into()),
        )
        .with_header(
            ":error-code",
            kiro::eventstream::HeaderValue::String("InternalServerException".into()),
        )
        .with_header(
            ":error-message",
            kiro::eventstream::HeaderValue::String("boom".into()),
        );
    assert_eq!(classify_frame(&error, None), Outcome::Transient);
}

#[tokio::test]
async fn mid_stream_exception_and_reset_are_visible() {
    let mock = KiroMock::start().await;
    mock.accept_access_token("acct", "at-acct");
    mock.script(
        "acct",
        [Reply::ExceptionFrame {
            after: vec!["partial".into()],
            exception_type: "InternalServerException".into(),
            message: "boom".into(),
        }],
    );
    let a = chat(&mock, "at-acct").await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(
        a.headers["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let frames = kiro::eventstream::decode_all(&a.body).unwrap();
    assert_eq!(frames.len(), 2);
    assert_eq!(classify_frame(&frames[0], None), Outcome::Success);
    assert_eq!(classify_frame(&frames[1], None), Outcome::Transient);
    assert_eq!(frames[1].exception_type(), Some("InternalServerException"));

    // A reset in the middle of the stream: the head arrives, the body breaks.
    mock.script(
        "acct",
        [Reply::ResetMidStream {
            after: vec!["a".into()],
        }],
    );
    let response = reqwest::Client::new()
        .post(format!("{}/generateAssistantResponse", mock.url()))
        .bearer_auth("at-acct")
        .body(CHAT_BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err());

    // A reset before the response: the request itself fails.
    mock.script("acct", [Reply::ResetBeforeResponse]);
    assert!(chat(&mock, "at-acct").await.is_err());

    // A slow answer still arrives, decodable chunk by chunk.
    mock.script(
        "acct",
        [Reply::Slow {
            delay: Duration::from_millis(50),
            reply: Box::new(Reply::success(&["a", "b", "c"])),
        }],
    );
    let mut response = reqwest::Client::new()
        .post(format!("{}/generateAssistantResponse", mock.url()))
        .bearer_auth("at-acct")
        .body(CHAT_BODY)
        .send()
        .await
        .unwrap();
    let mut decoder = Decoder::new();
    let mut events = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        decoder.push(&chunk);
        while let Some(m) = decoder.next_message().unwrap() {
            events.push(m.event_type().unwrap_or_default().to_owned());
        }
    }
    decoder.finish().unwrap();
    assert_eq!(
        events,
        [
            "assistantResponseEvent",
            "assistantResponseEvent",
            "assistantResponseEvent",
            "meteringEvent",
            "contextUsageEvent"
        ]
    );
    // Everything was recorded, with the token's account.
    let recorded = mock.requests_to("/generateAssistantResponse");
    assert_eq!(recorded.len(), 4);
    assert!(recorded
        .iter()
        .all(|r| r.account.as_deref() == Some("acct")));
}

#[tokio::test]
async fn usage_probe_reads_quota_and_feeds_the_pool() {
    let mock = KiroMock::start().await;
    mock.accept_refresh_token(
        "soc",
        "rt-soc-0000000001",
        RefreshRule {
            profile_arn: Some("arn:aws:codewhisperer:us-east-1:9:profile/S".into()),
            ..RefreshRule::default()
        },
    );
    mock.accept_refresh_token("idc", "rt-idc-0000000001", RefreshRule::default());
    let reset_secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 5 * 86_400;
    mock.set_usage(
        "idc",
        json!({"nextDateReset": reset_secs, "userInfo": {"email": "idc@example.com", "userId": "u-idc"},
               "subscriptionInfo": {"subscriptionTitle": "KIRO PRO"},
               "usageBreakdownList": [{"resourceType": "AGENTIC_REQUEST", "unit": "credit", "currentUsageWithPrecision": 1000.0, "usageLimitWithPrecision": 1000.0}]}),
    );
    let options = KiroOptions::with_base_url(mock.url());
    let social = KiroCredential::from_json(
        &json!({"refreshToken": "rt-soc-0000000001"}).to_string(),
        options.clone(),
    )
    .unwrap();
    let idc = KiroCredential::from_json(
        &json!({"refreshToken": "rt-idc-0000000001", "clientId": "c", "clientSecret": "s"})
            .to_string(),
        options.clone(),
    )
    .unwrap();
    let pool = Pool::builder()
        .account(Account::new("soc", social.clone()))
        .account(Account::new("idc", idc.clone()))
        .build()
        .unwrap();

    // The social account: refreshed first (no access token), then probed with its profileArn.
    let usage = pool.probe_kiro_account("soc").await.unwrap();
    assert_eq!(
        (usage.used, usage.limit, usage.remaining),
        (10.0, 50.0, 40.0)
    );
    assert_eq!(usage.email.as_deref(), Some("soc@example.com"));
    assert_eq!(social.field("email").as_deref(), Some("soc@example.com"));
    assert_eq!(pool.kiro_usage("soc").unwrap(), Some(usage.clone()));
    let request = mock.requests_to("/getUsageLimits").pop().unwrap();
    let query = request.query.unwrap();
    assert!(query.starts_with("isEmailRequired=true&origin=AI_EDITOR&resourceType=AGENTIC_REQUEST&profileArn=arn%3Aaws%3Acodewhisperer"), "{query}");
    assert!(request.headers.contains_key("amz-sdk-invocation-id"));
    assert_eq!(
        pool.snapshot().account("soc").unwrap().state,
        HealthState::Healthy
    );

    // The IdC account: no profileArn; its quota is used up → QuotaExhausted until nextDateReset.
    let usage = pool.probe_kiro_account("idc").await.unwrap();
    assert!(usage.is_exhausted());
    assert_eq!(usage.subscription.as_deref(), Some("KIRO PRO"));
    let expected_reset = SystemTime::UNIX_EPOCH + Duration::from_secs(reset_secs);
    assert_eq!(idc.quota_reset(), Some(expected_reset));
    assert_eq!(kiro::quota_reset_of(&idc), Some(expected_reset));
    assert_eq!(
        kiro::quota_reset_of(&tower_account_pool::credential::BearerToken::new("x")),
        None
    );
    let query = mock
        .requests_to("/getUsageLimits")
        .pop()
        .unwrap()
        .query
        .unwrap();
    assert!(!query.contains("profileArn"), "{query}");
    let snapshot = pool.snapshot();
    let account = snapshot.account("idc").unwrap();
    assert_eq!(account.state, HealthState::QuotaExhausted);
    let until = account.next_retry_at.unwrap();
    let skew = until
        .duration_since(expected_reset)
        .unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(2), "{skew:?}");

    // A revoked token: the probe's 403 is classified AuthExpired and the pool refreshes.
    for token in mock.access_tokens_of("soc") {
        mock.revoke_access_token(&token);
    }
    assert!(pool.probe_kiro_account("soc").await.is_err());
    for _ in 0..1000 {
        if pool.snapshot().account("soc").unwrap().state == HealthState::Healthy
            && mock
                .requests_to("/refreshToken")
                .iter()
                .filter(|r| r.account.as_deref() == Some("soc"))
                .count()
                == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        mock.requests_to("/refreshToken")
            .iter()
            .filter(|r| r.account.as_deref() == Some("soc"))
            .count(),
        2
    );
    assert_eq!(
        pool.snapshot().account("soc").unwrap().state,
        HealthState::Healthy
    );
    // KiroCredential::from_shared finds the pool's credential again.
    let lease = pool.select(&SelectRequest::default()).unwrap();
    assert!(KiroCredential::from_shared(lease.credential()).is_some());
    social.refresh(RefreshMode::IfNeeded).await.unwrap();
}

#[tokio::test]
async fn quota_exhausted_accounts_are_skipped_until_reset() {
    let mock = KiroMock::start().await;
    mock.accept_access_token("a", "at-a");
    mock.script("a", [Reply::QuotaExhausted]);
    let answer = chat(&mock, "at-a").await.unwrap();
    let reset = SystemTime::now() + Duration::from_secs(6 * 3600);
    let outcome = classify_response(answer.status, &answer.headers, &answer.body, Some(reset));
    assert_eq!(
        outcome,
        Outcome::QuotaExhausted {
            reset_at: Some(reset)
        }
    );

    tokio::time::pause();
    let a = KiroCredential::from_json(
        &json!({"accessToken": "at-a-000000000001"}).to_string(),
        KiroOptions::with_base_url(mock.url()),
    )
    .unwrap();
    let b = KiroCredential::from_json(
        &json!({"accessToken": "at-b-000000000001"}).to_string(),
        KiroOptions::with_base_url(mock.url()),
    )
    .unwrap();
    let pool = Pool::builder()
        .account(Account::new("a", a))
        .account(Account::new("b", b))
        .build()
        .unwrap();
    let lease = loop {
        let lease = pool
            .select(&SelectRequest::for_model("claude-sonnet-4-5"))
            .unwrap();
        if lease.id().as_str() == "a" {
            break lease;
        }
        lease.report(Outcome::Success);
    };
    lease.report(outcome);
    for _ in 0..10 {
        let lease = pool
            .select(&SelectRequest::for_model("claude-sonnet-4-5"))
            .unwrap();
        assert_eq!(lease.id().as_str(), "b", "the exhausted account is skipped");
        lease.report(Outcome::Success);
    }
    tokio::time::advance(Duration::from_secs(6 * 3600 - 60)).await;
    for _ in 0..4 {
        let lease = pool
            .select(&SelectRequest::for_model("claude-sonnet-4-5"))
            .unwrap();
        assert_eq!(lease.id().as_str(), "b", "still before the reset");
        lease.report(Outcome::Success);
    }
    tokio::time::advance(Duration::from_secs(120)).await;
    let picked: Vec<String> = (0..4)
        .map(|_| {
            let lease = pool
                .select(&SelectRequest::for_model("claude-sonnet-4-5"))
                .unwrap();
            let id = lease.id().to_string();
            lease.report(Outcome::Success);
            id
        })
        .collect();
    assert!(
        picked.iter().any(|id| id == "a"),
        "back after the reset: {picked:?}"
    );
}

#[test]
fn usage_shapes_and_absurd_values() {
    use tower_account_pool::kiro::KiroUsage;
    let usage = KiroUsage::from_json(
        &json!({"nextDateReset": 1e300, "usageBreakdownList": [{"currentUsage": "x"}]}),
    );
    assert_eq!(usage.next_reset, None);
    assert_eq!((usage.used, usage.limit), (0.0, 0.0));
    assert!(!usage.is_exhausted(), "an unknown limit is not exhaustion");
    // The reset from the breakdown item when the top level has none; bonuses are not counted.
    let usage = KiroUsage::from_json(&json!({"usageBreakdownList": [
        {"currentUsage": 5, "usageLimit": 5, "nextDateReset": 1800000000,
         "bonuses": [{"currentUsage": 1, "usageLimit": 100}]}]}));
    assert!(usage.is_exhausted());
    assert_eq!(
        usage.next_reset,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
    );
    assert_eq!(usage.email, None);
}

#[tokio::test]
async fn usage_prober_probes_every_kiro_account() {
    let mock = KiroMock::start().await;
    mock.accept_access_token("u1", "at-u1-0000000001");
    mock.accept_access_token("u2", "at-u2-0000000001");
    mock.set_usage("u2", json!({"nextDateReset": 4_000_000_000u64, "usageBreakdownList": [{"currentUsage": 50, "usageLimit": 50}]}));
    let options = KiroOptions::with_base_url(mock.url());
    let far = kiro::token_file::format_iso8601(SystemTime::now() + Duration::from_secs(7200));
    let cred = |t: &str| {
        KiroCredential::from_json(
            &json!({"accessToken": t, "refreshToken": "r", "expiresAt": far}).to_string(),
            options.clone(),
        )
        .unwrap()
    };
    let pool = Pool::builder()
        .account(Account::new("u1", cred("at-u1-0000000001")))
        .account(Account::new("u2", cred("at-u2-0000000001")))
        .account(Account::new(
            "static",
            tower_account_pool::credential::BearerToken::new("s"),
        ))
        .build()
        .unwrap();
    let handle = kiro::spawn_usage_prober(&pool, Duration::from_secs(3600));
    for _ in 0..1000 {
        if pool.kiro_usage("u1").unwrap().is_some() && pool.kiro_usage("u2").unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.abort();
    assert_eq!(
        mock.requests_to("/getUsageLimits").len(),
        2,
        "the static account is not probed"
    );
    assert_eq!(pool.kiro_usage("static").unwrap(), None);
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.account("u1").unwrap().state, HealthState::Healthy);
    assert_eq!(
        snapshot.account("u2").unwrap().state,
        HealthState::QuotaExhausted
    );
    assert_eq!(
        mock.refresh_calls(),
        0,
        "fresh tokens are not refreshed before probing"
    );
}
