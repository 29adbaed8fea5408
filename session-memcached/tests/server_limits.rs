//! A private `memcached -I 64k` (a production-like item size limit below
//! the store's default record limit): the store reads the server's limit
//! and refuses what the server would refuse before sending it, because
//! Memcached 1.6 deletes the item a too-large write was replacing. A
//! refused write keeps the previous record and the user's index.

use std::time::Duration;

use session_core::conformance::record;
use session_core::{SessionError, SessionManager, SessionStore, StoreError};
use session_memcached::MemcachedStore;
use session_test_support::process::{spare_port, ServerProcess};
use session_test_support::storage_key as key;

/// `-I 64k`: 65,536 bytes per item; the store keeps 1 KiB for the key and
/// the item header.
const SERVER_LIMIT: usize = 64 * 1024;
const RECORD_LIMIT: usize = SERVER_LIMIT - 1024;
const HOUR: u64 = 3_600_000;

async fn small_server() -> ServerProcess {
    ServerProcess::memcached_with(spare_port(), &["-I", "64k", "-o", "slab_chunk_max=32768"]).await
}

async fn store_on(server: &ServerProcess, tokio_transport: bool) -> MemcachedStore {
    MemcachedStore::builder()
        .namespace("limits")
        .operation_timeout(Duration::from_secs(2))
        .tokio_transport(tokio_transport)
        .connect(&server.url("memcache"))
        .await
        .expect("connect to the private memcached")
}

async fn a_refused_update_keeps_the_previous_record(store: MemcachedStore) {
    let k = key();
    store
        .create(&k, &record(Some("small"), b"before", HOUR, HOUR))
        .await
        .unwrap();
    let big = record(Some("small"), &vec![7u8; 100_000], HOUR, HOUR).with_version(2);
    let refused = store.update(&k, 1, &big).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::TooLarge {
                limit: RECORD_LIMIT,
                ..
            })
        ),
        "{refused:?}"
    );
    let kept = store.load(&k).await.unwrap().expect("the previous record");
    assert_eq!(&kept.data[..], b"before");
    // A record just under the limit still goes through.
    let fits = record(Some("small"), &vec![1u8; RECORD_LIMIT - 200], HOUR, HOUR).with_version(2);
    store.update(&k, 1, &fits).await.unwrap();
    assert_eq!(
        store.load(&k).await.unwrap().unwrap().data.len(),
        RECORD_LIMIT - 200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_learns_the_server_item_limit_at_connect() {
    let server = small_server().await;
    let store = store_on(&server, false).await;
    assert_eq!(store.max_record_size(), RECORD_LIMIT);
    a_refused_update_keeps_the_previous_record(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_transport_learns_it_too() {
    let server = small_server().await;
    let store = store_on(&server, true).await;
    assert_eq!(store.max_record_size(), RECORD_LIMIT);
    a_refused_update_keeps_the_previous_record(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_store_learns_it_before_its_first_write() {
    let server = small_server().await;
    let store = MemcachedStore::builder()
        .namespace("lazy_limits")
        .connect_lazy(&server.url("memcache"))
        .unwrap();
    // Configured limit until the servers have been asked.
    assert_eq!(
        store.max_record_size(),
        session_memcached::DEFAULT_MAX_ITEM_SIZE
    );
    a_refused_update_keeps_the_previous_record(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_commit_does_not_log_the_user_out() {
    let server = small_server().await;
    let manager = SessionManager::new(store_on(&server, false).await);
    let mut session = manager.start();
    manager.login(&mut session, "alice").await.unwrap();
    manager.commit(&mut session).await.unwrap();
    let id = session.id().clone();

    session.insert("avatar", &"x".repeat(100_000)).unwrap();
    let refused = manager.commit(&mut session).await;
    assert!(
        matches!(
            refused,
            Err(SessionError::Store(StoreError::TooLarge { .. }))
        ),
        "{refused:?}"
    );
    let again = manager.load(&id).await.unwrap().expect("still logged in");
    assert_eq!(again.user_id(), Some("alice"));
}

/// A user's index item grows with each session (about 110 bytes an
/// entry): once another entry would not fit the server's limit, the login
/// is refused, and the index the server would have deleted is intact, so
/// "log out everywhere" still ends every session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_at_the_server_limit_keeps_every_session() {
    let server = small_server().await;
    let store = store_on(&server, false).await;
    let user = "many-devices";
    let mut created = Vec::new();
    let refused = loop {
        assert!(
            created.len() < 2_000,
            "the index never reached the server limit"
        );
        let k = key();
        match store
            .create(&k, &record(Some(user), b"s", HOUR, HOUR))
            .await
        {
            Ok(()) => created.push(k),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(refused, StoreError::TooLarge { .. }),
        "{refused:?}"
    );
    assert!(created.len() > 100, "only {} sessions fit", created.len());
    assert_eq!(
        store.list_user_sessions(user).await.unwrap().len(),
        created.len()
    );
    assert_eq!(store.delete_user(user).await.unwrap(), created.len() as u64);
    for k in &created {
        assert!(store.load(k).await.unwrap().is_none());
    }
}
