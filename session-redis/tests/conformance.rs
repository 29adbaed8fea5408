//! The whole `session-core` conformance suite against a single Redis server
//! (`REDIS_URL`, default redis://127.0.0.1:6379).

mod common;

session_core::conformance_suite!(
    |namespace: String| async move { common::store(&namespace).await }
);
