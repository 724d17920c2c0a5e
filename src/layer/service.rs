//! [`AccountPoolService`]: the service [`AccountPoolLayer`](super::AccountPoolLayer) makes.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::{ReplayBody, ResponseBody};
use super::future::ResponseFuture;
use super::{attempt, Config};
use crate::pool::Pool;

/// The service made by [`AccountPoolLayer`](super::AccountPoolLayer). Cheap to clone: clones share the pool and the
/// retry budget.
#[derive(Clone)]
pub struct AccountPoolService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> AccountPoolService<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        AccountPoolService { inner, config }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.config.pool
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> fmt::Debug for AccountPoolService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountPoolService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, B, RB> Service<Request<B>> for AccountPoolService<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    RB: Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<RB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The ready service goes with the request; this one gets a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // Boxed where it is made: every move of the loop's state copies it whole.
        let (parts, body) = request.into_parts();
        ResponseFuture::new(Box::pin(attempt::run(
            self.config.clone(),
            inner,
            parts,
            body,
        )))
    }
}
