//! End to end with a real browser: headless Chromium, driven through
//! chromedriver (WebDriver), logs in, sees the profile and logs out, which
//! proves a browser accepts the `__Host-` cookie over TLS and sends it back.
//!
//! Needs `chromium` and `chromedriver` (`CHROMIUM` / `CHROMEDRIVER`, default
//! `/usr/bin/chromium` and `/usr/bin/chromedriver`); `scripts/services.sh`
//! installs them.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

fn tool(var: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_owned()));
    assert!(
        path.exists(),
        "{} not found (set {var} or run scripts/services.sh, which installs chromium and chromium-driver)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for_port(port: u16, within: Duration) {
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < within,
            "chromedriver did not start listening on {port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(browser: &Client, css: &str) -> String {
    let found = browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await;
    match found {
        Ok(element) => element.text().await.unwrap(),
        Err(e) => {
            let url = browser.current_url().await.map(|u| u.to_string());
            let page = browser.source().await.unwrap_or_default();
            panic!("{css} not found ({e}) at {url:?}; page: {page}")
        }
    }
}

async fn session_cookie(browser: &Client) -> Option<(bool, bool, String)> {
    browser
        .get_all_cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.name() == "__Host-session")
        .map(|c| {
            (
                c.secure().unwrap_or(false),
                c.http_only().unwrap_or(false),
                format!("{:?}", c.same_site()),
            )
        })
}

/// Runs in the profile page: logs in again while firing waves of 10
/// parallel `GET /profile` every 15 ms until the login has answered and two
/// more waves after. Resolves to every response status (the login's
/// redirect, not followed, reads as 0).
const RELOGIN_DURING_POLLS: &str = r#"
const done = arguments[arguments.length - 1];
const polls = [];
let loginDone = false;
const login = fetch('/login', {
  method: 'POST',
  headers: {'Content-Type': 'application/x-www-form-urlencoded'},
  body: 'username=alice&password=pw-alice',
  redirect: 'manual',
}).then(r => { loginDone = true; return r.status; }, e => { loginDone = true; return 'login: ' + e; });
const wave = () => {
  for (let i = 0; i < 10; i++) polls.push(fetch('/profile').then(r => r.status, e => 'poll: ' + e));
};
let after = 0;
const tick = () => {
  wave();
  if (loginDone) after++;
  if (after >= 2 || polls.length > 2000) {
    Promise.all([login, ...polls]).then(done, e => done(String(e)));
  } else {
    setTimeout(tick, 15);
  }
};
tick();
"#;

async fn flow(browser: &Client, base: &str) {
    browser.goto(&format!("{base}/")).await.unwrap();
    browser
        .wait()
        .for_element(Locator::Css("#username"))
        .await
        .unwrap()
        .send_keys("alice")
        .await
        .unwrap();
    browser
        .find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys("pw-alice")
        .await
        .unwrap();
    browser
        .find(Locator::Css("#login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The login answered 303 to /profile with the Set-Cookie; the browser
    // followed it and sent the cookie back.
    assert_eq!(text_of(browser, "#greeting").await, "Hello, alice!");
    let (secure, http_only, same_site) = session_cookie(browser).await.expect("cookie stored");
    assert!(secure && http_only, "Secure and HttpOnly");
    assert!(same_site.contains("Lax"), "{same_site}");
    let script_sees = browser
        .execute("return document.cookie", vec![])
        .await
        .unwrap();
    assert_eq!(script_sees, json!(""), "HttpOnly: invisible to scripts");

    // A fresh navigation is still logged in.
    browser.goto(&format!("{base}/profile")).await.unwrap();
    assert_eq!(text_of(browser, "#greeting").await, "Hello, alice!");

    // A re-login while the page keeps polling: waves of parallel requests
    // carrying the old cookie are answered after the login rotated it. None
    // of their answers may delete the new cookie the login set.
    let statuses = browser
        .execute_async(RELOGIN_DURING_POLLS, vec![])
        .await
        .unwrap();
    let statuses: Vec<u64> = serde_json::from_value(statuses.clone())
        .unwrap_or_else(|_| panic!("the page script failed: {statuses}"));
    assert!(statuses.len() > 40, "{statuses:?}");
    let late = statuses.iter().filter(|s| **s == 401).count();
    eprintln!(
        "{} requests during the re-login, {late} of them answered after the rotation",
        statuses.len()
    );
    // A poll that carried the old cookie and arrived after the rotation
    // reads as "not logged in" (401); nothing may fail otherwise.
    assert!(
        statuses.iter().all(|s| matches!(s, 0 | 200 | 401)),
        "a poll or the login failed: {statuses:?}"
    );
    browser.goto(&format!("{base}/profile")).await.unwrap();
    assert_eq!(
        text_of(browser, "#greeting").await,
        "Hello, alice!",
        "the parallel requests logged the browser out"
    );

    // Logout: the browser drops the cookie and the profile is closed.
    browser
        .find(Locator::Css("#logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_of(browser, "#username").await;
    assert_eq!(
        session_cookie(browser).await,
        None,
        "removal cookie applied"
    );
    browser.goto(&format!("{base}/profile")).await.unwrap();
    assert_eq!(text_of(browser, "h1").await, "Not logged in");
}

#[tokio::test]
async fn chromium_logs_in_sees_the_profile_and_logs_out() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let chromium = tool("CHROMIUM", "/usr/bin/chromium");
    let chromedriver = tool("CHROMEDRIVER", "/usr/bin/chromedriver");
    let server = common::start(&[]).await;

    let port = free_port();
    let _driver = tokio::process::Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    wait_for_port(port, Duration::from_secs(20)).await;

    let profile = std::env::temp_dir().join(format!(
        "session-demo-chromium-{}-{port}",
        std::process::id()
    ));
    let caps = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--ignore-certificate-errors",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    let browser = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("chromedriver starts a Chromium session");

    // Close the browser whatever happens, then report.
    let outcome = tokio::spawn({
        let browser = browser.clone();
        let base = server.base.clone();
        async move { flow(&browser, &base).await }
    })
    .await;
    browser.close().await.ok();
    let _ = std::fs::remove_dir_all(&profile);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
