//! [`RedisStore`]: the [`SessionStore`] implementation.
//!
//! Every operation is bounded by the operation timeout and costs one round
//! trip in the common case: `load` is a `GET`, `create`, `update`, `touch`
//! are one `EVALSHA` each on a single server. On a cluster, `create` of a
//! logged-in session writes the index entry first (a second command, to the
//! index's slot), and `delete` of a logged-in session removes the index
//! entry after the session. `list_user` and `delete_user` read the index,
//! then visit every listed session concurrently, then prune.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use redis::RedisResult;
use session_core::{
    SessionRecord, SessionStore, SessionSummary, StorageKey, StoreError, StoreResult, Timestamp,
};

use crate::builder::RedisStoreBuilder;
use crate::codec::{self, HEADER_LEN};
use crate::connection::Conn;
use crate::error::{store_error, ConnectError, OperationTimedOut};
use crate::keys::{InvalidPrefix, KeyPrefix};
use crate::scripts::{self, delete_if_user, update, Scripts};

/// Longest TTL ever set (100 years): deadlines further away are capped.
const MAX_TTL_MS: i64 = 100 * 365 * 24 * 3_600_000;
/// An index key outlives the absolute deadline of its newest entry by this.
const INDEX_SLACK_MS: i64 = 60_000;
/// On a cluster, an index entry whose session is missing is pruned only once
/// it is older than this: a `create` writes the entry before the session, so
/// a younger entry may belong to a session that is being written right now.
pub const CLUSTER_INDEX_GRACE: Duration = Duration::from_secs(60);

/// What connections and scripts every prefix-view of a store shares.
pub(crate) struct Shared {
    pub(crate) conn: Conn,
    pub(crate) scripts: Scripts,
    pub(crate) operation_timeout: Duration,
    pub(crate) max_record_size: usize,
}

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
    /// No session under the key.
    Missing,
    /// Something else under the key (another user's record, unreadable
    /// bytes): neither listed nor pruned.
    Foreign,
}

impl Entry {
    fn classify(header: &[u8], key: &StorageKey, user_id: &str, now: Timestamp) -> Self {
        if header.is_empty() {
            return Self::Missing;
        }
        match SessionRecord::decode(header) {
            Ok(r) if r.user_id.as_deref() == Some(user_id) => {
                if r.is_expired_at(now) {
                    Self::Expired
                } else {
                    Self::Live(r.summary(key))
                }
            }
            _ => Self::Foreign,
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
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::builder().connect(url).await
    }

    /// Connects to a Redis Cluster with the defaults (prefix `session`).
    ///
    /// # Errors
    ///
    /// See [`RedisStoreBuilder::connect_cluster`].
    pub async fn connect_cluster<I, S>(urls: I) -> Result<Self, ConnectError>
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
        self.shared.conn.is_cluster()
    }

    fn conn(&self) -> Conn {
        self.shared.conn.clone()
    }

    fn scripts(&self) -> &Scripts {
        &self.shared.scripts
    }

    /// Runs `fut` under the operation timeout, mapping errors.
    async fn bounded<T>(&self, fut: impl Future<Output = RedisResult<T>>) -> StoreResult<T> {
        let limit = self.shared.operation_timeout;
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r.map_err(store_error),
            Err(_) => Err(StoreError::unavailable(OperationTimedOut(limit))),
        }
    }

    /// Encodes `record`, enforcing the size limit.
    fn encode(&self, record: &SessionRecord) -> StoreResult<Vec<u8>> {
        let user = record.user_id.as_deref().map_or(0, str::len);
        let size = HEADER_LEN
            .saturating_add(user)
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
        let script = &self.scripts().index_add;
        let mut cmd = scripts::evalsha(script, 1, index.len());
        cmd.arg(index)
            .arg(key.as_str())
            .arg(now.as_unix_millis())
            .arg(index_ttl);
        scripts::run::<i64>(script, &cmd, conn).await.map(drop)
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

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
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
        let mut conn = self.conn();
        let stored: i64 = self
            .bounded(async {
                if let (Some(index), true, true) = (&index, cluster, ttl > 0) {
                    // Index first: a failure between the two writes leaves a
                    // stale entry, never an unindexed session.
                    self.index_add(&mut conn, index, key, now, index_ttl)
                        .await?;
                }
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
                scripts::run(script, &cmd, &mut conn).await
            })
            .await?;
        if stored == 1 {
            Ok(())
        } else {
            Err(StoreError::AlreadyExists)
        }
    }

    async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>> {
        let session_key = self.prefix.session_key(key);
        let mut conn = self.conn();
        let value: Option<Vec<u8>> = self
            .bounded(get(&session_key).query_async(&mut conn))
            .await?;
        let Some(value) = value else {
            return Ok(None);
        };
        let record = codec::decode(value)?;
        // Redis expires keys on its own clock; the contract is ours.
        if record.is_expired_at(Timestamp::now()) {
            return Ok(None);
        }
        Ok(Some(record))
    }

    async fn update(
        &self,
        key: &StorageKey,
        expected_version: u64,
        record: &SessionRecord,
    ) -> StoreResult<()> {
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
        let mut conn = self.conn();
        let script = &self.scripts().update;
        let with_index = index.as_ref().filter(|_| !cluster);
        let command = |index_ready: bool| {
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
                .arg(key.as_str());
            cmd
        };
        let code = self
            .bounded(async {
                let code: i64 = scripts::run(script, &command(false), &mut conn).await?;
                match (&index, code) {
                    (Some(index), update::NEEDS_INDEX) => {
                        // The absolute deadline moved later: make the index
                        // outlive it before the session does.
                        self.index_add(&mut conn, index, key, now, index_ttl)
                            .await?;
                        scripts::run(script, &command(true), &mut conn).await
                    }
                    _ => Ok(code),
                }
            })
            .await?;
        match code {
            update::STORED => Ok(()),
            update::NOT_FOUND => Err(StoreError::NotFound),
            update::CONFLICT => Err(StoreError::Conflict),
            update::USER_DIFFERS => Err(StoreError::backend(UserIdChanged)),
            other => Err(StoreError::backend(format!(
                "unexpected reply {other} from the update script"
            ))),
        }
    }

    async fn touch(
        &self,
        key: &StorageKey,
        last_access: Timestamp,
        idle_deadline: Timestamp,
    ) -> StoreResult<()> {
        let now = Timestamp::now();
        let session_key = self.prefix.session_key(key);
        let fields = codec::touch_bytes(last_access, idle_deadline);
        let mut conn = self.conn();
        let script = &self.scripts().touch;
        let mut cmd = scripts::evalsha(script, 1, session_key.len());
        cmd.arg(&session_key)
            .arg(now.as_unix_millis())
            .arg(&fields[..])
            .arg(idle_deadline.as_unix_millis());
        let touched: i64 = self.bounded(scripts::run(script, &cmd, &mut conn)).await?;
        if touched == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }

    async fn delete(&self, key: &StorageKey) -> StoreResult<()> {
        let session_key = self.prefix.session_key(key);
        let mut conn = self.conn();
        self.bounded(async {
            // Session first, then its index entry: a failure in between
            // leaves a stale entry, which the index readers prune.
            let script = &self.scripts().delete;
            let mut cmd = scripts::evalsha(script, 1, session_key.len());
            cmd.arg(&session_key);
            let (bound, user): (i64, Vec<u8>) = scripts::run(script, &cmd, &mut conn).await?;
            if bound == 1 {
                let index = self.prefix.index_key(&user);
                Self::prune(&mut conn, &index, &[key.as_str()]).await?;
            }
            Ok(())
        })
        .await
    }

    async fn list_user(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
        let index = self.prefix.index_key(user_id.as_bytes());
        let mut conn = self.conn();
        let header_end = HEADER_LEN - 1 + user_id.len();
        self.bounded(async {
            let entries = Self::index_entries(&mut conn, &index).await?;
            let reads = entries.iter().map(|(member, _)| {
                let session_key = self.prefix.session_key(&StorageKey::from_stored(member));
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
            let headers = join_all(reads).await;
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
            Self::prune(&mut conn, &index, &stale).await?;
            Ok(live)
        })
        .await
    }

    async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
        let index = self.prefix.index_key(user_id.as_bytes());
        let segment = codec::user_segment(Some(user_id));
        let mut conn = self.conn();
        self.bounded(async {
            let entries = Self::index_entries(&mut conn, &index).await?;
            let now = Timestamp::now();
            let deletes = entries.iter().map(|(member, _)| {
                let session_key = self.prefix.session_key(&StorageKey::from_stored(member));
                let mut conn = conn.clone();
                let segment = &segment[..];
                async move {
                    let script = &self.scripts().delete_if_user;
                    let mut cmd = scripts::evalsha(script, 1, session_key.len() + segment.len());
                    cmd.arg(session_key).arg(segment).arg(now.as_unix_millis());
                    scripts::run::<i64>(script, &cmd, &mut conn).await
                }
            });
            let results = join_all(deletes).await;
            let mut deleted = 0;
            let mut gone = Vec::new();
            for ((member, written_at), result) in entries.iter().zip(results) {
                match result? {
                    delete_if_user::DELETED_LIVE => {
                        deleted += 1;
                        gone.push(member.as_str());
                    }
                    delete_if_user::DELETED_EXPIRED => gone.push(member.as_str()),
                    delete_if_user::MISSING if self.prunable(*written_at, now) => {
                        gone.push(member.as_str());
                    }
                    _ => {}
                }
            }
            // Only the entries handled here: one added meanwhile by a
            // concurrent login stays with its session.
            Self::prune(&mut conn, &index, &gone).await?;
            Ok(deleted)
        })
        .await
    }

    async fn delete_expired(&self) -> StoreResult<u64> {
        // Redis expires session keys itself; index readers prune entries.
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(user: Option<&str>, expires_in: i64) -> SessionRecord {
        let now = Timestamp::now().as_unix_millis();
        SessionRecord {
            data: Bytes::from_static(b"data"),
            user_id: user.map(str::to_owned),
            created_at: Timestamp::from_unix_millis(now),
            last_access: Timestamp::from_unix_millis(now),
            idle_deadline: Timestamp::from_unix_millis(now + expires_in),
            absolute_deadline: Timestamp::from_unix_millis(now + 2 * expires_in.abs()),
            version: 1,
        }
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
}
