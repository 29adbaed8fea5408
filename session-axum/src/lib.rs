//! Server-side sessions for axum and any tower service.
//!
//! - [`layer`]: [`SessionLayer`], which reads the session cookie, hands each
//!   request a lazily loaded [`Session`] and commits it at response time.
//! - [`extract`]: [`Session`], the per-request handle and axum extractor,
//!   with login, rotation, logout and one-time tokens.
//! - [`error`]: [`Error`], which answers a generic response and logs the
//!   details for the operator.
//!
//! `session-axum` re-exports what a service's handlers and set-up need from
//! session-core ([`SessionManager`] and its builder, [`MemoryStore`],
//! [`CookiePolicy`], the policies and errors), so this crate and one
//! backend crate are all a service depends on; [`prelude`] has the common
//! names in one `use`. The [README](https://github.com/session-rs/session-rs/tree/main/session-axum)
//! walks through a complete service.
//!
//! ```
//! use axum::{routing::{get, post}, Router};
//! use session_axum::{MemoryStore, Session, SessionLayer, SessionManager};
//!
//! // A counter: read-modify-write through `update`, which re-runs the
//! // closure on the value now stored if another request changed it first,
//! // so 50 parallel visits count 50.
//! async fn visits(session: Session) -> Result<String, session_axum::Error> {
//!     let n = session
//!         .update("visits", |n: Option<u64>| Some(n.unwrap_or(0) + 1))
//!         .await?;
//!     Ok(format!("visit number {}", n.unwrap_or(0)))
//! }
//!
//! // A side effect that must not happen unless the session change is saved:
//! // commit inside the handler first, then act.
//! async fn confirm(session: Session) -> Result<&'static str, session_axum::Error> {
//!     session.insert("confirmed", &true).await?;
//!     session.commit().await?; // an error here answers 503/409/500; nothing was sent
//!     // send_confirmation_email().await;
//!     Ok("confirmed")
//! }
//!
//! let manager = SessionManager::new(MemoryStore::new());
//! let app: Router = Router::new()
//!     .route("/", get(visits))
//!     .route("/confirm", post(confirm))
//!     .layer(SessionLayer::new(manager));
//! # let _ = app;
//! ```
//!
//! What the layer guarantees:
//!
//! - The session ID is read from `Cookie` headers only, never from the URL,
//!   as bytes: another cookie with odd bytes, several `Cookie` lines or a
//!   malformed duplicate of ours never hide a valid ID (see
//!   [`CookiePolicy::session_id_candidates`](session_core::CookiePolicy::session_id_candidates)).
//! - A request whose handler never touches the session costs no store round
//!   trip and gets no cookie.
//! - At response time the session is committed: written only when changed,
//!   touched when the touch interval has passed, and never on a `5xx`
//!   response.
//! - **Cookies.** The session cookie is set when a session is stored under
//!   an ID the client does not have yet (first write, login, rotation). The
//!   removal cookie is sent only when the request logged out. A request
//!   whose cookie names a session that no longer exists, was rotated away
//!   by a racing request or ended meanwhile gets *no* `Set-Cookie`: the
//!   browser may already hold a newer cookie (a login racing a poll, two
//!   tabs), and a removal would log it out. The dead ID never loads again.
//! - A login, rotation or logout that already reached the store reaches the
//!   client, even when the handler then answers `5xx` or the final commit
//!   fails: the response carries the cookie for the state the store is in.
//! - After `logout` the session reads, for the rest of the request, as a new
//!   empty anonymous session; a value written afterwards (a flash message)
//!   is stored in that session and its cookie replaces the old one.
//! - Every response whose handler used the session carries
//!   `Cache-Control: no-store`.
//!
//! Failures answer what a client can act on, with no detail in the body
//! (details go to a `tracing` event, never with session IDs): an
//! unreachable or full store `503` with `Retry-After`, a conflict the
//! handler surfaced (`update` out of attempts) `409` with `Retry-After`,
//! the per-user limit `403`, no login or a session that ended `401`, a key
//! that names none of the user's sessions (`Session::end_session`) `404`,
//! anything else `500` (see [`Error::status`]). When the layer's own commit
//! fails after the handler returned (store down, the session kept changing
//! beyond the conflict policy), the handler's response is replaced by a
//! `503` with `Retry-After`. Side effects the handler already performed
//! (an email sent, a row written elsewhere) are not undone by that: for
//! those, write to the session and call [`Session::commit`] inside the
//! handler first, and act only once it succeeded.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations)]

pub mod error;
pub mod extract;
pub mod layer;

pub use crate::error::Error;
pub use crate::extract::Session;
pub use crate::layer::{SessionLayer, SessionService};
/// What a one-time token check answers ([`Session::consume_token`]).
pub use session_core::TokenCheck;

/// Re-export of session-core, whose manager, policies and stores a
/// service configures this layer with.
pub use session_core;

#[doc(no_inline)]
pub use session_core::{
    CommitOutcome, ConfigError, ConflictPolicy, CookieLifetime, CookiePolicy, CookiePolicyBuilder,
    ErrorChain, ExpiryTask, LimitStrategy, MemoryStore, OneTimeToken, SessionConfig,
    SessionConfigBuilder, SessionError, SessionManager, SessionManagerBuilder, SessionStore,
    SessionSummary, StorageKey,
};

/// The names most services use, in one import:
/// `use session_axum::prelude::*;`.
///
/// It brings the handler side ([`Session`], [`TokenCheck`]) and the set-up
/// ([`SessionLayer`], [`SessionManager`], [`MemoryStore`], [`CookiePolicy`],
/// [`LimitStrategy`], [`ConflictPolicy`]). The error type stays
/// `session_axum::Error`, so it cannot shadow another `Error`.
pub mod prelude {
    #[doc(no_inline)]
    pub use crate::{
        ConflictPolicy, CookiePolicy, LimitStrategy, MemoryStore, Session, SessionLayer,
        SessionManager, TokenCheck,
    };
}

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
