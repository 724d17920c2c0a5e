//! The layer's retry rules, against in-process upstreams scripted per account.

use crate::layer_support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::Full;
use layer_support::{body_text, fill_first_pool, json_request, Reply, Upstream};
use tower::{Layer, ServiceExt};
use tower_account_pool::credential::{
    BearerToken, Credential, CredentialError, MaskedCredential, RefreshMode,
};
use tower_account_pool::layer::{
    AccountPoolLayer, AffinityHeader, Backoff, RetryBudget, SelectedAccount,
};
use tower_account_pool::{Account, Exhausted, HealthState, Outcome, Pool, SelectRequest, Strategy};

const MODEL: &str = "claude-sonnet-4-5";

async fn send(
    layer: AccountPoolLayer,
    upstream: &Upstream,
) -> http::Response<tower_account_pool::layer::ResponseBody<layer_support::UpBody>> {
    layer
        .layer(upstream.service::<Full<Bytes>>())
        .oneshot(json_request(MODEL))
        .await
        .expect("the layer answers")
}

fn served_by<B>(response: &http::Response<B>) -> (String, u32) {
    let s = response
        .extensions()
        .get::<SelectedAccount>()
        .expect("selected account");
    (s.id().to_string(), s.attempt())
}

#[tokio::test]
async fn rate_limit_with_retry_after_fails_over_and_cools_down_the_model() {
    let pool = fill_first_pool(&["a", "b"]);
    let upstream = Upstream::new();
    upstream.script(
        "tok-a",
        [Reply::json(
            429,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
        )
        .header("retry-after", "30")],
    );
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(served_by(&response), ("b".into(), 2));
    assert_eq!(body_text(response).await, r#"{"served_by":"tok-b"}"#);
    assert_eq!(upstream.accounts_called(), ["a", "b"]);
    assert_eq!(pool.stats().retries, 1);
    let snapshot = pool.snapshot();
    let a = snapshot.account("a").unwrap();
    assert_eq!(a.counters.rate_limited, 1);
    let cooldown = &a.model_cooldowns[0];
    assert_eq!(cooldown.model, MODEL);
    let left = cooldown
        .until
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(28) && left <= Duration::from_secs(30),
        "{left:?}"
    );
    assert_eq!(snapshot.account("b").unwrap().counters.successes, 1);
}

#[tokio::test]
async fn rate_limit_without_retry_after_fails_over_with_the_pool_backoff() {
    let pool = fill_first_pool(&["a", "b"]);
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::status(429)]);
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(served_by(&response), ("b".into(), 2));
    let snapshot = pool.snapshot();
    let until = snapshot.account("a").unwrap().model_cooldowns[0]
        .until
        .unwrap();
    let left = until.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        left <= Duration::from_millis(1100),
        "1 s ± 10 % by default, got {left:?}"
    );
}

#[tokio::test]
async fn server_errors_and_connection_resets_fail_over() {
    let pool = fill_first_pool(&["a", "b", "c"]);
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::status(502)]);
    upstream.script("tok-b", [Reply::Reset]);
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(served_by(&response), ("c".into(), 3));
    assert_eq!(upstream.accounts_called(), ["a", "b", "c"]);
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.account("a").unwrap().counters.transient, 1);
    assert_eq!(snapshot.account("b").unwrap().counters.transient, 1);
    assert_eq!(
        snapshot
            .account("a")
            .unwrap()
            .last_error
            .as_ref()
            .unwrap()
            .message,
        "upstream answered 502 Bad Gateway (transient)"
    );
    assert_eq!(pool.stats().retries, 2);
}

#[tokio::test]
async fn client_errors_are_never_retried_and_the_client_sees_the_upstream_error() {
    let pool = fill_first_pool(&["a", "b"]);
    let upstream = Upstream::new();
    let error = r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: field required"}}"#;
    upstream.script(
        "tok-a",
        [Reply::json(400, error).header("x-upstream", "yes")],
    );
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["x-upstream"], "yes");
    assert_eq!(served_by(&response), ("a".into(), 1));
    assert_eq!(body_text(response).await, error);
    assert_eq!(upstream.accounts_called(), ["a"]);
    assert_eq!(pool.stats().retries, 0);
    let a = pool.snapshot();
    let a = a.account("a").unwrap();
    assert_eq!(a.counters.client_errors, 1);
    assert_eq!(a.state, HealthState::Healthy);

    // 422 is decided on the head alone, and not retried either.
    upstream.script("tok-a", [Reply::status(422)]);
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body_text(response).await, "upstream says 422");
}

#[tokio::test]
async fn attempts_stop_at_max_attempts_and_the_client_sees_the_last_upstream_error() {
    let pool = fill_first_pool(&["a", "b", "c", "d"]);
    let upstream = Upstream::new();
    for t in ["tok-a", "tok-b", "tok-c", "tok-d"] {
        upstream.script(t, [Reply::status(503)]);
    }
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(served_by(&response), ("c".into(), 3));
    assert_eq!(body_text(response).await, "upstream says 503");
    assert_eq!(upstream.accounts_called(), ["a", "b", "c"]);
    assert_eq!(pool.stats().retries, 2);

    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::status(503)]);
    let pool = fill_first_pool(&["a", "b"]);
    let response = send(AccountPoolLayer::new(pool).max_attempts(1), &upstream).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.accounts_called(), ["a"]);
}

#[tokio::test]
async fn an_empty_retry_budget_stops_retries() {
    let pool = fill_first_pool(&["a", "b"]);
    let upstream = Upstream::new();
    upstream.script(
        "tok-a",
        [Reply::status(500), Reply::status(500), Reply::status(500)],
    );
    // No floor, 50 %: the first request pays half a retry, the second one a whole one.
    let layer = AccountPoolLayer::new(pool.clone()).retry_budget(RetryBudget::new(
        Duration::from_secs(10),
        0,
        0.5,
    ));
    let response = send(layer.clone(), &upstream).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(upstream.accounts_called(), ["a"]);
    let response = send(layer.clone(), &upstream).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.accounts_called(), ["a", "a", "b"]);
    assert_eq!(pool.stats().retries, 1);
}

#[tokio::test]
async fn bodies_over_the_replay_cap_are_sent_once_and_never_retried() {
    let pool = fill_first_pool(&["a", "b"]);
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::status(503)]);
    let big = format!(r#"{{"model":"{MODEL}","pad":"{}"}}"#, "x".repeat(200));
    let layer = AccountPoolLayer::new(pool.clone()).replay_cap(64);
    let response = layer
        .clone()
        .layer(upstream.service::<Full<Bytes>>())
        .oneshot(
            http::Request::post("/")
                .body(Full::new(Bytes::from(big.clone())))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.accounts_called(), ["a"]);
    assert_eq!(
        upstream.calls()[0].body,
        big.as_bytes(),
        "the body arrives whole"
    );

    // A streamed body with no size hint that turns out larger than the cap: same rule, and
    // the upstream still receives every byte.
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::status(503)]);
    let body =
        layer_support::Chunks::new((0..10).map(|i| format!("chunk-{i:02}-{}", "y".repeat(20))));
    let response = layer
        .layer(upstream.service::<layer_support::Chunks>())
        .oneshot(http::Request::post("/").body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let calls = upstream.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body.len(), 10 * 29);
    assert!(calls[0].body.starts_with(b"chunk-00-") && calls[0].body.ends_with(b"y"));

    // Under the cap the same request is retried.
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::status(503)]);
    let response = send(AccountPoolLayer::new(pool).replay_cap(4096), &upstream).await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// A token that a refresh replaces: `tok-<id>-1`, then `tok-<id>-2`, ...
#[derive(Debug)]
struct Rotating {
    id: &'static str,
    generation: AtomicU32,
    refreshes: Arc<AtomicU32>,
    refresh_fails: bool,
}

impl Credential for Rotating {
    fn kind(&self) -> &'static str {
        "rotating"
    }

    fn apply(&self, headers: &mut HeaderMap) -> Result<(), CredentialError> {
        let token = format!(
            "Bearer tok-{}-{}",
            self.id,
            self.generation.load(Ordering::SeqCst)
        );
        let mut value: http::HeaderValue = token.parse().unwrap();
        value.set_sensitive(true);
        headers.insert("authorization", value);
        Ok(())
    }

    fn refresh(
        &self,
        mode: RefreshMode,
    ) -> Pin<Box<dyn Future<Output = Result<(), CredentialError>> + Send + '_>> {
        Box::pin(async move {
            assert_eq!(mode, RefreshMode::Forced);
            self.refreshes.fetch_add(1, Ordering::SeqCst);
            if self.refresh_fails {
                return Err(CredentialError::Invalid("refresh token revoked".into()));
            }
            self.generation.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }

    fn field(&self, name: &str) -> Option<String> {
        (name == "profileArn").then(|| format!("arn:aws:profile/{}", self.id))
    }

    fn masked(&self) -> MaskedCredential {
        MaskedCredential::from_secret("rotating", "")
    }
}

fn rotating(id: &'static str, refresh_fails: bool) -> (Account, Arc<AtomicU32>) {
    let refreshes = Arc::new(AtomicU32::new(0));
    let credential = Rotating {
        id,
        generation: AtomicU32::new(1),
        refreshes: refreshes.clone(),
        refresh_fails,
    };
    (Account::new(id, credential), refreshes)
}

#[tokio::test]
async fn auth_expired_refreshes_and_retries_once_on_the_same_account() {
    let (a, refreshes) = rotating("a", false);
    let (b, _) = rotating("b", false);
    let pool = Pool::builder()
        .account(a)
        .account(b)
        .strategy(Strategy::FillFirst)
        .build()
        .unwrap();
    let upstream = Upstream::new();
    upstream.script("tok-a-1", [Reply::status(401)]);
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(served_by(&response), ("a".into(), 2));
    let tokens: Vec<_> = upstream.calls().into_iter().map(|c| c.token).collect();
    assert_eq!(tokens, ["tok-a-1", "tok-a-2"]);
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().retries, 1);
    // The success is reported when the body ends.
    assert_eq!(pool.snapshot().account("a").unwrap().in_flight, 1);
    body_text(response).await;
    let snapshot = pool.snapshot();
    let a = snapshot.account("a").unwrap();
    assert_eq!(a.state, HealthState::Healthy);
    assert_eq!(a.counters.successes, 1);
    assert_eq!(a.counters.auth_invalid, 0);
}

#[tokio::test]
async fn a_failed_refresh_marks_the_account_invalid_and_moves_on() {
    let (a, refreshes) = rotating("a", true);
    let (b, _) = rotating("b", false);
    let pool = Pool::builder()
        .account(a)
        .account(b)
        .strategy(Strategy::FillFirst)
        .build()
        .unwrap();
    let upstream = Upstream::new();
    upstream.script("tok-a-1", [Reply::status(401)]);
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(served_by(&response), ("b".into(), 2));
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(
        pool.snapshot().account("a").unwrap().state,
        HealthState::AuthInvalid
    );

    // Rejected again right after a successful refresh: invalid too, and no second refresh.
    let (a, refreshes) = rotating("a", false);
    let (b, _) = rotating("b", false);
    let pool = Pool::builder()
        .account(a)
        .account(b)
        .strategy(Strategy::FillFirst)
        .build()
        .unwrap();
    let upstream = Upstream::new();
    upstream.script("tok-a-1", [Reply::status(401)]);
    upstream.script("tok-a-2", [Reply::status(401)]);
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(served_by(&response), ("b".into(), 3));
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(
        pool.snapshot().account("a").unwrap().state,
        HealthState::AuthInvalid
    );

    // A static token cannot refresh: the account is invalid, the request moves on.
    let pool = fill_first_pool(&["a", "b"]);
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::status(401)]);
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(served_by(&response), ("b".into(), 2));
    assert_eq!(
        pool.snapshot().account("a").unwrap().state,
        HealthState::AuthInvalid
    );
}

#[tokio::test]
async fn forbidden_suspended_and_quota_fail_over_with_the_right_state() {
    let pool = fill_first_pool(&["a", "b", "c"]);
    let upstream = Upstream::new();
    // A suspension is read from the error's code (its text may echo a client's request).
    upstream.script(
        "tok-a",
        [Reply::json(
            403,
            r#"{"error":{"type":"permission_error","code":"account_suspended","message":"Your account is temporarily suspended."}}"#,
        )],
    );
    upstream.script("tok-b", [Reply::json(429, r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#)]);
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(served_by(&response), ("c".into(), 3));
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.account("a").unwrap().state, HealthState::Suspended);
    assert_eq!(
        snapshot.account("b").unwrap().state,
        HealthState::QuotaExhausted
    );
}

#[tokio::test]
async fn exhaustion_answers_429_or_503_with_retry_after_and_json() {
    // Every account rate limited: 429 with the earliest recovery.
    let pool = fill_first_pool(&["a", "b"]);
    for (id, secs) in [("a", 40), ("b", 20)] {
        let lease = pool
            .select(&SelectRequest::for_model(MODEL).excluding(&[]))
            .unwrap();
        assert_eq!(lease.id().as_str(), id);
        lease.report(Outcome::rate_limited(Some(Duration::from_secs(secs))));
    }
    let upstream = Upstream::new();
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((19..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response
        .extensions()
        .get::<Exhausted>()
        .unwrap()
        .is_rate_limited());
    let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["reasons"]["rate limited"], 2);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("no account available (2 rate limited)"));
    assert!(upstream.calls().is_empty());

    // Disabled accounts: 503, no Retry-After (nothing comes back by itself).
    let pool = Pool::builder()
        .account(Account::new("a", BearerToken::new("tok-a")).enabled(false))
        .build()
        .unwrap();
    let response = send(AccountPoolLayer::new(pool), &upstream).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("retry-after").is_none());
    let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(body["error"]["type"], "overloaded_error");
    assert_eq!(
        body["error"]["message"],
        "no account available (1 disabled)"
    );
}

#[tokio::test]
async fn when_no_other_account_is_left_the_client_gets_the_last_upstream_answer() {
    let pool = fill_first_pool(&["a", "b"]);
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::status(429).header("retry-after", "5")]);
    upstream.script("tok-b", [Reply::status(429).header("retry-after", "7")]);
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        response.headers()["retry-after"],
        "7",
        "the upstream's own answer"
    );
    assert_eq!(served_by(&response), ("b".into(), 2));

    // After an auth failure of the pool's credential, the client gets the layer's 503 instead
    // of the upstream's 401 (its request was fine).
    let pool = fill_first_pool(&["a"]);
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::status(401)]);
    let response = send(AccountPoolLayer::new(pool), &upstream).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(body["error"]["reasons"]["already tried"], 1);

    // The same when the request may not be retried at all (here: one attempt only).
    let pool = fill_first_pool(&["a", "b"]);
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::status(403)]);
    let response = send(AccountPoolLayer::new(pool).max_attempts(1), &upstream).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(served_by(&response), ("a".into(), 1));
    let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(
        body["error"]["message"],
        "the upstream rejected the account's credential and the request could not be retried on another account"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_account_times_out_and_the_deadline_bounds_the_request() {
    let pool = fill_first_pool(&["a", "b", "c"]);
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::status(200).slow(Duration::from_secs(60))]);
    let layer = AccountPoolLayer::new(pool.clone()).attempt_timeout(Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    let response = send(layer, &upstream).await;
    assert_eq!(served_by(&response), ("b".into(), 2));
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(pool.snapshot().account("a").unwrap().counters.transient, 1);

    // Every account slow: the overall deadline answers 504.
    let pool = fill_first_pool(&["a", "b", "c"]);
    let upstream = Upstream::new();
    for t in ["tok-a", "tok-b", "tok-c"] {
        upstream.script(t, [Reply::status(200).slow(Duration::from_secs(60))]);
    }
    let layer = AccountPoolLayer::new(pool)
        .attempt_timeout(Duration::from_secs(5))
        .deadline(Duration::from_secs(8));
    let started = tokio::time::Instant::now();
    let response = send(layer, &upstream).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(started.elapsed(), Duration::from_secs(8));
    assert_eq!(upstream.accounts_called(), ["a", "b"]);
    let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(body["error"]["type"], "timeout_error");
}

#[tokio::test(start_paused = true)]
async fn backoff_sleeps_a_jittered_doubling_delay_between_attempts() {
    let pool = fill_first_pool(&["a", "b", "c"]);
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::status(500)]);
    upstream.script("tok-b", [Reply::status(500)]);
    let layer = AccountPoolLayer::new(pool).backoff(Backoff::new(
        Duration::from_secs(2),
        Duration::from_secs(60),
    ));
    let started = tokio::time::Instant::now();
    let response = send(layer, &upstream).await;
    assert_eq!(response.status(), StatusCode::OK);
    // 2 s then 4 s, each jittered into [d/2, d].
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited <= Duration::from_secs(6),
        "{waited:?}"
    );
}

#[tokio::test]
async fn the_model_decides_the_account_and_the_handler_sees_the_selected_account() {
    let (a, _) = rotating("a", false);
    let pool = Pool::builder()
        .account(a.allow_models(["claude-haiku-4-5"]))
        .account(Account::new("b", BearerToken::new("tok-b")))
        .strategy(Strategy::FillFirst)
        .build()
        .unwrap();
    let upstream = Upstream::new();
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(
        served_by(&response),
        ("b".into(), 1),
        "a does not serve {MODEL}"
    );
    let call = &upstream.calls()[0];
    assert_eq!(call.account.as_deref(), Some("b"));
    assert_eq!(call.attempt, Some(1));
    assert!(call.authorization_sensitive);

    // The credential's read-only fields reach the handler through the extension.
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let handler = tower::service_fn(move |request: http::Request<_>| {
        let seen = seen2.clone();
        async move {
            let _: &tower_account_pool::layer::ReplayBody<Full<Bytes>> = request.body();
            let account = request.extensions().get::<SelectedAccount>().unwrap();
            *seen.lock().unwrap() = account.field("profileArn");
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
        }
    });
    let response = AccountPoolLayer::new(pool)
        .layer(handler)
        .oneshot(json_request("claude-haiku-4-5"))
        .await
        .unwrap();
    assert_eq!(served_by(&response).0, "a");
    assert_eq!(seen.lock().unwrap().as_deref(), Some("arn:aws:profile/a"));
}

#[tokio::test]
async fn an_affinity_header_pins_a_conversation_to_one_account() {
    let pool = Pool::builder()
        .accounts(["a", "b", "c"].map(|id| Account::new(id, BearerToken::new(format!("tok-{id}")))))
        .strategy(Strategy::RoundRobin)
        .build()
        .unwrap();
    let upstream = Upstream::new();
    let service = AccountPoolLayer::new(pool)
        .affinity_extractor(AffinityHeader::new("x-session-id").unwrap())
        .layer(upstream.service::<Full<Bytes>>());
    let mut seen = Vec::new();
    for session in ["s1", "s1", "s1", "s2", "s1"] {
        let mut request = json_request(MODEL);
        request
            .headers_mut()
            .insert("x-session-id", session.parse().unwrap());
        let response = service.clone().oneshot(request).await.unwrap();
        seen.push((session, served_by(&response).0));
    }
    let s1: Vec<_> = seen
        .iter()
        .filter(|(s, _)| *s == "s1")
        .map(|(_, a)| a.clone())
        .collect();
    assert!(s1.iter().all(|a| *a == s1[0]), "{seen:?}");
    let s2 = &seen[3].1;
    assert_ne!(
        *s2, s1[0],
        "round-robin moved on for the new session: {seen:?}"
    );
}

#[tokio::test]
async fn a_model_extractor_closure_replaces_the_json_default() {
    let pool = Pool::builder()
        .account(Account::new("a", BearerToken::new("tok-a")).allow_models(["m-from-header"]))
        .build()
        .unwrap();
    let upstream = Upstream::new();
    let layer =
        AccountPoolLayer::new(pool).model_extractor(|parts: &http::request::Parts, _: &[u8]| {
            parts
                .headers
                .get("x-model")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
    let mut request = json_request("not-allowed");
    request
        .headers_mut()
        .insert("x-model", "m-from-header".parse().unwrap());
    let response = layer
        .layer(upstream.service::<Full<Bytes>>())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(served_by(&response).0, "a");
}

/// A credential that cannot be written into a request.
#[derive(Debug)]
struct Unusable;

impl Credential for Unusable {
    fn kind(&self) -> &'static str {
        "unusable"
    }

    fn apply(&self, _headers: &mut HeaderMap) -> Result<(), CredentialError> {
        Err(CredentialError::InvalidHeader("authorization".into()))
    }

    fn masked(&self) -> MaskedCredential {
        MaskedCredential::from_secret("unusable", "")
    }
}

#[tokio::test]
async fn a_credential_that_cannot_be_applied_is_invalid_and_nothing_is_sent_with_it() {
    let pool = Pool::builder()
        .account(Account::new("a", Unusable))
        .account(Account::new("b", BearerToken::new("tok-b")))
        .strategy(Strategy::FillFirst)
        .build()
        .unwrap();
    let upstream = Upstream::new();
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(served_by(&response), ("b".into(), 2));
    assert_eq!(upstream.accounts_called(), ["b"]);
    let snapshot = pool.snapshot();
    let a = snapshot.account("a").unwrap();
    assert_eq!(a.state, HealthState::AuthInvalid);
    assert_eq!(
        a.last_error.as_ref().unwrap().message,
        "the credential could not be applied"
    );

    // Alone in its pool, it gets the layer's 503.
    let pool = Pool::builder()
        .account(Account::new("a", Unusable))
        .build()
        .unwrap();
    let response = send(AccountPoolLayer::new(pool), &upstream).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_retry_after_http_date_sets_the_cooldown() {
    let pool = fill_first_pool(&["a", "b"]);
    let upstream = Upstream::new();
    let at = std::time::SystemTime::now() + Duration::from_secs(120);
    upstream.script(
        "tok-a",
        [Reply::status(429).header("retry-after", &httpdate::fmt_http_date(at))],
    );
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(served_by(&response), ("b".into(), 2));
    let snapshot = pool.snapshot();
    let until = snapshot.account("a").unwrap().model_cooldowns[0]
        .until
        .unwrap();
    let left = until.duration_since(std::time::SystemTime::now()).unwrap();
    // HTTP-dates have one-second resolution.
    assert!(
        left > Duration::from_secs(117) && left <= Duration::from_secs(120),
        "{left:?}"
    );
}

/// A token whose refresh server cannot be reached.
#[derive(Debug)]
struct Unreachable(Arc<AtomicU32>);

impl Credential for Unreachable {
    fn kind(&self) -> &'static str {
        "unreachable"
    }

    fn apply(&self, headers: &mut HeaderMap) -> Result<(), CredentialError> {
        BearerToken::new("tok-unreachable").apply(headers)
    }

    fn refresh(
        &self,
        _mode: RefreshMode,
    ) -> Pin<Box<dyn Future<Output = Result<(), CredentialError>> + Send + '_>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(CredentialError::Unavailable("connection refused".into())) })
    }

    fn masked(&self) -> MaskedCredential {
        MaskedCredential::from_secret("unreachable", "")
    }
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_refresh_server_leaves_the_account_refreshing_not_invalid() {
    let refreshes = Arc::new(AtomicU32::new(0));
    let pool = Pool::builder()
        .account(Account::new("a", Unreachable(refreshes.clone())))
        .account(Account::new("b", BearerToken::new("tok-b")))
        .strategy(Strategy::FillFirst)
        .build()
        .unwrap();
    let upstream = Upstream::new();
    upstream.script("tok-unreachable", [Reply::status(401)]);
    let response = send(AccountPoolLayer::new(pool.clone()), &upstream).await;
    assert_eq!(served_by(&response), ("b".into(), 2));
    // The pool refreshes in the background at once, fails the same way, and retries later.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(refreshes.load(Ordering::SeqCst), 2);
    let snapshot = pool.snapshot();
    let a = snapshot.account("a").unwrap();
    assert_eq!(a.state, HealthState::AuthExpired);
    assert!(
        a.reason.as_deref().unwrap().contains("connection refused"),
        "{:?}",
        a.reason
    );
}

#[tokio::test]
async fn an_error_body_longer_than_the_classifier_reads_reaches_the_client_whole() {
    let pool = fill_first_pool(&["a", "b"]);
    let upstream = Upstream::new();
    // 40 KiB of error: the classifier reads 16 KiB; the client gets every byte, in order.
    let long = format!(
        r#"{{"type":"error","error":{{"type":"invalid_request_error","message":"{}"}}}}"#,
        "z".repeat(40 * 1024)
    );
    upstream.script("tok-a", [Reply::json(400, &long)]);
    let response = send(AccountPoolLayer::new(pool), &upstream).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body_text(response).await, long);
    assert_eq!(upstream.accounts_called(), ["a"]);
}

/// An inner service that is ready once (for the outer `poll_ready`) and then fails readiness.
#[derive(Clone)]
struct ReadyOnce {
    polls: Arc<AtomicU32>,
}

impl tower::Service<http::Request<tower_account_pool::layer::ReplayBody<Full<Bytes>>>>
    for ReadyOnce
{
    type Response = http::Response<Full<Bytes>>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(match self.polls.fetch_add(1, Ordering::SeqCst) {
            0 => Ok(()),
            _ => Err(std::io::Error::other("the inner service broke")),
        })
    }

    fn call(
        &mut self,
        _request: http::Request<tower_account_pool::layer::ReplayBody<Full<Bytes>>>,
    ) -> Self::Future {
        std::future::ready(Ok(http::Response::new(Full::new(Bytes::new()))))
    }
}

#[tokio::test]
async fn an_inner_service_that_is_not_ready_penalises_no_account() {
    let pool = fill_first_pool(&["a", "b"]);
    let polls = Arc::new(AtomicU32::new(0));
    let service = AccountPoolLayer::new(pool.clone()).layer(ReadyOnce {
        polls: polls.clone(),
    });
    let error = service
        .oneshot(json_request(MODEL))
        .await
        .expect_err("the inner service's error");
    assert_eq!(error.to_string(), "the inner service broke");
    // No account was contacted: nothing counts against one, and no other account was tried.
    let snapshot = pool.snapshot();
    for id in ["a", "b"] {
        let account = snapshot.account(id).unwrap();
        assert_eq!(account.state, HealthState::Healthy, "{id}");
        assert_eq!(account.counters.transient, 0, "{id}");
    }
    assert_eq!(snapshot.account("a").unwrap().counters.cancelled, 1);
    assert_eq!(snapshot.account("b").unwrap().counters.requests, 0);
}
