//! [`Error`]: what a session operation in a handler can fail with.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use session_core::{SessionError, StoreError};

/// A failed session operation.
///
/// As a response ([`ResponseError`], so `?` in a handler returning
/// `Result<_, session_actix::Error>` or `actix_web::Error` works) it never
/// reveals details, and always says what the client can do (see
/// [`Error::status`]); the details go to a `tracing` event for the
/// operator. Handlers that want to answer differently match on
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
    /// did not pass through a [`SessionMiddleware`](crate::SessionMiddleware).
    #[error("no session in the request extensions: wrap the app or scope in SessionMiddleware")]
    MissingMiddleware,
}

impl Error {
    /// The underlying manager error, if any.
    #[must_use]
    pub fn session_error(&self) -> Option<&SessionError> {
        match self {
            Self::Session(e) => Some(e),
            Self::MissingMiddleware => None,
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
    /// | [`Error::MissingMiddleware`], anything else (a corrupt value, a bug) | `500` |
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

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    /// The status of [`Error::status`], its canonical reason as a plain
    /// text body, `Cache-Control: no-store`, and `Retry-After` on `503` and
    /// `409`. Logs the error chain (`error` level for a `5xx`, `debug`
    /// otherwise).
    fn error_response(&self) -> HttpResponse {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(target: "session_actix", error = %session_core::ErrorChain(self), status = status.as_u16(), "session operation failed");
        } else {
            tracing::debug!(target: "session_actix", error = %session_core::ErrorChain(self), "session operation refused");
        }
        let mut res = HttpResponse::build(status);
        res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT
        ) {
            res.insert_header((
                header::RETRY_AFTER,
                HeaderValue::from_static(crate::middleware::RETRY_AFTER_SECS),
            ));
        }
        res.content_type("text/plain; charset=utf-8")
            .body(status.canonical_reason().unwrap_or("Error"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body(res: HttpResponse) -> String {
        let bytes = res.into_body().try_into_bytes().expect("a complete body");
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn an_unreachable_store_answers_503_with_retry_after_and_no_details() {
        let e = Error::from(SessionError::from(StoreError::unavailable(
            "connection refused to secret-host:6379",
        )));
        let res = e.error_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "1");
        assert_eq!(
            res.headers().get(header::CACHE_CONTROL).unwrap(),
            "no-store"
        );
        let body = body(res);
        assert_eq!(body, "Service Unavailable");
        assert!(!body.contains("secret-host"));
    }

    #[test]
    fn a_conflict_answers_409_and_other_store_errors_500() {
        let res = Error::from(SessionError::Conflict).error_response();
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let res =
            Error::from(SessionError::from(StoreError::backend("bad reply"))).error_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
        assert!(!body(res).contains("bad reply"));
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
        assert_eq!(
            Error::MissingMiddleware.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert!(Error::MissingMiddleware.session_error().is_none());
    }
}
