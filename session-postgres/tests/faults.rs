//! Faults only PostgreSQL has: the server terminates the pool's
//! connections mid-traffic (`pg_terminate_backend`), and every idle
//! connection of the pool dies while the store is idle (terminated by the
//! server, as in a restart): calls fail typed, the first call afterwards
//! succeeds. The network faults every backend shares (server stopped,
//! frozen, restarted, connections reset on use) are the conformance
//! suite's fault scenarios, run from `tests/conformance.rs`.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type Call<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;
use std::time::{Duration, Instant};

use common::{database_url, unique, Scratch};
use session_core::conformance::record;
use session_core::{SessionRecord, SessionStore, StorageKey, StoreError};
use sqlx::postgres::PgConnectOptions;
use sqlx::Connection;

const HOUR: u64 = 3_600_000;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(3);
/// No call may take longer than this, whatever the fault.
const PROMPT: Duration = Duration::from_secs(5);

use session_test_support::storage_key as key;

async fn scratch(table: &str, options: PgConnectOptions) -> Scratch {
    let store = common::builder(table)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .operation_timeout(Some(OPERATION_TIMEOUT))
        .connect_with(options)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    Scratch { store }
}

fn counter(r: &SessionRecord) -> u64 {
    u64::from_be_bytes(r.data[..8].try_into().unwrap())
}

/// One load + compare-and-set increment of the counter under `k`.
async fn increment(store: &dyn SessionStore, k: &StorageKey) -> Result<(), StoreError> {
    let cur = store.load(k).await?.ok_or(StoreError::NotFound)?;
    let next = cur
        .clone()
        .with_data((counter(&cur) + 1).to_be_bytes().to_vec())
        .with_version(cur.version + 1);
    store.update(k, cur.version, &next).await
}

#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    conflicts: u64,
    unavailable: u64,
    /// Updates that failed as unavailable: they may or may not have been
    /// applied before the connection died.
    unavailable_updates: u64,
    unexpected: Vec<String>,
    slowest_failure: Duration,
}

/// The same store keeps working: a first success within a few seconds, then
/// `n` operations in a row without a single error.
async fn assert_recovers(store: &dyn SessionStore, k: &StorageKey, n: usize) {
    let started = Instant::now();
    let mut streak = 0;
    while streak < 4 {
        match increment(store, k).await {
            Ok(()) => streak += 1,
            Err(e) => {
                streak = 0;
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "store did not recover: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    for i in 0..n {
        increment(store, k)
            .await
            .unwrap_or_else(|e| panic!("operation {i} after recovery failed: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backends_fail_typed_and_the_store_recovers() {
    let app = unique("spg_fault");
    let options = PgConnectOptions::from_str(&database_url())
        .unwrap()
        .application_name(&app);
    let t = Arc::new(scratch(&unique("term"), options).await);
    let k = key();
    t.create(&k, &record(None, &0u64.to_be_bytes(), HOUR, HOUR))
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let (t, k, stop, tally) = (t.clone(), k.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let loaded = t.load(&k).await;
                    let result = match loaded {
                        Ok(Some(cur)) => {
                            let next = cur
                                .clone()
                                .with_data((counter(&cur) + 1).to_be_bytes().to_vec())
                                .with_version(cur.version + 1);
                            t.update(&k, cur.version, &next)
                                .await
                                .map_err(|e| (e, true))
                        }
                        Ok(None) => Err((StoreError::NotFound, false)),
                        Err(e) => Err((e, false)),
                    };
                    let elapsed = started.elapsed();
                    let mut tally = tally.lock().unwrap();
                    match result {
                        Ok(()) => tally.ok += 1,
                        Err((StoreError::Conflict, _)) => tally.conflicts += 1,
                        Err((StoreError::Unavailable(_), was_update)) => {
                            tally.unavailable += 1;
                            tally.unavailable_updates += u64::from(was_update);
                            tally.slowest_failure = tally.slowest_failure.max(elapsed);
                        }
                        Err((other, _)) => tally.unexpected.push(format!("{other:?}")),
                    }
                }
            })
        })
        .collect();

    let mut admin = sqlx::PgConnection::connect(&database_url()).await.unwrap();
    let mut terminated = 0i64;
    // At least 4 rounds; more (up to 12) while no call has seen one yet: a
    // backend terminated between two calls can be replaced unnoticed.
    for round in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        terminated += sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
             FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(&app)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if round >= 3 && tally.lock().unwrap().unavailable > 0 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let tally = std::mem::take(&mut *tally.lock().unwrap());
    eprintln!("terminated {terminated} backends; {tally:?}");
    assert!(terminated > 0, "no backend of the pool was terminated");
    assert!(tally.unexpected.is_empty(), "untyped failures: {tally:?}");
    assert!(
        tally.unavailable > 0,
        "no call saw the terminations: {tally:?}"
    );
    assert!(
        tally.ok > 0,
        "no call succeeded between terminations: {tally:?}"
    );
    assert!(
        tally.slowest_failure < PROMPT,
        "a failure took too long: {tally:?}"
    );

    let before = counter(&t.load(&k).await.unwrap().unwrap());
    assert!(
        before >= tally.ok && before <= tally.ok + tally.unavailable_updates,
        "counter {before} does not match {tally:?}: an acknowledged update was lost"
    );
    assert_recovers(&t.store, &k, 20).await;
    assert!(counter(&t.load(&k).await.unwrap().unwrap()) >= before + 24);
    drop(admin);
}

/// Opens `n` connections at once and gives them back, so that the pool
/// holds `n` idle connections.
async fn fill_pool(store: &session_postgres::PostgresStore, n: usize) {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(store.pool().acquire().await.expect("acquire"));
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.pool().num_idle() < n {
        assert!(Instant::now() < deadline, "connections did not go back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Terminates every backend of `app` and waits until the server has none
/// left (asked on the admin connection, not through the store).
async fn terminate_all(admin: &mut sqlx::PgConnection, app: &str) {
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
         FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(app)
    .fetch_one(&mut *admin)
    .await
    .unwrap();
    assert!(terminated > 0, "no backend to terminate");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(app)
                .fetch_one(&mut *admin)
                .await
                .unwrap();
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} backends outlived pg_terminate_backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every idle connection of the pool dies while the store is idle, as in a
/// server restart. These tests share one PostgreSQL and do not start a
/// private one; the restart's effect on the client is produced with
/// `pg_terminate_backend` on every backend of the store's pool, which is
/// a connection-level failure the pool must survive. The server stays up,
/// so the very first call afterwards must succeed: the idempotent
/// statements are retried once on a connection that answers, and the
/// retry must not land on another dead pooled connection (the pool holds
/// four here, and does not test them before handing them out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_every_connection_died_succeeds() {
    let app = unique("spg_idle");
    let options = PgConnectOptions::from_str(&database_url())
        .unwrap()
        .application_name(&app);
    let t = scratch(&unique("idle"), options).await;
    let k = key();
    t.create(&k, &record(Some("idle"), &0u64.to_be_bytes(), HOUR, HOUR))
        .await
        .unwrap();
    let mut admin = sqlx::PgConnection::connect(&database_url()).await.unwrap();
    let now = session_core::Timestamp::now();
    let idle = now.saturating_add(Duration::from_secs(600));
    for (op, call) in [
        (
            "load",
            Box::pin(async {
                let r = t.load(&k).await?;
                assert!(r.is_some(), "the session is gone");
                Ok(())
            }) as Call<'_>,
        ),
        (
            "list_user_sessions",
            Box::pin(async {
                assert_eq!(t.list_user_sessions("idle").await?.len(), 1);
                Ok(())
            }),
        ),
        ("touch", Box::pin(t.touch(&k, now, idle))),
        (
            "delete_expired",
            Box::pin(async { t.delete_expired().await.map(drop) }),
        ),
        ("delete", Box::pin(t.delete(&k))),
    ] {
        fill_pool(&t.store, 4).await;
        terminate_all(&mut admin, &app).await;
        if let Err(e) = call.await {
            panic!("the first {op} after the pool's connections died failed: {e}");
        }
    }
    assert!(t.load(&k).await.unwrap().is_none());
    drop(admin);
}
