//! [`SessionLayer`]: the tower layer that gives each request a [`Session`].

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{header, HeaderValue, Request, Response, StatusCode};
use session_core::SessionManager;
use tower_layer::Layer;
use tower_service::Service;

use crate::extract::{Finish, Session, Shared};

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
        // Cookie headers only; the URL is never consulted.
        let cookie_id = self.manager.cookie_policy().find_session_id(
            req.headers()
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let shared = Arc::new(Shared::new(self.manager.clone(), cookie_id));
        req.extensions_mut()
            .insert(Session::from_shared(Arc::clone(&shared)));
        // The clone is ready only if polled; use the one that was.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut res = inner.call(req).await?;
            let server_error = res.status().is_server_error();
            match shared.finish(server_error).await {
                Finish::Untouched => {}
                Finish::SkippedOnServerError => no_store(&mut res),
                Finish::Committed(cookie) => {
                    no_store(&mut res);
                    if let Some(cookie) = cookie {
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
                }
                Finish::Failed => res = internal_error(),
            }
            Ok(res)
        })
    }
}

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
