//! Credentials in server URLs never show: not in a [`SetupError`]'s
//! `Display` or `Debug`, not in its `source()` chain, not in the `Debug` of
//! a configuration or store, not in the errors of a store that cannot reach
//! its server.
//!
//! Memcached has no authentication, so there is no wrong-password case: a
//! URL with credentials is refused before anything is dialed.

mod common;

use std::time::Duration;

use session_core::conformance::redaction::{assert_debug_hides, assert_error_hides};
use session_memcached::{MemcachedConfig, MemcachedStore, SetupError};

const PW: &str = "S3CRETPW";

fn setup_error(urls: &[&str]) -> SetupError {
    MemcachedConfig::new(urls).expect_err("refused")
}

#[test]
fn malformed_urls_are_refused_without_their_credentials() {
    for url in [
        "memcache://u:S3CRETPW@127.0.0.1:notaport",
        "memcache://u:S3CRETPW@[::1",
        "memcache://:S3CRETPW@host:11211:extra",
        "redis://u:S3CRETPW@127.0.0.1:6379",
        "u:S3CRETPW@127.0.0.1:notaport",
    ] {
        let err = setup_error(&[url]);
        assert!(matches!(err, SetupError::BadUrl { .. }), "{err:?}");
        assert_error_hides(&err, &[PW]);
        let err = MemcachedStore::connect(url).expect_err("refused");
        assert_error_hides(&err, &[PW]);
    }
}

#[test]
fn urls_with_credentials_are_refused_without_them() {
    for url in [
        "memcache://u:S3CRETPW@127.0.0.1:1",
        "memcache://:S3CRETPW@127.0.0.1:11211",
        "u:S3CRETPW@127.0.0.1:1",
        "memcache://u:S3CRET%50W@127.0.0.1:1",
    ] {
        let err = setup_error(&["memcache://127.0.0.1:11211", url]);
        assert!(matches!(err, SetupError::BadUrl { .. }), "{err:?}");
        assert_error_hides(&err, &[PW, "S3CRET"]);
        // The message still says which server and why.
        let shown = err.to_string();
        assert!(
            shown.contains("127.0.0.1") && shown.contains("authentication"),
            "{shown}"
        );
        // The same URL in a comma-separated list.
        let err = setup_error(&[&format!("memcache://127.0.0.1:11211,{url}")]);
        assert_error_hides(&err, &[PW, "S3CRET"]);
    }
}

#[tokio::test]
async fn an_unreachable_server_is_reported_without_the_query_secrets() {
    let url = "memcache://127.0.0.1:1?token=S3CRETPW";
    let config = MemcachedConfig::new([url])
        .expect("query parameters are ignored")
        .with_connect_timeout(Duration::from_millis(200))
        .with_io_timeout(Duration::from_millis(200));
    assert_debug_hides(&config, &[PW]);
    let store = MemcachedStore::new(config.clone()).expect("no connection is made yet");
    assert_debug_hides(&store, &[PW]);
    let err = store.ping().await.expect_err("nothing listens on port 1");
    assert_error_hides(&err, &[PW]);
    let store = MemcachedStore::new_async(config)
        .await
        .expect("async store");
    let err = store.ping().await.expect_err("nothing listens on port 1");
    assert_error_hides(&err, &[PW]);
}

#[tokio::test]
async fn a_host_that_does_not_resolve_is_a_redacted_client_error() {
    let config = MemcachedConfig::new(["memcache://no-such-host.invalid:11211?secret=S3CRETPW"])
        .expect("well-formed");
    match MemcachedStore::new(config.clone()) {
        Err(err) => {
            assert!(matches!(err, SetupError::Client(_)), "{err:?}");
            assert_error_hides(&err, &[PW]);
        }
        Ok(store) => assert_error_hides(&store.ping().await.expect_err("unresolvable"), &[PW]),
    }
}

#[tokio::test]
async fn a_working_store_shows_no_secret_either() {
    let url = format!("{}?password=S3CRETPW", common::url());
    let config = MemcachedConfig::new([url.as_str()]).expect("valid");
    assert_debug_hides(&config, &[PW]);
    let store = MemcachedStore::new(config).expect("store");
    store.ping().await.expect("the server answers");
    assert_debug_hides(&store, &[PW]);
}
