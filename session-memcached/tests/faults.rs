//! A Memcached that goes away mid-traffic and comes back: typed errors
//! within bounded time while it is away, recovery afterwards, with the same
//! store. The test runs its own `memcached` (from PATH) on a spare port.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use session_core::conformance::record;
use session_core::{KeyDeriver, SessionId, SessionStore, StorageKey, StoreError};
use session_memcached::{MemcachedConfig, MemcachedStore};

fn key() -> StorageKey {
    KeyDeriver::new().derive(&SessionId::generate())
}

fn spare_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no spare port")
        .port()
}

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

/// Waits until every thread of process `pid` is stopped: `kill -STOP`
/// returns once the signal is sent, not once the process has stopped, and
/// a request sent in between would still be answered.
fn wait_until_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/<pid>/task");
        let all_stopped = tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                // The state follows the parenthesised command name.
                stat.rsplit_once(')').is_some_and(|(_, rest)| {
                    matches!(rest.trim_start().chars().next(), Some('T' | 't'))
                })
            })
        });
        if all_stopped {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
}

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
