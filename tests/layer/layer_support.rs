//! In-process mock upstreams for the layer's tests, scripted per account (by the token the
//! layer injects).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tower::service_fn;
use tower::util::BoxCloneService;
use tower_account_pool::credential::BearerToken;
use tower_account_pool::layer::{ReplayBody, SelectedAccount};
use tower_account_pool::{Account, Pool, Strategy};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type UpBody = BoxBody<Bytes, BoxError>;

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    Answer {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// The connection is reset: the inner service fails.
    Reset,
    /// Answers after a delay.
    Slow(Duration, Box<Reply>),
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply::Answer {
            status,
            headers: Vec::new(),
            body: format!("upstream says {status}"),
        }
    }

    pub fn json(status: u16, body: &str) -> Reply {
        Reply::Answer {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Reply {
        if let Reply::Answer { headers, .. } = &mut self {
            headers.push((name, value.into()));
        }
        self
    }

    pub fn slow(self, delay: Duration) -> Reply {
        Reply::Slow(delay, Box::new(self))
    }
}

/// What the upstream saw of one call.
#[derive(Clone, Debug)]
pub struct Call {
    /// The injected secret (bearer token or API key).
    pub token: String,
    /// The selected account, from the request extensions.
    pub account: Option<String>,
    pub attempt: Option<u32>,
    pub body: Bytes,
    pub authorization_sensitive: bool,
}

#[derive(Clone, Default)]
pub struct Upstream {
    scripts: Arc<Mutex<HashMap<String, VecDeque<Reply>>>>,
    calls: Arc<Mutex<Vec<Call>>>,
}

pub fn token_of(headers: &http::HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start_matches("Bearer ").to_owned())
        .or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

impl Upstream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Scripts the next answers for requests carrying `token`; once they are used up the
    /// upstream answers 200.
    pub fn script(&self, token: &str, replies: impl IntoIterator<Item = Reply>) {
        self.scripts
            .lock()
            .unwrap()
            .entry(token.into())
            .or_default()
            .extend(replies);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The accounts called, in order.
    pub fn accounts_called(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .map(|c| c.account.unwrap_or_default())
            .collect()
    }

    async fn answer(
        &self,
        parts: http::request::Parts,
        body: Bytes,
    ) -> Result<Response<UpBody>, std::io::Error> {
        let token = token_of(&parts.headers);
        let selected = parts.extensions.get::<SelectedAccount>();
        self.calls.lock().unwrap().push(Call {
            token: token.clone(),
            account: selected.map(|s| s.id().to_string()),
            attempt: selected.map(|s| s.attempt()),
            body,
            authorization_sensitive: parts
                .headers
                .get("authorization")
                .is_some_and(|v| v.is_sensitive()),
        });
        let reply = self
            .scripts
            .lock()
            .unwrap()
            .get_mut(&token)
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(|| Reply::json(200, &format!(r#"{{"served_by":"{token}"}}"#)));
        let mut reply = reply;
        loop {
            match reply {
                Reply::Slow(delay, inner) => {
                    tokio::time::sleep(delay).await;
                    reply = *inner;
                }
                Reply::Reset => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "connection reset by peer",
                    ))
                }
                Reply::Answer {
                    status,
                    headers,
                    body,
                } => {
                    let mut response = Response::new(full(body));
                    *response.status_mut() = StatusCode::from_u16(status).unwrap();
                    for (name, value) in headers {
                        response.headers_mut().insert(name, value.parse().unwrap());
                    }
                    return Ok(response);
                }
            }
        }
    }

    /// The upstream as a tower service taking the layer's request bodies.
    pub fn service<B>(
        &self,
    ) -> BoxCloneService<Request<ReplayBody<B>>, Response<UpBody>, std::io::Error>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Debug,
    {
        let upstream = self.clone();
        BoxCloneService::new(service_fn(move |request: Request<ReplayBody<B>>| {
            let upstream = upstream.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.expect("request body").to_bytes();
                upstream.answer(parts, body).await
            }
        }))
    }
}

pub fn full(body: impl Into<Bytes>) -> UpBody {
    Full::new(body.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// A pool of accounts `a`, `b`, ... with tokens `tok-a`, `tok-b`, ..., tried in that order
/// (fill-first) so the scripts know who is asked first.
pub fn fill_first_pool(ids: &[&str]) -> Pool {
    Pool::builder()
        .accounts(
            ids.iter()
                .map(|id| Account::new(*id, BearerToken::new(format!("tok-{id}")))),
        )
        .strategy(Strategy::FillFirst)
        .build()
        .unwrap()
}

pub fn json_request(model: &str) -> Request<Full<Bytes>> {
    Request::post("http://upstream.test/v1/messages")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"model":"{model}","max_tokens":16,"messages":[{{"role":"user","content":"hi"}}]}}"#
        ))))
        .unwrap()
}

pub async fn body_text<B>(response: Response<B>) -> String
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A body of chunks with no size hint (like a chunked upload).
#[derive(Debug)]
pub struct Chunks(VecDeque<Bytes>);

impl Chunks {
    pub fn new<S: Into<Bytes>>(chunks: impl IntoIterator<Item = S>) -> Self {
        Chunks(chunks.into_iter().map(Into::into).collect())
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// A body fed through a channel: the test decides when each chunk is sent and when it ends.
#[derive(Debug)]
pub struct Channel(pub tokio::sync::mpsc::Receiver<Result<Bytes, BoxError>>);

impl Body for Channel {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(http_body::Frame::data)))
    }
}
