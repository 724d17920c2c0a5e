//! Integration tests of the `pool` area, one binary: each file below was its own test
//! binary before; they share one link and one `support` module.

#[path = "../support/mod.rs"]
mod support;

mod build;
mod concurrency;
mod health;
mod strategies;
mod tracing;
