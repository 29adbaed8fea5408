//! [`PostgresStore`]: the [`SessionStore`] implementation.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use session_core::expiry::Batch;
use session_core::store::{CreateOptions, Created};
use session_core::{
    ErrorChain, ExpiryTask, LimitStrategy, SessionRecord, SessionStore, SessionSummary, StorageKey,
    StoreError, StoreResult, Timestamp,
};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Row};
use time::OffsetDateTime;

use crate::builder::PostgresStoreBuilder;
use crate::cleanup;
use crate::error::{is_dead_connection, store_error, PgError, SetupError};
use crate::ident::TableName;
use crate::migrate;
use crate::migrate::code;
use crate::skew::{SkewMonitor, DATABASE_CLOCK_SQL};
use crate::sql::Statements;
use session_core::ClockSkew;

/// A session store on a PostgreSQL table, through a sqlx connection pool.
///
/// Cheap to clone; clones share the pool. Every operation is one SQL
/// statement (one round trip, a statement prepared once per connection);
/// `create_with`, `delete` and `delete_user` are one call each of a
/// PL/pgSQL function (see the [crate docs](crate#lifecycle-and-locking)).
/// Every expiry decision uses the server's clock (`now()`), so a record
/// stops loading at its deadline exactly, whether or not a clean-up has run.
/// The deadlines themselves come from the application's clock: the store
/// measures how far the two are apart ([`clock_skew`](Self::clock_skew),
/// see [`crate::skew`]).
///
/// Its connections carry a server-side `statement_timeout` and
/// `lock_timeout` derived from the
/// [operation timeout](PostgresStoreBuilder::operation_timeout)
/// ([`ServerTimeouts`](crate::ServerTimeouts)), and a connection whose
/// statement the store abandoned is closed, never reused: a row another
/// client keeps locked fails the calls that need it, as timeouts, and no
/// others.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use session_core::SessionManager;
/// use session_postgres::PostgresStore;
///
/// let store = PostgresStore::connect("postgres://app@localhost/app").await?;
/// store.migrate().await?;
/// let cleanup = store.spawn_cleanup(Duration::from_secs(300));
/// let manager = SessionManager::new(store);
/// // ... serve requests ...
/// cleanup.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pool: PgPool,
    table: TableName,
    sql: Statements,
    operation_timeout: Option<Duration>,
    cleanup_batch_size: u32,
    max_record_bytes: usize,
    skew: SkewMonitor,
    /// This store, for the background clock-skew checks a call starts.
    me: Weak<Inner>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the pool: its connect options hold the password.
        f.debug_struct("PostgresStore")
            .field("table", &self.inner.table)
            .field("pool_size", &self.inner.pool.size())
            .field("operation_timeout", &self.inner.operation_timeout)
            .field("clock_skew", &self.inner.skew.latest())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// A builder for a store: table, pool and timeouts.
    pub fn builder() -> PostgresStoreBuilder {
        PostgresStoreBuilder::new()
    }

    /// Connects to `url` with the default settings (table `sessions`).
    /// Shorthand for `PostgresStore::builder().connect(url)`.
    ///
    /// # Errors
    ///
    /// [`SetupError`] if the URL is malformed or the server does not answer.
    pub async fn connect(url: &str) -> Result<Self, SetupError> {
        PostgresStoreBuilder::new().connect(url).await
    }

    pub(crate) fn from_parts(
        pool: PgPool,
        table: TableName,
        operation_timeout: Option<Duration>,
        cleanup_batch_size: u32,
        max_record_bytes: usize,
        skew: SkewMonitor,
    ) -> Self {
        Self {
            inner: Arc::new_cyclic(|me| Inner {
                sql: Statements::new(&table),
                pool,
                table,
                operation_timeout,
                cleanup_batch_size,
                max_record_bytes,
                skew,
                me: me.clone(),
            }),
        }
    }

    /// The connection pool.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The sessions table.
    #[must_use]
    pub fn table(&self) -> &TableName {
        &self.inner.table
    }

    /// Creates or upgrades the sessions table (and its schema, if
    /// configured); returns how many migrations ran (0 when up to date).
    ///
    /// Safe to call at every start-up and from several instances at once:
    /// all pending migrations run in one transaction under an advisory lock
    /// (see the [`crate::migrate`] module).
    ///
    /// # Errors
    ///
    /// [`SetupError::MigrationFailed`] if the role may not create the table
    /// or schema; [`SetupError::Migrate`] if the server is unreachable.
    pub async fn migrate(&self) -> Result<u32, SetupError> {
        migrate::run(&self.inner.pool, &self.inner.table).await
    }

    /// Spawns an [`ExpiryTask`] on the current Tokio runtime that deletes
    /// expired rows every `period` (at least
    /// [`MIN_CLEANUP_PERIOD`](crate::cleanup::MIN_CLEANUP_PERIOD), 10 ms),
    /// in batches of
    /// [`cleanup_batch_size`](PostgresStoreBuilder::cleanup_batch_size)
    /// rows, one statement each, until a batch comes back short. A failed
    /// batch is logged and retried next period.
    ///
    /// Several instances may each run one: batches skip rows another
    /// instance is deleting. The task ends once every clone of the store is
    /// dropped, and after its current batch when the returned handle is
    /// dropped or [`ExpiryTask::shutdown`] is called.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    #[must_use = "the clean-up task stops when its handle is dropped"]
    pub fn spawn_cleanup(&self, period: Duration) -> ExpiryTask {
        cleanup::spawn(Arc::downgrade(&self.inner), period)
    }

    /// Closes the pool: in-flight operations finish, later ones fail with
    /// [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    /// The latest measurement of the database's clock against the
    /// application's ([`clock`](PostgresStoreBuilder::clock)), or `None`
    /// before one has succeeded. See [`crate::skew`] for when the store
    /// measures; [`measure_clock_skew`](Self::measure_clock_skew) measures
    /// now.
    ///
    /// A cheap read of the value the store keeps (no round trip); clones
    /// share it, and concurrent measurements leave the one that finished
    /// last.
    #[must_use]
    pub fn clock_skew(&self) -> Option<ClockSkew> {
        self.inner.skew.latest()
    }

    /// Measures the database's clock against the application's now, with
    /// one statement (`SELECT clock_timestamp()`, one round trip on a
    /// pooled connection, under the operation timeout), and records it:
    /// [`clock_skew`](Self::clock_skew) returns it afterwards, a skew
    /// beyond [`max_clock_skew`](PostgresStoreBuilder::max_clock_skew) is
    /// logged as a warning (target `session_postgres`, with `offset_ms`),
    /// and the next automatic measurement is a whole
    /// [interval](PostgresStoreBuilder::clock_skew_check_interval) away.
    ///
    /// Safe to call concurrently with anything; each call measures on its
    /// own.
    ///
    /// # Errors
    ///
    /// As any store operation: [`StoreError::Unavailable`] when the server
    /// cannot be reached or does not answer within the operation timeout
    /// (named `"measure_clock_skew"`). A skew, however large, is not an
    /// error.
    pub async fn measure_clock_skew(&self) -> StoreResult<ClockSkew> {
        self.inner.measure_clock_skew().await
    }
}

/// Whether a statement may run twice with the same effect and answer: the
/// only ones [`Inner::run`] retries after a dead connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Statement {
    /// Reads, and writes that set absolute values or delete.
    Idempotent,
    /// Inserts and compare-and-set updates: a second run could answer
    /// `AlreadyExists` or `Conflict` for the first run's own write.
    NotIdempotent,
}

/// A pooled connection lent to one statement (through [`lend`]), which
/// either runs to completion with it (answered, or failed: the connection
/// goes back to the pool, which drops it instead if it is broken) or is
/// abandoned.
///
/// A statement is abandoned when its future is dropped while it runs: the
/// operation timeout ran out, or the caller dropped the call (a cancelled
/// request). The server may still be running that statement (waiting for a
/// row lock, say), so the connection cannot take another one until the
/// server answers. Returned to the pool, sqlx would test it with a ping
/// that waits for exactly that answer, its pool slot taken meanwhile: a
/// locked row would take one slot per call that touched it, then the whole
/// pool. So an abandoned connection is taken out of the pool and its
/// socket closed, at once: its slot is free for a new connection right
/// away, and the server's backend ends as soon as its statement does (it
/// notices the closed socket when it answers). Until then the server has
/// one backend more than the pool counts, and a write may still be
/// applied (as with any timeout, the caller cannot know).
///
/// The server-side `statement_timeout` and `lock_timeout` the store sets
/// ([`server_timeouts`](PostgresStoreBuilder::server_timeouts)) bound how
/// long that lasts (no statement outlives its `statement_timeout`, a
/// little less than the operation timeout), and usually end a stuck
/// statement before the client gives up, with an error on a connection
/// that stays usable. Closing is for the calls whose time ran out while
/// they waited for a connection, for stores without those settings, and
/// for callers that give up.
struct Lease {
    conn: Option<PoolConnection<Postgres>>,
    /// Set by the [`Lent`] future that owns this lease when it is dropped
    /// before completing.
    abandoned: Arc<AtomicBool>,
}

impl std::ops::Deref for Lease {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.conn
            .as_ref()
            .expect("a lease holds its connection until dropped")
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.abandoned.load(Ordering::Acquire) {
            tracing::debug!(target: "session_postgres", "closing a connection whose statement was abandoned");
            // Out of the pool, its slot free at once; dropping the
            // connection closes the socket. (Not a graceful close: over
            // TLS, sqlx's waits for the busy server to say something.)
            drop(conn.detach());
        } else {
            // Back to the pool (after sqlx's ping), or closed if broken.
            drop(conn);
        }
    }
}

/// The future of one statement on a [`Lease`]: dropped before it
/// completes, it marks its lease abandoned before the lease itself is
/// dropped (a `Drop` implementation runs before the fields are dropped).
struct Lent<Fut> {
    statement: Pin<Box<Fut>>,
    abandoned: Arc<AtomicBool>,
    done: bool,
}

impl<Fut: Future> Future for Lent<Fut> {
    type Output = Fut::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Fut::Output> {
        let output = self.statement.as_mut().poll(cx);
        if output.is_ready() {
            self.done = true;
        }
        output
    }
}

impl<Fut> Drop for Lent<Fut> {
    fn drop(&mut self) {
        if !self.done {
            self.abandoned.store(true, Ordering::Release);
        }
    }
}

/// Runs `f` on `conn` through a [`Lease`].
fn lend<T, F, Fut>(conn: PoolConnection<Postgres>, f: &F) -> Lent<Fut>
where
    F: Fn(Lease) -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let abandoned = Arc::new(AtomicBool::new(false));
    let lease = Lease {
        conn: Some(conn),
        abandoned: abandoned.clone(),
    };
    Lent {
        statement: Box::pin(f(lease)),
        abandoned,
        done: false,
    }
}

impl Inner {
    /// Runs one statement on a pooled connection, under the operation
    /// timeout (which covers both attempts). When the statement is
    /// [`Statement::Idempotent`] and the first attempt failed because
    /// its connection was dead ([`is_dead_connection`]: closed, reset,
    /// terminated by the server; not an error the server answered the
    /// statement with, not a timeout), the statement runs exactly once more,
    /// on a connection from [`Inner::live_connection`].
    ///
    /// `f` gets the connection as a [`Lease`]: if the operation timeout
    /// runs out (or the caller drops this future) while the statement
    /// runs, the connection is closed, not returned to the pool.
    async fn run<T, F, Fut>(&self, op: &'static str, statement: Statement, f: F) -> StoreResult<T>
    where
        F: Fn(Lease) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        self.check_clock_skew_if_due();
        let attempt = async {
            let conn = self.pool.acquire().await?;
            match lend(conn, &f).await {
                Err(e) if statement == Statement::Idempotent && is_dead_connection(&e) => {
                    // The driver's error: no URL, no password, no key.
                    tracing::debug!(target: "session_postgres", op, error = %e, "connection was dead; retrying once on a live connection");
                    lend(self.live_connection().await?, &f).await
                }
                result => result,
            }
        };
        let result = match self.operation_timeout {
            None => attempt.await,
            Some(timeout) => match tokio::time::timeout(timeout, attempt).await {
                Ok(result) => result,
                Err(_) => return Err(StoreError::timed_out(op, timeout)),
            },
        };
        result.map_err(|e| store_error(op, e, self.operation_timeout))
    }

    /// A connection known to work, for the retry after a dead one: what
    /// killed that one (a server restart, a failover, terminated backends)
    /// usually killed every idle connection of the pool, and the pool hands
    /// out idle connections without checking them (unless
    /// `test_before_acquire` is on). So each connection is pinged first; a
    /// dead one is dropped from the pool, and the next one tried, until one
    /// answers: a pooled connection that survived, or a new one. At most
    /// the pool's size plus one tries, all within the operation timeout.
    async fn live_connection(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let tries = self.pool.options().get_max_connections().saturating_add(1);
        let mut last = None;
        for _ in 0..tries {
            let mut conn = self.pool.acquire().await?;
            match sqlx::Connection::ping(&mut *conn).await {
                Ok(()) => return Ok(conn),
                Err(e) if is_dead_connection(&e) => {
                    // Out of the pool at once (its slot is free for a new
                    // connection); dropping it closes the socket.
                    drop(conn.detach());
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(sqlx::Error::PoolTimedOut))
    }

    /// One measurement of the clock skew (see
    /// [`PostgresStore::measure_clock_skew`]), recorded. No automatic
    /// measurement starts while it runs; after a failure, the next one is
    /// due within a minute.
    pub(crate) async fn measure_clock_skew(&self) -> StoreResult<ClockSkew> {
        self.skew.postpone();
        let clock = self.skew.clock();
        let measured = self
            .run(
                "measure_clock_skew",
                Statement::Idempotent,
                |mut conn| async move {
                    let before = clock.now();
                    let sent = Instant::now();
                    let row = sqlx::raw_sql(DATABASE_CLOCK_SQL)
                        .fetch_one(&mut *conn)
                        .await?;
                    let round_trip = sent.elapsed();
                    let database: i64 = row.try_get(0)?;
                    Ok(ClockSkew::from_round_trip(
                        before,
                        round_trip,
                        Timestamp::from_unix_millis(database),
                    ))
                },
            )
            .await;
        match measured {
            Ok(skew) => {
                self.skew.record(skew, &self.table);
                Ok(skew)
            }
            Err(e) => {
                self.skew.retry_soon();
                Err(e)
            }
        }
    }

    /// Starts a measurement of the clock skew in the background when one
    /// is due (see [`crate::skew`]): the call that finds it due does not
    /// wait for it. A failure is logged at `debug` and tried again within a
    /// minute; it never fails a call.
    fn check_clock_skew_if_due(&self) {
        if !self.skew.claim_due() {
            return;
        }
        let (Some(inner), Ok(runtime)) = (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            self.skew.retry_soon();
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = inner.measure_clock_skew().await {
                tracing::debug!(target: "session_postgres", error = %ErrorChain(&e), "measuring the clock skew failed; trying again later");
            }
        });
    }

    /// The limit counts the encoded record, as on every backend.
    fn check_size(&self, record: &SessionRecord) -> StoreResult<()> {
        let size = session_core::codec::layout::HEADER_LEN
            + record.user_id.as_deref().map_or(0, str::len)
            + record
                .label
                .as_deref()
                .map_or(0, |l| session_core::codec::layout::LABEL_LEN_SIZE + l.len())
            + record.data.len();
        if size > self.max_record_bytes {
            return Err(StoreError::TooLarge {
                size,
                limit: self.max_record_bytes,
            });
        }
        Ok(())
    }

    /// Deletes one batch of expired rows and one of expired move entries
    /// (one statement). The batch counts the rows only (move entries are
    /// not sessions); it is partial when either came back full, so another
    /// may find more.
    pub(crate) async fn delete_expired_batch(&self) -> StoreResult<Batch> {
        let sql = &self.sql.delete_expired;
        let batch = i64::from(self.cleanup_batch_size);
        let (records, moves): (i64, i64) = self
            .run(
                "delete_expired",
                Statement::Idempotent,
                |mut conn| async move {
                    sqlx::query_as(AssertSqlSafe(sql.clone()))
                        .bind(batch)
                        .fetch_one(&mut *conn)
                        .await
                },
            )
            .await?;
        let removed = records.cast_unsigned();
        Ok(if records >= batch || moves >= batch {
            Batch::partial(removed)
        } else {
            Batch::last(removed)
        })
    }
}

/// Earliest instant stored exactly: 0001-01-01T00:00:00Z.
const MIN_DB_MILLIS: i64 = -62_135_596_800_000;
/// Latest instant stored exactly: 9999-12-31T23:59:59.999Z.
const MAX_DB_MILLIS: i64 = 253_402_300_799_999;

/// A [`Timestamp`] as a `timestamptz` value. Instants outside years
/// 1..=9999 are clamped, which keeps their order relative to any real "now"
/// (a deadline at the end of time stays in the future).
fn to_db(t: Timestamp) -> OffsetDateTime {
    let ms = t.as_unix_millis().clamp(MIN_DB_MILLIS, MAX_DB_MILLIS);
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn from_db(t: OffsetDateTime) -> Timestamp {
    Timestamp::from_offset_date_time(t)
}

fn has_nul(s: &str) -> bool {
    s.as_bytes().contains(&0)
}

type RecordRow = (
    Vec<u8>,
    i64,
    Option<String>,
    OffsetDateTime,
    OffsetDateTime,
    OffsetDateTime,
    OffsetDateTime,
    Option<String>,
);

type SummaryRow = (
    String,
    OffsetDateTime,
    OffsetDateTime,
    OffsetDateTime,
    OffsetDateTime,
    Option<String>,
);

#[async_trait]
impl SessionStore for PostgresStore {
    async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
        let inner = &*self.inner;
        inner.check_size(record)?;
        if has_nul(key.as_str()) {
            return Err(StoreError::backend(PgError::NulInKey));
        }
        if record.user_id.as_deref().is_some_and(has_nul) {
            return Err(StoreError::backend(PgError::NulInUserId));
        }
        if record.label.as_deref().is_some_and(has_nul) {
            return Err(StoreError::backend(PgError::NulInLabel));
        }
        let sql = &inner.sql.create;
        let done = inner
            .run("create", Statement::NotIdempotent, |mut conn| async move {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(key.as_str())
                    .bind(&record.data[..])
                    .bind(record.version.cast_signed())
                    .bind(record.user_id.as_deref())
                    .bind(to_db(record.created_at))
                    .bind(to_db(record.last_access))
                    .bind(to_db(record.idle_deadline))
                    .bind(to_db(record.absolute_deadline))
                    .bind(record.label.as_deref())
                    .execute(&mut *conn)
                    .await
            })
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists);
        }
        Ok(())
    }

    /// One call of the `create_with` function (one round trip): see the
    /// crate docs, "Lifecycle and locking". With default options this is
    /// [`create`](SessionStore::create), which takes no lock.
    async fn create_with(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Created> {
        if options.replaces.is_none() && options.limit.is_none() {
            return self.create(key, record).await.map(|()| Created::default());
        }
        let inner = &*self.inner;
        inner.check_size(record)?;
        if has_nul(key.as_str()) {
            return Err(StoreError::backend(PgError::NulInKey));
        }
        if record.user_id.as_deref().is_some_and(has_nul) {
            return Err(StoreError::backend(PgError::NulInUserId));
        }
        if record.label.as_deref().is_some_and(has_nul) {
            return Err(StoreError::backend(PgError::NulInLabel));
        }
        if options
            .replaces
            .as_ref()
            .is_some_and(|r| has_nul(r.key.as_str()))
        {
            return Err(StoreError::NotFound);
        }
        let old = options.replaces.as_ref();
        let max = options
            .limit
            .map(|l| i64::try_from(l.max.get()).unwrap_or(i64::MAX));
        let evict = options
            .limit
            .is_some_and(|l| matches!(l.strategy, LimitStrategy::EvictOldest));
        let sql = &inner.sql.create_with;
        let row: Option<(i32, Vec<String>)> = inner
            .run(
                "create_with",
                Statement::NotIdempotent,
                |mut conn| async move {
                    let result = sqlx::query_as(AssertSqlSafe(sql.clone()))
                        .bind(key.as_str())
                        .bind(&record.data[..])
                        .bind(record.version.cast_signed())
                        .bind(record.user_id.as_deref())
                        .bind(to_db(record.created_at))
                        .bind(to_db(record.last_access))
                        .bind(to_db(record.idle_deadline))
                        .bind(to_db(record.absolute_deadline))
                        .bind(old.map(|r| r.key.as_str()))
                        .bind(old.map(|r| r.version.cast_signed()))
                        .bind(max)
                        .bind(evict)
                        .bind(record.label.as_deref())
                        .fetch_one(&mut *conn)
                        .await;
                    match result {
                        Ok(row) => Ok(Some(row)),
                        // A plain create took the key after the function's
                        // check; the function rolled everything back.
                        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
                        Err(e) => Err(e),
                    }
                },
            )
            .await?;
        let Some((result, evicted)) = row else {
            return Err(StoreError::AlreadyExists);
        };
        match result {
            code::OK => Ok(Created::with_evicted(
                evicted.iter().map(|k| StorageKey::from_stored(k)).collect(),
            )),
            code::NOT_FOUND => Err(StoreError::NotFound),
            code::CONFLICT => Err(StoreError::Conflict),
            code::ALREADY_EXISTS => Err(StoreError::AlreadyExists),
            code::LIMIT_REACHED => Err(StoreError::UserLimitReached {
                max: options.limit.map_or(0, |l| l.max.get()),
            }),
            other => Err(StoreError::backend(PgError::UnexpectedResult {
                op: "create_with",
                code: other,
            })),
        }
    }

    async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>> {
        if has_nul(key.as_str()) {
            return Ok(None);
        }
        let inner = &*self.inner;
        let sql = &inner.sql.load;
        let row: Option<RecordRow> = inner
            .run("load", Statement::Idempotent, |mut conn| async move {
                sqlx::query_as(AssertSqlSafe(sql.clone()))
                    .bind(key.as_str())
                    .fetch_optional(&mut *conn)
                    .await
            })
            .await?;
        Ok(row.map(
            |(data, version, user_id, created, last_access, idle, absolute, label)| {
                SessionRecord::new(
                    Bytes::from(data),
                    user_id,
                    from_db(created),
                    from_db(idle),
                    from_db(absolute),
                )
                .with_last_access(from_db(last_access))
                .with_version(version.cast_unsigned())
                .with_label(label)
            },
        ))
    }

    async fn update(
        &self,
        key: &StorageKey,
        expected_version: u64,
        record: &SessionRecord,
    ) -> StoreResult<()> {
        let inner = &*self.inner;
        inner.check_size(record)?;
        if has_nul(key.as_str()) {
            return Err(StoreError::NotFound);
        }
        let sql = &inner.sql.update;
        let done = inner
            .run("update", Statement::NotIdempotent, |mut conn| async move {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(key.as_str())
                    .bind(expected_version.cast_signed())
                    .bind(&record.data[..])
                    .bind(record.version.cast_signed())
                    .bind(to_db(record.created_at))
                    .bind(to_db(record.last_access))
                    .bind(to_db(record.idle_deadline))
                    .bind(to_db(record.absolute_deadline))
                    .execute(&mut *conn)
                    .await
            })
            .await?;
        if done.rows_affected() > 0 {
            return Ok(());
        }
        // Nothing written: say why. (A second statement, so the answer may
        // be a moment newer than the update; either answer was true then.)
        let sql = &inner.sql.live;
        let live = inner
            .run("update", Statement::Idempotent, |mut conn| async move {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(key.as_str())
                    .fetch_optional(&mut *conn)
                    .await
            })
            .await?;
        Err(if live.is_some() {
            StoreError::Conflict
        } else {
            StoreError::NotFound
        })
    }

    async fn touch(
        &self,
        key: &StorageKey,
        last_access: Timestamp,
        idle_deadline: Timestamp,
    ) -> StoreResult<()> {
        if has_nul(key.as_str()) {
            return Err(StoreError::NotFound);
        }
        let inner = &*self.inner;
        let sql = &inner.sql.touch;
        let done = inner
            .run("touch", Statement::Idempotent, |mut conn| async move {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(key.as_str())
                    .bind(to_db(last_access))
                    .bind(to_db(idle_deadline))
                    .execute(&mut *conn)
                    .await
            })
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn delete(&self, key: &StorageKey) -> StoreResult<()> {
        if has_nul(key.as_str()) {
            return Ok(());
        }
        let inner = &*self.inner;
        let sql = &inner.sql.delete;
        inner
            .run("delete", Statement::Idempotent, |mut conn| async move {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(key.as_str())
                    .execute(&mut *conn)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn list_user_sessions(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
        if has_nul(user_id) {
            return Ok(Vec::new());
        }
        let inner = &*self.inner;
        let sql = &inner.sql.list_user_sessions;
        let rows: Vec<SummaryRow> = inner
            .run(
                "list_user_sessions",
                Statement::Idempotent,
                |mut conn| async move {
                    sqlx::query_as(AssertSqlSafe(sql.clone()))
                        .bind(user_id)
                        .fetch_all(&mut *conn)
                        .await
                },
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(key, created, last_access, idle, absolute, label)| {
                SessionSummary::new(
                    StorageKey::from_stored(&key),
                    from_db(created),
                    from_db(last_access),
                    from_db(idle),
                    from_db(absolute),
                )
                .with_label(label)
            })
            .collect())
    }

    async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
        if has_nul(user_id) {
            return Ok(0);
        }
        let inner = &*self.inner;
        let sql = &inner.sql.delete_user;
        let live: i64 = inner
            .run(
                "delete_user",
                Statement::NotIdempotent,
                |mut conn| async move {
                    sqlx::query_scalar(AssertSqlSafe(sql.clone()))
                        .bind(user_id)
                        .fetch_one(&mut *conn)
                        .await
                },
            )
            .await?;
        Ok(live.cast_unsigned())
    }

    /// Deletes expired rows in batches of
    /// [`cleanup_batch_size`](PostgresStoreBuilder::cleanup_batch_size),
    /// one short statement each, until a batch comes back short. Each batch
    /// also purges up to as many expired move entries (see the crate docs,
    /// "Lifecycle and locking"); only records are counted.
    async fn delete_expired(&self) -> StoreResult<u64> {
        let inner = &*self.inner;
        let mut total = 0;
        loop {
            let batch = inner.delete_expired_batch().await?;
            total += batch.removed();
            if !batch.has_more() {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_to_the_millisecond() {
        for ms in [0, 1, -1, 1_700_000_000_123, MIN_DB_MILLIS, MAX_DB_MILLIS] {
            let t = Timestamp::from_unix_millis(ms);
            assert_eq!(from_db(to_db(t)), t, "{ms}");
        }
    }

    #[test]
    fn out_of_range_timestamps_clamp_in_order() {
        let end = from_db(to_db(Timestamp::from_unix_millis(i64::MAX)));
        let start = from_db(to_db(Timestamp::from_unix_millis(i64::MIN)));
        assert_eq!(end.as_unix_millis(), MAX_DB_MILLIS);
        assert_eq!(start.as_unix_millis(), MIN_DB_MILLIS);
        assert!(start < Timestamp::now() && Timestamp::now() < end);
    }

    #[test]
    fn nul_detection() {
        assert!(has_nul("a\0b"));
        assert!(!has_nul("Zoë-名前"));
    }
}
