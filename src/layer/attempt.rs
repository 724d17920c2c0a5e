//! The attempt loop: select, inject, call, classify, report, retry.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;

use super::body::{read_prefix, Prefix, ReplayBody, ResponseBody};
use super::rejection::{reject, OnRejection, Rejection};
use super::Config;
use crate::account::{AccountId, SelectedAccount};
use crate::classify::{Classifier, HeadVerdict, HttpClassifier};
use crate::credential::RefreshMode;
use crate::health::{Outcome, OutcomeClass};
use crate::pool::Lease;
use crate::select::SelectRequest;

/// A request body as the loop holds it.
enum Held<B> {
    /// Buffered whole: sent as many times as needed.
    Replayable {
        data: Bytes,
        // Boxed: rare (a request with trailers), and the loop's state keeps this for the
        // whole request.
        trailers: Option<Box<http::HeaderMap>>,
    },
    /// Larger than the replay cap: sent once.
    Once(Option<ReplayBody<B>>),
}

impl<B> Held<B> {
    fn replayable(&self) -> bool {
        matches!(self, Held::Replayable { .. })
    }

    fn next(&mut self) -> Option<ReplayBody<B>> {
        match self {
            Held::Replayable { data, trailers } => {
                Some(ReplayBody::buffered(data.clone(), trailers.clone()))
            }
            Held::Once(body) => body.take(),
        }
    }
}

/// How much of a body too large to replay is read to find its model.
const OVERSIZE_PEEK: usize = 64 * 1024;

/// Buffers a request body up to `cap` bytes (the error of a broken body is not kept: the
/// client gets a 400).
async fn hold<B>(mut body: B, cap: usize) -> Result<(Held<B>, Bytes), ()>
where
    B: Body<Data = Bytes> + Unpin,
{
    let declared_too_large = body.size_hint().lower() > cap as u64;
    let limit = if declared_too_large {
        OVERSIZE_PEEK.min(cap.max(1))
    } else {
        cap.saturating_add(1)
    };
    let prefix = read_prefix(&mut body, limit, |_| None)
        .await
        .map_err(drop)?;
    if prefix.ended && prefix.data.len() <= cap {
        let data = prefix.data;
        return Ok((
            Held::Replayable {
                data: data.clone(),
                trailers: prefix.trailers,
            },
            data,
        ));
    }
    let data = prefix.data;
    Ok((
        Held::Once(Some(ReplayBody::streaming(data.clone(), body))),
        data,
    ))
}

/// What one call to the upstream gave.
// Boxing the response variant would cost an allocation per request; the enum lives in the
// request's future, not in a collection.
#[allow(clippy::large_enum_variant)]
enum Answer<RB, E> {
    Response(http::response::Parts, Prefix, RB),
    Error(E),
    TimedOut,
    /// The account's credential could not be put in the request; nothing was sent.
    NotSent,
}

#[inline(always)]
fn request_for<B>(
    parts: &http::request::Parts,
    body: ReplayBody<B>,
    lease: &Lease,
    selected: &SelectedAccount,
) -> Result<Request<ReplayBody<B>>, crate::credential::CredentialError> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    // With room for the credential's headers: a plain clone is exactly full, and the
    // credential's insert would then grow it (a reallocation on every attempt).
    let headers = request.headers_mut();
    headers.reserve(parts.headers.len() + 2);
    for (name, value) in &parts.headers {
        headers.append(name.clone(), value.clone());
    }
    *request.extensions_mut() = parts.extensions.clone();
    lease.credential().apply(request.headers_mut())?;
    request.extensions_mut().insert(selected.clone());
    Ok(request)
}

/// An upstream answer that was retried, kept in case no other account can take the request.
type Retried<RB, E> = (Answer<RB, E>, OutcomeClass, SelectedAccount);

/// Most bytes a peeking classifier may ask to hold back ([`Classifier::peek_more`]).
const MAX_PEEK: usize = 64 * 1024;

/// Awaits `$future` until `$until` (an `Option<Instant>`): `Some(output)`, or `None` when the
/// deadline passed first. One await point whether or not there is a deadline, so what is live
/// across it is stored once; the future is pinned where it is made (a wrapper future would be
/// moved into place on every await), and the deadline's timer is boxed, there only when a
/// deadline is set.
macro_rules! until {
    ($until:expr, $future:expr) => {{
        let mut timer = $until.map(|at| Box::pin(tokio::time::sleep_until(at)));
        let mut future = std::pin::pin!($future);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            match timer.as_mut().map(|timer| timer.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(None),
                _ => Poll::Pending,
            }
        })
        .await
    }};
}

/// Reads an answer a classifier with none behind it passes on ([`HeadVerdict::Pass`]).
static PASSED_ON: HttpClassifier = HttpClassifier::new();

/// The classifier that decides an answer, and its verdict on the head (never `Pass`).
#[inline]
fn head_verdict<'c>(
    classifier: &'c dyn Classifier,
    head: &http::response::Parts,
) -> (&'c dyn Classifier, HeadVerdict) {
    match classifier.classify_head(head.status, &head.headers) {
        HeadVerdict::Pass => (
            &PASSED_ON,
            PASSED_ON.classify_head(head.status, &head.headers),
        ),
        verdict => (classifier, verdict),
    }
}

/// An upstream answer as the client's response. A successful one's body holds the account's
/// lease (and the classifier that reads its trailers) until it ends.
#[inline(always)]
fn upstream_response<RB>(
    head: http::response::Parts,
    prefix: Prefix,
    body: RB,
    lease: Option<(Lease, Arc<dyn Classifier>)>,
    selected: SelectedAccount,
) -> Response<ResponseBody<RB>>
where
    RB: Body<Data = Bytes>,
{
    let (lease, classifier) = lease.unzip();
    let mut response = Response::from_parts(
        head,
        ResponseBody::upstream_after(prefix, body, lease, classifier),
    );
    response.extensions_mut().insert(selected);
    response
}

/// What the loop hands back when it stops on an upstream answer.
fn hand_out<RB, E>(
    answer: Answer<RB, E>,
    lease: Option<(Lease, Arc<dyn Classifier>)>,
    selected: SelectedAccount,
    on_rejection: Option<&OnRejection>,
) -> Result<Response<ResponseBody<RB>>, E>
where
    RB: Body<Data = Bytes>,
{
    match answer {
        Answer::Response(parts, prefix, body) => {
            Ok(upstream_response(parts, prefix, body, lease, selected))
        }
        Answer::Error(e) => Err(e),
        Answer::TimedOut | Answer::NotSent => {
            let rejection = if matches!(answer, Answer::TimedOut) {
                Rejection::UpstreamTimeout
            } else {
                Rejection::CredentialNotApplied
            };
            Ok(reject_after(on_rejection, rejection, selected))
        }
    }
}

/// The layer's own answer after an account was tried: the [`SelectedAccount`] goes with it.
fn reject_after<RB>(
    on_rejection: Option<&OnRejection>,
    rejection: Rejection,
    selected: SelectedAccount,
) -> Response<ResponseBody<RB>> {
    let mut response = reject(on_rejection, rejection);
    response.extensions_mut().insert(selected);
    response
}

fn describe<RB, E>(answer: &Answer<RB, E>, outcome: Outcome) -> Cow<'static, str> {
    match answer {
        Answer::Response(parts, ..) => match parts.headers.get("grpc-status") {
            Some(code) => Cow::Owned(format!(
                "upstream answered grpc-status {} ({})",
                String::from_utf8_lossy(code.as_bytes()),
                outcome.class()
            )),
            None => Cow::Owned(format!(
                "upstream answered {} ({})",
                parts.status,
                outcome.class()
            )),
        },
        Answer::Error(_) => Cow::Borrowed("upstream call failed"),
        Answer::TimedOut => Cow::Borrowed("upstream did not answer in time"),
        Answer::NotSent => Cow::Borrowed("the credential could not be applied"),
    }
}

/// The attempt loop of one request.
///
/// Its state machine is boxed once per request and moved whole, so it is kept small: every
/// await point stores only what is live across it (values are scoped tightly, each deadline
/// is one `until!` await, and the retry backoff is slept at the top of the next
/// round, where the previous answer is gone).
// An `async` block, not an `async fn`: an `async fn` keeps its arguments in the state machine
// beside the copies its body works on (here 264 bytes more in every state).
#[allow(clippy::manual_async_fn)]
pub(crate) fn run<S, B, RB>(
    config: Arc<Config>,
    mut inner: S,
    parts: http::request::Parts,
    body: B,
) -> impl Future<Output = Result<Response<ResponseBody<RB>>, S::Error>>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
    S::Error: 'static,
    B: Body<Data = Bytes> + Unpin,
    RB: Body<Data = Bytes> + Unpin,
{
    async move {
        let deadline = config.deadline.map(|d| Instant::now() + d);
        let on_rejection = config.on_rejection.as_ref();
        let (mut held, bytes) = match until!(deadline, hold(body, config.replay_cap)) {
            None => return Ok(reject(on_rejection, Rejection::BodyTimeout)),
            Some(Err(())) => return Ok(reject(on_rejection, Rejection::BodyUnreadable)),
            Some(Ok(read)) => read,
        };
        let model = config.model.extract(&parts, &bytes);
        let affinity = config
            .affinity
            .as_ref()
            .and_then(|a| a.extract(&parts, &bytes));
        let classifier = config.classifier.for_request(&parts);
        if let Some(budget) = &config.budget {
            budget.deposit();
        }

        let mut tried: Vec<AccountId> = Vec::new();
        // The last upstream answer that was retried, in case no other account can take the request.
        // Boxed: it is only set on a retry, and keeps the request's state small.
        let mut last: Option<Box<Retried<RB, S::Error>>> = None;
        let mut calls = 0u32;
        // The backoff before the next round, slept at its top.
        let mut pause: Option<std::time::Duration> = None;
        loop {
            if let Some(delay) = pause.take() {
                tokio::time::sleep(delay).await;
            }
            let lease = match config.pool.select(&SelectRequest {
                model: model.as_deref(),
                affinity_key: affinity.as_deref(),
                exclude: &tried,
            }) {
                Ok(lease) => lease,
                Err(exhausted) => {
                    tracing::debug!(%exhausted, tried = tried.len(), "no account for the request");
                    return match last.map(|last| *last) {
                        Some((answer, class, selected))
                            if !matches!(
                                class,
                                OutcomeClass::AuthExpired | OutcomeClass::AuthInvalid
                            ) =>
                        {
                            hand_out(answer, None, selected, on_rejection)
                        }
                        _ => Ok(reject(on_rejection, Rejection::Exhausted(exhausted))),
                    };
                }
            };
            let mut refreshed = false;
            let (answer, outcome, selected) = loop {
                calls += 1;
                let selected = lease.selected(calls);
                // One call, and what the classifier asks to read; inline (not a nested future) so
                // its state is not copied on every attempt. The request lives in this block only.
                let (answer, outcome) = 'call: {
                    let until = match (deadline, config.attempt_timeout) {
                        (Some(d), Some(t)) => Some(d.min(Instant::now() + t)),
                        (d, t) => d.or_else(|| t.map(|t| Instant::now() + t)),
                    };
                    // The inner service not becoming ready is not the account's failure (it was
                    // never contacted), and another account would wait for the same service: no
                    // penalty, no retry.
                    match until!(until, std::future::poll_fn(|cx| inner.poll_ready(cx))) {
                        None => break 'call (Answer::TimedOut, Outcome::Cancelled),
                        Some(Err(e)) => break 'call (Answer::Error(e), Outcome::Cancelled),
                        Some(Ok(())) => {}
                    }
                    // Made once the service is ready, so it is not held across that wait.
                    let Some(body) = held.next() else {
                        // Not reached: a body that can be sent only once is never sent again.
                        return Ok(reject(on_rejection, Rejection::BodyAlreadySent));
                    };
                    let request = match request_for(&parts, body, &lease, &selected) {
                        Ok(request) => request,
                        Err(e) => {
                            tracing::warn!(account = %lease.id(), error = %e, "credential could not be applied");
                            break 'call (Answer::NotSent, Outcome::AuthInvalid);
                        }
                    };
                    let response = match until!(until, inner.call(request)) {
                        None => break 'call (Answer::TimedOut, Outcome::Transient),
                        Some(Err(e)) => {
                            let outcome = match classifier.classify_error(&e) {
                                Outcome::Success => Outcome::Cancelled,
                                outcome => outcome,
                            };
                            break 'call (Answer::Error(e), outcome);
                        }
                        Some(Ok(response)) => response,
                    };
                    let (head, mut body) = response.into_parts();
                    let (decider, verdict) = head_verdict(&*classifier, &head);
                    let (limit, peek) = match verdict {
                        // A success is handed out from here: the answer is not moved through the
                        // loop's bookkeeping (its response head and body are a few hundred bytes).
                        HeadVerdict::Final(Outcome::Success) => {
                            return Ok(upstream_response(
                                head,
                                Prefix::empty(),
                                body,
                                Some((lease, classifier)),
                                selected,
                            ))
                        }
                        HeadVerdict::Final(outcome) => {
                            break 'call (Answer::Response(head, Prefix::empty(), body), outcome)
                        }
                        HeadVerdict::ReadBody { limit } => (limit, false),
                        HeadVerdict::Peek { bytes } => (bytes, true),
                        // Not reached: `head_verdict` never passes.
                        HeadVerdict::Pass => (0, false),
                    };
                    // A peeking classifier may ask for more, e.g. the rest of a stream's first
                    // frame, or the frame after a metadata-only one.
                    let more = |held: &[u8]| {
                        peek.then(|| decider.peek_more(head.status, &head.headers, held))
                            .flatten()
                            .filter(|&more| more <= MAX_PEEK)
                    };
                    let read = read_prefix(&mut body, limit, more);
                    match until!(until, read) {
                        Some(Ok(prefix)) => {
                            let outcome = decider.classify_body(
                                head.status,
                                &head.headers,
                                &prefix.data,
                                prefix.ended,
                            );
                            if outcome == Outcome::Success {
                                return Ok(upstream_response(
                                    head,
                                    prefix,
                                    body,
                                    Some((lease, classifier)),
                                    selected,
                                ));
                            }
                            (Answer::Response(head, prefix, body), outcome)
                        }
                        // The body broke or stalled while we read it: the client could not use it
                        // either.
                        _ => (Answer::TimedOut, Outcome::Transient),
                    }
                };
                if outcome != Outcome::AuthExpired {
                    break (answer, outcome, selected);
                }
                if refreshed {
                    // Rejected again right after a refresh: the credential is not usable.
                    break (answer, Outcome::AuthInvalid, selected);
                }
                if !held.replayable() {
                    // Cannot send again: the pool refreshes the credential in the background.
                    break (answer, outcome, selected);
                }
                refreshed = true;
                let refresh = lease.credential().refresh(RefreshMode::Forced);
                match until!(deadline, refresh) {
                    Some(Ok(())) => {
                        tracing::debug!(account = %lease.id(), "credential refreshed; sending again on the same account");
                        config.pool.record_retry();
                        drop(answer);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(account = %lease.id(), error = %e, "forced credential refresh failed");
                        // A refresh that could not reach its server says nothing about the
                        // credential: the pool keeps refreshing it in the background (and retries
                        // soon). Any other failure means the credential is invalid.
                        let outcome = match e {
                            crate::credential::CredentialError::Unavailable(_) => {
                                Outcome::AuthExpired
                            }
                            _ => Outcome::AuthInvalid,
                        };
                        break (answer, outcome, selected);
                    }
                    None => break (Answer::TimedOut, Outcome::Transient, selected),
                }
            };

            let outcome = match outcome {
                Outcome::Success => outcome,
                failed => classifier.refine(failed, &selected),
            };
            match outcome.class() {
                OutcomeClass::Success => {
                    return hand_out(answer, Some((lease, classifier)), selected, on_rejection)
                }
                OutcomeClass::ClientError | OutcomeClass::Cancelled => {
                    lease.report(outcome);
                    return hand_out(answer, None, selected, on_rejection);
                }
                class => {
                    let message = describe(&answer, outcome);
                    let id = lease.id().clone();
                    lease.report_with_message(outcome, &message);
                    let timed_out = matches!(answer, Answer::TimedOut)
                        && deadline.is_some_and(|d| Instant::now() >= d);
                    let retries = tried.len() as u32 + 1;
                    let delay = config.backoff.map(|b| b.delay(retries));
                    let in_time =
                        deadline.is_none_or(|d| Instant::now() + delay.unwrap_or_default() < d);
                    let retry = !timed_out
                        && retries < config.max_attempts
                        && held.replayable()
                        && in_time
                        && config.budget.as_ref().is_none_or(|b| b.withdraw());
                    if !retry {
                        tracing::debug!(account = %id, %message, "not retried");
                        if matches!(class, OutcomeClass::AuthExpired | OutcomeClass::AuthInvalid) {
                            // The upstream rejected the pool's credential, not the client's request:
                            // its 401 or 403 would tell the client its own key is bad.
                            drop(answer);
                            return Ok(reject_after(
                                on_rejection,
                                Rejection::CredentialRejected,
                                selected,
                            ));
                        }
                        return hand_out(answer, None, selected, on_rejection);
                    }
                    tracing::debug!(account = %id, %message, attempt = retries, "retrying on another account");
                    config.pool.record_retry();
                    tried.push(id);
                    last = Some(Box::new((answer, class, selected)));
                    pause = delay;
                }
            }
        }
    }
}
