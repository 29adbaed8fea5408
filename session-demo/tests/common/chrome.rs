//! Headless Chromium driven through chromedriver (WebDriver): one driver
//! process, as many browsers as a test needs, each with its own profile
//! directory (its own cookies: a separate device as far as the demo can
//! tell).
//!
//! Needs `chromium` and `chromedriver` (`CHROMIUM` / `CHROMEDRIVER`, default
//! `/usr/bin/chromium` and `/usr/bin/chromedriver`); `scripts/services.sh`
//! installs them.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

pub fn tool(var: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_owned()));
    assert!(
        path.exists(),
        "{} not found (set {var} or run scripts/services.sh, which installs chromium and chromium-driver)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn wait_for_port(port: u16, within: Duration) {
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

pub async fn text_of(browser: &Client, css: &str) -> String {
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

/// A running chromedriver; it stops when dropped.
pub struct Driver {
    port: u16,
    chromium: PathBuf,
    _process: tokio::process::Child,
}

impl Driver {
    /// Starts chromedriver on a free port.
    pub async fn start() -> Self {
        let chromium = tool("CHROMIUM", "/usr/bin/chromium");
        let chromedriver = tool("CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = free_port();
        let process = tokio::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        wait_for_port(port, Duration::from_secs(20)).await;
        Self {
            port,
            chromium,
            _process: process,
        }
    }

    /// A new headless browser with its own, fresh profile directory
    /// (returned: remove it when done), `user_agent` instead of Chromium's
    /// own when given, and a window of `size` (width, height) pixels.
    pub async fn browser(
        &self,
        name: &str,
        user_agent: Option<&str>,
        size: (u32, u32),
    ) -> (Client, PathBuf) {
        let profile = std::env::temp_dir().join(format!(
            "session-demo-chromium-{}-{}-{name}",
            std::process::id(),
            self.port
        ));
        let _ = std::fs::remove_dir_all(&profile);
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--ignore-certificate-errors".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--window-size={},{}", size.0, size.1),
            format!("--user-data-dir={}", profile.display()),
        ];
        if let Some(ua) = user_agent {
            args.push(format!("--user-agent={ua}"));
        }
        let caps = json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": { "binary": self.chromium, "args": args },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("chromedriver starts a Chromium session");
        (client, profile)
    }
}

/// Types `value` into the element `css`, waiting for it.
pub async fn fill(browser: &Client, css: &str, value: &str) {
    browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .send_keys(value)
        .await
        .unwrap();
}

/// Clicks the element `css`.
pub async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}
