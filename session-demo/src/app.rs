//! The demo's router: routes, pages and protective headers.
//!
//! | route | what it does |
//! |---|---|
//! | `GET /` | login form |
//! | `POST /login` | checks `username`/`password`, logs in with a fresh session ID |
//! | `GET /profile` | greets the user, `401` otherwise |
//! | `POST /logout` | ends this session, removes the cookie |
//! | `POST /logout-all` | ends every session of the user |
//! | `GET /sessions` | the user's sessions as JSON (no IDs) |
//! | `GET /transfer` | a form carrying a one-time token |
//! | `POST /transfer` | succeeds once per token, `403` otherwise |
//!
//! Cross-site request forgery is stopped three ways: the session cookie is
//! `SameSite=Lax` (browsers do not send it on cross-site POSTs), state-changing
//! requests whose `Origin` or `Sec-Fetch-Site` reveal another site are
//! refused with `403`, and the transfer needs the one-time token from the form.

use std::sync::Arc;

use axum::extract::{Form, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};
use serde::{Deserialize, Serialize};
use session_axum::{Error, Session, SessionLayer};
use session_core::{SessionManager, Timestamp};
use time::format_description::well_known::Rfc3339;

use crate::users::Users;

/// The purpose under which transfer tokens are issued.
const TRANSFER: &str = "transfer";

#[derive(Clone)]
struct AppState {
    users: Arc<Users>,
}

/// Builds the demo's router over `manager`, checking logins against `users`.
pub fn router(manager: SessionManager, users: Arc<Users>) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/profile", get(profile))
        .route("/logout", post(logout))
        .route("/logout-all", post(logout_all))
        .route("/sessions", get(sessions))
        .route("/transfer", get(transfer_form).post(transfer))
        .with_state(AppState { users })
        .layer(SessionLayer::new(manager))
        .layer(middleware::from_fn(protect))
}

/// Refuses cross-site state changes and adds protective headers.
async fn protect(req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let mut res = if !safe && cross_site(req.headers(), req.uri().authority()) {
        let h = req.headers();
        tracing::info!(
            target: "session_demo",
            method = %req.method(),
            path = req.uri().path(),
            origin = ?h.get(header::ORIGIN),
            sec_fetch_site = ?h.get("sec-fetch-site"),
            "cross-site request refused"
        );
        page(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "<p>Cross-site request refused.</p>",
        )
    } else {
        next.run(req).await
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

/// Whether the browser tells us the request comes from another origin.
///
/// Fetch metadata (`Sec-Fetch-Site`) decides when present: only
/// `same-origin` and `none` (typed in the address bar) pass. Browsers that
/// do not send it are judged by `Origin`, which must be this server's own
/// (`null`, sent for opaque or privacy-restricted origins, is refused).
/// Requests with neither header (non-browser clients) pass: the
/// `SameSite=Lax` cookie already keeps browsers' cross-site POSTs anonymous.
fn cross_site(headers: &HeaderMap, authority: Option<&axum::http::uri::Authority>) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(authority.map(axum::http::uri::Authority::as_str));
    match (origin.to_str(), host) {
        (Ok(origin), Some(host)) => origin != format!("https://{host}"),
        _ => true,
    }
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} - session demo</title>\
         <style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}label{{display:block;margin:.5em 0}}</style>\
         </head><body><h1>{}</h1>{body}</body></html>",
        text(title),
        text(title)
    );
    (status, Html(html)).into_response()
}

fn login_form(message: Option<&str>) -> String {
    let message = message
        .map(|m| format!("<p id=\"message\">{}</p>", text(m)))
        .unwrap_or_default();
    format!(
        "{message}<form method=\"post\" action=\"/login\">\
         <label>Username <input name=\"username\" id=\"username\" autocomplete=\"username\" required></label>\
         <label>Password <input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\" id=\"login\">Log in</button></form>"
    )
}

async fn home(session: Session) -> Result<Response, Error> {
    Ok(match session.user_id().await? {
        Some(user) => page(
            StatusCode::OK,
            "Session demo",
            &format!(
                "<p>Logged in as {}. <a href=\"/profile\">Profile</a></p>",
                text(&user)
            ),
        ),
        None => page(StatusCode::OK, "Log in", &login_form(None)),
    })
}

/// The login form's fields.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LoginForm {
    username: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<LoginForm>,
) -> Result<Response, Error> {
    let users = Arc::clone(&state.users);
    let name = form.username.clone();
    let ok = tokio::task::spawn_blocking(move || users.verify(&name, &form.password))
        .await
        .unwrap_or(false);
    if !ok {
        tracing::info!(target: "session_demo", "failed login");
        return Ok(page(
            StatusCode::UNAUTHORIZED,
            "Log in",
            &login_form(Some("Wrong username or password.")),
        ));
    }
    match session.login(&form.username).await {
        Ok(()) => Ok(Redirect::to("/profile").into_response()),
        Err(e) if e.is_too_many_sessions() => Ok(page(
            StatusCode::FORBIDDEN,
            "Log in",
            &login_form(Some(
                "Too many active sessions: log out on another device first.",
            )),
        )),
        Err(e) => Err(e),
    }
}

fn not_logged_in() -> Response {
    page(
        StatusCode::UNAUTHORIZED,
        "Not logged in",
        "<p>Please <a href=\"/\">log in</a>.</p>",
    )
}

async fn profile(session: Session) -> Result<Response, Error> {
    let Some(user) = session.user_id().await? else {
        return Ok(not_logged_in());
    };
    Ok(page(
        StatusCode::OK,
        "Profile",
        &format!(
            "<p id=\"greeting\">Hello, {}!</p>\
             <p><a href=\"/sessions\">Your sessions</a> &middot; <a href=\"/transfer\">Transfer</a></p>\
             <form method=\"post\" action=\"/logout\"><button type=\"submit\" id=\"logout\">Log out</button></form>\
             <form method=\"post\" action=\"/logout-all\"><button type=\"submit\" id=\"logout-all\">Log out everywhere</button></form>",
            text(&user)
        ),
    ))
}

async fn logout(session: Session) -> Result<Response, Error> {
    session.logout().await?;
    Ok(Redirect::to("/").into_response())
}

async fn logout_all(session: Session) -> Result<Response, Error> {
    if session.user_id().await?.is_none() {
        return Ok(not_logged_in());
    }
    let ended = session.logout_everywhere().await?;
    tracing::info!(target: "session_demo", ended, "logged out everywhere");
    Ok(Redirect::to("/").into_response())
}

/// One entry of `GET /sessions`.
#[derive(Debug, Serialize)]
struct SessionInfo {
    created: String,
    last_seen: String,
    expires: String,
    current: bool,
}

/// The body of `GET /sessions`.
#[derive(Debug, Serialize)]
struct SessionList {
    user: String,
    sessions: Vec<SessionInfo>,
}

fn rfc3339(t: Timestamp) -> String {
    t.to_offset_date_time()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "-".to_owned())
}

async fn sessions(session: Session) -> Result<Response, Error> {
    let Some(user) = session.user_id().await? else {
        return Ok(not_logged_in());
    };
    let current = session.with(|s| s.storage_key().clone()).await?;
    let sessions = session
        .list_sessions()
        .await?
        .into_iter()
        .map(|s| SessionInfo {
            created: rfc3339(s.created_at),
            last_seen: rfc3339(s.last_access),
            expires: rfc3339(s.expires_at()),
            current: s.key == current,
        })
        .collect();
    Ok(Json(SessionList { user, sessions }).into_response())
}

async fn transfer_form(session: Session) -> Result<Response, Error> {
    if session.user_id().await?.is_none() {
        return Ok(not_logged_in());
    }
    let token = session.issue_token(TRANSFER).await?;
    Ok(page(
        StatusCode::OK,
        "Transfer",
        &format!(
            "<form method=\"post\" action=\"/transfer\">\
             <input type=\"hidden\" name=\"token\" value=\"{}\">\
             <label>To <input name=\"to\" id=\"to\" required></label>\
             <label>Amount <input name=\"amount\" id=\"amount\" required></label>\
             <button type=\"submit\" id=\"send\">Send</button></form>",
            attr(token.expose())
        ),
    ))
}

/// The transfer form's fields.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TransferForm {
    token: String,
    to: String,
    amount: String,
}

async fn transfer(session: Session, Form(form): Form<TransferForm>) -> Result<Response, Error> {
    if session.user_id().await?.is_none() {
        return Ok(not_logged_in());
    }
    if !session.consume_token(TRANSFER, &form.token).await? {
        return Ok(page(
            StatusCode::FORBIDDEN,
            "Transfer refused",
            "<p>This form was already used or is not valid. <a href=\"/transfer\">Start again</a>.</p>",
        ));
    }
    Ok(page(
        StatusCode::OK,
        "Transfer done",
        &format!(
            "<p id=\"result\">Sent {} to {}.</p>",
            text(&form.amount),
            text(&form.to)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn cross_site_detection() {
        let same = headers(&[
            ("host", "127.0.0.1:8443"),
            ("origin", "https://127.0.0.1:8443"),
        ]);
        assert!(!cross_site(&same, None));
        let other = headers(&[
            ("host", "127.0.0.1:8443"),
            ("origin", "https://evil.example"),
        ]);
        assert!(cross_site(&other, None));
        let http = headers(&[
            ("host", "127.0.0.1:8443"),
            ("origin", "http://127.0.0.1:8443"),
        ]);
        assert!(cross_site(&http, None));
        assert!(cross_site(
            &headers(&[("sec-fetch-site", "cross-site")]),
            None
        ));
        assert!(cross_site(
            &headers(&[("sec-fetch-site", "same-site")]),
            None
        ));
        assert!(!cross_site(
            &headers(&[("sec-fetch-site", "same-origin")]),
            None
        ));
        assert!(
            !cross_site(&HeaderMap::new(), None),
            "non-browser clients pass"
        );
        assert!(cross_site(
            &headers(&[("host", "a"), ("origin", "null")]),
            None
        ));
    }

    #[test]
    fn pages_escape_user_input() {
        let form = login_form(Some("<script>alert(1)</script>"));
        assert!(form.contains("&lt;script&gt;"));
        assert!(!form.contains("<script>"));
    }
}
