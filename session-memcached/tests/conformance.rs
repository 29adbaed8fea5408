//! The session-core conformance suite against one Memcached server
//! (`MEMCACHED_URL`).

mod common;

session_core::conformance_suite!(|namespace: String| async move {
    let url = common::url();
    common::store(&[&url], &namespace)
});
