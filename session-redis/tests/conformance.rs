//! The whole `session-core` conformance suite, then the fault scenarios,
//! against a single Redis server (`REDIS_URL`, default
//! redis://127.0.0.1:6379).

use session_core::conformance::faults::FaultTarget;
use session_redis::RedisStore;
use session_test_support::servers::redis_url;

session_core::conformance_suite!(|namespace: String| async move {
    RedisStore::builder()
        .namespace(&namespace)
        .connect(&redis_url())
        .await
        .expect("connecting to the test Redis failed")
});

session_core::fault_scenarios!(redis_url(), |target: FaultTarget| async move {
    RedisStore::builder()
        .namespace(target.namespace())
        .operation_timeout(target.timeout())
        .connect_timeout(target.timeout())
        .connect(target.url())
        .await
        .expect("connecting to the test Redis through the fault proxy failed")
});
