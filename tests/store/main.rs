//! Integration tests of the `store` area, one binary: each file below was its own test
//! binary before; they share one link and one `support` module.

#[path = "../support/mod.rs"]
mod support;

mod json;
mod json_guard;
mod model_cooldowns;
mod redis_store;
mod shared;
mod simulation;
mod sqlite;
mod writer;
