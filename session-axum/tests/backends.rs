//! The layer over every backend, as applications compose it: MemoryStore,
//! Redis (single server and cluster, with and without the near cache),
//! PostgreSQL, Memcached, and encrypted Redis. Each runs the same HTTP
//! scenarios: 50 parallel read-modify-write
//! increments of one session, a late request carrying a rotated-away cookie,
//! a flash message after logout, a login that must reach the client
//! although the handler then fails, and "end that session" refusing another
//! user's sessions while they rotate. Two near-cached instances on the
//! same sessions (single server, cluster, encrypted) also run a scenario
//! whose requests alternate between them: increments, rotation, logout and
//! "log out everywhere" on one instance reach the other's cache.
//!
//! Servers come from `REDIS_URL`, `REDIS_CLUSTER_URLS`, `DATABASE_URL` and
//! `MEMCACHED_URL` (default: the local ones `scripts/services.sh` starts); a
//! missing server fails the test with instructions.

mod common;

use std::sync::Arc;

use axum::Router;
use http::StatusCode;
use session_axum::SessionLayer;
use session_core::redact::redact_url;
use session_core::{MemoryStore, SessionManager, SessionStore};
use session_encrypted::{EncryptedStore, EncryptionKey, KeyRing};
use session_memcached::{MemcachedConfig, MemcachedStore};
use session_postgres::PostgresStore;
use session_redis::{NearCache, RedisStore};

use common::send;

use session_test_support::{servers, unique};

async fn redis() -> RedisStore {
    let url = servers::redis_url();
    RedisStore::builder()
        .prefix(unique("axum"))
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("no Redis at {}: {e}", redact_url(&url)))
}

/// A store with the near cache on, under `prefix` (two stores on one
/// prefix are two application instances sharing their sessions).
async fn near_cached_redis(prefix: &str) -> RedisStore {
    let url = servers::redis_url();
    RedisStore::builder()
        .prefix(prefix)
        .near_cache(NearCache::new())
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("no Redis at {}: {e}", redact_url(&url)))
}

async fn near_cached_redis_cluster(prefix: &str) -> RedisStore {
    redis_cluster_with(prefix, Some(NearCache::new())).await
}

async fn redis_cluster() -> RedisStore {
    redis_cluster_with(&unique("axum"), None).await
}

async fn redis_cluster_with(prefix: &str, near_cache: Option<NearCache>) -> RedisStore {
    let urls = servers::redis_cluster_urls();
    let mut builder = RedisStore::builder().prefix(prefix);
    if let Some(near_cache) = near_cache {
        builder = builder.near_cache(near_cache);
    }
    builder
        .connect_cluster(urls.clone())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no Redis Cluster at {:?}: {e}",
                urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>()
            )
        })
}

const PG_SCHEMA: &str = "session_axum_test";

async fn postgres() -> PostgresStore {
    let url = servers::postgres_url();
    session_test_support::postgres::fresh_schema(&url, PG_SCHEMA).await;
    let store = PostgresStore::builder()
        .schema(PG_SCHEMA)
        .table(unique("axum"))
        .max_connections(8)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {}: {e}", redact_url(&url)));
    store.migrate().await.expect("migrate");
    store
}

fn memcached() -> MemcachedStore {
    let url = servers::memcached_url();
    let config = MemcachedConfig::new([url.as_str()])
        .and_then(|c| c.with_namespace(&unique("axum")))
        .unwrap_or_else(|e| panic!("bad MEMCACHED_URL {url}: {e}"));
    MemcachedStore::new(config).unwrap_or_else(|e| panic!("no Memcached at {url}: {e}"))
}

fn router(store: impl SessionStore) -> Router {
    common::routes().layer(SessionLayer::new(SessionManager::new(store)))
}

/// Every scenario, in order, over one router.
async fn scenarios(router: Router) {
    fifty_parallel_increments_count_fifty(&router).await;
    a_late_request_with_a_rotated_away_cookie_does_not_log_out(&router).await;
    a_flash_after_logout_lands_in_a_new_anonymous_session(&router).await;
    a_login_already_made_reaches_the_client_on_a_5xx(&router).await;
    ending_a_session_needs_it_to_be_the_users_own(&router).await;
}

/// Two application instances behind a balancer, each with its own store
/// (and near cache) on the same sessions: requests of one client alternate
/// between them, so each instance's writes must reach the other's cache.
async fn two_instances(a: &Router, b: &Router) {
    let c = send(a, "POST", "/login", None, "gina").await.cookie();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (router, c) = ([a, b][i % 2].clone(), c.clone());
            tokio::spawn(async move { send(&router, "POST", "/incr", Some(&c), "").await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "an increment failed: {}", r.body);
    }
    for (name, router) in [("A", a), ("B", b)] {
        settles_to(
            router,
            &c,
            "Some(50) Some(\"gina\")",
            &format!("{name} after 50 increments"),
        )
        .await;
    }

    // Rotated on A: B stops honouring the old cookie, and follows the new one.
    let rotated = send(a, "POST", "/rotate", Some(&c), "").await.cookie();
    settles_to(b, &c, "None None", "B, old cookie after a rotation on A").await;
    settles_to(b, &rotated, "Some(50) Some(\"gina\")", "B, new cookie").await;

    // Logged out on B: A stops serving the session.
    send(b, "POST", "/logout", Some(&rotated), "").await;
    settles_to(a, &rotated, "None None", "A after a logout on B").await;

    // "Log out everywhere" on A ends B's view of every session of the user.
    let d1 = send(b, "POST", "/login", None, "gina").await.cookie();
    let d2 = send(a, "POST", "/login", None, "gina").await.cookie();
    for d in [&d1, &d2] {
        settles_to(b, d, "None Some(\"gina\")", "B, a fresh login").await;
    }
    send(a, "POST", "/logout-all", Some(&d2), "").await;
    for d in [&d1, &d2] {
        settles_to(b, d, "None None", "B after log out everywhere on A").await;
    }
}

/// Reads `/read` through `router` until it answers `want`, failing after
/// two seconds: the near cache's invalidations take well under a
/// millisecond on loopback, so a read still stale by then is a bug.
async fn settles_to(router: &Router, cookie: &str, want: &str, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let got = send(router, "GET", "/read", Some(cookie), "").await.body;
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: still {got:?} after 2 s, want {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

async fn fifty_parallel_increments_count_fifty(router: &Router) {
    let c = send(router, "POST", "/login", None, "alice").await.cookie();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (router, c) = (router.clone(), c.clone());
            tokio::spawn(async move { send(&router, "POST", "/incr", Some(&c), "").await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "an increment failed: {}", r.body);
    }
    assert_eq!(
        send(router, "GET", "/read", Some(&c), "").await.body,
        "Some(50) Some(\"alice\")",
        "lost updates"
    );
}

async fn a_late_request_with_a_rotated_away_cookie_does_not_log_out(router: &Router) {
    let c1 = send(router, "POST", "/login", None, "bob").await.cookie();
    let c2 = send(router, "POST", "/login", Some(&c1), "bob")
        .await
        .cookie();
    let late = send(router, "GET", "/read", Some(&c1), "").await;
    assert!(late.set_cookie.is_empty(), "{:?}", late.set_cookie);
    assert_eq!(late.body, "None None");
    assert_eq!(
        send(router, "GET", "/read", Some(&c2), "").await.body,
        "None Some(\"bob\")"
    );
}

async fn a_flash_after_logout_lands_in_a_new_anonymous_session(router: &Router) {
    let c = send(router, "POST", "/login", None, "carol").await.cookie();
    let r = send(router, "POST", "/logout-then-flash", Some(&c), "").await;
    assert_eq!(r.body, "None None");
    let flash = r.cookie();
    assert_eq!(
        send(router, "GET", "/flash", Some(&flash), "").await.body,
        "Some(\"logged out\") None"
    );
    assert_eq!(
        send(router, "GET", "/read", Some(&c), "").await.body,
        "None None"
    );
}

async fn a_login_already_made_reaches_the_client_on_a_5xx(router: &Router) {
    let r = send(router, "POST", "/login-then-fail", None, "dave").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let c = r.cookie();
    assert_eq!(
        send(router, "GET", "/read", Some(&c), "").await.body,
        "None Some(\"dave\")"
    );
}

async fn ending_a_session_needs_it_to_be_the_users_own(router: &Router) {
    let erin = send(router, "POST", "/login", None, "erin").await.cookie();
    let mut erin2 = send(router, "POST", "/login", None, "erin").await.cookie();
    let frank = send(router, "POST", "/login", None, "frank").await.cookie();
    let frank2 = send(router, "POST", "/login", None, "frank").await.cookie();
    let mut targets: Vec<String> = send(router, "GET", "/keys", Some(&erin), "")
        .await
        .body
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(targets.len(), 2);

    // frank aims at every key erin's sessions had, while one of them keeps
    // rotating: every call is refused, and erin stays logged in everywhere.
    for _ in 0..5 {
        let attacks: Vec<_> = targets
            .iter()
            .cycle()
            .take(12)
            .map(|k| {
                let (router, frank, k) = (router.clone(), frank.clone(), k.clone());
                tokio::spawn(async move { send(&router, "POST", "/end", Some(&frank), &k).await })
            })
            .collect();
        erin2 = send(router, "POST", "/rotate", Some(&erin2), "")
            .await
            .cookie();
        targets.push(send(router, "GET", "/key", Some(&erin2), "").await.body);
        for a in attacks {
            let r = a.await.unwrap();
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
        }
    }
    for c in [&erin, &erin2] {
        assert_eq!(
            send(router, "GET", "/read", Some(c), "").await.body,
            "None Some(\"erin\")",
            "one of erin's sessions was ended"
        );
    }

    // frank ends his own other session.
    let own = send(router, "GET", "/key", Some(&frank2), "").await.body;
    let r = send(router, "POST", "/end", Some(&frank), &own).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        send(router, "GET", "/read", Some(&frank2), "").await.body,
        "None None"
    );
    assert_eq!(
        send(router, "GET", "/read", Some(&frank), "").await.body,
        "None Some(\"frank\")"
    );
}

fn ring() -> KeyRing {
    KeyRing::new(1, EncryptionKey::generate())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_memory() {
    scenarios(router(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_redis() {
    scenarios(router(redis().await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_redis_cluster() {
    scenarios(router(redis_cluster().await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_near_cached_redis() {
    scenarios(router(near_cached_redis(&unique("axum")).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_near_cached_redis_cluster() {
    scenarios(router(near_cached_redis_cluster(&unique("axum")).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_encrypted_near_cached_redis() {
    let store = EncryptedStore::new(near_cached_redis(&unique("axum")).await, ring());
    scenarios(router(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_near_cached_instances() {
    let prefix = unique("axum");
    let a = router(near_cached_redis(&prefix).await);
    let b = router(near_cached_redis(&prefix).await);
    two_instances(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_near_cached_instances_on_a_cluster() {
    let prefix = unique("axum");
    let a = router(near_cached_redis_cluster(&prefix).await);
    let b = router(near_cached_redis_cluster(&prefix).await);
    two_instances(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_encrypted_near_cached_instances() {
    let prefix = unique("axum");
    // Two instances configured with the same key.
    let key = EncryptionKey::generate();
    let ring = || KeyRing::new(1, key.clone());
    let a = router(EncryptedStore::new(
        near_cached_redis(&prefix).await,
        ring(),
    ));
    let b = router(EncryptedStore::new(
        near_cached_redis(&prefix).await,
        ring(),
    ));
    two_instances(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_postgres() {
    scenarios(router(postgres().await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_memcached() {
    scenarios(router(memcached())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_encrypted_redis() {
    scenarios(router(EncryptedStore::new(redis().await, ring()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_encrypted_postgres() {
    let store = Arc::new(EncryptedStore::new(postgres().await, ring()));
    scenarios(router(store)).await;
}
