//! [`SessionLayer`]: the tower layer that gives each request a [`Session`].

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{header, HeaderValue, Request, Response, StatusCode};
use session_core::SessionManager;
use tower_layer::Layer;
use tower_service::Service;

use crate::extract::{Session, Shared};

/// A tower [`Layer`] that manages sessions for the wrapped service.
///
/// Works with any service over `http::Request`/`http::Response` whose
/// response body has a `Default` (used for the generic `500` when a commit
/// fails), which includes axum's `Router`.
#[derive(Debug, Clone)]
pub struct SessionLayer {
    manager: SessionManager,
}

impl SessionLayer {
    /// A layer backed by `manager`.
    #[must_use]
    pub fn new(manager: SessionManager) -> Self {
        Self { manager }
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            manager: self.manager.clone(),
        }
    }
}

/// The service produced by [`SessionLayer`].
#[derive(Debug, Clone)]
pub struct SessionService<S> {
    inner: S,
    manager: SessionManager,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // Cookie headers only, as the bytes they are; the URL is never
        // consulted.
        let cookie_ids = self.manager.cookie_policy().session_id_candidates(
            req.headers()
                .get_all(header::COOKIE)
                .iter()
                .map(HeaderValue::as_bytes),
        );
        let shared = Arc::new(Shared::new(self.manager.clone(), cookie_ids));
        req.extensions_mut()
            .insert(Session::from_shared(Arc::clone(&shared)));
        // The clone is ready only if polled; use the one that was.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut res = inner.call(req).await?;
            let server_error = res.status().is_server_error();
            let finish = shared.finish(server_error).await;
            if finish.used {
                no_store(&mut res);
            }
            if let Some(failure) = finish.failure {
                res = failure.response();
            }
            if let Some(cookie) = finish.cookie {
                match HeaderValue::try_from(cookie.to_string()) {
                    Ok(v) => {
                        res.headers_mut().append(header::SET_COOKIE, v);
                    }
                    Err(_) => {
                        tracing::error!(target: "session_axum", "session cookie is not a valid header value; answering 500");
                        res = internal_error();
                    }
                }
            }
            Ok(res)
        })
    }
}

/// Why the layer's own commit failed, and what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitFailure {
    /// The store could not be reached, or the session kept changing under
    /// the commit: `503` with `Retry-After`.
    Retry,
    /// Anything else: `500`.
    Internal,
}

impl CommitFailure {
    fn response<B: Default>(self) -> Response<B> {
        match self {
            Self::Retry => {
                let mut res = Response::new(B::default());
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                res.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
                no_store(&mut res);
                res
            }
            Self::Internal => internal_error(),
        }
    }
}

/// `Retry-After` of the layer's and [`Error`](crate::Error)'s `503` and `409`
/// answers, in seconds.
pub const RETRY_AFTER_SECS: &str = "1";

fn no_store<B>(res: &mut Response<B>) {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn internal_error<B: Default>() -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    no_store(&mut res);
    res
}
