//! `EncryptedStore` over each real backend: the whole conformance suite, the
//! fault scenarios (through a fault proxy in front of each server), and a
//! raw read of the backend that finds neither the plaintext nor the user.
//! The suite runs over Redis with its near cache on as well.
//!
//! Servers come from `REDIS_URL`, `DATABASE_URL` and `MEMCACHED_URL` (the
//! defaults are the local ones `scripts/services.sh` starts); a missing
//! server fails the test with instructions.

use std::sync::Arc;
use std::time::Duration;

use session_core::conformance::faults::FaultTarget;
use session_core::redact::redact_url;

use session_core::{SessionManager, SessionStore};
use session_encrypted::{EncryptedStore, EncryptionKey, KeyRing};
use session_memcached::{MemcachedConfig, MemcachedStore};
use session_postgres::PostgresStore;
use session_redis::RedisStore;
use session_test_support::servers;

fn ring() -> KeyRing {
    KeyRing::new(1, EncryptionKey::generate())
}

async fn redis(namespace: &str) -> RedisStore {
    redis_at(&servers::redis_url(), namespace, None).await
}

/// A Redis store on `url` (the test server, or a fault proxy in front of
/// it) with an operation and connect timeout of `timeout`.
async fn redis_at(url: &str, namespace: &str, timeout: Option<Duration>) -> RedisStore {
    let mut builder = RedisStore::builder().namespace(format!("enc_{namespace}"));
    if let Some(t) = timeout {
        builder = builder.operation_timeout(t).connect_timeout(t);
    }
    builder
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("no Redis at {}: {e}", redact_url(url)))
}

const PG_SCHEMA: &str = "session_encrypted_test";

async fn postgres(namespace: &str) -> PostgresStore {
    postgres_at(&servers::postgres_url(), namespace, None).await
}

/// A PostgreSQL store on `url` (the test server, or a fault proxy in front
/// of it) with acquire, connect and operation timeouts of `timeout`.
async fn postgres_at(url: &str, namespace: &str, timeout: Option<Duration>) -> PostgresStore {
    let url = url.to_owned();
    session_test_support::postgres::fresh_schema(&url, PG_SCHEMA).await;
    let mut builder = PostgresStore::builder()
        .schema(PG_SCHEMA)
        .table(namespace)
        .max_connections(4);
    if let Some(t) = timeout {
        builder = builder
            .acquire_timeout(t)
            .connect_timeout(t)
            .operation_timeout(t);
    }
    let store = builder
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {}: {e}", redact_url(&url)));
    store.migrate().await.expect("migrate");
    store
}

/// A Memcached store on `url` (a fault proxy in front of the test server)
/// with an operation and connect timeout of `timeout`.
async fn memcached_at(url: &str, namespace: &str, timeout: Duration) -> MemcachedStore {
    MemcachedStore::builder()
        .namespace(format!("enc_{namespace}"))
        .operation_timeout(timeout)
        .connect_timeout(timeout)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("no Memcached at {}: {e}", redact_url(url)))
}

fn memcached(namespace: &str) -> MemcachedStore {
    let url = servers::memcached_url();
    let config = MemcachedConfig::new([url.as_str()])
        .and_then(|c| c.with_namespace(&format!("enc_{namespace}")))
        .unwrap_or_else(|e| panic!("bad MEMCACHED_URL {url}: {e}"));
    MemcachedStore::new(config).unwrap_or_else(|e| panic!("no Memcached at {url}: {e}"))
}

mod over_redis {
    session_core::conformance_suite!(|ns: String| async move {
        super::EncryptedStore::new(super::redis(&ns).await, super::ring())
    });
    session_core::fault_scenarios!(
        super::servers::redis_url(),
        |t: super::FaultTarget| async move {
            let inner = super::redis_at(t.url(), t.namespace(), Some(t.timeout())).await;
            super::EncryptedStore::new(inner, super::ring())
        }
    );
}

/// With the near cache on, the store `EncryptedStore` wraps serves loads
/// from memory: the suite's lifecycle and racing cases run over it too.
mod over_near_cached_redis {
    session_core::conformance_suite!(|ns: String| async move {
        let url = super::servers::redis_url();
        let inner = super::RedisStore::builder()
            .namespace(format!("enc_near_{ns}"))
            .near_cache(session_redis::NearCache::new())
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("no Redis at {}: {e}", super::redact_url(&url)));
        super::EncryptedStore::new(inner, super::ring())
    });
}

mod over_postgres {
    session_core::conformance_suite!(|ns: String| async move {
        super::EncryptedStore::new(super::postgres(&ns).await, super::ring())
    });
    session_core::fault_scenarios!(
        super::servers::postgres_url(),
        |t: super::FaultTarget| async move {
            let inner = super::postgres_at(t.url(), t.namespace(), Some(t.timeout())).await;
            super::EncryptedStore::new(inner, super::ring())
        }
    );
}

mod over_memcached {
    // One call at a time in the model-based case, as for Memcached alone.
    session_core::conformance_suite!(
        |ns: String| async move { super::EncryptedStore::new(super::memcached(&ns), super::ring()) },
        model = sequential
    );
    session_core::fault_scenarios!(
        super::servers::memcached_url(),
        |t: super::FaultTarget| async move {
            let inner = super::memcached_at(t.url(), t.namespace(), t.timeout()).await;
            super::EncryptedStore::new(inner, super::ring())
        }
    );
}

const USER: &str = "grace.hopper@example.com";
const SECRET: &str = "launch-code-8675309";

/// Logs a user in through an encrypted manager over `inner` and stores the
/// secret.
async fn write_secret<S: SessionStore + Clone>(inner: &S) -> session_core::Session {
    let manager =
        SessionManager::builder_arc(Arc::new(EncryptedStore::new(inner.clone(), ring()))).build();
    let mut s = manager.start();
    manager.login(&mut s, USER).await.unwrap();
    s.insert("secret", SECRET).unwrap();
    manager.commit(&mut s).await.unwrap();
    s
}

fn assert_clean(what: &str, blobs: &[Vec<u8>]) {
    assert!(!blobs.is_empty(), "{what}: read nothing back");
    for needle in [SECRET.as_bytes(), USER.as_bytes(), b"grace"] {
        for b in blobs {
            assert!(
                !b.windows(needle.len()).any(|w| w == needle),
                "{what}: found {:?} in the raw backend",
                String::from_utf8_lossy(needle)
            );
        }
    }
}

#[tokio::test]
async fn raw_redis_holds_neither_plaintext_nor_user() {
    let store = redis(&format!("rawread{}", std::process::id())).await;
    write_secret(&store).await;
    let client = redis::Client::open(servers::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{}*", store.prefix());
    // SCAN, not KEYS: the server may hold millions of other keys.
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut blobs: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
    for k in &keys {
        // DUMP serializes any type (strings, sorted sets) with its content.
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        blobs.push(dump);
    }
    assert!(
        keys.len() >= 2,
        "expected a session and an index key, got {keys:?}"
    );
    assert_clean("redis", &blobs);
}

#[tokio::test]
async fn raw_postgres_holds_neither_plaintext_nor_user() {
    let store = postgres("rawread").await;
    write_secret(&store).await;
    let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT t::text FROM {} t",
        store.table().qualified()
    )))
    .fetch_all(store.pool())
    .await
    .unwrap();
    let mut blobs: Vec<Vec<u8>> = rows.into_iter().map(|(r,)| r.into_bytes()).collect();
    let data: Vec<(Vec<u8>,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT data FROM {}",
        store.table().qualified()
    )))
    .fetch_all(store.pool())
    .await
    .unwrap();
    blobs.extend(data.into_iter().map(|(d,)| d));
    assert_clean("postgres", &blobs);
}

#[tokio::test]
async fn raw_memcached_holds_neither_plaintext_nor_user() {
    let store = memcached("rawread");
    let s = write_secret(&store).await;
    // The inner store returns exactly what Memcached holds for the session.
    let raw = store.load(s.storage_key()).await.unwrap().expect("stored");
    let mut blobs = vec![raw.data.to_vec(), raw.encode()];
    let tag = raw.user_id.clone().expect("indexed under a tag");
    blobs.push(tag.clone().into_bytes());
    assert_eq!(
        store.list_user_sessions(&tag).await.unwrap().len(),
        1,
        "index lives under the tag"
    );
    assert!(
        store.list_user_sessions(USER).await.unwrap().is_empty(),
        "index under the real user id"
    );
    assert_clean("memcached", &blobs);
}

async fn redis_cluster(namespace: &str) -> RedisStore {
    let urls = servers::redis_cluster_urls();
    RedisStore::builder()
        .prefix(format!("enc_{namespace}"))
        .connect_cluster(urls)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test Redis Cluster failed: {e}"))
}

mod over_redis_cluster {
    session_core::conformance_suite!(
        |ns: String| async move {
            super::EncryptedStore::new(super::redis_cluster(&ns).await, super::ring())
        },
        lifecycle = ordered
    );
}

/// The key lifecycle, through the manager, over `inner`: add a key, let
/// sessions move to it (on load and on write, with racing requests), retire
/// the old key, and end what was never rewritten as "no session".
mod key_rotation {
    use std::sync::Arc;

    use session_core::{Session, SessionManager, SessionStore, StorageKey};
    use session_encrypted::{EncryptedStore, EncryptionKey, KeyRing};

    /// Concurrent requests on one session right after the rotation.
    const RACERS: u64 = 24;

    struct Keys {
        k1: String,
        k2: String,
        index: String,
    }

    impl Keys {
        fn new() -> Self {
            let b64 = |k: EncryptionKey| k.to_base64().as_str().to_owned();
            Self {
                k1: b64(EncryptionKey::generate()),
                k2: b64(EncryptionKey::generate()),
                index: b64(EncryptionKey::generate()),
            }
        }
    }

    fn manager<S: SessionStore + Clone>(inner: &S, spec: &str, migrate: bool) -> SessionManager {
        let ring = KeyRing::parse(spec).expect("valid key ring");
        let store = EncryptedStore::new(inner.clone(), ring).migrate_on_load(migrate);
        SessionManager::builder_arc(Arc::new(store))
            .key_secret(b"key-rotation-test")
            .build()
    }

    /// The id of the key the stored record of `key` was written under.
    async fn stored_key_id<S: SessionStore>(inner: &S, key: &StorageKey) -> u16 {
        let raw = inner
            .load(key)
            .await
            .expect("inner store answers")
            .expect("record stored");
        u16::from_be_bytes([raw.data[1], raw.data[2]])
    }

    async fn login(m: &SessionManager, user: &str, value: &str) -> Session {
        let mut s = m.start();
        m.login(&mut s, user).await.expect("login");
        s.insert("value", value).unwrap();
        m.commit(&mut s).await.expect("commit");
        s
    }

    async fn reload(m: &SessionManager, s: &Session) -> Option<Session> {
        m.load(s.id())
            .await
            .expect("a session under a retired key loads as no session, never an error")
    }

    pub(super) async fn run<S: SessionStore + Clone>(inner: S, tag: &str) {
        let keys = Keys::new();
        let user = format!("rotating-{tag}-{}", std::process::id());
        let ring1 = format!("1:{}", keys.k1);
        let ring2 = format!("2:{},1:{}", keys.k2, keys.k1);
        let retired = format!("2:{},index:1:{}", keys.k2, keys.k1);

        // Before: key 1 only.
        let m1 = manager(&inner, &ring1, true);
        let mut active = login(&m1, &user, "active").await;
        let token = m1.issue_token(&mut active, "transfer");
        m1.commit(&mut active).await.unwrap();
        let idle = login(&m1, &user, "idle").await;
        let mut racer = login(&m1, &user, "racer").await;
        racer.insert("n", &0u64).unwrap();
        m1.commit(&mut racer).await.unwrap();
        let mut anon = m1.start();
        anon.insert("cart", "3 books").unwrap();
        m1.commit(&mut anon).await.unwrap();
        let mut anon_unread = m1.start();
        anon_unread.insert("cart", "never read again").unwrap();
        m1.commit(&mut anon_unread).await.unwrap();
        assert_eq!(stored_key_id(&inner, active.storage_key()).await, 1);

        // Add key 2: everything keeps working, reads and writes, and a load
        // moves the session to key 2 at once.
        let m2 = manager(&inner, &ring2, true);
        let mut a = reload(&m2, &active)
            .await
            .expect("readable after adding a key");
        assert_eq!(a.get::<String>("value").unwrap().as_deref(), Some("active"));
        assert_eq!(
            stored_key_id(&inner, active.storage_key()).await,
            2,
            "{tag}: a load re-encrypts under the new primary"
        );
        a.insert("value", "written after rotation").unwrap();
        m2.commit(&mut a)
            .await
            .unwrap_or_else(|e| panic!("{tag}: a write after adding a key failed: {e}"));
        assert!(
            m2.consume_token(&mut a, "transfer", token.expose())
                .await
                .unwrap()
                .is_accepted(),
            "{tag}: a token issued before the rotation is accepted once"
        );
        assert!(!m2
            .consume_token(&mut a, "transfer", token.expose())
            .await
            .unwrap()
            .is_accepted());

        // Without migration on load, a write moves the session.
        let m2_read_only = manager(&inner, &ring2, false);
        let mut b = reload(&m2_read_only, &anon)
            .await
            .expect("anonymous readable");
        assert_eq!(stored_key_id(&inner, anon.storage_key()).await, 1);
        b.insert("cart", "4 books").unwrap();
        m2_read_only.commit(&mut b).await.unwrap();
        assert_eq!(stored_key_id(&inner, anon.storage_key()).await, 2);

        // Racing requests on a pre-rotation session, on two instances (one
        // migrating on load, one not): no update is lost.
        let instances = [m2.clone(), m2_read_only.clone()];
        let mut tasks = Vec::new();
        for i in 0..RACERS {
            let m = instances[(i % 2) as usize].clone();
            let id = racer.id().clone();
            tasks.push(tokio::spawn(async move {
                let mut s = m.load(&id).await.unwrap().expect("racer session live");
                m.update_value(&mut s, "n", |n: Option<u64>| Some(n.unwrap_or(0) + 1))
                    .await
                    .expect("update under racing requests");
            }));
        }
        for t in tasks {
            t.await.expect("racing request panicked");
        }
        let r = reload(&m2, &racer).await.expect("racer live");
        assert_eq!(
            r.get::<u64>("n").unwrap(),
            Some(RACERS),
            "{tag}: lost updates"
        );
        assert_eq!(stored_key_id(&inner, racer.storage_key()).await, 2);

        // The user's index holds every session, whichever key wrote it.
        let fresh = login(&m2, &user, "fresh").await;
        assert_eq!(m2.list_user_sessions(&user).await.unwrap().len(), 4);

        // Retire key 1: what was rewritten keeps working, the rest is gone.
        let m3 = manager(&inner, &retired, true);
        let mut a = reload(&m3, &active)
            .await
            .expect("rewritten session survives");
        assert_eq!(
            a.get::<String>("value").unwrap().as_deref(),
            Some("written after rotation")
        );
        a.insert("value", "after retirement").unwrap();
        m3.commit(&mut a).await.expect("write after retirement");
        assert!(
            reload(&m3, &anon).await.is_some(),
            "{tag}: rewritten anonymous session"
        );
        assert!(reload(&m3, &fresh).await.is_some());
        assert!(
            reload(&m3, &idle).await.is_none(),
            "{tag}: never rewritten: no session"
        );
        assert!(reload(&m3, &anon_unread).await.is_none());
        // "Log out everywhere" still finds every session of the user.
        assert_eq!(m3.logout_everywhere(&mut a).await.unwrap(), 4);
        assert!(reload(&m3, &fresh).await.is_none());
        assert!(reload(&m2, &racer).await.is_none());
    }

    /// With a dedicated index key, retiring an encryption key is just
    /// leaving it out of the ring.
    pub(super) async fn run_dedicated_index<S: SessionStore + Clone>(inner: S, tag: &str) {
        let keys = Keys::new();
        let user = format!("indexed-{tag}-{}", std::process::id());
        let m1 = manager(
            &inner,
            &format!("index:0:{},1:{}", keys.index, keys.k1),
            true,
        );
        let s = login(&m1, &user, "v").await;
        let m2 = manager(
            &inner,
            &format!("index:0:{},2:{},1:{}", keys.index, keys.k2, keys.k1),
            true,
        );
        let mut s2 = reload(&m2, &s).await.expect("readable");
        s2.insert("value", "w").unwrap();
        m2.commit(&mut s2).await.expect("write");
        let m3 = manager(
            &inner,
            &format!("index:0:{},2:{}", keys.index, keys.k2),
            true,
        );
        let mut s3 = reload(&m3, &s)
            .await
            .expect("{tag}: rewritten session survives");
        assert_eq!(m3.list_user_sessions(&user).await.unwrap().len(), 1);
        assert_eq!(m3.logout_everywhere(&mut s3).await.unwrap(), 1);

        // A ring whose index key changed ends the old tags cleanly.
        let s = login(&m3, &user, "v").await;
        let other_index = manager(&inner, &format!("2:{}", keys.k2), true);
        assert!(reload(&other_index, &s).await.is_none());
    }
}

#[tokio::test]
async fn key_rotation_over_memory() {
    let inner = session_core::MemoryStore::new();
    key_rotation::run(inner.clone(), "memory").await;
    key_rotation::run_dedicated_index(inner, "memory").await;
}

#[tokio::test]
async fn key_rotation_over_redis() {
    let inner = redis(&format!("rotation{}", std::process::id())).await;
    key_rotation::run(inner.clone(), "redis").await;
    key_rotation::run_dedicated_index(inner, "redis").await;
}

#[tokio::test]
async fn key_rotation_over_redis_cluster() {
    let inner = redis_cluster(&format!("rotation{}", std::process::id())).await;
    key_rotation::run(inner.clone(), "redis cluster").await;
    key_rotation::run_dedicated_index(inner, "redis cluster").await;
}

#[tokio::test]
async fn key_rotation_over_postgres() {
    let inner = postgres("rotation").await;
    key_rotation::run(inner.clone(), "postgres").await;
    key_rotation::run_dedicated_index(inner, "postgres").await;
}

#[tokio::test]
async fn key_rotation_over_memcached() {
    let inner = memcached(&format!("rotation{}", std::process::id()));
    key_rotation::run(inner.clone(), "memcached").await;
    key_rotation::run_dedicated_index(inner, "memcached").await;
}
