//! Stores on the test servers (found by `session_test_support::servers`:
//! `MEMCACHED_URL` and, for the two-server tests, `MEMCACHED_URL_2`).
#![allow(dead_code, unused_imports)]

use session_memcached::{MemcachedConfig, MemcachedStore};
pub use session_test_support::servers::{memcached_url as url, memcached_url_2 as url2};

fn config(urls: &[&str], namespace: &str) -> MemcachedConfig {
    MemcachedConfig::new(urls)
        .expect("valid URLs")
        .with_namespace(namespace)
        .expect("valid namespace")
}

/// A store on `urls` in `namespace`, on the default transport (the Tokio
/// client, built on first use).
pub fn store(urls: &[&str], namespace: &str) -> MemcachedStore {
    MemcachedStore::new(config(urls, namespace)).expect("store")
}

/// A store on `urls` in `namespace`, on the blocking transport.
pub fn blocking_store(urls: &[&str], namespace: &str) -> MemcachedStore {
    MemcachedStore::new_blocking(config(urls, namespace)).expect("store")
}
