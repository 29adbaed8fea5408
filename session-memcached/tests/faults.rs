//! A Memcached that goes away mid-traffic and comes back: typed errors
//! within bounded time while it is away, recovery afterwards, with the same
//! store. A Memcached that restarts under an idle store: the first call
//! afterwards succeeds. The tests run their own `memcached` (from PATH) on
//! a spare port.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use session_core::conformance::record;
use session_core::{SessionStore, StoreError};
use session_memcached::{MemcachedConfig, MemcachedStore};

use session_test_support::storage_key as key;

use session_test_support::process::spare_port;

/// A `memcached` child process, killed when dropped (also when a test
/// fails half-way).
struct Server(Child);

impl Server {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `memcached` on `port` and waits until it accepts connections.
fn start_memcached(port: u16) -> Server {
    let mut cmd = Command::new("memcached");
    cmd.args([
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-m",
        "64",
    ]);
    if std::env::var("USER").as_deref() == Ok("root")
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        cmd.args(["-u", "root"]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `memcached` ({e}): install it (scripts/services.sh at the workspace \
                 root does) and make sure it is on PATH"
            )
        });
    let child = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "memcached on {port} did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

use session_test_support::process::wait_until_stopped;

fn stop(server: Server) {
    drop(server);
}

/// Runs `op` and requires `Unavailable` within `bound`.
async fn unavailable<T: std::fmt::Debug>(
    what: &str,
    bound: Duration,
    op: impl std::future::Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(bound, op)
        .await
        .unwrap_or_else(|_| panic!("{what} did not fail within {bound:?}"));
    match result {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < bound);
}

/// Which transport a test runs on.
#[derive(Clone, Copy)]
enum Kind {
    Blocking,
    Async,
}

async fn build(config: MemcachedConfig, kind: Kind) -> MemcachedStore {
    match kind {
        Kind::Blocking => MemcachedStore::new(config).unwrap(),
        Kind::Async => MemcachedStore::new_async(config).await.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_and_restarted_mid_traffic() {
    outage(Kind::Blocking).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_and_restarted_mid_traffic_async() {
    outage(Kind::Async).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_fails_within_the_io_timeout() {
    freeze(Kind::Blocking).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_fails_within_the_io_timeout_async() {
    freeze(Kind::Async).await;
}

async fn outage(kind: Kind) {
    let port = spare_port();
    let server = start_memcached(port);
    let config = MemcachedConfig::new([format!("memcache://127.0.0.1:{port}")])
        .unwrap()
        .with_namespace("faults")
        .unwrap()
        .with_io_timeout(Duration::from_millis(500))
        .with_connect_timeout(Duration::from_millis(500));
    let store = build(config, kind).await;
    let user = "fault-user".to_owned();
    let before = key();
    store
        .create(&before, &record(Some(&user), b"before", 60_000, 120_000))
        .await
        .unwrap();

    // Background traffic through the whole outage: every error is typed.
    let running = Arc::new(AtomicBool::new(true));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = {
        let (store, running, ok, failed) =
            (store.clone(), running.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                let k = key();
                let r = match store.create(&k, &record(None, b"t", 60_000, 120_000)).await {
                    Ok(()) => store.load(&k).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(StoreError::Unavailable(_)) => failed.fetch_add(1, Ordering::Relaxed),
                    Err(e) => panic!("untyped failure during the outage: {e:?}"),
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        ok.load(Ordering::Relaxed) > 0,
        "no traffic before the outage"
    );

    // Away.
    stop(server);
    let bound = Duration::from_secs(3);
    unavailable("load", bound, store.load(&before)).await;
    unavailable(
        "create",
        bound,
        store.create(&key(), &record(Some(&user), b"x", 60_000, 120_000)),
    )
    .await;
    let next = record(Some(&user), b"y", 60_000, 120_000);
    unavailable("update", bound, store.update(&before, 1, &next)).await;
    unavailable(
        "touch",
        bound,
        store.touch(&before, next.last_access, next.idle_deadline),
    )
    .await;
    unavailable("delete", bound, store.delete(&before)).await;
    unavailable("list_user", bound, store.list_user(&user)).await;
    unavailable("delete_user", bound, store.delete_user(&user)).await;
    unavailable("ping", bound, store.ping()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(failed.load(Ordering::Relaxed) > 0, "traffic saw no outage");

    // Back, on the same port, with the same store.
    let server = start_memcached(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = key();
    loop {
        match store
            .create(&after, &record(Some(&user), b"after", 60_000, 120_000))
            .await
        {
            Ok(()) => break,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("store did not recover: {e:?}"),
        }
    }
    let ok_at_recovery = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::Relaxed);
    traffic.await.unwrap();
    assert!(
        ok.load(Ordering::Relaxed) > ok_at_recovery,
        "traffic did not recover"
    );
    assert_eq!(
        &store.load(&after).await.unwrap().unwrap().data[..],
        b"after"
    );
    // A cache: what the old process held is gone, the user is logged out.
    assert!(store.load(&before).await.unwrap().is_none());
    assert_eq!(store.list_user(&user).await.unwrap().len(), 1);
    stop(server);
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
    let port = spare_port();
    let mut server = start_memcached(port);
    let config = MemcachedConfig::new([format!("memcache://127.0.0.1:{port}")])
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

    for op in ["load", "list_user", "touch", "delete", "create"] {
        drop(server);
        server = start_memcached(port);
        if op != "create" {
            let seed = build(config.clone(), kind).await;
            seed.create(&k, &session).await.unwrap();
        }
        let first: Result<(), StoreError> = match op {
            "load" => store.load(&k).await.map(|r| {
                assert_eq!(&r.expect("the seeded session").data[..], b"kept");
            }),
            "list_user" => store.list_user(user).await.map(|l| assert_eq!(l.len(), 1)),
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
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_connections_reset_on_use() {
    reset_on_use(Kind::Blocking).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_connections_reset_on_use_async() {
    reset_on_use(Kind::Async).await;
}

/// A TCP path in front of the server that can forget its connections
/// (a restarted load balancer or NAT): a connection opened before
/// [`Forgetful::forget`] looks alive while idle, and is reset when it is
/// next used, after the client wrote its request. The pool's liveness
/// probe cannot see that coming.
struct Forgetful {
    port: u16,
    generation: Arc<AtomicU64>,
}

impl Forgetful {
    async fn start(target: u16) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(AtomicU64::new(0));
        let current = generation.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (current, born) = (current.clone(), current.load(Ordering::SeqCst));
                tokio::spawn(async move {
                    // Dropped with a zero linger: a reset, not a close.
                    let _ = client.set_zero_linger();
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.split();
                    let (mut from_server, mut to_server) = server.split();
                    let upstream = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = from_client.read(&mut buf).await?;
                            if n == 0 || current.load(Ordering::SeqCst) != born {
                                return Ok::<(), std::io::Error>(());
                            }
                            to_server.write_all(&buf[..n]).await?;
                        }
                    };
                    tokio::select! {
                        _ = upstream => {}
                        _ = tokio::io::copy(&mut from_server, &mut to_client) => {}
                    }
                });
            }
        });
        Self { port, generation }
    }

    fn forget(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Every pooled connection is reset on its next use, after the request was
/// written: a read must still succeed at the first attempt, sent again on
/// a freshly dialed connection (a read has no side effect, so the client
/// reports the failure as one that did not apply).
async fn reset_on_use(kind: Kind) {
    let port = spare_port();
    let _server = start_memcached(port);
    let path = Forgetful::start(port).await;
    let config = MemcachedConfig::new([format!("memcache://127.0.0.1:{}", path.port)])
        .unwrap()
        .with_namespace("reset")
        .unwrap()
        .with_io_timeout(Duration::from_millis(500))
        .with_connect_timeout(Duration::from_millis(500));
    let store = build(config, kind).await;
    let user = "reset-user";
    let k = key();
    store
        .create(&k, &record(Some(user), b"kept", 60_000, 120_000))
        .await
        .unwrap();
    for op in ["load", "list_user", "ping"] {
        // Several idle connections, all of which the path then forgets.
        let warm: Vec<_> = (0..4)
            .map(|_| {
                let (store, k) = (store.clone(), k.clone());
                tokio::spawn(async move { store.load(&k).await })
            })
            .collect();
        for w in warm {
            w.await.unwrap().unwrap();
        }
        path.forget();
        let first: Result<(), StoreError> = match op {
            "load" => store.load(&k).await.map(|r| {
                assert_eq!(&r.expect("the session").data[..], b"kept");
            }),
            "list_user" => store.list_user(user).await.map(|l| assert_eq!(l.len(), 1)),
            _ => store.ping().await,
        };
        if let Err(e) = first {
            panic!("the first {op} on reset connections failed: {e:?}");
        }
    }
}

/// A server that stops answering (frozen, not closed) costs at most the
/// I/O timeout per call.
async fn freeze(kind: Kind) {
    let port = spare_port();
    let server = start_memcached(port);
    let config = MemcachedConfig::new([format!("127.0.0.1:{port}")])
        .unwrap()
        .with_namespace("frozen")
        .unwrap()
        .with_io_timeout(Duration::from_millis(300))
        .with_connect_timeout(Duration::from_millis(300));
    let store = build(config, kind).await;
    let k = key();
    store
        .create(&k, &record(None, b"v", 60_000, 120_000))
        .await
        .unwrap();
    let pid = server.id().to_string();
    let signal = |sig: &str| {
        let status = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(status.success(), "kill {sig} failed");
    };
    signal("-STOP");
    wait_until_stopped(server.id());
    unavailable(
        "load on a frozen server",
        Duration::from_secs(2),
        store.load(&k),
    )
    .await;
    signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match store.load(&k).await {
            Ok(found) => {
                assert!(found.is_some());
                break;
            }
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no recovery after the freeze: {e:?}"),
        }
    }
    stop(server);
}
