//! Where the tests find their servers.
//!
//! For each server, in order:
//! 1. the URL in its environment variable, when set: it must answer, or
//!    the test fails (a given server is never silently replaced);
//! 2. the local default, when it answers (`scripts/services.sh` at the
//!    workspace root starts every default);
//! 3. with the `containers` feature, a throwaway container when a Docker
//!    engine is configured (`DOCKER_HOST` or `/var/run/docker.sock`), one
//!    per server and test binary, left running until the binary exits;
//!
//! and otherwise the test fails with a message that says how to provide
//! one. "Answers" means a TCP connection to every host of the URL opens
//! within a second; the backend's own client then reports anything else.
//! Results are cached for the test binary.

use std::collections::HashMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// A kind of test server and where to find it.
#[derive(Debug, Clone, Copy)]
pub struct Server {
    /// What it is, for messages: `"Redis"`.
    pub name: &'static str,
    /// The environment variable that names it: `"REDIS_URL"`.
    pub var: &'static str,
    /// The URL of the local default.
    pub default_url: &'static str,
    /// The container to start when there is none, if one can stand in.
    pub image: Option<Image>,
}

/// A container image that provides a [`Server`].
#[derive(Debug, Clone, Copy)]
pub struct Image {
    /// Image name: `"redis"`.
    pub name: &'static str,
    /// Image tag: `"7"`.
    pub tag: &'static str,
    /// The port the server listens on inside the container.
    pub port: u16,
    /// Environment of the container.
    pub env: &'static [(&'static str, &'static str)],
    /// The URL of the server at a mapped host and port.
    pub url: fn(&str, u16) -> String,
}

/// A single Redis server.
pub const REDIS: Server = Server {
    name: "Redis",
    var: "REDIS_URL",
    default_url: "redis://127.0.0.1:6379",
    image: Some(Image {
        name: "redis",
        tag: "7",
        port: 6379,
        env: &[],
        url: |h, p| format!("redis://{h}:{p}"),
    }),
};

/// A Redis Cluster: comma-separated node URLs (no container stands in). The
/// local default lists all six nodes (three masters, one replica each): the
/// client only discovers the cluster through them, and after a failover a
/// replica is the master.
pub const REDIS_CLUSTER: Server = Server {
    name: "Redis Cluster",
    var: "REDIS_CLUSTER_URLS",
    default_url: "redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103,\
                  redis://127.0.0.1:7104,redis://127.0.0.1:7105,redis://127.0.0.1:7106",
    image: None,
};

/// A PostgreSQL server with a database `test` the user may create tables in.
pub const POSTGRES: Server = Server {
    name: "PostgreSQL",
    var: "DATABASE_URL",
    default_url: "postgres://postgres@127.0.0.1:5432/test",
    image: Some(Image {
        name: "postgres",
        tag: "16",
        port: 5432,
        env: &[
            ("POSTGRES_HOST_AUTH_METHOD", "trust"),
            ("POSTGRES_DB", "test"),
        ],
        url: |h, p| format!("postgres://postgres@{h}:{p}/test"),
    }),
};

const MEMCACHED_IMAGE: Image = Image {
    name: "memcached",
    tag: "1.6",
    port: 11211,
    env: &[],
    url: |h, p| format!("memcache://{h}:{p}"),
};

/// The first Memcached server.
pub const MEMCACHED: Server = Server {
    name: "Memcached",
    var: "MEMCACHED_URL",
    default_url: "memcache://127.0.0.1:11211",
    image: Some(MEMCACHED_IMAGE),
};

/// A second Memcached server, for tests that hash keys over two.
pub const MEMCACHED_2: Server = Server {
    name: "a second Memcached",
    var: "MEMCACHED_URL_2",
    default_url: "memcache://127.0.0.1:11212",
    image: Some(MEMCACHED_IMAGE),
};

/// The URL of the single Redis server.
#[must_use]
pub fn redis_url() -> String {
    url(&REDIS)
}

/// The node URLs of the Redis Cluster.
#[must_use]
pub fn redis_cluster_urls() -> Vec<String> {
    url(&REDIS_CLUSTER)
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect()
}

/// The URL of the PostgreSQL server.
#[must_use]
pub fn postgres_url() -> String {
    url(&POSTGRES)
}

/// The URL of the first Memcached server.
#[must_use]
pub fn memcached_url() -> String {
    url(&MEMCACHED)
}

/// The URL of the second Memcached server.
#[must_use]
pub fn memcached_url_2() -> String {
    url(&MEMCACHED_2)
}

/// The URL of `server` (see the module docs), cached for the binary.
///
/// # Panics
///
/// When no server answers and none can be started: the message says how
/// to provide one.
#[must_use]
pub fn url(server: &Server) -> String {
    static FOUND: OnceLock<Mutex<HashMap<&'static str, String>>> = OnceLock::new();
    let found = FOUND.get_or_init(|| Mutex::new(HashMap::new()));
    let mut found = found
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(url) = found.get(server.var) {
        return url.clone();
    }
    let url = resolve(server);
    found.insert(server.var, url.clone());
    url
}

/// How to provide `server`: the end of every failure message.
#[must_use]
pub fn how_to_provide(server: &Server) -> String {
    let container = if server.image.is_some() && cfg!(feature = "containers") {
        ", or start a Docker engine so that a container can be started"
    } else {
        ""
    };
    format!(
        "set {var} to a running {name}, or run `eval \"$(scripts/services.sh)\"` at the \
         workspace root to start one at {default}{container}",
        var = server.var,
        name = server.name,
        default = server.default_url,
    )
}

fn resolve(server: &Server) -> String {
    if let Some(given) = std::env::var(server.var)
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        assert!(
            answers(&given),
            "{} does not answer at {} ({}): start it there, or unset {} to use {}",
            server.name,
            session_core::redact::redact_url(&given),
            server.var,
            server.var,
            server.default_url,
        );
        return given;
    }
    if answers(server.default_url) {
        return server.default_url.to_owned();
    }
    if let Some(url) = server
        .image
        .and_then(|image| start_container(server, image))
    {
        return url;
    }
    panic!(
        "no {} for the tests: {}",
        server.name,
        how_to_provide(server)
    );
}

/// Whether a TCP connection opens, within a second, to every host of `url`
/// (a comma-separated list is several URLs).
#[must_use]
pub fn answers(url: &str) -> bool {
    let urls: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    !urls.is_empty()
        && urls.iter().all(|u| {
            host_port(u).is_some_and(|hp| {
                hp.to_socket_addrs().ok().is_some_and(|mut addrs| {
                    addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
                })
            })
        })
}

/// `host:port` of a URL such as `scheme://user:pass@host:port/path?q`,
/// with the scheme's default port when there is none.
fn host_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hostport.is_empty() {
        return None;
    }
    let has_port = match hostport.rfind(']') {
        Some(close) => hostport[close..].contains(':'),
        None => hostport.contains(':'),
    };
    if has_port {
        return Some(hostport.to_owned());
    }
    let port = match scheme {
        "redis" | "rediss" => 6379,
        "postgres" | "postgresql" => 5432,
        "memcache" | "memcached" => 11211,
        _ => return None,
    };
    Some(format!("{hostport}:{port}"))
}

#[cfg(feature = "containers")]
fn start_container(server: &Server, image: Image) -> Option<String> {
    let docker = std::env::var_os("DOCKER_HOST").is_some()
        || std::path::Path::new("/var/run/docker.sock").exists();
    if !docker {
        return None;
    }
    // The blocking runner drives its own runtime: keep it off the test's.
    let name = server.name;
    let url = std::thread::spawn(move || {
        use testcontainers::core::{IntoContainerPort, WaitFor};
        use testcontainers::runners::SyncRunner;
        use testcontainers::{GenericImage, ImageExt};

        let mut request = GenericImage::new(image.name, image.tag)
            .with_exposed_port(image.port.tcp())
            .with_wait_for(WaitFor::Nothing)
            .with_env_var("SESSION_TEST_SUPPORT", "1");
        for (k, v) in image.env {
            request = request.with_env_var(*k, *v);
        }
        let container = request.start().ok()?;
        let host = container.get_host().ok()?.to_string();
        let port = container.get_host_port_ipv4(image.port).ok()?;
        // Left running for the test binary's lifetime.
        std::mem::forget(container);
        Some((image.url)(&host, port))
    })
    .join()
    .ok()
    .flatten();
    let url = url.unwrap_or_else(|| panic!("starting a {name} container failed"));
    for _ in 0..300 {
        if answers(&url) {
            // A port that accepts may belong to a server still starting.
            std::thread::sleep(Duration::from_secs(1));
            return Some(url);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the {name} container at {url} never answered");
}

#[cfg(not(feature = "containers"))]
fn start_container(_: &Server, _: Image) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_of_every_url_shape() {
        assert_eq!(
            host_port("redis://127.0.0.1:6379").as_deref(),
            Some("127.0.0.1:6379")
        );
        assert_eq!(host_port("redis://:pw@h/0").as_deref(), Some("h:6379"));
        assert_eq!(
            host_port("postgres://u:p@db.example:5433/test?sslmode=require").as_deref(),
            Some("db.example:5433")
        );
        assert_eq!(
            host_port("memcache://[::1]:11212").as_deref(),
            Some("[::1]:11212")
        );
        assert_eq!(
            host_port("memcache://[::1]").as_deref(),
            Some("[::1]:11211")
        );
        assert_eq!(host_port("nonsense"), None);
        assert_eq!(host_port("ftp://h"), None);
    }

    #[test]
    fn nothing_answers_on_a_closed_port() {
        // A spare port may be taken by a server another test starts
        // between choosing it and asking: try a few, one must be closed.
        let port = (0..10)
            .map(|_| crate::process::spare_port())
            .find(|port| !answers(&format!("redis://127.0.0.1:{port}")))
            .expect("every closed port answered");
        assert!(!answers(""));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().port();
        assert!(answers(&format!("redis://127.0.0.1:{open}")));
        assert!(!answers(&format!(
            "redis://127.0.0.1:{open},redis://127.0.0.1:{port}"
        )));
    }

    #[test]
    fn messages_say_how() {
        let how = how_to_provide(&REDIS_CLUSTER);
        assert!(how.contains("REDIS_CLUSTER_URLS") && how.contains("scripts/services.sh"));
    }
}
