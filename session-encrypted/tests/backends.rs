//! `EncryptedStore` over each real backend: the whole conformance suite, and
//! a raw read of the backend that finds neither the plaintext nor the user.
//!
//! Servers come from `REDIS_URL`, `DATABASE_URL` and `MEMCACHED_URL` (the
//! defaults are the local ones `scripts/services.sh` starts); a missing
//! server fails the test with instructions.

use std::sync::Arc;

use session_core::{SessionManager, SessionStore};
use session_encrypted::{EncryptedStore, EncryptionKey, KeyRing};
use session_memcached::{MemcachedConfig, MemcachedStore};
use session_postgres::PostgresStore;
use session_redis::RedisStore;
use tokio::sync::OnceCell;

const HOW_TO: &str =
    "start the test servers with `eval \"$(scripts/services.sh)\"` from the workspace root, \
     or point REDIS_URL / DATABASE_URL / MEMCACHED_URL at running servers";

fn url(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn ring() -> KeyRing {
    KeyRing::new(1, EncryptionKey::generate())
}

async fn redis(namespace: &str) -> RedisStore {
    let url = url("REDIS_URL", "redis://127.0.0.1:6379");
    RedisStore::builder()
        .prefix(format!("enc_{namespace}"))
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("no Redis at {url}: {e}; {HOW_TO}"))
}

const PG_SCHEMA: &str = "session_encrypted_test";

async fn postgres(namespace: &str) -> PostgresStore {
    static SCHEMA: OnceCell<()> = OnceCell::const_new();
    let url = url("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    SCHEMA
        .get_or_init(|| async {
            // This binary owns the schema: start each run from an empty one.
            let pool = sqlx::PgPool::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("no PostgreSQL at {url}: {e}; {HOW_TO}"));
            for stmt in [
                format!("DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE"),
                format!("CREATE SCHEMA {PG_SCHEMA}"),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(stmt))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            pool.close().await;
        })
        .await;
    let store = PostgresStore::builder()
        .schema(PG_SCHEMA)
        .table(namespace)
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {url}: {e}; {HOW_TO}"));
    store.migrate().await.expect("migrate");
    store
}

fn memcached(namespace: &str) -> MemcachedStore {
    let url = url("MEMCACHED_URL", "memcache://127.0.0.1:11211");
    let config = MemcachedConfig::new([url.as_str()])
        .and_then(|c| c.with_namespace(&format!("enc_{namespace}")))
        .unwrap_or_else(|e| panic!("bad MEMCACHED_URL {url}: {e}"));
    MemcachedStore::new(config).unwrap_or_else(|e| panic!("no Memcached at {url}: {e}; {HOW_TO}"))
}

mod over_redis {
    session_core::conformance_suite!(|ns: String| async move {
        super::EncryptedStore::new(super::redis(&ns).await, super::ring())
    });
}

mod over_postgres {
    session_core::conformance_suite!(|ns: String| async move {
        super::EncryptedStore::new(super::postgres(&ns).await, super::ring())
    });
}

mod over_memcached {
    // One call at a time in the model-based case, as for Memcached alone.
    session_core::conformance_suite!(
        |ns: String| async move { super::EncryptedStore::new(super::memcached(&ns), super::ring()) },
        model = sequential
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
    let client = redis::Client::open(url("REDIS_URL", "redis://127.0.0.1:6379")).unwrap();
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
        store.list_user(&tag).await.unwrap().len(),
        1,
        "index lives under the tag"
    );
    assert!(
        store.list_user(USER).await.unwrap().is_empty(),
        "index under the real user id"
    );
    assert_clean("memcached", &blobs);
}
