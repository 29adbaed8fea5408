//! [`Error`]: what a session operation in a handler can fail with.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use session_core::SessionError;

/// A failed session operation.
///
/// As a response it never reveals details: store failures and conflicts
/// become a bare `500`, the per-user limit a `403`, a missing login or a
/// session that ended meanwhile a `401`; the details go to a `tracing`
/// event for the operator. Handlers that want to answer differently match
/// on [`Error::session_error`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The session manager failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The handler asked for a [`Session`](crate::Session) but the request
    /// did not pass through a [`SessionLayer`](crate::SessionLayer).
    #[error("no session in the request extensions: add SessionLayer to the router or service")]
    MissingLayer,
}

impl Error {
    /// The underlying manager error, if any.
    #[must_use]
    pub fn session_error(&self) -> Option<&SessionError> {
        match self {
            Self::Session(e) => Some(e),
            Self::MissingLayer => None,
        }
    }

    /// Whether login was refused by the per-user session limit.
    #[must_use]
    pub fn is_too_many_sessions(&self) -> bool {
        matches!(self, Self::Session(SessionError::TooManySessions { .. }))
    }

    /// The status code this error answers with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Session(SessionError::TooManySessions { .. }) => StatusCode::FORBIDDEN,
            Self::Session(SessionError::NotLoggedIn | SessionError::SessionEnded) => {
                StatusCode::UNAUTHORIZED
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(target: "session_axum", error = %self, "session operation failed; answering 500");
        } else {
            tracing::debug!(target: "session_axum", error = %self, "session operation refused");
        }
        let body = status.canonical_reason().unwrap_or("Error");
        let mut res = (status, body).into_response();
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use session_core::StoreError;

    #[test]
    fn store_failures_answer_a_bare_500() {
        let e = Error::from(SessionError::from(StoreError::unavailable(
            "connection refused to secret-host:6379",
        )));
        let res = e.into_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn limits_and_missing_login_have_their_own_status() {
        assert_eq!(
            Error::from(SessionError::TooManySessions { max: 1 }).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            Error::from(SessionError::NotLoggedIn).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            Error::from(SessionError::SessionEnded).status(),
            StatusCode::UNAUTHORIZED
        );
        assert!(Error::from(SessionError::TooManySessions { max: 1 }).is_too_many_sessions());
    }
}
