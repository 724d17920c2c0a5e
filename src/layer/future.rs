//! The response future of [`AccountPoolService`](super::AccountPoolService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

use super::body::ResponseBody;

pub(crate) type BoxedResult<RB, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<RB>>, E>> + Send>>;

/// The future returned by [`AccountPoolService`](super::AccountPoolService): the whole attempt
/// loop of one request, up to its response head.
///
/// It is one boxed future per request (the loop awaits body reads, credential refreshes and
/// backoff sleeps, which a hand-written state machine would not make faster).
pub struct ResponseFuture<RB, E> {
    inner: BoxedResult<RB, E>,
}

impl<RB, E> ResponseFuture<RB, E> {
    pub(crate) fn new(inner: BoxedResult<RB, E>) -> Self {
        ResponseFuture { inner }
    }
}

impl<RB, E> Future for ResponseFuture<RB, E> {
    type Output = Result<Response<ResponseBody<RB>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<RB, E> fmt::Debug for ResponseFuture<RB, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
