//! Stores on the test servers (found by `session_test_support::servers`:
//! `MEMCACHED_URL` and, for the two-server tests, `MEMCACHED_URL_2`).
#![allow(dead_code, unused_imports)]

use session_memcached::{MemcachedConfig, MemcachedStore};
pub use session_test_support::servers::{memcached_url as url, memcached_url_2 as url2};

/// A store on `urls` in `namespace`.
pub fn store(urls: &[&str], namespace: &str) -> MemcachedStore {
    let config = MemcachedConfig::new(urls)
        .expect("valid URLs")
        .with_namespace(namespace)
        .expect("valid namespace");
    MemcachedStore::new(config).expect("store")
}
