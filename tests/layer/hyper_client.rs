//! `examples/hyper_client.rs` as a test: a hyper-util client behind the pool fails over from a
//! reset connection and a 529, then streams chunk by chunk.

use crate::hyper_client_example as example;

#[tokio::test]
async fn the_hyper_example_fails_over_twice_and_streams() {
    let summary = example::run().await.unwrap();
    assert_eq!(summary.status, 200);
    assert_eq!((summary.account.as_str(), summary.attempt), ("good", 3));
    assert_eq!(summary.retries, 2);
    assert_eq!(
        summary.chunks,
        [
            "event: message_start\ndata: {}\n\n",
            "event: content_block_delta\ndata: {}\n\n",
            "event: message_stop\ndata: {}\n\n",
        ],
        "each event arrives as its own chunk"
    );
}
