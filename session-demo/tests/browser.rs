//! End to end with a real browser: headless Chromium, driven through
//! chromedriver (WebDriver), logs in, sees the profile and logs out, which
//! proves a browser accepts the `__Host-` cookie over TLS and sends it back.
//!
//! Needs `chromium` and `chromedriver` (`CHROMIUM` / `CHROMEDRIVER`, default
//! `/usr/bin/chromium` and `/usr/bin/chromedriver`); `scripts/services.sh`
//! installs them.

mod common;

use common::chrome::{self, text_of};
use fantoccini::{Client, Locator};
use serde_json::json;

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
    let driver = chrome::Driver::start().await;
    let server = common::start(&[]).await;
    let (browser, profile) = driver.browser("main", None, (1000, 900)).await;

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
