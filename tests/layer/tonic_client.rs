//! `examples/tonic_client.rs` as a test: a tonic `Channel` behind the pool, gRPC statuses
//! classified, the call fails over to the one healthy account.

use crate::tonic_client_example as example;

use tower_account_pool::HealthState;

#[tokio::test]
async fn the_tonic_example_classifies_grpc_statuses_and_fails_over() {
    let summary = example::run().await.unwrap();
    assert_eq!(summary.message, "Hello, pool!");
    assert_eq!((summary.account.as_str(), summary.attempt), ("ok", 4));
    assert_eq!(summary.retries, 3);
    assert_eq!(
        summary.states,
        [
            ("down".to_owned(), HealthState::Healthy), // one transient failure: not ejected yet
            ("limited".to_owned(), HealthState::RateLimited),
            ("expired".to_owned(), HealthState::AuthInvalid), // a static token cannot refresh
            ("ok".to_owned(), HealthState::Healthy),
        ]
    );
}
