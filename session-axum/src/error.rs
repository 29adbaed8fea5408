//! [`Error`]: what a session operation in a handler can fail with.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use session_core::{SessionError, StoreError};

/// A failed session operation.
///
/// As a response it never reveals details, and always says what the client
/// can do (see [`Error::status`]); the details go to a `tracing` event for
/// the operator. Handlers that want to answer differently match on
/// [`Error::session_error`]. Neither the response, nor the event, nor the
/// error's `Display`/`Debug` shows a session ID, storage key, token or
/// credential (see [`session_core::redact`]).
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

    /// Whether [`Session::end_session`](crate::Session::end_session) was
    /// refused because the key names none of the user's sessions.
    #[must_use]
    pub fn is_not_your_session(&self) -> bool {
        matches!(self, Self::Session(SessionError::NotYourSession))
    }

    /// Whether login was refused by the per-user session limit.
    #[must_use]
    pub fn is_too_many_sessions(&self) -> bool {
        matches!(self, Self::Session(SessionError::TooManySessions { .. }))
    }

    /// The status code this error answers with:
    ///
    /// | error | status |
    /// |---|---|
    /// | store unreachable or full ([`StoreError::Unavailable`]) | `503` with `Retry-After` |
    /// | [`SessionError::Conflict`] (the session kept changing) | `409` with `Retry-After` |
    /// | [`SessionError::TooManySessions`] | `403` |
    /// | [`SessionError::NotLoggedIn`], [`SessionError::SessionEnded`] | `401` |
    /// | [`SessionError::NotYourSession`] (not one of the user's sessions) | `404` |
    /// | anything else (a corrupt value, a bug) | `500` |
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Session(SessionError::Store(StoreError::Unavailable(_))) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Session(SessionError::Conflict) => StatusCode::CONFLICT,
            Self::Session(SessionError::TooManySessions { .. }) => StatusCode::FORBIDDEN,
            Self::Session(SessionError::NotLoggedIn | SessionError::SessionEnded) => {
                StatusCode::UNAUTHORIZED
            }
            Self::Session(SessionError::NotYourSession) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(target: "session_axum", error = %session_core::ErrorChain(&self), status = status.as_u16(), "session operation failed");
        } else {
            tracing::debug!(target: "session_axum", error = %session_core::ErrorChain(&self), "session operation refused");
        }
        let body = status.canonical_reason().unwrap_or("Error");
        let mut res = (status, body).into_response();
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT
        ) {
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(crate::layer::RETRY_AFTER_SECS),
            );
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(res: Response) -> String {
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn an_unreachable_store_answers_503_with_retry_after_and_no_details() {
        let e = Error::from(SessionError::from(StoreError::unavailable(
            "connection refused to secret-host:6379",
        )));
        let res = e.into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
        assert!(!body(res).await.contains("secret-host"));
    }

    #[tokio::test]
    async fn a_conflict_answers_409_and_other_store_errors_500() {
        let res = Error::from(SessionError::Conflict).into_response();
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        let res = Error::from(SessionError::from(StoreError::backend("bad reply"))).into_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
        assert!(!body(res).await.contains("bad reply"));
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
        let not_yours = Error::from(SessionError::NotYourSession);
        assert_eq!(not_yours.status(), StatusCode::NOT_FOUND);
        assert!(not_yours.is_not_your_session());
    }
}
