//! Combinators: [`MapOutcome`] and [`Fallback`], made by [`Classifier::map_outcome`] and
//! [`Classifier::fallback`].

use std::any::Any;
use std::fmt;

use http::{HeaderMap, StatusCode};

use super::{Classifier, HeadVerdict};
use crate::account::SelectedAccount;
use crate::health::Outcome;

/// A classifier whose failures are adjusted by a closure that also sees the account: made by
/// [`Classifier::map_outcome`].
#[derive(Clone)]
pub struct MapOutcome<C, F> {
    inner: C,
    f: F,
}

impl<C, F> MapOutcome<C, F> {
    pub(crate) fn new(inner: C, f: F) -> Self {
        MapOutcome { inner, f }
    }

    /// The classifier whose outcomes are mapped.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }
}

impl<C: fmt::Debug, F> fmt::Debug for MapOutcome<C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapOutcome")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<C, F> Classifier for MapOutcome<C, F>
where
    C: Classifier,
    F: Fn(Outcome, &SelectedAccount) -> Outcome + Send + Sync + 'static,
{
    fn classify_head(&self, status: StatusCode, headers: &HeaderMap) -> HeadVerdict {
        self.inner.classify_head(status, headers)
    }

    fn classify_body(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        complete: bool,
    ) -> Outcome {
        self.inner.classify_body(status, headers, body, complete)
    }

    fn peek_more(&self, status: StatusCode, headers: &HeaderMap, prefix: &[u8]) -> Option<usize> {
        self.inner.peek_more(status, headers, prefix)
    }

    fn classify_trailers(&self, trailers: &HeaderMap) -> Option<Outcome> {
        self.inner.classify_trailers(trailers)
    }

    fn classify_error(&self, error: &dyn Any) -> Outcome {
        self.inner.classify_error(error)
    }

    fn refine(&self, outcome: Outcome, account: &SelectedAccount) -> Outcome {
        (self.f)(self.inner.refine(outcome, account), account)
    }
}

/// A classifier that hands the answers it [passes](HeadVerdict::Pass) on to another: made by
/// [`Classifier::fallback`].
///
/// - Head, body and peek: the first classifier's, unless its
///   [`classify_head`](Classifier::classify_head) passes; then the second's, for that answer.
/// - Trailers: the first's outcome, else the second's.
/// - Errors of the inner service: the first's.
/// - [`refine`](Classifier::refine): the first's, then the second's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback<A, B> {
    first: A,
    second: B,
}

impl<A, B> Fallback<A, B> {
    pub(crate) fn new(first: A, second: B) -> Self {
        Fallback { first, second }
    }

    /// The classifier asked first.
    pub fn first(&self) -> &A {
        &self.first
    }

    /// The classifier that decides what the first passes on.
    pub fn second(&self) -> &B {
        &self.second
    }
}

impl<A: Classifier, B: Classifier> Fallback<A, B> {
    /// The classifier that decides this answer.
    fn decider(&self, status: StatusCode, headers: &HeaderMap) -> &dyn Classifier {
        match self.first.classify_head(status, headers) {
            HeadVerdict::Pass => &self.second,
            _ => &self.first,
        }
    }
}

impl<A: Classifier, B: Classifier> Classifier for Fallback<A, B> {
    fn classify_head(&self, status: StatusCode, headers: &HeaderMap) -> HeadVerdict {
        match self.first.classify_head(status, headers) {
            HeadVerdict::Pass => self.second.classify_head(status, headers),
            verdict => verdict,
        }
    }

    fn classify_body(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        complete: bool,
    ) -> Outcome {
        self.decider(status, headers)
            .classify_body(status, headers, body, complete)
    }

    fn peek_more(&self, status: StatusCode, headers: &HeaderMap, prefix: &[u8]) -> Option<usize> {
        self.decider(status, headers)
            .peek_more(status, headers, prefix)
    }

    fn classify_trailers(&self, trailers: &HeaderMap) -> Option<Outcome> {
        self.first
            .classify_trailers(trailers)
            .or_else(|| self.second.classify_trailers(trailers))
    }

    fn classify_error(&self, error: &dyn Any) -> Outcome {
        self.first.classify_error(error)
    }

    fn refine(&self, outcome: Outcome, account: &SelectedAccount) -> Outcome {
        self.second
            .refine(self.first.refine(outcome, account), account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::HttpClassifier;

    /// Decides 418 itself, passes on the rest.
    struct Teapot;

    impl Classifier for Teapot {
        fn classify_head(&self, status: StatusCode, _headers: &HeaderMap) -> HeadVerdict {
            match status.as_u16() {
                418 => HeadVerdict::ReadBody { limit: 8 },
                _ => HeadVerdict::Pass,
            }
        }

        fn classify_body(&self, _: StatusCode, _: &HeaderMap, _: &[u8], _: bool) -> Outcome {
            Outcome::Suspended
        }
    }

    #[test]
    fn a_fallback_decides_the_whole_answer_its_first_classifier_passes_on() {
        let c = Teapot.fallback(HttpClassifier::new());
        let h = HeaderMap::new();
        let teapot = StatusCode::IM_A_TEAPOT;
        assert_eq!(
            c.classify_head(teapot, &h),
            HeadVerdict::ReadBody { limit: 8 }
        );
        assert_eq!(c.classify_body(teapot, &h, b"", true), Outcome::Suspended);
        let limited = StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(
            c.classify_head(limited, &h),
            HeadVerdict::ReadBody { limit: 16 * 1024 }
        );
        assert_eq!(
            c.classify_body(limited, &h, b"{}", true),
            Outcome::rate_limited(None)
        );
        assert_eq!(c.classify_error(&()), Outcome::Transient);
    }
}
