//! The conformance suite on the Tokio transport (feature `async`), with
//! keys hashed over both servers (`MEMCACHED_URL`, `MEMCACHED_URL_2`); then
//! the fault scenarios on that transport against one server.
#![cfg(feature = "async")]

mod common;

use session_core::conformance::faults::FaultTarget;
use session_memcached::{MemcachedConfig, MemcachedStore};

session_core::conformance_suite!(|namespace: String| async move {
    let (a, b) = (common::url(), common::url2());
    let config = MemcachedConfig::new([a, b])
        .unwrap()
        .with_namespace(&namespace)
        .unwrap();
    MemcachedStore::new_async(config).await.unwrap()
});

session_core::fault_scenarios!(common::url(), |target: FaultTarget| async move {
    MemcachedStore::builder()
        .namespace(target.namespace())
        .operation_timeout(target.timeout())
        .connect_timeout(target.timeout())
        .tokio_transport(true)
        .connect(target.url())
        .await
        .expect("connecting to the test Memcached through the fault proxy failed")
});
