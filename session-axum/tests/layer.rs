//! The layer and extractor driven through `tower::ServiceExt::oneshot`.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use http::{header, Request, Response, StatusCode};
use session_axum::{Error, Session, SessionLayer};
use session_core::conformance::{CallCounter, HookedStore, Operation};
use session_core::{
    ManualClock, MemoryStore, SessionConfig, SessionManager, StoreError, Timestamp,
};
use tower::ServiceExt;

use common::Reply;

/// MemoryStore with call counters and a switch that makes every call fail.
type CountingStore = HookedStore<MemoryStore, CallCounter>;

fn counting(inner: MemoryStore) -> Arc<CountingStore> {
    Arc::new(HookedStore::new(inner, CallCounter::new()))
}

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
    router: Router,
    clock: Arc<ManualClock>,
}

fn app() -> App {
    let clock = Arc::new(ManualClock::new(Timestamp::now()));
    App::over(counting(MemoryStore::with_clock(clock.clone())), clock)
}

impl App {
    fn over(store: Arc<CountingStore>, clock: Arc<ManualClock>) -> App {
        let config = SessionConfig::builder()
            .idle_timeout(Duration::from_secs(600))
            .touch_interval(Duration::from_secs(60))
            .build()
            .unwrap();
        let manager = SessionManager::builder(Arc::clone(&store))
            .config(config)
            .clock(clock.clone())
            .build();
        let router = Router::new()
            .merge(common::routes())
            .layer(SessionLayer::new(manager));
        App {
            store,
            router,
            clock,
        }
    }
}

async fn send(app: &App, method: &str, uri: &str, cookie: Option<&str>, body: &str) -> Reply {
    common::send(&app.router, method, uri, cookie, body).await
}

async fn send_raw(app: &App, method: &str, uri: &str, cookies: &[&[u8]], body: &str) -> Reply {
    common::send_raw(&app.router, method, uri, cookies, body).await
}

#[tokio::test]
async fn a_handler_that_ignores_the_session_costs_no_store_call() {
    let app = app();
    let first = send(&app, "POST", "/visit", None, "").await;
    let calls = app.store.hooks().total();
    let r = send(&app, "GET", "/static", Some(&first.cookie()), "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(app.store.hooks().total(), calls, "no store round trip");
    assert!(r.set_cookie.is_empty());
    assert_eq!(r.cache_control, None, "does not depend on the session");
}

#[tokio::test]
async fn an_anonymous_read_stores_nothing_and_sets_no_cookie() {
    let app = app();
    let r = send(&app, "GET", "/read", None, "").await;
    assert_eq!(r.body, "None None");
    assert!(r.set_cookie.is_empty());
    assert_eq!(app.store.hooks().total(), 0);
    assert_eq!(r.cache_control.as_deref(), Some("no-store"));
}

#[tokio::test]
async fn a_write_sets_a_secure_cookie_and_later_requests_see_it() {
    let app = app();
    let r = send(&app, "POST", "/visit", None, "").await;
    assert_eq!(r.body, "1");
    assert_eq!(r.cache_control.as_deref(), Some("no-store"));
    let sc = &r.set_cookie[0];
    assert!(sc.starts_with("__Host-session="), "{sc}");
    for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(sc.contains(attr), "{attr} missing in {sc}");
    }
    assert!(!sc.contains("Domain"));
    let cookie = r.cookie();
    let r = send(&app, "POST", "/visit", Some(&cookie), "").await;
    assert_eq!(r.body, "2");
    assert!(r.set_cookie.is_empty(), "same ID: no new cookie");
    let r = send(
        &app,
        "GET",
        "/read",
        Some(&format!("other=1; {cookie}")),
        "",
    )
    .await;
    assert_eq!(r.body, "Some(2) None");
}

#[tokio::test]
async fn unchanged_sessions_are_not_written_and_touched_only_when_due() {
    let app = app();
    let cookie = send(&app, "POST", "/visit", None, "").await.cookie();
    let writes = app.store.hooks().calls_of(WRITES);
    send(&app, "GET", "/read", Some(&cookie), "").await;
    assert_eq!(app.store.hooks().calls_of(WRITES), writes);
    assert_eq!(
        app.store.hooks().calls(Operation::Touch),
        0,
        "touch not due yet"
    );
    app.clock.advance(Duration::from_secs(61));
    let r = send(&app, "GET", "/read", Some(&cookie), "").await;
    assert_eq!(r.body, "Some(1) None");
    assert_eq!(app.store.hooks().calls(Operation::Touch), 1);
    assert_eq!(app.store.hooks().calls_of(WRITES), writes);
}

#[tokio::test]
async fn nothing_is_committed_on_a_server_error() {
    let app = app();
    let r = send(&app, "POST", "/fail", None, "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.set_cookie.is_empty());
    assert_eq!(app.store.hooks().calls_of(WRITES), 0);

    let cookie = send(&app, "POST", "/visit", None, "").await.cookie();
    send(&app, "POST", "/fail", Some(&cookie), "").await;
    let r = send(&app, "GET", "/read", Some(&cookie), "").await;
    assert_eq!(
        r.body, "Some(1) None",
        "the 5xx request's change was dropped"
    );
}

#[tokio::test]
async fn the_session_id_is_never_read_from_the_url() {
    let app = app();
    let cookie = send(&app, "POST", "/visit", None, "").await.cookie();
    let id = cookie.split_once('=').unwrap().1;
    let r = send(
        &app,
        "GET",
        &format!("/read?__Host-session={id}&session={id}"),
        None,
        "",
    )
    .await;
    assert_eq!(r.body, "None None");
}

#[tokio::test]
async fn an_unreachable_store_answers_503_with_retry_after() {
    let app = app();
    let cookie = send(&app, "POST", "/visit", None, "").await.cookie();
    set_failing(&app.store, true);
    for (method, uri) in [("GET", "/read"), ("POST", "/visit"), ("POST", "/login")] {
        let r = send(&app, method, uri, Some(&cookie), "alice").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert_eq!(r.retry_after.as_deref(), Some("1"), "{uri}");
        assert!(!r.body.contains("secret"), "{uri}: {}", r.body);
        assert!(r.set_cookie.is_empty());
        assert_eq!(r.cache_control.as_deref(), Some("no-store"));
    }
    // Commit-time failure: the handler succeeded, the save did not.
    set_failing(&app.store, false);
    let fresh = send(&app, "GET", "/read", None, "").await;
    assert_eq!(fresh.status, StatusCode::OK);
}

#[tokio::test]
async fn a_commit_failure_replaces_the_response() {
    let app = app();
    // The handler's own calls succeed; the store fails only afterwards, so
    // the commit at response time is what fails.
    let store = Arc::clone(&app.store);
    let router = Router::new()
        .route(
            "/visit",
            post(move |session: Session| {
                let store = Arc::clone(&store);
                async move {
                    let n: u64 = session.get("n").await?.unwrap_or(0);
                    session.insert("n", &(n + 1)).await?;
                    set_failing(&store, true);
                    Ok::<_, Error>("handler says fine")
                }
            }),
        )
        .layer(SessionLayer::new(SessionManager::new(Arc::clone(
            &app.store,
        ))));
    let first = App {
        store: Arc::clone(&app.store),
        router,
        clock: Arc::clone(&app.clock),
    };
    let r = send(&first, "POST", "/visit", None, "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert!(r.body.is_empty(), "generic body, got {:?}", r.body);
    assert!(r.set_cookie.is_empty());
}

#[tokio::test]
async fn login_always_issues_a_fresh_id() {
    let app = app();
    let before = send(&app, "POST", "/visit", None, "").await.cookie();
    let r = send(&app, "POST", "/login", Some(&before), "alice").await;
    let after = r.cookie();
    assert_ne!(before, after);
    assert_eq!(
        send(&app, "GET", "/read", Some(&before), "").await.body,
        "None None"
    );
    assert_eq!(
        send(&app, "GET", "/read", Some(&after), "").await.body,
        "Some(1) Some(\"alice\")",
        "data before login carries over"
    );
    let rotated = send(&app, "POST", "/rotate", Some(&after), "")
        .await
        .cookie();
    assert_ne!(rotated, after);
    assert_eq!(
        send(&app, "GET", "/read", Some(&after), "").await.body,
        "None None"
    );
    assert_eq!(
        send(&app, "GET", "/read", Some(&rotated), "").await.body,
        "Some(1) Some(\"alice\")"
    );
}

#[tokio::test]
async fn logout_removes_the_cookie_and_the_session() {
    let app = app();
    let cookie = send(&app, "POST", "/login", None, "alice").await.cookie();
    let r = send(&app, "POST", "/logout", Some(&cookie), "").await;
    let sc = &r.set_cookie[0];
    assert!(sc.starts_with("__Host-session=;"), "{sc}");
    assert!(sc.contains("Max-Age=0"), "{sc}");
    assert_eq!(
        send(&app, "GET", "/read", Some(&cookie), "").await.body,
        "None None"
    );
}

#[tokio::test]
async fn a_cookie_naming_no_session_is_left_alone() {
    let app = app();
    let cookie = send(&app, "POST", "/login", None, "alice").await.cookie();
    send(&app, "POST", "/logout", Some(&cookie), "").await;
    // The browser may already hold a newer cookie (a racing login): the
    // dead one is not worth deleting that for. It never loads again.
    let r = send(&app, "GET", "/read", Some(&cookie), "").await;
    assert_eq!(r.body, "None None");
    assert!(r.set_cookie.is_empty(), "{:?}", r.set_cookie);
}

#[tokio::test]
async fn a_late_request_with_a_rotated_away_id_does_not_log_the_user_out() {
    let app = app();
    let c1 = send(&app, "POST", "/login", None, "alice").await.cookie();
    // A login (or rotation) and a GET both carry C1; the login wins.
    let c2 = send(&app, "POST", "/login", Some(&c1), "alice")
        .await
        .cookie();
    for uri in ["/read", "/visit"] {
        let method = if uri == "/read" { "GET" } else { "POST" };
        let late = send(&app, method, uri, Some(&c1), "").await;
        assert!(
            late.set_cookie.iter().all(|c| !c.contains("Max-Age=0")),
            "{uri}: the late request deleted the new cookie: {:?}",
            late.set_cookie
        );
    }
    assert_eq!(
        send(&app, "GET", "/read", Some(&c2), "").await.body,
        "None Some(\"alice\")"
    );
}

#[tokio::test]
async fn odd_bytes_in_other_cookies_never_hide_the_session() {
    let app = app();
    let c = send(&app, "POST", "/login", None, "alice").await.cookie();
    let logged_in = "None Some(\"alice\")";
    let planted = [b"x=\xc3\xa9; ".as_slice(), c.as_bytes()].concat();
    assert_eq!(
        send_raw(&app, "GET", "/read", &[&planted], "").await.body,
        logged_in
    );
    let bad_first = [
        b"x=\xff\x80 ; __Host-session=garbage; ".as_slice(),
        c.as_bytes(),
    ]
    .concat();
    assert_eq!(
        send_raw(&app, "GET", "/read", &[&bad_first], "").await.body,
        logged_in
    );
    // Our cookie on its own line after a line of odd bytes.
    let r = send_raw(&app, "GET", "/read", &[b"x=\xe9", c.as_bytes()], "").await;
    assert_eq!(r.body, logged_in);
    // A stale ID of ours before the live one does not hide it either.
    let dead = send(&app, "POST", "/visit", None, "").await.cookie();
    send(&app, "POST", "/logout", Some(&dead), "").await;
    let both = format!("{dead}; {c}");
    assert_eq!(
        send(&app, "GET", "/read", Some(&both), "").await.body,
        logged_in
    );
}

#[tokio::test]
async fn after_logout_the_request_reads_as_a_new_anonymous_session() {
    let app = app();
    let c = send(&app, "POST", "/login", None, "alice").await.cookie();
    send(&app, "POST", "/visit", Some(&c), "").await;
    let r = send(&app, "POST", "/logout-then-flash", Some(&c), "").await;
    assert_eq!(r.body, "None None", "user and data after logout");
    let flash = r.cookie();
    assert_ne!(flash, c);
    assert_eq!(
        send(&app, "GET", "/flash", Some(&flash), "").await.body,
        "Some(\"logged out\") None"
    );
    assert_eq!(
        send(&app, "GET", "/read", Some(&c), "").await.body,
        "None None"
    );
}

#[tokio::test]
async fn a_login_already_made_reaches_the_client_even_on_a_5xx() {
    let app = app();
    let anon = send(&app, "POST", "/visit", None, "").await.cookie();
    let r = send(&app, "POST", "/login-then-fail", Some(&anon), "alice").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let new = r.cookie();
    assert_ne!(new, anon);
    assert_eq!(
        send(&app, "GET", "/read", Some(&new), "").await.body,
        "Some(1) Some(\"alice\")"
    );
    // And a logout already made is reported too.
    let r = send(&app, "POST", "/logout-then-fail", Some(&new), "").await;
    assert!(r.set_cookie[0].contains("Max-Age=0"), "{:?}", r.set_cookie);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_parallel_increments_count_fifty_with_no_error() {
    let app = app();
    let c = send(&app, "POST", "/login", None, "alice").await.cookie();
    let app = Arc::new(app);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (app, c) = (Arc::clone(&app), c.clone());
            tokio::spawn(async move { send(&app, "POST", "/incr", Some(&c), "").await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(r.set_cookie.is_empty());
    }
    assert_eq!(
        send(&app, "GET", "/read", Some(&c), "").await.body,
        "Some(50) Some(\"alice\")"
    );
}

#[tokio::test]
async fn a_full_memory_store_answers_503() {
    let store = MemoryStore::builder().max_sessions(1).build();
    let app = App::over(
        counting(store),
        Arc::new(ManualClock::new(Timestamp::now())),
    );
    send(&app, "POST", "/visit", None, "").await.cookie();
    let r = send(&app, "POST", "/visit", None, "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
}

#[tokio::test]
async fn logout_everywhere_and_listing() {
    let app = app();
    let a = send(&app, "POST", "/login", None, "alice").await.cookie();
    let b = send(&app, "POST", "/login", None, "alice").await.cookie();
    let bob = send(&app, "POST", "/login", None, "bob").await.cookie();
    assert_eq!(send(&app, "GET", "/list", Some(&a), "").await.body, "2");
    assert_eq!(send(&app, "GET", "/list", None, "").await.body, "0");
    let r = send(&app, "POST", "/logout-all", Some(&a), "").await;
    assert_eq!(r.body, "2");
    assert!(r.set_cookie[0].contains("Max-Age=0"));
    assert_eq!(
        send(&app, "GET", "/read", Some(&b), "").await.body,
        "None None"
    );
    assert_eq!(
        send(&app, "GET", "/read", Some(&bob), "").await.body,
        "None Some(\"bob\")"
    );
    let r = send(&app, "POST", "/logout-all", None, "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_device_list_shows_labels_and_marks_the_current_session() {
    let app = app();
    let laptop = send(
        &app,
        "POST",
        "/login-labelled",
        None,
        "ada|Firefox on Linux",
    )
    .await
    .cookie();
    app.clock.advance(Duration::from_secs(1)); // so the list's order is known
    let phone = send(
        &app,
        "POST",
        "/login-labelled",
        None,
        "ada|Safari on iPhone",
    )
    .await
    .cookie();
    app.clock.advance(Duration::from_secs(1));
    let unnamed = send(&app, "POST", "/login", None, "ada").await.cookie();
    assert_eq!(
        send(&app, "GET", "/devices", Some(&laptop), "").await.body,
        "* Firefox on Linux\n- Safari on iPhone\n- -"
    );
    assert_eq!(
        send(&app, "GET", "/devices", Some(&phone), "").await.body,
        "- Firefox on Linux\n* Safari on iPhone\n- -"
    );
    assert_eq!(
        send(&app, "GET", "/devices", Some(&unnamed), "").await.body,
        "- Firefox on Linux\n- Safari on iPhone\n* -"
    );
    // A rotation keeps the label and the mark.
    let rotated = send(&app, "POST", "/rotate", Some(&laptop), "")
        .await
        .cookie();
    assert_eq!(
        send(&app, "GET", "/devices", Some(&rotated), "").await.body,
        "* Firefox on Linux\n- Safari on iPhone\n- -"
    );
    // Anonymous: an empty list.
    assert_eq!(send(&app, "GET", "/devices", None, "").await.body, "");
    // A label the manager refuses: a 500, and no session is stored.
    let creates = app.store.hooks().calls_of(WRITES);
    let r = send(
        &app,
        "POST",
        "/login-labelled",
        None,
        &format!("ada|{}", "x".repeat(129)),
    )
    .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.set_cookie.is_empty());
    assert_eq!(app.store.hooks().calls_of(WRITES), creates);
}

#[tokio::test]
async fn end_session_ends_only_the_users_own_sessions() {
    let app = app();
    let a1 = send(&app, "POST", "/login", None, "alice").await.cookie();
    app.clock.advance(Duration::from_secs(1)); // so the list's order is known
    let a2 = send(&app, "POST", "/login", None, "alice").await.cookie();
    let bob = send(&app, "POST", "/login", None, "bob").await.cookie();
    let alice_keys = send(&app, "GET", "/keys", Some(&a1), "").await.body;
    let alice_keys: Vec<&str> = alice_keys.lines().collect();
    assert_eq!(alice_keys.len(), 2);
    let bob_key = send(&app, "GET", "/keys", Some(&bob), "").await.body;

    // Another user's key: 404 with a generic body, and bob stays logged in.
    let r = send(&app, "POST", "/end", Some(&a1), &bob_key).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body, "Not Found");
    assert!(r.set_cookie.is_empty());
    // Anonymous callers and unknown keys answer the same.
    let r = send(&app, "POST", "/end", None, &bob_key).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(&app, "POST", "/end", Some(&a1), &"f".repeat(64)).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::NOT_FOUND, "Not Found")
    );
    assert_eq!(
        send(&app, "GET", "/read", Some(&bob), "").await.body,
        "None Some(\"bob\")"
    );

    // alice's first session ends her second one (the one created last).
    let r = send(&app, "POST", "/end", Some(&a1), alice_keys[1]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.set_cookie.is_empty(), "the caller keeps its cookie");
    assert_eq!(
        send(&app, "GET", "/read", Some(&a2), "").await.body,
        "None None"
    );
    assert_eq!(
        send(&app, "GET", "/read", Some(&a1), "").await.body,
        "None Some(\"alice\")"
    );
    // Ending it again: it is no longer hers to end.
    let r = send(&app, "POST", "/end", Some(&a1), alice_keys[1]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Its own key ends it like a logout: the cookie is removed.
    let r = send(&app, "POST", "/end", Some(&a1), alice_keys[0]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.set_cookie[0].contains("Max-Age=0"), "{:?}", r.set_cookie);
    assert_eq!(
        send(&app, "GET", "/read", Some(&a1), "").await.body,
        "None None"
    );
}

#[tokio::test]
async fn one_time_tokens_work_exactly_once() {
    let app = app();
    let cookie = send(&app, "POST", "/login", None, "alice").await.cookie();
    let token = send(&app, "GET", "/token", Some(&cookie), "").await.body;
    assert_eq!(
        send(&app, "POST", "/token", Some(&cookie), "wrong")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&app, "POST", "/token", Some(&cookie), &token)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, "POST", "/token", Some(&cookie), &token)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&app, "POST", "/token", None, &token).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn the_extractor_without_the_layer_is_a_500() {
    let router: Router = Router::new().route("/read", get(common::read));
    let res = router
        .oneshot(Request::get("/read").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn works_with_a_plain_tower_service() {
    let manager = SessionManager::new(MemoryStore::new());
    let svc = tower::ServiceBuilder::new()
        .layer(SessionLayer::new(manager))
        .service_fn(|req: Request<String>| async move {
            let session = req.extensions().get::<Session>().unwrap().clone();
            let res = match common::visit(session).await {
                Ok(body) => Response::new(body),
                Err(e) => {
                    let status = e.into_response().status();
                    let mut r = Response::new(String::new());
                    *r.status_mut() = status;
                    r
                }
            };
            Ok::<_, Infallible>(res)
        });
    let res = svc
        .clone()
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.body(), "1");
    let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
    let cookie = set.split(';').next().unwrap().to_owned();
    let mut req = Request::new(String::new());
    req.headers_mut()
        .insert(header::COOKIE, cookie.parse().unwrap());
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.body(), "2");
}

#[tokio::test]
async fn a_logout_with_a_rotated_away_cookie_still_ends_the_session() {
    let app = app();
    let c1 = send(&app, "POST", "/login", None, "alice").await.cookie();
    // Another tab logged in again (rotating C1 to C2) before this logout
    // arrived with C1.
    let c2 = send(&app, "POST", "/login", Some(&c1), "alice")
        .await
        .cookie();
    let r = send(&app, "POST", "/logout", Some(&c1), "").await;
    assert!(r.set_cookie[0].contains("Max-Age=0"), "{:?}", r.set_cookie);
    assert_eq!(
        send(&app, "GET", "/read", Some(&c2), "").await.body,
        "None None",
        "the session outlived its logout"
    );
}

/// Logs in, stores a value and issues a token, then answers with the
/// secrets (token, session ID, storage key) and, after a blank line, every
/// `Debug`/`Display` rendering a handler could log.
async fn renderings(session: Session) -> Result<String, Error> {
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
    Ok(format!(
        "{}\n{id}\n{key}\n\n{session:?} {session:#?} {token:?} {token} {listed:?} {inner}",
        token.expose()
    ))
}

#[tokio::test]
async fn no_rendering_of_a_session_shows_its_id_key_token_or_data() {
    let app = app();
    let router = Router::new()
        .route("/renderings", post(renderings))
        .layer(SessionLayer::new(
            SessionManager::builder(Arc::clone(&app.store))
                .clock(app.clock.clone())
                .build(),
        ));
    let r = common::send(&router, "POST", "/renderings", None, "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let (secrets, shown) = r.body.split_once("\n\n").expect("two parts");
    let secrets: Vec<&str> = secrets.lines().chain(["S3CRETDATA"]).collect();
    assert_eq!(secrets.len(), 4);
    // The cookie carries the ID the handler saw.
    assert!(r.cookie().ends_with(secrets[1]), "{}", r.cookie());
    for secret in secrets {
        assert!(!shown.contains(secret), "{secret} shows in: {shown}");
    }
    assert!(
        shown.contains("tag:"),
        "the key is named by its tag: {shown}"
    );
}
