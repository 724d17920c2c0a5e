//! Integration tests of the `admin` area, one binary: each file below was its own test
//! binary before; they share one link and one `support` module.

// The admin tests need `test-util` too: their refreshable account is `testing::MockCredential`.
#[cfg(all(feature = "admin", feature = "test-util"))]
mod admin_support;
#[path = "../support/mod.rs"]
mod support;

mod api;
mod browser;
mod secrets;
