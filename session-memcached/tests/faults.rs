//! Faults of a real `memcached` process this test runs on a spare port
//! (from PATH): frozen with `SIGSTOP` (the suite's scenario, run against
//! the real process), and restarted under an idle store. Memcached keeps
//! nothing across a restart, so that case seeds the session again before
//! each first call. The network faults every backend shares run through
//! the fault proxy from `tests/conformance.rs` and
//! `tests/conformance_async.rs`.

use std::time::Duration;

use session_core::conformance::faults::{scenarios, FaultInjector};
use session_core::conformance::record;
use session_core::{SessionStore, StoreError};
use session_memcached::{MemcachedConfig, MemcachedStore};
use session_test_support::process::{spare_port, ServerProcess};
use session_test_support::storage_key as key;

/// Which transport a test runs on.
#[derive(Clone, Copy)]
enum Kind {
    Blocking,
    Async,
}

async fn build(config: MemcachedConfig, kind: Kind) -> MemcachedStore {
    match kind {
        Kind::Blocking => MemcachedStore::new_blocking(config).unwrap(),
        Kind::Async => MemcachedStore::new_async(config).await.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_frozen_server_times_out_and_recovers() {
    frozen(Kind::Blocking).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_frozen_server_times_out_and_recovers_async() {
    frozen(Kind::Async).await;
}

async fn frozen(kind: Kind) {
    let server = ServerProcess::memcached(spare_port()).await;
    let config = MemcachedConfig::new([server.url("memcache")])
        .unwrap()
        .with_namespace("frozen")
        .unwrap()
        .with_io_timeout(Duration::from_millis(300))
        .with_connect_timeout(Duration::from_millis(300));
    let store = build(config, kind).await;
    scenarios::run_frozen_server_times_out_and_recovers(&store, &server, Duration::from_secs(2))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_a_restart_succeeds() {
    restart_under_an_idle_store(Kind::Blocking).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_a_restart_succeeds_async() {
    restart_under_an_idle_store(Kind::Async).await;
}

/// The server restarts while the store is idle, its pool full of
/// connections to the old process. Memcached keeps nothing across a
/// restart, so once the new process accepts connections a second store
/// (its own connections) writes the session again; then the very first
/// call of the idle store must succeed: it must not fail on a connection
/// to the old process. Each operation gets its own restart.
async fn restart_under_an_idle_store(kind: Kind) {
    let server = ServerProcess::memcached(spare_port()).await;
    let config = MemcachedConfig::new([server.url("memcache")])
        .unwrap()
        .with_namespace("restart")
        .unwrap()
        .with_io_timeout(Duration::from_millis(500))
        .with_connect_timeout(Duration::from_millis(500));
    let store = build(config.clone(), kind).await;
    let user = "restart-user";
    let k = key();
    let session = record(Some(user), b"kept", 60_000, 120_000);

    // Several idle connections in the pool, all to the process about to go.
    let warm: Vec<_> = (0..4)
        .map(|_| {
            let (store, k) = (store.clone(), k.clone());
            tokio::spawn(async move { store.load(&k).await })
        })
        .collect();
    for w in warm {
        w.await.unwrap().unwrap();
    }

    for op in ["load", "list_user_sessions", "touch", "delete", "create"] {
        server.restart().await;
        if op != "create" {
            let seed = build(config.clone(), kind).await;
            seed.create(&k, &session).await.unwrap();
        }
        let first: Result<(), StoreError> = match op {
            "load" => store.load(&k).await.map(|r| {
                assert_eq!(&r.expect("the seeded session").data[..], b"kept");
            }),
            "list_user_sessions" => store
                .list_user_sessions(user)
                .await
                .map(|l| assert_eq!(l.len(), 1)),
            "touch" => {
                store
                    .touch(&k, session.last_access, session.idle_deadline)
                    .await
            }
            "delete" => store.delete(&k).await,
            _ => store.create(&key(), &session).await,
        };
        if let Err(e) = first {
            panic!("the first {op} after a restart failed: {e:?}");
        }
    }
}
