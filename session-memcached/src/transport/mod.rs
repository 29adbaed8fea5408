//! The few Memcached primitives the store is built on, and how they run.
//!
//! The store's logic ([`crate::store`]) is written against [`Transport`]:
//! get with CAS, multi-get, conditional store, delete. [`Blocking`] runs
//! them with the `memcache` crate's meta-protocol client on Tokio's blocking
//! thread pool, never on an async worker thread; with the `async` feature,
//! `Async` runs the same operations on the crate's Tokio client.
//!
//! Why the meta-protocol client (`memcache::exp::MetaClient`) rather than
//! `memcache::Client`: the classic client's r2d2 pool sends a `version`
//! round trip before every checkout, and turning that off would hand out
//! dead connections after a server restart (its manager never reports a
//! broken connection); its binary protocol writes each header field in its
//! own syscall; and its ASCII `add` reports `NOT_STORED` as success, so an
//! insert-only create cannot be built on it. The meta client speaks the
//! text meta protocol in one write per request, pools without a probe,
//! drops a connection after any failed exchange, bounds every exchange by a
//! deadline, reports add/CAS outcomes as values, and spreads keys over
//! several servers by rendezvous hashing.

use async_trait::async_trait;
use memcache::exp::{Delete, Get, Meta, MutationResult, MutationStatus, Set, SetMode};
use session_core::{StoreError, StoreResult};

mod blocking;
#[cfg(feature = "async")]
mod nonblocking;

pub(crate) use blocking::Blocking;
#[cfg(feature = "async")]
pub(crate) use nonblocking::Async;

/// An item read with its CAS token.
#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) value: Vec<u8>,
    pub(crate) cas: u64,
}

/// The condition of a store.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    /// Only if the key is absent.
    Add,
    /// Only if the item's CAS is still this one.
    Cas(u64),
}

/// The outcome of a conditional store or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done.
    Applied,
    /// Add: the key exists.
    Exists,
    /// CAS or delete: the key is absent.
    NotFound,
    /// CAS: someone else wrote first.
    CasMismatch,
    /// The server refused the value as larger than its item size limit;
    /// nothing was written.
    TooLarge,
}

/// What the store needs from a Memcached client.
#[async_trait]
pub(crate) trait Transport: Send + Sync + 'static {
    /// `mg <key> v c`.
    async fn get(&self, key: String) -> StoreResult<Option<Item>>;
    /// Several gets, pipelined per server; one answer per key, in order.
    async fn get_many(&self, keys: Vec<String>) -> StoreResult<Vec<Option<Item>>>;
    /// `ms <key> T<exptime> ME` or `C<cas>`.
    async fn store(
        &self,
        key: String,
        value: Vec<u8>,
        exptime: u32,
        mode: Mode,
    ) -> StoreResult<Outcome>;
    /// `md <key>`, optionally only if the CAS still matches.
    async fn delete(&self, key: String, cas: Option<u64>) -> StoreResult<Outcome>;
    /// Several deletes, each optionally only if its CAS still matches,
    /// pipelined per server; one answer per key, in order.
    async fn delete_many(&self, keys: Vec<(String, Option<u64>)>) -> StoreResult<Vec<Outcome>>;
    /// A no-op round trip to every server.
    async fn ping(&self) -> StoreResult<()>;
}

pub(crate) fn get_op(key: &str) -> Get {
    Get::new(key).meta(Meta::NONE.cas())
}

pub(crate) fn item(r: &memcache::exp::GetResult) -> Option<Item> {
    if !r.hit() {
        return None;
    }
    Some(Item {
        value: r.value.clone().unwrap_or_default(),
        cas: r.item.cas.unwrap_or(0),
    })
}

pub(crate) fn outcome(status: MutationStatus) -> Outcome {
    match status {
        MutationStatus::Applied => Outcome::Applied,
        MutationStatus::AlreadyExists => Outcome::Exists,
        MutationStatus::CasMismatch => Outcome::CasMismatch,
        _ => Outcome::NotFound,
    }
}

/// The `ms` for a conditional store.
pub(crate) fn set_op(key: &str, value: &[u8], exptime: u32, mode: Mode) -> Set {
    let op = Set::new(key, value).ttl_raw(exptime);
    match mode {
        Mode::Add => op.mode(SetMode::Add),
        Mode::Cas(cas) => op.compare_cas(cas),
    }
}

/// The `md`, optionally CAS-guarded.
pub(crate) fn delete_op(key: &str, cas: Option<u64>) -> Delete {
    let op = Delete::new(key);
    match cas {
        Some(cas) => op.compare_cas(cas),
        None => op,
    }
}

/// The outcome of a store, with the server's size refusal as a value.
pub(crate) fn store_outcome(
    r: Result<MutationResult, memcache::exp::Error>,
) -> Result<Outcome, memcache::exp::Error> {
    match r {
        Ok(r) => Ok(outcome(r.status)),
        Err(e) if refused_as_too_large(&e) => Ok(Outcome::TooLarge),
        Err(e) => Err(e),
    }
}

/// Whether the server answered "object too large for cache" (possibly
/// after the client gave up on the connection, which it reports as an
/// ambiguous outcome): the item was not stored.
fn refused_as_too_large(e: &memcache::exp::Error) -> bool {
    use memcache::exp::Error as E;
    match e {
        E::Server(msg) => msg.contains("too large"),
        E::Ambiguous { source, .. } => refused_as_too_large(source),
        _ => false,
    }
}

/// Maps a client error onto the store's error kinds: anything that means
/// "the server did not answer" is [`StoreError::Unavailable`]. Messages
/// name at most an item key, which is a hash (never a session id).
pub(crate) fn map_error(e: memcache::exp::Error) -> StoreError {
    use memcache::exp::Error as E;
    match e {
        E::Io(_) | E::Timeout { .. } | E::Ambiguous { .. } => StoreError::unavailable(e),
        other => StoreError::backend(other),
    }
}
