//! Stores on the test servers (found by `session_test_support::servers`).
#![allow(dead_code, unused_imports)]

use session_redis::RedisStore;
pub use session_test_support::servers::{redis_cluster_urls as cluster_urls, redis_url};
pub use session_test_support::unique;

/// A store on the single test server under `prefix`.
pub async fn store(prefix: &str) -> RedisStore {
    RedisStore::builder()
        .prefix(prefix)
        .connect(&redis_url())
        .await
        .expect("connecting to the test Redis failed")
}

/// A store on the test cluster under `prefix`.
pub async fn cluster_store(prefix: &str) -> RedisStore {
    RedisStore::builder()
        .prefix(prefix)
        .connect_cluster(cluster_urls())
        .await
        .expect("connecting to the test Redis Cluster failed")
}

/// A plain connection to the test Redis (`REDIS_URL`), for reading and
/// changing server-wide state.
pub async fn admin() -> redis::aio::MultiplexedConnection {
    redis::Client::open(session_test_support::servers::redis_url().as_str())
        .expect("REDIS_URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connecting to the test Redis failed (REDIS_URL, or run scripts/services.sh)")
}
