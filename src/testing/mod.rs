//! In-process mock upstreams for tests (feature `test-util`).
//!
//! ```
//! # #[cfg(feature = "kiro")]
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use tower_account_pool::kiro::{KiroCredential, KiroOptions, KiroPoolExt};
//! use tower_account_pool::testing::KiroMock;
//! use tower_account_pool::{Account, HealthState, Pool};
//!
//! // A Kiro upstream on a local port that knows one account's token and its usage.
//! let mock = KiroMock::start().await;
//! mock.accept_access_token("alice", "at-alice-0000000001");
//! mock.set_usage("alice", serde_json::json!({
//!     "nextDateReset": 4_000_000_000u64,
//!     "usageBreakdownList": [{"currentUsage": 50, "usageLimit": 50}],
//! }));
//! let credential = KiroCredential::from_json(
//!     r#"{"accessToken": "at-alice-0000000001", "refreshToken": "rt-alice-0000000001",
//!         "expiresAt": "2099-01-01T00:00:00Z"}"#,
//!     KiroOptions::with_base_url(mock.url()),
//! )?;
//! let pool = Pool::builder().account(Account::new("alice", credential)).build()?;
//!
//! // The usage probe finds the quota used up: the account waits for its reset.
//! pool.probe_kiro_account("alice").await?;
//! assert_eq!(pool.snapshot().account("alice").unwrap().state, HealthState::QuotaExhausted);
//! assert_eq!(mock.requests_to("/getUsageLimits").len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! - [`KiroMock`] (with feature `kiro`): the Kiro upstream — chat, usage limits and both token
//!   refresh endpoints, speaking the real AWS event-stream framing. Chat replies are scripted
//!   ([`Reply`], [`Event`]: text, emulated thinking, tool calls with their input in fragments,
//!   context usage, exception frames) and chat bodies are checked as strictly as Kiro is known
//!   to check them ([`Validation`]).
//! - [`MockCredential`]: a credential whose refreshes are scripted and counted.

mod credential;
#[cfg(feature = "kiro")]
mod kiro_mock;
#[cfg(feature = "kiro")]
mod kiro_validation;

pub use credential::MockCredential;
#[cfg(feature = "kiro")]
pub use kiro_mock::{Event, KiroMock, RecordedRequest, RefreshRule, Reply, Responder};
#[cfg(feature = "kiro")]
pub use kiro_validation::{Validation, DEFAULT_MAX_INPUT_CHARS, KIRO_MODEL_IDS, MAX_TOOL_NAME_LEN};
