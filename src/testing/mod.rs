//! In-process mock upstreams for tests (feature `test-util`).
//!
//! - [`KiroMock`] (with feature `kiro`): the Kiro upstream — chat, usage limits and both token
//!   refresh endpoints, speaking the real AWS event-stream framing.

#[cfg(feature = "kiro")]
mod kiro_mock;

#[cfg(feature = "kiro")]
pub use kiro_mock::{KiroMock, RecordedRequest, RefreshRule, Reply};
