//! The conformance suite on the Tokio transport (feature `async`), with
//! keys hashed over both servers (`MEMCACHED_URL`, `MEMCACHED_URL_2`).
#![cfg(feature = "async")]

mod common;

use session_memcached::{MemcachedConfig, MemcachedStore};

session_core::conformance_suite!(|namespace: String| async move {
    let (a, b) = (common::url(), common::url2());
    let config = MemcachedConfig::new([a, b])
        .unwrap()
        .with_namespace(&namespace)
        .unwrap();
    MemcachedStore::new_async(config).await.unwrap()
});
