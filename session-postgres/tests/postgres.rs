//! PostgreSQL-specific behaviour beyond the conformance suite: migrations,
//! configured names, exact expiry before clean-up, batched clean-up and the
//! background task, limits and hostile input.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{database_url, unique, Scratch};
use session_core::conformance::record;
use std::num::NonZeroUsize;

use session_core::store::CreateOptions;
use session_core::{
    LimitStrategy, SessionStore, StorageKey, StoreError, Timestamp, UserSessionLimit,
};
use session_postgres::{PgError, PostgresStore, SetupError};

const HOUR: u64 = 3_600_000;

use session_test_support::storage_key as key;

async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cond().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_run_once_in_a_new_schema() {
    let schema = unique("spg_mig");
    let mut stores = Vec::new();
    for _ in 0..6 {
        stores.push(
            PostgresStore::builder()
                .schema(&schema)
                .table("sessions")
                .max_connections(1)
                .connect(&database_url())
                .await
                .unwrap(),
        );
    }
    let runs: Vec<_> = stores
        .iter()
        .map(|s| {
            let s = s.clone();
            tokio::spawn(async move { s.migrate().await })
        })
        .collect();
    let mut applied = 0;
    for r in runs {
        applied += r.await.unwrap().expect("concurrent migrate failed");
    }
    assert_eq!(
        applied,
        session_postgres::migrate::LATEST_VERSION as u32,
        "each migration runs once in all"
    );
    assert_eq!(stores[0].migrate().await.unwrap(), 0, "not idempotent");

    let pool = stores[0].pool();
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 AND tablename = 'sessions' \
         ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            "sessions_expiry_idx",
            "sessions_pkey",
            "sessions_user_id_idx"
        ]
    );
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = 'sessions' ORDER BY ordinal_position",
    )
    .bind(&schema)
    .fetch_all(pool)
    .await
    .unwrap();
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    let functions: Vec<String> = sqlx::query_scalar(
        "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = $1 ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(pool)
    .await
    .unwrap();
    // Two overloads of create_with: schema 3's, kept for instances not
    // upgraded yet, and schema 4's, which takes the label.
    assert_eq!(
        functions,
        [
            "sessions_create_with",
            "sessions_create_with",
            "sessions_delete",
            "sessions_delete_user"
        ]
    );
    let moved: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 \
         AND tablename = 'sessions_moved' ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(moved, ["sessions_moved_idx", "sessions_moved_pkey"]);
    assert_eq!(
        names,
        [
            "key",
            "data",
            "version",
            "user_id",
            "created_at",
            "last_access",
            "idle_deadline",
            "absolute_deadline",
            "expires_at",
            "expiry_bucket",
            "label"
        ]
    );
    assert!(columns.contains(&("label".to_owned(), "text".to_owned())));
    assert!(columns
        .iter()
        .filter(|(n, _)| n.ends_with("_at") || n.ends_with("deadline") || n == "last_access")
        .all(|(_, t)| t == "timestamp with time zone"));

    // The store works in its schema, and nothing leaked into `public`.
    let k = key();
    stores[0]
        .create(&k, &record(Some("u"), b"x", HOUR, HOUR))
        .await
        .unwrap();
    assert!(stores[1].load(&k).await.unwrap().is_some());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn hostile_names_are_refused_before_any_connection() {
    for (schema, table) in [
        (None, "sessions\"; DROP TABLE users; --"),
        (Some("public; DROP SCHEMA x"), "sessions"),
        (Some("Public"), "sessions"),
        (None, ""),
    ] {
        let mut b = PostgresStore::builder().table(table);
        if let Some(s) = schema {
            b = b.schema(s);
        }
        // Port 1 never answers: an error other than InvalidName would mean
        // the builder tried to connect with the hostile name.
        let err = b
            .connect("postgres://nobody@127.0.0.1:1/x")
            .await
            .unwrap_err();
        assert!(matches!(err, SetupError::InvalidName(_)), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_rows_stay_until_cleanup_but_never_show() {
    let t = Scratch::new(&unique("exp")).await;
    let s = &t.store;
    let (k, user) = (key(), unique("user"));
    s.create(&k, &record(Some(&user), b"old", 300, HOUR))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(t.expired_rows().await, 1, "the row should still be stored");
    assert!(s.load(&k).await.unwrap().is_none());
    assert!(s.list_user_sessions(&user).await.unwrap().is_empty());
    assert!(matches!(
        s.touch(&k, Timestamp::now(), Timestamp::now()).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.delete_user(&user).await.unwrap(),
        0,
        "counted an expired one"
    );

    // An expired row does not block a new record under its key, and the new
    // record's user (none) replaces the old one in the index.
    s.create(&k, &record(Some(&user), b"old", 300, HOUR))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.create(&k, &record(None, b"new", HOUR, HOUR))
        .await
        .unwrap();
    let got = s.load(&k).await.unwrap().unwrap();
    assert_eq!((&got.data[..], got.user_id), (&b"new"[..], None));
    assert!(s.list_user_sessions(&user).await.unwrap().is_empty());
    assert_eq!(t.rows().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_expired_works_through_many_batches() {
    let t = Scratch::with(common::builder(&unique("batch")).cleanup_batch_size(7)).await;
    let s = &t.store;
    let past = Timestamp::now().saturating_sub(Duration::from_secs(1));
    for i in 0..30u8 {
        let mut r = record(Some("u"), &[i], HOUR, HOUR);
        r.idle_deadline = past;
        s.create(&key(), &r).await.unwrap();
    }
    let live: Vec<StorageKey> = (0..5).map(|_| key()).collect();
    for k in &live {
        s.create(k, &record(Some("u"), b"live", HOUR, HOUR))
            .await
            .unwrap();
    }
    assert_eq!(t.rows().await, 35);
    assert_eq!(s.delete_expired().await.unwrap(), 30);
    assert_eq!(t.rows().await, 5);
    assert_eq!(s.delete_expired().await.unwrap(), 0);
    assert_eq!(s.list_user_sessions("u").await.unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_task_deletes_expired_rows_and_stops() {
    let t = Scratch::with(common::builder(&unique("task")).cleanup_batch_size(3)).await;
    let s = &t.store;
    let expired = |n: u8| {
        let mut r = record(None, &[n], HOUR, HOUR);
        r.absolute_deadline = Timestamp::now().saturating_sub(Duration::from_millis(1));
        r
    };
    for i in 0..10 {
        s.create(&key(), &expired(i)).await.unwrap();
    }
    let live = key();
    s.create(&live, &record(None, b"live", HOUR, HOUR))
        .await
        .unwrap();

    let task = s.spawn_cleanup(Duration::from_millis(50));
    wait_for("the clean-up task to delete expired rows", || async {
        t.expired_rows().await == 0
    })
    .await;
    assert!(s.load(&live).await.unwrap().is_some());
    assert!(!task.is_finished());
    tokio::time::timeout(Duration::from_secs(10), task.shutdown())
        .await
        .expect("shutdown() did not return");

    // Stopped means stopped: new expired rows stay.
    s.create(&key(), &expired(99)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.expired_rows().await, 1);

    // Dropping the handle stops it too.
    drop(s.spawn_cleanup(Duration::from_millis(50)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.expired_rows().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_task_ends_with_the_store() {
    let store = common::builder("unused_never_created")
        .connect(&database_url())
        .await
        .unwrap();
    // The table does not exist: rounds fail, are logged, and the task
    // carries on until the store goes away.
    let task = store.spawn_cleanup(Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!task.is_finished(), "a failing round ended the task");
    drop(store);
    wait_for("the task to end with its store", || {
        let done = task.is_finished();
        async move { done }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_records_are_refused_and_nothing_is_written() {
    let t = Scratch::with(common::builder(&unique("big")).max_record_size(1024)).await;
    let s = &t.store;
    let k = key();
    // The limit counts the encoded record: header, user id and data.
    let header = session_core::codec::layout::HEADER_LEN;
    let err = s
        .create(&k, &record(None, &vec![7; 1025 - header], HOUR, HOUR))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TooLarge {
                size: 1025,
                limit: 1024
            }
        ),
        "{err:?}"
    );
    assert!(s.load(&k).await.unwrap().is_none());
    let ok = record(None, &vec![7; 1024 - header], HOUR, HOUR);
    s.create(&k, &ok).await.unwrap();
    let mut next = record(None, &[8; 2048], HOUR, HOUR);
    next.version = 2;
    assert!(matches!(
        s.update(&k, 1, &next).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(s.load(&k).await.unwrap().unwrap(), ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_typed_errors_not_panics() {
    let t = Scratch::new(&unique("nul")).await;
    let s = &t.store;
    let err = s
        .create(&key(), &record(Some("a\0b"), b"x", HOUR, HOUR))
        .await
        .unwrap_err();
    match &err {
        StoreError::Backend(source) => assert!(matches!(
            source.downcast_ref::<PgError>(),
            Some(PgError::NulInUserId)
        )),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.rows().await, 0);
    let labelled = record(Some("u"), b"x", HOUR, HOUR).with_label(Some("a\0b".into()));
    for options in [
        CreateOptions::default(),
        CreateOptions::default().with_limit(session_core::UserSessionLimit {
            max: std::num::NonZeroUsize::new(3).unwrap(),
            strategy: session_core::LimitStrategy::RejectNew,
        }),
    ] {
        let err = s
            .create_with(&key(), &labelled, &options)
            .await
            .unwrap_err();
        match &err {
            StoreError::Backend(source) => assert!(matches!(
                source.downcast_ref::<PgError>(),
                Some(PgError::NulInLabel)
            )),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(t.rows().await, 0);
    assert!(s.list_user_sessions("a\0b").await.unwrap().is_empty());
    assert_eq!(s.delete_user("a\0b").await.unwrap(), 0);
    let bad = StorageKey::from_stored("k\0");
    assert!(s.load(&bad).await.unwrap().is_none());
    assert!(matches!(
        s.touch(&bad, Timestamp::now(), Timestamp::now()).await,
        Err(StoreError::NotFound)
    ));
    s.delete(&bad).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_versions_and_deadlines_are_stored() {
    let t = Scratch::new(&unique("extreme")).await;
    let s = &t.store;
    let k = key();
    let mut r = record(Some("u"), b"x", HOUR, HOUR);
    r.version = u64::MAX;
    r.absolute_deadline = Timestamp::from_unix_millis(i64::MAX);
    s.create(&k, &r).await.unwrap();
    let got = s
        .load(&k)
        .await
        .unwrap()
        .expect("far-future deadline expired");
    assert_eq!(got.version, u64::MAX);
    assert_eq!(got.data, Bytes::from_static(b"x"));
    let mut next = got.clone();
    next.version = 0;
    s.update(&k, u64::MAX, &next).await.unwrap();
    assert!(matches!(
        s.update(&k, u64::MAX, &next).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(s.load(&k).await.unwrap().unwrap().version, 0);
}

#[tokio::test]
async fn debug_output_hides_the_password() {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str("postgres://app@db.invalid/app")
        .unwrap()
        .password("s3cr3t");
    let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy_with(options);
    let store = common::builder("sessions").build(pool).unwrap();
    let debug = format!("{store:?}");
    assert!(!debug.contains("s3cr3t"), "{debug}");
    assert!(debug.contains("session_postgres_test"), "{debug}");
}

/// The table's `(n_tup_upd, n_tup_hot_upd)` once the statistics show at
/// least `updates` updates (statistics are flushed asynchronously).
async fn update_counts(store: &PostgresStore, updates: i64) -> (i64, i64) {
    let pool = store.pool();
    let table = store.table().to_string();
    let mut last = (0, 0);
    for _ in 0..200 {
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(pool)
            .await
            .unwrap();
        last = sqlx::query_as(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = $1::regclass",
        )
        .bind(&table)
        .fetch_one(pool)
        .await
        .unwrap();
        if last.0 >= updates {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("statistics never showed {updates} updates: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_touches_are_heap_only_updates() {
    // One connection: every statement, and the stats flush, on it.
    let t = Scratch::with(common::builder(&unique("hot")).max_connections(1)).await;
    let s = &t.store;
    let k = key();
    let mut current = record(Some("hot-user"), b"v0", HOUR, 2 * HOUR);
    s.create(&k, &current).await.unwrap();
    for i in 0..40u64 {
        let mut next = record(Some("hot-user"), format!("v{i}").as_bytes(), HOUR, 2 * HOUR);
        next.absolute_deadline = current.absolute_deadline;
        next.version = current.version + 1;
        s.update(&k, current.version, &next).await.unwrap();
        current = next;
        let now = Timestamp::now();
        s.touch(&k, now, now.saturating_add(Duration::from_millis(HOUR)))
            .await
            .unwrap();
    }
    let (updates, hot) = update_counts(s, 80).await;
    assert_eq!(updates, 80);
    // A write that crosses a 10-minute expiry bucket is not HOT; in a test
    // this short, at most one does.
    assert!(hot >= 70, "{hot} of {updates} updates were HOT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_commits_asynchronously_without_changing_the_connection() {
    let t = Scratch::with(common::builder(&unique("touch")).max_connections(1)).await;
    let s = &t.store;
    let show = || async {
        sqlx::query_scalar::<_, String>("SHOW synchronous_commit")
            .fetch_one(s.pool())
            .await
            .unwrap()
    };
    let before = show().await;
    let k = key();
    s.create(&k, &record(None, b"x", HOUR, 2 * HOUR))
        .await
        .unwrap();
    let (at, idle) = (
        Timestamp::from_unix_millis(Timestamp::now().as_unix_millis() + 5),
        Timestamp::from_unix_millis(Timestamp::now().as_unix_millis() + HOUR as i64 + 7),
    );
    s.touch(&k, at, idle).await.unwrap();
    assert_eq!(show().await, before, "the touch's setting leaked");
    let got = s.load(&k).await.unwrap().unwrap();
    assert_eq!((got.last_access, got.idle_deadline), (at, idle));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_from_schema_version_1_keeps_sessions_and_cleanup() {
    let name = unique("v1");
    let store = common::builder(&name)
        .connect(&database_url())
        .await
        .unwrap();
    let pool = store.pool().clone();
    let t = store.table().to_string();
    let schema = common::SCHEMA;
    // The table and bookkeeping exactly as version 1 left them.
    for sql in [
        format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""),
        format!(
            "CREATE TABLE {t} (key text COLLATE \"C\" PRIMARY KEY, data bytea NOT NULL, \
             version bigint NOT NULL, user_id text COLLATE \"C\", created_at timestamptz NOT NULL, \
             last_access timestamptz NOT NULL, idle_deadline timestamptz NOT NULL, \
             absolute_deadline timestamptz NOT NULL, expires_at timestamptz GENERATED ALWAYS AS \
             (least(idle_deadline, absolute_deadline)) STORED)"
        ),
        format!("CREATE INDEX \"{name}_user_id_idx\" ON {t} (user_id) WHERE user_id IS NOT NULL"),
        format!("CREATE INDEX \"{name}_expires_at_idx\" ON {t} (expires_at)"),
        format!(
            "CREATE TABLE IF NOT EXISTS \"{schema}\".session_postgres_migrations (\
             table_name text NOT NULL, version integer NOT NULL, description text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (table_name, version))"
        ),
        format!(
            "INSERT INTO \"{schema}\".session_postgres_migrations VALUES ('{name}', 1, 'v1', now())"
        ),
        format!(
            "INSERT INTO {t} VALUES ('{}', '\\x6c697665', 3, 'u', now(), now(), \
             now() + interval '1 hour', now() + interval '2 hours')",
            "a".repeat(64)
        ),
        format!(
            "INSERT INTO {t} VALUES ('{}', '\\x6f6c64', 1, 'u', now() - interval '2 hours', \
             now() - interval '2 hours', now() - interval '1 hour', now() + interval '1 hour')",
            "b".repeat(64)
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }

    assert_eq!(
        store.migrate().await.unwrap(),
        3,
        "only versions 2, 3 and 4 run"
    );
    let live = StorageKey::from_stored(&"a".repeat(64));
    let got = store.load(&live).await.unwrap().unwrap();
    assert_eq!((&got.data[..], got.version), (&b"live"[..], 3));
    assert_eq!(store.list_user_sessions("u").await.unwrap().len(), 1);
    assert_eq!(store.delete_expired().await.unwrap(), 1);
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 AND tablename = $2 \
         ORDER BY 1",
    )
    .bind(schema)
    .bind(&name)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            format!("{name}_expiry_idx"),
            format!("{name}_pkey"),
            format!("{name}_user_id_idx")
        ]
    );
    drop_scratch(&pool, &name).await;
}

/// Drops what the migrations created for table `name`, and its bookkeeping.
async fn drop_scratch(pool: &sqlx::PgPool, name: &str) {
    let schema = common::SCHEMA;
    let mut statements = common::drop_statements(name);
    statements.push(format!(
        "DELETE FROM \"{schema}\".session_postgres_migrations WHERE table_name = '{name}'"
    ));
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_from_schema_version_2_in_place_enables_the_lifecycle() {
    let name = unique("v2");
    let store = common::builder(&name)
        .connect(&database_url())
        .await
        .unwrap();
    let pool = store.pool().clone();
    let t = store.table().to_string();
    let schema = common::SCHEMA;
    // The table and bookkeeping exactly as version 2 left them, with a
    // live session in it.
    for sql in [
        format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""),
        format!(
            "CREATE TABLE {t} (key text COLLATE \"C\" PRIMARY KEY, data bytea NOT NULL, \
             version bigint NOT NULL, user_id text COLLATE \"C\", created_at timestamptz NOT NULL, \
             last_access timestamptz NOT NULL, idle_deadline timestamptz NOT NULL, \
             absolute_deadline timestamptz NOT NULL, expires_at timestamptz GENERATED ALWAYS AS \
             (least(idle_deadline, absolute_deadline)) STORED, expiry_bucket timestamptz \
             GENERATED ALWAYS AS (date_bin('10 minutes', least(idle_deadline, absolute_deadline), \
             '2000-01-01 00:00:00+00')) STORED) WITH (fillfactor = 90)"
        ),
        format!("CREATE INDEX \"{name}_user_id_idx\" ON {t} (user_id) WHERE user_id IS NOT NULL"),
        format!("CREATE INDEX \"{name}_expiry_idx\" ON {t} (expiry_bucket)"),
        format!(
            "CREATE TABLE IF NOT EXISTS \"{schema}\".session_postgres_migrations (\
             table_name text NOT NULL, version integer NOT NULL, description text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (table_name, version))"
        ),
        format!(
            "INSERT INTO \"{schema}\".session_postgres_migrations VALUES \
             ('{name}', 1, 'v1', now()), ('{name}', 2, 'v2', now())"
        ),
        format!(
            "INSERT INTO {t} VALUES ('{}', '\\x6c697665', 3, 'u2', now(), now(), \
             now() + interval '1 hour', now() + interval '2 hours')",
            "a".repeat(64)
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }

    assert_eq!(
        store.migrate().await.unwrap(),
        2,
        "only versions 3 and 4 run"
    );
    assert_eq!(store.migrate().await.unwrap(), 0, "not idempotent");
    // The existing session rotates, and a logout with its old key follows
    // the move.
    let old = StorageKey::from_stored(&"a".repeat(64));
    let new = key();
    let options = CreateOptions::default().replacing(old.clone(), 3);
    store
        .create_with(&new, &record(Some("u2"), b"n", HOUR, HOUR), &options)
        .await
        .unwrap();
    assert!(store.load(&old).await.unwrap().is_none());
    assert!(store.load(&new).await.unwrap().is_some());
    store.delete(&old).await.unwrap();
    assert!(store.load(&new).await.unwrap().is_none());
    assert!(store.list_user_sessions("u2").await.unwrap().is_empty());
    drop_scratch(&pool, &name).await;
}

/// A table at schema version 3 (no label column, bookkeeping up to 3,
/// the 12-parameter `create_with` only) with a live session: `migrate()`
/// adds the nullable column in place, the old session loads and lists
/// without a label, an instance still on version 3 (calling the old
/// function) keeps working, and labels round-trip afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_from_schema_version_3_adds_the_label_column() {
    let name = unique("v3");
    let store = common::builder(&name)
        .connect(&database_url())
        .await
        .unwrap();
    let pool = store.pool().clone();
    let t = store.table().to_string();
    let schema = common::SCHEMA;
    assert_eq!(
        store.migrate().await.unwrap(),
        session_postgres::migrate::LATEST_VERSION as u32
    );
    // Back to what version 3 left.
    for sql in [
        format!("ALTER TABLE {t} DROP COLUMN label"),
        format!(
            "DROP FUNCTION \"{schema}\".\"{name}_create_with\"(text, bytea, bigint, text, \
             timestamptz, timestamptz, timestamptz, timestamptz, text, bigint, bigint, boolean, text)"
        ),
        format!(
            "DELETE FROM \"{schema}\".session_postgres_migrations \
             WHERE table_name = '{name}' AND version = 4"
        ),
        format!(
            "INSERT INTO {t} (key, data, version, user_id, created_at, last_access, \
             idle_deadline, absolute_deadline) VALUES ('{}', '\\x6f6c64', 2, 'u3', now(), now(), \
             now() + interval '1 hour', now() + interval '2 hours')",
            "c".repeat(64)
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }

    assert_eq!(store.migrate().await.unwrap(), 1, "only version 4 runs");
    assert_eq!(store.migrate().await.unwrap(), 0, "not idempotent");
    let old = StorageKey::from_stored(&"c".repeat(64));
    let got = store.load(&old).await.unwrap().unwrap();
    assert_eq!((&got.data[..], got.label.as_deref()), (&b"old"[..], None));
    let listed = store.list_user_sessions("u3").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].label, None);

    // An instance still on version 3 calls the 12-parameter function.
    let by_old_instance = key();
    let (code, _): (i32, Vec<String>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT code, evicted FROM \"{schema}\".\"{name}_create_with\"($1, $2, 1, 'u3', now(), \
         now(), now() + interval '1 hour', now() + interval '1 hour', NULL, NULL, 5, false)"
    )))
    .bind(by_old_instance.as_str())
    .bind(&b"o"[..])
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        store.load(&by_old_instance).await.unwrap().unwrap().label,
        None
    );

    // This version rotates the old session with a label.
    let new = key();
    let labelled = record(Some("u3"), b"n", HOUR, HOUR).with_label(Some("Phone".into()));
    store
        .create_with(
            &new,
            &labelled,
            &CreateOptions::default().replacing(old.clone(), 2),
        )
        .await
        .unwrap();
    assert_eq!(
        store.load(&new).await.unwrap().unwrap().label.as_deref(),
        Some("Phone")
    );
    let mut labels: Vec<Option<String>> = store
        .list_user_sessions("u3")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.label)
        .collect();
    labels.sort();
    assert_eq!(labels, vec![None, Some("Phone".to_owned())]);
    drop_scratch(&pool, &name).await;
}

/// Rows of the moved-keys table of `t`.
async fn moved_rows(t: &Scratch) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".\"{}_moved\"",
        common::SCHEMA,
        t.store.table().table()
    )))
    .fetch_one(t.store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_purges_expired_moves_in_batches() {
    let t = Scratch::with(common::builder(&unique("mv")).cleanup_batch_size(3)).await;
    let s = &t.store;
    // 7 rotations of short-lived records, 1 of a long-lived one.
    for i in 0..8u8 {
        let (old, new) = (key(), key());
        let idle = if i == 0 { HOUR } else { 300 };
        s.create(&old, &record(None, &[i], idle, HOUR))
            .await
            .unwrap();
        let options = CreateOptions::default().replacing(old, 1);
        s.create_with(&new, &record(None, &[i], HOUR, HOUR), &options)
            .await
            .unwrap();
    }
    assert_eq!(moved_rows(&t).await, 8);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // No record expired: the moves alone keep the batches going.
    assert_eq!(s.delete_expired().await.unwrap(), 0);
    assert_eq!(moved_rows(&t).await, 1);
    assert_eq!(t.rows().await, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_key_is_followed_only_until_its_own_deadline() {
    let t = Scratch::new(&unique("mvdl")).await;
    let s = &t.store;
    let (old, new) = (key(), key());
    s.create(&old, &record(Some("mu"), b"o", 300, HOUR))
        .await
        .unwrap();
    let options = CreateOptions::default().replacing(old.clone(), 1);
    s.create_with(&new, &record(Some("mu"), b"n", HOUR, HOUR), &options)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.delete(&old).await.unwrap();
    assert!(
        s.load(&new).await.unwrap().is_some(),
        "a move past the old record's deadline was followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_calls_refuse_other_isolation_levels() {
    let name = unique("iso");
    let t = Scratch::new(&name).await;
    let options = database_url()
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .options([("default_transaction_isolation", "repeatable read")]);
    let rr = common::builder(&name).connect_with(options).await.unwrap();
    let user = unique("isou");
    let limit = UserSessionLimit {
        max: NonZeroUsize::new(2).unwrap(),
        strategy: LimitStrategy::RejectNew,
    };
    let k = key();
    let err = rr
        .create_with(
            &k,
            &record(Some(&user), b"x", HOUR, HOUR),
            &CreateOptions::default().with_limit(limit),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Backend(_)) && format!("{err:?}").contains("READ COMMITTED"),
        "{err:?}"
    );
    assert!(t.store.load(&k).await.unwrap().is_none());
    assert!(rr.delete(&k).await.is_err());
    assert!(rr.delete_user(&user).await.is_err());
    rr.close().await;
}

/// The builder shape every backend shares: `connect_lazy` contacts no
/// server (an unreachable one fails the first call, typed), `connect`
/// checks it; `operation_timeout` takes a duration as on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_lazy_contacts_no_server_until_the_first_call() {
    let nowhere = format!(
        "postgres://postgres@127.0.0.1:{}/test",
        session_test_support::process::spare_port()
    );
    let builder = || {
        PostgresStore::builder()
            .connect_timeout(Duration::from_millis(300))
            .operation_timeout(Duration::from_secs(1))
    };
    let lazy = builder()
        .connect_lazy(&nowhere)
        .expect("no connection made");
    assert!(matches!(
        lazy.load(&key()).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        builder().connect(&nowhere).await,
        Err(session_postgres::SetupError::Connect(_))
    ));
    // On the real server, a lazily built store works once migrated.
    let live = builder()
        .schema(common::SCHEMA)
        .table(unique("lazy"))
        .connect_lazy(&common::database_url())
        .unwrap();
    live.migrate().await.unwrap();
    let k = key();
    live.create(&k, &record(None, b"lazy", HOUR, HOUR))
        .await
        .unwrap();
    assert_eq!(&live.load(&k).await.unwrap().unwrap().data[..], b"lazy");
    let drop = format!("DROP TABLE {}", live.table());
    sqlx::query(sqlx::AssertSqlSafe(drop))
        .execute(live.pool())
        .await
        .unwrap();
}

/// A statement that waits longer than the operation timeout (here on a
/// table lock another transaction holds) fails with the timeout every
/// store reports: `Unavailable` with a `TimedOut` source naming the
/// operation and the timeout. The store works again once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_past_the_operation_timeout_is_a_timeout() {
    let limit = Duration::from_millis(300);
    let t = Scratch::with(common::builder(&unique("slow")).operation_timeout(limit)).await;
    let s = &t.store;
    let k = key();
    s.create(&k, &record(None, b"x", HOUR, HOUR)).await.unwrap();
    let mut tx = s.pool().begin().await.unwrap();
    let lock = format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", s.table());
    sqlx::query(sqlx::AssertSqlSafe(lock))
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = s.load(&k).await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let StoreError::Unavailable(source) = &err else {
        panic!("{err:?}");
    };
    let timed_out = source.downcast_ref::<session_core::TimedOut>().unwrap();
    assert_eq!((timed_out.operation(), timed_out.after()), ("load", limit));
    tx.rollback().await.unwrap();
    assert!(s.load(&k).await.unwrap().is_some());
}

/// The privileges the README lists for an application role are enough for
/// every operation and for `migrate()` once the schema is current: `USAGE`
/// on the schema, `SELECT, INSERT, UPDATE, DELETE` on the sessions and
/// moved-keys tables, `SELECT` on the bookkeeping table (`EXECUTE` on the
/// functions is PostgreSQL's default for everyone). No `CREATE`, no
/// ownership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_with_the_documented_grants_runs_every_operation() {
    let name = unique("grants");
    let t = Scratch::new(&name).await;
    let admin = t.store.pool();
    let role = unique("spg_role");
    let schema = common::SCHEMA;
    for statement in [
        format!("CREATE ROLE {role} LOGIN PASSWORD 'grants-test'"),
        format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.{name}, {schema}.{name}_moved TO {role}"
        ),
        format!("GRANT SELECT ON {schema}.session_postgres_migrations TO {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(admin)
            .await
            .unwrap();
    }
    let options = database_url()
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .username(&role)
        .password("grants-test");
    let app = common::builder(&name).connect_with(options).await.unwrap();
    let result = async {
        assert_eq!(app.migrate().await?, 0);
        let user = unique("grants_user");
        let (a, b) = (key(), key());
        app.create(&a, &record(Some(&user), b"a", HOUR, HOUR))
            .await?;
        let loaded = app.load(&a).await?.expect("created");
        app.update(
            &a,
            loaded.version,
            &loaded.clone().with_version(loaded.version + 1),
        )
        .await?;
        let now = Timestamp::now();
        app.touch(&a, now, now.saturating_add(Duration::from_secs(60)))
            .await?;
        let limit = UserSessionLimit {
            max: NonZeroUsize::new(2).unwrap(),
            strategy: LimitStrategy::EvictOldest,
        };
        let options = CreateOptions::default()
            .replacing(a.clone(), loaded.version + 1)
            .with_limit(limit);
        app.create_with(&b, &record(Some(&user), b"b", HOUR, HOUR), &options)
            .await?;
        assert_eq!(app.list_user_sessions(&user).await?.len(), 1);
        app.delete(&a).await?;
        assert_eq!(app.delete_user(&user).await?, 0);
        app.delete_expired().await?;
        app.measure_clock_skew().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    app.close().await;
    for statement in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(admin)
            .await
            .unwrap();
    }
    if let Err(e) = result {
        panic!("{}", session_core::ErrorChain(&*e));
    }
}
