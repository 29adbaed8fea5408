//! The demo's router: routes, pages and protective headers.
//!
//! | route | what it does |
//! |---|---|
//! | `GET /` | login form |
//! | `POST /login` | checks `username`/`password`, logs in with a fresh session ID |
//! | `GET /profile` | the user, this session's deadlines with a countdown and its events; `401` (the login form) otherwise |
//! | `GET /devices` | "your devices": every live session of the user, each with "end this session" |
//! | `POST /devices/end` | with `device` (a row's tag) and the `password` again: ends that session |
//! | `GET /countdown.js` | the countdown script of the profile and devices pages |
//! | `POST /logout` | ends this session, removes the cookie, clears site data |
//! | `POST /logout-all` | with the `password` again: ends every session of the user |
//! | `GET /sessions` | the user's sessions as JSON, for scripts (storage keys, no IDs) |
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
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};
use serde::{Deserialize, Serialize};
use session_axum::{Error, Session, SessionLayer};
use session_core::{LimitStrategy, LoginOptions, SessionManager, StorageKey, Timestamp};
use time::format_description::well_known::Rfc3339;

use crate::device::label_from_user_agent;
use crate::events::{self, Event};
use crate::limits::{retry_after_secs, Refusal};
use crate::password::Auth;
use crate::ui::{self, deadline, page, page_with, time_tag, Nav};

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
    /// The session policy, in words, for the profile page.
    policy: Arc<str>,
}

/// The manager's session policy as a sentence.
fn policy_text(manager: &SessionManager) -> String {
    let c = manager.config();
    let limit = match c.user_limit() {
        None => "no limit on sessions per user".to_owned(),
        Some(l) => format!(
            "at most {} sessions per user ({})",
            l.max,
            match l.strategy {
                LimitStrategy::RejectNew => "a login beyond that is refused",
                LimitStrategy::EvictOldest => "a login beyond that ends the oldest",
                _ => "see the server's options",
            }
        ),
    };
    format!(
        "A session ends after {} without a request, {} after login at the latest; {limit}.",
        ui::duration(c.idle_timeout().as_secs()),
        ui::duration(c.absolute_timeout().as_secs()),
    )
}

/// Builds the demo's router over `manager`, checking passwords through
/// `auth`.
///
/// Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`: the per-address
/// throttle needs the client's address (without it, every client counts as
/// one).
pub fn router(manager: SessionManager, auth: Arc<Auth>) -> Router {
    let policy = policy_text(&manager).into();
    Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/profile", get(profile))
        .route("/logout", post(logout))
        .route("/logout-all", post(logout_all))
        .route("/sessions", get(sessions))
        .route("/sessions/end", post(end_session))
        .route("/devices", get(devices))
        .route("/devices/end", post(end_device))
        .route("/countdown.js", get(countdown_js))
        .route("/transfer", get(transfer_start).post(transfer))
        .route("/transfer/new", post(transfer_form))
        .fallback(not_found)
        .with_state(AppState { auth, policy })
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
        ui::humanize(next.run(req).await)
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(ui::CSP),
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

fn login_form(message: Option<&str>) -> String {
    let message = message
        .map(|m| {
            format!(
                "<p class=\"message\" id=\"message\" role=\"alert\">{}</p>",
                text(m)
            )
        })
        .unwrap_or_default();
    format!(
        "{message}<form class=\"card\" method=\"post\" action=\"/login\">\
         <label for=\"username\">Username</label><input name=\"username\" id=\"username\" autocomplete=\"username\" autocapitalize=\"none\" required>\
         <label for=\"password\">Password</label><input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <div><button type=\"submit\" id=\"login\">Log in</button></div></form>\
         <p class=\"note\">Log in from two browsers as the same user, then open <em>Your devices</em> in one of them: \
         each session is listed, and either browser can end the other.</p>"
    )
}

async fn home(session: Session) -> Result<Response, Error> {
    Ok(match session.user_id().await? {
        Some(user) => page_with(
            StatusCode::OK,
            "Session demo",
            Nav::LoggedIn,
            false,
            &format!(
                "<p>Logged in as {}. See your <a href=\"/profile\">profile</a> and <a href=\"/devices\">devices</a>.</p>",
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
    let label = label_from_user_agent(
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
    );
    let options = LoginOptions::new().with_label(label.clone());
    match session.login_with(&form.username, options).await {
        Ok(()) => {
            events::start(
                &session,
                vec![
                    Event::now(format!("Logged in on {label}.")),
                    Event::now(
                        "Session ID rotated at login: the browser got a fresh ID, and any ID it had before no longer works.",
                    ),
                ],
            )
            .await?;
            Ok(Redirect::to("/profile").into_response())
        }
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
        return Ok(Err(not_logged_in(true)));
    };
    let wrong = || {
        page(
            StatusCode::FORBIDDEN,
            "Password needed",
            "<p class=\"message\" id=\"message\" role=\"alert\">Enter your password again to do this: it was missing or wrong, and nothing was ended. <a href=\"/devices\">Back</a></p>",
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
            format!(
                "<p class=\"message\" id=\"message\" role=\"alert\">{}</p>",
                text(m)
            )
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

/// Whether the request carries a session cookie: then "not logged in"
/// means the session it named has ended.
fn has_session_cookie(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|c| c.trim_start().starts_with("__Host-session="))
}

/// The `401` page: the login form, saying the session ended when the
/// browser still had a cookie for it (logged out everywhere, ended from
/// another device, evicted by the per-user limit, timed out).
fn not_logged_in(ended: bool) -> Response {
    let message = if ended {
        "Your session has ended: it was logged out, ended from another device, or it timed out. Log in again."
    } else {
        "Please log in."
    };
    page(
        StatusCode::UNAUTHORIZED,
        "Not logged in",
        &login_form(Some(message)),
    )
}

async fn profile(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let Some(user) = session.user_id().await? else {
        return Ok(not_logged_in(has_session_cookie(&headers)));
    };
    let (label, created, last_seen, idle, absolute) = session
        .with(|s| {
            (
                s.label().map(str::to_owned),
                s.created_at(),
                s.last_access(),
                s.idle_deadline(),
                s.absolute_deadline(),
            )
        })
        .await?;
    let events: String = events::list(&session)
        .await?
        .iter()
        .map(|e| format!("<li>{} {}</li>", time_tag(e.timestamp()), text(&e.what)))
        .collect();
    Ok(page_with(
        StatusCode::OK,
        "Profile",
        Nav::LoggedIn,
        true,
        &format!(
            "<p id=\"greeting\">Hello, {user}!</p>\
             <section class=\"card\" aria-labelledby=\"this-session\"><h2 id=\"this-session\">This session</h2><dl>\
             <dt>Device</dt><dd id=\"label\">{label}</dd>\
             <dt>Logged in</dt><dd>{created}</dd>\
             <dt>Last request</dt><dd>{last_seen}</dd>\
             <dt>Ends if idle</dt><dd id=\"idle-deadline\">{idle}</dd>\
             <dt>Ends at the latest</dt><dd id=\"absolute-deadline\">{absolute}</dd></dl>\
             <p class=\"note\" id=\"policy\">{policy} Every request moves the idle deadline; reloading this page is a request.</p></section>\
             <section class=\"card\" aria-labelledby=\"history\"><h2 id=\"history\">What happened to this session</h2>\
             <ol class=\"events\" id=\"events\">{events}</ol>\
             <p class=\"note\">Ended from elsewhere (log out everywhere, another device, the per-user limit), this session stops working at its next request: reload to see.</p></section>\
             <section class=\"card\"><form method=\"post\" action=\"/logout\"><button type=\"submit\" id=\"logout\">Log out</button></form>\
             <form method=\"post\" action=\"/logout-all\">\
             <label for=\"logout-all-password\">Password, to log out everywhere</label>\
             <input name=\"password\" id=\"logout-all-password\" type=\"password\" autocomplete=\"current-password\" required>\
             <div><button type=\"submit\" class=\"danger\" id=\"logout-all\">Log out everywhere</button></div></form></section>",
            user = text(&user),
            label = text(label.as_deref().unwrap_or("(no label)")),
            created = time_tag(created),
            last_seen = time_tag(last_seen),
            idle = deadline(idle.min(absolute), true),
            absolute = deadline(absolute, true),
            policy = text(&state.policy),
        ),
    ))
}

/// `GET /countdown.js`: the script of [`ui::COUNTDOWN_JS`].
async fn countdown_js() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        ui::COUNTDOWN_JS,
    )
        .into_response()
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

/// The `404` of ending a session that is not one of the user's.
fn no_such_session() -> Response {
    page_with(
        StatusCode::NOT_FOUND,
        "No such session",
        Nav::LoggedIn,
        false,
        "<p class=\"message\" id=\"message\" role=\"alert\">That is not one of your sessions (it may have ended already). <a href=\"/devices\">Your devices</a></p>",
    )
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

async fn sessions(session: Session, headers: HeaderMap) -> Result<Response, Error> {
    let Some(user) = session.user_id().await? else {
        return Ok(not_logged_in(has_session_cookie(&headers)));
    };
    let sessions = session
        .list_user_sessions()
        .await?
        .into_iter()
        .map(|s| SessionInfo {
            key: s.key().as_str().to_owned(),
            created: rfc3339(s.summary.created_at),
            last_seen: rfc3339(s.summary.last_access),
            expires: rfc3339(s.summary.expires_at()),
            label: s.label().map(str::to_owned),
            current: s.is_current(),
        })
        .collect();
    Ok(Json(SessionList { user, sessions }).into_response())
}

/// `GET /devices`: every live session of the user, oldest first, the
/// current one marked, each with an "end this session" form naming it by
/// its tag ([`StorageKey::tag`]: a keyed hash of the storage key under
/// this process's random salt, which cannot be turned back into the key,
/// let alone a cookie). The storage keys themselves are not in the page.
async fn devices(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let Some(user) = session.user_id().await? else {
        return Ok(not_logged_in(has_session_cookie(&headers)));
    };
    let listed = session.list_user_sessions().await?;
    let rows: String = listed
        .iter()
        .map(|s| {
            let tag = s.key().tag();
            let current = s.is_current();
            let label = text(s.label().unwrap_or("Unnamed device")).into_owned();
            format!(
                "<li class=\"card device{cls}\" data-current=\"{current}\" aria-labelledby=\"d-{tag}\">\
                 <h2 id=\"d-{tag}\"><span class=\"label\">{label}</span>{badge}</h2><dl>\
                 <dt>Logged in</dt><dd>{created}</dd>\
                 <dt>Last seen</dt><dd>{last_seen}</dd>\
                 <dt>Ends if idle</dt><dd>{idle}</dd>\
                 <dt>Ends at the latest</dt><dd>{absolute}</dd></dl>\
                 <form class=\"inline\" method=\"post\" action=\"/devices/end\">\
                 <input type=\"hidden\" name=\"device\" value=\"{tag}\">\
                 <div><label for=\"pw-{tag}\">Password</label>\
                 <input id=\"pw-{tag}\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required></div>\
                 <button type=\"submit\" class=\"danger end\" aria-label=\"End the session of {label}{this}\">{button}</button></form></li>",
                cls = if current { " current" } else { "" },
                badge = if current {
                    " <span class=\"badge\">this device</span>"
                } else {
                    ""
                },
                this = if current { " (this device)" } else { "" },
                button = if current {
                    "End this session (log out)"
                } else {
                    "End this session"
                },
                created = time_tag(s.summary.created_at),
                last_seen = time_tag(s.summary.last_access),
                idle = deadline(s.summary.idle_deadline.min(s.summary.absolute_deadline), s.is_current()),
                absolute = deadline(s.summary.absolute_deadline, s.is_current()),
            )
        })
        .collect();
    Ok(page_with(
        StatusCode::OK,
        "Your devices",
        Nav::LoggedIn,
        true,
        &format!(
            "<p>{user}, you are logged in on {n}. Ending one logs that browser out at its next request. \
             Ending a session, or all of them, needs your password again.</p>\
             <ul class=\"devices\" id=\"devices\">{rows}</ul>\
             <form class=\"card\" method=\"post\" action=\"/logout-all\">\
             <label for=\"logout-all-password\">Password, to log out everywhere</label>\
             <input name=\"password\" id=\"logout-all-password\" type=\"password\" autocomplete=\"current-password\" required>\
             <div><button type=\"submit\" class=\"danger\" id=\"logout-all\">Log out everywhere</button></div></form>\
             <p class=\"note\">{policy} Times are UTC; the same list is at <a href=\"/sessions\">/sessions</a> as JSON.</p>",
            user = text(&user),
            n = match listed.len() {
                1 => "1 device".to_owned(),
                n => format!("{n} devices"),
            },
            policy = text(&state.policy),
        ),
    ))
}

/// The fields of `POST /devices/end`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EndDeviceForm {
    /// The tag of a row of the devices page.
    device: String,
    password: String,
}

/// `POST /devices/end`: after the password, ends the user's session whose
/// tag is `device`. The tag is looked up among this user's own sessions
/// only, and the end itself goes through [`Session::end_session`], which
/// checks again that the key is a live session of this user: a tag of
/// another user's session matches nothing and answers `404`.
async fn end_device(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    session: Session,
    Form(form): Form<EndDeviceForm>,
) -> Result<Response, Error> {
    if let Err(res) = reauthenticate(&state.auth, ip, &session, &form.password).await? {
        return Ok(res);
    }
    let found = session
        .list_user_sessions()
        .await?
        .into_iter()
        .find(|s| !form.device.is_empty() && s.key().tag() == form.device);
    let Some(target) = found else {
        return Ok(no_such_session());
    };
    match session.end_session(target.key()).await {
        Ok(()) if target.is_current() => Ok(logged_out_redirect()),
        Ok(()) => {
            tracing::info!(target: "session_demo", "ended one of the user's other devices");
            events::record(&session, "Ended the session of another device.").await?;
            Ok(Redirect::to("/devices").into_response())
        }
        Err(e) if e.is_not_your_session() => Ok(no_such_session()),
        Err(e) => Err(e),
    }
}

/// The transfer page: a button that starts a transfer. Safe: it issues no
/// token and writes nothing, so a cross-site `GET` (a link, an image) cannot
/// replace the token of a form the user has open.
async fn transfer_start(session: Session, headers: HeaderMap) -> Result<Response, Error> {
    if session.user_id().await?.is_none() {
        return Ok(not_logged_in(has_session_cookie(&headers)));
    }
    Ok(page_with(
        StatusCode::OK,
        "Transfer",
        Nav::LoggedIn,
        false,
        "<p>The transfer form carries a one-time token: it can be sent once, and a copy of it (a resubmission, a forged form) is refused.</p>\
         <form method=\"post\" action=\"/transfer/new\">\
         <button type=\"submit\" id=\"start\">Start a transfer</button></form>",
    ))
}

/// Issues the one-time token (replacing any outstanding one) and answers
/// the form carrying it. A `POST`, so only a same-site form can do it.
async fn transfer_form(session: Session, headers: HeaderMap) -> Result<Response, Error> {
    if session.user_id().await?.is_none() {
        return Ok(not_logged_in(has_session_cookie(&headers)));
    }
    let token = session.issue_token(TRANSFER).await?;
    events::record(&session, "One-time transfer token issued.").await?;
    Ok(page_with(
        StatusCode::OK,
        "Transfer",
        Nav::LoggedIn,
        false,
        &format!(
            "<form class=\"card\" method=\"post\" action=\"/transfer\">\
             <input type=\"hidden\" name=\"token\" value=\"{}\">\
             <label for=\"to\">To</label><input name=\"to\" id=\"to\" required>\
             <label for=\"amount\">Amount</label><input name=\"amount\" id=\"amount\" inputmode=\"decimal\" required>\
             <div><button type=\"submit\" id=\"send\">Send</button></div></form>",
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

async fn transfer(
    session: Session,
    headers: HeaderMap,
    Form(form): Form<TransferForm>,
) -> Result<Response, Error> {
    if session.user_id().await?.is_none() {
        return Ok(not_logged_in(has_session_cookie(&headers)));
    }
    if !session
        .consume_token(TRANSFER, &form.token)
        .await?
        .is_accepted()
    {
        events::record(&session, "A used or invalid one-time token was refused.").await?;
        return Ok(page_with(
            StatusCode::FORBIDDEN,
            "Transfer refused",
            Nav::LoggedIn,
            false,
            "<p class=\"message\" id=\"message\" role=\"alert\">This transfer form was already sent once (or is not valid), so it was refused and nothing was sent again. \
             <a href=\"/transfer\">Start a new transfer</a>.</p>",
        ));
    }
    events::record(&session, "One-time token used: transfer sent.").await?;
    Ok(page_with(
        StatusCode::OK,
        "Transfer done",
        Nav::LoggedIn,
        false,
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
