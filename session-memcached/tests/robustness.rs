//! Bad data under the store's keys and odd storage keys: typed errors,
//! never panics. Garbage is written with a raw client, against
//! `MEMCACHED_URL`.

mod common;

use memcache::exp::MetaClient;
use session_core::conformance::record;
use session_core::{KeyDeriver, SessionId, SessionStore, StorageKey, StoreError};

fn raw(url: &str) -> MetaClient {
    let addr = url.trim_start_matches("memcache://");
    let addr = addr.split('?').next().unwrap().to_owned();
    MetaClient::connect(addr).unwrap()
}

fn ns(case: &str) -> String {
    format!("rob_{case}_{}", std::process::id())
}

#[tokio::test]
async fn garbage_session_item_is_corrupt_and_can_be_deleted() {
    let url = common::url();
    let store = common::store(&[&url], &ns("sess"));
    let key = KeyDeriver::new().derive(&SessionId::generate());
    let item_key = format!("{}:s:{}", ns("sess"), key.as_str());
    let client = raw(&url);
    tokio::task::spawn_blocking(move || {
        client
            .set(&item_key, b"\x01garbage")
            .ttl_raw(60)
            .send()
            .unwrap()
    })
    .await
    .unwrap();
    let err = store.load(&key).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    let rec = record(None, b"r", 60_000, 120_000);
    let err = store.update(&key, 1, &rec).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    store.delete(&key).await.unwrap();
    store.create(&key, &rec).await.unwrap();
    assert_eq!(store.load(&key).await.unwrap().unwrap(), rec);
}

#[tokio::test]
async fn garbage_index_item_is_a_typed_error() {
    let url = common::url();
    let store = common::store(&[&url], &ns("idx"));
    let user = "garbage-index-user";
    let key = KeyDeriver::new().derive(&SessionId::generate());
    store
        .create(&key, &record(Some(user), b"r", 60_000, 120_000))
        .await
        .unwrap();
    // Overwrite the user's index item with garbage.
    let client = raw(&url);
    let index_key = index_key_of(&ns("idx"), user);
    tokio::task::spawn_blocking(move || {
        client
            .set(&index_key, b"\xffnot an index")
            .ttl_raw(60)
            .send()
            .unwrap()
    })
    .await
    .unwrap();
    for err in [
        store.list_user_sessions(user).await.unwrap_err(),
        store.delete_user(user).await.unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }
    // The session itself is untouched.
    assert!(store.load(&key).await.unwrap().is_some());
}

/// The index item key the store uses for `user` (see the key layout in
/// the crate's `keys` module).
fn index_key_of(namespace: &str, user: &str) -> String {
    let h = blake3::Hasher::new_derive_key("session-memcached 2026-11 user index key v1")
        .update(user.as_bytes())
        .finalize();
    format!("{namespace}:u:{}", h.to_hex())
}

#[tokio::test]
async fn foreign_storage_keys_work() {
    let url = common::url();
    let store = common::store(&[&url], &ns("foreign"));
    for k in ["a b", "\u{0}ctl", &"x".repeat(400), "ü"] {
        let key = StorageKey::from_stored(k);
        let rec = record(Some("foreign-user"), k.as_bytes(), 60_000, 120_000);
        store.create(&key, &rec).await.unwrap();
        assert_eq!(store.load(&key).await.unwrap().unwrap(), rec);
    }
    let listed = store.list_user_sessions("foreign-user").await.unwrap();
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().any(|s| s.key.as_str() == "a b"));
    assert_eq!(store.delete_user("foreign-user").await.unwrap(), 4);
}
