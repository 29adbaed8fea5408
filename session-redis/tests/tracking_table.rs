//! Redis does not push a `NOLOOP` client the keys its tracking table
//! forgets during that client's own command, so the near cache serves only
//! while the server's table (`tracking-table-max-keys`) is at most half
//! full, and starts again when it has room. Alone in its test binary,
//! because it changes a server-wide setting (and restores it).

mod common;

use common::admin;
use std::time::{Duration, Instant};

use session_redis::{NearCache, RedisStore};
use session_test_support::servers::redis_url;
use session_test_support::unique;

async fn serving_within(store: &RedisStore, serving: bool, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if store.near_cache_stats().expect("near cache on").serving == serving {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_full_tracking_table_stops_the_near_cache() {
    let store = RedisStore::builder()
        .namespace(unique("tt"))
        .near_cache(NearCache::new().heartbeat(Duration::from_millis(50)))
        .connect(&redis_url())
        .await
        .expect("connecting to the test Redis failed (REDIS_URL, or run scripts/services.sh)");
    assert!(
        serving_within(&store, true, Duration::from_secs(5)).await,
        "tracking never started"
    );

    let mut admin = admin().await;
    let original: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("tracking-table-max-keys")
        .query_async(&mut admin)
        .await
        .expect("CONFIG GET");
    let original = original[1].clone();
    // A table of 2 keys, kept full by another tracking client's reads.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("tracking-table-max-keys")
        .arg(2)
        .query_async(&mut admin)
        .await
        .expect("CONFIG SET");
    let mut reader = redis::Client::open(format!("{}?protocol=resp3", redis_url()).as_str())
        .expect("REDIS_URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connecting");
    let _: () = redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .query_async(&mut reader)
        .await
        .expect("CLIENT TRACKING");
    // Stopped for good, not a heartbeat that came late for a moment: not
    // serving at any of 60 samples over 600 ms (the staleness bound is
    // 150 ms), while the table is kept full.
    let stopped = {
        let start = Instant::now();
        let mut quiet_samples = 0;
        while quiet_samples < 60 && start.elapsed() < Duration::from_secs(10) {
            for i in 0..5 {
                let _: Option<String> = redis::cmd("GET")
                    .arg(format!("tt-filler-{i}"))
                    .query_async(&mut reader)
                    .await
                    .expect("GET");
            }
            if store.near_cache_stats().expect("near cache on").serving {
                quiet_samples = 0;
            } else {
                quiet_samples += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        quiet_samples >= 60
    };
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("tracking-table-max-keys")
        .arg(&original)
        .query_async(&mut admin)
        .await
        .expect("CONFIG SET (restoring tracking-table-max-keys)");
    assert!(
        stopped,
        "the near cache kept serving with the tracking table full"
    );
    assert!(
        serving_within(&store, true, Duration::from_secs(10)).await,
        "the near cache did not start again once the table had room"
    );
}
