//! Finding the Redis servers the integration tests run against.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

use session_redis::RedisStore;

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
const DEFAULT_CLUSTER: &str =
    "redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103";

/// Whether a Redis server answers PING at `url` within two seconds.
pub async fn answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let ping = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ping).await,
        Ok(Ok(_))
    )
}

/// The single server to test against: `REDIS_URL`; when unset, the local
/// default if it answers, else a Redis container if a Docker engine answers.
/// Panics with instructions otherwise.
pub async fn redis_url() -> String {
    if let Ok(url) = std::env::var("REDIS_URL") {
        assert!(
            answers(&url).await,
            "REDIS_URL does not answer: start Redis there, or unset REDIS_URL to use {DEFAULT_URL} \
             (`eval \"$(scripts/services.sh)\"` starts one)"
        );
        return url;
    }
    if answers(DEFAULT_URL).await {
        return DEFAULT_URL.to_owned();
    }
    if let Some(url) = docker_redis() {
        return url.clone();
    }
    panic!(
        "no Redis server for the tests: set REDIS_URL to one, run `eval \"$(scripts/services.sh)\"` \
         to start one on {DEFAULT_URL}, or start a Docker engine so a Redis container can be started"
    );
}

/// A Redis container started once per test binary (only when no server was
/// given and none answers locally). It is left running for the process's
/// lifetime.
fn docker_redis() -> Option<&'static String> {
    use testcontainers_modules::redis::{Redis, REDIS_PORT};
    use testcontainers_modules::testcontainers::runners::SyncRunner;
    use testcontainers_modules::testcontainers::Container;

    static CONTAINER: OnceLock<Option<(Container<Redis>, String)>> = OnceLock::new();
    CONTAINER
        .get_or_init(|| {
            // The blocking runner has its own runtime: keep it off ours.
            std::thread::spawn(|| {
                let container = Redis::default().start().ok()?;
                let host = container.get_host().ok()?;
                let port = container.get_host_port_ipv4(REDIS_PORT).ok()?;
                Some((container, format!("redis://{host}:{port}")))
            })
            .join()
            .ok()
            .flatten()
        })
        .as_ref()
        .map(|(_, url)| url)
}

/// The cluster nodes to test against: `REDIS_CLUSTER_URLS` (comma
/// separated), or the local 3-master cluster on ports 7101-7103.
pub async fn cluster_urls() -> Vec<String> {
    let given = std::env::var("REDIS_CLUSTER_URLS").ok();
    let urls: Vec<String> = given
        .as_deref()
        .unwrap_or(DEFAULT_CLUSTER)
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    let mut ok = !urls.is_empty();
    for u in &urls {
        ok = ok && answers(u).await;
    }
    assert!(
        ok,
        "no Redis Cluster for the tests: set REDIS_CLUSTER_URLS to its nodes (comma separated), or \
         run `eval \"$(scripts/services.sh)\"`, which starts a 3-master cluster on ports 7101-7103"
    );
    urls
}

/// A store on the single test server under `prefix`.
pub async fn store(prefix: &str) -> RedisStore {
    RedisStore::builder()
        .prefix(prefix)
        .connect(&redis_url().await)
        .await
        .expect("connecting to the test Redis failed")
}

/// A store on the test cluster under `prefix`.
pub async fn cluster_store(prefix: &str) -> RedisStore {
    RedisStore::builder()
        .prefix(prefix)
        .connect_cluster(cluster_urls().await)
        .await
        .expect("connecting to the test Redis Cluster failed")
}

/// A unique prefix for a test.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t_{name}_{nanos:x}_{}", std::process::id())
}
