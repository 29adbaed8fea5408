//! Errors: what [`crate::RedisStoreBuilder`] reports when it cannot build a
//! store, and how Redis errors map onto [`StoreError`].
//!
//! Connection failures, timeouts, a cluster that is down or a server still
//! loading its data are [`StoreError::Unavailable`] (retry later; the store
//! reconnects by itself). Any other error reply is [`StoreError::Backend`].
//! Messages never contain keys, arguments or values.

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};
use session_core::StoreError;

use crate::keys::InvalidPrefix;

/// Why a [`crate::RedisStore`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The key prefix is not acceptable.
    #[error(transparent)]
    InvalidPrefix(#[from] InvalidPrefix),
    /// The URL could not be understood (expected `redis://host:port/db`,
    /// `rediss://…` or `redis+unix://…`).
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(#[source] RedisError),
    /// No cluster URL was given.
    #[error("no Redis Cluster node URL given: pass at least one node URL")]
    NoClusterNodes,
    /// The server did not answer: check that it runs and that the URL,
    /// credentials and network are right.
    #[error("could not connect to Redis: {0}")]
    Unavailable(#[source] RedisError),
    /// The server answered but refused the connection (wrong password or
    /// user, unknown database, not a cluster node, ...).
    #[error("Redis refused the connection: {0}")]
    Refused(#[source] RedisError),
    /// The server did not answer within the connect timeout.
    #[error("could not connect to Redis within {0:?}")]
    TimedOut(Duration),
}

/// An operation did not finish within the store's operation timeout.
#[derive(Debug, thiserror::Error)]
#[error("Redis did not answer within {0:?}; is the server up and reachable?")]
pub struct OperationTimedOut(pub Duration);

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn timeout_message_says_what_to_check() {
        let msg = OperationTimedOut(Duration::from_millis(250)).to_string();
        assert!(msg.contains("250ms") && msg.contains("server up"), "{msg}");
    }
}
