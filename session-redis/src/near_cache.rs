//! The near cache: session records kept in the application's memory,
//! coherent with Redis through server-assisted invalidation
//! (RESP3 `CLIENT TRACKING`).
//!
//! Turned on with [`RedisStoreBuilder::near_cache`](crate::RedisStoreBuilder::near_cache);
//! off by default. See [`NearCache`] for the guarantee and its bound.
//!
//! # How a copy can never be older than the bound
//!
//! - **Tracking.** The store keeps one tracking connection to every
//!   primary (one on a single server), with `CLIENT TRACKING ON NOLOOP`
//!   (key mode). Every read of a session key that may fill the cache goes
//!   on the tracking connection of the key's primary, so the server
//!   remembers that this instance read the key, and pushes its name when
//!   any other client modifies, deletes or expires it (including this
//!   store's own writes on its ordinary connection). The push handler runs
//!   inline in the connection's reader and drops the local copy, in the
//!   order the pushes arrive.
//! - **Leases close the read/invalidate race.** A `load` that misses puts a
//!   *lease* (a numbered placeholder) under the key *before* it sends its
//!   `GET`, and stores the reply only if its own lease is still there. Any
//!   invalidation handled after the lease was taken removes it, so a reply
//!   that a later write made stale is never stored, whatever order the
//!   reply and the push are handled in.
//! - **Updates are written through.** `update` (the compare-and-set that
//!   most requests' writes are) goes on the key's tracking connection under
//!   a fresh lease. `NOLOOP` keeps the server from pushing this write back
//!   to its own connection, and the update script reads the key back after
//!   writing it, inside the script, so that the server tracks it for this
//!   instance again with no write in between (a write untracks a key for
//!   every client). So any later write by another client is pushed here,
//!   and voids the lease or drops the copy whichever comes first; a write
//!   by another client before this one either made the compare-and-set
//!   fail (it changed the version) or was pushed before the reply (a
//!   touch), voiding the lease. When
//!   the update stored its bytes and its lease is still there, those bytes
//!   become the copy; otherwise (another lease, an invalidation, a flush, a
//!   conflict, an unknown outcome, the caller dropped the write's future)
//!   the key is dropped. A load that shared the write's lease may have
//!   stored what it read before the write: the write then drops it. Every
//!   lease is taken before the key's tracking connection is chosen, so a
//!   connection replaced in between (which flushes) voids it.
//! - **Touches are written through** the same way (`touch` moves only the
//!   last access and the idle deadline): the lease also takes the copy it
//!   replaces, and when the touch applied under a lease still there, that
//!   copy with the two deadlines patched in becomes the copy again, as old
//!   as it was (a patch does not renew `max_age`). It equals the server's
//!   record: another client's write between the copy's read and the touch
//!   was pushed before the touch's reply, voiding the lease; this
//!   instance's own write in flight on the tracking connection (an update
//!   whose lease a load shared) drops the key when it completes, as it
//!   does for that load's copy. A touch that deleted the key (its new
//!   deadline already passed) keeps nothing.
//! - **Other own writes.** When another write of this store returns (it goes
//!   on the ordinary connection, so the server pushes it like anyone's), the
//!   keys it changed are dropped locally (the push may still be on its way).
//!   That also voids the lease of any load that read them before the write.
//!   Writes that can change keys the store does not name beforehand
//!   (`delete` following a rotation's moves, "log out everywhere", a call
//!   that failed half-way) end with a *barrier* instead: a `ROLE` on the
//!   tracking connections. The server pushes the invalidations of a write
//!   before it answers a command it reads after the write, and the push
//!   handler runs before the `ROLE`'s reply is delivered, so when such a
//!   write returns, this instance has dropped every key it touched. A write
//!   whose outcome is unknown (timed out, connection lost) empties the
//!   cache.
//! - **Doubt empties the cache.** A dropped or killed tracking connection,
//!   a failed barrier, a `FLUSHALL`, a failover (a primary that turns
//!   replica, a changed cluster topology, a `READONLY` or redirect reply on
//!   a tracking connection) or a server's tracking table over half its
//!   `tracking-table-max-keys` (Redis does not push a `NOLOOP` client the
//!   keys it forgets during that client's own command) empties the cache,
//!   and nothing is served from it again until tracking is re-established;
//!   a heartbeat late by more than the staleness bound stops serving until
//!   it answers (its answer comes after every push sent before it). A new
//!   connection starts with an empty cache.
//! - **Expiry** is judged on every hit by the application's clock, from
//!   the record's own deadlines, exactly as for a `GET`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lru::LruCache;

/// Default bound on cached records.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
/// Default bound on cached bytes (keys and values).
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Default interval of the tracking connections' heartbeat.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(200);
/// Default longest time a copy is kept, however often it is read.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// Cost charged per entry on top of its key and value bytes.
const ENTRY_OVERHEAD: usize = 96;
/// Number of independently locked shards.
const SHARDS: usize = 16;

/// Settings of the near cache (off unless given to
/// [`RedisStoreBuilder::near_cache`](crate::RedisStoreBuilder::near_cache)).
///
/// **Guarantee.** A session ended, rotated, touched or changed by any
/// client stops being served from this cache once the server's
/// invalidation push reaches the store: on loopback, well under a
/// millisecond (see the crate README for the measured distribution). If
/// the store cannot be sure it sees every push (the tracking connection
/// dropped or is silent for longer than
/// [`staleness_bound`](Self::staleness_bound)), it empties the cache
/// before serving another read from it. Writes through this store are
/// visible to its own next `load` without a window (see the module docs).
///
/// **Cost.** One extra connection per primary (which also carries the
/// cached keys' reads, the updates and the touches), a heartbeat, a `ROLE`
/// round trip after each `delete` and `delete_user`, and one `GET` for the
/// first read after a write other than `update` and `touch` (a rotation,
/// another instance's write). On the server: its tracking table remembers, per
/// instance, each key that instance read until the key changes. Redis
/// bounds that table with `tracking-table-max-keys` (default 1,000,000
/// keys, all clients together) and does not tell a `NOLOOP` client of the
/// keys it forgets during that client's own command, so the cache serves
/// only while the table is at most half full (checked by the heartbeat):
/// with many instances or sessions, raise the setting or set it to 0 (no
/// limit). For the same reason the cache needs a server that does not
/// evict keys (`maxmemory-policy noeviction`, the store's default
/// requirement). Tracking is not per database: a `FLUSHDB` of any database
/// empties the cache.
///
/// ```
/// use std::time::Duration;
/// use session_redis::NearCache;
///
/// let cache = NearCache::new()
///     .max_entries(50_000)
///     .max_bytes(128 * 1024 * 1024)
///     .max_age(Duration::from_secs(60));
/// assert_eq!(cache.staleness_bound(), Duration::from_millis(600));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearCache {
    max_entries: usize,
    max_bytes: usize,
    max_age: Duration,
    heartbeat: Duration,
}

impl Default for NearCache {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_bytes: DEFAULT_MAX_BYTES,
            max_age: DEFAULT_MAX_AGE,
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }
}

impl NearCache {
    /// The defaults: [`DEFAULT_MAX_ENTRIES`] records, [`DEFAULT_MAX_BYTES`],
    /// copies kept at most [`DEFAULT_MAX_AGE`], a heartbeat every
    /// [`DEFAULT_HEARTBEAT`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Most records kept (at least 1); the least recently used goes first.
    #[must_use]
    pub fn max_entries(mut self, entries: usize) -> Self {
        self.max_entries = entries.max(1);
        self
    }

    /// Most bytes kept, counting each record's key, value and about 100
    /// bytes of bookkeeping; the least recently used goes first. A record
    /// larger than a sixteenth of this is never cached.
    #[must_use]
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Longest time a copy is served after it was read from Redis, however
    /// often it is used: a last line of defence, not the coherence
    /// mechanism.
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// How often the tracking connections are checked (`ROLE`: still a
    /// primary; the slot map on a cluster; the server's tracking table not
    /// over half full).
    /// Bounded below by 10 ms.
    #[must_use]
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_millis(10));
        self
    }

    /// How long the cache keeps serving while its heartbeat gets no answer:
    /// three heartbeats. Past it, reads go to Redis until tracking answers
    /// again, so a connection that died silently (no reset reached the
    /// application) cannot serve copies older than this.
    #[must_use]
    pub fn staleness_bound(&self) -> Duration {
        self.heartbeat.saturating_mul(3)
    }

    pub(crate) fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }
}

/// Counters of one store's near cache, as returned by
/// [`RedisStore::near_cache_stats`](crate::RedisStore::near_cache_stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearCacheStats {
    /// Loads answered from the cache.
    pub hits: u64,
    /// Loads that went to Redis.
    pub misses: u64,
    /// Keys dropped because the server said they changed.
    pub invalidations: u64,
    /// Times the whole cache was emptied (lost tracking, failover, flush).
    pub flushes: u64,
    /// Records held now.
    pub entries: u64,
    /// Bytes held now (as counted for [`NearCache::max_bytes`]).
    pub bytes: u64,
    /// Whether reads are served from the cache right now.
    pub serving: bool,
}

/// What sits under a key.
enum Slot {
    /// A load or write in flight that may store its result if nothing
    /// invalidates the key first.
    Lease(u64),
    /// A record's bytes as read from Redis (shared with the records
    /// decoded from them: a hit copies nothing).
    Value { bytes: Bytes, stored: Instant },
}

struct Shard {
    /// Unbounded by itself (a bounded `LruCache` would allocate its whole
    /// table up front): `put` enforces `max_entries`.
    map: LruCache<Box<[u8]>, Slot>,
    bytes: usize,
    max_entries: usize,
}

impl Shard {
    fn weight(key: &[u8], slot: &Slot) -> usize {
        key.len()
            + ENTRY_OVERHEAD
            + match slot {
                Slot::Lease(_) => 0,
                Slot::Value { bytes, .. } => bytes.len(),
            }
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        match self.map.pop_entry(key) {
            Some((k, slot)) => {
                self.bytes -= Self::weight(&k, &slot);
                true
            }
            None => false,
        }
    }

    fn put(&mut self, key: Box<[u8]>, slot: Slot, max_bytes: usize) {
        self.remove(&key);
        self.bytes += Self::weight(&key, &slot);
        self.map.push(key, slot);
        // The least recently used entries make room.
        while self.bytes > max_bytes || self.map.len() > self.max_entries {
            match self.map.pop_lru() {
                Some((k, old)) => self.bytes -= Self::weight(&k, &old),
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

/// A lease on one key, taken before a `GET` is sent.
pub(crate) struct Lease {
    token: u64,
    generation: u64,
}

/// A write's lease, completed by [`WriteGuard::complete`]; if the write's
/// future is dropped first (a client that went away, an application
/// timeout), the key is dropped: a load that shared the lease may have
/// stored what it read before the write.
pub(crate) struct WriteGuard<'a> {
    cache: &'a LocalCache,
    key: &'a [u8],
    lease: Option<Lease>,
}

impl WriteGuard<'_> {
    /// Ends the write; see [`LocalCache::complete_write`].
    pub(crate) fn complete(mut self, written: Option<Bytes>) {
        if let Some(lease) = self.lease.take() {
            self.cache
                .complete_write_stamped(self.key, lease, written, Instant::now());
        }
    }

    /// Ends a write that changed part of `copy` (a touch): `patched`, the
    /// copy with the write applied, is kept as for
    /// [`complete`](Self::complete), but as old as `copy` (a patch does not
    /// renew [`NearCache::max_age`]).
    pub(crate) fn complete_patched(mut self, copy: &CachedCopy, patched: Bytes) {
        if let Some(lease) = self.lease.take() {
            self.cache
                .complete_write_stamped(self.key, lease, Some(patched), copy.stored);
        }
    }
}

/// The copy a write replaced with its lease (see
/// [`LocalCache::write_guard_over_copy`]).
pub(crate) struct CachedCopy {
    /// The cached record's bytes.
    pub(crate) bytes: Bytes,
    /// When they were read from Redis.
    stored: Instant,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.cache.complete_write(self.key, lease, None);
        }
    }
}

/// The cache proper: shards, leases, and whether it may serve.
pub(crate) struct LocalCache {
    config: NearCache,
    shards: Box<[Mutex<Shard>]>,
    /// Bumped by every flush; a lease of an older generation stores nothing.
    generation: AtomicU64,
    /// Tracking is established on every primary.
    tracking: AtomicBool,
    /// When the heartbeat last got every answer, in ms since `epoch`.
    last_heartbeat_ms: AtomicU64,
    epoch: Instant,
    next_token: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
}

impl LocalCache {
    pub(crate) fn new(config: NearCache) -> Self {
        let per_shard_entries = config.max_entries.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    map: LruCache::unbounded(),
                    bytes: 0,
                    max_entries: per_shard_entries,
                })
            })
            .collect();
        Self {
            config,
            shards,
            generation: AtomicU64::new(0),
            tracking: AtomicBool::new(false),
            last_heartbeat_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            next_token: AtomicU64::new(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    pub(crate) fn config(&self) -> &NearCache {
        &self.config
    }

    fn shard(&self, key: &[u8]) -> std::sync::MutexGuard<'_, Shard> {
        // FNV-1a: keys are already uniform (they end in a hash), any mix will do.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        let index = usize::try_from(h % SHARDS as u64).unwrap_or(0);
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn max_shard_bytes(&self) -> usize {
        self.config.max_bytes / SHARDS
    }

    /// Now, in ms of the cache's own monotonic clock (for
    /// [`Self::heartbeat_ok`]).
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether reads may be served from the cache now.
    pub(crate) fn serving(&self) -> bool {
        if !self.tracking.load(Ordering::Acquire) {
            return false;
        }
        let last = self.last_heartbeat_ms.load(Ordering::Acquire);
        let bound = u64::try_from(self.config.staleness_bound().as_millis()).unwrap_or(u64::MAX);
        self.now_ms().saturating_sub(last) <= bound
    }

    /// The heartbeat sent at `sent` (see [`Self::now_ms`]) got every answer.
    pub(crate) fn heartbeat_ok(&self, sent: u64) {
        self.last_heartbeat_ms.fetch_max(sent, Ordering::AcqRel);
    }

    /// Tracking is established on every primary: start serving.
    pub(crate) fn start_serving(&self) {
        self.heartbeat_ok(self.now_ms());
        self.tracking.store(true, Ordering::Release);
    }

    /// Tracking was lost or is in doubt: stop serving and empty the cache.
    pub(crate) fn stop_serving(&self) {
        self.tracking.store(false, Ordering::Release);
        self.flush();
    }

    /// The cached bytes of `key`, if serving and present and not too old.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Bytes> {
        if !self.serving() {
            return None;
        }
        let mut shard = self.shard(key);
        let hit = match shard.map.get(key) {
            Some(Slot::Value { bytes, stored }) if stored.elapsed() <= self.config.max_age => {
                Some(bytes.clone())
            }
            Some(Slot::Value { .. }) => {
                shard.remove(key);
                None
            }
            _ => None,
        };
        drop(shard);
        if hit.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Takes a lease on `key` before its `GET` is sent (`None` when not
    /// serving: the reply is then not stored).
    pub(crate) fn lease(&self, key: &[u8]) -> Option<Lease> {
        if !self.serving() {
            return None;
        }
        let generation = self.generation.load(Ordering::Acquire);
        let mut shard = self.shard(key);
        // A lease already there was taken before this load's GET goes out
        // and no invalidation has removed it since: sharing it is as safe,
        // and keeps a hot key from having every reply voided by the next
        // load's new lease.
        if let Some(Slot::Lease(token)) = shard.map.peek(key) {
            return Some(Lease {
                token: *token,
                generation,
            });
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let max = self.max_shard_bytes();
        shard.put(key.into(), Slot::Lease(token), max);
        Some(Lease { token, generation })
    }

    /// Stores `value` (the `GET` reply; `None` stores nothing) if `lease`
    /// is still under `key`: no invalidation and no flush came in between.
    pub(crate) fn complete(&self, key: &[u8], lease: Lease, value: Option<Bytes>) {
        let mut shard = self.shard(key);
        let ours = matches!(shard.map.peek(key), Some(Slot::Lease(t)) if *t == lease.token);
        if !ours {
            return;
        }
        match value {
            Some(bytes)
                if self.generation.load(Ordering::Acquire) == lease.generation
                    && key.len() + bytes.len() + ENTRY_OVERHEAD <= self.max_shard_bytes() =>
            {
                let slot = Slot::Value {
                    bytes,
                    stored: Instant::now(),
                };
                let max = self.max_shard_bytes();
                shard.put(key.into(), slot, max);
            }
            _ => {
                shard.remove(key);
            }
        }
    }

    /// Takes a lease on `key` for a write sent on its tracking connection,
    /// replacing whatever is there (a copy, or another call's lease, whose
    /// reply then stores nothing), and returns the copy it replaced (if one
    /// was cached and younger than `max_age`), for a write that changes
    /// part of it (a touch): the server held exactly those bytes when the
    /// lease was taken, unless an invalidation is on its way (which then
    /// voids the lease) or an own write of this instance is in flight
    /// (which drops the key when it completes). `None` when not serving.
    fn write_lease_over_copy(&self, key: &[u8]) -> Option<(Lease, Option<CachedCopy>)> {
        if !self.serving() {
            return None;
        }
        let generation = self.generation.load(Ordering::Acquire);
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let max = self.max_shard_bytes();
        let mut shard = self.shard(key);
        let copy = match shard.map.peek(key) {
            Some(Slot::Value { bytes, stored }) if stored.elapsed() <= self.config.max_age => {
                Some(CachedCopy {
                    bytes: bytes.clone(),
                    stored: *stored,
                })
            }
            _ => None,
        };
        shard.put(key.into(), Slot::Lease(token), max);
        Some((Lease { token, generation }, copy))
    }

    /// [`Self::write_lease_over_copy`] without the copy.
    #[cfg(test)]
    fn write_lease(&self, key: &[u8]) -> Option<Lease> {
        self.write_lease_over_copy(key).map(|(lease, _)| lease)
    }

    /// [`Self::write_lease_over_copy`], the lease held by a guard that
    /// drops the key unless the write completes it.
    pub(crate) fn write_guard_over_copy<'a>(
        &'a self,
        key: &'a [u8],
    ) -> Option<(WriteGuard<'a>, Option<CachedCopy>)> {
        let (lease, copy) = self.write_lease_over_copy(key)?;
        let guard = WriteGuard {
            cache: self,
            key,
            lease: Some(lease),
        };
        Some((guard, copy))
    }

    /// Ends a write taken with [`Self::write_lease_over_copy`]: `written` (the bytes
    /// the write stored, `None` if it stored nothing or its outcome is
    /// unknown) becomes the copy if the lease is still under `key` (no
    /// invalidation, no flush and no later lease came in between).
    /// Otherwise whatever is under `key` is dropped: a load that shared
    /// the lease may have stored what it read before the write.
    pub(crate) fn complete_write(&self, key: &[u8], lease: Lease, written: Option<Bytes>) {
        self.complete_write_stamped(key, lease, written, Instant::now());
    }

    /// [`Self::complete_write`], the copy counted as read at `stored`.
    fn complete_write_stamped(
        &self,
        key: &[u8],
        lease: Lease,
        written: Option<Bytes>,
        stored: Instant,
    ) {
        let mut shard = self.shard(key);
        let ours = matches!(shard.map.peek(key), Some(Slot::Lease(t)) if *t == lease.token);
        match written {
            Some(bytes)
                if ours
                    && self.generation.load(Ordering::Acquire) == lease.generation
                    && key.len() + bytes.len() + ENTRY_OVERHEAD <= self.max_shard_bytes() =>
            {
                let slot = Slot::Value { bytes, stored };
                let max = self.max_shard_bytes();
                shard.put(key.into(), slot, max);
            }
            _ => {
                shard.remove(key);
            }
        }
    }

    /// Drops `key` (and any lease on it): the server said it changed.
    pub(crate) fn invalidate(&self, key: &[u8]) {
        if self.shard(key).remove(key) {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops everything, and every lease taken before.
    pub(crate) fn flush(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for shard in self.shards.iter() {
            shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> NearCacheStats {
        let (mut entries, mut bytes) = (0u64, 0u64);
        for shard in self.shards.iter() {
            let shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            entries += shard
                .map
                .iter()
                .filter(|(_, s)| matches!(s, Slot::Value { .. }))
                .count() as u64;
            bytes += shard.bytes as u64;
        }
        NearCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            entries,
            bytes,
            serving: self.serving(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving_cache(config: NearCache) -> LocalCache {
        let cache = LocalCache::new(config);
        cache.start_serving();
        cache
    }

    #[test]
    fn a_reply_is_stored_only_under_its_own_lease() {
        let cache = serving_cache(NearCache::new());
        let lease = cache.lease(b"k").expect("serving");
        cache.complete(b"k", lease, Some(Bytes::from_static(b"v1")));
        assert_eq!(cache.get(b"k").as_deref(), Some(&b"v1"[..]));

        // An invalidation between the lease and the reply: nothing stored.
        let lease = cache.lease(b"k").expect("serving");
        cache.invalidate(b"k");
        cache.complete(b"k", lease, Some(Bytes::from_static(b"stale")));
        assert_eq!(cache.get(b"k"), None);

        // Loads racing on one key share its lease: the first reply is
        // stored, the later one finds a value, not its lease, and leaves it.
        let first = cache.lease(b"k").expect("serving");
        let second = cache.lease(b"k").expect("serving");
        cache.complete(b"k", first, Some(Bytes::from_static(b"first")));
        cache.complete(b"k", second, Some(Bytes::from_static(b"second")));
        assert_eq!(cache.get(b"k").as_deref(), Some(&b"first"[..]));
    }

    #[test]
    fn a_write_keeps_its_bytes_only_under_its_own_lease() {
        let cache = serving_cache(NearCache::new());
        // Written through: the next read is a hit on the written bytes.
        let lease = cache.write_lease(b"k").expect("serving");
        cache.complete_write(b"k", lease, Some(Bytes::from_static(b"v2")));
        assert_eq!(cache.get(b"k").as_deref(), Some(&b"v2"[..]));

        // Another client's write pushed before this one's reply was
        // handled: nothing kept, the old copy is gone too.
        let lease = cache.write_lease(b"k").expect("serving");
        cache.invalidate(b"k");
        cache.complete_write(b"k", lease, Some(Bytes::from_static(b"v3")));
        assert_eq!(cache.get(b"k"), None);

        // A load sharing the write's lease stored what it read (maybe
        // from before the write): the write drops it, keeps nothing.
        let write = cache.write_lease(b"k").expect("serving");
        let load = cache.lease(b"k").expect("serving");
        cache.complete(b"k", load, Some(Bytes::from_static(b"old")));
        cache.complete_write(b"k", write, Some(Bytes::from_static(b"new")));
        assert_eq!(cache.get(b"k"), None);

        // A load's lease taken before the write is voided by it.
        let load = cache.lease(b"k").expect("serving");
        let write = cache.write_lease(b"k").expect("serving");
        cache.complete_write(b"k", write, Some(Bytes::from_static(b"new")));
        cache.complete(b"k", load, Some(Bytes::from_static(b"old")));
        assert_eq!(cache.get(b"k").as_deref(), Some(&b"new"[..]));

        // Two writes: only the later lease may keep its bytes; the
        // earlier one, ending last, drops them.
        let first = cache.write_lease(b"k").expect("serving");
        let second = cache.write_lease(b"k").expect("serving");
        cache.complete_write(b"k", second, Some(Bytes::from_static(b"second")));
        cache.complete_write(b"k", first, Some(Bytes::from_static(b"first")));
        assert_eq!(cache.get(b"k"), None);

        // A write that stored nothing (conflict, unknown outcome) drops the copy.
        let lease = cache.write_lease(b"k").expect("serving");
        cache.complete_write(b"k", lease, None);
        assert_eq!(cache.get(b"k"), None);

        // A write whose future was dropped (after its script went out, a
        // load sharing its lease stored what it read before): the key goes.
        let (write, _) = cache.write_guard_over_copy(b"k").expect("serving");
        let load = cache.lease(b"k").expect("serving");
        cache.complete(b"k", load, Some(Bytes::from_static(b"before the write")));
        drop(write);
        assert_eq!(cache.get(b"k"), None);

        // A flush voids a write lease like a load's.
        let lease = cache.write_lease(b"k").expect("serving");
        cache.flush();
        cache.complete_write(b"k", lease, Some(Bytes::from_static(b"v")));
        assert_eq!(cache.get(b"k"), None);
    }

    #[test]
    fn a_patch_keeps_the_copy_it_replaced_only_under_its_lease() {
        let cache = serving_cache(NearCache::new().max_age(Duration::from_secs(1)));
        let lease = cache.lease(b"k").expect("serving");
        cache.complete(b"k", lease, Some(Bytes::from_static(b"v1")));

        // The copy comes back with the lease, which replaces it.
        let (guard, copy) = cache.write_guard_over_copy(b"k").expect("serving");
        let copy = copy.expect("a copy was cached");
        assert_eq!(&copy.bytes[..], b"v1");
        assert_eq!(cache.get(b"k"), None, "the lease replaced the copy");
        guard.complete_patched(&copy, Bytes::from_static(b"v1 touched"));
        assert_eq!(cache.get(b"k").as_deref(), Some(&b"v1 touched"[..]));

        // An invalidation in between: nothing kept.
        let (guard, copy) = cache.write_guard_over_copy(b"k").expect("serving");
        cache.invalidate(b"k");
        guard.complete_patched(&copy.expect("cached"), Bytes::from_static(b"stale"));
        assert_eq!(cache.get(b"k"), None);

        // No copy: nothing to patch, and the lease still voids a load's.
        let load = cache.lease(b"k").expect("serving");
        let (guard, copy) = cache.write_guard_over_copy(b"k").expect("serving");
        assert!(copy.is_none());
        cache.complete(b"k", load, Some(Bytes::from_static(b"read before")));
        guard.complete(None);
        assert_eq!(cache.get(b"k"), None);

        // A patch does not renew the copy's age (the heartbeat is kept
        // fresh, so only `max_age` can make the copy go).
        let lease = cache.lease(b"k").expect("serving");
        cache.complete(b"k", lease, Some(Bytes::from_static(b"v2")));
        std::thread::sleep(Duration::from_millis(600));
        cache.heartbeat_ok(cache.now_ms());
        let (guard, copy) = cache.write_guard_over_copy(b"k").expect("serving");
        guard.complete_patched(&copy.expect("cached"), Bytes::from_static(b"v2 touched"));
        assert!(cache.get(b"k").is_some());
        std::thread::sleep(Duration::from_millis(600));
        cache.heartbeat_ok(cache.now_ms());
        assert!(cache.serving());
        assert_eq!(
            cache.get(b"k"),
            None,
            "older than max_age since it was read"
        );
    }

    #[test]
    fn a_flush_voids_every_lease_taken_before_it() {
        let cache = serving_cache(NearCache::new());
        let lease = cache.lease(b"k").expect("serving");
        cache.flush();
        // Even if a lease with the same token were put back, the generation differs.
        cache.complete(b"k", lease, Some(Bytes::from_static(b"stale")));
        assert_eq!(cache.get(b"k"), None);
        assert_eq!(cache.stats().flushes, 1);
    }

    #[test]
    fn nothing_is_served_or_leased_without_tracking() {
        let cache = serving_cache(NearCache::new());
        let lease = cache.lease(b"k").expect("serving");
        cache.complete(b"k", lease, Some(Bytes::from_static(b"v")));
        cache.stop_serving();
        assert_eq!(cache.get(b"k"), None);
        assert!(cache.lease(b"k").is_none());
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn a_silent_heartbeat_stops_serving() {
        let cache = serving_cache(NearCache::new().heartbeat(Duration::from_millis(10)));
        let lease = cache.lease(b"k").expect("serving");
        cache.complete(b"k", lease, Some(Bytes::from_static(b"v")));
        assert!(cache.get(b"k").is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(cache.get(b"k"), None, "served past the staleness bound");
        cache.heartbeat_ok(cache.now_ms());
        assert!(cache.get(b"k").is_some());
    }

    #[test]
    fn bounds_on_entries_and_bytes_hold() {
        let cache = serving_cache(NearCache::new().max_entries(32).max_bytes(SHARDS * 1000));
        for i in 0..1000u32 {
            let key = format!("key-{i}");
            let lease = cache.lease(key.as_bytes()).expect("serving");
            cache.complete(key.as_bytes(), lease, Some(Bytes::from(vec![0u8; 300])));
        }
        let stats = cache.stats();
        assert!(stats.entries <= 32, "{stats:?}");
        assert!(stats.bytes <= (SHARDS * 1000) as u64, "{stats:?}");
        // Too large for any shard: never stored.
        let lease = cache.lease(b"big").expect("serving");
        cache.complete(b"big", lease, Some(Bytes::from(vec![0u8; 2000])));
        assert_eq!(cache.get(b"big"), None);
    }

    #[test]
    fn copies_older_than_max_age_are_not_served() {
        let cache = serving_cache(NearCache::new().max_age(Duration::from_millis(20)));
        let lease = cache.lease(b"k").expect("serving");
        cache.complete(b"k", lease, Some(Bytes::from_static(b"v")));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(b"k"), None);
    }
}
