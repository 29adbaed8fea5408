//! What the lifecycle step leaves on the server, seen with a raw client
//! (`MEMCACHED_URL`): the moved marker of a rotation, a remembered load
//! of a rotated key, and a login that stopped after writing its index
//! entry.

mod common;

use std::time::Duration;

use memcache::exp::MetaClient;
use session_core::conformance::record;
use session_core::store::CreateOptions;
use session_core::{SessionStore, StoreError};
use session_memcached::{MemcachedConfig, MemcachedStore};

use session_test_support::storage_key as key;

fn ns(case: &str) -> String {
    format!("lc_{case}_{}", std::process::id())
}

fn raw(url: &str) -> MetaClient {
    let addr = url.trim_start_matches("memcache://");
    MetaClient::connect(addr.split('?').next().unwrap().to_owned()).unwrap()
}

async fn raw_get(url: &str, item_key: String) -> Option<Vec<u8>> {
    let client = raw(url);
    tokio::task::spawn_blocking(move || client.get(&item_key).send().unwrap().value)
        .await
        .unwrap()
}

#[tokio::test]
async fn rotation_leaves_a_moved_marker_that_loads_as_nothing() {
    let url = common::url();
    let store = common::store(&[&url], &ns("marker"));
    let (old, new) = (key(), key());
    let rec = record(Some("marker-user"), b"o", 60_000, 120_000);
    store.create(&old, &rec).await.unwrap();
    // A load remembers the old key's token: the rotation must not leave
    // it usable.
    let loaded = store.load(&old).await.unwrap().unwrap();
    let moved = CreateOptions::default().replacing(old.clone(), 1);
    store.create_with(&new, &rec, &moved).await.unwrap();

    let item = raw_get(&url, format!("{}:s:{}", ns("marker"), old.as_str()))
        .await
        .expect("the old key holds a marker");
    assert_eq!(item[0], 0xA7, "marker format byte");
    assert!(store.load(&old).await.unwrap().is_none());
    let next = loaded.with_version(2);
    let err = store.update(&old, 1, &next).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert_eq!(store.load(&new).await.unwrap().unwrap().version, 1);
}

/// A login that wrote its index entry and stopped (a crash) counts as
/// pending until `index_grace`; then the first reader cancels it, so its
/// record can never be written, and prunes it.
#[tokio::test]
async fn a_stalled_login_is_cancelled_after_the_grace_period() {
    let url = common::url();
    let config = MemcachedConfig::new([url.clone()])
        .unwrap()
        .with_namespace(&ns("stall"))
        .unwrap()
        .with_index_grace(Duration::ZERO);
    let store = MemcachedStore::new(config).unwrap();
    let user = "stalled-user";
    let k = key();
    store
        .create(&k, &record(Some(user), b"s", 60_000, 120_000))
        .await
        .unwrap();
    // Remove the record behind the store's back: the entry now looks like
    // a login that never wrote its record.
    let item_key = format!("{}:s:{}", ns("stall"), k.as_str());
    let client = raw(&url);
    let ik = item_key.clone();
    tokio::task::spawn_blocking(move || client.delete(&ik).send().unwrap())
        .await
        .unwrap();
    assert!(store.list_user_sessions(user).await.unwrap().is_empty());
    // The late write of that login fails: the key holds an ended marker.
    let marker = raw_get(&url, item_key).await.expect("an ended marker");
    assert_eq!(marker[0], 0xA7);
    assert!(store.load(&k).await.unwrap().is_none());
    assert_eq!(store.delete_user(user).await.unwrap(), 0);
}
