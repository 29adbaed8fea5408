//! The store checks, at connect, the server settings its guarantees rest
//! on: a server that may evict keys under memory pressure (a `maxmemory`
//! with a policy other than `noeviction`) could drop a user's index and
//! make "log out everywhere" miss live sessions, so it is refused with a
//! typed error naming the setting, unless the application allows eviction.

use session_redis::{RedisStore, SetupError};
use session_test_support::process::{spare_port, ServerProcess};

async fn server(extra: &[&str]) -> ServerProcess {
    ServerProcess::redis(spare_port(), extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_server_is_refused_with_the_setting_named() {
    let s = server(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]).await;
    let err = RedisStore::builder()
        .connect(&s.url("redis"))
        .await
        .expect_err("an evicting server must be refused");
    match &err {
        SetupError::ServerSetting {
            setting,
            value,
            required,
        } => {
            assert_eq!(*setting, "maxmemory-policy");
            assert_eq!(value, "allkeys-lru");
            assert_eq!(*required, "noeviction");
        }
        other => panic!("{other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("maxmemory-policy") && message.contains("noeviction"),
        "{message}"
    );

    // Allowed on purpose: connects.
    RedisStore::builder()
        .allow_eviction(true)
        .connect(&s.url("redis"))
        .await
        .expect("eviction allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_never_evict_are_accepted() {
    for extra in [
        &["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"][..],
        // No memory limit: nothing is ever evicted, whatever the policy.
        &["--maxmemory", "0", "--maxmemory-policy", "volatile-lru"][..],
    ] {
        let s = server(extra).await;
        RedisStore::builder()
            .connect(&s.url("redis"))
            .await
            .unwrap_or_else(|e| panic!("{extra:?}: {e}"));
    }
}

/// The store measures the server's clock against the application's at
/// connect; on one machine the two agree to well under the 2 s bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_is_measured_at_connect() {
    let s = server(&[]).await;
    let store = RedisStore::builder()
        .connect(&s.url("redis"))
        .await
        .unwrap();
    let first = store.clock_skew().expect("measured at connect");
    assert!(
        !first.exceeds(session_core::DEFAULT_MAX_CLOCK_SKEW),
        "{first:?}"
    );
    assert!(
        u128::from(first.offset_millis().unsigned_abs()) <= first.uncertainty().as_millis() + 5,
        "{first:?}"
    );
    let again = store.measure_clock_skew().await.unwrap();
    assert!(again.measured_at() >= first.measured_at());
    assert_eq!(store.clock_skew(), Some(again));
}
