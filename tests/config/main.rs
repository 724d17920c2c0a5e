//! Integration tests of the `config` area, one binary: each file below was its own test
//! binary before; they share one link and one `support` module.

#[path = "../support/mod.rs"]
mod support;

mod legacy;
mod load;
mod migrate;
mod parsers;
mod reload;
mod sqlite;
