//! The demo against anonymous traffic and stolen sessions, over real TLS:
//! owner-checked "end that session", the password asked again before
//! ending sessions, login throttling and bounded password checks, safe
//! `GET`s, protective headers on every answer, and the storage-key secret.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use common::{bind, start, Reply, Server, USERS};
use session_core::{KeyDeriver, SessionId};
use session_demo::{Config, Demo};

const HSTS: &str = "max-age=31536000; includeSubDomains";

fn session_value(cookie: &str) -> &str {
    cookie.split_once('=').unwrap().1
}

/// The storage keys `/sessions` lists for `cookie`'s user, oldest first,
/// and the index of the caller's own.
async fn keys(s: &Server, cookie: &str) -> (Vec<String>, usize) {
    let r = s.get("/sessions", Some(cookie)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let list = v["sessions"].as_array().unwrap();
    let keys = list
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect();
    let current = list
        .iter()
        .position(|e| e["current"].as_bool().unwrap())
        .unwrap();
    (keys, current)
}

fn other_key(keys: &(Vec<String>, usize)) -> String {
    assert_eq!(keys.0.len(), 2, "{keys:?}");
    keys.0[1 - keys.1].clone()
}

async fn end(s: &Server, cookie: Option<&str>, key: &str, password: &str) -> Reply {
    s.post(
        "/sessions/end",
        cookie,
        &[("key", key), ("password", password)],
    )
    .await
}

#[tokio::test]
async fn ending_another_users_session_is_refused_and_it_stays_alive() {
    let s = start(&[]).await;
    let a1 = s.login("alice").await;
    let _a2 = s.login("alice").await;
    let b1 = s.login("bob").await;
    let b2 = s.login("bob").await;
    let bob_keys = keys(&s, &b1).await;
    assert_eq!(bob_keys.0.len(), 2);
    for key in &bob_keys.0 {
        // With alice's correct password: still not hers to end.
        let r = end(&s, Some(&a1), key, "pw-alice").await;
        assert_eq!(r.status, 404, "{r:?}");
        assert!(r.set_cookie.is_empty());
        // Bob's password does not help alice either.
        let r = end(&s, Some(&a1), key, "pw-bob").await;
        assert_eq!(r.status, 403, "{r:?}");
    }
    assert_eq!(s.whoami(&b1).await.as_deref(), Some("bob"));
    assert_eq!(s.whoami(&b2).await.as_deref(), Some("bob"));
    assert_eq!(s.whoami(&a1).await.as_deref(), Some("alice"));

    // Unknown and malformed keys read exactly like another user's.
    let unknown = end(&s, Some(&a1), &"0".repeat(64), "pw-alice").await;
    let junk = end(&s, Some(&a1), "../../etc/passwd", "pw-alice").await;
    let other = end(&s, Some(&a1), &bob_keys.0[0], "pw-alice").await;
    assert_eq!((unknown.status, junk.status), (404, 404));
    assert_eq!(unknown.body, other.body);
    assert_eq!(junk.body, other.body);

    // Anonymous callers are sent to log in.
    let r = end(&s, None, &bob_keys.0[0], "pw-bob").await;
    assert_eq!(r.status, 401);
    assert_eq!(s.whoami(&b1).await.as_deref(), Some("bob"));
}

#[tokio::test]
async fn ending_ones_own_other_session_needs_the_password_again() {
    let s = start(&[]).await;
    let laptop = s.login("alice").await;
    let phone = s.login("alice").await;
    let k = keys(&s, &laptop).await;
    let phone_key = other_key(&k);

    for password in ["", "pw-bob", "PW-ALICE"] {
        let r = end(&s, Some(&laptop), &phone_key, password).await;
        assert_eq!(r.status, 403, "password {password:?}: {r:?}");
        assert!(r.body.contains("Enter your password again"));
        assert_eq!(s.whoami(&phone).await.as_deref(), Some("alice"));
    }
    let r = s
        .post(
            "/sessions/end",
            Some(&laptop),
            &[("key", phone_key.as_str())],
        )
        .await;
    assert_eq!(r.status, 403, "no password field at all");
    assert_eq!(s.whoami(&phone).await.as_deref(), Some("alice"));

    let r = end(&s, Some(&laptop), &phone_key, "pw-alice").await;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.location.as_deref(), Some("/sessions"));
    assert!(r.set_cookie.is_empty(), "the caller keeps its session");
    assert_eq!(s.whoami(&phone).await, None, "the phone is signed out");
    assert_eq!(s.whoami(&laptop).await.as_deref(), Some("alice"));
    // Once ended, the key is no longer one of hers.
    let r = end(&s, Some(&laptop), &phone_key, "pw-alice").await;
    assert_eq!(r.status, 404);

    // Ending the current session is a logout.
    let (own, _) = keys(&s, &laptop).await;
    let r = end(&s, Some(&laptop), &own[0], "pw-alice").await;
    assert_eq!(r.status, 303);
    assert!(r.removes_cookie(), "{:?}", r.set_cookie);
    assert_eq!(
        r.headers["clear-site-data"].to_str().unwrap(),
        "\"cookies\", \"storage\""
    );
    assert_eq!(s.whoami(&laptop).await, None);
}

#[tokio::test]
async fn logging_out_everywhere_needs_the_password_again() {
    let s = start(&[]).await;
    let a1 = s.login("alice").await;
    let a2 = s.login("alice").await;
    for form in [vec![], vec![("password", "")], vec![("password", "pw-bob")]] {
        let r = s.post("/logout-all", Some(&a1), &form).await;
        assert_eq!(r.status, 403, "{form:?}: {r:?}");
        assert!(r.set_cookie.is_empty());
        assert!(r.headers.get("clear-site-data").is_none());
    }
    assert_eq!(s.whoami(&a1).await.as_deref(), Some("alice"));
    assert_eq!(s.whoami(&a2).await.as_deref(), Some("alice"));

    let r = s
        .post("/logout-all", Some(&a1), &[("password", "pw-alice")])
        .await;
    assert_eq!(r.status, 303);
    assert!(r.removes_cookie());
    assert_eq!(
        r.headers["clear-site-data"].to_str().unwrap(),
        "\"cookies\", \"storage\""
    );
    assert_eq!(s.whoami(&a1).await, None);
    assert_eq!(s.whoami(&a2).await, None);
}

#[tokio::test]
async fn logout_clears_site_data() {
    let s = start(&[]).await;
    let cookie = s.login("alice").await;
    let r = s.post("/logout", Some(&cookie), &[]).await;
    assert_eq!(r.status, 303);
    assert!(r.removes_cookie());
    assert_eq!(
        r.headers["clear-site-data"].to_str().unwrap(),
        "\"cookies\", \"storage\""
    );
    // Nothing else clears the browser's data.
    let again = s.login("alice").await;
    let profile = s.get("/profile", Some(&again)).await;
    assert!(profile.headers.get("clear-site-data").is_none());
}

#[tokio::test]
async fn every_response_carries_hsts() {
    let s = start(&[]).await;
    let cookie = s.login("alice").await;
    let mut replies = vec![
        s.get("/", None).await,
        s.get("/", Some(&cookie)).await,
        s.get("/profile", None).await,
        s.get("/no-such-page", None).await,
        s.get("/sessions", Some(&cookie)).await,
        s.login_with(None, "alice", "wrong").await,
        s.login_with(None, "alice", "pw-alice").await,
        s.post("/logout-all", Some(&cookie), &[]).await,
        s.post("/transfer", Some(&cookie), &[("token", "forged")])
            .await,
    ];
    let cross_site = s
        .client
        .post(format!("{}/logout", s.base))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    replies.push(Server::reply(cross_site).await);
    let head = s
        .client
        .head(format!("{}/transfer", s.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    replies.push(Server::reply(head).await);
    replies.push(s.post("/logout", Some(&cookie), &[]).await);
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [200, 200, 401, 404, 200, 401, 303, 403, 403, 403, 200, 303]
    );
    for r in &replies {
        assert_eq!(
            r.headers
                .get("strict-transport-security")
                .map(|v| v.to_str().unwrap()),
            Some(HSTS),
            "{r:?}"
        );
    }
}

fn token_in(form: &str) -> String {
    let start = form.find("name=\"token\" value=\"").unwrap() + "name=\"token\" value=\"".len();
    let end = form[start..].find('"').unwrap() + start;
    form[start..end].to_owned()
}

#[tokio::test]
async fn a_get_between_issuing_and_using_the_token_does_not_invalidate_it() {
    let s = start(&[]).await;
    let cookie = s.login("alice").await;
    let form = s.post("/transfer/new", Some(&cookie), &[]).await;
    assert_eq!(form.status, 200);
    let token = token_in(&form.body);

    // What a cross-site page can make the browser send: GETs and HEADs,
    // with the cookie (SameSite=Lax sends it on top-level navigations).
    let page = s.get("/transfer", Some(&cookie)).await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("name=\"token\""), "no token on a GET");
    assert!(page.set_cookie.is_empty());
    for (method, path) in [
        ("GET", "/transfer"),
        ("HEAD", "/transfer"),
        ("GET", "/transfer/new"),
        ("GET", "/profile"),
        ("GET", "/sessions"),
    ] {
        let r = s
            .client
            .request(method.parse().unwrap(), format!("{}{path}", s.base))
            .header("cookie", &cookie)
            .header("sec-fetch-site", "cross-site")
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert!(matches!(status, 200 | 405), "{method} {path}: {status}");
        assert!(r.headers().get("set-cookie").is_none());
    }
    // A cross-site POST that would issue a new token is refused.
    let r = s
        .client
        .post(format!("{}/transfer/new", s.base))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    let ok = s
        .post(
            "/transfer",
            Some(&cookie),
            &[("to", "bob"), ("amount", "5"), ("token", &token)],
        )
        .await;
    assert_eq!(ok.status, 200, "the token survived the GETs: {}", ok.body);
    let replay = s
        .post(
            "/transfer",
            Some(&cookie),
            &[("to", "bob"), ("amount", "5"), ("token", &token)],
        )
        .await;
    assert_eq!(replay.status, 403, "still one-time");

    // A new form (a POST) replaces the token, as before.
    let first = token_in(&s.post("/transfer/new", Some(&cookie), &[]).await.body);
    let second = token_in(&s.post("/transfer/new", Some(&cookie), &[]).await.body);
    let stale = s
        .post("/transfer", Some(&cookie), &[("token", first.as_str())])
        .await;
    assert_eq!(stale.status, 403);
    let fresh = s
        .post(
            "/transfer",
            Some(&cookie),
            &[("to", "bob"), ("amount", "1"), ("token", second.as_str())],
        )
        .await;
    assert_eq!(fresh.status, 200);
}

fn retry_after(r: &Reply) -> u64 {
    r.retry_after
        .as_deref()
        .unwrap_or_else(|| panic!("no Retry-After: {r:?}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account() {
    let s = start(&[
        "--login-limit-per-account",
        "3/600",
        "--login-limit-per-ip",
        "1000/1",
    ])
    .await;
    for _ in 0..3 {
        assert_eq!(s.login_with(None, "alice", "guess").await.status, 401);
    }
    let r = s.login_with(None, "alice", "guess").await;
    assert_eq!(r.status, 429, "{r:?}");
    let wait = retry_after(&r);
    assert!(
        (1..=200).contains(&wait),
        "one attempt back in 200 s: {wait}"
    );
    assert!(r.body.contains("Too many password attempts"), "{}", r.body);
    assert!(r.set_cookie.is_empty());
    // Even the right password waits: the check is not even made.
    assert_eq!(s.login_with(None, "alice", "pw-alice").await.status, 429);
    // Other accounts are not affected.
    assert_eq!(s.login_with(None, "bob", "pw-bob").await.status, 303);
    // Unknown names are throttled exactly like real ones.
    for _ in 0..3 {
        assert_eq!(s.login_with(None, "mallory", "x").await.status, 401);
    }
    assert_eq!(s.login_with(None, "mallory", "x").await.status, 429);
}

#[tokio::test]
async fn password_attempts_are_throttled_per_address() {
    let s = start(&[
        "--login-limit-per-ip",
        "4/600",
        "--login-limit-per-account",
        "1000/1",
    ])
    .await;
    let cookie = s.login("alice").await;
    assert_eq!(s.login_with(None, "bob", "guess").await.status, 401);
    assert_eq!(s.login_with(None, "carol", "guess").await.status, 401);
    // Re-entering the password counts too.
    let r = s
        .post("/logout-all", Some(&cookie), &[("password", "guess")])
        .await;
    assert_eq!(r.status, 403);
    let r = s.login_with(None, "bob", "pw-bob").await;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(retry_after(&r) >= 1);
    let r = s
        .post("/logout-all", Some(&cookie), &[("password", "pw-alice")])
        .await;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(retry_after(&r) >= 1);
    assert_eq!(
        s.whoami(&cookie).await.as_deref(),
        Some("alice"),
        "nothing ended"
    );
}

#[tokio::test]
async fn the_default_account_limit_is_ten_attempts() {
    // Only the per-address limit is given (its default), so no test limits
    // are added and the per-account default applies.
    let s = start(&["--login-limit-per-ip", "30/60"]).await;
    for i in 0..10 {
        let r = s.login_with(None, "alice", "guess").await;
        assert_eq!(r.status, 401, "attempt {i}");
    }
    let r = s.login_with(None, "alice", "guess").await;
    assert_eq!(r.status, 429);
    assert!(retry_after(&r) <= 60, "one attempt back a minute later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_beyond_the_workers_and_queue_answer_503() {
    let s = start(&["--password-workers", "1", "--password-queue", "1"]).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..32 {
        let s = s.clone();
        set.spawn(async move { s.login_with(None, &format!("user{i}"), "guess").await });
    }
    let replies: Vec<Reply> = set.join_all().await;
    let busy: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(
        replies.iter().all(|r| matches!(r.status, 401 | 503)),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(!busy.is_empty(), "32 checks at once on 1 worker + 1 queued");
    for r in busy {
        assert_eq!(r.retry_after.as_deref(), Some("1"));
        assert!(r.body.contains("Too many password checks at once"));
    }
    // Once the load is gone, logins work again.
    assert_eq!(s.login_with(None, "alice", "pw-alice").await.status, 303);
}

#[tokio::test]
async fn the_storage_key_secret_keys_the_storage_keys() {
    let secret = "a test secret of at least thirty-two bytes";
    let mut argv = vec!["session-demo", "--listen", "127.0.0.1:0"];
    argv.extend_from_slice(&common::TEST_LIMITS);
    let mut config = Config::try_parse_from(argv.iter().copied()).unwrap();
    config.users = Some(USERS.to_owned());
    config.storage_key_secret = Some(secret.to_owned());
    config.namespace = format!("demo_secret_{}", std::process::id());
    let demo = Demo::bind(config.clone()).await.unwrap();
    assert!(
        demo.banner()
            .contains("storage keys: keyed with SESSION_DEMO_STORAGE_KEY_SECRET"),
        "{}",
        demo.banner()
    );
    assert!(!demo.banner().contains("warning"), "{}", demo.banner());
    let s = Server {
        base: format!("https://127.0.0.1:{}", demo.local_addr().port()),
        client: common::client(demo.certificate_pem().unwrap()),
    };
    tokio::spawn(demo.serve());
    let cookie = s.login("alice").await;
    let id = SessionId::parse(session_value(&cookie)).unwrap();
    let (listed, _) = keys(&s, &cookie).await;
    assert_eq!(
        listed,
        [KeyDeriver::with_secret(secret.as_bytes())
            .derive(&id)
            .as_str()
            .to_owned()]
    );

    // Too short a secret is refused at start.
    config.storage_key_secret = Some("short".to_owned());
    let e = Demo::bind(config).await.unwrap_err().to_string();
    assert!(
        e.contains("SESSION_DEMO_STORAGE_KEY_SECRET must be at least 32 bytes"),
        "{e}"
    );
}

#[tokio::test]
async fn without_a_storage_key_secret_a_random_one_is_used_and_a_warning_printed() {
    let demo = bind(&[], Some(USERS)).await;
    let banner = demo.banner().to_owned();
    assert!(
        banner.contains("warning: SESSION_DEMO_STORAGE_KEY_SECRET is not set"),
        "{banner}"
    );
    let s = Server {
        base: format!("https://127.0.0.1:{}", demo.local_addr().port()),
        client: common::client(demo.certificate_pem().unwrap()),
    };
    tokio::spawn(demo.serve());
    let cookie = s.login("alice").await;
    let id = SessionId::parse(session_value(&cookie)).unwrap();
    let (listed, _) = keys(&s, &cookie).await;
    assert_eq!(listed.len(), 1);
    assert_ne!(
        listed[0],
        KeyDeriver::new().derive(&id).as_str(),
        "not the unkeyed hash"
    );
    assert_eq!(s.whoami(&cookie).await.as_deref(), Some("alice"));
}

/// Starts the real binary with `secret` in the environment (or without it)
/// and returns the banner it prints.
fn banner_of_the_binary(secret: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_session-demo"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("DEMO_USERS", USERS)
        .env("RUST_LOG", "warn")
        .env(
            "SESSION_NAMESPACE",
            format!(
                "demo_bin_{}_{}",
                std::process::id(),
                u8::from(secret.is_some())
            ),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match secret {
        Some(s) => cmd.env("SESSION_DEMO_STORAGE_KEY_SECRET", s),
        None => cmd.env_remove("SESSION_DEMO_STORAGE_KEY_SECRET"),
    };
    let mut child = cmd.spawn().expect("the demo binary starts");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let started = Instant::now();
    let mut banner = String::new();
    let mut line = String::new();
    while !banner.contains("password attempts:") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no banner: {banner}"
        );
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        banner.push_str(&line);
    }
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().ok();
    child.wait().ok();
    assert!(still_running, "the demo exited: {banner}");
    banner
}

#[test]
fn the_binary_starts_with_and_without_the_secret_in_the_environment() {
    let with = banner_of_the_binary(Some("0123456789abcdef0123456789abcdef"));
    assert!(
        with.contains("session-demo listening on https://127.0.0.1:"),
        "{with}"
    );
    assert!(
        with.contains("storage keys: keyed with SESSION_DEMO_STORAGE_KEY_SECRET"),
        "{with}"
    );
    let without = banner_of_the_binary(None);
    assert!(
        without.contains("session-demo listening on https://127.0.0.1:"),
        "{without}"
    );
    assert!(
        without.contains("warning: SESSION_DEMO_STORAGE_KEY_SECRET is not set"),
        "{without}"
    );
    assert!(
        !without.contains("0123456789abcdef"),
        "the secret is never printed"
    );
}
