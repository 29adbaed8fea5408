//! A PostgreSQL [`SessionStore`](session_core::SessionStore) for
//! `session-core`, on a [sqlx](https://docs.rs/sqlx) connection pool.
//!
//! - [`store`]: [`PostgresStore`]: one statement (one round trip) per
//!   operation, exact expiry against the server's clock.
//! - [`builder`]: [`PostgresStoreBuilder`]: table, pool size, timeouts,
//!   clean-up batch size, record size limit.
//! - [`migrate`]: the embedded, versioned schema, applied by
//!   [`PostgresStore::migrate`] in one locked transaction.
//! - [`cleanup`]: [`CleanupTask`], the background deletion of expired rows.
//! - [`ident`]: validated table and schema names (no SQL injection through
//!   configuration).
//! - [`error`]: [`SetupError`] and the [`PgError`] inside store errors.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use session_core::SessionManager;
//! use session_postgres::PostgresStore;
//!
//! let store = PostgresStore::builder()
//!     .schema("auth")
//!     .connect("postgres://app@localhost/app")
//!     .await?;
//! store.migrate().await?; // idempotent; safe from several instances
//! let cleanup = store.spawn_cleanup(Duration::from_secs(300));
//! let manager = SessionManager::new(store);
//! // ... serve requests with `manager` ...
//! cleanup.stop().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod builder;
pub mod cleanup;
pub mod error;
pub mod ident;
pub mod migrate;
mod sql;
pub mod store;

pub use crate::builder::PostgresStoreBuilder;
pub use crate::cleanup::CleanupTask;
pub use crate::error::{PgError, SetupError};
pub use crate::ident::{Identifier, IdentifierError, TableName};
pub use crate::store::PostgresStore;

/// Re-export of the sqlx version this crate is built on, for
/// [`PostgresStoreBuilder::connect_with`] and
/// [`PostgresStoreBuilder::build`].
pub use sqlx;
