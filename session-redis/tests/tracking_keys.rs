//! The near cache asks the server to track only the session keys it read
//! (`CLIENT TRACKING ON NOLOOP`, key mode): other keys, other namespaces'
//! sessions and the index reads of a listing add nothing to the server's
//! tracking table. Alone in its test binary, because it reads a
//! server-wide counter.

mod common;

use common::admin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use session_core::{SessionRecord, SessionStore, StorageKey, Timestamp};
use session_redis::{NearCache, RedisStore};
use session_test_support::servers::redis_url;
use session_test_support::{storage_key, unique};

async fn tracked_keys() -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut admin().await)
        .await
        .expect("INFO stats");
    info.lines()
        .find_map(|l| l.strip_prefix("tracking_total_keys:"))
        .expect("INFO stats reports tracking_total_keys (Redis 6 or later)")
        .trim()
        .parse()
        .expect("a number")
}

async fn store(namespace: &str, cached: bool) -> RedisStore {
    let mut builder = RedisStore::builder().namespace(namespace);
    if cached {
        builder = builder.near_cache(NearCache::new().heartbeat(Duration::from_millis(50)));
    }
    let store = builder
        .connect(&redis_url())
        .await
        .expect("connecting to the test Redis failed (REDIS_URL, or run scripts/services.sh)");
    let start = Instant::now();
    while cached && !store.near_cache_stats().expect("near cache on").serving {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "tracking never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store
}

fn record(user: &str) -> SessionRecord {
    let now = Timestamp::now();
    SessionRecord::new(
        Bytes::from_static(b"data"),
        Some(user.to_owned()),
        now,
        now.saturating_add(Duration::from_secs(600)),
        now.saturating_add(Duration::from_secs(600)),
    )
}

#[tokio::test]
async fn only_the_keys_a_near_cached_store_read_are_tracked() {
    const READ: i64 = 200;
    const OTHERS: usize = 2000;
    let ns = unique("tk");
    let plain = store(&ns, false).await;
    let other_ns = store(&unique("tk-other"), false).await;
    let user = unique("user");
    let keys: Vec<StorageKey> = (0..OTHERS).map(|_| storage_key()).collect();
    for k in &keys {
        plain.create(k, &record(&user)).await.unwrap();
        other_ns.create(k, &record(&user)).await.unwrap();
    }

    let before = tracked_keys().await;
    let cached = store(&ns, true).await;
    // Written and read by other clients while the cached store runs.
    let mut conn = admin().await;
    for i in 0..OTHERS {
        let name = format!("{ns}:unrelated:{i}");
        let _: () = redis::cmd("SET")
            .arg(&name)
            .arg("x")
            .arg("EX")
            .arg(60)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    for k in &keys {
        assert!(other_ns.load(k).await.unwrap().is_some());
    }
    // Read by the cached store: these are the keys it tracks.
    for k in keys.iter().take(usize::try_from(READ).unwrap()) {
        assert!(cached.load(k).await.unwrap().is_some());
    }
    // A listing reads the index and the records' headers on the ordinary
    // connection: nothing more to track.
    assert_eq!(
        cached.list_user_sessions(&user).await.unwrap().len(),
        OTHERS
    );

    // Not more than the keys read: a listing, other namespaces and other
    // clients' keys add nothing. (Keys that earlier tests' clients tracked
    // leave the server-wide table as they change or expire, so the growth
    // may read lower; that is why the keys read are checked below instead.)
    let grown = tracked_keys().await - before;
    assert!(
        grown <= READ,
        "the tracking table grew by {grown} keys for {READ} session keys read"
    );
    // The keys read are tracked: another client's writes to them reach
    // the cached store as invalidations.
    let invalidations = cached
        .near_cache_stats()
        .expect("near cache on")
        .invalidations;
    for k in keys.iter().take(20) {
        let current = plain.load(k).await.unwrap().expect("present");
        let next = current.clone().with_version(current.version + 1);
        plain.update(k, current.version, &next).await.unwrap();
    }
    let start = Instant::now();
    while cached
        .near_cache_stats()
        .expect("near cache on")
        .invalidations
        < invalidations + 20
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the cached store was not told of writes to the keys it read"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(cached);
    plain.delete_user(&user).await.unwrap();
    other_ns.delete_user(&user).await.unwrap();
}
