//! # tower-account-pool
//!
//! Turn a pool of upstream accounts — OAuth tokens, API keys — into one reliable service.
//!
//! For every request the pool **chooses an account**, the caller injects its credential and
//! sends the request, and the outcome it reports **updates the account's health**: rate limits
//! cool down the (account, model) pair, exhausted quota waits for its reset, expired tokens are
//! refreshed, repeated transient failures eject the account and a single half-open probe brings
//! it back.
//!
//! ```
//! use tower_account_pool::{Account, Outcome, Pool, SelectRequest, Strategy};
//! use tower_account_pool::credential::BearerToken;
//!
//! let pool = Pool::builder()
//!     .account(Account::new("primary", BearerToken::new("token-a")).priority(0))
//!     .account(Account::new("spare", BearerToken::new("token-b")).priority(1))
//!     .strategy(Strategy::RoundRobin)
//!     .build()?;
//!
//! let lease = pool.select(&SelectRequest::for_model("claude-sonnet-4-5"))?;
//! assert_eq!(lease.id().as_str(), "primary"); // tier 0 first
//! let mut headers = http::HeaderMap::new();
//! lease.credential().apply(&mut headers)?;
//! // ... send the request ...
//! lease.report(Outcome::rate_limited(None));
//!
//! // The primary is cooling down on that model: the spare takes the next request.
//! let lease = pool.select(&SelectRequest::for_model("claude-sonnet-4-5"))?;
//! assert_eq!(lease.id().as_str(), "spare");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Modules
//!
//! One concern per module; imports point one way: `time`, [`account`], [`credential`] →
//! [`health`] → [`select`] → [`pool`] → [`classify`] → [`layer`] → [`store`], [`config`],
//! `kiro`, `admin`.
//!
//! - [`account`]: [`Account`]s, their settings and the [`SelectedAccount`](account::SelectedAccount)
//!   a request was sent with.
//! - [`credential`]: the [`Credential`](credential::Credential) trait, bearer tokens and API keys.
//! - [`health`]: [`Outcome`]s, the [`HealthPolicy`](health::HealthPolicy), the shared
//!   [`Backoff`](health::Backoff) and the state machine that moves accounts between states.
//! - [`select`]: [`Strategy`], [`SelectRequest`], the typed [`Exhausted`] error, and the roster
//!   the strategies run over.
//! - [`pool`]: the [`Pool`], its builder, [`Lease`](pool::Lease)s,
//!   [`PoolSnapshot`](pool::PoolSnapshot)s, errors, and the
//!   [`AccountHandle`](pool::AccountHandle) hook that stores, configuration sources and
//!   provider modules use.
//! - [`classify`]: the [`Classifier`](classify::Classifier) trait and its per-request maker, the
//!   HTTP and gRPC classifiers, `Retry-After` parsing.
//! - [`layer`]: [`AccountPoolLayer`], the tower middleware that selects, injects, classifies,
//!   reports and retries on another account; its typed [`Rejection`](layer::Rejection)s.
//! - [`store`]: persistence of runtime state (memory, the JSON pool file, SQLite, Redis) by a
//!   background writer.
//! - [`config`]: pool files in three shapes, migration, hot reload, the older system's
//!   `config.json` and SQLite database.
//! - `kiro` (feature `kiro`): Kiro OAuth credentials, the Kiro classifier, the usage probe, the
//!   AWS event-stream codec and the Anthropic Messages API front (`kiro::anthropic`).
//! - `admin` (feature `admin`): the admin API, metrics, health endpoint and dashboard.
//! - `testing` (feature `test-util`): in-process mock upstreams such as `KiroMock`, and
//!   `MockCredential`.
//!
//! The crate root re-exports only what nearly every user names: [`Pool`], [`Account`],
//! [`AccountId`], [`Outcome`], [`HealthState`], [`SelectRequest`], [`Strategy`], [`Exhausted`]
//! and [`AccountPoolLayer`]; everything else is imported from its module.
//!
//! ## Cargo features
//!
//! The default build is lean. Optional parts:
//!
//! - `admin`: the admin API, metrics and dashboard (on axum);
//! - `kiro`: Kiro OAuth credentials, classifier, usage probe and the Anthropic-API front;
//! - `sqlite`: the SQLite store and the older system's SQLite database as a pool source;
//! - `redis`: the Redis store, for several replicas;
//! - `test-util`: in-process mock upstreams for tests.
#![deny(missing_docs, unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod account;
#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;
pub mod classify;
pub mod config;
pub mod credential;
pub mod health;
#[cfg(feature = "kiro")]
#[cfg_attr(docsrs, doc(cfg(feature = "kiro")))]
pub mod kiro;
pub mod layer;
pub mod pool;
mod private_file;
pub mod select;
pub mod store;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
mod time;

pub use account::{Account, AccountId};
pub use health::{HealthState, Outcome};
pub use layer::AccountPoolLayer;
pub use pool::Pool;
pub use select::{Exhausted, SelectRequest, Strategy};

/// The README's Rust examples, compiled and run as doctests (with every feature, as CI builds).
#[cfg(all(
    doctest,
    feature = "admin",
    feature = "kiro",
    feature = "sqlite",
    feature = "redis",
    feature = "test-util"
))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
