//! Credentials in connection URLs never show: not in a [`SetupError`]'s
//! `Display` or `Debug`, not in its `source()` chain, not in the `Debug`
//! of the builder or the store.

mod common;

use std::str::FromStr;
use std::time::Duration;

use session_core::conformance::redaction::{assert_debug_hides, assert_error_hides};
use session_postgres::sqlx::postgres::PgConnectOptions;
use session_postgres::{PostgresStore, PostgresStoreBuilder, SetupError};

const PW: &str = "S3CRETPW";

fn builder() -> PostgresStoreBuilder {
    PostgresStore::builder().acquire_timeout(Duration::from_millis(500))
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
        "postgres://postgres:S3CRETPW@127.0.0.1:notaport/test",
        "postgres://postgres:S3CRETPW@[::1/test",
        "postgres://postgres:S3CRETPW@127.0.0.1/test?sslmode=sometimes",
        "postgres://postgres:S3CRET%50W@127.0.0.1:99999/test",
    ] {
        let err = builder().connect(url).await.expect_err(url);
        assert!(matches!(err, SetupError::InvalidUrl(_)), "{url}: {err:?}");
        assert_error_hides(&err, &[PW, "S3CRET"]);
    }
    // Not a URL: the driver reads it as options for an anonymous role.
    let err = builder()
        .connect("postgres:S3CRETPW@127.0.0.1:5432/test")
        .await
        .expect_err("not a URL");
    assert_error_hides(&err, &[PW]);
}

#[tokio::test]
async fn an_unreachable_port_hides_the_password() {
    for url in [
        "postgres://postgres:S3CRETPW@127.0.0.1:1/test",
        "postgres://postgres@127.0.0.1:1/test?password=S3CRETPW",
    ] {
        let err = builder().connect(url).await.expect_err(url);
        assert!(matches!(err, SetupError::Connect(_)), "{url}: {err:?}");
        assert_error_hides(&err, &[PW]);
        // The same through parsed options (the URL is then unknown to the
        // store: only what the messages show can be redacted).
        let options = PgConnectOptions::from_str(url).expect("well-formed");
        let err = builder().connect_with(options).await.expect_err(url);
        assert_error_hides(&err, &[PW]);
    }
}

#[tokio::test]
async fn a_refused_login_hides_the_password() {
    // A role that does not exist: refused by any server, whatever its
    // authentication method.
    let url = with_userinfo(
        &common::database_url(),
        "no_such_role_for_redaction:S3CRETPW",
    );
    let err = builder().connect(&url).await.expect_err("unknown role");
    assert!(matches!(err, SetupError::Connect(_)), "{err:?}");
    assert_error_hides(&err, &[PW]);
    let SetupError::Connect(inner) = &err else {
        unreachable!()
    };
    assert!(
        inner
            .get_ref()
            .and_then(|e| e.downcast_ref::<session_postgres::sqlx::Error>())
            .is_some(),
        "the driver's error stays inspectable"
    );
}

#[tokio::test]
async fn builder_and_store_debug_hold_no_secret() {
    let b = builder().table("redaction_debug");
    assert_debug_hides(&b, &[PW]);
    // On a server that trusts the test role the password is ignored and
    // the store connects: its Debug must not show the pool's connect
    // options, which hold the password. Elsewhere the login fails, and the
    // error must not show it.
    let url = common::database_url();
    let user = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .map_or("postgres", |(userinfo, _)| {
            userinfo.split(':').next().unwrap_or("postgres")
        })
        .to_owned();
    let url = with_userinfo(&url, &format!("{user}:S3CRETPW"));
    match b.connect(&url).await {
        Ok(store) => assert_debug_hides(&store, &[PW]),
        Err(err) => assert_error_hides(&err, &[PW]),
    }
}
