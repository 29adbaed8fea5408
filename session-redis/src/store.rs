//! [`RedisStore`]: the [`SessionStore`] implementation.
//!
//! Every operation is bounded by the operation timeout and costs one round
//! trip in the common case: `load` is a `GET`, `create`, `create_with`,
//! `update`, `touch` are one script call (`FCALL`, or `EVALSHA` where
//! functions are refused) each on a single server. On a
//! cluster, `create` of a logged-in session writes the index entry first (a
//! second command, to the index's slot), `create_with` is a sequence of
//! single-slot steps (see the [crate docs](crate)), and `delete` follows
//! moved markers one slot at a time. `delete` of a logged-in session
//! removes the index entry after the session. `list_user_sessions` and
//! `delete_user` read the index, then visit every listed session
//! concurrently, then prune.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::join_all;
use redis::RedisResult;
use session_core::store::{newest_first, CreateOptions, Created};
use session_core::{
    ClockSkew, LimitStrategy, SessionRecord, SessionStore, SessionSummary, StorageKey, StoreError,
    StoreResult, Timestamp,
};

use crate::builder::RedisStoreBuilder;
use crate::codec::{self, Stored, HEADER_LEN};
use crate::connection::Conn;
use crate::error::{
    is_connection_failure, is_never_sent, is_refused_unrun, is_wrong_node, store_error, SetupError,
};
use crate::keys::{InvalidPrefix, KeyPrefix};
use crate::near_cache::{CachedCopy, NearCacheStats, WriteGuard};
use crate::scripts::{self, create, delete, delete_if_user, lifecycle, touch, update, Scripts};
use crate::tracking::{Route, Tracker};

/// Longest TTL ever set (100 years): deadlines further away are capped.
const MAX_TTL_MS: i64 = 100 * 365 * 24 * 3_600_000;
/// An index key outlives the absolute deadline of its newest entry by this.
const INDEX_SLACK_MS: i64 = 60_000;
/// On a cluster, an index entry whose session is missing is pruned only once
/// it is older than this: a `create` writes the entry before the session, so
/// a younger entry may belong to a session that is being written right now.
pub const CLUSTER_INDEX_GRACE: Duration = Duration::from_secs(60);
/// Most moves `delete` follows from one key (a session rotated more often
/// than this within one lifetime is deleted up to here).
const MAX_MOVES: usize = 64;

/// What connections and scripts every prefix-view of a store shares.
pub(crate) struct Shared {
    /// The connection and its generation (see [`RedisStore::renew`]).
    pub(crate) conn: std::sync::RwLock<(u64, Conn)>,
    /// How to make a new single-server connection; `None` on a cluster,
    /// whose client follows failovers itself.
    pub(crate) reconnect: Option<(redis::Client, redis::aio::ConnectionManagerConfig)>,
    pub(crate) scripts: Scripts,
    pub(crate) operation_timeout: Duration,
    pub(crate) max_record_size: usize,
    /// The bound past which a measured clock skew is logged.
    pub(crate) max_clock_skew: Duration,
    /// The last clock skew measurement.
    pub(crate) clock_skew: std::sync::Mutex<Option<ClockSkew>>,
    /// When (Unix ms, application clock) a `load` next starts a
    /// measurement; the one `load` that moves it on claims the check.
    pub(crate) next_skew_check_ms: std::sync::atomic::AtomicI64,
    /// The near cache and its tracking connections, when turned on.
    pub(crate) tracker: Option<Arc<Tracker>>,
    /// How to make a new cluster connection (`None` on a single server),
    /// and when (Unix ms) the next one may be made.
    pub(crate) cluster_client: Option<redis::cluster::ClusterClient>,
    pub(crate) next_cluster_refresh_ms: std::sync::atomic::AtomicI64,
}

/// Least time between two cluster connections made after timeouts.
const CLUSTER_REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Most index reads of one `delete_user` (see `delete_user_on`).
const DELETE_USER_PASSES: usize = 8;

/// How old the last clock skew measurement may get before a `load`
/// starts a new one in the background.
const CLOCK_SKEW_RECHECK: Duration = Duration::from_secs(600);

/// A session store in Redis, on a single server or a Redis Cluster.
///
/// Cheap to clone: clones share the connection. See the
/// [crate docs](crate) for the key layout and guarantees.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use session_core::SessionManager;
/// use session_redis::RedisStore;
///
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let manager = SessionManager::new(store.with_prefix("myapp")?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
    prefix: KeyPrefix,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix.as_str())
            .field("cluster", &self.is_cluster())
            .field("operation_timeout", &self.shared.operation_timeout)
            .field("max_record_size", &self.shared.max_record_size)
            .finish_non_exhaustive()
    }
}

/// What the index says about one listed session.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    /// A live session of this user.
    Live(SessionSummary),
    /// This user's session, past its deadline.
    Expired,
    /// No session under the key (nothing, or a moved or ended marker).
    Missing,
    /// Something else under the key (another user's record, unreadable
    /// bytes): neither listed nor pruned.
    Foreign,
}

impl Entry {
    fn classify(header: &[u8], key: &StorageKey, user_id: &str, now: Timestamp) -> Self {
        match codec::classify(header) {
            Stored::Missing | Stored::Moved(_) | Stored::Ended | Stored::Pending => Self::Missing,
            Stored::Record(r) if r.user_id.as_deref() == Some(user_id) => {
                if r.is_expired_at(now) {
                    Self::Expired
                } else {
                    Self::Live(r.summary(key))
                }
            }
            Stored::Record(_) | Stored::Unreadable => Self::Foreign,
        }
    }
}

/// When an operation is sent again after a connection-level failure (see
/// [`RedisStore::retrying`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads, and writes that set absolute values or remove (`touch`,
    /// `delete`): repeating them after the first attempt was applied gives
    /// the same state and the same answer. Retried after any
    /// connection-level failure.
    Idempotent,
    /// Writes that must not apply twice (insert-only `create`, the
    /// compare-and-set `update`, `create_with`): a second attempt after a
    /// first one that was applied but whose reply was lost would answer
    /// `AlreadyExists` or `Conflict` for a write that succeeded. Retried
    /// only when the failure proves nothing was sent (the connection could
    /// not be made).
    NeverSent,
}

impl Retry {
    fn allows(self, e: &redis::RedisError) -> bool {
        match self {
            Self::Idempotent => is_connection_failure(e),
            Self::NeverSent => is_never_sent(e),
        }
    }
}

/// `update` was asked to change the user a session is bound to.
#[derive(Debug, thiserror::Error)]
#[error("update must not change the session's user id: it is fixed when the session is created (log in again to get a new session)")]
pub struct UserIdChanged;

impl RedisStore {
    /// A builder for a store with a custom prefix, timeouts or size limit.
    #[must_use]
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::new()
    }

    /// Connects to a single server with the defaults (prefix `session`).
    ///
    /// # Errors
    ///
    /// See [`RedisStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, SetupError> {
        Self::builder().connect(url).await
    }

    /// Connects to a Redis Cluster with the defaults (prefix `session`).
    ///
    /// # Errors
    ///
    /// See [`RedisStoreBuilder::connect_cluster`].
    pub async fn connect_cluster<I, S>(urls: I) -> Result<Self, SetupError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::builder().connect_cluster(urls).await
    }

    pub(crate) fn from_parts(shared: Arc<Shared>, prefix: KeyPrefix) -> Self {
        Self { shared, prefix }
    }

    /// The same connection under another key prefix: a store that shares
    /// nothing with this one but the connection.
    ///
    /// # Errors
    ///
    /// [`InvalidPrefix`] (see [`KeyPrefix::new`]).
    pub fn with_prefix(&self, prefix: &str) -> Result<Self, InvalidPrefix> {
        Ok(Self {
            shared: self.shared.clone(),
            prefix: KeyPrefix::new(prefix)?,
        })
    }

    /// The key prefix.
    #[must_use]
    pub fn prefix(&self) -> &str {
        self.prefix.as_str()
    }

    /// Whether this store talks to a Redis Cluster.
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        self.shared.reconnect.is_none()
    }

    fn conn(&self) -> Conn {
        self.conn_and_generation().1
    }

    /// The last measurement of the server's clock against this
    /// application's (made at `connect`, then again in the background every
    /// 10 minutes of use), or `None` before the first.
    #[must_use]
    pub fn clock_skew(&self) -> Option<ClockSkew> {
        *self
            .shared
            .clock_skew
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Measures the server's clock (`TIME`) against this application's
    /// now, keeps the result for [`clock_skew`](Self::clock_skew), and logs
    /// a warning when it exceeds the builder's `max_clock_skew` (default
    /// 2 s). The scripts judge liveness by the application's clock and
    /// Redis expires keys by its own, so a skew ends sessions early or
    /// keeps their keys too long. Never fails an operation: skew is
    /// information.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the server does not answer within
    /// the operation timeout.
    pub async fn measure_clock_skew(&self) -> StoreResult<ClockSkew> {
        self.bounded("measure_clock_skew", async {
            let mut conn = self.conn();
            let before = Timestamp::now();
            let started = std::time::Instant::now();
            let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
            let round_trip = started.elapsed();
            let server = Timestamp::from_unix_millis(
                secs.saturating_mul(1000).saturating_add(micros / 1000),
            );
            Ok(ClockSkew::from_round_trip(before, round_trip, server))
        })
        .await
        .inspect(|skew| {
            if skew.exceeds(self.shared.max_clock_skew) {
                tracing::warn!(
                    target: "session_redis",
                    offset_ms = skew.offset_millis(),
                    uncertainty_ms = u64::try_from(skew.uncertainty().as_millis()).unwrap_or(u64::MAX),
                    "{skew}: the scripts judge liveness by the application's clock and Redis expires keys by its own, so sessions may end early or their keys live too long; sync both clocks with NTP"
                );
            }
            *self
                .shared
                .clock_skew
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(*skew);
            let next = skew.measured_at().saturating_add(CLOCK_SKEW_RECHECK);
            self.shared
                .next_skew_check_ms
                .fetch_max(next.as_unix_millis(), std::sync::atomic::Ordering::AcqRel);
        })
    }

    /// Starts a background measurement when one is due (every
    /// [`CLOCK_SKEW_RECHECK`]; one atomic load per call otherwise).
    fn recheck_clock_skew(&self) {
        use std::sync::atomic::Ordering;
        let now = Timestamp::now().as_unix_millis();
        let due = self.shared.next_skew_check_ms.load(Ordering::Relaxed);
        let next = Timestamp::from_unix_millis(now)
            .saturating_add(CLOCK_SKEW_RECHECK)
            .as_unix_millis();
        if now < due
            || self
                .shared
                .next_skew_check_ms
                .compare_exchange(due, next, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let _ = store.measure_clock_skew().await;
        });
    }

    fn conn_and_generation(&self) -> (u64, Conn) {
        self.shared
            .conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the single-server connection of `generation` with a new
    /// one (made on first use), after the server behind the address
    /// answered that it is the wrong node: a replica (`READONLY`), one still
    /// loading its data (`LOADING`), or one that lost its primary
    /// (`MASTERDOWN`). After a failover behind one endpoint (a managed
    /// service, a Sentinel-aware proxy) the old connection still reaches
    /// the demoted primary; a new one reaches the new primary. Racing
    /// requests that saw the same connection fail replace it once. `false`
    /// on a cluster, whose client follows failovers itself.
    fn renew(&self, generation: u64) -> bool {
        let Some((client, config)) = &self.shared.reconnect else {
            return false;
        };
        let mut current = self
            .shared
            .conn
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.0 != generation {
            return true;
        }
        match redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
            Ok(fresh) => {
                *current = (generation + 1, Conn::Single(fresh));
                if let Some(tracker) = &self.shared.tracker {
                    // The tracking connection may reach the demoted node,
                    // which no longer sees the writes.
                    tracker.lose_current("the server answered as a replica (a failover?)");
                }
                tracing::warn!(target: "session_redis", generation, "the server answered as a replica or a node without its data; reconnecting (a failover behind the endpoint?)");
                true
            }
            Err(_) => false,
        }
    }

    /// The near cache's counters; `None` when the store has none (see
    /// [`RedisStoreBuilder::near_cache`]). Shared by every
    /// [`with_prefix`](Self::with_prefix) view of the store.
    #[must_use]
    pub fn near_cache_stats(&self) -> Option<NearCacheStats> {
        self.shared.tracker.as_ref().map(|t| t.cache().stats())
    }

    /// Loads the scripts' function library (see [`crate::scripts`]) now,
    /// so the first calls do not pay for it; on failure the first call
    /// that needs it tries again (or falls back to `EVALSHA`).
    pub(crate) async fn load_functions(&self) {
        let mut conn = self.conn();
        let load = self.shared.scripts.library.load(&mut conn);
        match tokio::time::timeout(self.shared.operation_timeout, load).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(target: "session_redis", error = %e, "function library not loaded at connect");
            }
            Err(_) => {
                tracing::debug!(target: "session_redis", "function library not loaded at connect: timed out");
            }
        }
    }

    /// Waits up to `limit` for the near cache to start serving (no wait
    /// without one); reads go to Redis until it does.
    pub(crate) async fn wait_for_near_cache(&self, limit: Duration) {
        let Some(tracker) = &self.shared.tracker else {
            return;
        };
        let deadline = tokio::time::Instant::now() + limit;
        while !tracker.cache().serving() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !tracker.cache().serving() {
            tracing::warn!(target: "session_redis", "near cache tracking not established yet; reads go to Redis until it is");
        }
    }

    /// [`Self::after_write`] for a call that changed only `keys` (the
    /// common case: update, touch, create, a rotation): drops them here
    /// instead of waiting for a barrier. A load that read one of them
    /// before the write and has not stored its reply yet loses its lease
    /// with it, so it stores nothing; a load that already stored it is
    /// undone; later loads read the write. Other instances learn from the
    /// server's push as always.
    async fn after_write_to<'k, T>(
        &self,
        out: &StoreResult<T>,
        keys: impl IntoIterator<Item = &'k StorageKey>,
    ) {
        let Some(tracker) = &self.shared.tracker else {
            return;
        };
        if out.is_ok() {
            for key in keys {
                tracker
                    .cache()
                    .invalidate(self.prefix.session_key(key).as_bytes());
            }
        } else {
            self.after_write(out).await;
        }
    }

    /// Makes the writes that `out` ended visible to this store's next
    /// `load`: waits until every invalidation they caused was handled (see
    /// [`crate::near_cache`]). When the outcome is unknown (unavailable,
    /// timed out), empties the near cache instead: a write that lands later
    /// is invalidated by its push like anyone's. Nothing without a cache.
    async fn after_write<T>(&self, out: &StoreResult<T>) {
        let Some(tracker) = &self.shared.tracker else {
            return;
        };
        match out {
            Err(e)
                if e.is_timeout()
                    || matches!(e, StoreError::Unavailable(_) | StoreError::Backend(_)) =>
            {
                tracker.cache().flush();
            }
            _ => tracker.barrier().await,
        }
    }

    /// After a timeout on a cluster, makes a new cluster connection in the
    /// background (at most once per [`CLUSTER_REFRESH_EVERY`]) and puts it
    /// in place of the current one. The cluster client reads the slot map
    /// again only after a redirect or a broken connection, so a primary
    /// that stops answering without closing its connections (a frozen
    /// process, a host gone silent) would keep its slots timing out after
    /// the cluster promoted its replica; a new connection asks the
    /// cluster again. Calls in flight finish on the old connection.
    fn refresh_cluster(&self) {
        use std::sync::atomic::Ordering;
        let Some(client) = &self.shared.cluster_client else {
            return;
        };
        let now = Timestamp::now().as_unix_millis();
        let due = self.shared.next_cluster_refresh_ms.load(Ordering::Acquire);
        let next = now
            .saturating_add(i64::try_from(CLUSTER_REFRESH_EVERY.as_millis()).unwrap_or(i64::MAX));
        if now < due
            || self
                .shared
                .next_cluster_refresh_ms
                .compare_exchange(due, next, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (client, shared) = (client.clone(), Arc::downgrade(&self.shared));
        let limit = self.shared.operation_timeout.saturating_mul(3);
        tokio::spawn(async move {
            let Ok(Ok(fresh)) = tokio::time::timeout(limit, client.get_async_connection()).await
            else {
                return;
            };
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut current = shared
                .conn
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *current = (current.0 + 1, Conn::Cluster(fresh));
            tracing::debug!(target: "session_redis", "cluster connection renewed after a timeout");
        });
    }

    fn scripts(&self) -> &Scripts {
        &self.shared.scripts
    }

    /// Runs `attempt` on a connection and, when it fails at the connection
    /// level in a way `retry` allows, exactly once more on a fresh
    /// connection. Not bounded by itself: callers run it under the
    /// operation timeout, which thus covers both attempts.
    ///
    /// Fresh: on a single server, the [`redis::aio::ConnectionManager`]
    /// replaces a connection that failed this way with a new one before it
    /// returns the error, so the second attempt's handle goes out on that
    /// new connection (made now, or already being made). The cluster client
    /// reconnects the failed node itself, and also resends every command
    /// (writes included) up to twice on its own; this retry only comes on
    /// top when those failed too.
    async fn retrying<T, F, Fut>(
        &self,
        op: &'static str,
        retry: Retry,
        attempt: F,
    ) -> RedisResult<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let (generation, conn) = self.conn_and_generation();
        match attempt(conn).await {
            // The node refused the command without running it: send it
            // again, once, on a new connection.
            Err(e) if is_wrong_node(&e) && self.renew(generation) => {
                tracing::debug!(target: "session_redis", op, error = %e, "wrong node; retrying once on a new connection");
                attempt(self.conn()).await
            }
            Err(e) if retry.allows(&e) => {
                // The error names the I/O failure only: no key, no URL.
                tracing::debug!(target: "session_redis", op, error = %e, "connection failed; retrying once on a fresh connection");
                attempt(self.conn()).await
            }
            other => other,
        }
    }

    /// Runs `fut`, the store operation `op`, under the operation timeout,
    /// mapping errors (a timeout is [`StoreError::timed_out`]).
    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> StoreResult<T> {
        let limit = self.shared.operation_timeout;
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r.map_err(store_error),
            Err(_) => {
                self.refresh_cluster();
                Err(StoreError::timed_out(op, limit))
            }
        }
    }

    /// Encodes `record`, enforcing the size limit.
    fn encode(&self, record: &SessionRecord) -> StoreResult<Vec<u8>> {
        let user = record.user_id.as_deref().map_or(0, str::len);
        let label = record
            .label
            .as_deref()
            .map_or(0, |l| session_core::codec::layout::LABEL_LEN_SIZE + l.len());
        let size = HEADER_LEN
            .saturating_add(user)
            .saturating_add(label)
            .saturating_add(record.data.len());
        let limit = self.shared.max_record_size;
        if size > limit {
            return Err(StoreError::TooLarge { size, limit });
        }
        Ok(record.encode())
    }

    /// Whether the index entry of a missing session, written at
    /// `written_at`, may go. On a single server, yes: a session and its
    /// entry are created together. On a cluster the entry is written first,
    /// so it stays until it is older than [`CLUSTER_INDEX_GRACE`].
    fn prunable(&self, written_at: f64, now: Timestamp) -> bool {
        if !self.is_cluster() {
            return true;
        }
        let grace = i64::try_from(CLUSTER_INDEX_GRACE.as_millis()).unwrap_or(i64::MAX);
        #[allow(clippy::cast_precision_loss)]
        let cutoff = now.as_unix_millis().saturating_sub(grace) as f64;
        written_at < cutoff
    }

    /// Adds (or refreshes) `key`'s entry in `index` and makes the index
    /// live at least `index_ttl` ms.
    async fn index_add(
        &self,
        conn: &mut Conn,
        index: &str,
        key: &StorageKey,
        now: Timestamp,
        index_ttl: i64,
    ) -> RedisResult<()> {
        self.index_add_snapshot(conn, index, key, now, index_ttl, false)
            .await
            .map(drop)
    }

    /// [`RedisStore::index_add`] that says whether the entry is new and,
    /// with `snapshot`, which entries (member, written-at ms) the index held
    /// before it, read in the same script.
    async fn index_add_snapshot(
        &self,
        conn: &mut Conn,
        index: &str,
        key: &StorageKey,
        now: Timestamp,
        index_ttl: i64,
        snapshot: bool,
    ) -> RedisResult<(bool, Vec<(String, f64)>)> {
        let script = &self.scripts().index_add;
        let mut cmd = scripts::evalsha(script, 1, index.len());
        cmd.arg(index)
            .arg(key.as_str())
            .arg(now.as_unix_millis())
            .arg(index_ttl)
            .arg(if snapshot { "1" } else { "0" });
        let (added, before): (i64, Vec<(String, f64)>) = scripts::run(script, &cmd, conn).await?;
        Ok((added == 1, before))
    }

    /// The index entries of `index`: (storage key, written-at ms).
    async fn index_entries(conn: &mut Conn, index: &str) -> RedisResult<Vec<(String, f64)>> {
        redis::cmd("ZRANGE")
            .arg(index)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(conn)
            .await
    }

    /// Runs `fut`, the store operation `op`, under the operation timeout.
    async fn within<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let limit = self.shared.operation_timeout;
        tokio::time::timeout(limit, fut)
            .await
            .unwrap_or_else(|_| Err(StoreError::timed_out(op, limit)))
    }

    /// The first `len` bytes under each of `keys`' session keys, read
    /// concurrently.
    async fn read_values<'k>(
        &self,
        conn: &Conn,
        keys: impl IntoIterator<Item = &'k str>,
        len: usize,
    ) -> RedisResult<Vec<Vec<u8>>> {
        let reads = keys.into_iter().map(|member| {
            let session_key = self.prefix.session_key(&StorageKey::from_stored(member));
            let mut conn = conn.clone();
            async move {
                redis::cmd("GETRANGE")
                    .arg(session_key)
                    .arg(0)
                    .arg(len.saturating_sub(1))
                    .query_async::<Vec<u8>>(&mut conn)
                    .await
            }
        });
        join_all(reads).await.into_iter().collect()
    }

    /// Deletes the record under `key` and its index entry, following moved
    /// markers to where the session went (within the script on a single
    /// server; one script call per key on a cluster, where the keys live on
    /// different slots). With `block` > 0 (cluster, `key` reached through a
    /// moved marker), a key holding no record gets an ended marker for
    /// `block` ms, so the rotation still writing it fails.
    async fn delete_from(
        &self,
        conn: &mut Conn,
        mut key: StorageKey,
        mut block: i64,
    ) -> RedisResult<Option<Ended>> {
        let cluster = self.is_cluster();
        let hops = if cluster { 0 } else { MAX_MOVES };
        let head = self.prefix.session_key_head();
        let marker = codec::ended_marker();
        let script = &self.scripts().delete;
        for _ in 0..=MAX_MOVES {
            let session_key = self.prefix.session_key(&key);
            let mut cmd = scripts::evalsha(script, 1, session_key.len() + head.len() + HEADER_LEN);
            cmd.arg(&session_key)
                .arg(hops)
                .arg(Timestamp::now().as_unix_millis())
                .arg(&head)
                .arg(block)
                .arg(&marker[..]);
            let (code, user, member, n): (i64, Vec<u8>, String, i64) =
                scripts::run(script, &cmd, conn).await?;
            let at = if member.is_empty() {
                key
            } else {
                StorageKey::from_stored(&member)
            };
            match code {
                delete::RECORD => {
                    // Session first, then its index entry: a failure in
                    // between leaves a stale entry, which readers prune.
                    if n & delete::FLAG_USER != 0 {
                        let index = self.prefix.index_key(&user);
                        self.unindex(conn, &index, &[at.as_str()]).await?;
                    }
                    return Ok(Some(Ended {
                        key: at,
                        live: n & delete::FLAG_LIVE != 0,
                    }));
                }
                delete::MOVED if cluster => {
                    key = at;
                    block = ended_marker_ttl(n);
                }
                delete::ENDED => {
                    return Ok(Some(Ended {
                        key: at,
                        live: true,
                    }))
                }
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// `create_with` on a single server: one script, atomic.
    async fn create_with_single(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Created> {
        let value = self.encode(record)?;
        let now = Timestamp::now();
        let ttl = ttl_ms(record.expires_at(), now);
        let session_key = self.prefix.session_key(key);
        let user = record.user_id.as_deref();
        let index = user.map(|u| self.prefix.index_key(u.as_bytes()));
        let index_ttl = index_ttl_ms(record.absolute_deadline, now);
        let segment = codec::user_segment(user);
        let old_key = options
            .replaces
            .as_ref()
            .map(|r| self.prefix.session_key(&r.key));
        let marker = codec::moved_marker(key, record.created_at, now, user);
        let (max, strategy) = match options.limit.filter(|_| user.is_some()) {
            None => (0, ""),
            Some(l) => (l.max.get(), strategy_code(l.strategy)?),
        };
        let head = self.prefix.session_key_head();
        let script = &self.scripts().create_with;
        let keys = 1 + usize::from(old_key.is_some()) + usize::from(index.is_some());
        let mut cmd = scripts::evalsha(
            script,
            keys,
            session_key.len()
                + old_key.as_ref().map_or(0, String::len)
                + index.as_ref().map_or(0, String::len)
                + value.len()
                + 2 * segment.len()
                + marker.len()
                + head.len(),
        );
        cmd.arg(&session_key)
            .arg(old_key.as_deref())
            .arg(index.as_deref())
            .arg(&value[..])
            .arg(now.as_unix_millis())
            .arg(ttl)
            .arg(key.as_str())
            .arg(index_ttl)
            .arg(if old_key.is_some() { "1" } else { "0" })
            .arg(
                options
                    .replaces
                    .as_ref()
                    .map_or([0; 8], |r| r.version.to_be_bytes())
                    .as_slice(),
            )
            .arg(&segment[..])
            .arg(options.replaces.as_ref().map_or("", |r| r.key.as_str()))
            .arg(&marker[..])
            .arg(max)
            .arg(strategy)
            .arg(&head)
            .arg(record.created_at.as_unix_millis());
        let (code, evicted): (i64, Vec<String>) = self
            .bounded(
                "create_with",
                self.retrying("create_with", Retry::NeverSent, |mut conn| {
                    let cmd = &cmd;
                    async move { scripts::run(script, cmd, &mut conn).await }
                }),
            )
            .await?;
        match code {
            lifecycle::DONE => Ok(Created::with_evicted(
                evicted.iter().map(|k| StorageKey::from_stored(k)).collect(),
            )),
            other => Err(lifecycle_error(other, max)),
        }
    }

    /// `create_with` on a cluster: ordered steps, each atomic on its slot,
    /// so that every failure or race ends with fewer live sessions, never
    /// more (see the crate docs).
    async fn create_with_cluster(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Created> {
        let value = self.encode(record)?;
        let now = Timestamp::now();
        let ttl = ttl_ms(record.expires_at(), now);
        let session_key = self.prefix.session_key(key);
        let user = record.user_id.as_deref();
        let index = user.map(|u| self.prefix.index_key(u.as_bytes()));
        let index_ttl = index_ttl_ms(record.absolute_deadline, now);
        let limit = options.limit.filter(|_| user.is_some());
        if let Some(l) = limit {
            strategy_code(l.strategy)?;
        }
        let reject = limit
            .filter(|l| l.strategy == LimitStrategy::RejectNew)
            .map(|l| l.max.get());
        let evict = limit
            .filter(|l| l.strategy == LimitStrategy::EvictOldest)
            .map(|l| l.max.get());
        let replaced = options.replaces.as_ref();
        let conn = self.conn();
        self.within("create_with", async {
            // 1. The new key's index entry (with the entries already there,
            //    for RejectNew) and, for a rotation or under RejectNew, a
            //    pending marker under the new key (checking it is free).
            //    Under RejectNew the marker goes first, then the entry;
            //    for a rotation the two run concurrently (different slots).
            //    A rotation's pending marker is what a delete that follows
            //    the moved marker (step 3) to the new key before the record
            //    is written (step 4) turns into an ended marker, so the
            //    record is never written; a new key holding nothing means
            //    the session already ended there.
            let pending = async {
                let script = &self.scripts().create;
                let marker = codec::pending_marker();
                let mut cmd = scripts::evalsha(script, 1, session_key.len() + HEADER_LEN);
                cmd.arg(&session_key)
                    .arg(&marker[..])
                    .arg(now.as_unix_millis())
                    .arg(grace_ms())
                    .arg(key.as_str())
                    .arg(0)
                    .arg("pending");
                let code: i64 = scripts::run(script, &cmd, &mut conn.clone()).await?;
                // A moved marker left under the key by an earlier life of
                // it (only ever a reused key) stays, and the record written
                // in step 4 replaces it; a failed call must leave it.
                Ok(matches!(
                    code,
                    create::STORED | create::ENDED | create::MOVED_HERE
                ))
            };
            let add = async {
                match (&index, ttl > 0) {
                    (Some(index), true) => self
                        .index_add_snapshot(
                            &mut conn.clone(),
                            index,
                            key,
                            now,
                            index_ttl,
                            reject.is_some(),
                        )
                        .await
                        .map(Some),
                    _ => Ok(None),
                }
            };
            let (added, free) = if reject.is_some() && ttl > 0 {
                let free = pending.await.map_err(store_error)?;
                let added = if free {
                    add.await.map_err(store_error)?
                } else {
                    None
                };
                (added, free)
            } else if replaced.is_some() {
                futures_util::future::try_join(add, pending)
                    .await
                    .map_err(store_error)?
            } else {
                (add.await.map_err(store_error)?, true)
            };
            // Our own entry, to withdraw if we give up (not one that was
            // there already).
            let own = index
                .as_deref()
                .filter(|_| added.as_ref().is_some_and(|(new, _)| *new));
            if !free {
                self.withdraw(&conn, own, key).await;
                let refusal = match replaced {
                    Some(r) => self.rotation_refusal(&conn, r, user, now).await?,
                    None => StoreError::AlreadyExists,
                };
                return Err(refusal);
            }
            // 2. RejectNew: count the places taken among the entries that
            //    were there before ours. Every racer counts the ones before
            //    it, so two racers never both take the last place.
            if let (Some(max), Some((_, before)), Some(user)) = (reject, &added, user) {
                let others: Vec<&(String, f64)> = before
                    .iter()
                    .filter(|(m, _)| {
                        m.as_str() != key.as_str()
                            && replaced.is_none_or(|r| m.as_str() != r.key.as_str())
                    })
                    .collect();
                let values = self
                    .read_values(
                        &conn,
                        others.iter().map(|(m, _)| m.as_str()),
                        codec::owner_read_len(user.len()),
                    )
                    .await
                    .map_err(store_error)?;
                let taken = others
                    .iter()
                    .zip(&values)
                    .filter(|(_, v)| holds_a_place(v, user, now))
                    .count();
                if taken >= max {
                    self.withdraw(&conn, own, key).await;
                    self.drop_pending(&conn, &session_key).await;
                    return Err(StoreError::UserLimitReached { max });
                }
            }
            // 3. Rotation: the old record becomes a moved marker, after the
            //    checks, atomically on its slot.
            let mut old_index = None;
            if let Some(r) = replaced {
                let old_key = self.prefix.session_key(&r.key);
                let marker = codec::moved_marker(key, record.created_at, now, user);
                let segment = codec::user_segment(user);
                let script = &self.scripts().rotate;
                let mut cmd = scripts::evalsha(
                    script,
                    1,
                    old_key.len() + segment.len() + marker.len(),
                );
                cmd.arg(&old_key)
                    .arg(now.as_unix_millis())
                    .arg(&r.version.to_be_bytes()[..])
                    .arg(&segment[..])
                    .arg(&marker[..]);
                let (code, has_user, old_user): (i64, i64, Vec<u8>) =
                    scripts::run(script, &cmd, &mut conn.clone())
                        .await
                        .map_err(store_error)?;
                if code != lifecycle::DONE {
                    self.withdraw(&conn, own, key).await;
                    self.drop_pending(&conn, &session_key).await;
                    return Err(lifecycle_error(code, 0));
                }
                old_index = (has_user == 1).then(|| self.prefix.index_key(&old_user));
            }
            // 4. The new record. It fails on an ended marker: a delete
            //    followed the moved marker here meanwhile.
            let script = &self.scripts().create;
            let mut cmd = scripts::evalsha(script, 1, session_key.len() + value.len());
            cmd.arg(&session_key)
                .arg(&value[..])
                .arg(now.as_unix_millis())
                .arg(ttl)
                .arg(key.as_str())
                .arg(index_ttl);
            let stored: i64 = scripts::run(script, &cmd, &mut conn.clone())
                .await
                .map_err(store_error)?;
            // 5. The old key's index entry goes (also when the session
            //    ended in step 4).
            if let (Some(r), Some(old_index)) = (replaced, &old_index) {
                if let Err(e) = Self::prune(&mut conn.clone(), old_index, &[r.key.as_str()]).await {
                    tracing::debug!(target: "session_redis", error = %e, "left a stale index entry after a rotation");
                }
            }
            if stored != create::STORED {
                self.withdraw(&conn, own, key).await;
                return Err(match (replaced, stored) {
                    (Some(_), create::ENDED) => StoreError::NotFound,
                    (Some(r), _) => {
                        // Another record took the new key after step 1 (two
                        // callers chose one key): the moved session ends, and
                        // its marker must not lead a delete to that record.
                        let old_key = self.prefix.session_key(&r.key);
                        let _ = redis::cmd("DEL")
                            .arg(old_key)
                            .query_async::<i64>(&mut conn.clone())
                            .await;
                        StoreError::AlreadyExists
                    }
                    (None, _) => StoreError::AlreadyExists,
                });
            }
            // 6. EvictOldest: now that the record is written, list and
            //    delete every session beyond the newest `max`. Racers
            //    converge: each deletes only sessions that are not among
            //    the newest `max` of all.
            if let (Some(max), Some(index), Some(user)) = (evict, &index, user) {
                return match self.evict_cluster(&conn, index, user, key, max, now).await {
                    Ok(evicted) => Ok(Created::with_evicted(evicted)),
                    Err(e) => {
                        // Never leave the user above the limit: our own
                        // session goes instead.
                        let _ = self.delete_from(&mut conn.clone(), key.clone(), 0).await;
                        Err(e)
                    }
                };
            }
            Ok(Created::default())
        })
        .await
    }

    /// Withdraws our own index entry (best effort: a leftover is a stale
    /// entry that readers prune).
    async fn withdraw(&self, conn: &Conn, own: Option<&str>, key: &StorageKey) {
        if let Some(index) = own {
            if let Err(e) = Self::prune(&mut conn.clone(), index, &[key.as_str()]).await {
                tracing::debug!(target: "session_redis", error = %e, "left a stale index entry");
            }
        }
    }

    /// Deletes our pending marker (best effort: it expires by itself).
    async fn drop_pending(&self, conn: &Conn, session_key: &str) {
        let script = &self.scripts().drop_pending;
        let mut cmd = scripts::evalsha(script, 1, session_key.len());
        cmd.arg(session_key);
        if let Err(e) = scripts::run::<i64>(script, &cmd, &mut conn.clone()).await {
            tracing::debug!(target: "session_redis", error = %e, "left a pending marker to expire");
        }
    }

    /// Why a rotation onto a taken key fails: the rotation's own errors come
    /// first (read, not written).
    async fn rotation_refusal(
        &self,
        conn: &Conn,
        replaces: &session_core::store::Replaces,
        user: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<StoreError> {
        let old = self
            .read_values(
                conn,
                [replaces.key.as_str()],
                HEADER_LEN + user.map_or(0, str::len),
            )
            .await
            .map_err(store_error)?
            .pop()
            .unwrap_or_default();
        Ok(match codec::classify(&old) {
            Stored::Record(r) if !r.is_expired_at(now) => {
                if r.version != replaces.version
                    || r.user_id.is_some() && r.user_id.as_deref() != user
                {
                    StoreError::Conflict
                } else {
                    StoreError::AlreadyExists
                }
            }
            Stored::Unreadable if old.get(1) == Some(&1) => StoreError::Conflict,
            _ => StoreError::NotFound,
        })
    }

    /// The eviction step of `EvictOldest` on a cluster: lists the user's
    /// sessions (live records, and sessions being moved, by their moved
    /// markers), keeps the newest `max` by [`newest_first`] and deletes the
    /// rest. Returns the keys of the sessions ended, with `key` among them
    /// if it is not kept.
    async fn evict_cluster(
        &self,
        conn: &Conn,
        index: &str,
        user: &str,
        key: &StorageKey,
        max: usize,
        now: Timestamp,
    ) -> StoreResult<Vec<StorageKey>> {
        let entries = Self::index_entries(&mut conn.clone(), index)
            .await
            .map_err(store_error)?;
        let values = self
            .read_values(
                conn,
                entries.iter().map(|(m, _)| m.as_str()),
                codec::owner_read_len(user.len()),
            )
            .await
            .map_err(store_error)?;
        // Each session by the key it is (or will be) under: its creation
        // time and the keys to delete to end it.
        let mut sessions: HashMap<StorageKey, (Timestamp, Vec<StorageKey>)> = HashMap::new();
        for ((member, _), value) in entries.iter().zip(&values) {
            let at = StorageKey::from_stored(member);
            match codec::classify(value) {
                Stored::Record(r)
                    if r.user_id.as_deref() == Some(user) && !r.is_expired_at(now) =>
                {
                    sessions
                        .entry(at.clone())
                        .or_insert_with(|| (r.created_at, Vec::new()))
                        .1
                        .push(at);
                }
                Stored::Moved(m) if now < m.until && codec::moved_session_of(value, user) => {
                    // Deleting the marker follows it, and stops the
                    // rotation if its record is not written yet. (Only the
                    // user's own: a stale entry never evicts another's.)
                    if let Some(to) = m.to {
                        sessions
                            .entry(to)
                            .or_insert_with(|| (m.created_at, Vec::new()))
                            .1
                            .push(at);
                    }
                }
                _ => {}
            }
        }
        let mut all: Vec<(Timestamp, StorageKey, Vec<StorageKey>)> = sessions
            .into_iter()
            .map(|(k, (created, via))| (created, k, via))
            .collect();
        all.sort_by(|a, b| newest_first((a.0, &a.1), (b.0, &b.1)));
        let victims = all.split_off(max.min(all.len()));
        let mut evicted: Vec<StorageKey> = victims.iter().map(|(_, k, _)| k.clone()).collect();
        if !all.iter().any(|(_, k, _)| k == key) && !evicted.contains(key) {
            // A racing login already evicted ours.
            evicted.push(key.clone());
        }
        let deletes = victims.iter().flat_map(|(_, _, via)| via).map(|k| {
            let mut conn = conn.clone();
            async move { self.delete_from(&mut conn, k.clone(), 0).await }
        });
        for result in join_all(deletes).await {
            result.map_err(store_error)?;
        }
        // The entries of the moved markers deleted above.
        let markers: Vec<&str> = victims
            .iter()
            .flat_map(|(_, k, via)| via.iter().filter(move |v| *v != k))
            .map(StorageKey::as_str)
            .collect();
        Self::prune(&mut conn.clone(), index, &markers)
            .await
            .map_err(store_error)?;
        Ok(evicted)
    }

    /// Removes the index entries of sessions seen gone. On a single server
    /// an entry stays if its key was created again meanwhile (the create
    /// indexed it); on a cluster the entries go (a stale one is pruned by
    /// later readers, a missing one errs towards fewer listed sessions).
    async fn unindex(&self, conn: &mut Conn, index: &str, members: &[&str]) -> RedisResult<()> {
        if members.is_empty() || self.is_cluster() {
            return Self::prune(conn, index, members).await;
        }
        let script = &self.scripts().unindex_if_gone;
        let head = self.prefix.session_key_head();
        let bytes = index.len() + head.len() + members.iter().map(|m| m.len()).sum::<usize>();
        let mut cmd = scripts::evalsha(script, 1, bytes);
        cmd.arg(index).arg(&head).arg(members);
        scripts::run::<i64>(script, &cmd, conn).await.map(drop)
    }

    async fn prune(conn: &mut Conn, index: &str, members: &[&str]) -> RedisResult<()> {
        if members.is_empty() {
            return Ok(());
        }
        tracing::debug!(target: "session_redis", pruned = members.len(), "pruned stale index entries");
        redis::cmd("ZREM")
            .arg(index)
            .arg(members)
            .query_async::<i64>(conn)
            .await
            .map(drop)
    }
}

/// How [`scripts::CREATE_WITH`](crate::scripts) names a limit strategy.
fn strategy_code(strategy: LimitStrategy) -> StoreResult<&'static str> {
    match strategy {
        LimitStrategy::RejectNew => Ok("r"),
        LimitStrategy::EvictOldest => Ok("e"),
        other => Err(StoreError::backend(format!(
            "session-redis does not implement the limit strategy {other:?}"
        ))),
    }
}

/// The error a lifecycle script's result code stands for.
fn lifecycle_error(code: i64, max: usize) -> StoreError {
    match code {
        lifecycle::EXISTS => StoreError::AlreadyExists,
        lifecycle::NOT_FOUND => StoreError::NotFound,
        lifecycle::CONFLICT => StoreError::Conflict,
        lifecycle::LIMIT => StoreError::UserLimitReached { max },
        other => StoreError::backend(format!("unexpected reply {other} from a lifecycle script")),
    }
}

/// What a delete along a chain of moves ended.
#[derive(Debug)]
struct Ended {
    /// Where the session was when it ended.
    key: StorageKey,
    /// Whether a live session ended (a live record deleted, or, on a
    /// cluster, a session stopped while it moved).
    live: bool,
}

/// [`CLUSTER_INDEX_GRACE`] in milliseconds.
fn grace_ms() -> i64 {
    i64::try_from(CLUSTER_INDEX_GRACE.as_millis()).unwrap_or(i64::MAX)
}

/// How long an ended marker lives: as long as the moved marker that led to
/// it would have, and at least [`CLUSTER_INDEX_GRACE`] (longer than any
/// rotation takes to write its new record).
fn ended_marker_ttl(marker_ms: i64) -> i64 {
    marker_ms.max(grace_ms()).min(MAX_TTL_MS)
}

/// Whether a value read under a user's index entry (written at
/// `written_at`) holds one of the user's places under a `RejectNew` limit,
/// on a cluster: a live session of the user, a login being written (a
/// pending marker), or a session of the user being moved (a young moved
/// marker: its new entry may be missing from the entries read). `value`
/// is read to [`codec::owner_read_len`].
fn holds_a_place(value: &[u8], user_id: &str, now: Timestamp) -> bool {
    let young_since = now.as_unix_millis().saturating_sub(grace_ms());
    match codec::classify(value) {
        Stored::Pending => true,
        Stored::Record(r) => r.user_id.as_deref() == Some(user_id) && !r.is_expired_at(now),
        Stored::Moved(m) => {
            codec::moved_session_of(value, user_id)
                && now < m.until
                && m.moved_at.as_unix_millis() >= young_since
        }
        Stored::Missing | Stored::Ended | Stored::Unreadable => false,
    }
}

/// `GET session_key`, its buffer allocated once.
fn get(session_key: &str) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(2, "GET".len() + session_key.len());
    cmd.arg("GET").arg(session_key);
    cmd
}

/// Milliseconds from `now` to `deadline`, capped at [`MAX_TTL_MS`].
fn ttl_ms(deadline: Timestamp, now: Timestamp) -> i64 {
    deadline
        .as_unix_millis()
        .saturating_sub(now.as_unix_millis())
        .min(MAX_TTL_MS)
}

/// TTL of an index key holding a session with this absolute deadline.
fn index_ttl_ms(absolute_deadline: Timestamp, now: Timestamp) -> i64 {
    ttl_ms(absolute_deadline, now)
        .saturating_add(INDEX_SLACK_MS)
        .clamp(1, MAX_TTL_MS)
}

/// The operations as sent to Redis; the [`SessionStore`] impl adds the
/// near cache around them.
impl RedisStore {
    async fn raw_create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
        let value = self.encode(record)?;
        let now = Timestamp::now();
        let ttl = ttl_ms(record.expires_at(), now);
        let session_key = self.prefix.session_key(key);
        let index = record
            .user_id
            .as_deref()
            .map(|u| self.prefix.index_key(u.as_bytes()));
        let index_ttl = index_ttl_ms(record.absolute_deadline, now);
        let cluster = self.is_cluster();
        let script = &self.scripts().create;
        let with_index = index.as_ref().filter(|_| !cluster);
        let mut cmd = scripts::evalsha(
            script,
            1 + usize::from(with_index.is_some()),
            session_key.len() + with_index.map_or(0, String::len) + value.len(),
        );
        cmd.arg(&session_key)
            .arg(with_index)
            .arg(&value[..])
            .arg(now.as_unix_millis())
            .arg(ttl)
            .arg(key.as_str())
            .arg(index_ttl);
        // Insert-only: sent again only if nothing was sent (the index
        // entry a first attempt may have added is refreshed, not doubled).
        let stored: i64 = self
            .bounded(
                "create",
                self.retrying("create", Retry::NeverSent, |mut conn| {
                    let (index, cmd) = (&index, &cmd);
                    async move {
                        let mut own = None;
                        if let (Some(index), true, true) = (index, cluster, ttl > 0) {
                            // Index first: a failure between the two writes
                            // leaves a stale entry, never an unindexed session.
                            let (new, _) = self
                                .index_add_snapshot(&mut conn, index, key, now, index_ttl, false)
                                .await?;
                            own = Some(index.as_str()).filter(|_| new);
                        }
                        let stored = scripts::run(script, cmd, &mut conn).await?;
                        if stored != create::STORED {
                            // Refused: the entry this call added would give
                            // another user's session to this user's index.
                            self.withdraw(&conn, own, key).await;
                        }
                        Ok(stored)
                    }
                }),
            )
            .await?;
        match stored {
            create::STORED => Ok(()),
            create::EXISTS | create::ENDED => Err(StoreError::AlreadyExists),
            other => Err(StoreError::backend(format!(
                "unexpected reply {other} from the create script"
            ))),
        }
    }

    async fn raw_create_with(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Created> {
        let limit = options.limit.filter(|_| record.user_id.is_some());
        if options.replaces.is_none() && limit.is_none() {
            return self
                .raw_create(key, record)
                .await
                .map(|()| Created::default());
        }
        if self.is_cluster() {
            self.create_with_cluster(key, record, options).await
        } else {
            self.create_with_single(key, record, options).await
        }
    }

    /// `load`: one `GET`, through the near cache when there is one.
    async fn raw_load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>> {
        self.recheck_clock_skew();
        let session_key = self.prefix.session_key(key);
        let tracker = self.shared.tracker.as_deref();
        let cache = tracker.map(Tracker::cache);
        if let Some(bytes) = cache.and_then(|c| c.get(session_key.as_bytes())) {
            return Self::live_record(bytes);
        }
        // Taken before the GET goes out: an invalidation handled from now
        // on voids it, so a reply that a later write made stale is not kept.
        // The GET goes on the key's tracking connection, so that the server
        // tracks the key for this instance from the moment it reads it.
        // The lease first, then the route: a link replaced in between
        // flushed the cache, which voids the lease.
        let tracked = tracker.and_then(|t| {
            let lease = t.cache().lease(session_key.as_bytes())?;
            match t.route(session_key.as_bytes()) {
                Some(route) => Some((t, route, lease)),
                None => {
                    t.cache().complete(session_key.as_bytes(), lease, None);
                    None
                }
            }
        });
        let cmd = get(&session_key);
        let (value, from_tracked): (Option<Vec<u8>>, bool) = self
            .bounded("load", async {
                if let Some((tracker, route, _)) = &tracked {
                    match cmd
                        .query_async(&mut Conn::Tracked(route.conn.clone()))
                        .await
                    {
                        Ok(value) => return Ok((value, true)),
                        // Read again on the data connection, not kept.
                        Err(_) => {
                            tracker.lost(route.link, "a read on a tracking connection failed")
                        }
                    }
                }
                self.retrying("load", Retry::Idempotent, |mut conn| {
                    let cmd = &cmd;
                    async move { cmd.query_async(&mut conn).await }
                })
                .await
                .map(|value| (value, false))
            })
            .await?;
        // A marker (moved away by a rotation, or ended while moving) reads
        // as no session, and is not cached.
        let value = value.filter(|v| !codec::is_marker(v)).map(Bytes::from);
        if let Some((tracker, _, lease)) = tracked {
            let kept = value.clone().filter(|_| from_tracked);
            tracker
                .cache()
                .complete(session_key.as_bytes(), lease, kept);
        }
        value.map_or(Ok(None), Self::live_record)
    }

    /// The record in `value`, if it is one and live by our clock.
    /// (`value` is not a marker: the load filters those out, and the cache
    /// only ever holds what a load kept.)
    fn live_record(value: Bytes) -> StoreResult<Option<SessionRecord>> {
        let record = codec::decode(value)?;
        // Redis expires keys on its own clock; the contract is ours.
        if record.is_expired_at(Timestamp::now()) {
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// For a write with a near cache: a write lease on `session_key` (and
    /// the copy it replaced), then the key's tracking connection. The lease
    /// comes first, so a connection replaced in between (which flushes)
    /// voids it; the guard drops the key if the write's future is dropped
    /// before it completes it. `None` without a cache, when it is not
    /// serving, or when the key has no tracking connection.
    fn tracked_write<'a>(
        &'a self,
        session_key: &'a str,
    ) -> Option<(&'a Tracker, Route, WriteGuard<'a>, Option<CachedCopy>)> {
        let tracker = self.shared.tracker.as_deref()?;
        let (guard, copy) = tracker
            .cache()
            .write_guard_over_copy(session_key.as_bytes())?;
        match tracker.route(session_key.as_bytes()) {
            Some(route) => Some((tracker, route, guard, copy)),
            None => {
                guard.complete(None);
                None
            }
        }
    }

    /// `update`; with a near cache, sent on the key's tracking connection
    /// and written through (see [`crate::near_cache`]). Returns whether the
    /// cache has already been brought up to date (written through, or the
    /// copy dropped).
    async fn raw_update(
        &self,
        key: &StorageKey,
        expected_version: u64,
        record: &SessionRecord,
    ) -> StoreResult<bool> {
        let value = self.encode(record)?;
        let now = Timestamp::now();
        let ttl = ttl_ms(record.expires_at(), now);
        let session_key = self.prefix.session_key(key);
        let segment = codec::user_segment(record.user_id.as_deref());
        let index = record
            .user_id
            .as_deref()
            .map(|u| self.prefix.index_key(u.as_bytes()));
        let index_ttl = index_ttl_ms(record.absolute_deadline, now);
        let cluster = self.is_cluster();
        let script = &self.scripts().update;
        let with_index = index.as_ref().filter(|_| !cluster);
        let command = |index_ready: bool, track: bool| {
            let mut cmd = scripts::evalsha(
                script,
                1 + usize::from(with_index.is_some()),
                session_key.len() + with_index.map_or(0, String::len) + value.len() + segment.len(),
            );
            cmd.arg(&session_key)
                .arg(with_index)
                .arg(&expected_version.to_be_bytes()[..])
                .arg(now.as_unix_millis())
                .arg(&value[..])
                .arg(ttl)
                .arg(&segment[..])
                .arg(record.absolute_deadline.as_unix_millis())
                .arg(index_ttl)
                .arg(if index_ready { "1" } else { "0" })
                .arg(key.as_str())
                .arg(if track { "1" } else { "0" });
            cmd
        };
        // One attempt on `conn`; the index entry (cluster: another slot)
        // is refreshed on `index_conn`.
        let attempt = |mut conn: Conn, mut index_conn: Conn, track: bool| {
            let (index, command) = (&index, &command);
            async move {
                let code: i64 = scripts::run(script, &command(false, track), &mut conn).await?;
                match (index, code) {
                    (Some(index), update::NEEDS_INDEX) => {
                        // The absolute deadline moved later: make the
                        // index outlive it before the session does.
                        self.index_add(&mut index_conn, index, key, now, index_ttl)
                            .await?;
                        scripts::run(script, &command(true, track), &mut conn).await
                    }
                    _ => Ok(code),
                }
            }
        };
        // Written through only on the key's tracking connection: the
        // server sends this instance no push for it (NOLOOP), and the
        // script reads the key back, so that later writes by others are
        // pushed. The lease is taken before the script goes out.
        // The lease first, then the route (as in `load`); the guard drops
        // the key if this future is dropped before the write completes it.
        let tracked = self.tracked_write(&session_key);
        // Compare-and-set: sent again only if nothing was sent. (A first
        // attempt that got as far as the index wrote nothing else: the
        // script answers NEEDS_INDEX without writing, the index entry is
        // refreshed, not doubled.)
        let out = self
            .bounded("update", async {
                if let Some((tracker, route, _, _)) = &tracked {
                    let conn = Conn::Tracked(route.conn.clone());
                    match attempt(conn, self.conn(), true).await {
                        Ok(code) => return Ok((code, true)),
                        // Refused without running: send it the usual way.
                        Err(e) if is_refused_unrun(&e) => {
                            tracker.lost(route.link, "a tracking connection refused a write");
                        }
                        Err(e) => {
                            tracker.lost(route.link, "a write on a tracking connection failed");
                            return Err(e);
                        }
                    }
                }
                self.retrying("update", Retry::NeverSent, |conn| {
                    attempt(conn.clone(), conn, false)
                })
                .await
                .map(|code| (code, false))
            })
            .await;
        let cache_done = tracked.is_some();
        if let Some((_, _, guard, _)) = tracked {
            let written = match &out {
                Ok((update::STORED, true)) if ttl > 0 => Some(Bytes::from(value)),
                _ => None,
            };
            guard.complete(written);
        }
        let (code, _) = out?;
        match code {
            update::STORED => Ok(cache_done),
            update::NOT_FOUND => Err(StoreError::NotFound),
            update::CONFLICT => Err(StoreError::Conflict),
            update::USER_DIFFERS => Err(StoreError::backend(UserIdChanged)),
            other => Err(StoreError::backend(format!(
                "unexpected reply {other} from the update script"
            ))),
        }
    }

    /// `touch`; with a near cache, sent on the key's tracking connection
    /// and written through: the cached copy, with the two deadlines
    /// patched in, stays the copy if no invalidation came in between (as
    /// for `update`, see [`crate::near_cache`]). Returns whether the cache
    /// has already been brought up to date.
    async fn raw_touch(
        &self,
        key: &StorageKey,
        last_access: Timestamp,
        idle_deadline: Timestamp,
    ) -> StoreResult<bool> {
        let now = Timestamp::now();
        let session_key = self.prefix.session_key(key);
        let fields = codec::touch_bytes(last_access, idle_deadline);
        let script = &self.scripts().touch;
        let command = |track: bool| {
            let mut cmd = scripts::evalsha(script, 1, session_key.len());
            cmd.arg(&session_key)
                .arg(now.as_unix_millis())
                .arg(&fields[..])
                .arg(idle_deadline.as_unix_millis())
                .arg(if track { "1" } else { "0" });
            cmd
        };
        let tracked = self.tracked_write(&session_key);
        // Sets absolute values: a repeat after an applied first attempt
        // writes the same bytes and answers the same.
        let out = self
            .bounded("touch", async {
                if let Some((tracker, route, _, _)) = &tracked {
                    let mut conn = Conn::Tracked(route.conn.clone());
                    match scripts::run::<i64>(script, &command(true), &mut conn).await {
                        Ok(code) => return Ok((code, true)),
                        // Idempotent: sent again the usual way, whether or
                        // not this one ran (the cache keeps nothing).
                        Err(e) if is_refused_unrun(&e) => {
                            tracker.lost(route.link, "a tracking connection refused a write");
                        }
                        Err(_) => {
                            tracker.lost(route.link, "a write on a tracking connection failed");
                        }
                    }
                }
                let cmd = command(false);
                self.retrying("touch", Retry::Idempotent, |mut conn| {
                    let cmd = &cmd;
                    async move { scripts::run(script, cmd, &mut conn).await }
                })
                .await
                .map(|code| (code, false))
            })
            .await;
        let cache_done = tracked.is_some();
        if let Some((_, _, guard, copy)) = tracked {
            match (&out, copy) {
                // The copy as the server now holds it: the same bytes, the
                // deadlines moved. (A touch that deleted the key, its new
                // deadline passed, keeps nothing: the key is no longer
                // tracked for this instance, so a later record under it
                // would not be pushed.)
                (Ok((touch::TOUCHED, true)), Some(copy))
                    if copy.bytes.len() >= codec::TOUCH_OFFSET + 16 =>
                {
                    let mut patched = copy.bytes.to_vec();
                    patched[codec::TOUCH_OFFSET..codec::TOUCH_OFFSET + 16].copy_from_slice(&fields);
                    guard.complete_patched(&copy, Bytes::from(patched));
                }
                _ => guard.complete(None),
            }
        }
        match out?.0 {
            touch::TOUCHED | touch::DELETED => Ok(cache_done),
            _ => Err(StoreError::NotFound),
        }
    }

    async fn raw_delete(&self, key: &StorageKey) -> StoreResult<()> {
        // Idempotent: a repeat finds the record gone (or the ended marker a
        // first attempt left) and succeeds; an index entry a first attempt
        // did not get to is a stale entry, which readers prune.
        self.bounded(
            "delete",
            self.retrying("delete", Retry::Idempotent, |mut conn| async move {
                self.delete_from(&mut conn, key.clone(), 0).await
            }),
        )
        .await
        .map(drop)
    }

    async fn raw_list_user_sessions(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
        let index = self.prefix.index_key(user_id.as_bytes());
        // Through the user id and a labelled record's label length (the
        // label itself is read as a second range where there is one).
        let header_end =
            HEADER_LEN - 1 + user_id.len() + session_core::codec::layout::LABEL_LEN_SIZE;
        // Reads, then a `ZREM` of entries whose sessions are gone, which a
        // repeat cannot make wrong: the whole call is retried.
        self.bounded(
            "list_user_sessions",
            self.retrying("list_user_sessions", Retry::Idempotent, |mut conn| {
                let index = &index;
                async move {
                    let (entries, headers) = if self.is_cluster() {
                        // Index and sessions live on different slots: read the
                        // index, then the sessions (a session moving meanwhile
                        // may be missed by this one listing).
                        let entries = Self::index_entries(&mut conn, index).await?;
                        let reads = entries.iter().map(|(member, _)| {
                            let session_key =
                                self.prefix.session_key(&StorageKey::from_stored(member));
                            let mut conn = conn.clone();
                            async move {
                                redis::cmd("GETRANGE")
                                    .arg(session_key)
                                    .arg(0)
                                    .arg(header_end)
                                    .query_async::<Vec<u8>>(&mut conn)
                                    .await
                            }
                        });
                        let mut headers = join_all(reads).await;
                        for header in headers.iter_mut().zip(&entries) {
                            if let (Ok(h), (member, _)) = header {
                                if let Some(rest) = codec::missing_label(h) {
                                    let session_key =
                                        self.prefix.session_key(&StorageKey::from_stored(member));
                                    let more: Vec<u8> = redis::cmd("GETRANGE")
                                        .arg(session_key)
                                        .arg(rest.start)
                                        .arg(rest.end - 1)
                                        .query_async(&mut conn)
                                        .await?;
                                    h.extend_from_slice(&more);
                                }
                            }
                        }
                        (entries, headers)
                    } else {
                        // One script: the index and every header as of one
                        // instant, so a rotation is seen before or after, whole.
                        let script = &self.scripts().list_user_sessions;
                        let head = self.prefix.session_key_head();
                        let mut cmd = scripts::evalsha(script, 1, index.len() + head.len());
                        cmd.arg(index).arg(&head).arg(header_end);
                        let flat: Vec<Vec<u8>> = scripts::run(script, &cmd, &mut conn).await?;
                        let mut entries = Vec::with_capacity(flat.len() / 3);
                        let mut headers = Vec::with_capacity(flat.len() / 3);
                        for triple in flat.chunks_exact(3) {
                            let member = String::from_utf8_lossy(&triple[0]).into_owned();
                            let score = std::str::from_utf8(&triple[1])
                                .ok()
                                .and_then(|s| s.parse::<f64>().ok())
                                .unwrap_or(0.0);
                            entries.push((member, score));
                            headers.push(Ok(triple[2].clone()));
                        }
                        (entries, headers)
                    };
                    let now = Timestamp::now();
                    let mut live = Vec::new();
                    let mut stale = Vec::new();
                    for ((member, written_at), header) in entries.iter().zip(headers) {
                        let key = StorageKey::from_stored(member);
                        match Entry::classify(&header?, &key, user_id, now) {
                            Entry::Live(summary) => live.push(summary),
                            Entry::Missing if self.prunable(*written_at, now) => {
                                stale.push(member.as_str());
                            }
                            // An expired record still in Redis keeps its entry until
                            // Redis evicts it: an application server whose clock lags
                            // ours may still see it live and touch it.
                            Entry::Expired | Entry::Missing | Entry::Foreign => {}
                        }
                    }
                    self.unindex(&mut conn, index, &stale).await?;
                    Ok(live)
                }
            }),
        )
        .await
    }

    async fn raw_delete_user(&self, user_id: &str) -> StoreResult<u64> {
        self.bounded("delete_user", async {
            // A node that refused as the wrong one (a failover) ran none of
            // the deletes: all of them go again on a new connection.
            let (generation, conn) = self.conn_and_generation();
            match self.delete_user_on(user_id, conn).await {
                Err(e) if is_wrong_node(&e) && self.renew(generation) => {
                    self.delete_user_on(user_id, self.conn()).await
                }
                other => other,
            }
        })
        .await
    }

    async fn raw_delete_expired(&self) -> StoreResult<u64> {
        // Redis expires session keys itself; index readers prune entries.
        Ok(0)
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
        let out = self.raw_create(key, record).await;
        self.after_write_to(&out, [key]).await;
        out
    }

    async fn create_with(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Created> {
        let out = self.raw_create_with(key, record, options).await;
        match &out {
            // Every key the call changed is known: the new one, the one it
            // moved from, the sessions it evicted.
            Ok(created) => {
                let moved = options.replaces.as_ref().map(|r| &r.key);
                let keys = std::iter::once(key)
                    .chain(moved)
                    .chain(created.evicted.iter());
                self.after_write_to(&out, keys).await;
            }
            Err(_) => self.after_write(&out).await,
        }
        out
    }

    async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>> {
        self.raw_load(key).await
    }

    async fn update(
        &self,
        key: &StorageKey,
        expected_version: u64,
        record: &SessionRecord,
    ) -> StoreResult<()> {
        match self.raw_update(key, expected_version, record).await {
            // The near cache holds the written bytes, or dropped its copy.
            Ok(true) => Ok(()),
            out => {
                let out = out.map(drop);
                self.after_write_to(&out, [key]).await;
                out
            }
        }
    }

    async fn touch(
        &self,
        key: &StorageKey,
        last_access: Timestamp,
        idle_deadline: Timestamp,
    ) -> StoreResult<()> {
        match self.raw_touch(key, last_access, idle_deadline).await {
            // The near cache holds the touched copy, or dropped it.
            Ok(true) => Ok(()),
            out => {
                let out = out.map(drop);
                self.after_write_to(&out, [key]).await;
                out
            }
        }
    }

    async fn delete(&self, key: &StorageKey) -> StoreResult<()> {
        let out = self.raw_delete(key).await;
        self.after_write(&out).await;
        out
    }

    async fn list_user_sessions(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
        self.raw_list_user_sessions(user_id).await
    }

    async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
        let out = self.raw_delete_user(user_id).await;
        self.after_write(&out).await;
        out
    }

    async fn delete_expired(&self) -> StoreResult<u64> {
        self.raw_delete_expired().await
    }
}

impl RedisStore {
    /// [`SessionStore::delete_user`] on `conn`.
    async fn delete_user_on(&self, user_id: &str, mut conn: Conn) -> RedisResult<u64> {
        let index = self.prefix.index_key(user_id.as_bytes());
        let segment = codec::user_segment(Some(user_id));
        let cluster = self.is_cluster();
        if !cluster {
            // One script: atomic, so concurrent calls and logins see each
            // other whole (a repeat after a lost reply counts 0 for what the
            // first attempt ended).
            let head = self.prefix.session_key_head();
            let script = &self.scripts().delete_user;
            let mut cmd = scripts::evalsha(script, 1, index.len() + segment.len() + head.len());
            cmd.arg(&index)
                .arg(&segment[..])
                .arg(Timestamp::now().as_unix_millis())
                .arg(&head)
                .arg(MAX_MOVES);
            return scripts::run(script, &cmd, &mut conn).await;
        }
        // Sessions ended, by the key they were under: a session reached
        // both through its entry and through a moved marker counts once.
        let mut ended = HashSet::new();
        // Entries already handled by an earlier pass.
        let mut handled: HashSet<String> = HashSet::new();
        // The index is read, then its sessions deleted: a login that
        // lands in between (its entry added after the read) would survive
        // "log out everywhere". So the index is read again until a pass
        // finds no entry it has not handled (at most DELETE_USER_PASSES
        // passes), which ends every session indexed when the last read was
        // made: the call takes effect then.
        for _ in 0..DELETE_USER_PASSES {
            // Only the index read is retried: once a session is deleted, a
            // repeat would no longer count it.
            let entries: Vec<(String, f64)> = self
                .retrying("delete_user", Retry::Idempotent, |mut conn| {
                    let index = &index;
                    async move { Self::index_entries(&mut conn, index).await }
                })
                .await?
                .into_iter()
                .filter(|(member, _)| !handled.contains(member))
                .collect();
            if entries.is_empty() {
                break;
            }
            handled.extend(entries.iter().map(|(member, _)| member.clone()));
            let now = Timestamp::now();
            let deletes = entries.iter().map(|(member, _)| {
                let session_key = self.prefix.session_key(&StorageKey::from_stored(member));
                let mut conn = conn.clone();
                let segment = &segment[..];
                async move {
                    let script = &self.scripts().delete_if_user;
                    let mut cmd = scripts::evalsha(script, 1, session_key.len() + segment.len());
                    cmd.arg(session_key).arg(segment).arg(now.as_unix_millis());
                    scripts::run::<(i64, String, i64)>(script, &cmd, &mut conn).await
                }
            });
            let results = join_all(deletes).await;
            let mut gone = Vec::new();
            let mut moved = Vec::new();
            for ((member, written_at), result) in entries.iter().zip(results) {
                match result? {
                    (delete_if_user::DELETED_LIVE, _, _) => {
                        ended.insert(StorageKey::from_stored(member));
                        gone.push(member.as_str());
                    }
                    (delete_if_user::DELETED_EXPIRED, _, _) => gone.push(member.as_str()),
                    (delete_if_user::MOVED, to, ms) => {
                        // A rotation moved it meanwhile: end it where it went.
                        gone.push(member.as_str());
                        moved.push((StorageKey::from_stored(&to), ms));
                    }
                    (delete_if_user::MISSING, _, _) if self.prunable(*written_at, now) => {
                        gone.push(member.as_str());
                    }
                    _ => {}
                }
            }
            let follows = moved.into_iter().map(|(to, ms)| {
                let mut conn = conn.clone();
                let block = if cluster { ended_marker_ttl(ms) } else { 0 };
                async move { self.delete_from(&mut conn, to, block).await }
            });
            for result in join_all(follows).await {
                if let Some(e) = result? {
                    if e.live {
                        ended.insert(e.key);
                    }
                }
            }
            // Only the entries handled here: one added meanwhile by a
            // concurrent login stays with its session.
            self.unindex(&mut conn, &index, &gone).await?;
        }
        Ok(ended.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(user: Option<&str>, expires_in: i64) -> SessionRecord {
        let now = Timestamp::now().as_unix_millis();
        SessionRecord::new(
            Bytes::from_static(b"data"),
            user.map(str::to_owned),
            Timestamp::from_unix_millis(now),
            Timestamp::from_unix_millis(now + expires_in),
            Timestamp::from_unix_millis(now + 2 * expires_in.abs()),
        )
        .with_last_access(Timestamp::from_unix_millis(now))
        .with_version(1)
    }

    fn header(r: &SessionRecord) -> Vec<u8> {
        let enc = r.encode();
        enc[..HEADER_LEN + r.user_id.as_deref().map_or(0, str::len)].to_vec()
    }

    #[test]
    fn classify_lists_only_this_users_live_sessions() {
        let key = StorageKey::from_stored("k");
        let now = Timestamp::now();
        let live = record(Some("alice"), 60_000);
        assert_eq!(
            Entry::classify(&header(&live), &key, "alice", now),
            Entry::Live(live.summary(&key))
        );
        let dead = record(Some("alice"), -1);
        assert_eq!(
            Entry::classify(&header(&dead), &key, "alice", now),
            Entry::Expired
        );
        assert_eq!(Entry::classify(b"", &key, "alice", now), Entry::Missing);
        let bob = record(Some("bob"), 60_000);
        assert_eq!(
            Entry::classify(&header(&bob), &key, "alice", now),
            Entry::Foreign
        );
        // A longer user id is cut by the read and must not match a prefix.
        let longer = record(Some("alice2"), 60_000);
        let cut = &longer.encode()[..HEADER_LEN + 5];
        assert_eq!(Entry::classify(cut, &key, "alice", now), Entry::Foreign);
        assert_eq!(
            Entry::classify(b"\x07junk", &key, "alice", now),
            Entry::Foreign
        );
    }

    #[test]
    fn ttls_are_capped_and_index_outlives_sessions() {
        let now = Timestamp::from_unix_millis(1_000);
        assert_eq!(ttl_ms(Timestamp::from_unix_millis(1_500), now), 500);
        assert_eq!(ttl_ms(Timestamp::from_unix_millis(500), now), -500);
        assert_eq!(
            ttl_ms(Timestamp::from_unix_millis(i64::MAX), now),
            MAX_TTL_MS
        );
        assert_eq!(
            index_ttl_ms(Timestamp::from_unix_millis(1_500), now),
            500 + INDEX_SLACK_MS
        );
        assert_eq!(index_ttl_ms(Timestamp::from_unix_millis(i64::MIN), now), 1);
    }

    /// A server that accepts connections and never answers: every call
    /// fails once the operation timeout runs out, with the timeout every
    /// store reports.
    #[tokio::test]
    async fn an_operation_nobody_answers_is_a_timeout() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", silent.local_addr().unwrap());
        let accepted = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        let limit = Duration::from_millis(200);
        let store = RedisStore::builder()
            .operation_timeout(limit)
            .connect_timeout(Duration::from_secs(30))
            .connect_lazy(&url)
            .unwrap();
        let err = store.load(&StorageKey::from_stored("k")).await.unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        let StoreError::Unavailable(source) = &err else {
            panic!("{err:?}");
        };
        let timed_out = source.downcast_ref::<session_core::TimedOut>().unwrap();
        assert_eq!((timed_out.operation(), timed_out.after()), ("load", limit));
        let err = store.delete_user("u").await.unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        accepted.abort();
    }
}
