//! The whole `session-core` conformance suite with the near cache on,
//! against a Redis Cluster (`REDIS_CLUSTER_URLS`). As without the cache,
//! the lifecycle step is ordered there, not atomic (see the crate docs).

mod common;

use std::time::Duration;

use session_redis::{NearCache, RedisStore};

session_core::conformance_suite!(
    |namespace: String| async move {
        let store = RedisStore::builder()
            .namespace(&namespace)
            .near_cache(NearCache::new().heartbeat(Duration::from_millis(50)))
            .connect_cluster(common::cluster_urls())
            .await
            .expect("connecting to the test Redis Cluster failed");
        assert!(store.near_cache_stats().is_some_and(|s| s.serving));
        store
    },
    lifecycle = ordered
);
