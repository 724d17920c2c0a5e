//! Streaming through the layer: bodies pass unbuffered, the lease lives as long as the body,
//! and an optional peek catches errors sent in-band at the start of a 2xx stream.

use crate::layer_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use layer_support::{json_request, token_of, BoxError, Channel, UpBody};
use tokio::sync::mpsc;
use tower::{service_fn, Layer, ServiceExt};
use tower_account_pool::classify::{Classifier, HeadVerdict, HttpClassifier};
use tower_account_pool::credential::BearerToken;
use tower_account_pool::layer::{AccountPoolLayer, ReplayBody, SelectedAccount};
use tower_account_pool::{Account, Outcome, Pool, Strategy};

type Senders = Arc<Mutex<Vec<(String, mpsc::Sender<Result<Bytes, BoxError>>)>>>;

fn pool() -> Pool {
    Pool::builder()
        .accounts(["a", "b"].map(|id| Account::new(id, BearerToken::new(format!("tok-{id}")))))
        .strategy(Strategy::FillFirst)
        .build()
        .unwrap()
}

/// An upstream that answers 200 with a body the test feeds through a channel.
fn streaming_upstream(
    senders: Senders,
) -> impl tower::Service<
    Request<ReplayBody<Full<Bytes>>>,
    Response = Response<UpBody>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone {
    service_fn(move |request: Request<ReplayBody<Full<Bytes>>>| {
        let senders = senders.clone();
        async move {
            let (tx, rx) = mpsc::channel(4);
            senders
                .lock()
                .unwrap()
                .push((token_of(request.headers()), tx));
            Ok(Response::builder()
                .header("content-type", "text/event-stream")
                .body(Channel(rx).boxed())
                .unwrap())
        }
    })
}

#[tokio::test]
async fn a_streaming_body_is_not_buffered_and_holds_its_lease_until_it_ends() {
    let pool = pool();
    let senders: Senders = Arc::default();
    let service = AccountPoolLayer::new(pool.clone()).layer(streaming_upstream(senders.clone()));
    let response = service.oneshot(json_request("m")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let tx = senders.lock().unwrap()[0].1.clone();
    let mut body = response.into_body();

    // The first chunk reaches the client while the upstream is still streaming.
    tx.send(Ok(Bytes::from("event: one\n\n"))).await.unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "event: one\n\n");
    let snapshot = pool.snapshot();
    let a = snapshot.account("a").unwrap();
    assert_eq!(a.in_flight, 1, "the stream still holds its account");
    assert_eq!(a.counters.successes, 0);

    tx.send(Ok(Bytes::from("event: two\n\n"))).await.unwrap();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "event: two\n\n"
    );
    drop(tx);
    senders.lock().unwrap().clear();
    assert!(body.frame().await.is_none());
    let snapshot = pool.snapshot();
    let a = snapshot.account("a").unwrap();
    assert_eq!(a.in_flight, 0);
    assert_eq!(
        a.counters.successes, 1,
        "success is reported at the end of the body"
    );
}

#[tokio::test]
async fn a_dropped_response_counts_as_cancelled_and_a_broken_stream_as_transient() {
    let pool = pool();
    let senders: Senders = Arc::default();
    let service = AccountPoolLayer::new(pool.clone()).layer(streaming_upstream(senders.clone()));

    let response = service.clone().oneshot(json_request("m")).await.unwrap();
    let tx = senders.lock().unwrap()[0].1.clone();
    tx.send(Ok(Bytes::from("partial"))).await.unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body); // the client went away
    let snapshot = pool.snapshot();
    let a = snapshot.account("a").unwrap();
    assert_eq!(a.counters.cancelled, 1);
    assert_eq!(a.counters.transient, 0);
    assert_eq!(a.in_flight, 0);

    let response = service.oneshot(json_request("m")).await.unwrap();
    let tx = senders.lock().unwrap()[1].1.clone();
    tx.send(Err("upstream reset the stream".into()))
        .await
        .unwrap();
    let mut body = response.into_body();
    assert!(body.frame().await.unwrap().is_err());
    let snapshot = pool.snapshot();
    let a = snapshot.account("a").unwrap();
    assert_eq!(a.counters.transient, 1);
    assert_eq!(
        a.last_error.as_ref().unwrap().message,
        "the response body failed mid-stream"
    );
}

/// The HTTP classifier, plus a peek at 2xx streams for an in-band `{"error"...}` event.
struct InBand;

impl Classifier for InBand {
    fn classify_head(&self, status: StatusCode, headers: &HeaderMap) -> HeadVerdict {
        if status.is_success() {
            HeadVerdict::Peek { bytes: 32 }
        } else {
            HttpClassifier::default().classify_head(status, headers)
        }
    }

    fn classify_body(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        complete: bool,
    ) -> Outcome {
        if status.is_success() {
            if body.starts_with(b"event: error") {
                return Outcome::rate_limited(None);
            }
            return Outcome::Success;
        }
        HttpClassifier::default().classify_body(status, headers, body, complete)
    }
}

#[tokio::test]
async fn a_peek_catches_an_in_band_error_and_fails_over_and_passes_good_streams_whole() {
    let pool = pool();
    let upstream = service_fn(|request: Request<ReplayBody<Full<Bytes>>>| async move {
        let token = token_of(request.headers());
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let chunks: &[&str] = if token == "tok-a" {
                &["event: error\ndata: {\"type\":\"throttling\"}\n\n"]
            } else {
                &[
                    "event: message_start\n",
                    "data: {}\n\n",
                    "event: message_stop\n\n",
                ]
            };
            for chunk in chunks {
                let _ = tx.send(Ok(Bytes::from(*chunk))).await;
            }
        });
        Ok::<_, std::io::Error>(Response::new(Channel(rx).boxed()))
    });
    let response = AccountPoolLayer::new(pool.clone())
        .classifier(InBand)
        .layer(upstream)
        .oneshot(json_request("m"))
        .await
        .unwrap();
    let account = response
        .extensions()
        .get::<SelectedAccount>()
        .unwrap()
        .clone();
    assert_eq!((account.id().as_str(), account.attempt()), ("b", 2));
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        text, "event: message_start\ndata: {}\n\nevent: message_stop\n\n",
        "the peeked bytes and the rest arrive in order"
    );
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.account("a").unwrap().counters.rate_limited, 1);
    assert_eq!(snapshot.account("b").unwrap().counters.successes, 1);
}

#[tokio::test(start_paused = true)]
async fn the_first_chunk_arrives_before_a_slow_upstream_finishes() {
    let pool = pool();
    let upstream = service_fn(|_request: Request<ReplayBody<Full<Bytes>>>| async move {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            tx.send(Ok(Bytes::from("first"))).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            tx.send(Ok(Bytes::from("last"))).await.unwrap();
        });
        Ok::<_, std::io::Error>(Response::new(Channel(rx).boxed()))
    });
    let started = tokio::time::Instant::now();
    let response = AccountPoolLayer::new(pool)
        .layer(upstream)
        .oneshot(json_request("m"))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first");
    assert_eq!(started.elapsed(), Duration::ZERO, "no waiting for the rest");
    let last = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(last, "last");
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[tokio::test]
async fn a_streamed_error_body_is_read_only_up_to_the_limit_and_the_rest_follows() {
    let pool = pool();
    let senders: Senders = Arc::default();
    let upstream = {
        let senders = senders.clone();
        service_fn(move |request: Request<ReplayBody<Full<Bytes>>>| {
            let senders = senders.clone();
            async move {
                let (tx, rx) = mpsc::channel(4);
                senders
                    .lock()
                    .unwrap()
                    .push((token_of(request.headers()), tx));
                Ok::<_, std::io::Error>(
                    Response::builder()
                        .status(400)
                        .body(Channel(rx).boxed())
                        .unwrap(),
                )
            }
        })
    };
    // Two frames; the classifier stops after the first (its limit is 16 KiB).
    let (first, second) = ("a".repeat(20 * 1024), "b".repeat(30 * 1024));
    let feeder = {
        let senders = senders.clone();
        let (first, second) = (first.clone(), second.clone());
        tokio::spawn(async move {
            let tx = loop {
                if let Some((_, tx)) = senders.lock().unwrap().first().cloned() {
                    break tx;
                }
                tokio::task::yield_now().await;
            };
            senders.lock().unwrap().clear();
            tx.send(Ok(Bytes::from(first))).await.unwrap();
            tx.send(Ok(Bytes::from(second))).await.unwrap();
        })
    };
    let response = AccountPoolLayer::new(pool)
        .layer(upstream)
        .oneshot(json_request("m"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    feeder.await.unwrap();
    assert_eq!(text.len(), first.len() + second.len());
    assert_eq!(text, format!("{first}{second}"));
}

#[tokio::test]
async fn a_grpc_status_in_the_trailers_is_the_accounts_outcome() {
    use http_body::Frame;
    use tower_account_pool::classify::GrpcClassifier;
    let pool = Pool::builder()
        .account(Account::new("a", BearerToken::new("tok-a")))
        .build()
        .unwrap();
    // A gRPC answer that sent a message, then failed: RESOURCE_EXHAUSTED in the trailers.
    let inner = service_fn(|_request: Request<ReplayBody<Full<Bytes>>>| async {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "8".parse().unwrap());
        trailers.insert("grpc-message", "quota".parse().unwrap());
        let frames = futures_util::stream::iter([
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\x01x"))),
            Ok(Frame::trailers(trailers)),
        ]);
        let mut response = Response::new(http_body_util::StreamBody::new(frames));
        response
            .headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        Ok::<_, std::convert::Infallible>(response)
    });
    let service = AccountPoolLayer::new(pool.clone())
        .classifier(GrpcClassifier::default())
        .layer(inner);
    let response = service.oneshot(json_request("m")).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "handed out: the head said nothing"
    );
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "8");
    let a = pool.snapshot().account("a").unwrap().clone();
    assert_eq!(a.counters.rate_limited, 1, "{a:?}");
    assert_eq!(a.counters.successes, 0);
    assert_eq!(
        a.last_error.unwrap().message,
        "grpc-status 8 in the trailers (rate_limited)"
    );
}
