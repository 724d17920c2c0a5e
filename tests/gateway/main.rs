//! Integration tests of the `gateway` area, one binary: each file below was its own test
//! binary before; they share one link and one `support` module.

#[cfg(all(
    feature = "kiro",
    feature = "test-util",
    feature = "sqlite",
    feature = "admin"
))]
#[path = "../../examples/gateway/demo.rs"]
mod demo;
#[cfg(all(feature = "kiro", feature = "sqlite"))]
#[path = "../../examples/gateway/pool_source.rs"]
mod pool_source;
#[cfg(all(feature = "kiro", feature = "admin"))]
#[path = "../../examples/gateway/proxy.rs"]
mod proxy;
#[path = "../support/mod.rs"]
mod support;

mod bad_clients;
mod chaos;
mod demo_run;
mod restart;
mod sqlite_source;
