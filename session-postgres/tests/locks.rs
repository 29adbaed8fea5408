//! A row lock held by another client ties up only the calls that need that
//! row: they fail as timeouts (the server's `lock_timeout` and
//! `statement_timeout` end their statements, or the client abandons and
//! closes the connection), and the pool keeps serving every other session
//! while the lock is still held. Also: the store's connections carry the
//! server-side timeouts derived from the operation timeout.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use common::{database_url, unique, Scratch};
use session_core::conformance::record;
use session_core::store::CreateOptions;
use session_core::{SessionStore, StorageKey, StoreError, Timestamp};
use session_postgres::sqlx::postgres::{PgConnectOptions, PgPool};
use session_postgres::sqlx::{self, AssertSqlSafe, Connection};
use session_postgres::PostgresStore;
use session_test_support::storage_key as key;

const HOUR: u64 = 3_600_000;
const POOL: u32 = 4;
const OPERATION_TIMEOUT: Duration = Duration::from_millis(500);
/// How long past the operation timeout a failing call may take to return
/// (scheduling on a busy two-core machine).
const SLACK: Duration = Duration::from_millis(400);

type Call<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

fn options(application_name: &str) -> PgConnectOptions {
    database_url()
        .parse::<PgConnectOptions>()
        .expect("test URL")
        .application_name(application_name)
}

/// A migrated scratch table on a pool of [`POOL`] connections with a
/// 500 ms operation timeout, its connections named `application_name`.
async fn scratch(table: &str, application_name: &str) -> Scratch {
    let store = common::builder(table)
        .max_connections(POOL)
        .operation_timeout(OPERATION_TIMEOUT)
        .connect_with(options(application_name))
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    Scratch { store }
}

/// The `i`-th call of a mix touching the locked row: writes and a
/// rotation, which wait for its row lock (a plain load does not: reads see
/// the last committed version without waiting).
fn locked_call<'a>(store: &'a PostgresStore, k: &'a StorageKey, i: usize) -> Call<'a> {
    Box::pin(async move {
        let now = Timestamp::now();
        match i % 4 {
            0 => {
                let r = record(None, b"new", HOUR, HOUR).with_version(2);
                store.update(k, 1, &r).await
            }
            1 => {
                store
                    .touch(k, now, now.saturating_add(Duration::from_secs(3_600)))
                    .await
            }
            2 => store.delete(k).await,
            _ => {
                let options = CreateOptions::default().replacing(k.clone(), 1);
                let r = record(None, b"rotated", HOUR, HOUR);
                store.create_with(&key(), &r, &options).await.map(drop)
            }
        }
    })
}

/// `n` concurrent calls on the locked row; each must fail as a timeout
/// within the operation timeout plus [`SLACK`]. Returns the slowest.
async fn locked_burst(store: &PostgresStore, k: &StorageKey, n: usize) -> Duration {
    let calls = (0..n).map(|i| {
        let store = store.clone();
        let k = k.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = locked_call(&store, &k, i).await;
            (i, result, started.elapsed())
        })
    });
    let mut slowest = Duration::ZERO;
    let mut took_each = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        let (i, result, took) = call.await.unwrap();
        took_each.push(took.as_millis());
        let err = result.expect_err("a call on the locked row succeeded");
        assert!(err.is_timeout(), "call {i} on the locked row: {err:?}");
        assert!(
            took <= OPERATION_TIMEOUT + SLACK,
            "call {i} on the locked row took {took:?}"
        );
        slowest = slowest.max(took);
    }
    println!("{n} calls on the locked row timed out after (ms): {took_each:?}");
    slowest
}

/// `n` concurrent calls on other sessions, a third each of loads, creates
/// and updates (a load, then a compare-and-set of `others`, each key at
/// most once per call of this function); every one must succeed. Returns
/// the slowest.
async fn other_sessions(store: &PostgresStore, others: &[StorageKey], n: usize) -> Duration {
    let calls = (0..n).map(|i| {
        let store = store.clone();
        let k = others[i % others.len()].clone();
        let updated = i % 3 == 2 && i < others.len();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = match i % 3 {
                0 => store.load(&k).await.map(|r| assert!(r.is_some())),
                1 => {
                    store
                        .create(&key(), &record(None, b"other", HOUR, HOUR))
                        .await
                }
                _ if updated => match store.load(&k).await {
                    Ok(Some(cur)) => {
                        let next = cur.clone().with_version(cur.version + 1);
                        store.update(&k, cur.version, &next).await
                    }
                    Ok(None) => panic!("another session is gone"),
                    Err(e) => Err(e),
                },
                _ => store.load(&k).await.map(drop),
            };
            (i, result, started.elapsed())
        })
    });
    let mut slowest = Duration::ZERO;
    for call in calls.collect::<Vec<_>>() {
        let (i, result, took) = call.await.unwrap();
        if let Err(e) = result {
            panic!("call {i} on another session failed after {took:?}: {e:?}");
        }
        slowest = slowest.max(took);
    }
    slowest
}

/// Backends of the store (its `application_name`) still waiting for a lock.
async fn waiting_backends(admin: &PgPool, application_name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = $1 AND wait_event_type = 'Lock'",
    )
    .bind(application_name)
    .fetch_one(admin)
    .await
    .unwrap()
}

/// Waits until no backend of the store waits for a lock; fails if that
/// takes longer than the statement timeout (450 ms) plus [`SLACK`].
async fn no_backend_waits(admin: &PgPool, application_name: &str) -> Duration {
    let started = Instant::now();
    while waiting_backends(admin, application_name).await > 0 {
        assert!(
            started.elapsed() < Duration::from_millis(450) + SLACK,
            "the store's statements still wait for the lock {:?} later",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_row_times_out_its_own_calls_and_nothing_else() {
    let app = unique("spg_lock");
    let t = scratch(&unique("lock"), &app).await;
    let store = &t.store;
    let admin = PgPool::connect(&database_url()).await.unwrap();

    let locked = key();
    store
        .create(&locked, &record(None, b"locked", HOUR, HOUR))
        .await
        .unwrap();
    let mut others = Vec::new();
    for _ in 0..30 {
        let k = key();
        store
            .create(&k, &record(None, b"other", HOUR, HOUR))
            .await
            .unwrap();
        others.push(k);
    }

    // Another client locks the row and keeps its transaction open.
    let mut locker = sqlx::PgConnection::connect(&database_url()).await.unwrap();
    let mut tx = locker.begin().await.unwrap();
    let lock = format!("SELECT 1 FROM {} WHERE key = $1 FOR UPDATE", store.table());
    sqlx::query(AssertSqlSafe(lock))
        .bind(locked.as_str())
        .execute(&mut *tx)
        .await
        .unwrap();

    // More calls on the locked row than the pool has connections.
    let burst = locked_burst(store, &locked, 6).await;
    println!("burst of 6 calls on the locked row: slowest {burst:?}");

    // Right after, with the lock still held: the server ends every one of
    // those statements within its statement timeout, including those the
    // client abandoned (which may still apply their write until then).
    let ended = no_backend_waits(&admin, &app).await;
    println!("no backend waiting for the lock {ended:?} after the burst");

    // Meanwhile: two callers keep retrying the locked row while other
    // sessions are served through the rest of the pool.
    let hammer = {
        let store = store.clone();
        let locked = locked.clone();
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_millis(1_500);
            let mut calls = 0;
            while Instant::now() < until {
                let (a, b) = tokio::join!(
                    locked_call(&store, &locked, calls),
                    locked_call(&store, &locked, calls + 1)
                );
                for result in [a, b] {
                    let err = result.expect_err("a call on the locked row succeeded");
                    assert!(err.is_timeout(), "{err:?}");
                }
                calls += 2;
            }
            calls
        })
    };
    let mut meanwhile = Duration::ZERO;
    let mut served = 0;
    while !hammer.is_finished() {
        meanwhile = meanwhile.max(other_sessions(store, &others, 12).await);
        served += 12;
    }
    let hammered = hammer.await.unwrap();
    println!(
        "meanwhile: {served} calls on other sessions, slowest {meanwhile:?}, \
         alongside {hammered} timed-out calls on the locked row"
    );

    // Afterwards, the lock still held: dozens at once, all served.
    let after = other_sessions(store, &others, 60).await;
    println!("afterwards: 60 concurrent calls on other sessions, slowest {after:?}");
    assert!(store.pool().size() <= POOL, "{}", store.pool().size());

    // A second burst on the locked row changes nothing.
    locked_burst(store, &locked, 6).await;
    other_sessions(store, &others, 60).await;

    // Released (once nothing of the store waits for it, so that no
    // abandoned write lands late): the locked session works again.
    no_backend_waits(&admin, &app).await;
    tx.rollback().await.unwrap();
    let current = store.load(&locked).await.unwrap().expect("still there");
    assert_eq!(current.version, 1);
    let next = current.clone().with_version(2);
    store.update(&locked, 1, &next).await.unwrap();
    let now = Timestamp::now();
    store
        .touch(&locked, now, now.saturating_add(Duration::from_secs(3_600)))
        .await
        .unwrap();
    assert_eq!(store.load(&locked).await.unwrap().unwrap().version, 2);
    locker.close().await.unwrap();
    admin.close().await;
}

/// One locked row, a store and the other client holding the lock.
struct Locked {
    /// Dropped first (fields drop in order): the lock goes before the
    /// scratch table is dropped.
    _locker: sqlx::PgConnection,
    t: Scratch,
    key: StorageKey,
}

impl Locked {
    async fn new(
        builder: session_postgres::PostgresStoreBuilder,
        options: PgConnectOptions,
    ) -> Self {
        let store = builder.connect_with(options).await.expect("connect");
        store.migrate().await.expect("migrate");
        let t = Scratch { store };
        let key = key();
        t.store
            .create(&key, &record(None, b"locked", HOUR, HOUR))
            .await
            .unwrap();
        let mut locker = sqlx::PgConnection::connect(&database_url()).await.unwrap();
        let lock = format!(
            "BEGIN; SELECT 1 FROM {} WHERE key = '{}' FOR UPDATE",
            t.store.table(),
            key.as_str()
        );
        sqlx::raw_sql(AssertSqlSafe(lock))
            .execute(&mut locker)
            .await
            .unwrap();
        Self {
            _locker: locker,
            t,
            key,
        }
    }

    async fn update(&self) -> (Result<(), StoreError>, Duration) {
        let started = Instant::now();
        let r = record(None, b"new", HOUR, HOUR).with_version(2);
        let result = self.t.store.update(&self.key, 1, &r).await;
        (result, started.elapsed())
    }
}

/// With the server-side timeouts, the server ends a statement stuck on a
/// row lock at the `lock_timeout` (400 ms for a 500 ms operation timeout),
/// before the client's timer: `55P03` is the store's timeout error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_ends_a_lock_wait_first_and_it_is_a_timeout() {
    let locked = Locked::new(
        common::builder(&unique("lockt")).operation_timeout(OPERATION_TIMEOUT),
        options("spg_lockt"),
    )
    .await;
    let (result, took) = locked.update().await;
    let err = result.unwrap_err();
    let StoreError::Unavailable(source) = &err else {
        panic!("{err:?}");
    };
    let timed_out = source
        .downcast_ref::<session_core::TimedOut>()
        .expect("a TimedOut");
    assert_eq!(
        (timed_out.operation(), timed_out.after()),
        ("update", OPERATION_TIMEOUT)
    );
    println!("update on a locked row: lock_timeout answered after {took:?}");
    assert!(
        took >= Duration::from_millis(400) && took < OPERATION_TIMEOUT,
        "{took:?}"
    );
}

/// A `statement_timeout` of the server (here one of the application's own,
/// the store's turned off) is the store's timeout error too: `57014`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_is_a_timeout() {
    let options = options("spg_stmt").options([("statement_timeout", "200ms")]);
    let locked = Locked::new(
        common::builder(&unique("stmt"))
            .operation_timeout(OPERATION_TIMEOUT)
            .server_timeouts(false),
        options,
    )
    .await;
    let (result, took) = locked.update().await;
    let err = result.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    println!("update on a locked row: statement_timeout answered after {took:?}");
    assert!(took < Duration::from_millis(450), "{took:?}");
}

/// Without any server-side timeout, a statement the client gives up on
/// keeps running on the server; its connection is closed, not returned to
/// the pool, so the pool goes on serving other sessions at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_statement_does_not_hold_its_pool_slot() {
    let app = unique("spg_aband");
    let locked = Locked::new(
        common::builder(&unique("aband"))
            .max_connections(2)
            .operation_timeout(Duration::from_millis(300))
            .server_timeouts(false),
        options(&app),
    )
    .await;
    let store = &locked.t.store;
    let show: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(show, "0", "the server default, no lock timeout");
    let other = key();
    store
        .create(&other, &record(None, b"other", HOUR, HOUR))
        .await
        .unwrap();
    // Twice as many stuck calls as the pool has connections.
    for _ in 0..2 {
        let (a, b) = tokio::join!(locked.update(), locked.update());
        for (result, took) in [a, b] {
            assert!(result.unwrap_err().is_timeout());
            assert!(took < Duration::from_millis(300) + SLACK, "{took:?}");
        }
    }
    let admin = PgPool::connect(&database_url()).await.unwrap();
    let waiting = waiting_backends(&admin, &app).await;
    println!("abandoned statements still waiting on the server: {waiting}");
    assert_eq!(waiting, 4, "the server runs them until the lock is gone");
    for _ in 0..20 {
        let started = Instant::now();
        assert!(store.load(&other).await.unwrap().is_some());
        assert!(started.elapsed() < Duration::from_millis(300));
    }
    assert!(store.pool().size() <= 2);
    admin.close().await;
}

/// Every connection of the store carries the server-side timeouts derived
/// from its operation timeout (`SHOW` through the store's own pool), on
/// `connect`, `connect_with` and `connect_lazy`; none without an operation
/// timeout or with them turned off (the server's defaults stay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_connections_carry_the_server_timeouts() {
    async fn settings(store: &PostgresStore) -> Vec<(String, String)> {
        // Every connection of the pool at once.
        let mut held = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..POOL {
            let mut conn = store.pool().acquire().await.unwrap();
            let statement: String = sqlx::query_scalar("SHOW statement_timeout")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            let lock: String = sqlx::query_scalar("SHOW lock_timeout")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            seen.push((statement, lock));
            held.push(conn);
        }
        seen
    }
    let mut plain = sqlx::PgConnection::connect(&database_url()).await.unwrap();
    let default_statement: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&mut plain)
        .await
        .unwrap();
    let default_lock: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(&mut plain)
        .await
        .unwrap();
    plain.close().await.unwrap();
    let defaults = (default_statement, default_lock);
    let want =
        |statement: &str, lock: &str| vec![(statement.to_owned(), lock.to_owned()); POOL as usize];
    let url = database_url();
    let builder = || PostgresStore::builder().max_connections(POOL);

    let store = builder()
        .operation_timeout(OPERATION_TIMEOUT)
        .connect(&url)
        .await
        .unwrap();
    assert_eq!(settings(&store).await, want("450ms", "400ms"));
    store.close().await;

    let store = builder().connect_with(options("spg_show")).await.unwrap();
    assert_eq!(
        settings(&store).await,
        want("4500ms", "4s"),
        "the default 5 s"
    );
    store.close().await;

    let store = builder()
        .operation_timeout(Duration::from_secs(2))
        .connect_lazy(&url)
        .unwrap();
    assert_eq!(settings(&store).await, want("1800ms", "1600ms"));
    store.close().await;

    let store = builder()
        .operation_timeout(None)
        .connect(&url)
        .await
        .unwrap();
    assert_eq!(settings(&store).await, want(&defaults.0, &defaults.1));
    store.close().await;

    let store = builder()
        .server_timeouts(false)
        .connect(&url)
        .await
        .unwrap();
    assert_eq!(settings(&store).await, want(&defaults.0, &defaults.1));
    store.close().await;

    // A pool of the application's, built with the same options.
    let b = builder().operation_timeout(OPERATION_TIMEOUT);
    let pool = session_postgres::sqlx::postgres::PgPoolOptions::new()
        .max_connections(POOL)
        .connect_with(b.apply_server_timeouts(url.parse().unwrap()))
        .await
        .unwrap();
    let store = b.build(pool).unwrap();
    assert_eq!(settings(&store).await, want("450ms", "400ms"));
    store.close().await;
}
