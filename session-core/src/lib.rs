//! Server-side web sessions with pluggable storage backends.
//!
//! - [`id`]: 256-bit session IDs, strictly parsed, redacted everywhere.
//! - [`key`]: storage keys (one-way hashes of IDs) and audit tags.
//! - [`record`]: what stores keep, and the id-free per-user summaries.
//! - [`label`]: the per-session label (a device name) shown in listings.
//! - [`codec`]: the byte layouts backends share (record header offsets,
//!   bounds-checked readers and writers, user-id tags).
//! - [`store`]: the [`SessionStore`] contract every backend implements.
//! - [`policy`]: timeouts, touch throttling, per-user limits, conflicts.
//! - [`session`]: one request's typed, change-tracked view of a session.
//! - [`manager`]: [`SessionManager`], the API applications use.
//! - [`token`]: one-time tokens for sensitive operations.
//! - [`cookie`]: the session cookie's attributes and parsing.
//! - [`clock`]: timestamps and the injectable clock.
//! - [`skew`]: [`ClockSkew`], a server's clock measured against the application's.
//! - [`memory`]: [`MemoryStore`], the embedded default store.
//! - [`expiry`]: [`ExpiryTask`], the background deletion of expired
//!   sessions every store's `spawn_*` method returns.
//! - [`redact`]: credentials out of URLs, error messages and error chains.
//! - [`retry`]: [`RetryPolicy`], the one rule for retrying lost compare-and-sets.
//! - `conformance` (feature `conformance`): the suite every backend runs.
//!
//! ```
//! use session_core::{MemoryStore, SessionManager};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), session_core::SessionError> {
//! let manager = SessionManager::new(MemoryStore::new());
//!
//! // Request 1: log in; the response carries the Set-Cookie.
//! let mut session = manager.start();
//! manager.login(&mut session, "alice").await?;
//! session.insert("theme", "dark")?;
//! manager.commit(&mut session).await?;
//! let set_cookie = manager.response_cookie(&session).expect("new session");
//!
//! // Request 2: the browser sends the cookie back.
//! let header = format!("{}={}", set_cookie.name(), set_cookie.value());
//! let session = manager.load_from_cookie_headers([header.as_str()]).await?.expect("logged in");
//! assert_eq!(session.user_id(), Some("alice"));
//! assert_eq!(session.get::<String>("theme")?.as_deref(), Some("dark"));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod clock;
pub mod codec;
pub mod cookie;
pub mod error;
pub mod expiry;
#[doc(hidden)]
pub mod fuzzing;
pub mod id;
pub mod key;
pub mod label;
pub mod manager;
pub mod memory;
pub mod policy;
pub mod record;
pub mod redact;
pub mod retry;
pub mod session;
pub mod skew;
pub mod store;
pub mod token;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use crate::clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use crate::cookie::{
    CookieLifetime, CookiePolicy, CookiePolicyBuilder, MAX_SESSION_ID_CANDIDATES,
};
pub use crate::error::{ErrorChain, SessionError};
pub use crate::expiry::ExpiryTask;
pub use crate::id::{InvalidSessionId, SessionId};
pub use crate::key::{KeyDeriver, StorageKey};
pub use crate::label::{InvalidLabel, MAX_LABEL_LEN};
pub use crate::manager::{
    CommitOutcome, LoginOptions, SessionManager, SessionManagerBuilder, UPDATE_MAX_ATTEMPTS,
    UPDATE_RETRY,
};
pub use crate::memory::{MemoryStore, MemoryStoreBuilder, MemoryStoreFull, DEFAULT_MAX_SESSIONS};
pub use crate::policy::{
    ConfigError, ConflictPolicy, LimitStrategy, SessionConfig, SessionConfigBuilder,
    UserSessionLimit,
};
pub use crate::record::{ListedSession, SessionRecord, SessionSummary};
pub use crate::retry::RetryPolicy;
pub use crate::session::Session;
pub use crate::skew::{ClockSkew, DEFAULT_MAX_CLOCK_SKEW};
pub use crate::store::{
    BoxError, CreateOptions, Created, Replaces, SessionStore, StoreError, StoreResult, TimedOut,
};
pub use crate::token::{OneTimeToken, TokenCheck};

/// Re-export of the `cookie` crate version used in this API.
pub use ::cookie as cookie_crate;
