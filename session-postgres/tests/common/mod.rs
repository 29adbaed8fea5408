//! Shared test setup: which PostgreSQL to test against, and scratch tables
//! that are dropped when the test is done with them.
//!
//! The server is, in order:
//! 1. `DATABASE_URL` when set;
//! 2. the project default `postgres://postgres@127.0.0.1:5432/test` when
//!    something listens there (`scripts/services.sh` starts it);
//! 3. a PostgreSQL container started with testcontainers when a Docker
//!    engine answers (one container named `session-postgres-test`, reused
//!    by later runs: remove it with `docker rm -f session-postgres-test`);
//!
//! and otherwise the test fails, saying how to provide one.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use session_core::store::{CreateOptions, Created};
use session_core::{
    SessionRecord, SessionStore, SessionSummary, StorageKey, StoreResult, Timestamp,
};
use session_postgres::{PostgresStore, PostgresStoreBuilder};

/// The project's default test database.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The schema every scratch table of the tests lives in.
pub const SCHEMA: &str = "session_postgres_test";

const HOW_TO: &str = "no PostgreSQL server for the tests: set DATABASE_URL \
    (e.g. postgres://postgres@127.0.0.1:5432/test), or run `eval \"$(scripts/services.sh)\"` \
    from the workspace root to start a local one, or start a Docker engine for the \
    testcontainers fallback";

/// The URL of the test server (see the module docs). Panics with
/// instructions when there is none.
pub fn database_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(resolve_url).clone()
}

fn resolve_url() -> String {
    if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        return url;
    }
    let local: SocketAddr = "127.0.0.1:5432".parse().unwrap();
    if TcpStream::connect_timeout(&local, Duration::from_secs(1)).is_ok() {
        return DEFAULT_URL.to_owned();
    }
    if docker_configured() {
        // SyncRunner drives its own runtime: start it off the test's.
        match std::thread::spawn(start_container).join() {
            Ok(Ok(url)) => return url,
            Ok(Err(e)) => panic!("{HOW_TO} (starting a PostgreSQL container failed: {e})"),
            Err(_) => panic!("{HOW_TO} (starting a PostgreSQL container panicked)"),
        }
    }
    panic!("{HOW_TO}");
}

fn docker_configured() -> bool {
    std::env::var_os("DOCKER_HOST").is_some()
        || std::path::Path::new("/var/run/docker.sock").exists()
}

fn start_container() -> Result<String, String> {
    use testcontainers::runners::SyncRunner;
    use testcontainers::{ImageExt, ReuseDirective};
    use testcontainers_modules::postgres::Postgres;

    let container = Postgres::default()
        .with_host_auth()
        .with_db_name("test")
        .with_container_name("session-postgres-test")
        .with_reuse(ReuseDirective::Always)
        .start()
        .map_err(|e| e.to_string())?;
    let host = container.get_host().map_err(|e| e.to_string())?;
    let port = container
        .get_host_port_ipv4(5432)
        .map_err(|e| e.to_string())?;
    // Reused containers outlive this handle by design.
    std::mem::forget(container);
    Ok(format!("postgres://postgres@{host}:{port}/test"))
}

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
        let store = builder
            .connect(&database_url())
            .await
            .unwrap_or_else(|e| panic!("{e}\n{HOW_TO}"));
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

#[async_trait]
impl SessionStore for Scratch {
    async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
        self.store.create(key, record).await
    }
    async fn create_with(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Created> {
        self.store.create_with(key, record, options).await
    }
    async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>> {
        self.store.load(key).await
    }
    async fn update(&self, key: &StorageKey, v: u64, record: &SessionRecord) -> StoreResult<()> {
        self.store.update(key, v, record).await
    }
    async fn touch(&self, key: &StorageKey, at: Timestamp, idle: Timestamp) -> StoreResult<()> {
        self.store.touch(key, at, idle).await
    }
    async fn delete(&self, key: &StorageKey) -> StoreResult<()> {
        self.store.delete(key).await
    }
    async fn list_user(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
        self.store.list_user(user_id).await
    }
    async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
        self.store.delete_user(user_id).await
    }
    async fn delete_expired(&self) -> StoreResult<u64> {
        self.store.delete_expired().await
    }
}

/// Statements that drop everything the migrations create for table `name`
/// in [`SCHEMA`]: the table, its moved-keys table and its functions.
pub fn drop_statements(name: &str) -> Vec<String> {
    let mut v = vec![format!(
        "DROP TABLE IF EXISTS \"{SCHEMA}\".\"{name}\", \"{SCHEMA}\".\"{name}_moved\""
    )];
    for function in ["create_with", "delete", "delete_user"] {
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
