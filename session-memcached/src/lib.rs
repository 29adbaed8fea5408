//! A Memcached backend for [`session_core`]: [`MemcachedStore`].
//!
//! - [`config`]: servers, namespace, item size limit, timeouts, concurrency.
//! - [`store`]: [`MemcachedStore`], the [`SessionStore`](session_core::SessionStore).
//! - `transport` (private): the Memcached primitives, run on Tokio's blocking
//!   pool, or on the Tokio client with the `async` feature
//!   (`MemcachedStore::new_async`).
//! - `keys`, `expiry`, `index` (private): key layout, deadlines to
//!   expiration times, the per-user index item.
//! - `tombstone` (private): the markers a session key holds after a
//!   rotation moved its session away or a creation was cancelled.
//! - `recent` (private): the CAS tokens of recent loads, which make the
//!   usual update a single round trip.
//!
//! ```no_run
//! use session_core::SessionManager;
//! use session_memcached::{MemcachedConfig, MemcachedStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = MemcachedConfig::new(["memcache://10.0.0.1:11211,memcache://10.0.0.2:11211"])?
//!     .with_namespace("myapp")?;
//! let manager = SessionManager::new(MemcachedStore::new(config)?);
//! # let _ = manager; Ok(()) }
//! ```
//!
//! # A cache, not a database
//!
//! Memcached keeps items in memory only. A server that restarts or is lost
//! takes its share of the sessions with it (with several servers, the keys
//! hashed to it), and a full server evicts items it has not used lately.
//! The application then sees "no session": the cookie no longer loads, the
//! user is logged out and signs in again. A lost user index makes
//! `list_user` / `delete_user` miss sessions that survived on other
//! servers. While a server is unreachable, operations on its keys fail
//! with [`StoreError::Unavailable`](session_core::StoreError::Unavailable)
//! within the configured timeouts, and the store reconnects by itself.
//! Use a persistent backend where losing sessions is not acceptable.
//!
//! # Lifecycle changes without transactions
//!
//! Memcached has no transactions and no multi-key compare-and-set, so the
//! atomic lifecycle step ([`SessionStore::create_with`](session_core::SessionStore::create_with)) is built from
//! single-item compare-and-sets, each deciding one thing:
//!
//! - **The user's index item decides membership and limits.** Every
//!   creation of a logged-in session (plain, login, rotation) reads the
//!   index, counts the user's sessions, picks evictions, and commits that
//!   decision with a `cas` on the index version it read (an `add` if there
//!   was none). Two decisions for one user never commit on the same
//!   version, so each sees the ones before it. The entry of the new
//!   session is part of that write, made *before* the record exists, so a
//!   login in flight is counted (a *pending* entry: no record yet, the
//!   creation's random `nonce`, created at, first expiry). `delete_user`
//!   ends what the index lists and then deletes the index with a `cas` on
//!   the version it read, going round again when a login changed it.
//! - **A session item decides that session's fate.** Records are deleted
//!   (by `delete`, `delete_user`, evictions) and retired by rotations only
//!   with a `cas` on the token read together with the checks, so of a
//!   racing delete, update and rotation of one record exactly one applies
//!   and the others re-read what it left.
//! - **Markers** (the `tombstone` module, a format byte of their own) keep
//!   what a deleted item would forget. A rotation turns the old key into
//!   `Moved { to, nonce }` (live for nothing; it expires with the old
//!   record's deadline), and only then `add`s the new record: the session
//!   is never live under both keys, and the `cas` on the old record's
//!   token, answered before its deadline, means only a live record moves.
//!   `delete` follows `Moved` markers (up to 64 hops). Where it finds no
//!   record yet, it `add`s `Ended { nonce }`, so the pending creation's
//!   own `add` fails, it sees its nonce and stops; `delete_user` and
//!   evictions cancel pending entries the same way.
//!
//! The steps of `create_with`: (1) read old key, new key and index in one
//! pipelined request; (2) check: old record live, at the version, same user
//! or anonymous (`NotFound` / `Conflict`), new key free
//! (`AlreadyExists`); (3) for a user, the index decision above
//! (`UserLimitReached`); (4) mark the old key moved; (5) end the evicted
//! sessions; (6) `add` the new record; (7) drop the old key's entry.
//! Failures at (4) take the new entry back, so on every checked error
//! nothing stays written. A login with a limit costs 4 round trips (read,
//! count, decide, write), plus one for the old key of an anonymous
//! session, one per eviction and two to drop a rotated key's entry.
//!
//! Why no interleaving of two requests breaks the guarantees:
//!
//! - *Logins under a limit*: each decision is made on the index version
//!   it commits on, and counts live and pending sessions alike, so
//!   `RejectNew` admits exactly the free places. Under `EvictOldest` the
//!   newest `max` of a set stay the newest `max` when newer sessions join,
//!   so later decisions agree with earlier ones and end whatever of their
//!   victims is still there; a victim still pending is cancelled, and its
//!   login returns as one that was evicted right after.
//! - *Rotation vs. `delete` of the old key*: both `cas` the same token.
//!   If the delete lands first the rotation sees the key gone (`NotFound`,
//!   its entry taken back). If the rotation lands first, the delete finds
//!   the marker, follows it and deletes the new record, or cancels it
//!   before it is written.
//! - *Rotation or login vs. `delete_user`*: the new entry is written
//!   before anything else. If it lands before `delete_user`'s last read of
//!   the index, `delete_user` ends it (deletes or cancels); otherwise
//!   `delete_user` deleted the old record, which was in that index, before
//!   the rotation could mark it, so the rotation fails with `NotFound`. A
//!   login that only lands after it is a login after it. Either way every
//!   live session of the user is in the index.
//! - *Rotation vs. rotation, update or touch of the same record*: one `cas`
//!   on the record's token wins; a touch (same version) is retried, an
//!   update is a `Conflict`, a move or delete `NotFound`.
//! - *Pruning*: an entry is dropped only when its session can never be
//!   live: a marker, an expired record, no record past the first expiry,
//!   or a pending entry older than `index_grace` that was cancelled first.
//!
//! `delete_user` counts deleted live records, plus cancelled rotations
//! (whose old record was live); a login it cancelled before the record was
//! written succeeds for its caller and is not counted.
//!
//! A crash (or a lost server answer) between steps errs towards fewer
//! sessions: after (3), a pending entry that counts against the limit
//! until `index_grace` passes, then is cancelled and pruned; after (4),
//! the session is logged out (the old key is moved, the new one never
//! written); after (5), the evicted sessions are gone but the login's is
//! not written; after a `delete`'s record deletion, a stale entry. No step
//! makes a session live before the steps that make that safe, and nothing
//! brings an ended record back.
//!
//! Two requests creating the *same* storage key at once (impossible with
//! random session IDs) may leave a rotation's old key moved to a record it
//! did not write.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
mod expiry;
pub mod fuzzing;
mod index;
mod keys;
mod recent;
pub mod store;
mod tombstone;
mod transport;

pub use crate::config::{
    ConfigError, MemcachedConfig, DEFAULT_MAX_ITEM_SIZE, DEFAULT_RECENT_READS,
};
pub use crate::store::MemcachedStore;
