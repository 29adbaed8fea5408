//! Errors: [`SetupError`] for building and migrating a store, [`PgError`]
//! inside the [`StoreError`]s of session operations.
//!
//! Connectivity problems (the server is down, restarting, terminated our
//! connection, or did not answer in time) become
//! [`StoreError::Unavailable`]: an operation that ran out of the operation
//! timeout is [`StoreError::timed_out`] (a
//! [`TimedOut`](session_core::TimedOut) source, see
//! [`StoreError::is_timeout`]), whether the client's timer ran out or the
//! server ended the statement at the `statement_timeout` (`57014`) or
//! `lock_timeout` (`55P03`) the store derives from it; the others have a
//! [`PgError`] source. Everything else the server reports becomes
//! [`StoreError::Backend`]. Messages never contain session data; they may
//! name a storage key (a one-way hash) or the table.
//!
//! No error shows a credential: a [`SetupError`] holds the driver's error
//! wrapped in a [`RedactedError`], so its `Display`, its `Debug` and every
//! error in its `source()` chain show the URL's user and password (and
//! parameters such as `password=` or `sslpassword=`) as `***`.

use std::time::Duration;

use session_core::redact::RedactedError;
use session_core::StoreError;

use crate::ident::IdentifierError;

/// Building, connecting or migrating a [`PostgresStore`](crate::PostgresStore)
/// failed.
///
/// The `sqlx::Error` behind `InvalidUrl`, `Connect`, `Migrate` and
/// `MigrationFailed` is wrapped in a [`RedactedError`]: printing the error
/// or its chain never shows a credential. [`RedactedError::get_ref`] gives
/// the `sqlx::Error` for inspection (do not print it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The configured table or schema name is not a plain identifier.
    #[error("invalid session table configuration")]
    InvalidName(#[from] IdentifierError),
    /// A configuration value is out of range.
    #[error("invalid session store configuration: {0}")]
    InvalidConfig(&'static str),
    /// The connection URL could not be parsed. (The URL itself is not
    /// repeated here: it may hold a password.)
    #[error("invalid PostgreSQL connection URL")]
    InvalidUrl(#[source] RedactedError),
    /// The first connection could not be established.
    #[error(
        "could not connect to PostgreSQL (check that the server is running and that the URL, \
         user and password are right)"
    )]
    Connect(#[source] RedactedError),
    /// Talking to the server while migrating failed.
    #[error("migrating the sessions table failed")]
    Migrate(#[source] RedactedError),
    /// A migration's DDL was rejected (commonly: the role may not create
    /// tables or schemas). Nothing was changed.
    #[error(
        "migration {version} ({description}) failed, nothing was changed (the role needs \
         CREATE on the schema, or run migrate() once with a role that has it)"
    )]
    MigrationFailed {
        /// The version that failed.
        version: i32,
        /// What it would have done.
        description: &'static str,
        /// The server's error.
        #[source]
        source: RedactedError,
    },
}

impl SetupError {
    /// `Migrate` for a driver error met while migrating.
    pub(crate) fn migrate(e: sqlx::Error) -> Self {
        Self::Migrate(RedactedError::new(e))
    }
}

/// The cause inside a [`StoreError::Unavailable`] or
/// [`StoreError::Backend`] returned by the store; downcast the source to
/// inspect it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The driver or the server reported an error.
    #[error("PostgreSQL {op} failed")]
    Driver {
        /// The store operation (`"load"`, `"update"`, ...).
        op: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// No longer produced: an operation that does not complete within the
    /// configured
    /// [operation timeout](crate::PostgresStoreBuilder::operation_timeout)
    /// is [`StoreError::timed_out`], a
    /// [`TimedOut`](session_core::TimedOut) source, as on every backend
    /// (test it with [`StoreError::is_timeout`]).
    #[deprecated(
        note = "timeouts are session_core::TimedOut on every backend; test them with StoreError::is_timeout"
    )]
    #[error("PostgreSQL {op} did not complete within {timeout:?}")]
    Timeout {
        /// The store operation.
        op: &'static str,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The user id contains a NUL character, which PostgreSQL `text`
    /// cannot hold. Nothing was written.
    #[error("the user id contains a NUL character, which PostgreSQL text columns cannot store")]
    NulInUserId,
    /// The session label contains a NUL character, which PostgreSQL text
    /// columns cannot hold (the manager never writes one). Nothing was
    /// written.
    #[error(
        "the session label contains a NUL character, which PostgreSQL text columns cannot store"
    )]
    NulInLabel,
    /// The storage key contains a NUL character. Nothing was written.
    #[error(
        "the storage key contains a NUL character, which PostgreSQL text columns cannot store"
    )]
    NulInKey,
    /// A lifecycle function answered with a result code this version does
    /// not know (the schema was migrated by a newer version).
    #[error("PostgreSQL {op} returned the unknown result code {code}")]
    UnexpectedResult {
        /// The store operation.
        op: &'static str,
        /// The code.
        code: i32,
    },
}

/// Wraps a driver error from operation `op` into the right [`StoreError`].
///
/// With an operation timeout (`timeout`), the server ending the statement
/// at the `statement_timeout` or `lock_timeout` the store set on its
/// connections ([`is_server_timeout`]) is that timeout:
/// [`StoreError::timed_out`]`(op, timeout)`, as when the client-side timer
/// runs out first. Without one, those errors keep their driver source
/// (`Unavailable`).
pub(crate) fn store_error(
    op: &'static str,
    source: sqlx::Error,
    timeout: Option<Duration>,
) -> StoreError {
    if let Some(after) = timeout.filter(|_| is_server_timeout(&source)) {
        // The server's message names the statement timeout or the lock
        // timeout; keep it in the debug log (it holds no key or value).
        tracing::debug!(target: "session_postgres", op, error = %source, "the server ended the statement at its timeout");
        return StoreError::timed_out(op, after);
    }
    let unavailable = is_unavailable(&source);
    let e = PgError::Driver { op, source };
    if unavailable {
        StoreError::unavailable(e)
    } else {
        StoreError::backend(e)
    }
}

/// Whether the server ended the statement because it ran out of time:
/// `57014 query_canceled` (`statement_timeout`; also what an
/// administrator's `pg_cancel_backend` answers, which cannot be told apart
/// by code) or `55P03 lock_not_available` (`lock_timeout`; the store takes
/// no `NOWAIT` locks, the other source of that code).
pub(crate) fn is_server_timeout(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| matches!(&*code, "57014" | "55P03")),
        _ => false,
    }
}

/// Whether `e` means "the server could not be reached or did not answer",
/// as opposed to "the server rejected the statement".
pub(crate) fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01..57P05: admin/crash shutdown,
            // cannot connect now, database dropped, idle session timeout;
            // 57014: query cancelled (statement_timeout); 55P03: lock not
            // available (lock_timeout); 53300: too many connections.
            code.starts_with("08")
                || code.starts_with("57P")
                || matches!(&*code, "57014" | "55P03" | "53300")
        }),
        _ => false,
    }
}

/// Whether `e` says the pooled connection itself was dead, so a fresh
/// connection may well succeed: an I/O failure other than a timeout
/// (broken pipe, reset, end of stream), a garbled exchange (the connection
/// is unusable), or the server's farewell on a connection it ended: a
/// connection exception (`08…`), `57P01` (terminated by an administrator,
/// `pg_terminate_backend`, or a fast shutdown), `57P02` (crash of another
/// backend), `57P05` (idle session timeout). Not a timeout, not an error
/// the server answered the statement with.
pub(crate) fn is_dead_connection(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(io) => io.kind() != std::io::ErrorKind::TimedOut,
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P05")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connectivity_errors_are_unavailable() {
        let io = || sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(
            store_error("load", io(), None),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            store_error("load", sqlx::Error::PoolTimedOut, None),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            store_error("load", sqlx::Error::RowNotFound, None),
            StoreError::Backend(_)
        ));
        assert!(is_dead_connection(&io()));
        assert!(!is_dead_connection(&sqlx::Error::PoolTimedOut));
        assert!(!is_dead_connection(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::TimedOut
        ))));
        assert!(!is_dead_connection(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn messages_name_the_operation() {
        let e = store_error("update", sqlx::Error::PoolTimedOut, None);
        // One sentence per link; the chain names the kind and the operation.
        let msg = session_core::ErrorChain(&e).to_string();
        assert!(
            msg.contains("unavailable") && msg.contains("update"),
            "{msg}"
        );
        session_core::conformance::redaction::assert_each_cause_once(&e);
        let source = std::error::Error::source(&e).unwrap();
        assert!(source.downcast_ref::<PgError>().is_some());
    }
}
