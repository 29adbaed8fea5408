//! The session-core conformance suite, then the fault scenarios, against
//! one Memcached server (`MEMCACHED_URL`) on the blocking transport.

mod common;

use session_core::conformance::faults::FaultTarget;
use session_memcached::MemcachedStore;

session_core::conformance_suite!(|namespace: String| async move {
    let url = common::url();
    common::blocking_store(&[&url], &namespace)
});

session_core::fault_scenarios!(common::url(), |target: FaultTarget| async move {
    MemcachedStore::builder()
        .tokio_transport(false)
        .namespace(target.namespace())
        .operation_timeout(target.timeout())
        .connect_timeout(target.timeout())
        .connect(target.url())
        .await
        .expect("connecting to the test Memcached through the fault proxy failed")
});
