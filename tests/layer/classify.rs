//! The layer's classifier hooks: a classifier made per request, inner errors classified, a
//! classifier that passes, and the `map_outcome` combinator.

use crate::layer_support;

use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::Full;
use layer_support::{fill_first_pool, json_request, Reply, Upstream};
use tower::{Layer, ServiceExt};
use tower_account_pool::classify::{Classifier, HeadVerdict, HttpClassifier};
use tower_account_pool::layer::{AccountPoolLayer, SelectedAccount};
use tower_account_pool::Outcome;

const MODEL: &str = "claude-sonnet-4-5";

/// Every answer a success, whatever its status.
struct AllGood;

impl Classifier for AllGood {
    fn classify_head(&self, _: StatusCode, _: &HeaderMap) -> HeadVerdict {
        HeadVerdict::Final(Outcome::Success)
    }

    fn classify_body(&self, _: StatusCode, _: &HeaderMap, _: &[u8], _: bool) -> Outcome {
        Outcome::Success
    }
}

/// Decides nothing itself.
struct PassAll;

impl Classifier for PassAll {
    fn classify_head(&self, _: StatusCode, _: &HeaderMap) -> HeadVerdict {
        HeadVerdict::Pass
    }

    fn classify_body(&self, _: StatusCode, _: &HeaderMap, _: &[u8], _: bool) -> Outcome {
        unreachable!("the answer was passed on")
    }
}

fn served_by<B>(response: &http::Response<B>) -> String {
    response
        .extensions()
        .get::<SelectedAccount>()
        .unwrap()
        .id()
        .to_string()
}

#[tokio::test]
async fn a_classifier_made_per_request_sees_the_request_head() {
    let lenient: Arc<dyn Classifier> = Arc::new(AllGood);
    let strict: Arc<dyn Classifier> = Arc::new(HttpClassifier::new());
    let layer = AccountPoolLayer::new(fill_first_pool(&["a", "b"])).make_classifier(
        move |request: &http::request::Parts| {
            if request.headers.contains_key("x-lenient") {
                lenient.clone()
            } else {
                strict.clone()
            }
        },
    );
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::status(503), Reply::status(503)]);
    let service = layer.layer(upstream.service::<Full<Bytes>>());

    let response = service.clone().oneshot(json_request(MODEL)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(served_by(&response), "b");

    let mut request = json_request(MODEL);
    request
        .headers_mut()
        .insert("x-lenient", "1".parse().unwrap());
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(served_by(&response), "a");
}

/// A connection refused is the account's (retried); any other I/O error is the request's.
struct RefusedOnly;

impl Classifier for RefusedOnly {
    fn classify_head(&self, status: StatusCode, headers: &HeaderMap) -> HeadVerdict {
        HttpClassifier::new().classify_head(status, headers)
    }

    fn classify_body(&self, s: StatusCode, h: &HeaderMap, b: &[u8], c: bool) -> Outcome {
        HttpClassifier::new().classify_body(s, h, b, c)
    }

    fn classify_error(&self, error: &dyn Any) -> Outcome {
        match error.downcast_ref::<std::io::Error>().map(|e| e.kind()) {
            Some(std::io::ErrorKind::ConnectionRefused) => Outcome::Transient,
            _ => Outcome::ClientError,
        }
    }
}

#[tokio::test]
async fn inner_errors_are_classified_by_the_classifier() {
    // The default: an inner error is `Transient` and retried on another account.
    let pool_a = fill_first_pool(&["a", "b"]);
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::Reset]);
    let response = AccountPoolLayer::new(pool_a.clone())
        .layer(upstream.service::<Full<Bytes>>())
        .oneshot(json_request(MODEL))
        .await
        .unwrap();
    assert_eq!(served_by(&response), "b");
    assert_eq!(
        pool_a.snapshot().account("a").unwrap().counters.transient,
        1
    );

    // A classifier that calls a reset the request's: the client gets the error, no retry.
    let pool_b = fill_first_pool(&["a", "b"]);
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::Reset]);
    let error = AccountPoolLayer::new(pool_b.clone())
        .classifier(RefusedOnly)
        .layer(upstream.service::<Full<Bytes>>())
        .oneshot(json_request(MODEL))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(upstream.accounts_called(), ["a"]);
    let snapshot = pool_b.snapshot();
    let a = snapshot.account("a").unwrap();
    assert_eq!(a.counters.transient, 0);
    assert_eq!(a.counters.client_errors, 1);
}

#[tokio::test]
async fn a_passed_answer_is_read_as_the_http_classifier_reads_it() {
    let pool = fill_first_pool(&["a", "b"]);
    let upstream = Upstream::new();
    upstream.script(
        "tok-a",
        [Reply::json(
            429,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}"#,
        )],
    );
    let response = AccountPoolLayer::new(pool.clone())
        .classifier(PassAll)
        .layer(upstream.service::<Full<Bytes>>())
        .oneshot(json_request(MODEL))
        .await
        .unwrap();
    assert_eq!(served_by(&response), "b");
    assert_eq!(
        pool.snapshot().account("a").unwrap().counters.rate_limited,
        1
    );
}

#[tokio::test]
async fn map_outcome_sees_the_account_of_every_failure() {
    let pool = fill_first_pool(&["a", "b"]);
    let upstream = Upstream::new();
    upstream.script("tok-a", [Reply::status(500)]);
    // On account `a`, a server error means the account is suspended.
    let classifier = HttpClassifier::new().map_outcome(|outcome, account| {
        match (outcome, account.id().as_str()) {
            (Outcome::Transient, "a") => Outcome::Suspended,
            (outcome, _) => outcome,
        }
    });
    let response = AccountPoolLayer::new(pool.clone())
        .classifier(classifier)
        .layer(upstream.service::<Full<Bytes>>())
        .oneshot(json_request(MODEL))
        .await
        .unwrap();
    assert_eq!(served_by(&response), "b");
    assert_eq!(
        pool.snapshot().account("a").unwrap().state,
        tower_account_pool::HealthState::Suspended
    );
}
