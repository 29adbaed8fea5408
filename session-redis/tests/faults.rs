//! Fault tests against a private redis-server this test starts on a spare
//! loopback port: the server dies in the middle of traffic and comes back
//! on the same port; it restarts under an idle store, whose first call
//! afterwards must succeed; it freezes with its connections open and thaws;
//! its script cache is flushed under a live store.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use session_core::{SessionRecord, SessionStore, StorageKey, StoreError, Timestamp};
use session_redis::RedisStore;

const OP_TIMEOUT: Duration = Duration::from_millis(400);
/// How long any call may take while the server is down: the operation
/// timeout plus scheduling slack.
const DOWN_BOUND: Duration = Duration::from_secs(2);

/// A redis-server child process; killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    async fn start(port: u16) -> Self {
        Self::start_with(port, &[]).await
    }

    /// [`Server::start`] with more options (later ones win).
    async fn start_with(port: u16, extra: &[&str]) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "could not run redis-server: install it (Debian: apt-get install redis-server) \
                 or run `eval \"$(scripts/services.sh)\"`, which does",
            );
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !session_test_support::servers::answers(&server.url()) {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

use session_test_support::process::spare_port;
use session_test_support::storage_key as key;

fn record(user: Option<&str>, data: &[u8], version: u64) -> SessionRecord {
    let now = Timestamp::now();
    SessionRecord::new(
        Bytes::copy_from_slice(data),
        user.map(str::to_owned),
        now,
        now.saturating_add(Duration::from_secs(3600)),
        now.saturating_add(Duration::from_secs(7200)),
    )
    .with_last_access(now)
    .with_version(version)
}

async fn store_on(server: &Server) -> RedisStore {
    RedisStore::builder()
        .prefix("faults")
        .operation_timeout(OP_TIMEOUT)
        .connect_timeout(Duration::from_millis(300))
        .connect(&server.url())
        .await
        .expect("connect to the private redis-server")
}

/// Runs every store operation once; each must fail with `Unavailable`
/// within [`DOWN_BOUND`].
async fn every_call_is_unavailable(store: &RedisStore, known: &StorageKey) {
    let now = Timestamp::now();
    let later = now.saturating_add(Duration::from_secs(60));
    macro_rules! check {
        ($name:literal, $call:expr) => {{
            let started = Instant::now();
            let r = tokio::time::timeout(DOWN_BOUND, $call)
                .await
                .unwrap_or_else(|_| panic!("{} hung while the server was down", $name));
            assert!(
                matches!(r, Err(StoreError::Unavailable(_))),
                "{} while down: {:?}",
                $name,
                r
            );
            assert!(started.elapsed() < DOWN_BOUND);
        }};
    }
    check!("create", store.create(&key(), &record(Some("u"), b"x", 1)));
    check!("load", store.load(known));
    check!(
        "update",
        store.update(known, 1, &record(Some("u"), b"y", 2))
    );
    check!("touch", store.touch(known, now, later));
    check!("delete", store.delete(&key()));
    check!("list_user", store.list_user("u"));
    check!("delete_user", store.delete_user("nobody"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_dies_mid_traffic_and_comes_back() {
    let port = spare_port();
    let mut server = Server::start(port).await;
    let store = store_on(&server).await;

    // Traffic: writers that create, load and update until told to stop,
    // counting successes and typed unavailability; anything else fails.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let unavailable = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (store, stop, ok, unavailable) =
                (store.clone(), stop.clone(), ok.clone(), unavailable.clone());
            tokio::spawn(async move {
                let user = format!("worker{w}");
                while !stop.load(Ordering::Relaxed) {
                    let k = key();
                    let started = Instant::now();
                    let result = async {
                        store.create(&k, &record(Some(&user), b"v1", 1)).await?;
                        let got = store.load(&k).await?.ok_or(StoreError::NotFound)?;
                        store
                            .update(&k, got.version, &record(Some(&user), b"v2", 2))
                            .await
                    }
                    .await;
                    assert!(started.elapsed() < DOWN_BOUND * 3, "an operation hung");
                    match result {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(StoreError::Unavailable(_)) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            unavailable.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => panic!("unexpected error during faults: {e:?}"),
                    };
                }
            })
        })
        .collect();

    let known = key();
    store
        .create(&known, &record(Some("u"), b"before", 1))
        .await
        .unwrap();
    let warmup = Instant::now() + Duration::from_secs(10);
    while ok.load(Ordering::Relaxed) < 20 {
        assert!(
            Instant::now() < warmup,
            "no traffic went through before the crash"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.kill();
    let down_at = ok.load(Ordering::Relaxed);
    every_call_is_unavailable(&store, &known).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    every_call_is_unavailable(&store, &known).await;

    let _server = Server::start(port).await;
    // The same store recovers by itself (a fresh server: empty data and
    // script cache, so the scripts are reloaded on the way).
    let deadline = Instant::now() + Duration::from_secs(15);
    let k = key();
    loop {
        match store.create(&k, &record(Some("back"), b"after", 1)).await {
            Ok(()) => break,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("store did not recover after the restart: {e:?}"),
        }
    }
    store
        .update(&k, 1, &record(Some("back"), b"again", 2))
        .await
        .unwrap();
    assert_eq!(&store.load(&k).await.unwrap().unwrap().data[..], b"again");
    assert_eq!(store.list_user("back").await.unwrap().len(), 1);
    let now = Timestamp::now();
    store
        .touch(&k, now, now.saturating_add(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(store.delete_user("back").await.unwrap(), 1);
    assert!(
        store.load(&known).await.unwrap().is_none(),
        "no persistence configured"
    );

    let resumed = Instant::now() + Duration::from_secs(10);
    while ok.load(Ordering::Relaxed) <= down_at + 5 {
        assert!(
            Instant::now() < resumed,
            "traffic did not resume after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("a traffic task panicked");
    }
    assert!(
        unavailable.load(Ordering::Relaxed) > 0,
        "the outage went unnoticed"
    );
}

/// A server that restarts while the store is idle (every pooled connection
/// dies, the server is back a moment later on the same port, with its data:
/// an append-only file synced on every write): the very first call
/// afterwards must succeed. Reads, `touch` and `delete` are retried once on
/// a fresh connection after failing on the dead one. The last round: the
/// server stays down long enough for the store's reconnection to give up,
/// then a `create` (insert-only, never sent twice) is retried because the
/// failure (a refused connection) proves nothing was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_a_restart_succeeds() {
    let dir = std::env::temp_dir().join(format!(
        "session-redis-restart-{}-{}",
        std::process::id(),
        spare_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.to_str().unwrap().to_owned();
    let persistent = [
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        &dir_arg,
    ];
    let port = spare_port();
    let mut server = Server::start_with(port, &persistent).await;
    let store = store_on(&server).await;
    let k = key();
    store
        .create(&k, &record(Some("restart"), b"kept", 1))
        .await
        .unwrap();

    // Stops the server, starts it again on the same port and waits until it
    // answers a client of its own (not the store, which stays idle).
    let restart = |mut server: Server| async move {
        server.kill();
        drop(server);
        Server::start_with(port, &persistent).await
    };

    server = restart(server).await;
    let loaded = store.load(&k).await.expect("first load after a restart");
    assert_eq!(&loaded.expect("the session survived").data[..], b"kept");

    server = restart(server).await;
    let listed = store
        .list_user("restart")
        .await
        .expect("first list_user after a restart");
    assert_eq!(listed.len(), 1);

    server = restart(server).await;
    let now = Timestamp::now();
    store
        .touch(&k, now, now.saturating_add(Duration::from_secs(60)))
        .await
        .expect("first touch after a restart");

    server = restart(server).await;
    store
        .delete(&k)
        .await
        .expect("first delete after a restart");
    assert!(store.load(&k).await.unwrap().is_none());

    // Down until the store's reconnection gives up (two retries, at most
    // 500 ms apart), so its connection is a refused one; then back.
    server.kill();
    let down = store.load(&k).await;
    assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    server = Server::start_with(port, &persistent).await;
    let k2 = key();
    store
        .create(&k2, &record(Some("restart"), b"new", 1))
        .await
        .expect("first create after the server came back");
    assert_eq!(store.list_user("restart").await.unwrap().len(), 1);

    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

use session_test_support::process::wait_until_stopped;

/// Sends `signal` (`STOP` or `CONT`) to the server process.
fn signal(server: &Server, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &server.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} failed");
}

/// A server that stops answering but keeps its connections open (frozen,
/// overloaded, or behind a network partition): every call must still end
/// within the operation timeout with a typed error, and the same store must
/// work again once the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_times_out_and_the_store_recovers() {
    let server = Server::start(spare_port()).await;
    let store = store_on(&server).await;
    let known = key();
    store
        .create(&known, &record(Some("u"), b"before", 1))
        .await
        .unwrap();

    signal(&server, "STOP");
    wait_until_stopped(server.child.id());
    every_call_is_unavailable(&store, &known).await;
    signal(&server, "CONT");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.load(&known).await {
            Ok(Some(r)) => {
                assert_eq!(r.user_id.as_deref(), Some("u"));
                break;
            }
            Ok(None) => panic!("the session vanished while the server was frozen"),
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("store did not recover after the server thawed: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_reloaded_after_script_flush() {
    let server = Server::start(spare_port()).await;
    let store = store_on(&server).await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();

    let k = key();
    store
        .create(&k, &record(Some("flush"), b"1", 1))
        .await
        .unwrap();
    store
        .update(&k, 1, &record(Some("flush"), b"2", 2))
        .await
        .unwrap();
    assert!(
        cached_scripts(&mut raw).await >= 2,
        "scripts were not cached"
    );

    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        cached_scripts(&mut raw).await,
        0,
        "SCRIPT FLUSH left scripts"
    );

    // Every scripted operation still works on the same store.
    store
        .update(&k, 2, &record(Some("flush"), b"3", 3))
        .await
        .unwrap();
    let now = Timestamp::now();
    store
        .touch(&k, now, now.saturating_add(Duration::from_secs(60)))
        .await
        .unwrap();
    let k2 = key();
    store
        .create(&k2, &record(Some("flush"), b"x", 1))
        .await
        .unwrap();
    assert_eq!(&store.load(&k).await.unwrap().unwrap().data[..], b"3");
    assert!(
        cached_scripts(&mut raw).await >= 3,
        "scripts were not reloaded"
    );
    store.delete(&k).await.unwrap();
    assert_eq!(store.delete_user("flush").await.unwrap(), 1);
    assert!(store.load(&k2).await.unwrap().is_none());
}

/// How many scripts the server has cached.
async fn cached_scripts(raw: &mut redis::aio::MultiplexedConnection) -> i64 {
    redis::cmd("INFO")
        .arg("memory")
        .query_async::<String>(raw)
        .await
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("number_of_cached_scripts:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO memory reports number_of_cached_scripts")
}

#[tokio::test]
async fn connect_errors_are_typed_and_hide_credentials() {
    let port = spare_port();
    let err = RedisStore::builder()
        .connect_timeout(Duration::from_millis(200))
        .connect(&format!("redis://user:hunter2@127.0.0.1:{port}/0"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, session_redis::SetupError::Unavailable(_)),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("hunter2"));
    for bad in [
        "redis://user:hunter2@127.0.0.1:notaport",
        "http://user:hunter2@127.0.0.1",
    ] {
        let err = RedisStore::connect(bad).await.unwrap_err();
        assert!(
            matches!(err, session_redis::SetupError::InvalidUrl(_)),
            "{err:?}"
        );
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("hunter2"), "credentials leaked: {shown}");
    }
    let err = RedisStore::builder()
        .prefix("a b")
        .connect("redis://127.0.0.1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, session_redis::SetupError::InvalidPrefix(_)),
        "{err:?}"
    );
    let err = RedisStore::connect_cluster(Vec::<String>::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, session_redis::SetupError::NoClusterNodes),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_store_starts_before_its_server() {
    let port = spare_port();
    let store = RedisStore::builder()
        .prefix("lazy")
        .operation_timeout(OP_TIMEOUT)
        .connect_timeout(Duration::from_millis(300))
        .connect_lazy(&format!("redis://127.0.0.1:{port}"))
        .expect("lazy store");
    let k = key();
    every_call_is_unavailable(&store, &k).await;
    let _server = Server::start(port).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match store.create(&k, &record(None, b"late", 1)).await {
            Ok(()) => break,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("lazy store never connected: {e:?}"),
        }
    }
    assert_eq!(&store.load(&k).await.unwrap().unwrap().data[..], b"late");
}
