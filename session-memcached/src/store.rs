//! [`MemcachedStore`]: the [`SessionStore`] over Memcached.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use session_core::{
    SessionRecord, SessionStore, SessionSummary, StorageKey, StoreError, StoreResult, Timestamp,
};

use crate::config::{ConfigError, MemcachedConfig};
use crate::expiry::exptime;
use crate::index::{Entry, Index};
use crate::keys::Keys;
use crate::recent::{RecentReads, Seen};
use crate::transport::{Blocking, Item, Mode, Outcome, Transport};

/// A session store on one or more Memcached servers.
///
/// - `create` is an `add`: it never overwrites a live record.
/// - `update` and `touch` are `gets`/`cas` compare-and-sets; `update` also
///   checks the record's version. An `update` of a session this store
///   loaded a moment ago skips the `gets`: it sends one `cas` with the token
///   that load saw (see [`MemcachedConfig::with_recent_reads`]).
/// - Items expire on the server at the record's earlier deadline (whole
///   seconds, rounded up); `load` also checks the deadlines itself, so a
///   record is never returned after its deadline.
/// - A per-user index item, changed with `gets`/`cas` retries, backs
///   `list_user` and `delete_user`.
///
/// Memcached is a cache: a server that restarts, fails or evicts items
/// under memory pressure loses sessions, and their users are logged out.
/// See the crate documentation.
///
/// Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct MemcachedStore {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Box<dyn Transport>,
    keys: Keys,
    max_item_size: usize,
    cas_retries: u32,
    index_grace: Duration,
    servers: Vec<String>,
    recent: RecentReads,
}

impl std::fmt::Debug for MemcachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedStore")
            .field("servers", &self.inner.servers)
            .field("keys", &self.inner.keys)
            .field("max_item_size", &self.inner.max_item_size)
            .finish_non_exhaustive()
    }
}

impl MemcachedStore {
    /// A store on the servers in `urls` (comma-separated
    /// `memcache://host:port` URLs) with the default settings.
    ///
    /// No connection is made here: an unreachable server shows up as
    /// [`StoreError::Unavailable`] on the first operation (or call
    /// [`ping`](Self::ping)).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for a malformed URL or a host that does not resolve.
    pub fn connect(urls: &str) -> Result<Self, ConfigError> {
        Self::new(MemcachedConfig::new([urls])?)
    }

    /// A store with the given configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Client`] if a server address does not resolve.
    pub fn new(config: MemcachedConfig) -> Result<Self, ConfigError> {
        let transport = Blocking::new(&config)?;
        Ok(Self::with_transport(Box::new(transport), config))
    }

    /// A store on the `memcache` crate's Tokio client (feature `async`):
    /// same behaviour, no hop to the blocking thread pool per call.
    /// `max_in_flight` caps the connections per server.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Client`] if a server address does not resolve.
    #[cfg(feature = "async")]
    pub async fn new_async(config: MemcachedConfig) -> Result<Self, ConfigError> {
        let transport = crate::transport::Async::new(&config).await?;
        Ok(Self::with_transport(Box::new(transport), config))
    }

    fn with_transport(transport: Box<dyn Transport>, config: MemcachedConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                transport,
                keys: Keys::new(&config.namespace),
                max_item_size: config.max_item_size,
                cas_retries: config.cas_retries,
                index_grace: config.index_grace,
                recent: RecentReads::new(config.recent_reads),
                servers: config.servers,
            }),
        }
    }

    /// Checks that every server answers.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] naming the failure.
    pub async fn ping(&self) -> StoreResult<()> {
        self.inner.transport.ping().await
    }

    fn t(&self) -> &dyn Transport {
        &*self.inner.transport
    }

    fn check_size(&self, size: usize) -> StoreResult<()> {
        if size > self.inner.max_item_size {
            return Err(self.too_large(size));
        }
        Ok(())
    }

    fn too_large(&self, size: usize) -> StoreError {
        StoreError::TooLarge {
            size,
            limit: self.inner.max_item_size,
        }
    }

    fn contended(&self, what: &str) -> StoreError {
        StoreError::backend(format!(
            "{what}: still contended after {} compare-and-set attempts",
            self.inner.cas_retries
        ))
    }

    /// Waits a little before retrying a lost compare-and-set, so that
    /// contending writers spread out.
    async fn backoff(attempt: u32) {
        if attempt < 4 {
            tokio::task::yield_now().await;
        } else {
            let micros = 100u64 << attempt.min(10);
            tokio::time::sleep(Duration::from_micros(micros)).await;
        }
    }

    /// Adds (or refreshes) `key` in `user`'s index.
    async fn index_add(
        &self,
        user: &str,
        key: &StorageKey,
        absolute_deadline: Timestamp,
    ) -> StoreResult<()> {
        let ikey = self.inner.keys.user(user);
        for attempt in 0..self.inner.cas_retries {
            let now = Timestamp::now();
            let current = self.t().get(ikey.clone()).await?;
            let (mut index, mode) = match &current {
                Some(item) => (Index::decode(&item.value)?, Mode::Cas(item.cas)),
                None => (Index::default(), Mode::Add),
            };
            index.upsert(
                Entry {
                    key: key.clone(),
                    added: now,
                    absolute_deadline,
                },
                now,
            );
            let value = index.encode();
            self.check_size(value.len())?;
            let exp = exptime(index.last_deadline().unwrap_or(absolute_deadline), now);
            match self.t().store(ikey.clone(), value, exp, mode).await? {
                Outcome::Applied => return Ok(()),
                Outcome::TooLarge => return Err(self.too_large(index.encode().len())),
                _ => Self::backoff(attempt).await,
            }
        }
        Err(self.contended("adding to the user index"))
    }

    /// Removes the entries `remove` selects from `user`'s index; deletes
    /// the item when it ends up empty.
    async fn index_remove(
        &self,
        user: &str,
        remove: impl Fn(&Entry) -> bool + Send + Sync,
    ) -> StoreResult<()> {
        let ikey = self.inner.keys.user(user);
        for attempt in 0..self.inner.cas_retries {
            let now = Timestamp::now();
            let Some(item) = self.t().get(ikey.clone()).await? else {
                return Ok(());
            };
            let mut index = Index::decode(&item.value)?;
            let before = index.entries.len();
            index
                .entries
                .retain(|e| !remove(e) && e.absolute_deadline > now);
            if index.entries.len() == before {
                return Ok(());
            }
            let outcome = match index.last_deadline() {
                None => self.t().delete(ikey.clone(), Some(item.cas)).await?,
                Some(last) => {
                    self.t()
                        .store(
                            ikey.clone(),
                            index.encode(),
                            exptime(last, now),
                            Mode::Cas(item.cas),
                        )
                        .await?
                }
            };
            match outcome {
                Outcome::Applied | Outcome::NotFound => return Ok(()),
                _ => Self::backoff(attempt).await,
            }
        }
        Err(self.contended("removing from the user index"))
    }

    /// Reads `key`'s record with its CAS token; `None` if absent.
    async fn read(&self, key: &StorageKey) -> StoreResult<Option<(SessionRecord, Item)>> {
        match self.t().get(self.inner.keys.session(key)).await? {
            None => Ok(None),
            Some(item) => Ok(Some((SessionRecord::decode(&item.value)?, item))),
        }
    }

    /// Reads a live record, applies `change` and writes it back if nobody
    /// wrote in between, retrying on a lost race. `change` returns the new
    /// record or an error that ends the operation.
    async fn modify(
        &self,
        key: &StorageKey,
        change: impl Fn(&SessionRecord) -> StoreResult<SessionRecord> + Send + Sync,
    ) -> StoreResult<()> {
        let skey = self.inner.keys.session(key);
        for attempt in 0..self.inner.cas_retries {
            let now = Timestamp::now();
            let Some((current, item)) = self.read(key).await? else {
                return Err(StoreError::NotFound);
            };
            if current.is_expired_at(now) {
                return Err(StoreError::NotFound);
            }
            let next = change(&current)?;
            let value = next.encode();
            self.check_size(value.len())?;
            if let Some(user) = &current.user_id {
                if next.absolute_deadline > current.absolute_deadline {
                    // The index item must live as long as the session.
                    self.index_add(user, key, next.absolute_deadline).await?;
                }
            }
            let exp = exptime(next.expires_at(), now);
            match self
                .t()
                .store(skey.clone(), value, exp, Mode::Cas(item.cas))
                .await?
            {
                Outcome::Applied => return Ok(()),
                Outcome::NotFound => return Err(StoreError::NotFound),
                Outcome::TooLarge => return Err(self.too_large(next.encode().len())),
                _ => Self::backoff(attempt).await,
            }
        }
        Err(self.contended("updating the session"))
    }

    /// The one-round-trip update: a `cas` with the token a recent load saw.
    ///
    /// Applies only when that load saw the expected version of a record
    /// that is still live and whose user index needs no change; the token
    /// then guarantees the item is still exactly that record. Returns
    /// `None` when the caller must take the `gets`/`cas` path instead (not
    /// applicable, or the token is stale).
    async fn update_as_seen(
        &self,
        key: &StorageKey,
        expected_version: u64,
        record: &SessionRecord,
        seen: Seen,
    ) -> StoreResult<Option<StoreResult<()>>> {
        let now = Timestamp::now();
        let extends_index =
            seen.user_id.is_some() && record.absolute_deadline > seen.absolute_deadline;
        if seen.version != expected_version || seen.expires_at <= now || extends_index {
            return Ok(None);
        }
        let next = SessionRecord {
            user_id: seen.user_id,
            ..record.clone()
        };
        let value = next.encode();
        self.check_size(value.len())?;
        let size = value.len();
        let exp = exptime(next.expires_at(), now);
        let skey = self.inner.keys.session(key);
        Ok(
            match self
                .t()
                .store(skey, value, exp, Mode::Cas(seen.cas))
                .await?
            {
                Outcome::Applied => Some(Ok(())),
                Outcome::NotFound => Some(Err(StoreError::NotFound)),
                Outcome::TooLarge => Some(Err(self.too_large(size))),
                Outcome::CasMismatch | Outcome::Exists => None,
            },
        )
    }

    /// Writes a new record: an `add`, or a CAS over a record that is past
    /// its deadline but not yet dropped by the server.
    async fn insert(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        value: Vec<u8>,
    ) -> StoreResult<()> {
        let skey = self.inner.keys.session(key);
        for attempt in 0..self.inner.cas_retries {
            let now = Timestamp::now();
            let exp = exptime(record.expires_at(), now);
            match self
                .t()
                .store(skey.clone(), value.clone(), exp, Mode::Add)
                .await?
            {
                Outcome::Applied => return Ok(()),
                Outcome::TooLarge => return Err(self.too_large(value.len())),
                _ => {}
            }
            let Some((current, item)) = self.read(key).await? else {
                continue;
            };
            if !current.is_expired_at(now) {
                return Err(StoreError::AlreadyExists);
            }
            match self
                .t()
                .store(skey.clone(), value.clone(), exp, Mode::Cas(item.cas))
                .await?
            {
                Outcome::Applied => return Ok(()),
                Outcome::TooLarge => return Err(self.too_large(value.len())),
                _ => Self::backoff(attempt).await,
            }
        }
        Err(self.contended("creating the session"))
    }

    /// The live records of `user`'s index entries, and the entries that may
    /// be pruned.
    async fn resolve(
        &self,
        user: &str,
        index: &Index,
    ) -> StoreResult<(Vec<(Entry, SessionRecord)>, Vec<StorageKey>)> {
        let now = Timestamp::now();
        let keys = index
            .entries
            .iter()
            .map(|e| self.inner.keys.session(&e.key))
            .collect();
        let items = self.t().get_many(keys).await?;
        let mut live = Vec::new();
        let mut stale = Vec::new();
        for (entry, item) in index.entries.iter().zip(items) {
            let record = item.and_then(|i| SessionRecord::decode(&i.value).ok());
            match record {
                Some(r) if !r.is_expired_at(now) && r.user_id.as_deref() == Some(user) => {
                    live.push((entry.clone(), r));
                }
                Some(r) if r.is_expired_at(now) => stale.push(entry.key.clone()),
                _ if entry.absolute_deadline <= now
                    || entry.added.saturating_add(self.inner.index_grace) <= now =>
                {
                    stale.push(entry.key.clone());
                }
                // Possibly a login still writing its session: keep.
                _ => {}
            }
        }
        Ok((live, stale))
    }
}

#[async_trait]
impl SessionStore for MemcachedStore {
    async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
        let value = record.encode();
        self.check_size(value.len())?;
        let Some(user) = &record.user_id else {
            return self.insert(key, record, value).await;
        };
        // Index first: a failure leaves at most a stale entry.
        self.index_add(user, key, record.absolute_deadline).await?;
        let result = self.insert(key, record, value).await;
        if let Err(StoreError::TooLarge { .. } | StoreError::AlreadyExists) = &result {
            // Nothing was written under this user: take the entry back,
            // unless the existing record is this user's own session.
            let owned =
                matches!(self.load(key).await, Ok(Some(r)) if r.user_id.as_deref() == Some(user));
            if !owned {
                if let Err(e) = self.index_remove(user, |e| &e.key == key).await {
                    tracing::debug!(target: "session_memcached", error = %e, "index cleanup deferred");
                }
            }
        }
        result
    }

    async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>> {
        let now = Timestamp::now();
        match self.read(key).await? {
            Some((record, item)) if !record.is_expired_at(now) => {
                self.inner
                    .recent
                    .remember(key, Seen::new(&record, item.cas));
                Ok(Some(record))
            }
            _ => Ok(None),
        }
    }

    async fn update(
        &self,
        key: &StorageKey,
        expected_version: u64,
        record: &SessionRecord,
    ) -> StoreResult<()> {
        if let Some(seen) = self.inner.recent.take(key) {
            if let Some(done) = self
                .update_as_seen(key, expected_version, record, seen)
                .await?
            {
                return done;
            }
        }
        self.modify(key, |current| {
            if current.version != expected_version {
                return Err(StoreError::Conflict);
            }
            Ok(SessionRecord {
                user_id: current.user_id.clone(),
                ..record.clone()
            })
        })
        .await
    }

    async fn touch(
        &self,
        key: &StorageKey,
        last_access: Timestamp,
        idle_deadline: Timestamp,
    ) -> StoreResult<()> {
        self.inner.recent.forget(key);
        self.modify(key, |current| {
            Ok(SessionRecord {
                last_access,
                idle_deadline,
                ..current.clone()
            })
        })
        .await
    }

    async fn delete(&self, key: &StorageKey) -> StoreResult<()> {
        self.inner.recent.forget(key);
        let user = match self.read(key).await {
            Ok(found) => found.and_then(|(r, _)| r.user_id),
            // An unreadable record is deleted all the same.
            Err(StoreError::Corrupt(_)) => None,
            Err(e) => return Err(e),
        };
        self.t().delete(self.inner.keys.session(key), None).await?;
        if let Some(user) = user {
            self.index_remove(&user, |e| &e.key == key).await?;
        }
        Ok(())
    }

    async fn list_user(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
        let Some(item) = self.t().get(self.inner.keys.user(user_id)).await? else {
            return Ok(Vec::new());
        };
        let index = Index::decode(&item.value)?;
        let (live, stale) = self.resolve(user_id, &index).await?;
        if !stale.is_empty() {
            // Best effort: listing succeeds even if pruning loses a race.
            if let Err(e) = self.index_remove(user_id, |e| stale.contains(&e.key)).await {
                tracing::debug!(target: "session_memcached", error = %e, "index pruning deferred");
            }
        }
        Ok(live.iter().map(|(e, r)| r.summary(&e.key)).collect())
    }

    async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
        let ikey = self.inner.keys.user(user_id);
        let mut deleted = 0;
        for attempt in 0..self.inner.cas_retries {
            let Some(item) = self.t().get(ikey.clone()).await? else {
                return Ok(deleted);
            };
            let index = Index::decode(&item.value)?;
            let (live, _) = self.resolve(user_id, &index).await?;
            for (entry, _) in &live {
                self.inner.recent.forget(&entry.key);
            }
            let keys = live
                .iter()
                .map(|(e, _)| self.inner.keys.session(&e.key))
                .collect();
            let outcomes = self.t().delete_many(keys).await?;
            deleted += outcomes.iter().filter(|o| **o == Outcome::Applied).count() as u64;
            // Drop the index only if no login added to it meanwhile;
            // otherwise go round again for the newcomers.
            match self.t().delete(ikey.clone(), Some(item.cas)).await? {
                Outcome::Applied | Outcome::NotFound => return Ok(deleted),
                _ => Self::backoff(attempt).await,
            }
        }
        Err(self.contended("deleting the user's sessions"))
    }

    async fn delete_expired(&self) -> StoreResult<u64> {
        // Memcached expires items itself.
        Ok(0)
    }
}
