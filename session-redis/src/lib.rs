//! Redis session store for [`session_core`]: [`RedisStore`] implements
//! [`SessionStore`](session_core::SessionStore) on a single Redis server or a
//! Redis Cluster.
//!
//! - [`builder`]: [`RedisStoreBuilder`], prefix, timeouts, size limit, connect.
//! - [`store`]: [`RedisStore`] and what each operation sends.
//! - [`keys`]: the key layout and the validated [`KeyPrefix`].
//! - [`codec`]: how a record is laid out in its Redis string.
//! - [`scripts`]: the Lua scripts behind create, update, touch and delete.
//! - [`connection`]: single-server and cluster connections behind one type.
//! - [`error`]: [`ConnectError`] and how Redis errors map to
//!   [`StoreError`](session_core::StoreError).
//!
//! ```no_run
//! use session_core::SessionManager;
//! use session_redis::RedisStore;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::builder()
//!     .prefix("myapp")
//!     .connect("redis://127.0.0.1:6379")
//!     .await?;
//! let manager = SessionManager::new(store);
//! # let _ = manager; Ok(()) }
//! ```
//!
//! # Architecture
//!
//! **Keys.** A session is one string, `<prefix>:s:{<storage key>}`, holding
//! [`SessionRecord::encode`](session_core::SessionRecord::encode)'s bytes
//! (metadata header, user id, data; see [`codec`]). A user's index is a
//! sorted set `<prefix>:u:{<BLAKE3 of the user id>}` whose members are
//! storage keys, scored by the time the entry was written. Braces are the
//! cluster hash tags; raw user ids never appear in key names. Prefixes are
//! validated ([`KeyPrefix`]): two stores with different prefixes share no key.
//!
//! **Expiry.** A record's TTL is the time left until its earlier deadline,
//! in milliseconds, computed from the client's clock (so a skewed server
//! clock does not shift it). `load` checks the deadlines in the record as
//! well, and every script checks them against the caller's `now`, so a
//! record is dead at its deadline whatever Redis has evicted. An index key
//! lives until a minute past its newest session's absolute deadline.
//!
//! **Operations.** `load` is one `GET`. `create` (insert-only), `update`
//! (compare-and-set on the version), `touch` (rewrites only the 16 bytes of
//! last access and idle deadline with `SETRANGE`, and the TTL) and `delete`
//! are Lua scripts loaded once and called by SHA-1 (`EVALSHA`; reloaded by
//! [`redis::Script`] after a restart or `SCRIPT FLUSH` drops them).
//! `list_user` and `delete_user` read the index, visit the sessions
//! concurrently (reading only headers), and prune entries whose sessions
//! are gone. `delete` of a logged-in session is the one two-command
//! operation: the session's script returns its user, then the entry goes. `delete_expired` is a no-op: Redis expires keys itself.
//!
//! **Index consistency.** On a single server, `create` and `update` write
//! the session and its index entry in the same script, atomically. On a
//! cluster the two keys live in different slots, so writes are ordered for
//! crash safety: the index entry is written *before* the session (create,
//! and update when it moves the absolute deadline later) and removed *after*
//! it (delete, delete_user). Any failure in between leaves at most a stale
//! entry, never a live session missing from its user's index, so "log out
//! everywhere" cannot miss one. Readers verify each entry against the
//! stored record (user id and deadlines) before listing it, and prune the
//! entries of sessions that are gone from Redis; on a cluster only once the
//! entry is older than [`CLUSTER_INDEX_GRACE`], since its session may be
//! being written. An expired record that Redis has not evicted yet is never
//! listed but keeps its entry until it is evicted, so an application server
//! whose clock lags cannot touch a session back to life without its entry.
//! Index keys expire by themselves a minute after their newest session's
//! absolute deadline.
//!
//! **Failures.** Connections are multiplexed and reconnect by themselves
//! ([`redis::aio::ConnectionManager`], or the cluster client). Every
//! operation is bounded by the operation timeout; an unreachable, timed out
//! or loading server yields
//! [`StoreError::Unavailable`](session_core::StoreError::Unavailable), other
//! error replies [`StoreError::Backend`](session_core::StoreError::Backend).
//! Once the server is back, the same store works again. Error messages never
//! contain keys, user ids or data.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod builder;
pub mod codec;
pub mod connection;
pub mod error;
pub mod keys;
pub mod scripts;
pub mod store;

pub use crate::builder::{
    RedisStoreBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_RECORD_SIZE, DEFAULT_OPERATION_TIMEOUT,
};
pub use crate::error::{ConnectError, OperationTimedOut};
pub use crate::keys::{InvalidPrefix, KeyPrefix};
pub use crate::store::{RedisStore, UserIdChanged, CLUSTER_INDEX_GRACE};
