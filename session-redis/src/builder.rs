//! [`RedisStoreBuilder`]: key prefix, timeouts and size limit, then connect
//! to a single server or a cluster.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use session_core::redact::RedactedError;

use crate::connection::{config_get, Conn};
use crate::error::SetupError;
use crate::keys::{KeyPrefix, DEFAULT_PREFIX};
use crate::near_cache::{LocalCache, NearCache};
use crate::scripts::Scripts;
use crate::store::{RedisStore, Shared};
use crate::tracking::{Target, Tracker};

/// Default bound on one store operation, retries and reconnects included.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(2);
/// Default bound on establishing a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default largest encoded record (metadata, user id and data) accepted.
pub const DEFAULT_MAX_RECORD_SIZE: usize = 4 * 1024 * 1024;

/// Configures and connects a [`RedisStore`].
///
/// ```no_run
/// # async fn demo() -> Result<(), session_redis::SetupError> {
/// use std::time::Duration;
/// let store = session_redis::RedisStore::builder()
///     .prefix("myapp")
///     .operation_timeout(Duration::from_millis(500))
///     .connect("redis://127.0.0.1:6379")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    prefix: String,
    operation_timeout: Duration,
    connect_timeout: Duration,
    max_record_size: usize,
    allow_eviction: bool,
    max_clock_skew: Duration,
    near_cache: Option<NearCache>,
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_record_size: DEFAULT_MAX_RECORD_SIZE,
            allow_eviction: false,
            max_clock_skew: session_core::DEFAULT_MAX_CLOCK_SKEW,
            near_cache: None,
        }
    }
}

impl RedisStoreBuilder {
    /// A builder with the defaults: prefix `session`, 2 s operation and
    /// connect timeouts, 4 MiB records.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The key prefix (namespace): every key this store writes starts with
    /// `<prefix>:`. Stores with different prefixes share nothing. Validated
    /// when connecting (see [`KeyPrefix::new`]).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The same as [`prefix`](Self::prefix), under the option name every
    /// backend's builder shares (`MemcachedStore::builder().namespace(..)`).
    #[must_use]
    pub fn namespace(self, namespace: impl Into<String>) -> Self {
        self.prefix(namespace)
    }

    /// The longest one operation may take, reconnects and retries included;
    /// past it the operation fails with
    /// [`StoreError::timed_out`](session_core::StoreError::timed_out) (an
    /// `Unavailable` for which
    /// [`is_timeout`](session_core::StoreError::is_timeout) is true).
    /// On a cluster, also the per-request response timeout of each node's
    /// connection (the cluster client uses it to route and retry).
    ///
    /// What is retried, within this bound: after a connection-level failure
    /// (broken pipe, connection reset, refused or closed; not an error
    /// reply, not a timeout), the operation is sent exactly once more, on a
    /// fresh connection:
    ///
    /// - `load`, `list_user_sessions`, `touch` and `delete` (reads, and writes that
    ///   give the same state and answer when repeated), and the index read
    ///   that starts `delete_user`;
    /// - `create`, `update` and single-server `create_with` only when the
    ///   connection could not be made at all (refused), which proves
    ///   nothing was sent. After a failure on an established connection the
    ///   command may have run before the reply was lost, and a repeat would
    ///   answer `AlreadyExists` or `Conflict` for a write that succeeded, so
    ///   the caller gets `Unavailable` instead.
    ///
    /// Not retried: cluster `create_with` (ordered steps on several slots)
    /// and the deletes of `delete_user` (a repeat would not count what the
    /// first attempt ended). A timed-out operation is never repeated.
    #[must_use]
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// The longest one connection attempt may take.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The largest encoded record accepted; larger ones fail with
    /// [`StoreError::TooLarge`](session_core::StoreError::TooLarge) and
    /// nothing is written.
    #[must_use]
    pub fn max_record_size(mut self, bytes: usize) -> Self {
        self.max_record_size = bytes;
        self
    }

    /// The clock skew between this application and the server past which
    /// the store logs a warning (default
    /// [`DEFAULT_MAX_CLOCK_SKEW`](session_core::DEFAULT_MAX_CLOCK_SKEW),
    /// 2 s); see [`RedisStore::measure_clock_skew`].
    #[must_use]
    pub fn max_clock_skew(mut self, bound: Duration) -> Self {
        self.max_clock_skew = bound;
        self
    }

    /// Accepts a server that may evict keys under memory pressure (a
    /// `maxmemory` limit with a `maxmemory-policy` other than
    /// `noeviction`). Off by default: [`connect`](Self::connect) then
    /// refuses such a server with [`SetupError::ServerSetting`], because an
    /// evicted user index makes "log out everywhere" miss live sessions,
    /// and an evicted session logs its user out. Turn it on only where
    /// both are acceptable.
    #[must_use]
    pub fn allow_eviction(mut self, allow: bool) -> Self {
        self.allow_eviction = allow;
        self
    }

    /// Turns on the near cache: session records kept in this process,
    /// kept coherent with Redis by server-assisted invalidation (RESP3
    /// `CLIENT TRACKING`, Redis 6 or later). A `load` that hits it makes no
    /// round trip; every write still goes to Redis first, with the same
    /// compare-and-set. Turn it on when most requests only read their
    /// session and the application runs on few instances per Redis; see
    /// [`NearCache`] for the coherence bound and the costs.
    ///
    /// The connect methods wait up to the connect timeout for tracking to
    /// be established; until it is (and whenever it is in doubt), loads go
    /// to Redis.
    #[must_use]
    pub fn near_cache(mut self, cache: NearCache) -> Self {
        self.near_cache = Some(cache);
        self
    }

    /// Connects to a single server, e.g. `redis://127.0.0.1:6379/0` or
    /// `rediss://user:pass@host:6380`.
    ///
    /// # Errors
    ///
    /// [`SetupError`] for a bad prefix or URL, a server that does not
    /// answer ([`SetupError::Unavailable`], [`SetupError::TimedOut`]) or
    /// one that refuses us, a wrong password for instance
    /// ([`SetupError::Refused`]). No error shows the URL's credentials.
    pub async fn connect(self, url: &str) -> Result<RedisStore, SetupError> {
        let prefix = KeyPrefix::new(&self.prefix)?;
        let client = redis::Client::open(url)
            .map_err(|e| SetupError::InvalidUrl(RedactedError::with_url_secrets(e, [url])))?;
        let conn = self
            .bounded_connect(
                ConnectionManager::new_with_config(client.clone(), self.manager_config()),
                &[url],
            )
            .await?;
        let mut conn = conn;
        self.check_eviction_policy(&mut conn).await?;
        let target = Target::Single(client.get_connection_info().clone());
        let reconnect = Some((client, self.manager_config()));
        let connect_timeout = self.connect_timeout;
        let store = self.finish(prefix, Conn::Single(conn), reconnect, target, None);
        store.load_functions().await;
        store.wait_for_near_cache(connect_timeout).await;
        // Information only: a server that does not answer TIME now will be
        // measured again on use.
        let _ = store.measure_clock_skew().await;
        Ok(store)
    }

    /// Refuses a server that may evict keys (see
    /// [`allow_eviction`](Self::allow_eviction)). A server that does not
    /// let us read its configuration (`CONFIG` renamed or forbidden, as on
    /// some managed services) is accepted with a warning.
    async fn check_eviction_policy(&self, conn: &mut ConnectionManager) -> Result<(), SetupError> {
        let read = async {
            let maxmemory = config_get(conn, "maxmemory").await?.unwrap_or_default();
            let policy = config_get(conn, "maxmemory-policy")
                .await?
                .unwrap_or_default();
            Ok::<_, redis::RedisError>((maxmemory, policy))
        };
        let (maxmemory, policy) = match tokio::time::timeout(self.connect_timeout, read).await {
            Ok(Ok(settings)) => settings,
            _ => {
                tracing::warn!(target: "session_redis", "could not read maxmemory / maxmemory-policy (CONFIG GET); make sure the server never evicts session keys (maxmemory-policy noeviction)");
                return Ok(());
            }
        };
        if maxmemory.trim() == "0" || policy == "noeviction" || self.allow_eviction {
            if policy != "noeviction" && maxmemory.trim() != "0" {
                tracing::warn!(target: "session_redis", policy = %policy, "the server may evict session keys under memory pressure (allowed by allow_eviction)");
            }
            return Ok(());
        }
        Err(SetupError::ServerSetting {
            setting: "maxmemory-policy",
            value: policy,
            required: "noeviction",
        })
    }

    /// Like [`connect`](Self::connect), but without waiting for the server:
    /// the connection is made on first use, so an application can start
    /// while Redis is still down (calls fail with
    /// [`StoreError::Unavailable`](session_core::StoreError::Unavailable)
    /// until it is up). Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`SetupError`] for a bad prefix or URL.
    pub fn connect_lazy(self, url: &str) -> Result<RedisStore, SetupError> {
        let prefix = KeyPrefix::new(&self.prefix)?;
        let redacted = |e| RedactedError::with_url_secrets(e, [url]);
        let client = redis::Client::open(url).map_err(|e| SetupError::InvalidUrl(redacted(e)))?;
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), self.manager_config())
            .map_err(|e| SetupError::Refused(redacted(e)))?;
        let target = Target::Single(client.get_connection_info().clone());
        let reconnect = Some((client, self.manager_config()));
        Ok(self.finish(prefix, Conn::Single(conn), reconnect, target, None))
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        // No per-command response timeout: every store operation already
        // runs under the operation timeout as a whole, and a second timer
        // per command cost about 9 % of the client's instructions per
        // request (callgrind). A timed-out command does not make the
        // manager reconnect either way; a dropped connection does.
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500))
    }

    /// Connects to a Redis Cluster through one or more of its nodes, e.g.
    /// `["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]`.
    ///
    /// The cluster client reconnects a node whose connection failed and
    /// resends the command itself, up to twice, whatever the command
    /// (redirections count too): a write whose reply was lost can thus be
    /// answered `AlreadyExists` (`create`) or `Conflict` (`update`) although
    /// it was applied; it is never applied twice, as every write is
    /// insert-only or compare-and-set. The store's own retry (see
    /// [`operation_timeout`](Self::operation_timeout)) comes on top.
    ///
    /// # Errors
    ///
    /// [`SetupError`] for a bad prefix or URL, no URL at all, or a cluster
    /// that does not answer.
    pub async fn connect_cluster<I, S>(self, urls: I) -> Result<RedisStore, SetupError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let prefix = KeyPrefix::new(&self.prefix)?;
        let nodes: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        if nodes.is_empty() {
            return Err(SetupError::NoClusterNodes);
        }
        let client = ClusterClient::builder(nodes.clone())
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.operation_timeout)
            .retries(2)
            .build()
            .map_err(|e| SetupError::InvalidUrl(RedactedError::with_url_secrets(e, &nodes)))?;
        let conn = self
            .bounded_connect(client.get_async_connection(), &nodes)
            .await?;
        let seeds = nodes
            .iter()
            .map(|n| redis::IntoConnectionInfo::into_connection_info(n.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SetupError::InvalidUrl(RedactedError::with_url_secrets(e, &nodes)))?;
        let target = Target::Cluster { seeds };
        let connect_timeout = self.connect_timeout;
        let store = self.finish(prefix, Conn::Cluster(conn), None, target, Some(client));
        store.load_functions().await;
        store.wait_for_near_cache(connect_timeout).await;
        let _ = store.measure_clock_skew().await;
        Ok(store)
    }

    /// Runs a connection attempt to `urls` under the connect bound and
    /// types its failure, credentials redacted.
    async fn bounded_connect<T, S: AsRef<str>>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
        urls: &[S],
    ) -> Result<T, SetupError> {
        // Room for the connection manager's own retries.
        let bound = self.connect_timeout.saturating_mul(3);
        tokio::time::timeout(bound, fut)
            .await
            .map_err(|_| SetupError::TimedOut(bound))?
            .map_err(|e| {
                // A refusal first: the client files a failed AUTH among the
                // errors it reconnects after, which would read "unavailable".
                let refused = crate::error::is_refusal(&e);
                let unavailable = crate::error::is_unavailable(&e);
                let e = RedactedError::with_url_secrets(e, urls);
                if !refused && unavailable {
                    SetupError::Unavailable(e)
                } else {
                    SetupError::Refused(e)
                }
            })
    }

    fn finish(
        self,
        prefix: KeyPrefix,
        conn: Conn,
        reconnect: Option<(redis::Client, ConnectionManagerConfig)>,
        target: Target,
        cluster_client: Option<ClusterClient>,
    ) -> RedisStore {
        let tracker = self.near_cache.and_then(|config| {
            if tokio::runtime::Handle::try_current().is_err() {
                tracing::warn!(target: "session_redis", "near cache off: the store was made outside a Tokio runtime");
                return None;
            }
            Some(Tracker::spawn(
                Arc::new(LocalCache::new(config)),
                target,
                self.connect_timeout,
                self.operation_timeout,
            ))
        });
        RedisStore::from_parts(
            Arc::new(Shared {
                conn: std::sync::RwLock::new((0, conn)),
                reconnect,
                scripts: Scripts::new(),
                operation_timeout: self.operation_timeout,
                max_record_size: self.max_record_size,
                max_clock_skew: self.max_clock_skew,
                clock_skew: std::sync::Mutex::new(None),
                next_skew_check_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
                tracker,
                cluster_client,
                next_cluster_refresh_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            }),
            prefix,
        )
    }
}

#[cfg(test)]
mod shared_names {
    use super::*;

    #[test]
    fn namespace_is_the_prefix() {
        let a = RedisStoreBuilder::new().namespace("app_1");
        assert_eq!(a.prefix, "app_1");
        assert_eq!(a.prefix, RedisStoreBuilder::new().prefix("app_1").prefix);
    }
}
