//! Wrap a tonic `Channel` with the account pool.
//!
//! The credential goes into gRPC metadata (`authorization`). An in-process tonic server answers
//! the first account `UNAVAILABLE`, the second `RESOURCE_EXHAUSTED`, the third
//! `UNAUTHENTICATED`, and greets the fourth; the [`GrpcClassifier`] reads each status and the
//! call fails over until it succeeds. The protobuf messages are written by hand with
//! `prost::Message`, so no `protoc` is needed.
//!
//! Runs against an in-process server: `cargo run --example tonic_client`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;
use tower::{service_fn, ServiceBuilder};
use tower_account_pool::classify::GrpcClassifier;
use tower_account_pool::credential::BearerToken;
use tower_account_pool::layer::{AccountPoolLayer, ReplayBody, SelectedAccount};
use tower_account_pool::{Account, HealthState, Pool, Strategy};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `message HelloRequest { string name = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `message HelloReply { string message = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

const SAY_HELLO: &str = "/demo.Greeter/SayHello";

/// The server side of `demo.Greeter`, as tonic's generated code would route it.
#[derive(Clone)]
struct Greeter;

impl tower::Service<http::Request<Body>> for Greeter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != SAY_HELLO {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let handler = service_fn(|request: Request<HelloRequest>| async move {
                let token = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                match token.as_str() {
                    "Bearer token-down" => Err(Status::unavailable("backend restarting")),
                    "Bearer token-limited" => Err(Status::resource_exhausted("too many requests")),
                    "Bearer token-expired" => Err(Status::unauthenticated("token expired")),
                    _ => Ok(Response::new(HelloReply {
                        message: format!("Hello, {}!", request.into_inner().name),
                    })),
                }
            });
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
            Ok(grpc.unary(handler, request).await)
        })
    }
}

/// What the example saw, for its integration test.
pub struct Summary {
    pub message: String,
    pub account: String,
    pub attempt: u32,
    pub states: Vec<(String, HealthState)>,
    pub retries: u64,
}

/// Starts the server, makes one call through the pool, reports what happened.
pub async fn run() -> Result<Summary, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(
        Greeter,
        tonic::transport::server::TcpIncoming::from(listener),
    ));

    let pool = Pool::builder()
        .account(Account::new("down", BearerToken::new("token-down")))
        .account(Account::new("limited", BearerToken::new("token-limited")))
        .account(Account::new("expired", BearerToken::new("token-expired")))
        .account(Account::new("ok", BearerToken::new("token-ok")))
        .strategy(Strategy::FillFirst)
        .build()?;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let service = ServiceBuilder::new()
        .layer(
            AccountPoolLayer::new(pool.clone())
                .classifier(GrpcClassifier::default())
                .max_attempts(4),
        )
        // The channel wants tonic's own body type.
        .map_request(|request: http::Request<ReplayBody<Body>>| request.map(Body::new))
        .service(channel);

    let mut client = tonic::client::Grpc::new(service);
    client.ready().await?;
    let response = client
        .unary(
            Request::new(HelloRequest {
                name: "pool".into(),
            }),
            PathAndQuery::from_static(SAY_HELLO),
            ProstCodec::<HelloRequest, HelloReply>::default(),
        )
        .await?;
    let selected = response
        .extensions()
        .get::<SelectedAccount>()
        .cloned()
        .ok_or("no selected account")?;
    let message = response.into_inner().message;
    println!(
        "{message:?} from account {} on attempt {}",
        selected.id(),
        selected.attempt()
    );

    let mut states = Vec::new();
    for account in pool.snapshot().accounts {
        let why = account.last_error.map(|e| e.message).unwrap_or_default();
        println!("account {}: {} {why}", account.id, account.state);
        states.push((account.id.to_string(), account.state));
    }
    let retries = pool.stats().retries;
    println!("retries: {retries}");
    Ok(Summary {
        message,
        account: selected.id().to_string(),
        attempt: selected.attempt(),
        states,
        retries,
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let summary = run().await?;
    assert_eq!((summary.account.as_str(), summary.attempt), ("ok", 4));
    Ok(())
}
