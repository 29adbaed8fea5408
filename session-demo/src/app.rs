//! The demo's router: routes, pages and protective headers.
//!
//! | route | what it does |
//! |---|---|
//! | `GET /` | login form |
//! | `POST /login` | checks `username`/`password`, logs in with a fresh session ID |
//! | `GET /profile` | greets the user, `401` otherwise |
//! | `POST /logout` | ends this session, removes the cookie, clears site data |
//! | `POST /logout-all` | with the `password` again: ends every session of the user |
//! | `GET /sessions` | the user's sessions as JSON (storage keys, no IDs) |
//! | `POST /sessions/end` | with `key` and the `password` again: ends one of the user's sessions |
//! | `GET /transfer` | a page to start a transfer (no side effect) |
//! | `POST /transfer/new` | issues a one-time token and answers the transfer form |
//! | `POST /transfer` | succeeds once per token, `403` otherwise |
//!
//! Cross-site request forgery is stopped three ways: the session cookie is
//! `SameSite=Lax` (browsers do not send it on cross-site POSTs), state-changing
//! requests whose `Origin` or `Sec-Fetch-Site` reveal another site are
//! refused with `403`, and the transfer needs the one-time token from the form.
//! `GET` and `HEAD` change nothing (beyond keeping the session alive), so a
//! cross-site link or image cannot cancel the user's open transfer form.
//!
//! Every password check (login, and the password asked again before "log
//! out everywhere" or ending a session) goes through [`Auth`]: per-address
//! and per-account throttles (`429` with `Retry-After`), then a bounded set
//! of workers (`503` with `Retry-After` when they and their queue are full).

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};
use serde::{Deserialize, Serialize};
use session_axum::{Error, Session, SessionLayer};
use session_core::label::fit_label;
use session_core::{LoginOptions, SessionManager, StorageKey, Timestamp};
use time::format_description::well_known::Rfc3339;

use crate::limits::{retry_after_secs, Refusal};
use crate::password::Auth;

/// The purpose under which transfer tokens are issued.
const TRANSFER: &str = "transfer";

/// `Strict-Transport-Security` on every response: browsers use HTTPS only
/// for this host (and its subdomains) for a year.
pub const HSTS: &str = "max-age=31536000; includeSubDomains";

/// `Clear-Site-Data` on logout: the browser drops this origin's cookies and
/// storage.
pub const CLEAR_SITE_DATA: &str = "\"cookies\", \"storage\"";

#[derive(Clone)]
struct AppState {
    auth: Arc<Auth>,
}

/// Builds the demo's router over `manager`, checking passwords through
/// `auth`.
///
/// Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`: the per-address
/// throttle needs the client's address (without it, every client counts as
/// one).
pub fn router(manager: SessionManager, auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/profile", get(profile))
        .route("/logout", post(logout))
        .route("/logout-all", post(logout_all))
        .route("/sessions", get(sessions))
        .route("/sessions/end", post(end_session))
        .route("/transfer", get(transfer_start).post(transfer))
        .route("/transfer/new", post(transfer_form))
        .fallback(not_found)
        .with_state(AppState { auth })
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
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static(HSTS),
    );
    res
}

/// The client's address, from the connection (not from headers a client
/// can forge); unspecified when the router is served without connect info.
struct ClientIp(IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip()),
        ))
    }
}

/// The answer to a throttled or refused password check: `429` or `503`
/// with `Retry-After`, the page built by `body` around the message.
fn refused(refusal: Refusal, title: &str, body: impl Fn(&str) -> String) -> Response {
    let (status, wait, message) = match refusal {
        Refusal::TooMany(wait) => (
            StatusCode::TOO_MANY_REQUESTS,
            wait,
            "Too many password attempts",
        ),
        Refusal::Busy(wait) => (
            StatusCode::SERVICE_UNAVAILABLE,
            wait,
            "Too many password checks at once",
        ),
    };
    let secs = retry_after_secs(wait);
    let mut res = page(
        status,
        title,
        &body(&format!("{message}: try again in {secs} s.")),
    );
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
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
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    session: Session,
    Form(form): Form<LoginForm>,
) -> Result<Response, Error> {
    match state.auth.check(ip, &form.username, &form.password).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(target: "session_demo", "failed login");
            return Ok(page(
                StatusCode::UNAUTHORIZED,
                "Log in",
                &login_form(Some("Wrong username or password.")),
            ));
        }
        Err(refusal) => {
            tracing::info!(target: "session_demo", %ip, ?refusal, "login attempt refused");
            return Ok(refused(refusal, "Log in", |m| login_form(Some(m))));
        }
    }
    // The session's label on the user's session list: the browser's
    // User-Agent, cut to fit (a real application might shorten it to
    // "Firefox on Linux").
    let mut options = LoginOptions::new();
    if let Some(label) = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(fit_label)
    {
        options = options.with_label(label);
    }
    match session.login_with(&form.username, options).await {
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

/// Asks the logged-in user's password again before a sensitive change
/// (ASVS 4.0.3 3.3.4): the user, or the response to send instead (`401`
/// when not logged in, `403` for a missing or wrong password, `429`/`503`
/// when throttled).
async fn reauthenticate(
    auth: &Auth,
    ip: IpAddr,
    session: &Session,
    password: &str,
) -> Result<Result<String, Response>, Error> {
    let Some(user) = session.user_id().await? else {
        return Ok(Err(not_logged_in()));
    };
    let wrong = || {
        page(
            StatusCode::FORBIDDEN,
            "Password needed",
            "<p id=\"message\">Enter your password again to do this. <a href=\"/profile\">Back</a></p>",
        )
    };
    if password.is_empty() {
        return Ok(Err(wrong()));
    }
    match auth.check(ip, &user, password).await {
        Ok(true) => Ok(Ok(user)),
        Ok(false) => {
            tracing::info!(target: "session_demo", "wrong password on re-authentication");
            Ok(Err(wrong()))
        }
        Err(refusal) => Ok(Err(refused(refusal, "Password needed", |m| {
            format!("<p id=\"message\">{}</p>", text(m))
        }))),
    }
}

async fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        "<p>No such page. <a href=\"/\">Home</a></p>",
    )
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
             <form method=\"post\" action=\"/logout-all\">\
             <label>Password <input name=\"password\" id=\"logout-all-password\" type=\"password\" autocomplete=\"current-password\" required></label>\
             <button type=\"submit\" id=\"logout-all\">Log out everywhere</button></form>",
            text(&user)
        ),
    ))
}

/// A redirect to `/` that also tells the browser to drop this origin's
/// cookies and storage.
fn logged_out_redirect() -> Response {
    let mut res = Redirect::to("/").into_response();
    res.headers_mut().insert(
        HeaderName::from_static("clear-site-data"),
        HeaderValue::from_static(CLEAR_SITE_DATA),
    );
    res
}

async fn logout(session: Session) -> Result<Response, Error> {
    session.logout().await?;
    Ok(logged_out_redirect())
}

/// The password field of the forms that ask for it again.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PasswordForm {
    password: String,
}

async fn logout_all(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    session: Session,
    Form(form): Form<PasswordForm>,
) -> Result<Response, Error> {
    if let Err(res) = reauthenticate(&state.auth, ip, &session, &form.password).await? {
        return Ok(res);
    }
    let ended = session.logout_everywhere().await?;
    tracing::info!(target: "session_demo", ended, "logged out everywhere");
    Ok(logged_out_redirect())
}

/// The fields of `POST /sessions/end`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EndSessionForm {
    key: String,
    password: String,
}

/// Whether `key` looks like a storage key (64 lowercase hex characters),
/// so junk never reaches the store.
fn well_formed_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

async fn end_session(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    session: Session,
    Form(form): Form<EndSessionForm>,
) -> Result<Response, Error> {
    if let Err(res) = reauthenticate(&state.auth, ip, &session, &form.password).await? {
        return Ok(res);
    }
    let no_such_session = || {
        page(
            StatusCode::NOT_FOUND,
            "No such session",
            "<p id=\"message\">That is not one of your sessions (it may have ended already). <a href=\"/sessions\">Your sessions</a></p>",
        )
    };
    if !well_formed_key(&form.key) {
        return Ok(no_such_session());
    }
    let key = StorageKey::from_stored(&form.key);
    let current = session.with(|s| s.storage_key() == &key).await?;
    match session.end_session(&key).await {
        Ok(()) if current => Ok(logged_out_redirect()),
        Ok(()) => {
            tracing::info!(target: "session_demo", "ended one of the user's other sessions");
            Ok(Redirect::to("/sessions").into_response())
        }
        Err(e) if e.is_not_your_session() => Ok(no_such_session()),
        Err(e) => Err(e),
    }
}

/// One entry of `GET /sessions`.
#[derive(Debug, Serialize)]
struct SessionInfo {
    /// The storage key (a one-way, keyed hash of the session ID: it cannot
    /// be turned into a cookie), to name the session in `POST /sessions/end`.
    key: String,
    created: String,
    last_seen: String,
    expires: String,
    /// The label given at login (from the browser's User-Agent), if any.
    label: Option<String>,
    /// Whether this is the session that asked.
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
    let sessions = session
        .list_user_sessions()
        .await?
        .into_iter()
        .map(|s| SessionInfo {
            key: s.key.as_str().to_owned(),
            created: rfc3339(s.created_at),
            last_seen: rfc3339(s.last_access),
            expires: rfc3339(s.expires_at()),
            current: s.is_current(),
            label: s.summary.label,
        })
        .collect();
    Ok(Json(SessionList { user, sessions }).into_response())
}

/// The transfer page: a button that starts a transfer. Safe: it issues no
/// token and writes nothing, so a cross-site `GET` (a link, an image) cannot
/// replace the token of a form the user has open.
async fn transfer_start(session: Session) -> Result<Response, Error> {
    if session.user_id().await?.is_none() {
        return Ok(not_logged_in());
    }
    Ok(page(
        StatusCode::OK,
        "Transfer",
        "<form method=\"post\" action=\"/transfer/new\">\
         <button type=\"submit\" id=\"start\">Start a transfer</button></form>",
    ))
}

/// Issues the one-time token (replacing any outstanding one) and answers
/// the form carrying it. A `POST`, so only a same-site form can do it.
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
    if !session
        .consume_token(TRANSFER, &form.token)
        .await?
        .is_accepted()
    {
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
