//! [`PostgresStoreBuilder`]: where the table lives, pool sizing and
//! timeouts, clean-up batch size and record size limit.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use session_core::redact::RedactedError;
use session_core::{Clock, ErrorChain, SystemClock};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::error::SetupError;
use crate::ident::{TableName, DEFAULT_TABLE};
use crate::skew::SkewMonitor;
use crate::store::PostgresStore;

/// Default [`PostgresStoreBuilder::acquire_timeout`].
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Default [`PostgresStoreBuilder::operation_timeout`].
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`PostgresStoreBuilder::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// Default [`PostgresStoreBuilder::max_clock_skew`].
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(2);
/// Default [`PostgresStoreBuilder::clock_skew_check_interval`].
pub const DEFAULT_CLOCK_SKEW_CHECK_INTERVAL: Duration = Duration::from_secs(600);
/// Default [`PostgresStoreBuilder::cleanup_batch_size`].
pub const DEFAULT_CLEANUP_BATCH_SIZE: u32 = 1_000;
/// Default [`PostgresStoreBuilder::max_record_size`]: 4 MiB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 4 << 20;
/// Largest accepted [`PostgresStoreBuilder::max_record_size`]: PostgreSQL
/// cannot store a `bytea` value of 1 GiB or more.
pub const MAX_RECORD_BYTES_LIMIT: usize = (1 << 30) - 1024;

/// Configures and builds a [`PostgresStore`].
///
/// ```no_run
/// # async fn run() -> Result<(), session_postgres::SetupError> {
/// use std::time::Duration;
/// use session_postgres::PostgresStore;
///
/// let store = PostgresStore::builder()
///     .schema("auth")
///     .table("web_sessions")
///     .max_connections(16)
///     .acquire_timeout(Duration::from_secs(2))
///     .connect("postgres://app@db.internal/app")
///     .await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct PostgresStoreBuilder {
    schema: Option<String>,
    table: String,
    max_connections: u32,
    min_connections: u32,
    acquire_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    test_before_acquire: bool,
    operation_timeout: Option<Duration>,
    server_timeouts: bool,
    cleanup_batch_size: u32,
    max_record_bytes: usize,
    clock: Arc<dyn Clock>,
    max_clock_skew: Duration,
    clock_skew_check_interval: Option<Duration>,
}

impl Default for PostgresStoreBuilder {
    fn default() -> Self {
        Self {
            schema: None,
            table: DEFAULT_TABLE.to_owned(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            min_connections: 0,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1_800)),
            test_before_acquire: false,
            operation_timeout: Some(DEFAULT_OPERATION_TIMEOUT),
            server_timeouts: true,
            cleanup_batch_size: DEFAULT_CLEANUP_BATCH_SIZE,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            clock: Arc::new(SystemClock),
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            clock_skew_check_interval: Some(DEFAULT_CLOCK_SKEW_CHECK_INTERVAL),
        }
    }
}

impl PostgresStoreBuilder {
    /// A builder with the defaults: table `sessions` on the `search_path`,
    /// 10 connections, 3 s acquire timeout, 5 s operation timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// The schema of the sessions table (created by
    /// [`PostgresStore::migrate`] if missing). Default: none, the table is
    /// found through the connection's `search_path`.
    ///
    /// Validated when the store is built: `[a-z_][a-z0-9_]*`, at most 63
    /// bytes, not starting with `pg_`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// The sessions table. Default: `sessions`.
    ///
    /// Validated when the store is built: `[a-z_][a-z0-9_]*`, at most 48
    /// bytes (index names derived from it must fit PostgreSQL's 63).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Largest number of pooled connections. Default: 10.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Connections the pool keeps open even when idle. Default: 0.
    pub fn min_connections(mut self, n: u32) -> Self {
        self.min_connections = n;
        self
    }

    /// How long an operation waits for a pooled connection (including
    /// connecting) before failing with [`StoreError::Unavailable`].
    /// Default: 3 s.
    ///
    /// [`StoreError::Unavailable`]: session_core::StoreError::Unavailable
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Close connections idle for longer than this. Default: 10 min.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Close connections older than this. Default: 30 min.
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    /// Ping each pooled connection before using it. Default: `false`.
    ///
    /// Off, every operation is one round trip. After the server restarts or
    /// ends connections, the first operation on a dead pooled connection
    /// fails with it; the idempotent ones are then retried by the store
    /// itself (see [`operation_timeout`](Self::operation_timeout)), so
    /// only `create`, `create_with`, `update`'s write and `delete_user` can
    /// fail that way, once per dead connection. On, dead connections are
    /// replaced before use at the price of a second round trip per
    /// operation.
    pub fn test_before_acquire(mut self, test: bool) -> Self {
        self.test_before_acquire = test;
        self
    }

    /// Upper bound on one operation (one statement, including waiting for a
    /// connection and the retry below), after which it fails with
    /// [`StoreError::timed_out`] (an [`StoreError::Unavailable`] for which
    /// [`StoreError::is_timeout`] is true); `None` waits as long as the
    /// driver does. Default: 5 s.
    ///
    /// What is retried, within this bound: when a statement fails because
    /// its connection was dead (closed, reset or ended by the server: a
    /// restart, `pg_terminate_backend`, an idle session timeout; not an
    /// error the server answered the statement with, not a timeout), it
    /// runs exactly once more, on a connection that has just answered a
    /// ping (pooled connections that do not answer are dropped, and the
    /// pool opens a new one if none does). Retried: `load`, `list_user_sessions`,
    /// `touch` (sets absolute values), `delete`, `delete_expired`'s batches
    /// (a batch committed just before its connection died then goes
    /// uncounted, its rows are gone either way) and the read that tells
    /// `update`'s `Conflict` from `NotFound`. Not
    /// retried, because the statement may have been committed before the
    /// connection died and a repeat would answer `AlreadyExists`,
    /// `Conflict` or a wrong count for a write that succeeded: `create`,
    /// `create_with`, `update`'s compare-and-set and `delete_user`; these
    /// fail with [`StoreError::Unavailable`]. A failure to get a connection
    /// at all is not retried either (the pool already retries connecting
    /// until the [acquire timeout](Self::acquire_timeout)).
    ///
    /// The server is told too: the connections this builder opens carry a
    /// `statement_timeout` and a `lock_timeout` a little under this
    /// timeout ([`ServerTimeouts::for_operation_timeout`]; turned off with
    /// [`server_timeouts`](Self::server_timeouts)), so a statement stuck
    /// on the server (on another client's row lock, say) is ended by the
    /// server before the client gives up, and its connection goes back to
    /// the pool clean. Those server answers (`57014`, `55P03`) are reported
    /// as the same [`StoreError::timed_out`]. A statement the client
    /// abandons anyway (its time ran out while it waited for a
    /// connection, or the caller dropped the call) has its connection
    /// closed, never handed out again while the server may still be
    /// running it. With `None`, nothing is set on the server: its own
    /// defaults apply.
    ///
    /// [`StoreError::Unavailable`]: session_core::StoreError::Unavailable
    /// [`StoreError::timed_out`]: session_core::StoreError::timed_out
    /// [`StoreError::is_timeout`]: session_core::StoreError::is_timeout
    pub fn operation_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.operation_timeout = timeout.into();
        self
    }

    /// Whether the connections this builder opens carry the server-side
    /// `statement_timeout` and `lock_timeout` derived from the
    /// [operation timeout](Self::operation_timeout)
    /// ([`ServerTimeouts::for_operation_timeout`]). Default: `true`; no
    /// effect without an operation timeout, nor on a pool given to
    /// [`build`](Self::build) (see
    /// [`apply_server_timeouts`](Self::apply_server_timeouts) for that).
    ///
    /// They are sent as startup parameters (the connection's `options`,
    /// `-c statement_timeout=… -c lock_timeout=…`), so they cost no round
    /// trip and override the same settings made with `ALTER ROLE` or
    /// `ALTER DATABASE`, or earlier in the URL's own `options`. Turn them
    /// off when something between the store and PostgreSQL refuses startup
    /// parameters it does not know (PgBouncer does, unless told to track or
    /// ignore them), and set both timeouts on the role instead. The store
    /// still closes a connection whose statement it abandoned.
    pub fn server_timeouts(mut self, on: bool) -> Self {
        self.server_timeouts = on;
        self
    }

    /// `options` with the server-side timeouts this builder's connections
    /// get (see [`server_timeouts`](Self::server_timeouts)) added to their
    /// startup parameters; `options` unchanged when there is no operation
    /// timeout or they are turned off.
    ///
    /// [`connect`](Self::connect), [`connect_with`](Self::connect_with)
    /// and [`connect_lazy`](Self::connect_lazy) do this themselves. For a
    /// pool of the application's given to [`build`](Self::build), build
    /// that pool's options through this to protect it the same way.
    pub fn apply_server_timeouts(&self, options: PgConnectOptions) -> PgConnectOptions {
        match self.operation_timeout.filter(|_| self.server_timeouts) {
            Some(timeout) => {
                let server = ServerTimeouts::for_operation_timeout(timeout);
                options.options([
                    ("statement_timeout", millis(server.statement_timeout)),
                    ("lock_timeout", millis(server.lock_timeout)),
                ])
            }
            None => options,
        }
    }

    /// Rows deleted per statement by
    /// [`delete_expired`](session_core::SessionStore::delete_expired), which
    /// repeats batches until none is full. Small batches keep row locks and
    /// WAL bursts short on a big table. Default: 1000.
    pub fn cleanup_batch_size(mut self, rows: u32) -> Self {
        self.cleanup_batch_size = rows;
        self
    }

    /// Largest record accepted by `create` and `update`, counted as on every
    /// backend: the encoded record (its fixed header of
    /// [`HEADER_LEN`](session_core::codec::layout::HEADER_LEN) bytes, the user
    /// id and the data). Larger records are refused with
    /// [`StoreError::TooLarge`] and nothing is written. Default: 4 MiB.
    ///
    /// [`StoreError::TooLarge`]: session_core::StoreError::TooLarge
    pub fn max_record_size(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// The former name of [`max_record_size`](Self::max_record_size).
    #[deprecated(
        note = "use max_record_size, which counts the encoded record as every backend does"
    )]
    pub fn max_record_bytes(self, bytes: usize) -> Self {
        self.max_record_size(bytes)
    }

    /// The application's clock, which the store compares with the
    /// database's (see [`crate::skew`]): the clock the deadlines in the
    /// stored records come from, normally the
    /// [`SessionManager`](session_core::SessionManager)'s. Default: the
    /// system clock, as the manager's.
    ///
    /// The store uses it for nothing else: every expiry decision is the
    /// database's `now()` against the stored deadlines.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The largest difference between the application's and the database's
    /// clocks that is not worth a warning. Default: 2 s.
    ///
    /// Each measurement beyond it (by more than its own
    /// [uncertainty](crate::ClockSkew::uncertainty)) is logged at `warn`
    /// (target `session_postgres`, fields `offset_ms`, `uncertainty_ms`,
    /// `max_clock_skew_ms`, `table`); operations are never refused because
    /// of a skew.
    pub fn max_clock_skew(mut self, max: Duration) -> Self {
        self.max_clock_skew = max;
        self
    }

    /// How often the store measures the clock skew by itself. Default:
    /// 10 min.
    ///
    /// With `Some(interval)`: [`connect`](Self::connect) and
    /// [`connect_with`](Self::connect_with) measure once before returning
    /// (a failure there is logged at `debug`, and a call a minute later
    /// tries again); a store from [`connect_lazy`](Self::connect_lazy) or
    /// [`build`](Self::build) measures when first used; after that, the
    /// first call once `interval` has passed since the last measurement
    /// starts one in the background (one statement on a pooled
    /// connection; the call does not wait for it), clean-up batches
    /// included. `None`: never by itself, only
    /// [`PostgresStore::measure_clock_skew`].
    pub fn clock_skew_check_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.clock_skew_check_interval = interval.into();
        self
    }

    /// How long connecting may take: sqlx bounds connecting by the
    /// [acquire timeout](Self::acquire_timeout), which this sets (the
    /// shared option name of every backend's builder).
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        self.acquire_timeout(timeout)
    }

    /// Connects a new pool to `url` (`postgres://user:password@host/db`,
    /// with any libpq-style parameters such as `sslmode=verify-full`) and
    /// builds the store. One connection is opened to check the server
    /// answers. Does not migrate: call [`PostgresStore::migrate`].
    ///
    /// # Errors
    ///
    /// [`SetupError`] for an invalid table name or setting, a malformed URL,
    /// or a server that does not answer within the acquire timeout or
    /// refuses the credentials. No error shows the URL's credentials.
    pub async fn connect(self, url: &str) -> Result<PostgresStore, SetupError> {
        let options = parse_url(url)?;
        self.connect_options(options, &[url]).await
    }

    /// Builds the store on a pool that connects on first use: no server is
    /// contacted here, and an unreachable one shows up as
    /// [`StoreError::Unavailable`](session_core::StoreError::Unavailable) on
    /// the first call (within the acquire timeout). Does not migrate.
    ///
    /// # Errors
    ///
    /// [`SetupError`] for an invalid table name or setting, or a malformed
    /// URL (shown without its credentials).
    pub fn connect_lazy(self, url: &str) -> Result<PostgresStore, SetupError> {
        let options = self.apply_server_timeouts(parse_url(url)?);
        let pool = self.pool_options()?.connect_lazy_with(options);
        self.build(pool)
    }

    /// Like [`connect`](Self::connect), with parsed connection options.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with(
        self,
        options: PgConnectOptions,
    ) -> Result<PostgresStore, SetupError> {
        self.connect_options(options, &[]).await
    }

    /// The pool settings of this builder, once they are checked.
    fn pool_options(&self) -> Result<PgPoolOptions, SetupError> {
        self.validate()?;
        if self.max_connections == 0 {
            return Err(SetupError::InvalidConfig(
                "max_connections must be at least 1",
            ));
        }
        Ok(PgPoolOptions::new()
            .max_connections(self.max_connections)
            .min_connections(self.min_connections.min(self.max_connections))
            .acquire_timeout(self.acquire_timeout)
            .idle_timeout(self.idle_timeout)
            .max_lifetime(self.max_lifetime)
            .test_before_acquire(self.test_before_acquire))
    }

    /// Connects the pool; `urls` are what the options were parsed from, so
    /// that their secrets are removed from errors wherever quoted.
    async fn connect_options(
        self,
        options: PgConnectOptions,
        urls: &[&str],
    ) -> Result<PostgresStore, SetupError> {
        let options = self.apply_server_timeouts(options);
        let pool = self
            .pool_options()?
            .connect_with(options)
            .await
            .map_err(|e| SetupError::Connect(RedactedError::with_url_secrets(e, urls)))?;
        let check_clock = self.clock_skew_check_interval.is_some();
        let store = self.build(pool)?;
        if check_clock {
            // Information only: after a failure, a call measures again
            // within a minute.
            if let Err(e) = store.inner.measure_clock_skew().await {
                tracing::debug!(target: "session_postgres", error = %ErrorChain(&e), "measuring the clock skew at connect failed");
            }
        }
        Ok(store)
    }

    /// Builds the store on an existing pool (shared with the application,
    /// say). The pool's own settings are used; the pool settings of this
    /// builder are ignored.
    ///
    /// # Errors
    ///
    /// [`SetupError`] for an invalid table name or setting.
    pub fn build(self, pool: PgPool) -> Result<PostgresStore, SetupError> {
        let table = self.validate()?;
        Ok(PostgresStore::from_parts(
            pool,
            table,
            self.operation_timeout,
            self.cleanup_batch_size,
            self.max_record_bytes,
            SkewMonitor::new(
                self.clock,
                self.max_clock_skew,
                self.clock_skew_check_interval,
            ),
        ))
    }

    fn validate(&self) -> Result<TableName, SetupError> {
        let table = TableName::new(self.schema.as_deref(), &self.table)?;
        if self.cleanup_batch_size == 0 {
            return Err(SetupError::InvalidConfig(
                "cleanup_batch_size must be at least 1",
            ));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > MAX_RECORD_BYTES_LIMIT {
            return Err(SetupError::InvalidConfig(
                "max_record_bytes must be between 1 byte and 1 GiB - 1 KiB",
            ));
        }
        if self.operation_timeout.is_some_and(|t| t.is_zero()) {
            return Err(SetupError::InvalidConfig(
                "operation_timeout must be positive (or None)",
            ));
        }
        Ok(table)
    }
}

/// The server-side timeouts a store's connections get for an
/// [operation timeout](PostgresStoreBuilder::operation_timeout) (see
/// [`PostgresStoreBuilder::server_timeouts`]).
///
/// The server should give up on a statement before the client does: then
/// the client gets an answer (reported as
/// [`StoreError::timed_out`](session_core::StoreError::timed_out)) on a
/// connection that is immediately usable again, instead of abandoning a
/// statement the server keeps running. So, with `margin` a tenth of the
/// operation timeout, at most 1 s:
///
/// - `statement_timeout` = operation timeout − margin (4.5 s for the
///   default 5 s, 450 ms for 500 ms, 29 s for 30 s);
/// - `lock_timeout` = `statement_timeout` − margin (4 s, 400 ms, 28 s), so
///   that a wait for a lock ends as a lock timeout (`55P03`) before the
///   statement timeout (`57014`) would end it.
///
/// Both in whole milliseconds (PostgreSQL's unit), at least 1 ms (0 would
/// mean "no timeout") and at most `i32::MAX` ms (about 24.8 days, the
/// server's limit).
///
/// ```
/// use std::time::Duration;
/// use session_postgres::builder::ServerTimeouts;
///
/// let t = ServerTimeouts::for_operation_timeout(Duration::from_millis(500));
/// assert_eq!(t.statement_timeout, Duration::from_millis(450));
/// assert_eq!(t.lock_timeout, Duration::from_millis(400));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerTimeouts {
    /// The connection's `statement_timeout`: how long one statement may
    /// run on the server, lock waits included.
    pub statement_timeout: Duration,
    /// The connection's `lock_timeout`: how long one statement may wait for
    /// any one lock (a row lock, or the advisory locks of the lifecycle
    /// functions).
    pub lock_timeout: Duration,
}

impl ServerTimeouts {
    /// The timeouts for `operation_timeout`, as described on the type.
    #[must_use]
    pub fn for_operation_timeout(operation_timeout: Duration) -> Self {
        let margin = (operation_timeout / 10).min(Duration::from_secs(1));
        let statement_timeout = server_millis(operation_timeout.saturating_sub(margin));
        let lock_timeout = server_millis(statement_timeout.saturating_sub(margin));
        Self {
            statement_timeout,
            lock_timeout,
        }
    }
}

/// `d` rounded down to whole milliseconds, within 1 ms ..= `i32::MAX` ms.
fn server_millis(d: Duration) -> Duration {
    let ms = d.as_millis().clamp(1, i32::MAX as u128);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// A server setting's value in milliseconds: `450ms`.
fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Parses a connection URL; the error never shows its credentials.
fn parse_url(url: &str) -> Result<PgConnectOptions, SetupError> {
    PgConnectOptions::from_str(url)
        .map_err(|e| SetupError::InvalidUrl(RedactedError::with_url_secrets(e, [url])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_and_settings_are_rejected_before_connecting() {
        let bad_table = PostgresStoreBuilder::new().table("x; DROP TABLE y");
        assert!(matches!(
            bad_table.validate(),
            Err(SetupError::InvalidName(_))
        ));
        let bad_schema = PostgresStoreBuilder::new().schema("A\"B");
        assert!(matches!(
            bad_schema.validate(),
            Err(SetupError::InvalidName(_))
        ));
        assert!(matches!(
            PostgresStoreBuilder::new().cleanup_batch_size(0).validate(),
            Err(SetupError::InvalidConfig(_))
        ));
        assert!(matches!(
            PostgresStoreBuilder::new().max_record_size(0).validate(),
            Err(SetupError::InvalidConfig(_))
        ));
        assert!(matches!(
            PostgresStoreBuilder::new()
                .operation_timeout(Some(Duration::ZERO))
                .validate(),
            Err(SetupError::InvalidConfig(_))
        ));
        let ok = PostgresStoreBuilder::new()
            .schema("auth")
            .table("s")
            .validate()
            .unwrap();
        assert_eq!(ok.qualified(), r#""auth"."s""#);
    }

    #[test]
    fn server_timeouts_stay_under_the_operation_timeout() {
        let ms = Duration::from_millis;
        for (op, statement, lock) in [
            (ms(500), ms(450), ms(400)),
            (ms(5_000), ms(4_500), ms(4_000)),
            (ms(30_000), ms(29_000), ms(28_000)),
            (ms(1), ms(1), ms(1)),
            (Duration::from_micros(10), ms(1), ms(1)),
            (
                Duration::MAX,
                ms(i32::MAX as u64),
                ms(i32::MAX as u64 - 1_000),
            ),
        ] {
            let t = ServerTimeouts::for_operation_timeout(op);
            assert_eq!(
                (t.statement_timeout, t.lock_timeout),
                (statement, lock),
                "{op:?}"
            );
            assert!(t.lock_timeout <= t.statement_timeout);
        }
        for op in [ms(2), ms(20), ms(999), ms(12_345)] {
            let t = ServerTimeouts::for_operation_timeout(op);
            assert!(
                t.statement_timeout < op && t.lock_timeout <= t.statement_timeout,
                "{op:?} {t:?}"
            );
        }
    }

    #[test]
    fn server_timeouts_are_startup_options_only_with_an_operation_timeout() {
        let base = PgConnectOptions::new();
        let with = PostgresStoreBuilder::new()
            .operation_timeout(Duration::from_millis(500))
            .apply_server_timeouts(base.clone());
        assert_eq!(
            with.get_options(),
            Some("-c statement_timeout=450ms -c lock_timeout=400ms")
        );
        let none = PostgresStoreBuilder::new()
            .operation_timeout(None)
            .apply_server_timeouts(base.clone());
        assert_eq!(none.get_options(), None);
        let off = PostgresStoreBuilder::new()
            .server_timeouts(false)
            .apply_server_timeouts(base);
        assert_eq!(off.get_options(), None);
    }

    #[tokio::test]
    async fn a_malformed_url_is_an_error_without_the_url() {
        let err = PostgresStoreBuilder::new()
            .connect("postgres://user:hunter2@host:notaport/db")
            .await
            .unwrap_err();
        assert!(matches!(err, SetupError::InvalidUrl(_)), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
