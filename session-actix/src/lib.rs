//! Server-side sessions for actix-web, over any session-core store (memory,
//! Redis, PostgreSQL, Memcached, encrypted), with per-user session lists,
//! limits and "log out everywhere".
//!
//! - [`middleware`]: [`SessionMiddleware`], which reads the session cookie,
//!   hands each request a lazily loaded [`Session`] and commits it at
//!   response time.
//! - [`extract`]: [`Session`], the per-request handle and actix-web
//!   extractor, with login, rotation, logout, the user's session list and
//!   one-time tokens.
//! - [`error`]: [`Error`], which answers a generic response and logs the
//!   details for the operator.
//!
//! ```
//! use actix_web::{web, App, HttpResponse};
//! use session_actix::{Session, SessionManager, SessionMiddleware, MemoryStore};
//!
//! // A counter: read-modify-write through `update`, which re-runs the
//! // closure on the value now stored if another request changed it first,
//! // so 50 parallel visits count 50.
//! async fn visits(session: Session) -> Result<String, session_actix::Error> {
//!     let n = session
//!         .update("visits", |n: Option<u64>| Some(n.unwrap_or(0) + 1))
//!         .await?;
//!     Ok(format!("visit number {}", n.unwrap_or(0)))
//! }
//!
//! // Log in once the credentials are checked: a fresh session ID, whatever
//! // cookie the client sent (session fixation defence).
//! async fn login(session: Session, user: String) -> Result<HttpResponse, session_actix::Error> {
//!     // check_password(&user, ...)?;
//!     session.login(&user).await?;
//!     Ok(HttpResponse::SeeOther().insert_header(("Location", "/")).finish())
//! }
//!
//! // A side effect that must not happen unless the session change is saved:
//! // commit inside the handler first, then act.
//! async fn confirm(session: Session) -> Result<&'static str, session_actix::Error> {
//!     session.insert("confirmed", &true).await?;
//!     session.commit().await?; // an error here answers 503/409/500; nothing was sent
//!     // send_confirmation_email().await;
//!     Ok("confirmed")
//! }
//!
//! let manager = SessionManager::new(MemoryStore::new());
//! let app = App::new()
//!     .wrap(SessionMiddleware::new(manager))
//!     .route("/", web::get().to(visits))
//!     .route("/login", web::post().to(login))
//!     .route("/confirm", web::post().to(confirm));
//! # let _ = app;
//! // HttpServer::new(move || App::new().wrap(SessionMiddleware::new(manager.clone()))...)
//! ```
//!
//! Build the [`SessionManager`] once and clone it into each worker's `App`
//! (as in `HttpServer::new(move || ...)`): the clones share the store and
//! its connections.
//!
//! What the middleware guarantees (the same as session-axum's layer):
//!
//! - The session ID is read from `Cookie` headers only, never from the URL,
//!   as bytes: another cookie with odd bytes, several `Cookie` lines or a
//!   malformed duplicate of ours never hide a valid ID, and a malformed
//!   session cookie is "no session", never an error (see
//!   [`CookiePolicy::session_id_candidates`]).
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
//! - Under concurrency, requests on the same session never lose an update
//!   made through [`Session::update`], a one-time token is accepted once,
//!   and a stale cookie never ends or overwrites a newer session (see
//!   [`SessionManager::commit`]).
//!
//! Failures answer what a client can act on, with no detail in the body
//! (details go to a `tracing` event, never with session IDs): an
//! unreachable or full store `503` with `Retry-After`, a conflict the
//! handler surfaced (`update` out of attempts) `409` with `Retry-After`,
//! the per-user limit `403`, no login or a session that ended `401`, a key
//! that names none of the user's sessions (`Session::end_session`) `404`,
//! anything else `500` (see [`Error::status`]). When the middleware's own
//! commit fails after the handler returned (store down, the session kept
//! changing beyond the conflict policy), the handler's response is replaced
//! by a `503` with `Retry-After` and an empty body. Side effects the handler
//! already performed (an email sent, a row written elsewhere) are not undone
//! by that: for those, write to the session and call [`Session::commit`]
//! inside the handler first, and act only once it succeeded.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations)]

pub mod error;
pub mod extract;
pub mod middleware;

pub use crate::error::Error;
pub use crate::extract::Session;
pub use crate::middleware::{SessionMiddleware, SessionService};
// What a handler and its setup need from session-core: the manager and its
// configuration, the in-memory store, and the types the `Session` methods
// take and return.
pub use session_core::{
    CommitOutcome, ConflictPolicy, CookiePolicy, LimitStrategy, ListedSession, LoginOptions,
    MemoryStore, OneTimeToken, SessionConfig, SessionError, SessionManager, SessionStore,
    SessionSummary, StorageKey, StoreError, TokenCheck, UserSessionLimit,
};

/// Re-export of session-core, for everything else (stores' traits, clocks,
/// redaction helpers).
pub use session_core;
