//! A failover behind one endpoint, performed for real on two private
//! redis-servers: a primary and its replica behind a `FaultProxy` (as a
//! managed service or a Sentinel-aware proxy presents them). The replica is
//! promoted (`REPLICAOF NO ONE`), the old primary demoted (`REPLICAOF
//! <new>`), and the endpoint points new connections at the new primary.
//! The store's connection still reaches the demoted node, which answers
//! writes with `READONLY`: the store must reconnect by itself and every
//! write must go through, including the first ones, racing.

use std::time::{Duration, Instant};

use session_core::conformance::faults::FaultProxy;
use session_core::conformance::record;
use session_core::{SessionManager, SessionStore};
use session_redis::RedisStore;
use session_test_support::process::{spare_port, ServerProcess};
use session_test_support::storage_key as key;

const HOUR: u64 = 3_600_000;

async fn redis_cmd(port: u16, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

/// Waits until the replica on `port` has synced with its primary.
async fn wait_for_link(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let info = redis_cmd(port, &["INFO", "replication"]).await;
        let info: String = redis::from_redis_value(info).unwrap();
        if info.contains("master_link_status:up") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never synced: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A primary (A) and its replica (B) behind one endpoint, and a store on
/// the endpoint.
struct Pair {
    a_port: u16,
    b_port: u16,
    endpoint: FaultProxy,
    store: RedisStore,
    _servers: (ServerProcess, ServerProcess),
}

impl Pair {
    async fn start(namespace: &str) -> Self {
        let (a_port, b_port) = (spare_port(), spare_port());
        let a = ServerProcess::redis(a_port, &[]).await;
        let replica_of = a_port.to_string();
        let b = ServerProcess::redis(b_port, &["--replicaof", "127.0.0.1", &replica_of]).await;
        wait_for_link(b_port).await;
        let endpoint = FaultProxy::start(format!("127.0.0.1:{a_port}"))
            .await
            .unwrap();
        let store = RedisStore::builder()
            .namespace(namespace)
            .operation_timeout(Duration::from_secs(2))
            .connect(&format!("redis://{}", endpoint.addr()))
            .await
            .unwrap();
        Self {
            a_port,
            b_port,
            endpoint,
            store,
            _servers: (a, b),
        }
    }

    /// B becomes the primary, A its replica, the endpoint sends new
    /// connections to B; returns once A follows B.
    async fn fail_over(&self) {
        // What A held reaches B first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        redis_cmd(self.b_port, &["REPLICAOF", "NO", "ONE"]).await;
        let new_primary = self.b_port.to_string();
        redis_cmd(self.a_port, &["REPLICAOF", "127.0.0.1", &new_primary]).await;
        self.endpoint
            .set_upstream(format!("127.0.0.1:{}", self.b_port));
        wait_for_link(self.a_port).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_work_again_after_a_failover_behind_one_endpoint() {
    let pair = Pair::start("failover").await;
    let store = pair.store.clone();
    let manager = SessionManager::new(store.clone());
    let before = key();
    store
        .create(&before, &record(Some("alice"), b"before", HOUR, HOUR))
        .await
        .unwrap();
    pair.fail_over().await;

    // 16 logins at once right after the failover, then 41 more in a row:
    // every one succeeds (within the operation timeout).
    let racing = (0..16).map(|i| {
        let manager = manager.clone();
        async move {
            let mut session = manager.start();
            manager.login(&mut session, &format!("racer{i}")).await?;
            manager.commit(&mut session).await.map(|_| ())
        }
    });
    for result in futures_util::future::join_all(racing).await {
        result.expect("a login racing the reconnect failed");
    }
    for i in 0..41 {
        let mut session = manager.start();
        manager
            .login(&mut session, &format!("user{i}"))
            .await
            .unwrap_or_else(|e| panic!("login {i} after the failover: {e}"));
        manager.commit(&mut session).await.unwrap();
    }
    // The session written before the failover is on the new primary, and
    // every kind of write works there.
    let got = store.load(&before).await.unwrap().expect("replicated");
    assert_eq!(&got.data[..], b"before");
    let next = got
        .clone()
        .with_data(&b"after"[..])
        .with_version(got.version + 1);
    store.update(&before, got.version, &next).await.unwrap();
    assert_eq!(store.delete_user("alice").await.unwrap(), 1);
    let role = redis_cmd(pair.b_port, &["ROLE"]).await;
    assert!(format!("{role:?}").contains("master"), "{role:?}");
}

/// `delete_user` (log out everywhere) is the first write after the
/// failover: its reads still work on the demoted node, its deletes are
/// refused there; it must go through on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_out_everywhere_as_the_first_write_after_a_failover() {
    let pair = Pair::start("failover_du").await;
    let store = &pair.store;
    for _ in 0..3 {
        store
            .create(&key(), &record(Some("bob"), b"x", HOUR, HOUR))
            .await
            .unwrap();
    }
    pair.fail_over().await;
    assert_eq!(store.delete_user("bob").await.unwrap(), 3);
    assert!(store.list_user_sessions("bob").await.unwrap().is_empty());
}
