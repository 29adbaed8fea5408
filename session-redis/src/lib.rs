//! Redis session store for [`session_core`]: [`RedisStore`] implements
//! [`SessionStore`](session_core::SessionStore) on a single Redis server or a
//! Redis Cluster.
//!
//! - [`builder`]: [`RedisStoreBuilder`], prefix, timeouts, size limit, connect.
//! - [`store`]: [`RedisStore`] and what each operation sends.
//! - [`keys`]: the key layout and the validated [`KeyPrefix`].
//! - [`near_cache`]: the opt-in [`NearCache`], coherent through
//!   server-assisted invalidation.
//! - [`codec`]: how a record is laid out in its Redis string.
//! - [`scripts`]: the Lua scripts behind create, create_with, update, touch
//!   and delete.
//! - [`connection`]: single-server and cluster connections behind one type.
//! - [`error`]: [`SetupError`] and how Redis errors map to
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
//! **Operations.** `load` is one `GET`. `create` (insert-only),
//! `create_with` (see *Lifecycle* below), `update` (compare-and-set on the
//! version), `touch` (rewrites only the 16 bytes of last access and idle
//! deadline with `SETRANGE`, and the TTL) and `delete` are Lua scripts:
//! on Redis 7+ one function library, loaded when the store connects and
//! called with `FCALL`; where functions are refused (Redis 6, an ACL
//! without `FUNCTION`/`FCALL`), the same scripts by SHA-1 with `EVALSHA`.
//! Either is loaded again by the first call that finds it missing (a
//! restart without persistence, `FUNCTION FLUSH`, `SCRIPT FLUSH`).
//! `list_user_sessions` reads the index, visits the sessions concurrently
//! (reading only headers), and prunes entries whose sessions are gone.
//! `delete_user` is one script on a single server (the index, every session
//! in it and the moves it follows, atomically: two concurrent calls count
//! as if one ran first); on a cluster it reads the index, ends the sessions
//! concurrently and reads the index again for logins that landed meanwhile. `delete` of a logged-in session takes two commands: the
//! session's script returns its user, then the entry goes.
//! `delete_expired` is a no-op: Redis expires keys itself.
//!
//! **Moved keys.** A rotation replaces the old record with a *moved marker*
//! (see [`codec`]): the fixed header with format byte 2, carrying the new
//! storage key, with the old record's remaining life as its TTL. No script
//! takes it for a live record, `load` returns `None` for it, and
//! `list_user_sessions` and `delete_user` never count it. `delete` of a moved key
//! deletes the marker and follows it to where the session went, and on
//! from there (at most 64 moves): inside its script on a single server, one
//! script call per key on a cluster. `delete_user` follows a marker it
//! finds under one of the user's entries the same way, so a logout racing a
//! rotation still ends the session.
//!
//! # Lifecycle (`create_with`)
//!
//! **Single server: atomic, one round trip.** The whole step (check and
//! retire the old record, insert-only check of the new key, count or evict
//! the user's sessions, write the new record and its index entry) is one
//! script. To count and evict, it reads the sessions listed in the user's
//! index, whose keys it computes instead of declaring: a standalone server
//! allows this, a cluster would not. A login (with a per-user limit, from
//! an anonymous session) thus costs one round trip; before `create_with` it
//! took a `list_user_sessions` (two), a `create` and a `delete` of the old session,
//! plus a `list_user_sessions` and a `delete` per evicted session under
//! `EvictOldest`.
//!
//! **Cluster: ordered, not atomic.** The old record, the new record and the
//! user's index live on different slots, so the step is a sequence of
//! single-slot scripts, ordered so that every failure or race leaves
//! *fewer* live sessions, never more and never a revived one:
//!
//! 1. Under `RejectNew`, a *pending marker* (format 4, expiring after
//!    [`CLUSTER_INDEX_GRACE`]) goes under the new key, refusing if a live
//!    record is there. Then the new key's index entry is added, in the same
//!    script that returns the entries the index held before it. Without a
//!    limit, the entry is added while the new key is checked to be free.
//! 2. `RejectNew`: the entries that were there before ours are read; the
//!    user's live sessions, pending markers (logins being written) and
//!    young moved markers (sessions being moved) count. At `max`, the entry
//!    and the pending marker are withdrawn and the login is refused. Every
//!    racer counts those before it, so two racers never both take the last
//!    place; a racer may count one that is refused a moment later, so two
//!    racers can both be refused.
//! 3. Rotation: one script on the old key's slot checks that the old record
//!    is live, at the version, and not another user's, and replaces it with
//!    the moved marker. From here on the old key is dead.
//! 4. The new record is written, insert-only. If a `delete` followed the
//!    moved marker before this (the new key held nothing yet), it left an
//!    *ended marker* (format 3) there: the write fails, the entry is
//!    withdrawn and the rotation returns `NotFound`; the session stays
//!    ended. If the write fails otherwise, the session has simply ended.
//! 5. The old key's index entry is removed.
//! 6. `EvictOldest`: the user's sessions are listed (live records, and
//!    sessions being moved, by their markers), and every one not among the
//!    newest `max` by [`newest_first`](session_core::store::newest_first)
//!    is deleted (ours too, which is then reported as evicted). Deletion
//!    only removes sessions that are not among the newest `max` of all, so
//!    racing logins converge on exactly `max`. If this step fails, our own
//!    new session is deleted before the error is returned.
//!
//! What a failure or race can leave behind: a stale index entry (our own
//! after a crash, the old key's after a failed step 5), never listed and
//! pruned by readers once older than [`CLUSTER_INDEX_GRACE`]; a pending or
//! ended marker, which expires by itself; a refused login (two racers for
//! the last place, or a place held by a login that is then refused); a
//! session ended early (the process stops between steps 3 and 4, or step 4
//! or 6 fails). A plain `create` of a logged-in session (not through
//! `create_with`) is not counted while it is in flight.
//!
//! On a cluster a rotation costs four round trips (three from an anonymous
//! session, which has no index entry to remove); `RejectNew` adds two
//! (pending marker, reading the other sessions), `EvictOldest` two (listing)
//! and two more when it deletes sessions.
//!
//! **Index consistency.** On a single server, `create`, `create_with` and
//! `update` write the session and its index entry in the same script,
//! atomically. On a
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
//! [`StoreError::Unavailable`](session_core::StoreError::Unavailable) (an
//! operation that ran out of the operation timeout has a
//! [`TimedOut`](session_core::TimedOut) source and
//! [`is_timeout`](session_core::StoreError::is_timeout)), other
//! error replies [`StoreError::Backend`](session_core::StoreError::Backend).
//! Once the server is back, the same store works again, and the first
//! call does not fail on a connection that died meanwhile: reads, `touch`
//! and `delete` are sent once more on a fresh connection after a
//! connection-level failure, `create` and `update` only when nothing was
//! sent (see [`RedisStoreBuilder::operation_timeout`]). Error messages never
//! contain keys, user ids or data, and no error, in its `Display`, `Debug`
//! or `source()` chain, shows the credentials of a connection URL (see
//! [`SetupError`]).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations)]

pub mod builder;
pub mod codec;
pub mod connection;
pub mod error;
pub mod fuzzing;
pub mod keys;
pub mod near_cache;
pub mod scripts;
pub mod store;
mod tracking;

pub use crate::builder::{
    RedisStoreBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_RECORD_SIZE, DEFAULT_OPERATION_TIMEOUT,
};
pub use crate::error::SetupError;
#[allow(deprecated)]
pub use crate::error::{ConnectError, OperationTimedOut};
pub use crate::keys::{InvalidPrefix, KeyPrefix};
pub use crate::near_cache::{NearCache, NearCacheStats};
pub use crate::store::{RedisStore, UserIdChanged, CLUSTER_INDEX_GRACE};

/// Re-export of the redis crate version this crate is built on, for
/// inspecting the client errors inside [`SetupError`] and
/// [`StoreError`](session_core::StoreError) sources without version skew.
pub use redis;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
