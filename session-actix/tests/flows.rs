//! The demo's flows over actix-web, each run against MemoryStore, a real
//! Redis server, and the same Redis with the near cache on: login (a fresh
//! ID every time: session fixation defence),
//! the profile, rotation, logout (the old cookie stops working), logging
//! out everywhere, the per-user limit (reject and evict), one-time tokens
//! (once, also under racing requests), read-modify-write under dozens of
//! racing requests over several rounds, stale cookies that must not touch
//! a newer session, malformed cookies, and an unreachable Redis (`503`).
//! The racing flows run a third time over MemoryStore whose calls yield
//! like network calls, so that racing requests on one worker interleave
//! between a load and its write (over plain MemoryStore they rarely do).
//!
//! The server comes from `REDIS_URL` (default: the local one
//! `scripts/services.sh` starts); a missing server fails the test with
//! instructions. The outage test runs a private `redis-server` it stops.

mod common;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use session_actix::session_core::conformance::faults::FaultInjector;
use session_actix::session_core::conformance::{HookedStore, Operation, StoreHooks};
use session_actix::session_core::redact::redact_url;
use session_actix::session_core::StoreResult;
use session_actix::{LimitStrategy, MemoryStore, SessionConfig, SessionManager, SessionStore};
use session_redis::{NearCache, RedisStore};
use session_test_support::process::{spare_port, ServerProcess};
use session_test_support::{servers, unique};

use common::Server;

async fn redis() -> Arc<dyn SessionStore> {
    redis_with(None).await
}

/// Redis with the near cache on: loads are served from this process's
/// copy, kept coherent by the server's invalidations.
async fn near_cached_redis() -> Arc<dyn SessionStore> {
    redis_with(Some(NearCache::new())).await
}

async fn redis_with(near_cache: Option<NearCache>) -> Arc<dyn SessionStore> {
    let url = servers::redis_url();
    let mut builder = RedisStore::builder().prefix(unique("actix"));
    if let Some(near_cache) = near_cache {
        builder = builder.near_cache(near_cache);
    }
    Arc::new(
        builder
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("no Redis at {}: {e}", redact_url(&url))),
    )
}

fn memory() -> Arc<dyn SessionStore> {
    Arc::new(MemoryStore::new())
}

/// Yields to the runtime around every store call, as a network round trip
/// does, so that requests on one worker interleave between a load and its
/// write: MemoryStore answers at once, and races would otherwise be rare.
struct Yield;

#[async_trait::async_trait]
impl StoreHooks for Yield {
    async fn before(&self, _operation: Operation) -> StoreResult<()> {
        tokio::task::yield_now().await;
        Ok(())
    }
    async fn after(&self, _operation: Operation) {
        tokio::task::yield_now().await;
    }
}

/// MemoryStore whose calls yield like network calls (see [`Yield`]).
fn memory_yielding() -> Arc<dyn SessionStore> {
    Arc::new(HookedStore::new(MemoryStore::new(), Yield))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_read_modify_write_over_memory_yielding_like_a_network_store() {
    racing_read_modify_write_requests_lose_no_update(memory_yielding()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_token_use_over_memory_yielding_like_a_network_store() {
    a_one_time_token_works_once_and_a_replay_fails(memory_yielding()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_stale_cookies_over_memory_yielding_like_a_network_store() {
    a_stale_cookie_never_deletes_or_overwrites_a_fresh_session(memory_yielding()).await;
}

fn serve(store: Arc<dyn SessionStore>) -> Arc<Server> {
    Server::start(SessionManager::builder_arc(store).build())
}

fn serve_with_limit(store: Arc<dyn SessionStore>, strategy: LimitStrategy) -> Arc<Server> {
    let config = SessionConfig::builder()
        .max_sessions_per_user(NonZeroUsize::new(2).unwrap(), strategy)
        .build()
        .unwrap();
    Server::start(SessionManager::builder_arc(store).config(config).build())
}

fn value(cookie: &str) -> &str {
    cookie.split_once('=').unwrap().1
}

/// Each flow, as one test over MemoryStore, one over Redis and one over
/// near-cached Redis.
macro_rules! over_every_backend {
    ($($flow:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $flow() {
                    super::$flow(super::memory()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $flow() {
                    super::$flow(super::redis().await).await;
                }
            )*
        }
        mod redis_near_cache {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $flow() {
                    super::$flow(super::near_cached_redis().await).await;
                }
            )*
        }
    };
}

over_every_backend!(
    login_sets_a_secure_cookie_with_a_fresh_id,
    the_profile_reads_the_session_without_a_new_cookie,
    rotation_changes_the_id_and_kills_the_old_one,
    logout_removes_the_cookie_and_the_old_cookie_stops_working,
    logout_everywhere_ends_the_users_other_sessions_only,
    the_limit_rejects_new_logins,
    the_limit_evicts_the_oldest_session,
    a_one_time_token_works_once_and_a_replay_fails,
    racing_read_modify_write_requests_lose_no_update,
    a_stale_cookie_never_deletes_or_overwrites_a_fresh_session,
    malformed_cookies_are_no_session_not_errors,
    a_flash_after_logout_lands_in_a_new_anonymous_session,
    a_login_already_made_reaches_the_client_on_a_5xx,
    ending_a_session_needs_it_to_be_the_users_own,
);

async fn login_sets_a_secure_cookie_with_a_fresh_id(store: Arc<dyn SessionStore>) {
    let s = serve(store);
    let r = s.send("POST", "/login", None, "alice").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.cache_control.as_deref(), Some("no-store"));
    let attrs: Vec<&str> = r.set_cookie[0].split(';').map(str::trim).collect();
    let (name, id) = attrs[0].split_once('=').unwrap();
    assert_eq!(name, "__Host-session");
    assert_eq!(id.len(), 43, "256-bit ID, base64url");
    for needed in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(attrs.contains(&needed), "{needed} missing: {attrs:?}");
    }
    assert!(!r.set_cookie[0].contains("Domain"), "host-only cookie");

    // A planted, well-formed ID is never the one issued.
    let planted = "__Host-session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let issued = s
        .send("POST", "/login", Some(planted), "alice")
        .await
        .cookie();
    assert_ne!(issued, planted);
    assert_eq!(s.whoami(planted).await, None);
    assert_eq!(s.whoami(&issued).await.as_deref(), Some("alice"));

    // An attacker's own real session dies when the victim logs in with it;
    // data from before login carries over into the new ID.
    let anon = s.send("POST", "/visit", None, "").await.cookie();
    let victim = s
        .send("POST", "/login", Some(&anon), "carol")
        .await
        .cookie();
    assert_ne!(value(&victim), value(&anon));
    assert_eq!(
        s.send("GET", "/read", Some(&anon), "").await.body,
        "None None"
    );
    assert_eq!(
        s.send("GET", "/read", Some(&victim), "").await.body,
        "Some(1) Some(\"carol\")"
    );
    // Logging in again, as the same user, issues yet another ID.
    let again = s
        .send("POST", "/login", Some(&victim), "carol")
        .await
        .cookie();
    assert_ne!(again, victim);
    assert_eq!(s.whoami(&victim).await, None);
    assert_eq!(s.whoami(&again).await.as_deref(), Some("carol"));
}

async fn the_profile_reads_the_session_without_a_new_cookie(store: Arc<dyn SessionStore>) {
    let s = serve(store);
    assert_eq!(
        s.send("GET", "/profile", None, "").await.status,
        StatusCode::UNAUTHORIZED
    );
    let c = s.login("alice").await;
    let r = s.send("GET", "/profile", Some(&c), "").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "profile of alice")
    );
    assert_eq!(r.cache_control.as_deref(), Some("no-store"));
    assert!(r.set_cookie.is_empty(), "no new cookie: {:?}", r.set_cookie);
    // Another cookie first on the line does not hide ours.
    let r = s
        .send("GET", "/profile", Some(&format!("theme=dark; {c}")), "")
        .await;
    assert_eq!(r.body, "profile of alice");
    // A session ID in the URL is ignored.
    let id = value(&c);
    let r = s
        .send(
            "GET",
            &format!("/profile?__Host-session={id}&session={id}"),
            None,
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A handler that ignores the session sends no session headers.
    let r = s.send("GET", "/static", Some(&c), "").await;
    assert!(r.set_cookie.is_empty());
    assert_eq!(r.cache_control, None);
}

async fn rotation_changes_the_id_and_kills_the_old_one(store: Arc<dyn SessionStore>) {
    let s = serve(store);
    let c = s.login("alice").await;
    s.send("POST", "/visit", Some(&c), "").await;
    let r = s.send("POST", "/rotate", Some(&c), "").await;
    assert_eq!(r.status, StatusCode::OK);
    let rotated = r.cookie();
    assert_ne!(rotated, c);
    assert_eq!(s.send("GET", "/read", Some(&c), "").await.body, "None None");
    assert_eq!(
        s.send("GET", "/read", Some(&rotated), "").await.body,
        "Some(1) Some(\"alice\")"
    );
}

async fn logout_removes_the_cookie_and_the_old_cookie_stops_working(store: Arc<dyn SessionStore>) {
    let s = serve(store);
    let c = s.login("alice").await;
    let r = s.send("POST", "/logout", Some(&c), "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.removes_cookie(), "{:?}", r.set_cookie);
    for needed in ["Secure", "HttpOnly", "Path=/"] {
        assert!(r.set_cookie[0].contains(needed), "{:?}", r.set_cookie);
    }
    assert_eq!(s.whoami(&c).await, None);
    // The replayed cookie is "no session", left alone (no removal that
    // could delete a newer cookie), and stays dead after a write.
    let r = s.send("POST", "/visit", Some(&c), "").await;
    assert_eq!(r.body, "1", "a new anonymous session");
    assert_ne!(r.cookie(), c);
    assert_eq!(s.whoami(&c).await, None);
    let r = s.send("POST", "/logout-all", Some(&c), "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn logout_everywhere_ends_the_users_other_sessions_only(store: Arc<dyn SessionStore>) {
    let s = serve(store);
    let a1 = s.login("alice").await;
    let a2 = s.login("alice").await;
    let bob = s.login("bob").await;
    assert_eq!(s.send("GET", "/list", Some(&a1), "").await.body, "2");
    let r = s.send("POST", "/logout-all", Some(&a1), "").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "2"));
    assert!(r.removes_cookie(), "{:?}", r.set_cookie);
    assert_eq!(s.whoami(&a1).await, None);
    assert_eq!(s.whoami(&a2).await, None, "the other device is logged out");
    assert_eq!(s.whoami(&bob).await.as_deref(), Some("bob"));
    assert_eq!(s.send("GET", "/list", Some(&bob), "").await.body, "1");
    assert_eq!(
        s.send("POST", "/logout-all", Some(&a2), "").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        s.send("POST", "/logout-all", None, "").await.status,
        StatusCode::UNAUTHORIZED
    );
}

async fn the_limit_rejects_new_logins(store: Arc<dyn SessionStore>) {
    let s = serve_with_limit(store, LimitStrategy::RejectNew);
    let a1 = s.login("alice").await;
    let a2 = s.login("alice").await;
    let r = s.send("POST", "/login", None, "alice").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body, "Forbidden");
    assert!(r.set_cookie.is_empty(), "{:?}", r.set_cookie);
    assert_eq!(s.whoami(&a1).await.as_deref(), Some("alice"));
    assert_eq!(s.whoami(&a2).await.as_deref(), Some("alice"));
    // Other users are not affected; logging out frees a slot.
    s.login("bob").await;
    s.send("POST", "/logout", Some(&a1), "").await;
    let a3 = s.login("alice").await;
    assert_eq!(s.whoami(&a3).await.as_deref(), Some("alice"));
}

async fn the_limit_evicts_the_oldest_session(store: Arc<dyn SessionStore>) {
    let s = serve_with_limit(store, LimitStrategy::EvictOldest);
    let a1 = s.login("alice").await;
    tokio::time::sleep(Duration::from_millis(20)).await; // a known order
    let a2 = s.login("alice").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let a3 = s.login("alice").await;
    assert_eq!(s.whoami(&a1).await, None, "the oldest was evicted");
    assert_eq!(s.whoami(&a2).await.as_deref(), Some("alice"));
    assert_eq!(s.whoami(&a3).await.as_deref(), Some("alice"));
    assert_eq!(s.send("GET", "/list", Some(&a3), "").await.body, "2");
}

async fn a_one_time_token_works_once_and_a_replay_fails(store: Arc<dyn SessionStore>) {
    let s = serve(store);
    let c = s.login("alice").await;
    let token = s.send("GET", "/token", Some(&c), "").await.body;
    assert!(token.len() >= 32, "{token}");
    let consume = |cookie: Option<String>, t: String| {
        let s = Arc::clone(&s);
        async move { s.send("POST", "/token", cookie.as_deref(), &t).await.status }
    };
    assert_eq!(
        consume(Some(c.clone()), "forged".into()).await,
        StatusCode::FORBIDDEN
    );
    // Bound to the session: another session of the same user cannot use it.
    let other = s.login("alice").await;
    assert_eq!(
        consume(Some(other), token.clone()).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(consume(None, token.clone()).await, StatusCode::FORBIDDEN);
    assert_eq!(
        consume(Some(c.clone()), token.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        consume(Some(c.clone()), token.clone()).await,
        StatusCode::FORBIDDEN,
        "replay"
    );

    // Racing requests with one token: exactly one is accepted.
    for round in 0..3 {
        let token = s.send("GET", "/token", Some(&c), "").await.body;
        let racers: Vec<_> = (0..8)
            .map(|_| tokio::spawn(consume(Some(c.clone()), token.clone())))
            .collect();
        let mut statuses = Vec::new();
        for r in racers {
            statuses.push(r.await.unwrap());
        }
        let accepted = statuses.iter().filter(|&&st| st == StatusCode::OK).count();
        assert_eq!(accepted, 1, "round {round}: {statuses:?}");
        assert!(
            statuses
                .iter()
                .all(|&st| st == StatusCode::OK || st == StatusCode::FORBIDDEN),
            "round {round}: {statuses:?}"
        );
    }
}

async fn racing_read_modify_write_requests_lose_no_update(store: Arc<dyn SessionStore>) {
    let s = serve(store);
    let c = s.login("alice").await;
    const ROUNDS: u64 = 4;
    const RACERS: u64 = 40;
    for round in 1..=ROUNDS {
        let tasks: Vec<_> = (0..RACERS)
            .map(|_| {
                let (s, c) = (Arc::clone(&s), c.clone());
                tokio::spawn(async move { s.send("POST", "/incr", Some(&c), "").await })
            })
            .collect();
        let mut seen = Vec::new();
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "round {round}: {}", r.body);
            assert!(r.set_cookie.is_empty(), "{:?}", r.set_cookie);
            seen.push(r.body);
        }
        // Each request saw its own increment: no two got the same value.
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen.len() as u64,
            RACERS,
            "round {round}: duplicated values"
        );
        assert_eq!(
            s.send("GET", "/read", Some(&c), "").await.body,
            format!("Some({}) Some(\"alice\")", round * RACERS),
            "round {round}: lost updates"
        );
    }
}

async fn a_stale_cookie_never_deletes_or_overwrites_a_fresh_session(store: Arc<dyn SessionStore>) {
    let s = serve(store);
    let c1 = s.login("bob").await;
    // Another tab logs in again (C1 rotated to C2) before these arrive with C1.
    let c2 = s.send("POST", "/login", Some(&c1), "bob").await.cookie();
    s.send("POST", "/visit", Some(&c2), "").await;
    for (method, uri) in [("GET", "/read"), ("GET", "/profile"), ("POST", "/visit")] {
        let late = s.send(method, uri, Some(&c1), "").await;
        assert!(
            !late.removes_cookie(),
            "{uri}: the late request deleted the new cookie: {:?}",
            late.set_cookie
        );
        assert!(
            late.set_cookie.iter().all(|sc| !sc.contains(value(&c2))),
            "{uri}"
        );
    }
    assert_eq!(
        s.send("GET", "/read", Some(&c2), "").await.body,
        "Some(1) Some(\"bob\")",
        "the fresh session is untouched"
    );
    // Racing stale requests while the fresh session keeps rotating.
    let mut fresh = c2;
    for _ in 0..3 {
        let stale: Vec<_> = (0..10)
            .map(|_| {
                let (s, c1) = (Arc::clone(&s), c1.clone());
                tokio::spawn(async move { s.send("GET", "/read", Some(&c1), "").await })
            })
            .collect();
        fresh = s.send("POST", "/rotate", Some(&fresh), "").await.cookie();
        for t in stale {
            let r = t.await.unwrap();
            assert_eq!(r.body, "None None");
            assert!(r.set_cookie.is_empty(), "{:?}", r.set_cookie);
        }
    }
    assert_eq!(s.whoami(&fresh).await.as_deref(), Some("bob"));
}

async fn malformed_cookies_are_no_session_not_errors(store: Arc<dyn SessionStore>) {
    let s = serve(store);
    let long = format!("__Host-session={}", "A".repeat(8_000));
    let bad: Vec<&[u8]> = vec![
        b"__Host-session=",
        b"__Host-session=garbage",
        b"__Host-session=AAAA;;;==",
        b"__Host-session=\xff\xfe\x80",
        b"__Host-session",
        b";;;",
        b"__Host-session=\"quoted\"",
        b"__Host-session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\t",
        long.as_bytes(),
    ];
    for cookie in &bad {
        let r = s.send_raw("GET", "/read", &[cookie], "").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "None None"),
            "{:?}",
            String::from_utf8_lossy(cookie)
        );
        assert!(r.set_cookie.is_empty(), "{:?}", r.set_cookie);
        let r = s.send_raw("GET", "/profile", &[cookie], "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // Odd bytes around, or a malformed duplicate of ours, never hide a live ID.
    let c = s.login("alice").await;
    let planted = [
        b"x=\xc3\xa9; __Host-session=garbage; ".as_slice(),
        c.as_bytes(),
    ]
    .concat();
    let r = s.send_raw("GET", "/read", &[&planted], "").await;
    assert_eq!(r.body, "None Some(\"alice\")");
    let r = s
        .send_raw("GET", "/read", &[b"x=\xff\x80 ;", c.as_bytes()], "")
        .await;
    assert_eq!(r.body, "None Some(\"alice\")");
}

async fn a_flash_after_logout_lands_in_a_new_anonymous_session(store: Arc<dyn SessionStore>) {
    let s = serve(store);
    let c = s.login("carol").await;
    s.send("POST", "/visit", Some(&c), "").await;
    let r = s.send("POST", "/logout-then-flash", Some(&c), "").await;
    assert_eq!(r.body, "None None", "user and data after logout");
    let flash = r.cookie();
    assert_ne!(flash, c);
    assert_eq!(
        s.send("GET", "/flash", Some(&flash), "").await.body,
        "Some(\"logged out\") None"
    );
    assert_eq!(s.send("GET", "/read", Some(&c), "").await.body, "None None");
}

async fn a_login_already_made_reaches_the_client_on_a_5xx(store: Arc<dyn SessionStore>) {
    let s = serve(store);
    let anon = s.send("POST", "/visit", None, "").await.cookie();
    let r = s
        .send("POST", "/login-then-fail", Some(&anon), "dave")
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let c = r.cookie();
    assert_ne!(c, anon);
    assert_eq!(
        s.send("GET", "/read", Some(&c), "").await.body,
        "Some(1) Some(\"dave\")"
    );
    // A write in a request that answers 5xx is dropped...
    let r = s.send("POST", "/fail", Some(&c), "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.set_cookie.is_empty());
    assert_eq!(
        s.send("GET", "/read", Some(&c), "").await.body,
        "Some(1) Some(\"dave\")"
    );
    // ...but a logout already made is reported.
    let r = s.send("POST", "/logout-then-fail", Some(&c), "").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.removes_cookie(), "{:?}", r.set_cookie);
    assert_eq!(s.whoami(&c).await, None);
}

async fn ending_a_session_needs_it_to_be_the_users_own(store: Arc<dyn SessionStore>) {
    let s = serve(store);
    let erin = s.login("erin").await;
    let mut erin2 = s.login("erin").await;
    let frank = s.login("frank").await;
    let frank2 = s.login("frank").await;
    let mut targets: Vec<String> = s
        .send("GET", "/keys", Some(&erin), "")
        .await
        .body
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(targets.len(), 2);
    // frank aims at every key erin's sessions had while one keeps rotating:
    // every call is refused, and erin stays logged in everywhere.
    for _ in 0..3 {
        let attacks: Vec<_> = targets
            .iter()
            .cycle()
            .take(8)
            .map(|k| {
                let (s, frank, k) = (Arc::clone(&s), frank.clone(), k.clone());
                tokio::spawn(async move { s.send("POST", "/end", Some(&frank), &k).await })
            })
            .collect();
        erin2 = s.send("POST", "/rotate", Some(&erin2), "").await.cookie();
        targets.push(s.send("GET", "/key", Some(&erin2), "").await.body);
        for a in attacks {
            let r = a.await.unwrap();
            assert_eq!(
                (r.status, r.body.as_str()),
                (StatusCode::NOT_FOUND, "Not Found")
            );
        }
    }
    assert_eq!(s.whoami(&erin).await.as_deref(), Some("erin"));
    assert_eq!(s.whoami(&erin2).await.as_deref(), Some("erin"));
    // frank ends his own other session, and keeps his cookie.
    let own = s.send("GET", "/key", Some(&frank2), "").await.body;
    let r = s.send("POST", "/end", Some(&frank), &own).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.set_cookie.is_empty());
    assert_eq!(s.whoami(&frank2).await, None);
    assert_eq!(s.whoami(&frank).await.as_deref(), Some("frank"));
    // His own key ends it like a logout.
    let mine = s.send("GET", "/key", Some(&frank), "").await.body;
    let r = s.send("POST", "/end", Some(&frank), &mine).await;
    assert!(r.removes_cookie(), "{:?}", r.set_cookie);
    assert_eq!(s.whoami(&frank).await, None);
}

/// A Redis that goes away: every session request answers `503` with
/// `Retry-After` and no detail, a handler that ignores the session still
/// answers, and the sessions work again once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_answers_503_and_recovers() {
    let server = ServerProcess::redis(spare_port(), &[]).await;
    let url = server.url("redis");
    let store = RedisStore::builder()
        .prefix(unique("actix"))
        .operation_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(300))
        .connect(&url)
        .await
        .expect("connect to the private redis-server");
    let s = serve(Arc::new(store));
    let c = s.login("alice").await;
    // Persistence is off: what the server held dies with it.
    FaultInjector::stop(&server).await;
    for (method, uri) in [("GET", "/read"), ("POST", "/visit"), ("POST", "/login")] {
        let r = s.send(method, uri, Some(&c), "alice").await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{uri}: {}",
            r.body
        );
        assert_eq!(r.retry_after.as_deref(), Some("1"), "{uri}");
        assert_eq!(r.body, "Service Unavailable", "{uri}");
        assert!(r.set_cookie.is_empty(), "{uri}: {:?}", r.set_cookie);
        assert_eq!(r.cache_control.as_deref(), Some("no-store"));
    }
    let r = s.send("GET", "/static", Some(&c), "").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "hello"));
    FaultInjector::start(&server).await;
    let mut back = None;
    for _ in 0..50 {
        let r = s.send("POST", "/login", None, "alice").await;
        if r.status == StatusCode::OK {
            back = Some(r.cookie());
            break;
        }
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = back.expect("sessions work again within 5 s of the restart");
    assert_eq!(s.whoami(&fresh).await.as_deref(), Some("alice"));
}
