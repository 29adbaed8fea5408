//! A runnable HTTPS demo of server-side sessions: the classic secure-session
//! tutorial flow (login, profile, logout, log out everywhere, a session list
//! and a one-time-token form) on top of `session-axum`.
//!
//! Run it with `cargo run -p session-demo` and open <https://127.0.0.1:8443>.
//! See `session-demo --help` for the options.
//!
//! - [`config`]: command-line options and environment variables.
//! - [`users`]: the demo's user list, passwords kept as Argon2id hashes.
//! - [`password`]: password checks on bounded workers, behind the throttles.
//! - [`limits`]: per-address and per-account attempt throttles.
//! - [`backend`]: picks the session store from `SESSION_BACKEND`.
//! - [`tls`]: the rustls configuration, self-signed unless files are given.
//! - [`device`]: names a device from its `User-Agent`, for session labels.
//! - [`events`]: the life of a session, shown on the profile page.
//! - [`ui`]: the stylesheet, page layout, countdown script and error pages.
//! - [`app`]: the router: routes, pages and protective headers.
//! - [`server`]: binds, prints what a newcomer needs, and serves.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod app;
pub mod backend;
pub mod config;
pub mod device;
pub mod events;
pub mod limits;
pub mod password;
pub mod server;
pub mod tls;
pub mod ui;
pub mod users;

pub use crate::config::Config;
pub use crate::server::{Demo, StartupError};
