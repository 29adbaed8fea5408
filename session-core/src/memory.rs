//! [`MemoryStore`]: the embedded default store.
//!
//! A real store, not a toy: insert-only create, versioned compare-and-set,
//! exact expiry on load, a per-user index, and a background sweeper. It is
//! sharded ([`DashMap`]) and never holds a lock across an `.await`, so it stays
//! fast under contention. Sessions live in this process only: use a shared
//! backend when you run more than one instance.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::key::StorageKey;
use crate::record::{SessionRecord, SessionSummary};
use crate::store::{SessionStore, StoreError, StoreResult};

/// Storage keys are uniformly random hashes of server-generated IDs, so a
/// fast seeded hasher is safe here (clients cannot choose stored keys).
type FastHash = foldhash::fast::RandomState;

struct Inner {
    records: DashMap<StorageKey, SessionRecord, FastHash>,
    users: DashMap<String, HashSet<StorageKey, FastHash>, FastHash>,
    clock: Arc<dyn Clock>,
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
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    #[must_use]
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store that judges expiry by `clock`.
    #[must_use]
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Inner {
                records: DashMap::with_hasher(FastHash::default()),
                users: DashMap::with_hasher(FastHash::default()),
                clock,
            }),
        }
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

    /// Spawns a task on the current Tokio runtime that calls
    /// [`SessionStore::delete_expired`] every `period`.
    ///
    /// The task holds only a weak reference: it ends by itself once every
    /// clone of the store is dropped, and at once when the returned handle
    /// is dropped or [`Sweeper::stop`] is called.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    #[must_use = "the sweeper stops when its handle is dropped"]
    pub fn spawn_sweeper(&self, period: Duration) -> Sweeper {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let removed = MemoryStore { inner }.sweep();
                tracing::debug!(target: "session_core::memory", removed, "swept expired sessions");
            }
        });
        Sweeper { task: Some(task) }
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

    fn sweep(&self) -> u64 {
        let now = self.now();
        let mut dead = Vec::new();
        self.inner.records.retain(|k, r| {
            let live = !r.is_expired_at(now);
            if !live {
                dead.push((k.clone(), r.user_id.clone()));
            }
            live
        });
        for (k, user) in &dead {
            if let Some(u) = user {
                self.unindex(u, k);
            }
        }
        dead.len() as u64
    }
}

/// Handle of the background sweeper; dropping it stops the task.
#[derive(Debug)]
pub struct Sweeper {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sweeper {
    /// Stops the sweeper and waits for the task to end.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Whether the task has ended (for example because the store was
    /// dropped).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.task
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
        let now = self.now();
        if let Some(u) = &record.user_id {
            self.inner
                .users
                .entry(u.clone())
                .or_default()
                .insert(key.clone());
        }
        let replaced_user = match self.inner.records.entry(key.clone()) {
            Entry::Occupied(e) if !e.get().is_expired_at(now) => {
                return Err(StoreError::AlreadyExists);
            }
            Entry::Occupied(mut e) => {
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
        Ok(())
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
        let user_id = r.user_id.take();
        *r = SessionRecord {
            user_id,
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
        if let Some((_, r)) = self.inner.records.remove(key) {
            if let Some(u) = &r.user_id {
                self.unindex(u, key);
            }
        }
        Ok(())
    }

    async fn list_user(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
        let now = self.now();
        let keys: Vec<StorageKey> = match self.inner.users.get(user_id) {
            Some(set) => set.iter().cloned().collect(),
            None => return Ok(Vec::new()),
        };
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            match self.inner.records.get(&k) {
                Some(r) if !r.is_expired_at(now) && r.user_id.as_deref() == Some(user_id) => {
                    out.push(r.summary(&k));
                }
                _ => self.unindex(user_id, &k),
            }
        }
        Ok(out)
    }

    async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
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
                n += u64::from(!r.is_expired_at(now));
            }
        }
        Ok(n)
    }

    async fn delete_expired(&self) -> StoreResult<u64> {
        Ok(self.sweep())
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
        assert_eq!(store.list_user("u").await.unwrap().len(), 1);
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

    #[tokio::test]
    async fn dropping_the_handle_stops_the_sweeper() {
        let store = MemoryStore::new();
        let sweeper = store.spawn_sweeper(Duration::from_millis(5));
        sweeper.stop().await;
        assert_eq!(Arc::strong_count(&store.inner), 1);
    }
}
