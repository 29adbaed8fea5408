//! What the layer tests share: handlers, the routes over them, and a
//! client that sends raw `Cookie` bytes and reads back what a browser would
//! keep.
#![allow(dead_code)]

use axum::body::{to_bytes, Body};
use axum::routing::{get, post};
use axum::Router;
use http::{header, HeaderValue, Request, StatusCode};
use session_axum::{Error, Session};
use tower::ServiceExt;

pub async fn visit(session: Session) -> Result<String, Error> {
    let n: u64 = session.get("n").await?.unwrap_or(0) + 1;
    session.insert("n", &n).await?;
    Ok(n.to_string())
}

pub async fn read(session: Session) -> Result<String, Error> {
    let n: Option<u64> = session.get("n").await?;
    let user = session.user_id().await?;
    Ok(format!("{n:?} {user:?}"))
}

pub async fn login(session: Session, body: String) -> Result<&'static str, Error> {
    session.login(&body).await?;
    Ok("ok")
}

/// Logs in as the body's user, labelled with the rest: `user|label`.
pub async fn login_labelled(session: Session, body: String) -> Result<&'static str, Error> {
    let (user, label) = body.split_once('|').unwrap_or((&body, ""));
    session
        .login_with(user, session_core::LoginOptions::new().with_label(label))
        .await?;
    Ok("ok")
}

/// This user's sessions, one per line, oldest first: `* label` for the
/// current one, `- label` for the others (`-` without a label).
pub async fn devices(session: Session) -> Result<String, Error> {
    let list = session.list_user_sessions().await?;
    Ok(list
        .iter()
        .map(|s| {
            let mark = if s.is_current() { '*' } else { '-' };
            format!("{mark} {}", s.label().unwrap_or("-"))
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

pub async fn logout(session: Session) -> Result<&'static str, Error> {
    session.logout().await?;
    Ok("bye")
}

pub async fn logout_all(session: Session) -> Result<String, Error> {
    Ok(session.logout_everywhere().await?.to_string())
}

pub async fn list(session: Session) -> Result<String, Error> {
    Ok(session.list_user_sessions().await?.len().to_string())
}

/// The storage keys of this user's sessions, one per line, oldest first.
pub async fn keys(session: Session) -> Result<String, Error> {
    let list = session.list_user_sessions().await?;
    Ok(list
        .iter()
        .map(|s| s.key.as_str())
        .collect::<Vec<_>>()
        .join("\n"))
}

/// This session's storage key.
pub async fn key(session: Session) -> Result<String, Error> {
    session.with(|s| s.storage_key().as_str().to_owned()).await
}

/// Ends the session whose storage key is the body.
pub async fn end(session: Session, key: String) -> Result<&'static str, Error> {
    session
        .end_session(&session_core::StorageKey::from_stored(&key))
        .await?;
    Ok("ended")
}

pub async fn issue(session: Session) -> Result<String, Error> {
    Ok(session.issue_token("transfer").await?.expose().to_owned())
}

pub async fn consume(session: Session, token: String) -> Result<StatusCode, Error> {
    Ok(
        if session
            .consume_token("transfer", &token)
            .await?
            .is_accepted()
        {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        },
    )
}

pub async fn rotate(session: Session) -> Result<&'static str, Error> {
    session.rotate().await?;
    Ok("rotated")
}

pub async fn incr(session: Session) -> Result<String, Error> {
    let n = session
        .update("n", |n: Option<u64>| Some(n.unwrap_or(0) + 1))
        .await?;
    Ok(format!("{n:?}"))
}

pub async fn logout_then_flash(session: Session) -> Result<String, Error> {
    session.logout().await?;
    session.insert("flash", "logged out").await?;
    let n: Option<u64> = session.get("n").await?;
    Ok(format!("{n:?} {:?}", session.user_id().await?))
}

pub async fn flash(session: Session) -> Result<String, Error> {
    let f: Option<String> = session.get("flash").await?;
    Ok(format!("{f:?} {:?}", session.user_id().await?))
}

pub async fn login_then_fail(session: Session, body: String) -> Result<StatusCode, Error> {
    session.login(&body).await?;
    Ok(StatusCode::INTERNAL_SERVER_ERROR)
}

pub async fn logout_then_fail(session: Session) -> Result<StatusCode, Error> {
    session.logout().await?;
    Ok(StatusCode::BAD_GATEWAY)
}

pub async fn write_then_fail(session: Session) -> Result<StatusCode, Error> {
    session.insert("n", &99).await?;
    Ok(StatusCode::SERVICE_UNAVAILABLE)
}

/// Every handler above, at its path (no session layer yet).
pub fn routes() -> Router {
    Router::new()
        .route("/static", get(|| async { "hello" }))
        .route("/visit", post(visit))
        .route("/read", get(read))
        .route("/login", post(login))
        .route("/login-labelled", post(login_labelled))
        .route("/devices", get(devices))
        .route("/logout", post(logout))
        .route("/logout-all", post(logout_all))
        .route("/list", get(list))
        .route("/keys", get(keys))
        .route("/key", get(key))
        .route("/end", post(end))
        .route("/token", get(issue).post(consume))
        .route("/rotate", post(rotate))
        .route("/fail", post(write_then_fail))
        .route("/incr", post(incr))
        .route("/logout-then-flash", post(logout_then_flash))
        .route("/flash", get(flash))
        .route("/login-then-fail", post(login_then_fail))
        .route("/logout-then-fail", post(logout_then_fail))
}

pub struct Reply {
    pub status: StatusCode,
    pub set_cookie: Vec<String>,
    pub cache_control: Option<String>,
    pub retry_after: Option<String>,
    pub body: String,
}

impl Reply {
    /// The `name=value` pair of the single Set-Cookie, for the next request.
    pub fn cookie(&self) -> String {
        assert_eq!(self.set_cookie.len(), 1, "expected one Set-Cookie");
        self.set_cookie[0].split(';').next().unwrap().to_owned()
    }
}

pub async fn send(
    router: &Router,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
    body: &str,
) -> Reply {
    let cookies: Vec<&[u8]> = cookie.map(str::as_bytes).into_iter().collect();
    send_raw(router, method, uri, &cookies, body).await
}

/// Sends one `Cookie` header line per element of `cookies`, as raw bytes.
pub async fn send_raw(
    router: &Router,
    method: &str,
    uri: &str,
    cookies: &[&[u8]],
    body: &str,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for c in cookies {
        req = req.header(header::COOKIE, HeaderValue::from_bytes(c).unwrap());
    }
    let res = router
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let set_cookie = res
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let cache_control = res
        .headers()
        .get(header::CACHE_CONTROL)
        .map(|v| v.to_str().unwrap().to_owned());
    let retry_after = res
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body =
        String::from_utf8(to_bytes(res.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
    Reply {
        status,
        set_cookie,
        cache_control,
        retry_after,
        body,
    }
}
