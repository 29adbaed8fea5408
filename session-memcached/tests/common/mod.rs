//! Where the tests find Memcached.
//!
//! `MEMCACHED_URL` (default `memcache://127.0.0.1:11211`) and, for the
//! two-server tests, `MEMCACHED_URL_2` (default `memcache://127.0.0.1:11212`).
//! `scripts/services.sh` at the workspace root installs and starts both.
#![allow(dead_code)]

use std::time::Duration;

use session_memcached::{MemcachedConfig, MemcachedStore};

const HOW: &str = "start memcached (run `eval \"$(scripts/services.sh)\"` at the workspace root, \
     which installs and starts two on ports 11211 and 11212) or point MEMCACHED_URL / \
     MEMCACHED_URL_2 at running servers";

/// The URL of the first server; fails the test if it does not answer.
pub async fn url() -> String {
    server("MEMCACHED_URL", "memcache://127.0.0.1:11211").await
}

/// The URL of the second server; fails the test if it does not answer.
pub async fn url2() -> String {
    server("MEMCACHED_URL_2", "memcache://127.0.0.1:11212").await
}

async fn server(var: &str, default: &str) -> String {
    let given = std::env::var(var).ok().filter(|v| !v.is_empty());
    let url = given.clone().unwrap_or_else(|| default.to_owned());
    if answers(&url).await {
        return url;
    }
    if given.is_none() {
        if let Some(url) = container::start(var).await {
            return url;
        }
    }
    panic!("Memcached at {url} ({var}) does not answer: {HOW}");
}

async fn answers(url: &str) -> bool {
    let Ok(config) = MemcachedConfig::new([url]) else {
        return false;
    };
    let config = config.with_connect_timeout(Duration::from_millis(500));
    match MemcachedStore::new(config) {
        Ok(store) => store.ping().await.is_ok(),
        Err(_) => false,
    }
}

/// A store on `urls` in `namespace`.
pub fn store(urls: &[&str], namespace: &str) -> MemcachedStore {
    let config = MemcachedConfig::new(urls)
        .expect("valid URLs")
        .with_namespace(namespace)
        .expect("valid namespace");
    MemcachedStore::new(config).expect("store")
}

/// Fallback when no URL is given and the local default does not answer:
/// a throwaway Memcached in Docker, via testcontainers, if a Docker engine
/// answers.
mod container {
    use std::sync::OnceLock;

    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::GenericImage;
    use tokio::sync::Mutex;

    static STARTED: OnceLock<Mutex<Vec<(String, String)>>> = OnceLock::new();

    /// One container per variable, kept for the whole test binary.
    pub async fn start(var: &str) -> Option<String> {
        let started = STARTED.get_or_init(|| Mutex::new(Vec::new()));
        let mut started = started.lock().await;
        if let Some((_, url)) = started.iter().find(|(v, _)| v == var) {
            return Some(url.clone());
        }
        let container = GenericImage::new("memcached", "1.6")
            .with_exposed_port(11211.tcp())
            .with_wait_for(WaitFor::Nothing)
            .start()
            .await
            .ok()?;
        let port = container.get_host_port_ipv4(11211).await.ok()?;
        let host = container.get_host().await.ok()?;
        let url = format!("memcache://{host}:{port}");
        for _ in 0..50 {
            if super::answers(&url).await {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // Leaked on purpose: the container lives as long as the test binary.
        std::mem::forget(container);
        started.push((var.to_owned(), url.clone()));
        Some(url)
    }
}
