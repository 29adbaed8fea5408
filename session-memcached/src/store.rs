//! [`MemcachedStore`]: the [`SessionStore`] over Memcached.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use session_core::store::{CreateOptions, Created};
use session_core::{
    RetryPolicy, SessionRecord, SessionStore, SessionSummary, StorageKey, StoreError, StoreResult,
    Timestamp,
};

use crate::config::{MemcachedConfig, SetupError};
use crate::expiry::exptime;
use crate::index::{Entry, UserItem};
use crate::keys::Keys;
use crate::recent::{RecentReads, Seen};
use crate::tombstone::Stored;
use crate::transport::{Blocking, Item, Mode, Outcome, Transport};

mod lifecycle;

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
///   `list_user_sessions` and `delete_user`, and is where every login, rotation and
///   eviction of a user's sessions is decided (`create_with`).
/// - A rotation leaves a marker under the old key: it loads as nothing,
///   and `delete` follows it to the session's new key.
///
/// How these steps stay correct under concurrency and crashes is in the
/// [crate documentation](crate#lifecycle-changes-without-transactions).
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
    /// `"tokio"` or `"blocking"`, for `Debug`.
    transport_name: &'static str,
    keys: Keys,
    /// The largest record written, in bytes: the configured limit until
    /// the servers' own limits are known, then the smaller of the two.
    max_item_size: AtomicUsize,
    /// Set once every server's item size limit has been read.
    server_limits: tokio::sync::OnceCell<()>,
    connect_timeout: Duration,
    io_timeout: Duration,
    /// Attempts and backoff of every compare-and-set loop.
    cas_retry: RetryPolicy,
    index_grace: Duration,
    servers: Vec<String>,
    recent: RecentReads,
}

impl std::fmt::Debug for MemcachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedStore")
            .field("servers", &self.inner.servers)
            .field("transport", &self.inner.transport_name)
            .field("keys", &self.inner.keys)
            .field("max_item_size", &self.max_record_size())
            .finish_non_exhaustive()
    }
}

impl MemcachedStore {
    /// A builder with the default settings: `.connect(urls).await` checks
    /// the servers, `.connect_lazy(urls)` does not.
    pub fn builder() -> crate::MemcachedStoreBuilder {
        crate::MemcachedStoreBuilder::default()
    }

    /// A store on the servers in `urls` (comma-separated
    /// `memcache://host:port` URLs) with the default settings, on the
    /// default transport (see [`new`](Self::new)).
    ///
    /// No connection is made here: an unreachable server shows up as
    /// [`StoreError::Unavailable`] on the first operation (or call
    /// [`ping`](Self::ping)).
    ///
    /// # Errors
    ///
    /// [`SetupError`] for a malformed URL (and, on the blocking transport,
    /// a host that does not resolve).
    pub fn connect(urls: &str) -> Result<Self, SetupError> {
        Self::new(MemcachedConfig::new([urls])?)
    }

    /// A store with the given configuration, made without contacting or
    /// resolving anything. With the `async` feature (the default) it runs on
    /// the `memcache` crate's Tokio client, built on first use: a host that
    /// does not resolve then fails calls with [`StoreError::Unavailable`].
    /// Without the feature it runs on the blocking transport (see
    /// [`new_blocking`](Self::new_blocking)).
    ///
    /// # Errors
    ///
    /// Without the `async` feature, [`SetupError::Client`] if a server
    /// address does not resolve; with it, none.
    pub fn new(config: MemcachedConfig) -> Result<Self, SetupError> {
        #[cfg(feature = "async")]
        let transport = crate::transport::LazyAsync::new(&config);
        #[cfg(feature = "async")]
        return Ok(Self::with_transport(Box::new(transport), "tokio", config));
        #[cfg(not(feature = "async"))]
        Self::new_blocking(config)
    }

    /// A store on the blocking transport: the `memcache` crate's blocking
    /// client, each call run on Tokio's blocking thread pool (at most
    /// `max_in_flight` at once). Same behaviour as the default transport,
    /// but slower (a thread hop per call: 0.36× / 0.46× of a raw async
    /// Memcached client at 200 B / 4 KiB, against 0.69× / 0.81× on the
    /// default transport; see BENCHMARKS.md). It exists for builds without
    /// the `async` feature, where it is the only transport; with the
    /// feature there is no reason to choose it.
    ///
    /// # Errors
    ///
    /// [`SetupError::Client`] if a server address does not resolve.
    pub fn new_blocking(config: MemcachedConfig) -> Result<Self, SetupError> {
        let transport = Blocking::new(&config)?;
        Ok(Self::with_transport(
            Box::new(transport),
            "blocking",
            config,
        ))
    }

    /// A store on the `memcache` crate's Tokio client (feature `async`, on
    /// by default), built now: the same transport as [`new`](Self::new),
    /// with the server addresses resolved before it returns.
    /// `max_in_flight` caps the connections per server.
    ///
    /// # Errors
    ///
    /// [`SetupError::Client`] if a server address does not resolve.
    #[cfg(feature = "async")]
    pub async fn new_async(config: MemcachedConfig) -> Result<Self, SetupError> {
        let transport = crate::transport::Async::new(&config).await?;
        Ok(Self::with_transport(Box::new(transport), "tokio", config))
    }

    fn with_transport(
        transport: Box<dyn Transport>,
        transport_name: &'static str,
        config: MemcachedConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                transport,
                transport_name,
                keys: Keys::new(&config.namespace),
                max_item_size: AtomicUsize::new(config.max_item_size),
                server_limits: tokio::sync::OnceCell::new(),
                connect_timeout: config.connect_timeout,
                io_timeout: config.io_timeout,
                cas_retry: RetryPolicy::new(config.cas_retries)
                    .with_backoff(Duration::from_micros(100), Duration::from_micros(12_800)),
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

    /// The largest item this store writes, in bytes: the configured
    /// [`max_record_size`](crate::MemcachedStoreBuilder::max_record_size),
    /// lowered to the smallest server's item size limit (`-I`) minus 1 KiB
    /// once the store has read it (at [`connect`](crate::MemcachedStoreBuilder::connect),
    /// else before its first write).
    pub fn max_record_size(&self) -> usize {
        self.inner.max_item_size.load(Ordering::Relaxed)
    }

    /// Reads every server's item size limit (once per store; again after a
    /// failure) and lowers [`max_record_size`](Self::max_record_size) to
    /// fit the smallest.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when a server does not answer `stats
    /// settings` within the timeouts.
    pub async fn read_server_limits(&self) -> StoreResult<()> {
        let inner = &self.inner;
        inner
            .server_limits
            .get_or_try_init(|| async {
                for server in &inner.servers {
                    let max =
                        crate::limits::item_size_max(server, inner.connect_timeout, inner.io_timeout)
                            .await
                            .map_err(StoreError::unavailable)?;
                    let fits = max.saturating_sub(crate::limits::ITEM_OVERHEAD);
                    let before = inner.max_item_size.fetch_min(fits, Ordering::Relaxed);
                    if fits < before {
                        tracing::info!(target: "session_memcached", server_item_size_max = max, record_limit = fits, "a server's item size limit (-I) is below the configured record limit; records are limited to fit it");
                    }
                }
                Ok::<(), StoreError>(())
            })
            .await
            .map(|_| ())
    }

    /// Refuses a write of `size` bytes that a server would refuse (see
    /// [`read_server_limits`](Self::read_server_limits)): Memcached deletes
    /// the item a too-large write was replacing, so it must never be sent.
    async fn check_size(&self, size: usize) -> StoreResult<()> {
        self.read_server_limits().await?;
        if size > self.max_record_size() {
            return Err(self.too_large(size));
        }
        Ok(())
    }

    /// Every store command goes through here: a value the servers would
    /// refuse is refused before it is sent (see [`check_size`](Self::check_size)).
    async fn put(
        &self,
        key: String,
        value: Vec<u8>,
        exptime: u32,
        mode: Mode,
    ) -> StoreResult<Outcome> {
        self.check_size(value.len()).await?;
        self.t().store(key, value, exptime, mode).await
    }

    /// [`put`](Self::put) for a batch: all or nothing is sent.
    async fn put_many(
        &self,
        items: Vec<(String, Vec<u8>, u32, Mode)>,
    ) -> StoreResult<Vec<Outcome>> {
        let largest = items.iter().map(|(_, v, _, _)| v.len()).max().unwrap_or(0);
        self.check_size(largest).await?;
        self.t().store_many(items).await
    }

    fn too_large(&self, size: usize) -> StoreError {
        StoreError::TooLarge {
            size,
            limit: self.max_record_size(),
        }
    }

    fn contended(&self, what: &str) -> StoreError {
        StoreError::backend(format!(
            "{what}: still contended after {} compare-and-set attempts",
            self.inner.cas_retry.max_attempts()
        ))
    }

    /// Waits a little before retrying a lost compare-and-set, so that
    /// contending writers spread out: the store's [`RetryPolicy`], a random
    /// time up to a cap that doubles per attempt from 100 µs to 12.8 ms
    /// ("full jitter").
    async fn backoff(&self, attempt: u32) {
        self.inner.cas_retry.backoff(attempt).await;
    }

    /// Makes `key`'s entries in `user`'s index last until `record`'s
    /// absolute deadline, adding an entry for `record` if there is none.
    async fn index_add(
        &self,
        user: &str,
        key: &StorageKey,
        record: &SessionRecord,
    ) -> StoreResult<()> {
        let absolute_deadline = record.absolute_deadline;
        let ikey = self.inner.keys.user(user);
        for attempt in 0..self.inner.cas_retry.max_attempts() {
            let now = Timestamp::now();
            let current = self.t().get(ikey.clone()).await?;
            let (mut item, mode) = match &current {
                Some(item) => (UserItem::decode(&item.value)?, Mode::Cas(item.cas)),
                None => (UserItem::default(), Mode::Add),
            };
            item.index.upsert(
                Entry {
                    key: key.clone(),
                    nonce: lifecycle::random_u64(),
                    added: now,
                    created_at: record.created_at,
                    first_expiry: record.expires_at(),
                    absolute_deadline,
                    replaces: None,
                },
                now,
            );
            let value = item.encode();
            let size = value.len();
            self.check_size(size).await?;
            let exp = exptime(item.last_deadline().unwrap_or(absolute_deadline), now);
            match self.put(ikey.clone(), value, exp, mode).await? {
                Outcome::Applied => return Ok(()),
                Outcome::TooLarge => return Err(self.too_large(size)),
                _ => self.backoff(attempt).await,
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
        for attempt in 0..self.inner.cas_retry.max_attempts() {
            let now = Timestamp::now();
            let Some(item) = self.t().get(ikey.clone()).await? else {
                return Ok(());
            };
            let mut user_item = UserItem::decode(&item.value)?;
            let index = &mut user_item.index;
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
                    self.put(
                        ikey.clone(),
                        user_item.encode(),
                        exptime(last, now),
                        Mode::Cas(item.cas),
                    )
                    .await?
                }
            };
            match outcome {
                Outcome::Applied | Outcome::NotFound => return Ok(()),
                _ => self.backoff(attempt).await,
            }
        }
        Err(self.contended("removing from the user index"))
    }

    /// Reads what `key`'s item holds, with its CAS token; `None` if absent.
    async fn read(&self, key: &StorageKey) -> StoreResult<Option<(Stored, Item)>> {
        match self.t().get(self.inner.keys.session(key)).await? {
            None => Ok(None),
            Some(item) => Ok(Some((Stored::decode(&item.value)?, item))),
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
        for attempt in 0..self.inner.cas_retry.max_attempts() {
            let now = Timestamp::now();
            let Some((stored, item)) = self.read(key).await? else {
                return Err(StoreError::NotFound);
            };
            // A moved or ended key, or an expired record: not found.
            let Some(current) = stored.live(now) else {
                return Err(StoreError::NotFound);
            };
            let next = change(&current)?;
            let value = next.encode();
            self.check_size(value.len()).await?;
            if let Some(user) = &current.user_id {
                if next.absolute_deadline > current.absolute_deadline {
                    // The index item must live as long as the session.
                    self.index_add(user, key, &next).await?;
                }
            }
            let exp = exptime(next.expires_at(), now);
            match self
                .put(skey.clone(), value, exp, Mode::Cas(item.cas))
                .await?
            {
                Outcome::Applied => return Ok(()),
                Outcome::NotFound => return Err(StoreError::NotFound),
                Outcome::TooLarge => return Err(self.too_large(next.encode().len())),
                _ => self.backoff(attempt).await,
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
        let next = record.clone().with_user_id(seen.user_id);
        let value = next.encode();
        self.check_size(value.len()).await?;
        let size = value.len();
        let exp = exptime(next.expires_at(), now);
        let skey = self.inner.keys.session(key);
        Ok(
            match self.put(skey, value, exp, Mode::Cas(seen.cas)).await? {
                Outcome::Applied => Some(Ok(())),
                Outcome::NotFound => Some(Err(StoreError::NotFound)),
                Outcome::TooLarge => Some(Err(self.too_large(size))),
                Outcome::CasMismatch | Outcome::Exists => None,
            },
        )
    }

    /// Writes a new record that no user index needs to know about: an
    /// `add`, or a CAS over a record that is past its deadline (or a
    /// marker).
    async fn insert(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        value: Vec<u8>,
    ) -> StoreResult<()> {
        self.check_size(value.len()).await?;
        let skey = self.inner.keys.session(key);
        for attempt in 0..self.inner.cas_retry.max_attempts() {
            let now = Timestamp::now();
            let exp = exptime(record.expires_at(), now);
            match self
                .put(skey.clone(), value.clone(), exp, Mode::Add)
                .await?
            {
                Outcome::Applied => return Ok(()),
                Outcome::TooLarge => return Err(self.too_large(value.len())),
                _ => {}
            }
            // Another creation holding the key is waited for.
            let item = self.t().get(skey.clone()).await?;
            let Some(item) = self.settle(key, item).await? else {
                continue;
            };
            let stored = Stored::decode(&item.value)?;
            // A marker or an expired record may be written over; a record
            // or a reservation that outlasted the wait may not.
            if stored.reserved_by(now).is_some() || stored.live(now).is_some() {
                return Err(StoreError::AlreadyExists);
            }
            match self
                .put(skey.clone(), value.clone(), exp, Mode::Cas(item.cas))
                .await?
            {
                Outcome::Applied => return Ok(()),
                Outcome::TooLarge => return Err(self.too_large(value.len())),
                _ => self.backoff(attempt).await,
            }
        }
        Err(self.contended("creating the session"))
    }
}

#[async_trait]
impl SessionStore for MemcachedStore {
    async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
        self.create_with(key, record, &CreateOptions::default())
            .await
            .map(drop)
    }

    async fn create_with(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Created> {
        self.lifecycle_create(key, record, options).await
    }

    async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>> {
        let now = Timestamp::now();
        let Some((stored, item)) = self.read(key).await? else {
            return Ok(None);
        };
        // A moved key (or a cancelled creation) holds no session.
        let Some(record) = stored.live(now) else {
            return Ok(None);
        };
        self.inner
            .recent
            .remember(key, Seen::new(&record, item.cas));
        Ok(Some(record))
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
            Ok(record.clone().with_user_id(current.user_id.clone()))
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
        let touch = || {
            self.modify(key, |current| {
                Ok(current
                    .clone()
                    .with_last_access(last_access)
                    .with_idle_deadline(idle_deadline))
            })
        };
        match touch().await {
            // Sets absolute values: after a write whose reply was lost,
            // touching again reads what is there and writes the same
            // fields (requests that surely did not apply are already
            // retried by the transport).
            Err(e) if crate::transport::lost_reply(&e) => {
                drop(e);
                tracing::debug!(target: "session_memcached", "touch: the connection broke before the reply; touching once more");
                touch().await
            }
            other => other,
        }
    }

    async fn delete(&self, key: &StorageKey) -> StoreResult<()> {
        self.lifecycle_delete(key).await
    }

    async fn list_user_sessions(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
        self.lifecycle_list(user_id).await
    }

    async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
        self.lifecycle_delete_user(user_id).await
    }

    async fn delete_expired(&self) -> StoreResult<u64> {
        // Memcached expires items itself.
        Ok(0)
    }
}
