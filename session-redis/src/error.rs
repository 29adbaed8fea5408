//! Errors: what [`crate::RedisStoreBuilder`] reports when it cannot build a
//! store, and how Redis errors map onto [`StoreError`].
//!
//! Connection failures, timeouts, a cluster that is down or a server still
//! loading its data are [`StoreError::Unavailable`] (retry later; the store
//! reconnects by itself). An operation that runs out of the operation
//! timeout is [`StoreError::timed_out`] (a [`TimedOut`] source, see
//! [`StoreError::is_timeout`]). Any other error reply is
//! [`StoreError::Backend`]. Messages never contain keys, arguments or
//! values.
//!
//! Nor credentials: a [`SetupError`] holds the client's error wrapped in a
//! [`RedactedError`], so its `Display`, its `Debug` and every error in its
//! `source()` chain show the URL's user and password as `***`.

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};
use session_core::redact::RedactedError;
use session_core::{StoreError, TimedOut};

use crate::keys::InvalidPrefix;

/// Why a [`crate::RedisStore`] could not be built.
///
/// The [`RedisError`] behind `InvalidUrl`, `Unavailable` and `Refused` is
/// wrapped in a [`RedactedError`]: printing the error or its chain never
/// shows a credential. [`RedactedError::get_ref`] gives the `RedisError`
/// for inspection (do not print it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The key prefix is not acceptable.
    #[error(transparent)]
    InvalidPrefix(#[from] InvalidPrefix),
    /// The URL could not be understood (expected `redis://host:port/db`,
    /// `rediss://…` or `redis+unix://…`).
    #[error("invalid Redis URL")]
    InvalidUrl(#[source] RedactedError),
    /// No cluster URL was given.
    #[error("no Redis Cluster node URL given: pass at least one node URL")]
    NoClusterNodes,
    /// The server did not answer: check that it runs and that the URL,
    /// credentials and network are right.
    #[error("could not connect to Redis")]
    Unavailable(#[source] RedactedError),
    /// The server answered but refused the connection (wrong password or
    /// user, unknown database, not a cluster node, ...).
    #[error("Redis refused the connection")]
    Refused(#[source] RedactedError),
    /// The server did not answer within the connect timeout.
    #[error("could not connect to Redis within {0:?}")]
    TimedOut(Duration),
    /// The server is configured in a way this store cannot keep its
    /// guarantees on: change `setting` to `required` (or see the builder's
    /// options, such as `allow_eviction`).
    #[error("Redis setting {setting} is {value:?}; this store needs {required}")]
    ServerSetting {
        /// The server setting (`CONFIG GET` name).
        setting: &'static str,
        /// Its value on the server.
        value: String,
        /// The value the store needs.
        required: &'static str,
    },
}

/// The former name of [`SetupError`], the name every backend's setup
/// error now has.
#[deprecated(note = "renamed to SetupError")]
pub type ConnectError = SetupError;

/// An operation did not finish within the store's operation timeout: now
/// the [`TimedOut`] every store reports (see [`StoreError::is_timeout`]).
#[deprecated(
    note = "timeouts are session_core::TimedOut on every backend; test them with StoreError::is_timeout"
)]
pub type OperationTimedOut = TimedOut;

/// Maps a Redis error onto the store contract.
pub(crate) fn store_error(e: RedisError) -> StoreError {
    if is_unavailable(&e) {
        StoreError::unavailable(e)
    } else {
        StoreError::backend(e)
    }
}

/// Whether `e` means "could not reach a working server" rather than "the
/// server refused the command".
pub(crate) fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::ClusterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::BusyLoading
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        )
}

/// Whether `e`, met while connecting, is the server refusing us rather than
/// not answering: failed authentication (`AUTH` refused, `WRONGPASS`,
/// `NOAUTH`), a missing permission, or a client configuration the server
/// rejected. The client counts a failed authentication as a reason to
/// reconnect, so [`is_unavailable`] alone would call it unavailable.
///
/// The cluster client reports a failure to reach any node as an I/O error
/// whose detail is the last node's error as text; an authentication failure
/// there is recognized by that text.
pub(crate) fn is_refusal(e: &RedisError) -> bool {
    const REFUSALS: [&str; 3] = ["AuthenticationFailed", "WRONGPASS", "NOAUTH"];
    matches!(
        e.kind(),
        ErrorKind::AuthenticationFailed
            | ErrorKind::InvalidClientConfig
            | ErrorKind::Server(ServerErrorKind::NoPerm)
    ) || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        || (e.kind() == ErrorKind::Io
            && e.detail()
                .is_some_and(|d| REFUSALS.iter().any(|r| d.contains(r))))
}

/// Whether `e` is a connection-level failure: the connection broke (broken
/// pipe, reset, aborted, closed, end of stream) or could not be made
/// (refused). Not an error reply from the server, not a timeout. After such
/// an error the [`redis::aio::ConnectionManager`] has already swapped in a
/// new connection (it does so before returning the error), so the next
/// command goes out on a fresh one.
pub(crate) fn is_connection_failure(e: &RedisError) -> bool {
    (e.is_connection_dropped() || e.is_connection_refusal()) && !e.is_timeout()
}

/// Whether the server refused the command, without running it, because it
/// is not a node that takes it now: a replica (`READONLY`), a node still
/// loading its data (`LOADING`), a replica that lost its primary and
/// serves no stale data (`MASTERDOWN`). The command was not applied, so it
/// may be sent again on a new connection, whatever it is.
pub(crate) fn is_wrong_node(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::ReadOnly | ServerErrorKind::BusyLoading | ServerErrorKind::MasterDown
        )
    )
}

/// Whether the server refused `e`'s command without running it because it
/// does not serve the key there (any more): a redirect, a node that is not
/// (or no longer) a primary, a cluster that is down, or no connection.
pub(crate) fn is_refused_unrun(e: &RedisError) -> bool {
    is_wrong_node(e)
        || is_never_sent(e)
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::Moved
                    | ServerErrorKind::Ask
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::CrossSlot
            )
        )
}

/// Whether `e` proves the command never reached a server: the connection it
/// was to go out on could not be made. A command that failed on a broken
/// connection may have been executed before the reply was lost (the client
/// reports both cases as a broken pipe), so only this case makes a write
/// that must not apply twice safe to send again.
pub(crate) fn is_never_sent(e: &RedisError) -> bool {
    e.is_connection_refusal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_told_from_replies_and_timeouts() {
        use std::io::ErrorKind as Io;
        for kind in [
            Io::BrokenPipe,
            Io::ConnectionReset,
            Io::ConnectionAborted,
            Io::UnexpectedEof,
            Io::NotConnected,
            Io::ConnectionRefused,
        ] {
            let e: RedisError = std::io::Error::from(kind).into();
            assert!(is_connection_failure(&e), "{kind:?}");
            assert_eq!(is_never_sent(&e), kind == Io::ConnectionRefused, "{kind:?}");
        }
        let timeout: RedisError = std::io::Error::from(Io::TimedOut).into();
        assert!(!is_connection_failure(&timeout));
        for reply in [
            ServerErrorKind::ResponseError,
            ServerErrorKind::BusyLoading,
            ServerErrorKind::NoScript,
        ] {
            let e: RedisError = (ErrorKind::Server(reply), "reply").into();
            assert!(
                !is_connection_failure(&e) && !is_never_sent(&e),
                "{reply:?}"
            );
        }
    }

    #[test]
    fn io_errors_are_unavailable_and_replies_are_backend_errors() {
        let io: RedisError =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into();
        assert!(matches!(store_error(io), StoreError::Unavailable(_)));
        let loading: RedisError =
            (ErrorKind::Server(ServerErrorKind::BusyLoading), "loading").into();
        assert!(matches!(store_error(loading), StoreError::Unavailable(_)));
        let wrong: RedisError = (
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "wrong type",
        )
            .into();
        assert!(matches!(store_error(wrong), StoreError::Backend(_)));
    }

    #[test]
    fn failed_authentication_is_a_refusal_not_an_outage() {
        let auth: RedisError = (
            ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        )
            .into();
        assert!(is_refusal(&auth));
        assert!(
            is_unavailable(&auth),
            "the client retries it as a reconnect"
        );
        let io: RedisError = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert!(!is_refusal(&io));
        let cluster: RedisError = (
            ErrorKind::Io,
            "Failed to create initial connections",
            "Password authentication failed - AuthenticationFailed".to_owned(),
        )
            .into();
        assert!(is_refusal(&cluster));
        let cluster: RedisError = (
            ErrorKind::Io,
            "Failed to create initial connections",
            "Connection refused (os error 111)".to_owned(),
        )
            .into();
        assert!(!is_refusal(&cluster));
    }

    #[test]
    #[allow(deprecated)]
    fn the_old_setup_error_name_still_names_it() {
        let e: ConnectError = SetupError::NoClusterNodes;
        assert!(matches!(e, ConnectError::NoClusterNodes));
    }

    #[test]
    #[allow(deprecated)]
    fn the_old_timeout_name_is_the_shared_type() {
        let e = StoreError::timed_out("load", Duration::from_millis(250));
        assert!(e.is_timeout());
        let StoreError::Unavailable(source) = &e else {
            panic!("{e:?}");
        };
        let t = source.downcast_ref::<OperationTimedOut>().unwrap();
        assert_eq!(t.after(), Duration::from_millis(250));
    }
}
