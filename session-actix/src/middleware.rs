//! [`SessionMiddleware`]: the actix-web middleware that gives each request
//! a [`Session`].

use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::error::InternalError;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpResponse};
use futures_util::future::LocalBoxFuture;
use session_core::SessionManager;

use crate::extract::{Finish, Session, Shared};

/// An actix-web middleware ([`Transform`]) that manages sessions for the
/// app, scope or resource it wraps: `App::new().wrap(SessionMiddleware::new(manager))`.
///
/// Each request gets a [`Session`] in its extensions (extract it in a
/// handler); the session is loaded on first use and committed once the
/// wrapped service has produced its response (see the
/// [crate docs](crate) for the guarantees). Middlewares registered with
/// `wrap` *after* this one run outside it: they see the response with the
/// session already committed and its cookie set.
///
/// The response body becomes an [`EitherBody`]: the wrapped service's body,
/// or the empty body of the `503`/`500` that replaces the response when
/// the commit fails. An error the wrapped service returns (rather than an
/// error response) stays an error, carrying the cookie and `no-store`
/// headers in its response.
#[derive(Debug, Clone)]
pub struct SessionMiddleware {
    manager: SessionManager,
}

impl SessionMiddleware {
    /// A middleware backed by `manager`, whose store, configuration and
    /// cookie policy decide everything session-related.
    #[must_use]
    pub fn new(manager: SessionManager) -> Self {
        Self { manager }
    }
}

impl<S, B> Transform<S, ServiceRequest> for SessionMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = SessionService<S>;
    type InitError = ();
    type Future = std::future::Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        std::future::ready(Ok(SessionService {
            service: Rc::new(service),
            manager: self.manager.clone(),
        }))
    }
}

/// The service produced by [`SessionMiddleware`] around the wrapped one.
#[derive(Debug)]
pub struct SessionService<S> {
    service: Rc<S>,
    manager: SessionManager,
}

impl<S, B> Service<ServiceRequest> for SessionService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        // Cookie headers only, as the bytes they are; the URL is never
        // consulted.
        let cookie_ids = self.manager.cookie_policy().session_id_candidates(
            req.headers()
                .get_all(header::COOKIE)
                .map(HeaderValue::as_bytes),
        );
        let shared = Arc::new(Shared::new(self.manager.clone(), cookie_ids));
        req.extensions_mut()
            .insert(Session::from_shared(Arc::clone(&shared)));
        let service = Rc::clone(&self.service);
        Box::pin(async move {
            match service.call(req).await {
                Ok(res) => {
                    let finish = shared.finish(res.status().is_server_error()).await;
                    Ok(respond(res, finish))
                }
                Err(e) => {
                    // The wrapped service failed instead of answering: the
                    // error's own response is what the client gets, so it
                    // decides whether to commit, and it carries the cookie.
                    let res = e.error_response();
                    let finish = shared.finish(res.status().is_server_error()).await;
                    let mut res = match finish.failure {
                        Some(failure) => failure.response(),
                        None => res,
                    };
                    if !apply(res.headers_mut(), finish) {
                        res = internal_error();
                    }
                    Err(InternalError::from_response(e, res).into())
                }
            }
        })
    }
}

/// The wrapped service's response, with `no-store` and the cookie, or
/// replaced by the answer to a failed commit.
fn respond<B>(res: ServiceResponse<B>, finish: Finish) -> ServiceResponse<EitherBody<B>> {
    let mut res = match finish.failure {
        Some(failure) => res.into_response(failure.response()).map_into_right_body(),
        None => res.map_into_left_body(),
    };
    if !apply(res.headers_mut(), finish) {
        res = res.into_response(internal_error()).map_into_right_body();
    }
    res
}

/// Adds `no-store` and the cookie of `finish` to `headers`; `false` when
/// the cookie is not a valid header value and the response must become a
/// `500`.
fn apply(headers: &mut HeaderMap, finish: Finish) -> bool {
    if finish.used {
        no_store(headers);
    }
    let Some(cookie) = finish.cookie else {
        return true;
    };
    match HeaderValue::try_from(cookie.to_string()) {
        Ok(v) => {
            headers.append(header::SET_COOKIE, v);
            true
        }
        Err(_) => {
            tracing::error!(target: "session_actix", "session cookie is not a valid header value; answering 500");
            false
        }
    }
}

/// Why the middleware's own commit failed, and what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitFailure {
    /// The store could not be reached, or the session kept changing under
    /// the commit: `503` with `Retry-After`.
    Retry,
    /// Anything else: `500`.
    Internal,
}

impl CommitFailure {
    fn response(self) -> HttpResponse {
        match self {
            Self::Retry => {
                let mut res = HttpResponse::new(StatusCode::SERVICE_UNAVAILABLE);
                res.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
                no_store(res.headers_mut());
                res
            }
            Self::Internal => internal_error(),
        }
    }
}

/// `Retry-After` of the middleware's and [`Error`](crate::Error)'s `503` and
/// `409` answers, in seconds.
pub const RETRY_AFTER_SECS: &str = "1";

fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn internal_error() -> HttpResponse {
    let mut res = HttpResponse::new(StatusCode::INTERNAL_SERVER_ERROR);
    no_store(res.headers_mut());
    res
}
