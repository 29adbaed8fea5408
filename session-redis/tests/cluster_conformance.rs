//! The whole `session-core` conformance suite against a Redis Cluster
//! (`REDIS_CLUSTER_URLS`, default the local cluster of 3 masters and 3
//! replicas on ports 7101-7106). The lifecycle step is ordered there, not
//! atomic (see the crate docs), so its race cases check "never more" instead
//! of "exactly".

mod common;

session_core::conformance_suite!(
    |namespace: String| async move {
        let store = common::cluster_store(&namespace).await;
        assert!(store.is_cluster());
        store
    },
    lifecycle = ordered
);
