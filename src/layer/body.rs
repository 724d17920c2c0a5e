//! Request bodies the layer can replay, and response bodies that hold the account's lease.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::classify::Classifier;
use crate::health::Outcome;
use crate::pool::Lease;

pin_project! {
    /// The request body the inner service receives: the client's body, either buffered whole
    /// (so it can be sent again on another account) or, when it was larger than the replay cap,
    /// the buffered prefix followed by the rest of the stream (sent once).
    pub struct ReplayBody<B> {
        #[pin]
        inner: ReplayInner<B>,
    }
}

pin_project! {
    #[project = ReplayProj]
    enum ReplayInner<B> {
        // Trailers boxed: rare, and a body is moved whole with every request.
        Buffered { data: Option<Bytes>, trailers: Option<Box<HeaderMap>> },
        Streaming { prefix: Option<Bytes>, #[pin] rest: B },
    }
}

impl<B> ReplayBody<B> {
    pub(crate) fn buffered(data: Bytes, trailers: Option<Box<HeaderMap>>) -> Self {
        ReplayBody {
            inner: ReplayInner::Buffered {
                data: Some(data),
                trailers,
            },
        }
    }

    pub(crate) fn streaming(prefix: Bytes, rest: B) -> Self {
        ReplayBody {
            inner: ReplayInner::Streaming {
                prefix: (!prefix.is_empty()).then_some(prefix),
                rest,
            },
        }
    }
}

impl<B> ReplayBody<B> {
    /// The whole body, when it was buffered (every body up to the layer's replay cap): an
    /// inner layer can read it without consuming it.
    pub fn buffered_bytes(&self) -> Option<&Bytes> {
        match &self.inner {
            ReplayInner::Buffered { data, .. } => data.as_ref(),
            ReplayInner::Streaming { .. } => None,
        }
    }

    /// Replaces a buffered body's bytes (an inner layer rewriting the body for one attempt).
    /// A streaming body is left as it is; returns whether the body was replaced.
    #[cfg_attr(not(feature = "kiro"), allow(dead_code))]
    pub(crate) fn replace_buffered(&mut self, bytes: Bytes) -> bool {
        match &mut self.inner {
            ReplayInner::Buffered { data, .. } => {
                *data = Some(bytes);
                true
            }
            ReplayInner::Streaming { .. } => false,
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            ReplayInner::Buffered { data, .. } => f
                .debug_struct("ReplayBody::Buffered")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            ReplayInner::Streaming { prefix, .. } => f
                .debug_struct("ReplayBody::Streaming")
                .field("prefix_len", &prefix.as_ref().map_or(0, Bytes::len))
                .finish_non_exhaustive(),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for ReplayBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().inner.project() {
            ReplayProj::Buffered { data, trailers } => {
                if let Some(data) = data.take().filter(|d| !d.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t))))
            }
            ReplayProj::Streaming { prefix, rest } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                rest.poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            ReplayInner::Buffered { data, trailers } => {
                data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none()
            }
            ReplayInner::Streaming { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            ReplayInner::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ReplayInner::Streaming { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let hint = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + extra);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + extra);
                }
                out
            }
        }
    }
}

/// The first bytes of a body, read before deciding what to do with it.
pub(crate) struct Prefix {
    pub(crate) data: Bytes,
    /// Boxed: rare (gRPC's status), and a prefix is moved with the response it starts.
    pub(crate) trailers: Option<Box<HeaderMap>>,
    /// The body ended within the prefix.
    pub(crate) ended: bool,
}

impl Prefix {
    pub(crate) fn empty() -> Self {
        Prefix {
            data: Bytes::new(),
            trailers: None,
            ended: false,
        }
    }
}

/// Reads frames of `body` until `limit` bytes are held or the body ends. Data is not copied
/// when it arrives in one frame. While the body goes on, `more` is shown the bytes held and may
/// raise the limit (a peeking classifier asking for the rest of a frame); `None`, or a limit
/// not above what is held, ends the read.
///
/// One future for the whole read, without nested ones: it lives in the attempt loop's state,
/// which is allocated per request.
// An `async` block, not an `async fn`: an `async fn` would keep its arguments twice.
#[allow(clippy::manual_async_fn)]
pub(crate) fn read_prefix<'a, B, M>(
    body: &'a mut B,
    limit: usize,
    mut more: M,
) -> impl Future<Output = Result<Prefix, B::Error>> + 'a
where
    B: Body<Data = Bytes> + Unpin,
    M: FnMut(&[u8]) -> Option<usize> + 'a,
{
    async move {
        let mut limit = limit;
        let mut held = 0;
        let mut first: Option<Bytes> = None;
        let mut rest: Option<BytesMut> = None;
        let mut trailers = None;
        let mut ended = body.is_end_stream();
        loop {
            while !ended && held < limit {
                match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
                    None => ended = true,
                    Some(Err(e)) => return Err(e),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            held += data.len();
                            match (&mut first, &mut rest) {
                                (None, _) => first = Some(data),
                                (Some(head), None) => {
                                    let mut buf = BytesMut::with_capacity(held.min(limit) + 64);
                                    buf.extend_from_slice(head);
                                    buf.extend_from_slice(&data);
                                    rest = Some(buf);
                                }
                                (Some(_), Some(buf)) => buf.extend_from_slice(&data),
                            }
                            ended = body.is_end_stream();
                        }
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                trailers = Some(Box::new(t));
                            }
                            ended = body.is_end_stream();
                        }
                    },
                }
            }
            if ended {
                break;
            }
            let data: &[u8] = match (&first, &rest) {
                (_, Some(buf)) => buf,
                (Some(data), None) => data,
                (None, None) => &[],
            };
            match more(data) {
                Some(next) if next > held => limit = next,
                _ => break,
            }
        }
        let data = match (first, rest) {
            (_, Some(buf)) => buf.freeze(),
            (Some(data), None) => data,
            (None, None) => Bytes::new(),
        };
        Ok(Prefix {
            data,
            trailers,
            ended,
        })
    }
}

pin_project! {
    /// The response body the client receives.
    ///
    /// For an upstream response it yields the bytes the classifier read first, then the rest of
    /// the upstream body as it arrives: nothing is buffered beyond what the classifier asked
    /// for. A successful response holds its account's lease until the body ends: the end of
    /// the stream reports `Success`, a body error `Transient`, and a body dropped before its
    /// end (the client went away) `Cancelled`. Answers made by the layer itself (exhaustion,
    /// deadline) are small JSON bodies.
    pub struct ResponseBody<B> {
        #[pin]
        inner: ResponseInner<B>,
    }
}

pin_project! {
    #[project = ResponseProj]
    enum ResponseInner<B> {
        Upstream {
            prefix: Option<Bytes>,
            trailers: Option<Box<HeaderMap>>,
            ended: bool,
            #[pin]
            body: B,
            lease: Option<Lease>,
            // Reads the trailers when they come (a gRPC status after the messages).
            classifier: Option<Arc<dyn Classifier>>,
        },
        Local { data: Option<Bytes> },
    }
}

impl<B: Body<Data = Bytes>> ResponseBody<B> {
    /// The upstream's body after `prefix` was read from it.
    pub(crate) fn upstream_after(
        prefix: Prefix,
        body: B,
        lease: Option<Lease>,
        classifier: Option<Arc<dyn Classifier>>,
    ) -> Self {
        let ended = prefix.ended || body.is_end_stream();
        let mut lease = lease;
        if ended && prefix.trailers.is_none() {
            // Nothing left to stream: the request is done.
            if let Some(lease) = lease.take() {
                lease.report(Outcome::Success);
            }
        }
        ResponseBody {
            inner: ResponseInner::Upstream {
                prefix: (!prefix.data.is_empty()).then_some(prefix.data),
                trailers: prefix.trailers,
                ended,
                body,
                lease,
                classifier,
            },
        }
    }
}

/// Reports the end of a handed-out stream: a success, unless its trailers say otherwise.
fn report_end(
    lease: &mut Option<Lease>,
    classifier: &Option<Arc<dyn Classifier>>,
    trailers: Option<&HeaderMap>,
) {
    let Some(lease) = lease.take() else {
        return;
    };
    let outcome = trailers
        .zip(classifier.as_ref())
        .and_then(|(trailers, classifier)| classifier.classify_trailers(trailers))
        .unwrap_or(Outcome::Success);
    match outcome {
        Outcome::Success => lease.report(outcome),
        failed => {
            let message = match trailers.and_then(|t| t.get("grpc-status")) {
                Some(code) => format!(
                    "grpc-status {} in the trailers ({})",
                    String::from_utf8_lossy(code.as_bytes()),
                    failed.class()
                ),
                None => format!("the stream's trailers say {}", failed.class()),
            };
            lease.report_with_message(failed, &message);
        }
    }
}

impl<B> ResponseBody<B> {
    /// A body made by the layer.
    pub(crate) fn local(data: Bytes) -> Self {
        ResponseBody {
            inner: ResponseInner::Local { data: Some(data) },
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            ResponseInner::Upstream { lease, ended, .. } => f
                .debug_struct("ResponseBody::Upstream")
                .field("lease", lease)
                .field("ended", ended)
                .finish_non_exhaustive(),
            ResponseInner::Local { data } => f
                .debug_struct("ResponseBody::Local")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().inner.project() {
            ResponseProj::Local { data } => Poll::Ready(
                data.take()
                    .filter(|d| !d.is_empty())
                    .map(|d| Ok(Frame::data(d))),
            ),
            ResponseProj::Upstream {
                prefix,
                trailers,
                ended,
                mut body,
                lease,
                classifier,
            } => {
                if let Some(data) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if *ended {
                    let frame = trailers.take().map(|t| {
                        report_end(lease, classifier, Some(&t));
                        Ok(Frame::trailers(*t))
                    });
                    return Poll::Ready(frame);
                }
                let polled = std::task::ready!(body.as_mut().poll_frame(cx));
                match &polled {
                    None => {
                        *ended = true;
                        report_end(lease, classifier, None);
                    }
                    Some(Err(_)) => {
                        *ended = true;
                        if let Some(lease) = lease.take() {
                            lease.report_with_message(
                                Outcome::Transient,
                                "the response body failed mid-stream",
                            );
                        }
                    }
                    Some(Ok(frame)) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            report_end(lease, classifier, Some(trailers));
                        }
                        if body.is_end_stream() {
                            *ended = true;
                            report_end(lease, classifier, None);
                        }
                    }
                }
                Poll::Ready(polled)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            ResponseInner::Local { data } => data.as_ref().is_none_or(Bytes::is_empty),
            ResponseInner::Upstream {
                prefix,
                trailers,
                ended,
                body,
                ..
            } => prefix.is_none() && trailers.is_none() && (*ended || body.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            ResponseInner::Local { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseInner::Upstream {
                prefix,
                ended,
                body,
                ..
            } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                if *ended {
                    return SizeHint::with_exact(extra);
                }
                let hint = body.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + extra);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + extra);
                }
                out
            }
        }
    }
}
