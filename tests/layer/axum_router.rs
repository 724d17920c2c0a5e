//! `examples/axum_router.rs` as a test: the wrapped router fails over from a rate-limited
//! account.

use crate::axum_router_example as example;

#[tokio::test]
async fn the_axum_example_fails_over_and_then_avoids_the_limited_account() {
    let summary = example::run().await.unwrap();
    assert_eq!(
        summary.requests,
        [
            (200, "beta".to_owned(), "2".to_owned()),
            (200, "beta".to_owned(), "1".to_owned()),
            (200, "beta".to_owned(), "1".to_owned()),
        ]
    );
    assert_eq!(summary.retries, 1);
}
