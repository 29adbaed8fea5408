//! The conformance suite on the Tokio transport (feature `async`), with
//! keys hashed over both servers (`MEMCACHED_URL`, `MEMCACHED_URL_2`).
#![cfg(feature = "async")]

mod common;

use session_memcached::{MemcachedConfig, MemcachedStore};

// The model-based case runs one call at a time here: concurrent
// `delete_user` and limited logins can still disagree with the model (see
// the crate README, "Known gaps").
session_core::conformance_suite!(
    |namespace: String| async move {
        let (a, b) = (common::url().await, common::url2().await);
        let config = MemcachedConfig::new([a, b])
            .unwrap()
            .with_namespace(&namespace)
            .unwrap();
        MemcachedStore::new_async(config).await.unwrap()
    },
    model = sequential
);
