//! Fault tests against a private redis-server this test starts on a spare
//! loopback port, where the shared fault proxy cannot reach: the real
//! process is killed and started again (with an append-only file synced on
//! every write, so acknowledged writes survive, and an empty script cache),
//! or frozen with `SIGSTOP`. The fault scenarios of the conformance suite
//! run against it unchanged; so do Redis-only cases (script cache flushed
//! under a live store, typed connect errors, a lazy store that starts
//! before its server).

use std::time::{Duration, Instant};

use bytes::Bytes;
use session_core::conformance::faults::{assert_every_call_unavailable, scenarios};
use session_core::{SessionRecord, SessionStore, StoreError, Timestamp};
use session_redis::RedisStore;
use session_test_support::process::{spare_port, ServerProcess};
use session_test_support::storage_key as key;

const OP_TIMEOUT: Duration = Duration::from_millis(400);
/// How long any call may take while the server is down: the operation
/// timeout plus scheduling slack.
const DOWN_BOUND: Duration = Duration::from_secs(2);

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

async fn store_on(server: &ServerProcess) -> RedisStore {
    RedisStore::builder()
        .namespace("faults")
        .operation_timeout(OP_TIMEOUT)
        .connect_timeout(Duration::from_millis(300))
        .connect(&server.url("redis"))
        .await
        .expect("connect to the private redis-server")
}

/// A private redis-server that keeps every acknowledged write across a
/// kill (`appendfsync always`) in a fresh directory, removed on drop.
struct Persistent {
    server: ServerProcess,
    dir: std::path::PathBuf,
}

impl Persistent {
    async fn start() -> Self {
        let port = spare_port();
        let dir = std::env::temp_dir().join(format!(
            "session-redis-faults-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let dir_arg = dir.to_str().expect("a UTF-8 temp dir").to_owned();
        let server = ServerProcess::redis(
            port,
            &[
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                &dir_arg,
            ],
        )
        .await;
        Self { server, dir }
    }
}

impl Drop for Persistent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_outage_mid_traffic() {
    let p = Persistent::start().await;
    let store = store_on(&p.server).await;
    scenarios::run_outage_mid_traffic(&store, &p.server, DOWN_BOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_first_call_after_a_restart_succeeds() {
    let p = Persistent::start().await;
    let store = store_on(&p.server).await;
    scenarios::run_first_call_after_a_restart_succeeds(&store, &p.server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_frozen_server_times_out_and_recovers() {
    let server = ServerProcess::redis(spare_port(), &[]).await;
    let store = store_on(&server).await;
    scenarios::run_frozen_server_times_out_and_recovers(&store, &server, DOWN_BOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_restarts_lose_no_acknowledged_write() {
    let p = Persistent::start().await;
    let store = store_on(&p.server).await;
    scenarios::run_restarts_lose_no_acknowledged_write(&store, &p.server).await;
}

/// Every scripted operation of `store` (created on `server`), with the
/// server's scripts and functions flushed after the first two writes;
/// `flush` names what the store calls with (`"FUNCTION"` for the function
/// library, `"SCRIPT"` for `EVALSHA`).
async fn scripted_calls_survive_a_flush(store: &RedisStore, server: &ServerProcess, flush: &str) {
    let client = redis::Client::open(server.url("redis")).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    flush_all_code(&mut raw).await;

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
        held(&mut raw, flush).await >= 1,
        "the store did not call with {flush}"
    );
    let other = if flush == "SCRIPT" {
        "FUNCTION"
    } else {
        "SCRIPT"
    };
    assert_eq!(
        held(&mut raw, other).await,
        0,
        "the store called with {other} as well"
    );

    flush_all_code(&mut raw).await;
    assert_eq!(held(&mut raw, flush).await, 0, "{flush} FLUSH left some");

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
        held(&mut raw, flush).await >= 1,
        "{flush}: not loaded again"
    );
    store.delete(&k).await.unwrap();
    assert_eq!(store.delete_user("flush").await.unwrap(), 1);
    assert!(store.load(&k2).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_are_reloaded_after_function_flush() {
    let server = ServerProcess::redis(spare_port(), &[]).await;
    let store = store_on(&server).await;
    scripted_calls_survive_a_flush(&store, &server, "FUNCTION").await;
}

/// A user that may not use Redis functions (as on Redis 6, which has
/// none): the store calls the same scripts with `EVALSHA`, whether it
/// learns that at connect or, made lazily, from its first `FCALL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_with_evalsha_where_functions_are_refused() {
    let server = ServerProcess::redis(spare_port(), &[]).await;
    let url = user_url(&server, "evalonly", &["-function", "-fcall", "-fcall_ro"]).await;
    let builder = || {
        RedisStore::builder()
            .namespace("faults")
            .operation_timeout(OP_TIMEOUT)
    };
    let eager = builder().connect(&url).await.unwrap();
    scripted_calls_survive_a_flush(&eager, &server, "SCRIPT").await;
    let lazy = builder().connect_lazy(&url).unwrap();
    scripted_calls_survive_a_flush(&lazy, &server, "SCRIPT").await;

    // May call functions but not load them: the same.
    let url = user_url(&server, "callonly", &["-function", "+function|list"]).await;
    let call_only = builder().connect(&url).await.unwrap();
    scripted_calls_survive_a_flush(&call_only, &server, "SCRIPT").await;
}

/// The URL of `server` as a new ACL user `name` allowed everything but
/// what `rules` take away.
async fn user_url(server: &ServerProcess, name: &str, rules: &[&str]) -> String {
    let client = redis::Client::open(server.url("redis")).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ACL")
        .arg(&["SETUSER", name, "on", ">pw", "~*", "&*", "+@all"])
        .arg(rules)
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    server
        .url("redis")
        .replacen("redis://", &format!("redis://{name}:pw@"), 1)
}

/// A server at `maxmemory` with `noeviction` (the setting the store asks
/// for): writes that may grow memory fail with a typed error, while reads,
/// logout and "log out everywhere" go on working, so users can still leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_still_logs_users_out() {
    let server = ServerProcess::redis(
        spare_port(),
        &["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"],
    )
    .await;
    let store = store_on(&server).await;
    let mut sessions = Vec::new();
    let full = loop {
        let k = key();
        match store
            .create(&k, &record(Some("full"), &[7u8; 4096], 1))
            .await
        {
            Ok(()) => sessions.push(k),
            Err(e) => break e,
        }
        assert!(sessions.len() < 5_000, "3 MB never filled up");
    };
    assert!(
        matches!(full, StoreError::Backend(_)),
        "a full server's refusal: {full:?}"
    );
    assert!(sessions.len() > 10, "filled up after {}", sessions.len());
    let err = store
        .update(&sessions[0], 1, &record(Some("full"), &[8u8; 4096], 2))
        .await
        .expect_err("an update that may grow memory on a full server");
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert_eq!(
        store.load(&sessions[0]).await.unwrap().unwrap().version,
        1,
        "the refused update changed the session"
    );
    store
        .delete(&sessions[1])
        .await
        .expect("a logout on a full server");
    assert!(store.load(&sessions[1]).await.unwrap().is_none());
    let ended = store
        .delete_user("full")
        .await
        .expect("log out everywhere on a full server");
    assert_eq!(ended, u64::try_from(sessions.len() - 1).unwrap());
    assert!(store.load(&sessions[0]).await.unwrap().is_none());
}

/// Drops every script and function the server holds.
async fn flush_all_code(raw: &mut redis::aio::MultiplexedConnection) {
    for what in ["SCRIPT", "FUNCTION"] {
        redis::cmd(what)
            .arg("FLUSH")
            .query_async::<()>(raw)
            .await
            .unwrap();
    }
}

/// How many scripts (`"SCRIPT"`) or function libraries of this crate
/// (`"FUNCTION"`) the server holds.
async fn held(raw: &mut redis::aio::MultiplexedConnection, what: &str) -> i64 {
    if what == "SCRIPT" {
        cached_scripts(raw).await
    } else {
        session_libraries(raw).await
    }
}

/// How many of this crate's function libraries the server holds.
async fn session_libraries(raw: &mut redis::aio::MultiplexedConnection) -> i64 {
    let list: Vec<redis::Value> = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg("session_*")
        .query_async(raw)
        .await
        .unwrap();
    i64::try_from(list.len()).unwrap()
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
    assert_every_call_unavailable(&store, &k, DOWN_BOUND, "before the server started").await;
    let _server = ServerProcess::redis(port, &[]).await;
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
