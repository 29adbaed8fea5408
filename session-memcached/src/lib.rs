//! A Memcached backend for [`session_core`]: [`MemcachedStore`].
//!
//! - [`builder`]: [`MemcachedStoreBuilder`], the builder shape every backend
//!   shares.
//! - [`config`]: servers, namespace, item size limit, timeouts, concurrency.
//! - [`store`]: [`MemcachedStore`], the [`SessionStore`](session_core::SessionStore).
//! - `transport` (private): the Memcached primitives, run on the `memcache`
//!   crate's Tokio client (feature `async`, on by default), or on its
//!   blocking client on Tokio's blocking pool (`MemcachedStore::new_blocking`,
//!   and every store without the feature).
//! - `keys`, `expiry`, `index` (private): key layout, deadlines to
//!   expiration times, the per-user index item.
//! - `tombstone` (private): the markers a session key holds after a
//!   rotation moved its session away or a creation was cancelled.
//! - `recent` (private): the CAS tokens of recent loads, which make the
//!   usual update a single round trip.
//!
//! ```no_run
//! use session_core::SessionManager;
//! use session_memcached::MemcachedStore;
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemcachedStore::builder()
//!     .namespace("myapp")
//!     .connect("memcache://10.0.0.1:11211,memcache://10.0.0.2:11211")
//!     .await?;
//! let manager = SessionManager::new(store);
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
//! `list_user_sessions` / `delete_user` miss sessions that survived on other
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
//!   creation's random `nonce`, created at, first expiry). The sessions a
//!   login evicts are recorded in the same write (entry and the login's
//!   nonce): from then on they neither count nor list, for anyone, while
//!   the login ends them; a login that fails takes its entry back, and its
//!   evictions lapse with it. `delete_user` decides the same way: it
//!   *closes* the index with a `cas` (the sessions listed in that version
//!   are the ones it ends and counts), ends them, then deletes the index.
//!   A login that finds the index closed helps end those sessions and
//!   starts a new index (it comes after the `delete_user`); `list_user_sessions`
//!   lists nothing from a closed index.
//! - **A session item decides that session's fate.** Records are ended
//!   (by `delete`, `delete_user`, evictions) and retired by rotations only
//!   with a `cas` on the token read together with the checks, so of a
//!   racing delete, update and rotation of one record exactly one applies
//!   and the others re-read what it left.
//! - **Markers** (the `tombstone` module, a format byte of their own) keep
//!   what a deleted item would forget. A rotation turns the old key into
//!   `Moved { to, nonce }` (live for nothing; it expires with the old
//!   record's deadline), and only then writes the new record: the session
//!   is never live under both keys, and the `cas` on the old record's
//!   token, answered before its deadline, means only a live record moves.
//!   `delete` follows `Moved` markers (up to 64 hops) and ends them
//!   behind it, so a later `delete` of the old key follows nothing. Where
//!   it finds no record yet, it `add`s `Ended { nonce }`, so the pending
//!   creation's own write fails, it sees its nonce and stops;
//!   `delete_user` and evictions cancel pending entries the same way. An
//!   ended record also becomes an `Ended` marker (the item is not
//!   deleted), and a creation about to write holds its key with
//!   `Reserved { nonce }`. So an index entry stands for a creation in
//!   flight exactly while its key is absent or reserved by it; anything
//!   else there (a marker, a record of another session) means the entry
//!   is dead.
//!
//! The steps of `create_with`: (1) read old key, new key and index in one
//! pipelined request; (2) check: old record live, at the version, same user
//! or anonymous (`NotFound` / `Conflict`), new key free
//! (`AlreadyExists`; a key another creation reserved is waited for); a key
//! that holds something dead is reserved now; (3) for a user, the index
//! decision above (`UserLimitReached`); (3b) for a rotation or a login
//! that evicts, reserve the new key, so that no other creation takes it
//! once the next steps have changed anything; (4) mark the old key moved;
//! (5) end the evicted sessions; (6) write the new record (over the
//! reservation); (7) drop the old key's entry. Failures up to (4) take
//! the new entry and the reservation back, so on every checked error
//! nothing stays written. A plain login with a limit costs 4 round trips
//! (read, count, decide, write), plus one for the old key of an
//! anonymous session; a login that evicts or rotates two more (reserve,
//! read its token), plus one per eviction and two to drop a rotated key's
//! entry.
//!
//! Why no interleaving of two requests breaks the guarantees:
//!
//! - *Logins under a limit*: each decision is made on the index version
//!   it commits on, and counts live and pending sessions alike, but not
//!   the ones an earlier decision evicted, so `RejectNew` admits exactly
//!   the free places and a session is evicted (and reported) once. Under
//!   `EvictOldest` the newest `max` of a set stay the newest `max` when
//!   newer sessions join, so later decisions agree with earlier ones; a
//!   victim still pending is cancelled, and its login returns as one that
//!   was evicted right after.
//! - *A login or rotation vs. a creation of the same key*: the reservation
//!   (3b) is taken before anything else changes; whoever loses the key
//!   fails with `AlreadyExists` having written nothing but an index entry
//!   it takes back.
//! - *Rotation vs. `delete` of the old key*: both `cas` the same token.
//!   If the delete lands first the rotation sees the key gone (`NotFound`,
//!   its entry taken back). If the rotation lands first, the delete finds
//!   the marker, follows it and ends the new record, or cancels it
//!   before it is written.
//! - *Rotation or login vs. `delete_user`*: the close and the login's
//!   decision are `cas`es on the same index item, so one comes first. A
//!   decision before the close is in the closed version: `delete_user`
//!   counts that session and ends it (or cancels it before it is written;
//!   the login still returns success, as one ended right after). A
//!   decision after it is a login after it. The keys an index lists are
//!   not read at one instant (two servers answer in any order), so a
//!   rotation may fall between the read of its old key (still live) and
//!   of its new one (written): the old key is read again after, where the
//!   rotation has left its move marker, so the session counts once.
//! - *`list_user_sessions`* lists the live records of the index's entries, minus
//!   evicted ones, and reads the index again after the records: if a
//!   decision changed it meanwhile (a login, a `delete_user` closing it),
//!   it starts over, so it never lists half of what a `delete_user` ends.
//!   While a rotation or an evicting login is between its decision and its
//!   record (at most 2 s old), it waits for it, so it never lists a moment
//!   where the old sessions are gone and the new one is not there yet.
//! - *Rotation vs. rotation, update or touch of the same record*: one `cas`
//!   on the record's token wins; a touch (same version) is retried, an
//!   update is a `Conflict`, a move or delete `NotFound`.
//! - *Pruning*: an entry is dropped only when its session can never be
//!   live: a marker, an expired record, no record past the first expiry,
//!   or a pending entry older than `index_grace` that was cancelled first.
//!   A `delete` drops only the entries of its key that are dead, judged on
//!   the index and the key read together.
//!
//! `delete_user` returns the number of sessions in the version it closed
//! (live records and creations in flight, evicted ones excluded).
//!
//! A crash (or a lost server answer) between steps errs towards fewer
//! sessions: after (3), a pending entry that counts against the limit
//! until `index_grace` passes, then is cancelled and pruned (with its
//! reservation); after (4), the session is logged out (the old key is
//! moved, the new one never written); after (5), the evicted sessions are
//! gone but the login's is not written. A victim that a crashed login did
//! not end stays loadable; it neither counts nor lists until that login's
//! entry is cancelled and pruned (after `index_grace`), then it does
//! again. No step makes a session live before the steps that make that
//! safe, and nothing brings an ended record back.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations)]

pub mod builder;
pub mod config;
mod expiry;
pub mod fuzzing;
mod index;
mod keys;
mod limits;
mod recent;
pub mod store;
mod tombstone;
mod transport;

pub use crate::builder::MemcachedStoreBuilder;
#[allow(deprecated)]
pub use crate::config::ConfigError;
pub use crate::config::{MemcachedConfig, SetupError, DEFAULT_MAX_ITEM_SIZE, DEFAULT_RECENT_READS};
pub use crate::store::MemcachedStore;

/// Re-export of the memcache crate version this crate is built on, for
/// inspecting the client errors inside store errors without version skew.
pub use memcache;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
