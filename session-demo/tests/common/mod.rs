//! Starts the demo on 127.0.0.1:0 over real TLS and talks to it with a
//! real HTTPS client that trusts only the demo's generated certificate.

#![allow(dead_code)]

pub mod chrome;

use std::sync::{Arc, OnceLock};

use clap::Parser;
use reqwest::redirect::Policy;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use session_demo::{Config, Demo};

pub const USERS: &str = "alice:pw-alice,bob:pw-bob";

#[derive(Clone)]
pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
}

/// A client without a cookie jar (tests handle cookies by hand, like an
/// attacker would) that does not follow redirects and trusts `pem` only.
pub fn client(pem: &str) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(Policy::none())
        .https_only(true)
        .build()
        .unwrap()
}

/// Login throttles for the end-to-end tests: every test logs in many times
/// from 127.0.0.1, in parallel, into one shared demo, so the defaults (30
/// attempts per address and 10 per account) would refuse some of them. A
/// test that is about the throttles passes its own `--login-limit-*`.
pub const TEST_LIMITS: [&str; 4] = [
    "--login-limit-per-ip",
    "100000/1",
    "--login-limit-per-account",
    "100000/1",
];

/// Binds a demo with `args` (users from [`USERS`] unless `users` is None),
/// with [`TEST_LIMITS`] unless `args` sets login limits itself.
pub async fn bind(args: &[&str], users: Option<&str>) -> Demo {
    let mut argv = vec!["session-demo", "--listen", "127.0.0.1:0"];
    if !args.iter().any(|a| a.starts_with("--login-limit")) {
        argv.extend_from_slice(&TEST_LIMITS);
    }
    argv.extend_from_slice(args);
    let mut config = Config::try_parse_from(argv).unwrap();
    config.users = users.map(str::to_owned);
    // Each demo gets its own keys in a shared backend (SESSION_BACKEND may
    // name Redis, PostgreSQL or Memcached), so tests never see each other's
    // users.
    config.namespace = unique_namespace();
    Demo::bind(config).await.expect("demo starts")
}

/// Starts a demo on the current runtime (it ends with the test).
pub async fn start(args: &[&str]) -> Server {
    let demo = bind(args, Some(USERS)).await;
    let base = format!("https://127.0.0.1:{}", demo.local_addr().port());
    let client = client(demo.certificate_pem().unwrap());
    tokio::spawn(demo.serve());
    Server { base, client }
}

/// One demo with the default options, shared by the tests of a binary and
/// served from its own thread so it outlives any single test.
pub fn shared() -> Server {
    static SHARED: OnceLock<(String, String)> = OnceLock::new();
    let (base, pem) = SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let demo = bind(&[], Some(USERS)).await;
                let base = format!("https://127.0.0.1:{}", demo.local_addr().port());
                tx.send((base, demo.certificate_pem().unwrap().to_owned()))
                    .unwrap();
                demo.serve().await.unwrap();
            });
        });
        rx.recv().expect("shared demo starts")
    });
    Server {
        base: base.clone(),
        client: client(pem),
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub set_cookie: Vec<String>,
    pub cache_control: Option<String>,
    pub location: Option<String>,
    pub retry_after: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    /// `name=value` of the session cookie this reply sets.
    pub fn cookie(&self) -> String {
        let live: Vec<&String> = self
            .set_cookie
            .iter()
            .filter(|c| !c.contains("Max-Age=0"))
            .collect();
        assert_eq!(
            live.len(),
            1,
            "expected one session cookie in {:?}",
            self.set_cookie
        );
        live[0].split(';').next().unwrap().to_owned()
    }

    /// Whether this reply removes the session cookie.
    pub fn removes_cookie(&self) -> bool {
        self.set_cookie
            .iter()
            .any(|c| c.starts_with("__Host-session=;") && c.contains("Max-Age=0"))
    }
}

impl Server {
    pub async fn reply(res: reqwest::Response) -> Reply {
        let h = res.headers();
        let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_owned());
        Reply {
            status: res.status().as_u16(),
            set_cookie: h
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect(),
            cache_control: get("cache-control"),
            location: get("location"),
            retry_after: get("retry-after"),
            headers: h.clone(),
            body: res.text().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Reply {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        Self::reply(req.send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Reply {
        let mut req = self.client.post(format!("{}{path}", self.base)).form(form);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        Self::reply(req.send().await.unwrap()).await
    }

    pub async fn login_with(&self, cookie: Option<&str>, user: &str, password: &str) -> Reply {
        self.post(
            "/login",
            cookie,
            &[("username", user), ("password", password)],
        )
        .await
    }

    /// Logs `user` in (password `pw-<user>`) and returns the session cookie.
    pub async fn login(&self, user: &str) -> String {
        let r = self.login_with(None, user, &format!("pw-{user}")).await;
        assert_eq!(r.status, 303, "login of {user}: {r:?}");
        r.cookie()
    }

    /// The user `/profile` greets with `cookie`, or None on 401.
    pub async fn whoami(&self, cookie: &str) -> Option<String> {
        let r = self.get("/profile", Some(cookie)).await;
        match r.status {
            200 => {
                let start = r.body.find("Hello, ").unwrap() + "Hello, ".len();
                let end = r.body[start..].find('!').unwrap() + start;
                Some(r.body[start..end].to_owned())
            }
            401 => None,
            s => panic!("unexpected status {s} from /profile"),
        }
    }
}

fn unique_namespace() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "demo_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
