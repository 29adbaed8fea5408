//! `MemcachedStore::builder()`: the builder shape every backend shares
//! (`connect(url).await` checks the servers, `connect_lazy(url)` does not),
//! against a real server.

mod common;

use std::time::{Duration, Instant};

use session_core::conformance::record;
use session_core::{SessionStore, StoreError};
use session_memcached::{MemcachedStore, SetupError};
use session_test_support::process::spare_port;
use session_test_support::{storage_key, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_checks_the_server_and_applies_the_settings() {
    let url = common::url();
    let builder = MemcachedStore::builder()
        .namespace(unique("builder"))
        .max_record_size(4096)
        .operation_timeout(Duration::from_millis(500));
    let config = builder.config(&url).unwrap();
    assert_eq!(config.max_item_size(), 4096);
    assert!(config.namespace().starts_with("t_builder_"));
    let store = builder.connect(&url).await.unwrap();
    let k = storage_key();
    store
        .create(&k, &record(Some("u"), b"x", 60_000, 3_600_000))
        .await
        .unwrap();
    assert_eq!(&store.load(&k).await.unwrap().unwrap().data[..], b"x");
    let big = record(None, &[7; 8192], 60_000, 3_600_000);
    assert!(matches!(
        store.create(&storage_key(), &big).await,
        Err(StoreError::TooLarge { limit: 4096, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_promptly_where_nothing_answers_and_lazy_does_not() {
    let nowhere = format!("memcache://127.0.0.1:{}", spare_port());
    let builder = MemcachedStore::builder()
        .connect_timeout(Duration::from_millis(300))
        .operation_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = builder.clone().connect(&nowhere).await.unwrap_err();
    assert!(matches!(err, SetupError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let lazy = builder.connect_lazy(&nowhere).unwrap();
    assert!(matches!(
        lazy.load(&storage_key()).await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn bad_settings_fail_at_build_time() {
    let url = common::url();
    let err = MemcachedStore::builder()
        .namespace("has space")
        .connect_lazy(&url)
        .unwrap_err();
    assert!(matches!(err, SetupError::BadNamespace(_)), "{err:?}");
    let err = MemcachedStore::builder()
        .max_in_flight(0)
        .connect_lazy(&url)
        .unwrap_err();
    assert!(matches!(err, SetupError::BadSetting(_)), "{err:?}");
    let err = MemcachedStore::builder().connect_lazy("").unwrap_err();
    assert!(matches!(err, SetupError::NoServers), "{err:?}");
}

/// The Tokio client is every constructor's default; `tokio_transport(false)`
/// and `new_blocking` choose the blocking one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokio_transport_is_the_default() {
    let url = common::url();
    let transport = |store: &MemcachedStore| {
        let debug = format!("{store:?}");
        if debug.contains(r#"transport: "tokio""#) {
            "tokio"
        } else if debug.contains(r#"transport: "blocking""#) {
            "blocking"
        } else {
            panic!("no transport in {debug}")
        }
    };
    let config = MemcachedStore::builder().config(&url).unwrap();
    let built = [
        (
            "connect",
            MemcachedStore::builder().connect(&url).await.unwrap(),
        ),
        (
            "connect_lazy",
            MemcachedStore::builder().connect_lazy(&url).unwrap(),
        ),
        (
            "MemcachedStore::new",
            MemcachedStore::new(config.clone()).unwrap(),
        ),
        (
            "MemcachedStore::connect",
            MemcachedStore::connect(&url).unwrap(),
        ),
    ];
    for (how, store) in &built {
        assert_eq!(transport(store), "tokio", "{how}");
        store.ping().await.unwrap();
    }
    let blocking = [
        MemcachedStore::builder()
            .tokio_transport(false)
            .connect(&url)
            .await
            .unwrap(),
        MemcachedStore::builder()
            .tokio_transport(false)
            .connect_lazy(&url)
            .unwrap(),
        MemcachedStore::new_blocking(config).unwrap(),
    ];
    for store in &blocking {
        assert_eq!(transport(store), "blocking");
        store.ping().await.unwrap();
    }
}

/// Both transports place keys on the same servers (rendezvous hashing of
/// the same server URLs), so switching transports keeps every session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_transports_see_the_same_sessions_on_two_servers() {
    let (a, b) = (common::url(), common::url2());
    let namespace = unique("switch");
    let old = common::blocking_store(&[&a, &b], &namespace);
    let new = common::store(&[&a, &b], &namespace);
    let keys: Vec<_> = (0..32).map(|_| storage_key()).collect();
    for k in &keys {
        old.create(k, &record(Some("switcher"), b"kept", 60_000, 3_600_000))
            .await
            .unwrap();
    }
    for k in &keys {
        let loaded = new
            .load(k)
            .await
            .unwrap()
            .expect("the session moved servers");
        assert_eq!(loaded.data.as_ref(), b"kept");
    }
    assert_eq!(new.list_user_sessions("switcher").await.unwrap().len(), 32);
    assert_eq!(new.delete_user("switcher").await.unwrap(), 32);
    for k in &keys {
        assert!(old.load(k).await.unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokio_transport_is_built_by_connect() {
    let url = common::url();
    let store = MemcachedStore::builder()
        .namespace(unique("builder_tokio"))
        .tokio_transport(true)
        .connect(&url)
        .await
        .unwrap();
    let k = storage_key();
    store
        .create(&k, &record(None, b"t", 60_000, 3_600_000))
        .await
        .unwrap();
    assert!(store.load(&k).await.unwrap().is_some());
}

/// A server that accepts connections and never answers: a call fails once
/// the operation (I/O) timeout runs out, with the timeout every store
/// reports, on either transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_nobody_answers_is_a_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("memcache://{}", silent.local_addr().unwrap());
    let accepted = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let limit = Duration::from_millis(300);
    let config = MemcachedStore::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_timeout(limit)
        .config(&url)
        .unwrap();
    let stores = [
        (
            "blocking",
            MemcachedStore::new_blocking(config.clone()).unwrap(),
        ),
        ("tokio", MemcachedStore::new_async(config).await.unwrap()),
    ];
    for (transport, store) in stores {
        let started = Instant::now();
        let err = store.load(&storage_key()).await.unwrap_err();
        assert!(err.is_timeout(), "{transport}: {err:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{transport}");
        let StoreError::Unavailable(source) = &err else {
            panic!("{err:?}");
        };
        let timed_out = source.downcast_ref::<session_core::TimedOut>().unwrap();
        assert_eq!(timed_out.after(), limit, "{transport}");
    }
    accepted.abort();
}
