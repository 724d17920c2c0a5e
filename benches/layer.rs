//! The layer's cost per request, beside a bare service and tower's own balancer.
//!
//! - `layer/bare`: a no-op inner service called directly (the floor).
//! - `layer/pool/{n}`: the same service behind `AccountPoolLayer` over `n` accounts, with a
//!   1 KiB JSON body: body buffering, model extraction, selection, credential injection, the
//!   extensions, classification and the report.
//! - `layer/p2c_buffer/{n}`: tower's `p2c::Balance` over `n` no-op services behind `Buffer`,
//!   the tower-native way to share a balancer between callers.
//!
//! Run with `--requests N --service bare|pool` instead, the binary sends `N` of the same
//! requests through `bare` or `pool/1000` and exits, without criterion: `benches/check.sh` runs
//! it under callgrind to count the instructions of one request, a figure that, unlike time,
//! does not move with the machine's load.

use std::convert::Infallible;

use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::{service_fn, Layer, ServiceExt};
use tower_account_pool::credential::BearerToken;
use tower_account_pool::layer::AccountPoolLayer;
use tower_account_pool::{Account, Pool};

fn body_1k() -> Bytes {
    let mut body = String::from(
        r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":false,"messages":[{"role":"user","content":""#,
    );
    while body.len() < 1024 - 4 {
        body.push('x');
    }
    body.push_str(r#""}]}"#);
    assert_eq!(body.len(), 1024);
    Bytes::from(body)
}

fn request(body: &Bytes) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(body.clone()));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static("http://upstream.test/v1/messages");
    request.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    request
}

async fn no_op<B>(_request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::new())))
}

fn pool(n: usize) -> Pool {
    Pool::builder()
        .accounts((0..n).map(|i| {
            Account::new(
                format!("acct-{i}"),
                BearerToken::new(format!("token-{i:04}-0123456789")),
            )
        }))
        .build()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = body_1k();
    let mut group = c.benchmark_group("layer");

    let bare = service_fn(no_op::<Full<Bytes>>);
    group.bench_function("bare", |b| {
        b.to_async(&rt)
            .iter(|| async { bare.oneshot(request(&body)).await.unwrap() })
    });

    for n in [10usize, 1000] {
        let service = AccountPoolLayer::new(pool(n)).layer(service_fn(no_op));
        group.bench_with_input(BenchmarkId::new("pool", n), &n, |b, _| {
            b.to_async(&rt)
                .iter(|| async { service.clone().oneshot(request(&body)).await.unwrap() })
        });

        let balanced = rt.block_on(async {
            let services: Vec<_> = (0..n)
                .map(|_| {
                    PendingRequests::new(
                        service_fn(no_op::<Full<Bytes>>),
                        CompleteOnResponse::default(),
                    )
                })
                .collect();
            Buffer::new(Balance::new(ServiceList::new(services)), 1024)
        });
        group.bench_with_input(BenchmarkId::new("p2c_buffer", n), &n, |b, _| {
            b.to_async(&rt)
                .iter(|| async { balanced.clone().oneshot(request(&body)).await.unwrap() })
        });
    }
    group.finish();
}

/// `--requests N --service bare|pool`: the requests to count instructions over, if asked.
fn count_mode() -> Option<(usize, String)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        let at = args.iter().position(|a| a == flag)?;
        args.get(at + 1).cloned()
    };
    let requests = value("--requests")?
        .parse()
        .expect("--requests takes a number");
    Some((
        requests,
        value("--service").unwrap_or_else(|| "pool".into()),
    ))
}

/// Sends `requests` requests through the bare service or the layer over 1,000 accounts.
fn run_requests(requests: usize, service: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = body_1k();
    let layered = AccountPoolLayer::new(pool(1000)).layer(service_fn(no_op));
    let bare = service_fn(no_op::<Full<Bytes>>);
    rt.block_on(async {
        for _ in 0..requests {
            match service {
                "bare" => drop(bare.oneshot(request(&body)).await.unwrap()),
                "pool" => drop(layered.clone().oneshot(request(&body)).await.unwrap()),
                other => panic!("--service is bare or pool, not {other}"),
            }
        }
    });
}

criterion_group!(benches, bench);

fn main() {
    if let Some((requests, service)) = count_mode() {
        run_requests(requests, &service);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
