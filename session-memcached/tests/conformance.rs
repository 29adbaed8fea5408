//! The session-core conformance suite against one Memcached server
//! (`MEMCACHED_URL`).

mod common;

// The model-based case runs one call at a time here: concurrent
// `delete_user` and limited logins can still disagree with the model (see
// the crate README, "Known gaps").
session_core::conformance_suite!(
    |namespace: String| async move {
        let url = common::url().await;
        common::store(&[&url], &namespace)
    },
    model = sequential
);
