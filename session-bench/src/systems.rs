//! What is measured: our `SessionManager` over each store, the raw-client
//! floor for each backend, tower-sessions' store for each backend, and the
//! login / logout-everywhere / per-user listing paths.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use serde_json::json;
use session_core::{SessionError, SessionId, SessionManager, SessionStore};
use sqlx::AssertSqlSafe;

use crate::workload::{Op, System};
use crate::BenchResult;

/// Server addresses, from the same variables as the tests.
#[derive(Debug, Clone)]
pub struct Servers {
    /// `REDIS_URL`.
    pub redis: String,
    /// `DATABASE_URL`.
    pub postgres: String,
    /// `MEMCACHED_URL` (`memcache://host:port`).
    pub memcached: String,
}

impl Servers {
    /// Reads the environment, with the local defaults.
    #[must_use]
    pub fn from_env() -> Self {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        Self {
            redis: var("REDIS_URL", "redis://127.0.0.1:6379"),
            postgres: var("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
            memcached: var("MEMCACHED_URL", "memcache://127.0.0.1:11211"),
        }
    }

    /// `host:port` of the Memcached server.
    #[must_use]
    pub fn memcached_addr(&self) -> String {
        let s = self.memcached.trim_start_matches("memcache://");
        s.split('?').next().unwrap_or(s).to_owned()
    }
}

/// The session body every system stores: the same fields and sizes for the
/// manager, the floors and the peers.
#[must_use]
pub fn session_body(payload: usize) -> serde_json::Value {
    json!({ "payload": "x".repeat(payload), "n": 0 })
}

/// The bytes a floor stores: what the manager serializes for the same body.
#[must_use]
pub fn floor_value(payload: usize) -> Bytes {
    Bytes::from(serde_json::to_vec(&json!({ "d": session_body(payload) })).expect("json"))
}

/// Runs `f(0..count)` on 32 tasks and returns the results in order.
pub async fn parallel<T, F, Fut>(count: usize, f: F) -> BenchResult<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = BenchResult<T>> + Send,
{
    let f = Arc::new(f);
    let workers = 32.min(count.max(1));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let f = f.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut i = w;
                while i < count {
                    out.push((i, f(i).await?));
                    i += workers;
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(out)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(count);
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, v)| v).collect())
}

// ------------------------------------------------------------------ ours

/// Our `SessionManager`, exactly as a web request uses it: load by ID, read
/// a field, on writes modify one field, commit.
pub struct Manager {
    manager: SessionManager,
    ids: Arc<Vec<SessionId>>,
}

impl Manager {
    /// Over `store` with the default policies.
    #[must_use]
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        Self::with_config(store, session_core::SessionConfig::default())
    }

    /// Over `store` with `config` (to isolate the cost of touches).
    #[must_use]
    pub fn with_config(store: Arc<dyn SessionStore>, config: session_core::SessionConfig) -> Self {
        Self {
            manager: SessionManager::builder_arc(store).config(config).build(),
            ids: Arc::new(Vec::new()),
        }
    }
}

async fn create_sessions(
    manager: &SessionManager,
    count: usize,
    payload: usize,
) -> BenchResult<Vec<SessionId>> {
    let manager = manager.clone();
    let body = Arc::new(session_body(payload));
    parallel(count, move |_| {
        let (manager, body) = (manager.clone(), body.clone());
        async move {
            let mut s = manager.start();
            s.insert("payload", &body["payload"])?;
            s.insert("n", &0u64)?;
            manager.commit(&mut s).await?;
            Ok(s.id().clone())
        }
    })
    .await
}

/// Loads every session once through `manager` (untimed): a running
/// service's near cache holds the sessions it serves, as tower-sessions'
/// caching store holds every session it created. Without a near cache this
/// is a read of each session and changes nothing.
async fn warm(manager: &SessionManager, ids: &Arc<Vec<SessionId>>) -> BenchResult<()> {
    let (manager, ids) = (manager.clone(), ids.clone());
    parallel(ids.len(), move |i| {
        let (manager, ids) = (manager.clone(), ids.clone());
        async move {
            manager.load(&ids[i]).await?.ok_or("session vanished")?;
            Ok(())
        }
    })
    .await?;
    Ok(())
}

#[async_trait]
impl System for Manager {
    async fn setup(&mut self, sessions: usize, payload: usize) -> BenchResult<()> {
        self.ids = Arc::new(create_sessions(&self.manager, sessions, payload).await?);
        warm(&self.manager, &self.ids).await
    }

    async fn op(&self, _worker: usize, op: Op) -> BenchResult<()> {
        let mut s = self
            .manager
            .load(&self.ids[op.session])
            .await?
            .ok_or("session vanished")?;
        let n: u64 = s.get("n")?.unwrap_or(0);
        if op.write {
            s.insert("n", &(n + 1))?;
        }
        self.manager.commit(&mut s).await?;
        Ok(())
    }
}

/// Two application instances: two managers over two stores on separate
/// connections (each with its own near cache, if any), requests spread
/// over both by worker, so a session written through one is read through
/// the other and invalidations really travel between them.
pub struct TwoInstances {
    instances: [Manager; 2],
}

impl TwoInstances {
    /// Over `a` and `b`, which must share one namespace.
    #[must_use]
    pub fn new(
        a: Arc<dyn SessionStore>,
        b: Arc<dyn SessionStore>,
        config: session_core::SessionConfig,
    ) -> Self {
        Self {
            instances: [
                Manager::with_config(a, config.clone()),
                Manager::with_config(b, config),
            ],
        }
    }
}

#[async_trait]
impl System for TwoInstances {
    async fn setup(&mut self, sessions: usize, payload: usize) -> BenchResult<()> {
        let ids = Arc::new(create_sessions(&self.instances[0].manager, sessions, payload).await?);
        for instance in &mut self.instances {
            instance.ids = ids.clone();
            warm(&instance.manager, &ids).await?;
        }
        Ok(())
    }

    async fn op(&self, worker: usize, op: Op) -> BenchResult<()> {
        self.instances[worker % 2].op(worker, op).await
    }
}

/// Login with rotation: load an anonymous session, log it in (new ID, old
/// one deleted, user index updated). About 10 sessions per user.
pub struct Login {
    manager: SessionManager,
    ids: Arc<Vec<RwLock<SessionId>>>,
}

impl Login {
    /// Over `store`.
    #[must_use]
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        Self {
            manager: SessionManager::builder_arc(store).build(),
            ids: Arc::new(Vec::new()),
        }
    }
}

#[async_trait]
impl System for Login {
    async fn setup(&mut self, sessions: usize, payload: usize) -> BenchResult<()> {
        let ids = create_sessions(&self.manager, sessions, payload).await?;
        self.ids = Arc::new(ids.into_iter().map(RwLock::new).collect());
        Ok(())
    }

    async fn op(&self, _worker: usize, op: Op) -> BenchResult<()> {
        let id = self.ids[op.session].read().expect("lock").clone();
        let mut s = match self.manager.load(&id).await? {
            Some(s) => s,
            None => self.manager.start(),
        };
        let user = format!("bench-user-{}", op.session / 10);
        match self.manager.login(&mut s, &user).await {
            // Another worker logged the same session in first: like a
            // browser whose cookie went stale, start over.
            Err(SessionError::SessionEnded) => {
                s = self.manager.start();
                self.manager.login(&mut s, &user).await?;
            }
            other => other?,
        }
        *self.ids[op.session].write().expect("lock") = s.id().clone();
        Ok(())
    }
}

/// Users with 10 sessions each; ops either list a user's sessions or log a
/// user out everywhere (each op a distinct user).
pub struct PerUser {
    manager: SessionManager,
    users: usize,
    logout: bool,
}

impl PerUser {
    /// `logout`: measure logout-everywhere, else the listing.
    #[must_use]
    pub fn new(store: Arc<dyn SessionStore>, logout: bool) -> Self {
        Self {
            manager: SessionManager::builder_arc(store).build(),
            users: 0,
            logout,
        }
    }

    fn user(i: usize) -> String {
        format!("bench-peruser-{i}")
    }
}

#[async_trait]
impl System for PerUser {
    async fn setup(&mut self, sessions: usize, payload: usize) -> BenchResult<()> {
        self.users = (sessions / 10).max(1);
        let manager = self.manager.clone();
        let body = Arc::new(session_body(payload));
        parallel(self.users * 10, move |i| {
            let (manager, body) = (manager.clone(), body.clone());
            async move {
                let mut s = manager.start();
                s.insert("payload", &body["payload"])?;
                manager.login(&mut s, &PerUser::user(i / 10)).await?;
                Ok(())
            }
        })
        .await?;
        Ok(())
    }

    async fn op(&self, _worker: usize, op: Op) -> BenchResult<()> {
        let user = Self::user(op.session % self.users);
        if self.logout {
            let n = self.manager.logout_user(&user).await?;
            if n != 10 {
                return Err(format!("logged out {n} sessions, expected 10").into());
            }
        } else {
            let n = self.manager.list_user_sessions(&user).await?.len();
            if n != 10 {
                return Err(format!("listed {n} sessions, expected 10").into());
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- floors

/// The memory floor: a sharded map of keys to bytes.
#[derive(Default)]
pub struct MemoryFloor {
    map: DashMap<usize, Bytes>,
    value: Bytes,
}

#[async_trait]
impl System for MemoryFloor {
    async fn setup(&mut self, sessions: usize, payload: usize) -> BenchResult<()> {
        self.value = floor_value(payload);
        for i in 0..sessions {
            self.map.insert(i, self.value.clone());
        }
        Ok(())
    }

    async fn op(&self, _worker: usize, op: Op) -> BenchResult<()> {
        let v = self
            .map
            .get(&op.session)
            .map(|v| v.clone())
            .ok_or("missing")?;
        if op.write {
            self.map.insert(op.session, v);
        }
        Ok(())
    }
}

/// How a Redis floor names its keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FloorKeys {
    /// `<prefix>:<n>`: as short as a key can usefully be (the default, and
    /// the floor).
    #[default]
    Short,
    /// `<prefix>:s:{<64 hex digits>}`: as long as the Redis store's session
    /// keys (the hex of a 256-bit hash of the session ID), to separate what
    /// key length costs from what the store's code costs.
    LikeTheStore,
}

impl FloorKeys {
    /// The key of session number `n` under `prefix`.
    #[must_use]
    pub fn key(self, prefix: &str, n: usize) -> String {
        match self {
            Self::Short => format!("{prefix}:{n}"),
            Self::LikeTheStore => format!("{prefix}:s:{{{n:064x}}}"),
        }
    }
}

/// Stores `value` under the keys of sessions `0` … `sessions - 1` for an
/// hour: the sessions a Redis floor starts from.
async fn seed_redis(
    conn: &redis::aio::ConnectionManager,
    prefix: &str,
    keys: FloorKeys,
    value: &Bytes,
    sessions: usize,
) -> BenchResult<()> {
    let (conn, prefix, value) = (conn.clone(), prefix.to_owned(), value.clone());
    parallel(sessions, move |i| {
        let (mut conn, key, value) = (conn.clone(), keys.key(&prefix, i), value.clone());
        async move {
            redis::cmd("SET")
                .arg(key)
                .arg(&value[..])
                .arg("EX")
                .arg(3600)
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        }
    })
    .await?;
    Ok(())
}

/// The Redis floor: redis-rs over one multiplexed connection, GET and on
/// writes SET EX.
pub struct RedisFloor {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    keys: FloorKeys,
    value: Bytes,
}

impl RedisFloor {
    /// Connects.
    ///
    /// # Errors
    ///
    /// When Redis does not answer.
    pub async fn connect(url: &str, prefix: &str) -> BenchResult<Self> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            conn: redis::aio::ConnectionManager::new(client).await?,
            prefix: prefix.to_owned(),
            keys: FloorKeys::Short,
            value: Bytes::new(),
        })
    }

    /// Names its keys as `keys` says (before `setup`).
    #[must_use]
    pub fn with_keys(mut self, keys: FloorKeys) -> Self {
        self.keys = keys;
        self
    }
}

#[async_trait]
impl System for RedisFloor {
    async fn setup(&mut self, sessions: usize, payload: usize) -> BenchResult<()> {
        self.value = floor_value(payload);
        seed_redis(&self.conn, &self.prefix, self.keys, &self.value, sessions).await
    }

    async fn op(&self, _worker: usize, op: Op) -> BenchResult<()> {
        let mut conn = self.conn.clone();
        let key = self.keys.key(&self.prefix, op.session);
        let v: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        let v = v.ok_or("missing")?;
        if op.write {
            redis::cmd("SET")
                .arg(&key)
                .arg(v)
                .arg("EX")
                .arg(3600)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(())
    }
}

/// The least a correct compare-and-set costs on Redis 7: the floor's `GET`,
/// and on writes one `EVALSHA` of a five-line script that compares an
/// 8-byte version at the head of the value and `SET`s only if it matches
/// (redis-rs, the same multiplexed connection). Redis 7 has no conditional
/// `SET` on a version; a script is the only single-round-trip way, and this
/// is its minimum. Not one of the floors: it separates what the
/// script costs from what the library adds.
pub struct RedisCasFloor {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    keys: FloorKeys,
    value: Bytes,
    script: redis::Script,
}

/// `KEYS[1]` session; `ARGV[1]` expected version (8 bytes), `ARGV[2]` new
/// value, `ARGV[3]` TTL in ms. 1 stored, 0 conflict.
const CAS_SCRIPT: &str = "\
if redis.call('GETRANGE', KEYS[1], 0, 7) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1";

impl RedisCasFloor {
    /// Connects.
    ///
    /// # Errors
    ///
    /// When Redis does not answer.
    pub async fn connect(url: &str, prefix: &str) -> BenchResult<Self> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            conn: redis::aio::ConnectionManager::new(client).await?,
            prefix: prefix.to_owned(),
            keys: FloorKeys::Short,
            value: Bytes::new(),
            script: redis::Script::new(CAS_SCRIPT),
        })
    }

    /// Names its keys as `keys` says (before `setup`).
    #[must_use]
    pub fn with_keys(mut self, keys: FloorKeys) -> Self {
        self.keys = keys;
        self
    }
}

#[async_trait]
impl System for RedisCasFloor {
    async fn setup(&mut self, sessions: usize, payload: usize) -> BenchResult<()> {
        let mut value = 0u64.to_be_bytes().to_vec();
        value.extend_from_slice(&floor_value(payload));
        self.value = Bytes::from(value);
        self.script.load_async(&mut self.conn.clone()).await?;
        seed_redis(&self.conn, &self.prefix, self.keys, &self.value, sessions).await
    }

    async fn op(&self, _worker: usize, op: Op) -> BenchResult<()> {
        let mut conn = self.conn.clone();
        let key = self.keys.key(&self.prefix, op.session);
        // A conflict (another task wrote the session since this one read
        // it) is answered as a correct client must: read again, try again.
        for _ in 0..8 {
            if self.attempt(&mut conn, &key, op.write).await? {
                return Ok(());
            }
        }
        Err("version conflict 8 times in a row".into())
    }
}

impl RedisCasFloor {
    /// One read and, for a write, one compare-and-set; `false` on a
    /// version conflict.
    async fn attempt(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        key: &str,
        write: bool,
    ) -> BenchResult<bool> {
        let v: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await?;
        let mut v = v.ok_or("missing")?;
        if write {
            let expected: [u8; 8] = v.get(..8).ok_or("short value")?.try_into()?;
            let next = u64::from_be_bytes(expected).wrapping_add(1).to_be_bytes();
            v[..8].copy_from_slice(&next);
            let stored: i64 = redis::cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(1)
                .arg(key)
                .arg(&expected[..])
                .arg(v)
                .arg(3_600_000)
                .query_async(conn)
                .await?;
            return Ok(stored == 1);
        }
        Ok(true)
    }
}

/// The PostgreSQL floor: sqlx, SELECT by key and on writes an UPSERT, on
/// an ordinary (logged, crash-safe) table like the stores' own: an
/// `UNLOGGED` floor would skip the WAL flush that every durable store pays.
pub struct PostgresFloor {
    pool: sqlx::PgPool,
    table: String,
    select: Arc<str>,
    upsert: Arc<str>,
    value: Bytes,
}

impl PostgresFloor {
    /// Connects with a pool of `size` connections and creates `table`.
    ///
    /// # Errors
    ///
    /// When PostgreSQL does not answer.
    pub async fn connect(url: &str, table: &str, size: u32) -> BenchResult<Self> {
        // No liveness ping before each checkout (sqlx's default sends
        // one): the floor does the minimum round trips.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(size)
            .test_before_acquire(false)
            .connect(url)
            .await?;
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {table} (key text PRIMARY KEY, data bytea NOT NULL, expires_at timestamptz NOT NULL)"
        )))
        .execute(&pool)
        .await?;
        Ok(Self {
            select: format!("SELECT data FROM {table} WHERE key = $1 AND expires_at > now()").into(),
            upsert: format!(
                "INSERT INTO {table} (key, data, expires_at) VALUES ($1, $2, now() + interval '1 hour') \
                 ON CONFLICT (key) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at"
            )
            .into(),
            pool,
            table: table.to_owned(),
            value: Bytes::new(),
        })
    }

    /// Drops the table.
    ///
    /// # Errors
    ///
    /// When the statement fails.
    pub async fn drop_table(&self) -> BenchResult<()> {
        sqlx::query(AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {}",
            self.table
        )))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl System for PostgresFloor {
    async fn setup(&mut self, sessions: usize, payload: usize) -> BenchResult<()> {
        self.value = floor_value(payload);
        let (pool, upsert, value) = (self.pool.clone(), self.upsert.clone(), self.value.clone());
        parallel(sessions, move |i| {
            let (pool, upsert, value) = (pool.clone(), upsert.clone(), value.clone());
            async move {
                sqlx::query(AssertSqlSafe(upsert))
                    .bind(i.to_string())
                    .bind(&value[..])
                    .execute(&pool)
                    .await?;
                Ok(())
            }
        })
        .await?;
        Ok(())
    }

    async fn op(&self, _worker: usize, op: Op) -> BenchResult<()> {
        let key = op.session.to_string();
        let row: Option<(Vec<u8>,)> = sqlx::query_as(AssertSqlSafe(self.select.clone()))
            .bind(&key)
            .fetch_optional(&self.pool)
            .await?;
        let (v,) = row.ok_or("missing")?;
        if op.write {
            sqlx::query(AssertSqlSafe(self.upsert.clone()))
                .bind(&key)
                .bind(v)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }
}

/// The Memcached floor: async-memcached, one connection per worker, get and
/// on writes set.
pub struct MemcachedFloor {
    clients: Vec<tokio::sync::Mutex<async_memcached::Client>>,
    prefix: String,
    value: Bytes,
}

impl MemcachedFloor {
    /// Opens `workers` connections.
    ///
    /// # Errors
    ///
    /// When Memcached does not answer.
    pub async fn connect(addr: &str, prefix: &str, workers: usize) -> BenchResult<Self> {
        let mut clients = Vec::with_capacity(workers);
        for _ in 0..workers {
            clients.push(tokio::sync::Mutex::new(
                async_memcached::Client::new(format!("tcp://{addr}")).await?,
            ));
        }
        Ok(Self {
            clients,
            prefix: prefix.to_owned(),
            value: Bytes::new(),
        })
    }
}

#[async_trait]
impl System for MemcachedFloor {
    async fn setup(&mut self, sessions: usize, payload: usize) -> BenchResult<()> {
        use async_memcached::AsciiProtocol as _;
        self.value = floor_value(payload);
        let mut c = self.clients[0].lock().await;
        for i in 0..sessions {
            c.set(
                format!("{}:{i}", self.prefix),
                &self.value[..],
                Some(3600),
                None,
            )
            .await?;
        }
        Ok(())
    }

    async fn op(&self, worker: usize, op: Op) -> BenchResult<()> {
        use async_memcached::AsciiProtocol as _;
        let key = format!("{}:{}", self.prefix, op.session);
        let mut c = self.clients[worker % self.clients.len()].lock().await;
        let v = c.get(&key).await?.and_then(|v| v.data).ok_or("missing")?;
        if op.write {
            c.set(&key, &v[..], Some(3600), None).await?;
        }
        Ok(())
    }
}

/// What the `memcache` crate's Tokio meta client costs on its own: the
/// same commands `MemcachedStore` sends per request (`mg` with the CAS
/// token, and on writes a CAS-guarded `ms`), on one pooled client with the
/// store's default pool settings, and nothing else. Not one of the
/// issue's floors: it separates what the client crate costs from what the
/// store adds on top of it.
pub struct MemcacheCrateFloor {
    client: session_memcached::memcache::exp::AsyncMetaClient,
    prefix: String,
    value: Bytes,
}

impl MemcacheCrateFloor {
    /// Builds the client (connections are dialed on first use), keeping at
    /// most `max_idle` idle connections and `max_connections` in all.
    ///
    /// # Errors
    ///
    /// When the address does not resolve.
    pub async fn connect(
        addr: &str,
        prefix: &str,
        max_idle: usize,
        max_connections: usize,
    ) -> BenchResult<Self> {
        use session_memcached::memcache::exp::MetaClient;
        let client = MetaClient::builder()
            .io_timeout(Some(std::time::Duration::from_secs(1)))
            .connect_timeout(Some(std::time::Duration::from_secs(1)))
            .max_idle(max_idle)
            .max_connections(Some(max_connections))
            .connect_multiple_async([addr])
            .await?;
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
            value: Bytes::new(),
        })
    }
}

#[async_trait]
impl System for MemcacheCrateFloor {
    async fn setup(&mut self, sessions: usize, payload: usize) -> BenchResult<()> {
        self.value = floor_value(payload);
        for i in 0..sessions {
            self.client
                .set(format!("{}:{i}", self.prefix), &self.value[..])
                .ttl_raw(3600)
                .send()
                .await?;
        }
        Ok(())
    }

    async fn op(&self, _worker: usize, op: Op) -> BenchResult<()> {
        use session_memcached::memcache::exp::Meta;
        let key = format!("{}:{}", self.prefix, op.session);
        // A conflict is answered as the store answers it: read again.
        for _ in 0..8 {
            let got = self.client.get(&key).meta(Meta::NONE.cas()).send().await?;
            let value = got.value.as_deref().ok_or("missing")?;
            if !op.write {
                return Ok(());
            }
            let cas = got.item.cas.ok_or("no cas token")?;
            let stored = self
                .client
                .set(&key, value)
                .ttl_raw(3600)
                .compare_cas(cas)
                .send()
                .await?;
            if stored.applied() {
                return Ok(());
            }
        }
        Err("cas conflict 8 times in a row".into())
    }
}

// ----------------------------------------------------------------- peers

macro_rules! tower_sessions_peer {
    ($(#[$doc:meta])* $name:ident, $core:ident) => {
        $(#[$doc])*
        pub struct $name<S> {
            store: S,
            ids: Arc<Vec<$core::session::Id>>,
        }

        impl<S> $name<S> {
            /// Wraps a tower-sessions store.
            pub fn new(store: S) -> Self {
                Self { store, ids: Arc::new(Vec::new()) }
            }
        }

        #[async_trait]
        impl<S: $core::SessionStore + Clone> System for $name<S> {
            async fn setup(&mut self, sessions: usize, payload: usize) -> BenchResult<()> {
                let store = self.store.clone();
                let body = Arc::new(session_body(payload));
                let ids = parallel(sessions, move |_| {
                    let (store, body) = (store.clone(), body.clone());
                    async move {
                        let mut record = $core::session::Record {
                            id: $core::session::Id::default(),
                            data: body
                                .as_object()
                                .expect("object")
                                .iter()
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect(),
                            expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
                        };
                        store.create(&mut record).await.map_err(|e| e.to_string())?;
                        Ok(record.id)
                    }
                })
                .await?;
                self.ids = Arc::new(ids);
                Ok(())
            }

            async fn op(&self, _worker: usize, op: Op) -> BenchResult<()> {
                let mut record = self
                    .store
                    .load(&self.ids[op.session])
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("session vanished")?;
                let n = record.data.get("n").and_then(serde_json::Value::as_u64).unwrap_or(0);
                if op.write {
                    record.data.insert("n".to_owned(), json!(n + 1));
                    record.expiry_date = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
                    self.store.save(&record).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        }
    };
}

tower_sessions_peer!(
    /// A tower-sessions 0.15 store (its `MemoryStore`) through its trait.
    TowerSessions,
    tower_sessions
);

tower_sessions_peer!(
    /// A tower-sessions-core 0.14 store (moka, redis, sqlx stores) through its
    /// trait.
    TowerSessions014,
    tower_sessions_core_014
);

// ------------------------------------------------------------ factories

/// Our store for `backend` in namespace `ns`.
///
/// # Errors
///
/// When the backend's server does not answer, or the backend is unknown.
pub async fn our_store(
    backend: &str,
    servers: &Servers,
    ns: &str,
) -> BenchResult<Arc<dyn SessionStore>> {
    Ok(match backend {
        "memory" => Arc::new(session_core::MemoryStore::new()),
        "redis" => Arc::new(
            session_redis::RedisStore::builder()
                .prefix(ns)
                .connect(&servers.redis)
                .await?,
        ),
        // Sized like the Moka cache of tower-sessions' caching store
        // (2,000,000 entries): every session of the run fits.
        "redis-near-cache" => Arc::new(
            session_redis::RedisStore::builder()
                .prefix(ns)
                .near_cache(
                    session_redis::NearCache::new()
                        .max_entries(2_000_000)
                        .max_bytes(1 << 30),
                )
                .connect(&servers.redis)
                .await?,
        ),
        "postgres" => {
            let store = session_postgres::PostgresStore::builder()
                .schema("session_bench")
                .table(ns)
                .max_connections(10)
                .connect(&servers.postgres)
                .await?;
            store.migrate().await?;
            Arc::new(store)
        }
        // The default transport (the builder's): the Tokio client.
        "memcached" => {
            let config = session_memcached::MemcachedConfig::new([servers.memcached.as_str()])?
                .with_namespace(ns)?;
            Arc::new(session_memcached::MemcachedStore::new_async(config).await?)
        }
        "memcached-blocking" => {
            let config = session_memcached::MemcachedConfig::new([servers.memcached.as_str()])?
                .with_namespace(ns)?;
            Arc::new(session_memcached::MemcachedStore::new_blocking(config)?)
        }
        other => return Err(format!("unknown backend {other}").into()),
    })
}

/// Creates the schema the PostgreSQL systems use, after dropping it with
/// every table of earlier runs.
///
/// # Errors
///
/// When PostgreSQL does not answer.
pub async fn reset_postgres_schema(servers: &Servers) -> BenchResult<()> {
    let pool = sqlx::PgPool::connect(&servers.postgres).await?;
    sqlx::query("DROP SCHEMA IF EXISTS session_bench CASCADE")
        .execute(&pool)
        .await?;
    sqlx::query("CREATE SCHEMA session_bench")
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

/// tower-sessions' stores for `backend`, ready to set up.
///
/// # Errors
///
/// When the backend's server does not answer.
pub async fn peers(
    backend: &str,
    servers: &Servers,
    ns: &str,
) -> BenchResult<Vec<(String, Box<dyn System>)>> {
    let mut out: Vec<(String, Box<dyn System>)> = Vec::new();
    match backend {
        "memory" => {
            out.push((
                "tower-sessions MemoryStore".into(),
                Box::new(TowerSessions::new(tower_sessions::MemoryStore::default())),
            ));
            out.push((
                "tower-sessions MokaStore".into(),
                Box::new(TowerSessions014::new(
                    tower_sessions_moka_store::MokaStore::new(Some(2_000_000)),
                )),
            ));
        }
        "redis" => {
            use fred::prelude::{ClientLike, Config, Pool};
            let pool = Pool::new(Config::from_url(&servers.redis)?, None, None, None, 1)?;
            pool.init().await?;
            out.push((
                "tower-sessions RedisStore".into(),
                Box::new(TowerSessions014::new(
                    tower_sessions_redis_store::RedisStore::new(pool.clone()),
                )),
            ));
            out.push((
                "tower-sessions Moka+RedisStore".into(),
                Box::new(TowerSessions014::new(
                    tower_sessions_core_014::CachingSessionStore::new(
                        tower_sessions_moka_store::MokaStore::new(Some(2_000_000)),
                        tower_sessions_redis_store::RedisStore::new(pool),
                    ),
                )),
            ));
        }
        "postgres" => {
            let pool = sqlx08::postgres::PgPoolOptions::new()
                .max_connections(10)
                .connect(&servers.postgres)
                .await?;
            let store = tower_sessions_sqlx_store::PostgresStore::new(pool)
                .with_schema_name("session_bench")
                .and_then(|s| s.with_table_name(ns))
                .map_err(|e| e.to_string())?;
            store.migrate().await?;
            out.push((
                "tower-sessions PostgresStore".into(),
                Box::new(TowerSessions014::new(store)),
            ));
        }
        _ => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::FloorKeys;
    use session_core::SessionId;
    use session_redis::keys::KeyPrefix;

    #[test]
    fn store_shaped_floor_keys_are_as_long_as_the_stores_session_keys() {
        let prefix = KeyPrefix::new("bench").unwrap();
        let key = session_core::KeyDeriver::default().derive(&SessionId::generate());
        let store = prefix.session_key(&key);
        let floor = FloorKeys::LikeTheStore.key("bench", 42);
        assert_eq!(
            floor.len(),
            store.len(),
            "{floor} against the store's shape"
        );
        assert!(floor.starts_with("bench:s:{") && floor.ends_with('}'));
        assert_eq!(FloorKeys::Short.key("bench", 42), "bench:42");
    }
}
