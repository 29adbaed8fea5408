//! What the tests share: handlers, the routes over them, a real actix-web
//! server bound to a spare local port (two workers, so requests truly run
//! in parallel), and a client that sends raw `Cookie` bytes and reads back
//! what a browser would keep.
#![allow(dead_code)]

use std::sync::mpsc;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use reqwest::header::{self, HeaderValue};
use reqwest::StatusCode;
use session_actix::{Error, Session, SessionManager, SessionMiddleware, StorageKey};

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

/// The demo's profile page: `401` unless logged in.
pub async fn profile(session: Session) -> Result<HttpResponse, Error> {
    Ok(match session.user_id().await? {
        Some(user) => HttpResponse::Ok().body(format!("profile of {user}")),
        None => HttpResponse::Unauthorized().body("not logged in"),
    })
}

pub async fn login(session: Session, body: String) -> Result<&'static str, Error> {
    session.login(&body).await?;
    Ok("ok")
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
    session.end_session(&StorageKey::from_stored(&key)).await?;
    Ok("ended")
}

pub async fn issue(session: Session) -> Result<String, Error> {
    Ok(session.issue_token("transfer").await?.expose().to_owned())
}

pub async fn consume(session: Session, token: String) -> Result<HttpResponse, Error> {
    Ok(
        if session
            .consume_token("transfer", &token)
            .await?
            .is_accepted()
        {
            HttpResponse::Ok().body("accepted")
        } else {
            HttpResponse::Forbidden().body("refused")
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

pub async fn login_then_fail(session: Session, body: String) -> Result<HttpResponse, Error> {
    session.login(&body).await?;
    Ok(HttpResponse::InternalServerError().finish())
}

pub async fn logout_then_fail(session: Session) -> Result<HttpResponse, Error> {
    session.logout().await?;
    Ok(HttpResponse::BadGateway().finish())
}

pub async fn write_then_fail(session: Session) -> Result<HttpResponse, Error> {
    session.insert("n", &99).await?;
    Ok(HttpResponse::ServiceUnavailable().finish())
}

/// Every handler above, at its path.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/static", web::get().to(|| async { "hello" }))
        .route("/visit", web::post().to(visit))
        .route("/read", web::get().to(read))
        .route("/profile", web::get().to(profile))
        .route("/login", web::post().to(login))
        .route("/logout", web::post().to(logout))
        .route("/logout-all", web::post().to(logout_all))
        .route("/list", web::get().to(list))
        .route("/keys", web::get().to(keys))
        .route("/key", web::get().to(key))
        .route("/end", web::post().to(end))
        .route("/token", web::get().to(issue))
        .route("/token", web::post().to(consume))
        .route("/rotate", web::post().to(rotate))
        .route("/fail", web::post().to(write_then_fail))
        .route("/incr", web::post().to(incr))
        .route("/logout-then-flash", web::post().to(logout_then_flash))
        .route("/flash", web::get().to(flash))
        .route("/login-then-fail", web::post().to(login_then_fail))
        .route("/logout-then-fail", web::post().to(logout_then_fail));
}

/// A running actix-web server with [`SessionMiddleware`] around `routes`,
/// stopped on drop.
pub struct Server {
    base: String,
    client: reqwest::Client,
    handle: ServerHandle,
}

impl Server {
    /// Every handler of [`routes`] behind the middleware over `manager`.
    pub fn start(manager: SessionManager) -> Arc<Self> {
        Self::start_with(manager, routes)
    }

    /// `configure` behind the middleware over `manager`, served by two
    /// workers (each on its own thread and runtime, as in production).
    pub fn start_with<F>(manager: SessionManager, configure: F) -> Arc<Self>
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .wrap(SessionMiddleware::new(manager.clone()))
                        .configure(configure.clone())
                })
                .workers(2)
                .disable_signals()
                .shutdown_timeout(0)
                .bind(("127.0.0.1", 0))
                .expect("bind a local port");
                let addr = server.addrs()[0];
                let server = server.run();
                tx.send((addr, server.handle())).expect("test alive");
                server.await
            })
        });
        let (addr, handle) = rx.recv().expect("the server thread started");
        // Plain HTTP only; but built together with the rest of the
        // workspace, reqwest has rustls without a default crypto provider
        // (the demo's choice), and its client then needs one installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client");
        Arc::new(Self {
            base: format!("http://{addr}"),
            client,
            handle,
        })
    }

    pub async fn send(&self, method: &str, uri: &str, cookie: Option<&str>, body: &str) -> Reply {
        let cookies: Vec<&[u8]> = cookie.map(str::as_bytes).into_iter().collect();
        self.send_raw(method, uri, &cookies, body).await
    }

    /// Sends one `Cookie` header line per element of `cookies`, as raw bytes.
    pub async fn send_raw(&self, method: &str, uri: &str, cookies: &[&[u8]], body: &str) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .client
            .request(method, format!("{}{uri}", self.base))
            .body(body.to_owned());
        for c in cookies {
            req = req.header(header::COOKIE, HeaderValue::from_bytes(c).unwrap());
        }
        let res = req.send().await.expect("the server answers");
        let status = res.status();
        let header = |name| {
            res.headers()
                .get(name)
                .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
        };
        let cache_control = header(header::CACHE_CONTROL);
        let retry_after = header(header::RETRY_AFTER);
        let set_cookie = res
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let body = res.text().await.expect("a body");
        Reply {
            status,
            set_cookie,
            cache_control,
            retry_after,
            body,
        }
    }

    /// Whether the session of `cookie` is logged in, and as whom.
    pub async fn whoami(&self, cookie: &str) -> Option<String> {
        let r = self.send("GET", "/profile", Some(cookie), "").await;
        match r.status {
            StatusCode::OK => Some(r.body.strip_prefix("profile of ").unwrap().to_owned()),
            StatusCode::UNAUTHORIZED => None,
            other => panic!("/profile answered {other}: {}", r.body),
        }
    }

    /// Logs `user` in with no cookie; the new cookie.
    pub async fn login(&self, user: &str) -> String {
        let r = self.send("POST", "/login", None, user).await;
        assert_eq!(r.status, StatusCode::OK, "login of {user}: {}", r.body);
        r.cookie()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Sends the stop command at once; the future only waits for it.
        drop(self.handle.stop(false));
    }
}

#[derive(Debug)]
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
        assert_eq!(
            self.set_cookie.len(),
            1,
            "expected one Set-Cookie: {self:?}"
        );
        self.set_cookie[0].split(';').next().unwrap().to_owned()
    }

    /// Whether the response removes the session cookie.
    pub fn removes_cookie(&self) -> bool {
        self.set_cookie.len() == 1
            && self.set_cookie[0].starts_with("__Host-session=;")
            && self.set_cookie[0].contains("Max-Age=0")
    }
}
