//! The near cache tracks the store's session keys only (`CLIENT TRACKING
//! ... BCAST PREFIX <prefix>:s:{`): the server keeps one broadcast prefix
//! per namespace and sends no invalidation for other keys. Alone in its
//! test binary, because it reads a server-wide counter.

use std::time::{Duration, Instant};

use session_redis::{NearCache, RedisStore};
use session_test_support::servers::redis_url;
use session_test_support::unique;

async fn tracked_prefixes() -> i64 {
    let mut admin = redis::Client::open(redis_url().as_str())
        .expect("REDIS_URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connecting to the test Redis failed");
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut admin)
        .await
        .expect("INFO stats");
    info.lines()
        .find_map(|l| l.strip_prefix("tracking_total_prefixes:"))
        .expect("INFO stats reports tracking_total_prefixes (Redis 6 or later)")
        .trim()
        .parse()
        .expect("a number")
}

async fn near_cached(namespace: &str) -> RedisStore {
    let store = RedisStore::builder()
        .namespace(namespace)
        .near_cache(NearCache::new().heartbeat(Duration::from_millis(50)))
        .connect(&redis_url())
        .await
        .expect("connecting to the test Redis failed");
    let start = Instant::now();
    while !store.near_cache_stats().expect("near cache on").serving {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "tracking never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store
}

#[tokio::test]
async fn each_namespace_tracks_its_own_prefix() {
    let before = tracked_prefixes().await;
    let (ns1, ns2) = (unique("p1"), unique("p2"));
    let a = near_cached(&ns1).await;
    let a2 = near_cached(&ns1).await;
    assert_eq!(
        tracked_prefixes().await,
        before + 1,
        "two stores of one namespace share one prefix"
    );
    let b = near_cached(&ns2).await;
    assert_eq!(tracked_prefixes().await, before + 2);
    drop((a, a2, b));
    let start = Instant::now();
    while tracked_prefixes().await != before {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "dropped stores still track their prefixes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
