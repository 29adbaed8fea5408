//! [`MemoryStore`]: the embedded default store.
//!
//! A real store, not a toy: insert-only create, versioned compare-and-set,
//! exact expiry on load, a per-user index, and a background sweeper. It is
//! sharded ([`DashMap`]) and never holds a lock across an `.await`, so it stays
//! fast under contention. Sessions live in this process only: use a shared
//! backend when you run more than one instance.
//!
//! Reads, updates and touches go straight to the sharded map. Every call that
//! changes which sessions exist or which user they are indexed under
//! (`create`, `create_with`, `delete`, `delete_user`), and `list_user_sessions`,
//! runs under one lifecycle lock, never held across an `.await` and held for
//! microseconds (except when a full store sweeps to make room, at most once
//! a second, which scans every record), so
//! those calls are atomic with respect to each other: a `delete_user` can
//! never miss a session a racing login is creating, and a rotation can never
//! slip between a logout's steps.
//!
//! The store is bounded ([`DEFAULT_MAX_SESSIONS`] unless
//! [`MemoryStoreBuilder::max_sessions`] says otherwise), so a flood of new
//! sessions cannot exhaust the process's memory. When it is full, `create`
//! first drops expired records (at most once a second), then refuses with
//! [`StoreError::Unavailable`] wrapping [`MemoryStoreFull`]: existing
//! sessions keep working, new ones wait until some end.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::expiry::{Batch, ExpiryTask};
use crate::key::StorageKey;
use crate::policy::LimitStrategy;
use crate::record::{SessionRecord, SessionSummary};
use crate::store::{newest_first, CreateOptions, Created, SessionStore, StoreError, StoreResult};

/// Storage keys are uniformly random hashes of server-generated IDs, so a
/// fast seeded hasher is safe here (clients cannot choose stored keys).
type FastHash = foldhash::fast::RandomState;

/// How many sessions a [`MemoryStore`] holds unless configured otherwise.
pub const DEFAULT_MAX_SESSIONS: usize = 1_000_000;

/// A full store sweeps expired records to make room at most this often.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Where a rotated-away key's session went, and until when that matters.
#[derive(Clone)]
struct Moved {
    to: StorageKey,
    until: Timestamp,
}

/// Most moves `delete` follows from one key (a session rotated more often
/// than this within one lifetime is deleted up to here).
const MAX_MOVES: usize = 64;

struct Inner {
    records: DashMap<StorageKey, SessionRecord, FastHash>,
    users: DashMap<String, HashSet<StorageKey, FastHash>, FastHash>,
    moved: DashMap<StorageKey, Moved, FastHash>,
    /// Serializes the calls that create, move or delete sessions.
    lifecycle: Mutex<()>,
    clock: Arc<dyn Clock>,
    /// Records held plus creates in flight that reserved a slot.
    count: AtomicUsize,
    max_sessions: usize,
    /// When a full store last swept to make room (unix ms).
    last_full_sweep: AtomicI64,
}

/// [`MemoryStore::create`](SessionStore::create) found the store full of
/// live sessions. Carried inside [`StoreError::Unavailable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the in-memory session store is full ({max_sessions} live sessions); raise MemoryStoreBuilder::max_sessions, shorten the idle timeout, or use a shared backend")]
pub struct MemoryStoreFull {
    /// The configured bound.
    pub max_sessions: usize,
}

/// Configures a [`MemoryStore`]: its clock and its bound.
#[derive(Clone)]
pub struct MemoryStoreBuilder {
    clock: Arc<dyn Clock>,
    max_sessions: usize,
}

impl std::fmt::Debug for MemoryStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStoreBuilder")
            .field("max_sessions", &self.max_sessions)
            .finish_non_exhaustive()
    }
}

impl MemoryStoreBuilder {
    /// Judges expiry by `clock` instead of the system clock.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Holds at most `max` records (default [`DEFAULT_MAX_SESSIONS`]).
    /// Size it for the sessions you expect to be live at once: each costs
    /// its data plus about 200 bytes.
    #[must_use]
    pub fn max_sessions(mut self, max: usize) -> Self {
        self.max_sessions = max;
        self
    }

    /// The store.
    #[must_use]
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            inner: Arc::new(Inner {
                records: DashMap::with_hasher(FastHash::default()),
                users: DashMap::with_hasher(FastHash::default()),
                moved: DashMap::with_hasher(FastHash::default()),
                lifecycle: Mutex::new(()),
                clock: self.clock,
                count: AtomicUsize::new(0),
                max_sessions: self.max_sessions,
                last_full_sweep: AtomicI64::new(i64::MIN),
            }),
        }
    }
}

/// An in-process session store. Cheap to clone; clones share the data.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("records", &self.inner.records.len())
            .field("max_sessions", &self.inner.max_sessions)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock, holding at most
    /// [`DEFAULT_MAX_SESSIONS`] sessions.
    #[must_use]
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// An empty store that judges expiry by `clock`.
    #[must_use]
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self::builder().clock(clock).build()
    }

    /// A builder: system clock, [`DEFAULT_MAX_SESSIONS`].
    #[must_use]
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            clock: Arc::new(SystemClock),
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }

    /// The most records this store holds.
    #[must_use]
    pub fn max_sessions(&self) -> usize {
        self.inner.max_sessions
    }

    /// Number of records held, live or not yet swept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.records.len()
    }

    /// Whether the store holds no records.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.inner.records.is_empty()
    }

    /// Spawns an [`ExpiryTask`] on the current Tokio runtime that removes
    /// expired records (and rotation markers), as
    /// [`SessionStore::delete_expired`] does, every `period` (at least
    /// [`MIN_PERIOD`](crate::expiry::MIN_PERIOD)).
    ///
    /// The task holds only a weak reference: it ends by itself once every
    /// clone of the store is dropped, and when the returned handle is
    /// dropped or [`ExpiryTask::shutdown`] is called. A sweep takes the
    /// lifecycle lock only to drop the index entries of what it removed, so
    /// it runs alongside requests.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    #[must_use = "the sweeper stops when its handle is dropped"]
    pub fn spawn_sweeper(&self, period: Duration) -> ExpiryTask {
        ExpiryTask::spawn_batches(
            Arc::downgrade(&self.inner),
            period,
            |inner: Arc<Inner>| async move { Ok(Batch::last(MemoryStore { inner }.sweep(false))) },
        )
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn unindex(&self, user: &str, key: &StorageKey) {
        if let Entry::Occupied(mut e) = self.inner.users.entry(user.to_owned()) {
            e.get_mut().remove(key);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere leaves nothing torn.
        self.inner
            .lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn index(&self, user: &str, key: &StorageKey) {
        self.inner
            .users
            .entry(user.to_owned())
            .or_default()
            .insert(key.clone());
    }

    /// The live record under `key`, cloned (no map guard is kept).
    fn live(&self, key: &StorageKey, now: Timestamp) -> Option<SessionRecord> {
        self.inner
            .records
            .get(key)
            .filter(|r| !r.is_expired_at(now))
            .map(|r| r.clone())
    }

    /// Removes the record under `key` with its slot and index entry.
    fn remove(&self, key: &StorageKey) -> Option<SessionRecord> {
        let (_, r) = self.inner.records.remove(key)?;
        self.release();
        if let Some(u) = &r.user_id {
            self.unindex(u, key);
        }
        Some(r)
    }

    /// Stores `record` under `key`, whose slot the caller reserved: over an
    /// expired record (whose slot it reuses) or into a vacant entry. Call
    /// with the lifecycle lock held.
    fn insert_reserved(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        now: Timestamp,
    ) -> StoreResult<()> {
        let replaced_user = match self.inner.records.entry(key.clone()) {
            Entry::Occupied(e) if !e.get().is_expired_at(now) => {
                drop(e);
                self.release();
                return Err(StoreError::AlreadyExists);
            }
            Entry::Occupied(mut e) => {
                self.release();
                let old = std::mem::replace(e.get_mut(), record.clone());
                old.user_id
            }
            Entry::Vacant(e) => {
                e.insert(record.clone());
                None
            }
        };
        if let Some(u) = replaced_user.filter(|u| Some(u) != record.user_id.as_ref()) {
            self.unindex(&u, key);
        }
        self.inner.moved.remove(key);
        if let Some(u) = &record.user_id {
            self.index(u, key);
        }
        Ok(())
    }

    /// Records that `from` moved to `to` until `until`. The markers are
    /// bounded like the records: at `max_sessions` markers the expired ones
    /// are dropped, and if none has expired the new one is not kept (a
    /// logout with the old ID then ends only what it still finds), so
    /// repeated logins cannot grow memory without bound.
    fn remember_move(&self, from: StorageKey, to: &StorageKey, until: Timestamp, now: Timestamp) {
        let moved = &self.inner.moved;
        if moved.len() >= self.inner.max_sessions {
            moved.retain(|_, m| now < m.until);
            if moved.len() >= self.inner.max_sessions {
                tracing::warn!(
                    target: "session_core::memory",
                    max_sessions = self.inner.max_sessions,
                    "too many rotated-away session IDs to remember; this one is forgotten"
                );
                return;
            }
        }
        moved.insert(
            from,
            Moved {
                to: to.clone(),
                until,
            },
        );
    }

    /// `create_with` under the lifecycle lock.
    fn create_locked(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
        now: Timestamp,
    ) -> StoreResult<Created> {
        // 1. Every check first: on an error nothing is written.
        let old = match &options.replaces {
            None => None,
            Some(r) => {
                let current = self.live(&r.key, now).ok_or(StoreError::NotFound)?;
                let other_user = current.user_id.is_some() && current.user_id != record.user_id;
                if current.version != r.version || other_user {
                    return Err(StoreError::Conflict);
                }
                Some((r.key.clone(), current.expires_at()))
            }
        };
        if self.live(key, now).is_some() {
            return Err(StoreError::AlreadyExists);
        }
        let mut evicted = Vec::new();
        if let (Some(limit), Some(user)) = (options.limit, &record.user_id) {
            let mut others: Vec<(Timestamp, StorageKey)> = self
                .inner
                .users
                .get(user)
                .map(|set| set.iter().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .filter(|k| k != key && old.as_ref().is_none_or(|(o, _)| o != k))
                .filter_map(|k| {
                    let r = self.live(&k, now)?;
                    (r.user_id.as_deref() == Some(user)).then_some((r.created_at, k))
                })
                .collect();
            match limit.strategy {
                LimitStrategy::RejectNew if others.len() >= limit.max.get() => {
                    return Err(StoreError::UserLimitReached {
                        max: limit.max.get(),
                    });
                }
                LimitStrategy::EvictOldest => {
                    others.push((record.created_at, key.clone()));
                    others.sort_by(|a, b| newest_first((a.0, &a.1), (b.0, &b.1)));
                    evicted = others
                        .split_off(limit.max.get().min(others.len()))
                        .into_iter()
                        .map(|(_, k)| k)
                        .collect();
                }
                _ => {}
            }
        }
        let stays = !evicted.contains(key);
        // 2. A slot for the new record: the moved record's, or a new one.
        if old.is_none() && stays {
            self.reserve(now)?;
        }
        // 3. The writes. Only the first can fail: `update` and `touch` take
        // no lock, so the old record may have moved on to another version
        // (or the sweeper removed it, expired) since it was checked. It is
        // removed only as it was checked, else nothing is written.
        if let Some((old_key, until)) = old {
            let version = options.replaces.as_ref().map_or(0, |r| r.version);
            let removed = self.inner.records.remove_if(&old_key, |_, r| {
                r.version == version && !r.is_expired_at(now)
            });
            let Some((_, r)) = removed else {
                return Err(if self.live(&old_key, now).is_some() {
                    StoreError::Conflict
                } else {
                    StoreError::NotFound
                });
            };
            if let Some(u) = &r.user_id {
                self.unindex(u, &old_key);
            }
            self.remember_move(old_key, key, until, now);
            if !stays {
                self.release();
            }
        }
        for victim in evicted.iter().filter(|k| *k != key) {
            self.remove(victim);
            self.inner.moved.remove(victim);
        }
        if stays {
            self.insert_reserved(key, record, now)?;
        }
        Ok(Created::with_evicted(evicted))
    }

    /// Removes expired records and moved markers. The index entries of the
    /// removed records go under the lifecycle lock (taken here unless the
    /// caller holds it), and only where no create has put a record of the
    /// same user under the key again since.
    fn sweep(&self, lock_held: bool) -> u64 {
        let now = self.now();
        self.inner.moved.retain(|_, m| now < m.until);
        let mut dead = Vec::new();
        self.inner.records.retain(|k, r| {
            let live = !r.is_expired_at(now);
            if !live {
                dead.push((k.clone(), r.user_id.clone()));
            }
            live
        });
        self.inner.count.fetch_sub(dead.len(), Ordering::AcqRel);
        let _lock = (!lock_held).then(|| self.lock());
        for (k, user) in &dead {
            if let Some(u) = user {
                self.unindex_if_gone(u, k);
            }
        }
        dead.len() as u64
    }

    /// Drops `key` from `user`'s index unless a record of that user is under
    /// it (checked first, with no index guard held). Call under the
    /// lifecycle lock, so no create can slip in between.
    fn unindex_if_gone(&self, user: &str, key: &StorageKey) {
        let recreated = self
            .inner
            .records
            .get(key)
            .is_some_and(|r| r.user_id.as_deref() == Some(user));
        if !recreated {
            self.unindex(user, key);
        }
    }

    /// Takes a slot for a new record: on a full store, sweeps (at most once
    /// per [`FULL_SWEEP_INTERVAL`], so a flood cannot make every create scan
    /// the whole map) and tries once more.
    fn reserve(&self, now: Timestamp) -> StoreResult<()> {
        if self.try_reserve() {
            return Ok(());
        }
        let last = self.inner.last_full_sweep.load(Ordering::Acquire);
        let interval = i64::try_from(FULL_SWEEP_INTERVAL.as_millis()).unwrap_or(i64::MAX);
        let due = now.as_unix_millis().saturating_sub(last) >= interval;
        if due
            && self
                .inner
                .last_full_sweep
                .compare_exchange(
                    last,
                    now.as_unix_millis(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            let removed = self.sweep(true);
            if self.try_reserve() {
                return Ok(());
            }
            tracing::warn!(
                target: "session_core::memory",
                max_sessions = self.inner.max_sessions,
                removed,
                "the in-memory session store is full: new sessions are refused until some end"
            );
        }
        Err(StoreError::unavailable(MemoryStoreFull {
            max_sessions: self.inner.max_sessions,
        }))
    }

    fn try_reserve(&self) -> bool {
        let max = self.inner.max_sessions;
        self.inner
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.inner.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The former type of [`MemoryStore::spawn_sweeper`]'s handle: now the
/// [`ExpiryTask`] every store's background deletion shares.
#[deprecated(note = "MemoryStore::spawn_sweeper returns a session_core::ExpiryTask")]
pub type Sweeper = ExpiryTask;

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
        let _lock = self.lock();
        let now = self.now();
        self.reserve(now)?;
        self.insert_reserved(key, record, now)
    }

    async fn create_with(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Created> {
        let _lock = self.lock();
        let now = self.now();
        self.create_locked(key, record, options, now)
    }

    async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>> {
        let now = self.now();
        Ok(self
            .inner
            .records
            .get(key)
            .filter(|r| !r.is_expired_at(now))
            .map(|r| r.clone()))
    }

    async fn update(
        &self,
        key: &StorageKey,
        expected_version: u64,
        record: &SessionRecord,
    ) -> StoreResult<()> {
        let now = self.now();
        let mut r = match self.inner.records.get_mut(key) {
            Some(r) if !r.is_expired_at(now) => r,
            _ => return Err(StoreError::NotFound),
        };
        if r.version != expected_version {
            return Err(StoreError::Conflict);
        }
        // User and label are fixed at creation.
        let (user_id, label) = (r.user_id.take(), r.label.take());
        *r = SessionRecord {
            user_id,
            label,
            ..record.clone()
        };
        Ok(())
    }

    async fn touch(
        &self,
        key: &StorageKey,
        last_access: Timestamp,
        idle_deadline: Timestamp,
    ) -> StoreResult<()> {
        let now = self.now();
        match self.inner.records.get_mut(key) {
            Some(mut r) if !r.is_expired_at(now) => {
                r.last_access = last_access;
                r.idle_deadline = idle_deadline;
                Ok(())
            }
            _ => Err(StoreError::NotFound),
        }
    }

    async fn delete(&self, key: &StorageKey) -> StoreResult<()> {
        let _lock = self.lock();
        let now = self.now();
        let mut key = key.clone();
        for _ in 0..MAX_MOVES {
            self.remove(&key);
            match self.inner.moved.remove(&key) {
                Some((_, m)) if now < m.until => key = m.to,
                _ => break,
            }
        }
        Ok(())
    }

    async fn list_user_sessions(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
        // Under the lifecycle lock: a rotation is seen before or after,
        // whole, never as neither key.
        let _lock = self.lock();
        let now = self.now();
        let keys: Vec<StorageKey> = match self.inner.users.get(user_id) {
            Some(set) => set.iter().cloned().collect(),
            None => return Ok(Vec::new()),
        };
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let summary = self
                .inner
                .records
                .get(&k)
                .filter(|r| !r.is_expired_at(now) && r.user_id.as_deref() == Some(user_id))
                .map(|r| r.summary(&k));
            match summary {
                Some(s) => out.push(s),
                None => self.unindex_if_gone(user_id, &k),
            }
        }
        Ok(out)
    }

    async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
        let _lock = self.lock();
        let now = self.now();
        let Some((_, keys)) = self.inner.users.remove(user_id) else {
            return Ok(0);
        };
        let mut n = 0;
        for k in keys {
            if let Some((_, r)) = self
                .inner
                .records
                .remove_if(&k, |_, r| r.user_id.as_deref() == Some(user_id))
            {
                self.release();
                n += u64::from(!r.is_expired_at(now));
            }
        }
        Ok(n)
    }

    async fn delete_expired(&self) -> StoreResult<u64> {
        Ok(self.sweep(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(deadline_ms: i64) -> SessionRecord {
        SessionRecord {
            data: bytes::Bytes::new(),
            user_id: Some("u".into()),
            created_at: Timestamp::from_unix_millis(0),
            last_access: Timestamp::from_unix_millis(0),
            idle_deadline: Timestamp::from_unix_millis(deadline_ms),
            absolute_deadline: Timestamp::from_unix_millis(deadline_ms),
            version: 1,
            label: None,
        }
    }

    #[tokio::test]
    async fn sweeper_removes_expired_and_stops_with_the_store() {
        let clock = Arc::new(crate::clock::ManualClock::new(Timestamp::from_unix_millis(
            0,
        )));
        let store = MemoryStore::with_clock(clock.clone());
        store
            .create(&StorageKey::from_stored("a"), &rec(10))
            .await
            .unwrap();
        store
            .create(&StorageKey::from_stored("b"), &rec(1_000))
            .await
            .unwrap();
        clock.set(Timestamp::from_unix_millis(20));
        let sweeper = store.spawn_sweeper(Duration::from_millis(10));
        tokio::time::timeout(Duration::from_secs(5), async {
            while store.len() != 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("sweeper never ran");
        assert_eq!(store.list_user_sessions("u").await.unwrap().len(), 1);
        assert_eq!(store.inner.users.get("u").unwrap().len(), 1);
        drop(store);
        tokio::time::timeout(Duration::from_secs(5), async {
            while !sweeper.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("sweeper outlived its store");
    }

    fn bounded(max: usize) -> (MemoryStore, Arc<crate::clock::ManualClock>) {
        let clock = Arc::new(crate::clock::ManualClock::new(Timestamp::from_unix_millis(
            0,
        )));
        let store = MemoryStore::builder()
            .clock(clock.clone())
            .max_sessions(max)
            .build();
        (store, clock)
    }

    fn k(name: &str) -> StorageKey {
        StorageKey::from_stored(name)
    }

    fn is_full(r: StoreResult<()>) -> bool {
        match r {
            Err(StoreError::Unavailable(e)) => e
                .downcast_ref::<MemoryStoreFull>()
                .is_some_and(|f| f.max_sessions == 2),
            _ => false,
        }
    }

    #[tokio::test]
    async fn a_full_store_refuses_new_sessions_and_keeps_the_old_ones() {
        let (store, _clock) = bounded(2);
        assert_eq!(store.max_sessions(), 2);
        store.create(&k("a"), &rec(10_000)).await.unwrap();
        store.create(&k("b"), &rec(10_000)).await.unwrap();
        let refused = store.create(&k("c"), &rec(10_000)).await;
        assert!(is_full(refused), "third create: expected MemoryStoreFull");
        assert!(store.load(&k("c")).await.unwrap().is_none());
        // The sessions already there keep working.
        let mut next = rec(10_000);
        next.version = 2;
        store.update(&k("a"), 1, &next).await.unwrap();
        assert_eq!(store.load(&k("a")).await.unwrap().unwrap().version, 2);
        // Ending one makes room for one.
        store.delete(&k("b")).await.unwrap();
        store.create(&k("c"), &rec(10_000)).await.unwrap();
        assert!(is_full(store.create(&k("d"), &rec(10_000)).await));
        assert_eq!(store.len(), 2);
    }

    #[tokio::test]
    async fn expired_sessions_make_room_when_full() {
        let (store, clock) = bounded(2);
        store.create(&k("a"), &rec(1_000)).await.unwrap();
        store.create(&k("b"), &rec(50_000)).await.unwrap();
        clock.set(Timestamp::from_unix_millis(2_000));
        store.create(&k("c"), &rec(50_000)).await.unwrap();
        assert!(store.load(&k("b")).await.unwrap().is_some());
        assert_eq!(store.len(), 2);
        assert_eq!(store.list_user_sessions("u").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_full_store_sweeps_at_most_once_a_second() {
        let (store, clock) = bounded(2);
        store.create(&k("a"), &rec(50_000)).await.unwrap();
        store.create(&k("b"), &rec(1_500)).await.unwrap();
        // Full of live sessions: this refusal sweeps (finding nothing).
        clock.set(Timestamp::from_unix_millis(1_000));
        assert!(is_full(store.create(&k("c"), &rec(50_000)).await));
        // "b" expires, but the last sweep was under a second ago.
        clock.set(Timestamp::from_unix_millis(1_600));
        assert!(is_full(store.create(&k("c"), &rec(50_000)).await));
        clock.set(Timestamp::from_unix_millis(2_000));
        store.create(&k("c"), &rec(50_000)).await.unwrap();
    }

    #[tokio::test]
    async fn every_way_out_frees_its_slot() {
        let (store, clock) = bounded(2);
        // A refused duplicate takes no slot.
        store.create(&k("a"), &rec(1_000)).await.unwrap();
        assert!(matches!(
            store.create(&k("a"), &rec(1_000)).await,
            Err(StoreError::AlreadyExists)
        ));
        store.create(&k("b"), &rec(1_000)).await.unwrap();
        // Logging a user out everywhere frees both.
        assert_eq!(store.delete_user("u").await.unwrap(), 2);
        store.create(&k("c"), &rec(1_000)).await.unwrap();
        // Re-creating over an expired record reuses its slot.
        clock.set(Timestamp::from_unix_millis(2_000));
        store.create(&k("c"), &rec(5_000)).await.unwrap();
        store.create(&k("d"), &rec(5_000)).await.unwrap();
        assert_eq!(store.inner.count.load(Ordering::Acquire), 2);
        // The sweeper's removals count too.
        clock.set(Timestamp::from_unix_millis(6_000));
        assert_eq!(store.delete_expired().await.unwrap(), 2);
        assert_eq!(store.inner.count.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_sweeper() {
        let store = MemoryStore::new();
        let sweeper = store.spawn_sweeper(Duration::from_millis(5));
        sweeper.shutdown().await;
        assert_eq!(Arc::strong_count(&store.inner), 1);
    }
}
