//! The layer over every backend, as applications compose it: MemoryStore,
//! Redis (single server and cluster), PostgreSQL, Memcached, and encrypted
//! Redis. Each runs the same HTTP scenarios: 50 parallel read-modify-write
//! increments of one session, a late request carrying a rotated-away cookie,
//! a flash message after logout, a login that must reach the client
//! although the handler then fails, and "end that session" refusing another
//! user's sessions while they rotate.
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
use session_redis::RedisStore;

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

async fn redis_cluster() -> RedisStore {
    let urls = servers::redis_cluster_urls();
    RedisStore::builder()
        .prefix(unique("axum"))
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
