//! Per-request classifiers: [`MakeClassifier`] and [`SharedClassifier`].

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use http::request::Parts;

use super::Classifier;

/// Makes the [`Classifier`] for one request, from its head (method, URI, headers and
/// extensions), as tower-http's `MakeClassifier` does. Given to the layer by
/// [`AccountPoolLayer::make_classifier`](crate::layer::AccountPoolLayer::make_classifier); a
/// classifier that is the same for every request goes to
/// [`classifier`](crate::layer::AccountPoolLayer::classifier) (a [`SharedClassifier`]).
///
/// Closures `Fn(&Parts) -> C` are makers too. A maker whose classifier type is
/// `Arc<dyn Classifier>` (for example one of a few classifiers built beforehand) costs no
/// allocation per request; any other classifier is put in an `Arc` for the request.
///
/// ```
/// use std::sync::Arc;
/// use tower_account_pool::classify::{Classifier, GrpcClassifier, HttpClassifier, MakeClassifier};
/// use tower_account_pool::layer::AccountPoolLayer;
/// # use tower_account_pool::{Account, Pool, credential::BearerToken};
/// # let pool = Pool::builder().account(Account::new("a", BearerToken::new("t"))).build().unwrap();
///
/// // gRPC calls and plain HTTP calls through one layer.
/// let grpc: Arc<dyn Classifier> = Arc::new(GrpcClassifier::default());
/// let http: Arc<dyn Classifier> = Arc::new(HttpClassifier::new());
/// let layer = AccountPoolLayer::new(pool).make_classifier(move |request: &http::request::Parts| {
///     let is_grpc = request
///         .headers
///         .get(http::header::CONTENT_TYPE)
///         .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
///     if is_grpc { grpc.clone() } else { http.clone() }
/// });
/// # let _ = layer;
/// ```
pub trait MakeClassifier: Send + Sync + 'static {
    /// The classifier made for a request.
    type Classifier: Classifier;

    /// The classifier for the request whose head is `request`.
    fn make_classifier(&self, request: &Parts) -> Self::Classifier;
}

impl<F, C> MakeClassifier for F
where
    F: Fn(&Parts) -> C + Send + Sync + 'static,
    C: Classifier,
{
    type Classifier = C;

    fn make_classifier(&self, request: &Parts) -> C {
        self(request)
    }
}

/// One classifier for every request: the [`MakeClassifier`] of a [`Classifier`] (as
/// tower-http's `SharedClassifier`). Making it per request clones an `Arc`.
#[derive(Clone)]
pub struct SharedClassifier(Arc<dyn Classifier>);

impl SharedClassifier {
    /// Uses `classifier` for every request.
    pub fn new(classifier: impl Classifier) -> Self {
        SharedClassifier(Arc::new(classifier))
    }
}

impl fmt::Debug for SharedClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedClassifier").finish_non_exhaustive()
    }
}

impl MakeClassifier for SharedClassifier {
    type Classifier = Arc<dyn Classifier>;

    fn make_classifier(&self, _request: &Parts) -> Arc<dyn Classifier> {
        self.0.clone()
    }
}

/// Where the layer gets each request's classifier.
#[derive(Clone)]
pub(crate) enum ClassifierSource {
    /// The same classifier for every request (a [`SharedClassifier`]): an `Arc` clone.
    Shared(Arc<dyn Classifier>),
    /// A maker, its classifier type erased.
    PerRequest(Arc<dyn DynMakeClassifier>),
}

impl ClassifierSource {
    pub(crate) fn new<M: MakeClassifier>(maker: M) -> Self {
        match (&maker as &dyn Any).downcast_ref::<SharedClassifier>() {
            Some(shared) => ClassifierSource::Shared(shared.0.clone()),
            None => ClassifierSource::PerRequest(Arc::new(maker)),
        }
    }

    /// The classifier for the request whose head is `request`.
    #[inline]
    pub(crate) fn for_request(&self, request: &Parts) -> Arc<dyn Classifier> {
        match self {
            ClassifierSource::Shared(classifier) => classifier.clone(),
            ClassifierSource::PerRequest(maker) => maker.make(request),
        }
    }
}

/// A [`MakeClassifier`] with its classifier type erased.
pub(crate) trait DynMakeClassifier: Send + Sync + 'static {
    fn make(&self, request: &Parts) -> Arc<dyn Classifier>;
}

impl<M: MakeClassifier> DynMakeClassifier for M {
    fn make(&self, request: &Parts) -> Arc<dyn Classifier> {
        into_shared(self.make_classifier(request))
    }
}

/// `classifier` as an `Arc<dyn Classifier>`: the same `Arc` when it is one, else a new one.
fn into_shared<C: Classifier>(classifier: C) -> Arc<dyn Classifier> {
    let mut slot = Some(classifier);
    if let Some(shared) = (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<Arc<dyn Classifier>>>()
        .and_then(Option::take)
    {
        return shared;
    }
    match slot {
        Some(classifier) => Arc::new(classifier),
        None => unreachable!("taken only when it is an Arc<dyn Classifier>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::HttpClassifier;

    #[test]
    fn a_shared_classifier_is_handed_out_without_a_new_arc() {
        let shared: Arc<dyn Classifier> = Arc::new(HttpClassifier::new());
        let (parts, ()) = http::Request::new(()).into_parts();
        let made = SharedClassifier(shared.clone()).make(&parts);
        assert!(Arc::ptr_eq(&made, &shared));
        let source = ClassifierSource::new(SharedClassifier(shared.clone()));
        assert!(matches!(source, ClassifierSource::Shared(_)));
        assert!(Arc::ptr_eq(&source.for_request(&parts), &shared));
        let made = (|_: &Parts| HttpClassifier::new()).make(&parts);
        assert_eq!(Arc::strong_count(&made), 1);
    }
}
