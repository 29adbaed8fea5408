//! A PostgreSQL [`SessionStore`](session_core::SessionStore) for
//! `session-core`, on a [sqlx](https://docs.rs/sqlx) connection pool.
//!
//! - [`store`]: [`PostgresStore`]: one statement (one round trip) per
//!   operation, a login or rotation included; exact expiry against the
//!   server's clock.
//! - [`builder`]: [`PostgresStoreBuilder`]: table, pool size, timeouts,
//!   clean-up batch size, record size limit.
//! - [`migrate`]: the embedded, versioned schema, applied by
//!   [`PostgresStore::migrate`] in one locked transaction.
//! - [`cleanup`]: the background deletion of expired rows, in batches, by a
//!   [`session_core::ExpiryTask`].
//! - [`ident`]: validated table and schema names (no SQL injection through
//!   configuration).
//! - [`error`]: [`SetupError`] and the [`PgError`] inside store errors.
//! - [`skew`]: [`ClockSkew`], the application's clock against the
//!   database's, measured at connect and periodically, logged when it is
//!   too large.
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
//! cleanup.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Lifecycle and locking
//!
//! [`SessionStore::create_with`](session_core::SessionStore::create_with)
//! (a login under a per-user limit, a rotation, or both) is one call of the
//! PL/pgSQL function `<table>_create_with`, installed by migration 3: one
//! round trip, one implicit transaction. Inside it, in this order:
//!
//! 1. if the new record has a user, `pg_advisory_xact_lock` on a 64-bit hash
//!    of the table's name and the user id (the *user lock*);
//! 2. for a rotation, the old row `SELECT … FOR UPDATE` (live only), then
//!    the version and user checks;
//! 3. the new key must hold no live row;
//! 4. the limit: the user's other live rows are counted (`RejectNew`) or
//!    ranked by `created_at DESC, key COLLATE "C" DESC` (`EvictOldest`,
//!    the order of [`newest_first`](session_core::store::newest_first));
//! 5. only then the writes: the old row is deleted and a move entry
//!    `(old key → new key, until the old record's deadline)` is written to
//!    the side table `<table>_moved`, the evicted rows are deleted, the new
//!    row is inserted. Every refusal returns before step 5, so nothing is
//!    written; an unexpected failure aborts the whole transaction.
//!
//! The function is `VOLATILE`, so under READ COMMITTED every statement in it
//! takes a fresh snapshot: everything after the lock sees all that was
//! committed before the lock was granted. (One SQL statement could not do
//! this: its snapshot is taken before it waits for any lock.) The locks are
//! held until the function's transaction commits.
//!
//! `delete` and `delete_user` are functions too:
//!
//! - `<table>_delete(key)` deletes the row, then (a new statement, so a new
//!   snapshot) removes the key's move entry and, if it has not passed its
//!   deadline, repeats with the key it points to, at most 64 times.
//! - `<table>_delete_user(user)` takes the user lock, then deletes the
//!   user's rows.
//!
//! Why no interleaving leaves a session live that should be gone:
//!
//! - **Logins of one user** (`create_with` with a user) hold the user lock
//!   from before they read the user's rows until they commit, so they run
//!   one after the other and each counts what the previous one left:
//!   `RejectNew` admits exactly the free places, `EvictOldest` leaves
//!   exactly `max`.
//! - **Rotation vs rotation** of one record: the old row is locked
//!   `FOR UPDATE`; the second waits, then finds the row gone (`NotFound`)
//!   or at another version (`Conflict`).
//! - **Rotation vs `delete(old)`**: both need the old row's lock. If the
//!   delete has it, the rotation then finds no row (`NotFound`). If the
//!   rotation has it, the delete waits until the rotation commits, finds
//!   the row gone, and its next statement sees the move entry and the new
//!   row committed together, and deletes the new row. `update` and `touch`
//!   of a moved key find no row (`NotFound`); `load` finds nothing.
//! - **Rotation vs `delete_user`**: both take the user lock (the rotated
//!   record belongs to the new record's user, or to nobody). Whichever is
//!   second sees the first's effects: the rotation finds its old row
//!   deleted, or `delete_user` deletes the new row.
//! - **Login vs `delete_user`**: a login under a limit takes the user lock,
//!   so it is wholly before or after. A plain `create` (or `create_with`
//!   with default options, which is `create`) takes no lock: it is one
//!   `INSERT`, ordered before or after `delete_user` by the row's
//!   visibility. The "index" is the `user_id` column itself, so a live row
//!   is always listed by `list_user_sessions`.
//!
//! Statements that do not change which sessions exist (`load`, `update`,
//! `touch`, `list_user_sessions`) take no advisory lock and stay single statements
//! on the sessions table. Deadlocks need a cycle of row locks between a
//! rotation or eviction and a `delete` whose move chain leads back into
//! it; PostgreSQL would detect one and fail one call with
//! [`StoreError::Backend`](session_core::StoreError::Backend).
//!
//! The functions require READ COMMITTED (PostgreSQL's default) and fail
//! with a clear error under another `default_transaction_isolation`: with
//! one snapshot per transaction, the statements after the lock would decide
//! on stale data. Instances still running a version before migration 3
//! neither take the user lock nor follow moves: upgrade every instance
//! before relying on these guarantees.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations)]

pub mod builder;
pub mod cleanup;
pub mod error;
pub mod ident;
pub mod migrate;
pub mod skew;
mod sql;
pub mod store;

pub use crate::builder::{PostgresStoreBuilder, ServerTimeouts};
#[allow(deprecated)]
pub use crate::cleanup::CleanupTask;
pub use crate::error::{PgError, SetupError};
pub use crate::ident::{Identifier, IdentifierError, TableName};
pub use crate::store::PostgresStore;
/// The clock-skew measurement every backend reports (defined in `session-core`).
pub use session_core::ClockSkew;

/// Re-export of the sqlx version this crate is built on, for
/// [`PostgresStoreBuilder::connect_with`] and
/// [`PostgresStoreBuilder::build`].
pub use sqlx;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
