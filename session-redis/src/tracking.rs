//! The near cache's tracking connections: one RESP3 connection per primary
//! with `CLIENT TRACKING ON NOLOOP`, which carries the cached keys' reads and
//! the updates written through the cache, their push handler, heartbeat and
//! barrier. See [`crate::near_cache`] for why this keeps the cache coherent.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::{AsyncPushSender, ConnectionLike, MultiplexedConnection, SendError};
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use crate::near_cache::LocalCache;

/// Where the primaries are.
pub(crate) enum Target {
    /// One server: track it, and check it is still a primary.
    Single(ConnectionInfo),
    /// A cluster: the primaries come from `CLUSTER SLOTS`, asked of every
    /// seed node at once (the first answer wins: a frozen node must not
    /// hold tracking up); the first seed gives credentials and TLS.
    Cluster { seeds: Vec<ConnectionInfo> },
}

/// The established tracking connections.
struct Links {
    id: u64,
    /// Set by the push handler when one of them closed, also before the
    /// links were installed.
    dead: Arc<AtomicBool>,
    conns: Vec<MultiplexedConnection>,
    /// The slot map they were made for (cluster), to notice failovers.
    topology: Option<BTreeSet<(i64, i64, String, i64)>>,
    /// Cluster: (first slot, last slot, index in `conns`), sorted.
    slots: Vec<(u16, u16, usize)>,
}

/// A session key's tracking connection: the key's reads and written-through
/// updates go on it, so that the server tracks the key for this instance.
pub(crate) struct Route {
    /// The link the connection belongs to (see [`Tracker::lost`]).
    pub(crate) link: u64,
    /// The primary's tracking connection.
    pub(crate) conn: MultiplexedConnection,
}

/// The cluster hash slot of `key` (CRC16/XMODEM of its hash tag, mod 16384).
fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|b| *b == b'}')
                .filter(|close| *close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % 16384
}

/// Tracking connections and the cache they keep coherent.
pub(crate) struct Tracker {
    cache: Arc<LocalCache>,
    target: Target,
    links: Mutex<Option<Arc<Links>>>,
    next_link: AtomicU64,
    wake: Notify,
    connect_timeout: Duration,
    operation_timeout: Duration,
}

/// Handles the pushes of one tracking connection, inline in its reader:
/// in the order they arrived, before any later reply is delivered.
struct PushHandler {
    tracker: Weak<Tracker>,
    link: u64,
    dead: Arc<AtomicBool>,
}

impl AsyncPushSender for PushHandler {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        let Some(tracker) = self.tracker.upgrade() else {
            return Err(SendError);
        };
        match info.kind {
            PushKind::Invalidate => match info.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        match key {
                            Value::BulkString(key) => tracker.cache.invalidate(key),
                            Value::SimpleString(key) => tracker.cache.invalidate(key.as_bytes()),
                            // Not a key name: doubt everything.
                            _ => tracker.cache.flush(),
                        }
                    }
                }
                // FLUSHDB / FLUSHALL send a null.
                _ => tracker.cache.flush(),
            },
            PushKind::Disconnection => {
                self.dead.store(true, Ordering::Release);
                tracker.lost(self.link, "the tracking connection closed");
            }
            _ => {}
        }
        Ok(())
    }
}

impl Tracker {
    /// Starts tracking for `cache` in the background; the task ends when
    /// the returned tracker is dropped.
    pub(crate) fn spawn(
        cache: Arc<LocalCache>,
        target: Target,
        connect_timeout: Duration,
        operation_timeout: Duration,
    ) -> Arc<Self> {
        let tracker = Arc::new(Self {
            cache,
            target,
            links: Mutex::new(None),
            next_link: AtomicU64::new(1),
            wake: Notify::new(),
            connect_timeout,
            operation_timeout,
        });
        let weak = Arc::downgrade(&tracker);
        tokio::spawn(run(weak));
        tracker
    }

    pub(crate) fn cache(&self) -> &LocalCache {
        &self.cache
    }

    /// The tracking connection that `session_key`'s reads and written-through
    /// updates must use; `None` while tracking is not established (the
    /// cache then neither serves nor stores).
    pub(crate) fn route(&self, session_key: &[u8]) -> Option<Route> {
        let links = self.current()?;
        let index = if links.slots.is_empty() {
            0
        } else {
            let slot = slot_of(session_key);
            let at = links.slots.partition_point(|(_, last, _)| *last < slot);
            match links.slots.get(at) {
                Some((first, _, index)) if *first <= slot => *index,
                // A slot no primary held when tracking started.
                _ => return None,
            }
        };
        Some(Route {
            link: links.id,
            conn: links.conns.get(index)?.clone(),
        })
    }

    fn current(&self) -> Option<Arc<Links>> {
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Link `link` can no longer be trusted: stop serving, empty the
    /// cache, and have the task make new connections. A stale `link` (one
    /// already replaced) is ignored.
    pub(crate) fn lost(&self, link: u64, why: &'static str) {
        let mut links = self
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if links.as_ref().is_some_and(|l| l.id == link) {
            *links = None;
            // Under the lock: an `establish` completing meanwhile cannot
            // start serving before this stops it.
            self.cache.stop_serving();
            drop(links);
            tracing::warn!(target: "session_redis", reason = why, "near cache emptied; re-establishing invalidation tracking");
            self.wake.notify_one();
        }
    }

    /// Doubt about every link (a failover was seen): as [`Self::lost`]
    /// for whatever link is current.
    pub(crate) fn lose_current(&self, why: &'static str) {
        if let Some(links) = self.current() {
            self.lost(links.id, why);
        } else {
            self.cache.stop_serving();
        }
    }

    /// Returns once every invalidation the server sent for writes that
    /// completed before this call has been handled (a `ROLE` on each
    /// tracking connection; the server answers it after those pushes). On
    /// failure the cache is emptied instead.
    pub(crate) async fn barrier(&self) {
        let Some(links) = self.current() else {
            // Not tracking: nothing is served or stored.
            return;
        };
        // `ROLE` rather than `PING`: as good a barrier, and a node that
        // turned replica (a manual failover) no longer sees the writes.
        let roles = links.conns.iter().map(|conn| {
            let mut conn = conn.clone();
            async move { is_primary(&mut conn).await }
        });
        match tokio::time::timeout(self.operation_timeout, join_all(roles)).await {
            Ok(replies) if replies.iter().all(|r| matches!(r, Ok(true))) => {}
            _ => self.lost(
                links.id,
                "a barrier after a write got no answer from a primary",
            ),
        }
    }

    /// The primaries to track, and the slot map they come from (cluster).
    #[allow(clippy::type_complexity)]
    async fn primaries(
        &self,
    ) -> redis::RedisResult<(
        Vec<ConnectionInfo>,
        Option<BTreeSet<(i64, i64, String, i64)>>,
    )> {
        match &self.target {
            Target::Single(info) => Ok((vec![info.clone()], None)),
            Target::Cluster { seeds } => {
                let seed = seeds.first().ok_or_else(bad_slots)?;
                let slots = self.slots_from_any(seeds).await?;
                let masters: BTreeSet<(String, i64)> =
                    slots.iter().map(|(_, _, h, p)| (h.clone(), *p)).collect();
                let infos = masters
                    .into_iter()
                    .filter_map(|(host, port)| node_info(seed, host, port))
                    .collect();
                Ok((infos, Some(slots)))
            }
        }
    }

    /// `CLUSTER SLOTS` from the first of `seeds` to answer.
    async fn slots_from_any(
        &self,
        seeds: &[ConnectionInfo],
    ) -> redis::RedisResult<BTreeSet<(i64, i64, String, i64)>> {
        let mut asks: FuturesUnordered<_> = seeds
            .iter()
            .map(|seed| async move {
                let client = redis::Client::open(seed.clone())?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.operation_timeout));
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                cluster_slots(&mut conn).await
            })
            .collect();
        let mut last = None;
        while let Some(answer) = asks.next().await {
            match answer {
                Ok(slots) => return Ok(slots),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(bad_slots))
    }

    /// Makes a tracking connection to every primary, then starts serving.
    async fn establish(self: &Arc<Self>) -> redis::RedisResult<()> {
        let (infos, topology) = self.primaries().await?;
        if infos.is_empty() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "no primary to track (no slots assigned yet?)",
            )));
        }
        let link = self.next_link.fetch_add(1, Ordering::Relaxed);
        let dead = Arc::new(AtomicBool::new(false));
        let slots = topology
            .as_ref()
            .map(|topology| slot_routes(topology, &infos))
            .unwrap_or_default();
        let mut conns = Vec::with_capacity(infos.len());
        for info in infos {
            let redis = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            let client = redis::Client::open(info.set_redis_settings(redis))?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(self.operation_timeout))
                .set_push_sender(PushHandler {
                    tracker: Arc::downgrade(self),
                    link,
                    dead: dead.clone(),
                });
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            if matches!(self.target, Target::Single(_)) && !is_primary(&mut conn).await? {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "the server is a replica; waiting for a primary",
                )));
            }
            // Default (key) mode: the server remembers the keys this
            // connection reads and pushes their invalidation when another
            // client changes them. NOLOOP: not for writes sent on this
            // connection itself, which the store writes through (see
            // `crate::near_cache`).
            tracking_preconditions(&mut conn).await?;
            redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .arg("NOLOOP")
                .query_async::<()>(&mut conn)
                .await?;
            conns.push(conn);
        }
        let links = Arc::new(Links {
            id: link,
            dead: dead.clone(),
            conns,
            topology,
            slots,
        });
        // Nothing can be cached while not serving, but a lease from before
        // the loss must not complete into the new generation.
        self.cache.flush();
        let mut current = self
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A connection that closed before it was installed (its push was
        // ignored as a stale link's) must not start serving.
        if dead.load(Ordering::Acquire) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "a tracking connection closed while tracking was set up",
            )));
        }
        *current = Some(links);
        self.cache.start_serving();
        drop(current);
        tracing::debug!(target: "session_redis", link, "near cache tracking established");
        Ok(())
    }

    /// One heartbeat: every link answers, the single server is still a
    /// primary, the cluster's slot map is unchanged.
    async fn heartbeat(&self, links: &Links) {
        // Stamped before the checks go out: an answer covers only the
        // writes the server ran before it read them.
        let sent = self.cache.now_ms();
        let check = async {
            if links.dead.load(Ordering::Acquire) {
                return Err("a tracking connection closed");
            }
            let roles = links.conns.iter().map(|conn| {
                let mut conn = conn.clone();
                async move { is_primary(&mut conn).await }
            });
            let replies = join_all(roles).await;
            if !replies.iter().all(|r| matches!(r, Ok(true))) {
                return Err("a primary stopped answering or became a replica");
            }
            let tables = links.conns.iter().map(|conn| {
                let mut conn = conn.clone();
                async move { table_has_room(&mut conn).await }
            });
            for room in join_all(tables).await {
                match room {
                    Ok(true) => {}
                    Ok(false) => return Err(TABLE_FULL),
                    Err(_) => return Err("a primary did not answer INFO stats"),
                }
            }
            if let Some(known) = &links.topology {
                // Every linked primary must still see the same slot map.
                let views = links.conns.iter().map(|conn| {
                    let mut conn = conn.clone();
                    async move { cluster_slots(&mut conn).await }
                });
                for view in join_all(views).await {
                    match view {
                        Ok(now) if &now == known => {}
                        _ => return Err("the cluster's slot map changed"),
                    }
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.operation_timeout, check).await {
            Ok(Ok(())) => self.cache.heartbeat_ok(sent),
            Ok(Err(why)) => self.lost(links.id, why),
            Err(_) => self.lost(links.id, "the heartbeat timed out"),
        }
    }
}

/// The background task: (re)establish tracking, then heartbeat.
async fn run(weak: Weak<Tracker>) {
    let mut failures = 0u32;
    loop {
        let Some(tracker) = weak.upgrade() else {
            return;
        };
        let heartbeat = tracker.cache.config().heartbeat_interval();
        // Failed set-ups back off (a server without RESP3 or without the
        // right to run CLIENT never lets one succeed), up to 5 s.
        let pause = if failures == 0 {
            heartbeat
        } else {
            heartbeat
                .saturating_mul(1 << failures.min(8))
                .min(Duration::from_secs(5))
        };
        match tracker.current() {
            Some(links) => tracker.heartbeat(&links).await,
            None => match tracker.establish().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(50) {
                        tracing::warn!(target: "session_redis", error = %e, failures, "cannot establish near cache tracking; reads go to Redis meanwhile");
                    }
                }
            },
        }
        // Holding the tracker for one pause at most: a dropped store ends
        // the task within a heartbeat.
        tokio::select! {
            () = tracker.wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Why tracking stops when the server's tracking table fills up.
const TABLE_FULL: &str =
    "the server's tracking table is over half full (tracking-table-max-keys): \
     a key it forgets because of this instance's own command is not pushed to this instance \
     (NOLOOP), so the near cache stays off until it has room; raise the setting or set it to 0";

/// The value of the server setting `name`, `None` where `CONFIG` is
/// forbidden (some managed services) or the setting unknown.
async fn setting(conn: &mut MultiplexedConnection, name: &str) -> Option<String> {
    crate::connection::config_get(conn, name)
        .await
        .ok()
        .flatten()
}

/// Checks what key-mode tracking with `NOLOOP` needs of the server.
///
/// Redis skips a `NOLOOP` client's invalidations while that client's own
/// command is being processed, including those of keys the server drops
/// then for other reasons: keys evicted under `maxmemory`, and keys it
/// stops tracking when its tracking table is over its limit. So an evicting
/// server is refused, and tracking starts (and, checked by the heartbeat,
/// stays) only while the table is at most half full ([`table_has_room`]).
/// A server that forbids `CONFIG` is taken to have the defaults (no
/// eviction, a limit of 1,000,000 keys).
async fn tracking_preconditions(conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
    let maxmemory: u64 = setting(conn, "maxmemory")
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let policy = setting(conn, "maxmemory-policy").await.unwrap_or_default();
    if maxmemory > 0 && !policy.is_empty() && policy != "noeviction" {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "the near cache needs a server that does not evict keys (maxmemory-policy noeviction, \
             or no maxmemory): a key evicted during this instance's own command is not pushed to it",
        )));
    }
    if !table_has_room(conn).await? {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            TABLE_FULL,
        )));
    }
    Ok(())
}

/// Whether the server's tracking table (all clients' tracked keys) is at
/// most half of its `tracking-table-max-keys` (0: no limit).
async fn table_has_room(conn: &mut MultiplexedConnection) -> redis::RedisResult<bool> {
    let limit: u64 = setting(conn, "tracking-table-max-keys")
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    if limit == 0 {
        return Ok(true);
    }
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
    let tracked = info
        .lines()
        .find_map(|l| l.strip_prefix("tracking_total_keys:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Ok(tracked <= limit / 2)
}

async fn is_primary(conn: &mut MultiplexedConnection) -> redis::RedisResult<bool> {
    let role: Value = redis::cmd("ROLE").query_async(conn).await?;
    Ok(match role {
        Value::Array(items) => {
            matches!(items.first(), Some(Value::BulkString(r)) if r == b"master")
        }
        _ => false,
    })
}

/// `CLUSTER SLOTS` as (first slot, last slot, primary host, primary port).
async fn cluster_slots<C: ConnectionLike>(
    conn: &mut C,
) -> redis::RedisResult<BTreeSet<(i64, i64, String, i64)>> {
    let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut slots = BTreeSet::new();
    let Value::Array(ranges) = reply else {
        return Err(bad_slots());
    };
    for range in ranges {
        let Value::Array(range) = range else {
            return Err(bad_slots());
        };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(primary))) =
            (range.first(), range.get(1), range.get(2))
        else {
            return Err(bad_slots());
        };
        let host = match primary.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => return Err(bad_slots()),
        };
        let Some(Value::Int(port)) = primary.get(1) else {
            return Err(bad_slots());
        };
        slots.insert((*first, *last, host, *port));
    }
    Ok(slots)
}

/// The slot ranges of `topology` with the index in `infos` of the primary
/// serving each (ranges whose primary has no connection are left out, so
/// their keys are not cached).
fn slot_routes(
    topology: &BTreeSet<(i64, i64, String, i64)>,
    infos: &[ConnectionInfo],
) -> Vec<(u16, u16, usize)> {
    let mut routes: Vec<(u16, u16, usize)> = topology
        .iter()
        .filter_map(|(first, last, host, port)| {
            let index = infos.iter().position(|info| {
                matches!(info.addr(), ConnectionAddr::Tcp(h, p) | ConnectionAddr::TcpTls { host: h, port: p, .. }
                    if h == host && i64::from(*p) == *port)
            })?;
            Some((u16::try_from(*first).ok()?, u16::try_from(*last).ok()?, index))
        })
        .collect();
    routes.sort_unstable();
    routes
}

fn bad_slots() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Parse, "unexpected CLUSTER SLOTS reply"))
}

/// `seed`'s credentials and TLS settings, at `host:port`.
fn node_info(seed: &ConnectionInfo, host: String, port: i64) -> Option<ConnectionInfo> {
    let port = u16::try_from(port).ok()?;
    let addr = match seed.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    Some(seed.clone().set_addr(addr))
}

#[cfg(test)]
mod tests {
    use super::slot_of;

    #[test]
    fn slots_match_the_servers_cluster_keyslot() {
        // Each pair as `CLUSTER KEYSLOT` answers it.
        for (key, slot) in [
            ("foo", 12182),
            ("somekey", 11058),
            ("{user1000}.following", 3443),
            ("app:s:{abc123}", 4795),
            ("{}x", 10595),
            ("a{}b{c}", 7353),
            ("x{", 3596),
        ] {
            assert_eq!(slot_of(key.as_bytes()), slot, "{key}");
        }
    }
}
