//! Integration tests of the `layer` area, one binary: each file below was its own test
//! binary before; they share one link and one `support` module.

#[allow(dead_code)]
#[path = "../../examples/axum_router.rs"]
mod axum_router_example;
#[allow(dead_code)]
#[path = "../../examples/hyper_client.rs"]
mod hyper_client_example;
mod layer_support;
#[path = "../support/mod.rs"]
mod support;
#[allow(dead_code)]
#[path = "../../examples/tonic_client.rs"]
mod tonic_client_example;

mod axum_router;
mod classify;
mod hyper_client;
mod rejection;
mod reqwest_client;
mod retry;
mod secrets;
mod streaming;
mod tonic_client;
