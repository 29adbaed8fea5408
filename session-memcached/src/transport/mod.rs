//! The few Memcached primitives the store is built on, and how they run.
//!
//! The store's logic ([`crate::store`]) is written against [`Transport`]:
//! get with CAS, multi-get, conditional store, delete. With the `async`
//! feature (on by default), `Async` runs them on the `memcache` crate's
//! Tokio meta-protocol client (`LazyAsync` builds it on first use); that is
//! every store's transport unless asked otherwise. [`Blocking`] runs the
//! same operations with the crate's blocking client on Tokio's blocking
//! thread pool, never on an async worker thread: the only transport
//! without the feature, and slower (a thread hop per call).
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

use std::time::Duration;

use async_trait::async_trait;
use memcache::exp::{Delete, Get, Meta, MutationResult, MutationStatus, Set, SetMode};
use session_core::{StoreError, StoreResult};

mod blocking;
#[cfg(feature = "async")]
mod nonblocking;

pub(crate) use blocking::Blocking;
#[cfg(feature = "async")]
pub(crate) use nonblocking::{Async, LazyAsync};

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
///
/// Every call that fails at the connection level in a way
/// [`retry_on_fresh`] allows (the request was not applied) is sent once
/// more, on a connection dialed for it: the pool's idle connections may
/// have died together (a server restart), and its liveness probe cannot
/// see a connection that was reset without a close.
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
    /// Several conditional stores (key, value, exptime, mode), pipelined
    /// per server; one answer per key, in order.
    async fn store_many(
        &self,
        items: Vec<(String, Vec<u8>, u32, Mode)>,
    ) -> StoreResult<Vec<Outcome>>;
    /// `md <key>`, optionally only if the CAS still matches.
    async fn delete(&self, key: String, cas: Option<u64>) -> StoreResult<Outcome>;
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

/// Whether a failed request is sent once more, on a freshly dialed
/// connection: the client reports a bare [`Io`](memcache::exp::Error::Io)
/// error only when the request was definitely not applied (it never left,
/// or it has no side effect), and this one is connection-level (broken
/// pipe, reset, aborted, refused, not connected, end of stream). Never a
/// timeout, an error reply or an
/// [`Ambiguous`](memcache::exp::Error::Ambiguous) write (written in full,
/// outcome unknown): repeating one of those could apply an `add` or a `cas`
/// twice, or wait out a slow server twice.
pub(crate) fn retry_on_fresh(e: &memcache::exp::Error) -> bool {
    matches!(e, memcache::exp::Error::Io(io) if is_connection_level(io.kind()))
}

/// Whether a request failed because its connection broke (reset, closed,
/// aborted), whether or not it was written: the other idle connections of
/// the same pool are then suspect too (a restarted server, a load balancer
/// or NAT that forgot its connections), and the pool is replaced.
pub(crate) fn connection_broke(e: &memcache::exp::Error) -> bool {
    use memcache::exp::Error as E;
    match e {
        E::Io(io) => is_connection_level(io.kind()),
        E::Ambiguous { source, .. } => connection_broke(source),
        _ => false,
    }
}

/// A pooled client replaced, pool and all, when one of its connections
/// turns out dead: after a server restart, or a path that forgot its
/// connections, every idle connection of the old pool is as dead as the one
/// that failed, and each would cost a later request its first attempt (a
/// write's first attempt cannot be repeated). Each client carries a
/// generation, so racing requests that all saw the same pool fail replace
/// it once.
#[derive(Debug)]
pub(crate) struct Renewing<C> {
    current: std::sync::RwLock<(u64, C)>,
}

impl<C: Clone> Renewing<C> {
    pub(crate) fn new(client: C) -> Self {
        Self {
            current: std::sync::RwLock::new((0, client)),
        }
    }

    /// The current client and its generation.
    pub(crate) fn get(&self) -> (u64, C) {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the client of `generation` with `fresh`; a no-op when
    /// another request already replaced it.
    pub(crate) fn renew(&self, generation: u64, fresh: C) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.0 == generation {
            *current = (generation + 1, fresh);
            tracing::debug!(target: "session_memcached", generation, "a pooled connection broke; the idle pool is replaced");
        }
    }
}

/// Whether `kind` says the connection broke or could not be made.
pub(crate) fn is_connection_level(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::BrokenPipe
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::ConnectionRefused
            | K::NotConnected
            | K::UnexpectedEof
    )
}

/// Whether `e` is a write whose reply the connection lost: written in
/// full, then the connection broke (not a timeout). It may or may not have
/// been applied; only an operation that gives the same state and answer
/// when repeated (`touch`) may run again after it.
pub(crate) fn lost_reply(e: &StoreError) -> bool {
    use memcache::exp::Error as E;
    let StoreError::Unavailable(source) = e else {
        return false;
    };
    match source.downcast_ref::<ClientError>().map(|c| &c.0) {
        Some(E::Ambiguous { source, .. }) => {
            matches!(&**source, E::Io(io) if is_connection_level(io.kind()))
        }
        _ => false,
    }
}

/// Logs a retry (the error names the I/O failure; keys are hashes and are
/// not logged).
pub(crate) fn log_retry(op: &'static str, e: &memcache::exp::Error) {
    tracing::debug!(target: "session_memcached", op, error = %KeyFree(e), "connection failed; retrying once on a fresh connection");
}

/// The positions in a batch's answers that [`retry_on_fresh`] allows to
/// send again; the first of their errors is logged.
pub(crate) fn retry_positions<T>(
    op: &'static str,
    answers: &[Result<T, memcache::exp::Error>],
) -> Vec<usize> {
    let positions: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, r)| r.as_ref().is_err_and(retry_on_fresh))
        .map(|(i, _)| i)
        .collect();
    if let Some(Err(e)) = positions.first().map(|&i| &answers[i]) {
        log_retry(op, e);
    }
    positions
}

/// `first` with the answers at `positions` replaced by `again` (their
/// second attempts, in the same order).
pub(crate) fn merge_retried<T>(
    mut first: Vec<Result<T, memcache::exp::Error>>,
    positions: &[usize],
    again: Vec<Result<T, memcache::exp::Error>>,
) -> Vec<Result<T, memcache::exp::Error>> {
    for (&i, r) in positions.iter().zip(again) {
        first[i] = r;
    }
    first
}

/// Maps the client errors of request `op` onto the store's error kinds:
/// anything that means "the server did not answer" is
/// [`StoreError::Unavailable`].
///
/// A request that ran out of its deadline (a `Timeout`, or an `Ambiguous`
/// outcome because of one: written, then no answer in time) is
/// [`StoreError::timed_out`]`(op, io_timeout)`, the timeout every store
/// reports, which names no key: the client's own timeout error quotes the
/// item key, and keys are not shown. The client bounds each exchange by the
/// I/O timeout (a connection attempt by the connect timeout, which it
/// reports the same way), so `io_timeout` is the limit given. Other
/// messages name at most an item key, which is a hash (never a session id).
pub(crate) fn map_error(
    op: &'static str,
    io_timeout: Duration,
) -> impl Fn(memcache::exp::Error) -> StoreError + Copy {
    use memcache::exp::Error as E;
    move |e| match e {
        E::Timeout { .. } => StoreError::timed_out(op, io_timeout),
        E::Ambiguous { ref source, .. } if matches!(**source, E::Timeout { .. }) => {
            StoreError::timed_out(op, io_timeout)
        }
        E::Io(_) | E::Ambiguous { .. } => StoreError::unavailable(ClientError(e)),
        other => StoreError::backend(ClientError(other)),
    }
}

/// A client error as the store shows it, in `Display` and `Debug` alike:
/// the client's own messages quote the item key (the namespace and a
/// storage-key hash), and storage keys are never shown.
pub(crate) struct ClientError(pub(crate) memcache::exp::Error);

impl ClientError {
    fn describe(e: &memcache::exp::Error, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use memcache::exp::Error as E;
        match e {
            E::Timeout { .. } => f.write_str("the request timed out"),
            E::Ambiguous { source, .. } => {
                f.write_str("the request was written but its outcome is unknown: ")?;
                Self::describe(source, f)
            }
            other => write!(f, "{other}"),
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Self::describe(&self.0, f)
    }
}

impl std::fmt::Debug for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientError(\"{self}\")")
    }
}

impl std::error::Error for ClientError {}

/// Shows a client error without its item key (see [`ClientError`]).
pub(crate) struct KeyFree<'a>(pub(crate) &'a memcache::exp::Error);

impl std::fmt::Display for KeyFree<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        ClientError::describe(self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memcache::exp::Error as E;
    use std::io::{Error as IoError, ErrorKind};

    #[test]
    fn only_unapplied_connection_failures_are_sent_again() {
        for kind in [
            ErrorKind::BrokenPipe,
            ErrorKind::ConnectionReset,
            ErrorKind::ConnectionRefused,
            ErrorKind::UnexpectedEof,
        ] {
            assert!(retry_on_fresh(&E::Io(IoError::from(kind))), "{kind:?}");
        }
        assert!(!retry_on_fresh(&E::Io(IoError::from(ErrorKind::TimedOut))));
        assert!(!retry_on_fresh(&E::Timeout { key: b"k".to_vec() }));
        assert!(!retry_on_fresh(&E::Server("busy".into())));
        let lost = || E::Ambiguous {
            key: b"k".to_vec(),
            source: Box::new(E::Io(IoError::from(ErrorKind::ConnectionReset))),
        };
        assert!(!retry_on_fresh(&lost()));
        let map_error = map_error("test", Duration::from_secs(1));
        assert!(lost_reply(&map_error(lost())));
        let slow = E::Ambiguous {
            key: b"k".to_vec(),
            source: Box::new(E::Timeout { key: b"k".to_vec() }),
        };
        assert!(!lost_reply(&map_error(slow)));
        assert!(!lost_reply(&map_error(E::Io(IoError::from(
            ErrorKind::ConnectionReset
        )))));
    }

    #[test]
    fn client_errors_name_no_key() {
        let key = b"ns:s:0123456789abcdef".to_vec();
        let map_error = map_error("touch", Duration::from_secs(1));
        for e in [
            E::Ambiguous {
                key: key.clone(),
                source: Box::new(E::Io(IoError::from(ErrorKind::ConnectionReset))),
            },
            E::Io(IoError::from(ErrorKind::BrokenPipe)),
            E::Server("out of memory".into()),
        ] {
            let e = map_error(e);
            let shown = format!("{e:?} {}", session_core::ErrorChain(&e));
            assert!(!shown.contains("0123456789abcdef"), "{shown}");
            assert!(!shown.contains("48, 49, 50"), "key bytes: {shown}");
        }
    }

    #[test]
    fn a_pool_is_renewed_once_per_generation() {
        let pool = Renewing::new("first");
        let (generation, client) = pool.get();
        assert_eq!(client, "first");
        pool.renew(generation, "second");
        pool.renew(generation, "third");
        assert_eq!(pool.get(), (generation + 1, "second"));
        assert!(connection_broke(&E::Ambiguous {
            key: b"k".to_vec(),
            source: Box::new(E::Io(IoError::from(ErrorKind::ConnectionReset))),
        }));
        assert!(connection_broke(&E::Io(IoError::from(
            ErrorKind::UnexpectedEof
        ))));
        assert!(!connection_broke(&E::Timeout { key: b"k".to_vec() }));
        assert!(!connection_broke(&E::Server("busy".into())));
    }

    #[test]
    fn timeouts_are_the_shared_timeout_and_name_no_key() {
        let key = b"secret-item-key".to_vec();
        let map_error = map_error("get", Duration::from_millis(300));
        let written = E::Ambiguous {
            key: key.clone(),
            source: Box::new(E::Timeout { key: key.clone() }),
        };
        for e in [E::Timeout { key: key.clone() }, written] {
            let e = map_error(e);
            assert!(e.is_timeout(), "{e:?}");
            let StoreError::Unavailable(source) = &e else {
                panic!("{e:?}");
            };
            let t = source.downcast_ref::<session_core::TimedOut>().unwrap();
            assert_eq!(
                (t.operation(), t.after()),
                ("get", Duration::from_millis(300))
            );
            let shown = format!("{e:?} {}", session_core::ErrorChain(&e));
            assert!(!shown.contains("secret-item-key"), "{shown}");
        }
        let reset = map_error(E::Io(IoError::from(ErrorKind::ConnectionReset)));
        assert!(matches!(reset, StoreError::Unavailable(_)) && !reset.is_timeout());
        assert!(!map_error(E::Server("busy".into())).is_timeout());
    }

    #[test]
    fn retried_answers_replace_the_failed_ones() {
        let first: Vec<Result<u8, E>> = vec![
            Ok(1),
            Err(E::Io(IoError::from(ErrorKind::ConnectionReset))),
            Err(E::Server("x".into())),
            Err(E::Io(IoError::from(ErrorKind::UnexpectedEof))),
        ];
        let again = retry_positions("test", &first);
        assert_eq!(again, [1, 3]);
        let merged = merge_retried(first, &again, vec![Ok(2), Ok(4)]);
        let oks: Vec<Option<u8>> = merged.iter().map(|r| r.as_ref().ok().copied()).collect();
        assert_eq!(oks, [Some(1), Some(2), None, Some(4)]);
    }
}
