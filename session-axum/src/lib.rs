//! Server-side sessions for axum and any tower service.
//!
//! - [`layer`]: [`SessionLayer`], which reads the session cookie, hands each
//!   request a lazily loaded [`Session`] and commits it at response time.
//! - [`extract`]: [`Session`], the per-request handle and axum extractor,
//!   with login, rotation, logout and one-time tokens.
//! - [`error`]: [`Error`], which answers a generic response and logs the
//!   details for the operator.
//!
//! ```
//! use axum::{routing::get, Router};
//! use session_axum::{Session, SessionLayer};
//! use session_core::{MemoryStore, SessionManager};
//!
//! async fn visits(session: Session) -> Result<String, session_axum::Error> {
//!     let n: u64 = session.get("visits").await?.unwrap_or(0) + 1;
//!     session.insert("visits", &n).await?;
//!     Ok(format!("visit number {n}"))
//! }
//!
//! let manager = SessionManager::new(MemoryStore::new());
//! let app: Router = Router::new()
//!     .route("/", get(visits))
//!     .layer(SessionLayer::new(manager));
//! # let _ = app;
//! ```
//!
//! What the layer guarantees:
//!
//! - The session ID is read from `Cookie` headers only, never from the URL.
//! - A request whose handler never touches the session costs no store round
//!   trip and gets no cookie.
//! - At response time the session is committed: written only when changed,
//!   touched when the touch interval has passed, and never on a `5xx`
//!   response. The cookie is set when the ID is new to the client and
//!   removed when the session ended (or the client's cookie named a session
//!   that no longer exists).
//! - Every response whose handler used the session carries
//!   `Cache-Control: no-store`.
//! - A store failure reaches the client as a bare `500` and the operator as
//!   a `tracing` event; session IDs never appear in either.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod extract;
pub mod layer;

pub use crate::error::Error;
pub use crate::extract::Session;
pub use crate::layer::{SessionLayer, SessionService};
