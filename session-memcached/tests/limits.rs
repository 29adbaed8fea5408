//! Item size limits, long deadlines and concurrent index writers, against
//! `MEMCACHED_URL`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use session_core::conformance::record;
use session_core::{SessionStore, StoreError};
use session_memcached::{MemcachedConfig, MemcachedStore};

const DAY: u64 = 24 * 3600 * 1000;

use session_test_support::storage_key as key;

fn ns(case: &str) -> String {
    format!("lim_{case}_{}", std::process::id())
}

async fn store_with(case: &str, max_item_size: usize) -> MemcachedStore {
    let url = common::url();
    let config = MemcachedConfig::new([url])
        .unwrap()
        .with_namespace(&ns(case))
        .unwrap()
        .with_max_item_size(max_item_size);
    MemcachedStore::new(config).unwrap()
}

#[tokio::test]
async fn oversize_create_is_rejected_before_anything_is_written() {
    let store = store_with("create", 64 * 1024).await;
    let (k, user) = (key(), "big-user".to_owned());
    let err = store
        .create(
            &k,
            &record(Some(&user), &vec![7; 100 * 1024], 60_000, 120_000),
        )
        .await
        .unwrap_err();
    match err {
        StoreError::TooLarge { size, limit } => {
            assert!(size > 100 * 1024, "size {size}");
            assert_eq!(limit, 64 * 1024);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(store.load(&k).await.unwrap().is_none());
    assert!(store.list_user_sessions(&user).await.unwrap().is_empty());
}

#[tokio::test]
async fn oversize_update_keeps_the_old_record() {
    let store = store_with("update", 64 * 1024).await;
    let k = key();
    let rec = record(None, b"small", 60_000, 120_000);
    store.create(&k, &rec).await.unwrap();
    let big = rec
        .clone()
        .with_data(Bytes::from(vec![1; 65 * 1024]))
        .with_version(2);
    let err = store.update(&k, 1, &big).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err:?}");
    assert_eq!(store.load(&k).await.unwrap().unwrap(), rec);
}

/// With a configured limit above the server's (default 1 MiB), the server
/// refuses the item: still a typed error, nothing half-written, and the
/// connection keeps working.
#[tokio::test]
async fn server_refusal_is_too_large_and_writes_nothing() {
    let store = store_with("server", 8 * 1024 * 1024).await;
    let (k, user) = (key(), "server-big".to_owned());
    let err = store
        .create(
            &k,
            &record(Some(&user), &vec![3; 2 * 1024 * 1024], 60_000, 120_000),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err:?}");
    assert!(store.load(&k).await.unwrap().is_none());
    assert!(store.list_user_sessions(&user).await.unwrap().is_empty());
    let small = key();
    store
        .create(&small, &record(None, b"ok", 60_000, 120_000))
        .await
        .unwrap();
    assert!(store.load(&small).await.unwrap().is_some());
}

/// Deadlines beyond 30 days are sent as absolute Unix times; sent as
/// relative seconds they would be read as a time in 1970 and the item
/// would vanish at once.
#[tokio::test]
async fn deadlines_beyond_thirty_days_survive() {
    let store = store_with("long", 1024 * 1024).await;
    let (k, user) = (key(), "long-user".to_owned());
    let rec = record(Some(&user), b"long", 40 * DAY, 90 * DAY);
    store.create(&k, &rec).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(store.load(&k).await.unwrap().unwrap(), rec);
    assert_eq!(store.list_user_sessions(&user).await.unwrap().len(), 1);
}

/// Concurrent logins of one user all land in the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_of_one_user_lose_no_index_entry() {
    let store = store_with("logins", 1024 * 1024).await;
    let user = "busy-user".to_owned();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (store, user) = (store.clone(), user.clone());
            tokio::spawn(async move {
                let k = key();
                store
                    .create(&k, &record(Some(&user), b"s", 60_000, 120_000))
                    .await
                    .unwrap();
                k
            })
        })
        .collect();
    let mut want = Vec::new();
    for t in tasks {
        want.push(t.await.unwrap());
    }
    want.sort();
    let mut got: Vec<_> = store
        .list_user_sessions(&user)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(store.delete_user(&user).await.unwrap(), 32);
    assert!(store.list_user_sessions(&user).await.unwrap().is_empty());
}

/// Entries whose session is gone are not listed and are pruned.
#[tokio::test]
async fn listing_prunes_entries_of_missing_sessions() {
    let url = common::url();
    let config = MemcachedConfig::new([url])
        .unwrap()
        .with_namespace(&ns("prune"))
        .unwrap()
        .with_index_grace(Duration::ZERO);
    let store = MemcachedStore::new(config).unwrap();
    let user = "prune-user".to_owned();
    let (gone, kept) = (key(), key());
    // The session of `gone` expires on the server.
    store
        .create(&gone, &record(Some(&user), b"g", 300, 120_000))
        .await
        .unwrap();
    store
        .create(&kept, &record(Some(&user), b"k", 60_000, 120_000))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let listed: Vec<_> = store
        .list_user_sessions(&user)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(listed, vec![kept.clone()]);
    // Pruned: delete_user finds only the live one.
    assert_eq!(store.delete_user(&user).await.unwrap(), 1);
}
