//! Credentials in connection URLs never show: not in a [`SetupError`]'s
//! `Display` or `Debug`, not in its `source()` chain, not in the `Debug`
//! of the builder or the store, not in the errors of store operations. A
//! server that refuses the password is [`SetupError::Refused`], as the
//! docs promise.
//!
//! The wrong-password cases send a password to the test server, which has
//! none configured: it answers with an error and changes nothing.

mod common;

use std::time::Duration;

use session_core::conformance::redaction::{assert_debug_hides, assert_error_hides};
use session_core::{SessionStore, StorageKey};
use session_redis::{RedisStore, SetupError};

const PW: &str = "S3CRETPW";

fn builder() -> session_redis::RedisStoreBuilder {
    RedisStore::builder()
        .connect_timeout(Duration::from_millis(300))
        .operation_timeout(Duration::from_millis(600))
}

/// `url` with `userinfo` put before its host.
fn with_userinfo(url: &str, userinfo: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{userinfo}@{host}")
}

#[tokio::test]
async fn malformed_urls_are_invalid_and_hide_the_password() {
    for url in [
        "redis://u:S3CRETPW@127.0.0.1:notaport",
        "redis://u:S3CRETPW@[::1",
        "http://u:S3CRETPW@127.0.0.1",
        "redis://u:S3CRETPW@127.0.0.1:6379/notadb",
        "redis://u:S3CRETPW@0.0.0.0:6379",
        "redis://:S3CRET%50W@127.0.0.1:6379/x",
        "u:S3CRETPW@127.0.0.1:6379",
    ] {
        let err = builder().connect(url).await.expect_err(url);
        assert!(matches!(err, SetupError::InvalidUrl(_)), "{url}: {err:?}");
        assert_error_hides(&err, &[PW, "S3CRET"]);
        let err = builder().connect_lazy(url).expect_err(url);
        assert!(matches!(err, SetupError::InvalidUrl(_)), "{url}: {err:?}");
        assert_error_hides(&err, &[PW, "S3CRET"]);
    }
    let err = builder()
        .connect_cluster([
            "redis://127.0.0.1:7101",
            "redis://u:S3CRETPW@127.0.0.1:notaport",
        ])
        .await
        .expect_err("malformed node");
    assert!(matches!(err, SetupError::InvalidUrl(_)), "{err:?}");
    assert_error_hides(&err, &[PW]);
}

#[tokio::test]
async fn an_unreachable_port_is_unavailable_and_hides_the_password() {
    for url in [
        "redis://u:S3CRETPW@127.0.0.1:1/0",
        "redis://:S3CRETPW@127.0.0.1:1",
    ] {
        let err = builder().connect(url).await.expect_err(url);
        assert!(
            matches!(err, SetupError::Unavailable(_) | SetupError::TimedOut(_)),
            "{url}: {err:?}"
        );
        assert_error_hides(&err, &[PW]);
        let shown = err.to_string();
        assert!(
            !shown.contains("127.0.0.1:1") || shown.contains("***"),
            "{shown}"
        );
    }
    let err = builder()
        .connect_cluster(["redis://u:S3CRETPW@127.0.0.1:1"])
        .await
        .expect_err("nothing listens on port 1");
    assert_error_hides(&err, &[PW]);
    // A lazy store connects on first use: its operations fail, without the
    // password either.
    let store = builder()
        .connect_lazy("redis://u:S3CRETPW@127.0.0.1:1")
        .expect("no connection is made yet");
    assert_debug_hides(&store, &[PW]);
    let err = store
        .load(&StorageKey::from_stored("k"))
        .await
        .expect_err("unreachable");
    assert_error_hides(&err, &[PW]);
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_hidden() {
    let url = common::redis_url();
    for userinfo in [":S3CRETPW", "no_such_user_for_redaction:S3CRETPW"] {
        let url = with_userinfo(&url, userinfo);
        let err = builder().connect(&url).await.expect_err("wrong password");
        assert!(matches!(err, SetupError::Refused(_)), "{err:?}");
        assert_error_hides(&err, &[PW]);
        let SetupError::Refused(inner) = &err else {
            unreachable!()
        };
        let redis = inner
            .get_ref()
            .and_then(|e| e.downcast_ref::<redis::RedisError>())
            .expect("the client's error stays inspectable");
        assert_eq!(redis.kind(), redis::ErrorKind::AuthenticationFailed);
        // Through a lazy store, each operation fails the same way.
        let store = builder().connect_lazy(&url).expect("lazy");
        let err = store
            .load(&StorageKey::from_stored("k"))
            .await
            .expect_err("not authenticated");
        assert_error_hides(&err, &[PW]);
    }
}

#[tokio::test]
async fn a_cluster_refusing_the_password_hides_it() {
    let nodes = common::cluster_urls();
    let nodes: Vec<String> = nodes
        .iter()
        .map(|n| with_userinfo(n, ":S3CRETPW"))
        .collect();
    let err = builder()
        .connect_cluster(&nodes)
        .await
        .expect_err("wrong password");
    assert!(matches!(err, SetupError::Refused(_)), "{err:?}");
    assert_error_hides(&err, &[PW]);
}

#[tokio::test]
async fn builder_and_store_debug_hold_no_secret() {
    let b = builder().prefix("redaction");
    assert_debug_hides(&b, &[PW]);
    let store = b.connect(&common::redis_url()).await.expect("store");
    assert_debug_hides(&store, &[PW]);
}
