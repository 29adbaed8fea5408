//! The middleware and extractor over MemoryStore wrapped in call counters
//! and a failure switch: what costs a store call, what is written when,
//! what a failing store or commit answers, how an error from a service
//! inside the middleware is handled, and that nothing renders a secret.

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Service as _;
use actix_web::{web, HttpResponse};
use reqwest::StatusCode;
use session_actix::session_core::conformance::{CallCounter, HookedStore, Operation};
use session_actix::session_core::{ManualClock, Timestamp};
use session_actix::{Error, MemoryStore, Session, SessionConfig, SessionManager, StoreError};

use common::{routes, Server};

/// MemoryStore with call counters and a switch that makes every call fail.
type CountingStore = HookedStore<MemoryStore, CallCounter>;

const WRITES: &[Operation] = &[Operation::Create, Operation::CreateWith, Operation::Update];

/// Every call of `store` fails as unavailable (with a message naming a
/// secret-looking host, which must never reach a response) while `on`.
fn set_failing(store: &CountingStore, on: bool) {
    store.hooks().fail_with(on.then(|| {
        Arc::new(|_| StoreError::unavailable("db-secret-host.internal:6379 refused"))
            as Arc<dyn Fn(Operation) -> StoreError + Send + Sync>
    }));
}

struct App {
    store: Arc<CountingStore>,
    clock: Arc<ManualClock>,
    server: Arc<Server>,
}

impl App {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::new(Timestamp::now()));
        Self::over(MemoryStore::with_clock(clock.clone()), clock, routes)
    }

    fn over<F>(store: MemoryStore, clock: Arc<ManualClock>, configure: F) -> Self
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        let store = Arc::new(HookedStore::new(store, CallCounter::new()));
        let config = SessionConfig::builder()
            .idle_timeout(Duration::from_secs(600))
            .touch_interval(Duration::from_secs(60))
            .build()
            .unwrap();
        let manager = SessionManager::builder(Arc::clone(&store))
            .config(config)
            .clock(clock.clone())
            .build();
        Self {
            server: Server::start_with(manager, configure),
            store,
            clock,
        }
    }
}

impl std::ops::Deref for App {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

#[tokio::test]
async fn a_handler_that_ignores_the_session_costs_no_store_call() {
    let app = App::new();
    let first = app.send("POST", "/visit", None, "").await;
    let calls = app.store.hooks().total();
    let r = app.send("GET", "/static", Some(&first.cookie()), "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(app.store.hooks().total(), calls, "no store round trip");
    assert!(r.set_cookie.is_empty());
    assert_eq!(r.cache_control, None, "does not depend on the session");
}

#[tokio::test]
async fn an_anonymous_read_stores_nothing_and_sets_no_cookie() {
    let app = App::new();
    let r = app.send("GET", "/read", None, "").await;
    assert_eq!(r.body, "None None");
    assert!(r.set_cookie.is_empty());
    assert_eq!(app.store.hooks().total(), 0);
    assert_eq!(r.cache_control.as_deref(), Some("no-store"));
}

#[tokio::test]
async fn a_write_sets_the_cookie_once_and_later_requests_see_it() {
    let app = App::new();
    let r = app.send("POST", "/visit", None, "").await;
    assert_eq!(r.body, "1");
    let cookie = r.cookie();
    let r = app.send("POST", "/visit", Some(&cookie), "").await;
    assert_eq!(r.body, "2");
    assert!(r.set_cookie.is_empty(), "same ID: no new cookie");
}

#[tokio::test]
async fn unchanged_sessions_are_not_written_and_touched_only_when_due() {
    let app = App::new();
    let cookie = app.send("POST", "/visit", None, "").await.cookie();
    let writes = app.store.hooks().calls_of(WRITES);
    app.send("GET", "/read", Some(&cookie), "").await;
    assert_eq!(app.store.hooks().calls_of(WRITES), writes);
    assert_eq!(app.store.hooks().calls(Operation::Touch), 0, "not due yet");
    app.clock.advance(Duration::from_secs(61));
    let r = app.send("GET", "/read", Some(&cookie), "").await;
    assert_eq!(r.body, "Some(1) None");
    assert_eq!(app.store.hooks().calls(Operation::Touch), 1);
    assert_eq!(app.store.hooks().calls_of(WRITES), writes);
}

#[tokio::test]
async fn nothing_is_committed_on_a_server_error() {
    let app = App::new();
    let r = app.send("POST", "/fail", None, "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.set_cookie.is_empty());
    assert_eq!(app.store.hooks().calls_of(WRITES), 0);
}

#[tokio::test]
async fn an_unreachable_store_answers_503_with_retry_after() {
    let app = App::new();
    let cookie = app.send("POST", "/visit", None, "").await.cookie();
    set_failing(&app.store, true);
    for (method, uri) in [("GET", "/read"), ("POST", "/visit"), ("POST", "/login")] {
        let r = app.send(method, uri, Some(&cookie), "alice").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert_eq!(r.retry_after.as_deref(), Some("1"), "{uri}");
        assert!(!r.body.contains("secret"), "{uri}: {}", r.body);
        assert!(r.set_cookie.is_empty());
        assert_eq!(r.cache_control.as_deref(), Some("no-store"));
    }
    set_failing(&app.store, false);
    let r = app.send("GET", "/read", Some(&cookie), "").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "Some(1) None")
    );
}

#[tokio::test]
async fn a_full_memory_store_answers_503() {
    let store = MemoryStore::builder().max_sessions(1).build();
    let app = App::over(store, Arc::new(ManualClock::new(Timestamp::now())), routes);
    app.send("POST", "/visit", None, "").await.cookie();
    let r = app.send("POST", "/visit", None, "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
}

/// Reads and writes through the session, then makes the store fail, so
/// that the commit at response time is what fails.
fn visit_then_break(store: Arc<CountingStore>) -> impl Fn(&mut web::ServiceConfig) + Send + Clone {
    move |cfg: &mut web::ServiceConfig| {
        let store = Arc::clone(&store);
        cfg.route(
            "/visit",
            web::post().to(move |session: Session| {
                let store = Arc::clone(&store);
                async move {
                    let n: u64 = session.get("n").await?.unwrap_or(0);
                    session.insert("n", &(n + 1)).await?;
                    set_failing(&store, true);
                    Ok::<_, Error>("handler says fine")
                }
            }),
        );
    }
}

#[tokio::test]
async fn a_commit_failure_replaces_the_response() {
    let inner = MemoryStore::new();
    // The handler needs the store the middleware uses: build it first.
    let store = Arc::new(HookedStore::new(inner, CallCounter::new()));
    let manager = SessionManager::new(Arc::clone(&store));
    let server = Server::start_with(manager, visit_then_break(Arc::clone(&store)));
    let r = server.send("POST", "/visit", None, "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert_eq!(r.cache_control.as_deref(), Some("no-store"));
    assert!(r.body.is_empty(), "generic body, got {:?}", r.body);
    assert!(r.set_cookie.is_empty());
    set_failing(&store, false);
    assert_eq!(
        store.hooks().calls_of(WRITES),
        1,
        "the commit at response time was what failed"
    );
}

/// `/inner/login` behind a middleware, inside the session middleware, that
/// turns the handler's success into an error (`403`, or `500` for
/// `/inner/login-500`).
fn erroring_scope(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/inner")
            .wrap_fn(|req, srv| {
                let status = if req.path().ends_with("-500") {
                    actix_web::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    actix_web::http::StatusCode::FORBIDDEN
                };
                let fut = srv.call(req);
                async move {
                    let _ = fut.await?;
                    Err::<actix_web::dev::ServiceResponse, _>(
                        actix_web::error::InternalError::new("refused after the handler", status)
                            .into(),
                    )
                }
            })
            .route("/login", web::post().to(common::login))
            .route("/login-500", web::post().to(common::login)),
    )
    .route("/read", web::get().to(common::read));
}

#[tokio::test]
async fn an_error_from_an_inner_service_keeps_its_status_and_gets_the_cookie() {
    let server = Server::start_with(SessionManager::new(MemoryStore::new()), erroring_scope);
    let r = server.send("POST", "/inner/login", None, "alice").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body, "refused after the handler");
    assert_eq!(r.cache_control.as_deref(), Some("no-store"));
    let c = r.cookie();
    assert_eq!(
        server.send("GET", "/read", Some(&c), "").await.body,
        "None Some(\"alice\")",
        "the login reached the store and the client"
    );
    // A 5xx error: the login already made still reaches the client.
    let r = server
        .send("POST", "/inner/login-500", Some(&c), "bob")
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let c2 = r.cookie();
    assert_ne!(c2, c);
    assert_eq!(
        server.send("GET", "/read", Some(&c2), "").await.body,
        "None Some(\"bob\")"
    );
}

#[test]
fn the_extractor_without_the_middleware_is_a_500() {
    use actix_web::{test, App};
    actix_web::rt::System::new().block_on(async {
        let app = test::init_service(App::new().route("/read", web::get().to(common::read))).await;
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/read").to_request()).await;
        assert_eq!(
            res.status(),
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(test::read_body(res).await, "Internal Server Error");
    });
}

/// Logs in, stores a value and issues a token, then answers with the
/// secrets (token, session ID, storage key) and, after a blank line, every
/// `Debug`/`Display` rendering a handler could log.
async fn renderings(session: Session) -> Result<HttpResponse, Error> {
    session.login("kim").await?;
    session.insert("card", "S3CRETDATA").await?;
    let token = session.issue_token("transfer").await?;
    let (id, key, inner) = session
        .with(|s| {
            (
                s.id().expose(),
                s.storage_key().as_str().to_owned(),
                format!("{s:?} {s:#?} {} {:?}", s.storage_key(), s.id()),
            )
        })
        .await?;
    let listed = session.list_user_sessions().await?;
    let middleware = session_actix::SessionMiddleware::new(session.manager().clone());
    Ok(HttpResponse::Ok().body(format!(
        "{}\n{id}\n{key}\n\n{session:?} {session:#?} {token:?} {token} {listed:?} {inner} {middleware:?}",
        token.expose()
    )))
}

#[tokio::test]
async fn no_rendering_of_a_session_shows_its_id_key_token_or_data() {
    let server = Server::start_with(SessionManager::new(MemoryStore::new()), |cfg| {
        cfg.route("/renderings", web::post().to(renderings));
    });
    let r = server.send("POST", "/renderings", None, "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let (secrets, shown) = r.body.split_once("\n\n").expect("two parts");
    let secrets: Vec<&str> = secrets.lines().chain(["S3CRETDATA"]).collect();
    assert_eq!(secrets.len(), 4);
    assert!(r.cookie().ends_with(secrets[1]), "{}", r.cookie());
    for secret in secrets {
        assert!(!shown.contains(secret), "{secret} shows in: {shown}");
    }
}
