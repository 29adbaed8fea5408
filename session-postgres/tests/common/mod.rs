//! Shared test setup: scratch tables on the test server (found by
//! `session_test_support::servers`: `DATABASE_URL`, else the local
//! default, else a container), dropped when the test is done with them.
#![allow(dead_code, unused_imports)]

use std::time::Duration;

use session_core::conformance::{HookedStore, StoreHooks};
use session_postgres::{PostgresStore, PostgresStoreBuilder};
pub use session_test_support::servers::postgres_url as database_url;

/// The schema every scratch table of the tests lives in.
pub const SCHEMA: &str = "session_postgres_test";

/// A builder for tests: the scratch schema, table `table`, small pool.
pub fn builder(table: &str) -> PostgresStoreBuilder {
    PostgresStore::builder()
        .schema(SCHEMA)
        .table(table)
        .max_connections(4)
}

/// A store on its own freshly migrated table, dropped (table and
/// bookkeeping row) when the last clone of the returned wrapper goes.
pub struct Scratch {
    pub store: PostgresStore,
}

impl Scratch {
    /// A migrated scratch table named `table` in [`SCHEMA`].
    pub async fn new(table: &str) -> Self {
        Self::with(builder(table)).await
    }

    /// A migrated scratch table configured by `builder`.
    pub async fn with(builder: PostgresStoreBuilder) -> Self {
        Self::at(builder, &database_url()).await
    }

    /// A migrated scratch table configured by `builder`, on the server at
    /// `url`.
    pub async fn at(builder: PostgresStoreBuilder, url: &str) -> Self {
        let store = builder
            .connect(url)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL failed: {e}"));
        store.migrate().await.expect("migrate");
        Self { store }
    }

    /// Number of rows in the table, live or expired.
    pub async fn rows(&self) -> i64 {
        self.count("true").await
    }

    /// Number of expired rows still in the table.
    pub async fn expired_rows(&self) -> i64 {
        self.count("expires_at <= now()").await
    }

    async fn count(&self, filter: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {} WHERE {filter}",
            self.store.table()
        )))
        .fetch_one(self.store.pool())
        .await
        .expect("count rows")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        let store = self.store.clone();
        tokio::task::block_in_place(move || {
            handle.block_on(async move {
                let table = store.table();
                let forget = format!(
                    "DELETE FROM {}.session_postgres_migrations WHERE table_name = $1",
                    SCHEMA
                );
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    for drop in drop_statements(table.table().as_str()) {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                            .execute(store.pool())
                            .await;
                    }
                    let _ = sqlx::query(sqlx::AssertSqlSafe(forget))
                        .bind(table.table().as_str())
                        .execute(store.pool())
                        .await;
                })
                .await;
                store.close().await;
            });
        });
    }
}

impl std::ops::Deref for Scratch {
    type Target = PostgresStore;
    fn deref(&self) -> &PostgresStore {
        &self.store
    }
}

/// A scratch table lives as long as the store built over it: the
/// conformance factories hand out `HookedStore<PostgresStore, Scratch>`.
impl StoreHooks for Scratch {}

impl Scratch {
    /// This table's store, owning the table: dropped with the last clone.
    pub fn into_store(self) -> HookedStore<PostgresStore, Scratch> {
        HookedStore::new(self.store.clone(), self)
    }
}

/// Statements that drop everything the migrations create for table `name`
/// in [`SCHEMA`]: the table, its moved-keys table and its functions.
pub fn drop_statements(name: &str) -> Vec<String> {
    let mut v = vec![format!(
        "DROP TABLE IF EXISTS \"{SCHEMA}\".\"{name}\", \"{SCHEMA}\".\"{name}_moved\""
    )];
    // create_with has two overloads (schema 3 and 4): name each.
    let create_with = "text, bytea, bigint, text, timestamptz, timestamptz, timestamptz, \
                       timestamptz, text, bigint, bigint, boolean";
    for args in [create_with.to_owned(), format!("{create_with}, text")] {
        v.push(format!(
            "DROP FUNCTION IF EXISTS \"{SCHEMA}\".\"{name}_create_with\"({args})"
        ));
    }
    for function in ["delete", "delete_user"] {
        v.push(format!(
            "DROP FUNCTION IF EXISTS \"{SCHEMA}\".\"{name}_{function}\""
        ));
    }
    v
}

/// A table name unique to this process and call.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{nanos:x}_{n}", std::process::id())
}
