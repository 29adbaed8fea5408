//! The demo's tour in real browsers: two headless Chromiums with separate
//! profiles (a desktop window, and a phone-sized one sending an Android
//! `User-Agent`) log in as the same user; both appear on the devices page
//! with their labels; the desktop ends the phone's session, and the phone
//! is then sent to the login page, told its session ended.
//!
//! Screenshots of the login, profile and devices pages (and the phone's
//! views) are written to `demo-tour/` in the target directory
//! (`target/demo-tour/`, or `$CARGO_TARGET_DIR/demo-tour/`), or to
//! `DEMO_TOUR_DIR` when set; the test prints the folder. Runs on whatever
//! store `SESSION_BACKEND` names.
//!
//! Needs `chromium` and `chromedriver`, as `tests/browser.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::chrome::{self, click, fill, text_of};
use fantoccini::{Client, Locator};

const PHONE_UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36";

/// Where the screenshots go: `DEMO_TOUR_DIR`, else `demo-tour/` next to
/// the `tmp/` folder Cargo gives integration tests in the target directory.
fn output_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DEMO_TOUR_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("demo-tour")
}

async fn screenshot(browser: &Client, dir: &Path, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

async fn log_in(browser: &Client, base: &str) {
    browser.goto(&format!("{base}/")).await.unwrap();
    fill(browser, "#username", "alice").await;
    fill(browser, "#password", "pw-alice").await;
    click(browser, "#login").await;
    assert_eq!(text_of(browser, "#greeting").await, "Hello, alice!");
}

/// The device rows of the devices page: (label, current).
async fn device_rows(browser: &Client) -> Vec<(String, bool)> {
    text_of(browser, "#devices").await;
    let mut rows = Vec::new();
    for row in browser.find_all(Locator::Css("li.device")).await.unwrap() {
        let label = row
            .find(Locator::Css(".label"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let current = row.attr("data-current").await.unwrap().as_deref() == Some("true");
        rows.push((label, current));
    }
    rows
}

/// Waits until the countdowns have been filled in by the page's script.
async fn countdowns_running(browser: &Client) -> String {
    let start = std::time::Instant::now();
    loop {
        let shown = text_of(browser, "#idle-deadline .countdown").await;
        if shown.ends_with("s left") {
            return shown;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the countdown script did not run: {shown:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn tour(desktop: &Client, phone: &Client, base: &str, dir: &Path) {
    // The login page, then the desktop logs in.
    desktop.goto(&format!("{base}/")).await.unwrap();
    text_of(desktop, "#username").await;
    screenshot(desktop, dir, "login").await;
    log_in(desktop, base).await;
    log_in(phone, base).await;

    // The profile: this session's device, deadlines counting down, events.
    desktop.goto(&format!("{base}/profile")).await.unwrap();
    assert_eq!(
        text_of(desktop, "#label").await,
        "Headless Chromium on Linux"
    );
    let left = countdowns_running(desktop).await;
    assert!(
        left.starts_with("29 min") || left.starts_with("30 min"),
        "{left}"
    );
    let events = text_of(desktop, "#events").await;
    assert!(
        events.contains("Logged in on Headless Chromium on Linux.")
            && events.contains("Session ID rotated at login"),
        "{events}"
    );
    screenshot(desktop, dir, "profile").await;

    // Both browsers are on the devices page, each marked as itself.
    desktop.goto(&format!("{base}/devices")).await.unwrap();
    let rows = device_rows(desktop).await;
    assert_eq!(
        rows,
        [
            ("Headless Chromium on Linux".to_owned(), true),
            ("Chrome on Android".to_owned(), false)
        ]
    );
    screenshot(desktop, dir, "devices").await;
    phone.goto(&format!("{base}/devices")).await.unwrap();
    let rows = device_rows(phone).await;
    assert_eq!(
        rows,
        [
            ("Headless Chromium on Linux".to_owned(), false),
            ("Chrome on Android".to_owned(), true)
        ]
    );
    screenshot(phone, dir, "devices-phone").await;

    // The desktop ends the phone's session, with the password.
    let phone_row = desktop
        .find(Locator::Css("li.device[data-current=\"false\"]"))
        .await
        .unwrap();
    phone_row
        .find(Locator::Css("input[type=password]"))
        .await
        .unwrap()
        .send_keys("pw-alice")
        .await
        .unwrap();
    phone_row
        .find(Locator::Css("button.end"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The answer redirects back to the devices page, now with one row.
    let start = std::time::Instant::now();
    while desktop
        .find_all(Locator::Css("li.device"))
        .await
        .map_or(true, |rows| rows.len() != 1)
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the phone's row did not go away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        device_rows(desktop).await,
        [("Headless Chromium on Linux".to_owned(), true)]
    );

    // The phone's next request finds its session ended: the login page,
    // saying so.
    phone.refresh().await.unwrap();
    assert_eq!(text_of(phone, "h1").await, "Not logged in");
    let message = text_of(phone, "#message").await;
    assert!(message.starts_with("Your session has ended"), "{message}");
    text_of(phone, "#username").await;
    screenshot(phone, dir, "ended-phone").await;

    // The desktop is still logged in.
    desktop.goto(&format!("{base}/profile")).await.unwrap();
    assert_eq!(text_of(desktop, "#greeting").await, "Hello, alice!");
    let events = text_of(desktop, "#events").await;
    assert!(
        events.contains("Ended the session of another device."),
        "{events}"
    );
}

#[tokio::test]
async fn two_browsers_see_each_other_and_one_ends_the_other() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = output_dir();
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!("tour screenshots go to {}", dir.display());
    let driver = chrome::Driver::start().await;
    let server = common::start(&[]).await;
    let (desktop, desktop_profile) = driver.browser("desktop", None, (1000, 980)).await;
    let (phone, phone_profile) = driver.browser("phone", Some(PHONE_UA), (412, 1100)).await;

    // Close the browsers whatever happens, then report.
    let outcome = tokio::spawn({
        let (desktop, phone) = (desktop.clone(), phone.clone());
        let base = server.base.clone();
        let dir = dir.clone();
        async move { tour(&desktop, &phone, &base, &dir).await }
    })
    .await;
    desktop.close().await.ok();
    phone.close().await.ok();
    let _ = std::fs::remove_dir_all(&desktop_profile);
    let _ = std::fs::remove_dir_all(&phone_profile);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
