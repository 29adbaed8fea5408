//! Secrets never show through an encrypted store: not key material in a
//! `KeyError` or in the `Debug` of keys, rings and stores; not the
//! credentials of the inner store's URL in the errors the encrypted store
//! passes on (malformed URL, unreachable port, wrong password); not the
//! storage key in the errors of unreadable records.

use std::time::Duration;

use bytes::Bytes;
use session_core::conformance::redaction::{assert_debug_hides, assert_error_hides};
use session_core::{
    KeyDeriver, MemoryStore, SessionId, SessionRecord, SessionStore, StorageKey, Timestamp,
};
use session_encrypted::{EncryptedStore, EncryptionKey, KeyRing};
use session_memcached::{MemcachedConfig, MemcachedStore};
use session_postgres::PostgresStore;
use session_redis::RedisStore;

const PW: &str = "S3CRETPW";

fn ring() -> KeyRing {
    KeyRing::new(1, EncryptionKey::generate())
}

fn key() -> StorageKey {
    KeyDeriver::new().derive(&SessionId::generate())
}

fn record() -> SessionRecord {
    let now = Timestamp::now();
    SessionRecord::new(
        Bytes::from_static(b"{}"),
        None,
        now,
        now.saturating_add(Duration::from_secs(60)),
        now.saturating_add(Duration::from_secs(600)),
    )
    .with_last_access(now)
    .with_version(1)
}

/// Every operation's error through `store` hides `secrets`.
async fn operations_hide<S: SessionStore>(store: &S, secrets: &[&str]) {
    let k = key();
    let failures = [
        store.load(&k).await.err(),
        store.create(&k, &record()).await.err(),
        store.update(&k, 1, &record()).await.err(),
        store.list_user_sessions("kim").await.err(),
    ];
    let mut failed = 0;
    for err in failures.into_iter().flatten() {
        failed += 1;
        assert_error_hides(&err, secrets);
        assert_error_hides(&err, &[k.as_str()]);
    }
    assert!(failed > 0, "the store was expected to fail");
}

#[test]
fn key_material_never_shows() {
    let k = EncryptionKey::generate();
    let text = k.to_base64();
    let old = EncryptionKey::generate();
    let ring = || {
        KeyRing::new(2, k.clone())
            .with_old_key(1, old.clone())
            .unwrap()
    };
    let store = EncryptedStore::new(MemoryStore::new(), ring());
    let ring = ring();
    for shown in [&k as &dyn std::fmt::Debug, &old, &ring, &store] {
        assert_debug_hides(shown, &[text.as_str(), old.to_base64().as_str()]);
    }
    // A distinctive, malformed key in every position a spec can hold one.
    for spec in [
        "1:S3CRETPWS3CRETPWS3CRETPW",
        "1:S3CRETPW!",
        "S3CRETPW:S3CRETPW",
        "1:S3CRETPWS3CRETPWS3CRETPWS3CRETPWS3CRETPW==",
        "index:S3CRETPW",
        "index:1:S3CRETPW,1:S3CRETPW",
    ] {
        let err = KeyRing::parse(spec).expect_err(spec);
        assert_error_hides(&err, &[PW]);
    }
    let err = EncryptionKey::from_base64("S3CRETPW").expect_err("too short");
    assert_error_hides(&err, &[PW]);
}

#[tokio::test]
async fn unreadable_records_name_neither_key_nor_content() {
    let inner = MemoryStore::new();
    let k = key();
    let mut garbage = record();
    garbage.data = Bytes::from_static(b"\x02\x00\x01S3CRETPW-not-a-ciphertext-S3CRETPW");
    inner.create(&k, &garbage).await.unwrap();
    let store = EncryptedStore::new(inner, ring());
    let err = store.load(&k).await.expect_err("unreadable");
    assert_error_hides(&err, &[k.as_str(), PW]);
}

#[tokio::test]
async fn redis_credentials_never_show_through_the_encrypted_store() {
    let builder = || {
        RedisStore::builder()
            .connect_timeout(Duration::from_millis(300))
            .operation_timeout(Duration::from_millis(600))
    };
    // Malformed: refused before any store exists.
    let err = builder()
        .connect_lazy("redis://u:S3CRETPW@127.0.0.1:notaport")
        .expect_err("malformed");
    assert_error_hides(&err, &[PW]);
    // Unreachable: every operation fails, without the password.
    let inner = builder()
        .connect_lazy("redis://u:S3CRETPW@127.0.0.1:1")
        .expect("lazy");
    let store = EncryptedStore::new(inner, ring());
    assert_debug_hides(&store, &[PW]);
    operations_hide(&store, &[PW]).await;
    // A wrong password against the real server (which has none set: it
    // answers with an error and changes nothing).
    let url = session_test_support::servers::redis_url();
    let host = url.split_once("://").map_or(url.as_str(), |(_, h)| h);
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let wrong = format!("redis://:S3CRETPW@{host}");
    let err = builder().connect(&wrong).await.expect_err("wrong password");
    assert!(
        matches!(err, session_redis::SetupError::Refused(_)),
        "{err:?}"
    );
    assert_error_hides(&err, &[PW]);
    let store = EncryptedStore::new(builder().connect_lazy(&wrong).expect("lazy"), ring());
    operations_hide(&store, &[PW]).await;
}

#[tokio::test]
async fn postgres_credentials_never_show() {
    let builder = || PostgresStore::builder().acquire_timeout(Duration::from_millis(500));
    // A role the real server does not know, at the server's address.
    let server = session_test_support::servers::postgres_url();
    let host = server.split_once("://").map_or(server.as_str(), |(_, h)| h);
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let unknown_role = format!("postgres://no_such_role_for_redaction:S3CRETPW@{host}");
    for url in [
        "postgres://postgres:S3CRETPW@127.0.0.1:notaport/test",
        "postgres://postgres:S3CRETPW@127.0.0.1:1/test",
        unknown_role.as_str(),
    ] {
        let err = builder().connect(url).await.expect_err(url);
        assert_error_hides(&err, &[PW]);
    }
}

#[tokio::test]
async fn memcached_credentials_never_show() {
    for url in [
        "memcache://u:S3CRETPW@127.0.0.1:notaport",
        "memcache://u:S3CRETPW@127.0.0.1:1",
    ] {
        let err = MemcachedConfig::new([url]).expect_err(url);
        assert_error_hides(&err, &[PW]);
    }
    let config = MemcachedConfig::new(["memcache://127.0.0.1:1?password=S3CRETPW"])
        .unwrap()
        .with_connect_timeout(Duration::from_millis(200))
        .with_io_timeout(Duration::from_millis(200));
    let store = EncryptedStore::new(MemcachedStore::new(config).unwrap(), ring());
    assert_debug_hides(&store, &[PW]);
    operations_hide(&store, &[PW]).await;
}
