//! Integration tests of the `kiro` area, one binary: each file below was its own test
//! binary before; they share one link and one `support` module.

#[path = "../support/mod.rs"]
mod support;

mod anthropic;
mod anthropic_layer;
mod anthropic_mock;
mod anthropic_proptest;
mod classify;
mod credential;
mod eventstream;
mod layer;
mod mock;
mod pool_file;
