//! The whole `session-core` conformance suite and the fault scenarios with
//! the near cache on, against a single Redis server (`REDIS_URL`): a
//! near-cached store keeps every guarantee of the store contract,
//! linearizability of its own calls included.

use std::time::Duration;

use session_core::conformance::faults::FaultTarget;
use session_redis::{NearCache, RedisStore};
use session_test_support::servers::redis_url;

session_core::conformance_suite!(|namespace: String| async move {
    RedisStore::builder()
        .namespace(&namespace)
        .near_cache(NearCache::new().heartbeat(Duration::from_millis(50)))
        .connect(&redis_url())
        .await
        .expect("connecting to the test Redis failed")
});

session_core::fault_scenarios!(redis_url(), |target: FaultTarget| async move {
    RedisStore::builder()
        .namespace(target.namespace())
        .near_cache(NearCache::new().heartbeat(Duration::from_millis(50)))
        .operation_timeout(target.timeout())
        .connect_timeout(target.timeout())
        .connect(target.url())
        .await
        .expect("connecting to the test Redis through the fault proxy failed")
});
