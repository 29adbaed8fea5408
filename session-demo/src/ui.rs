//! The demo's look: one inline stylesheet, the page layout, the countdown
//! script, times as text, and error pages that say what happened.
//!
//! Everything is served by the demo itself (no external assets), so it
//! works offline. The stylesheet is inline (`style-src 'unsafe-inline'`);
//! the only script is [`COUNTDOWN_JS`], served from `/countdown.js`
//! (`script-src 'self'`): the Content-Security-Policy allows no inline
//! script.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use html_escape::encode_text as text;
use session_core::Timestamp;

/// The stylesheet of every page: readable on a phone (fluid width, large
/// touch targets), light and dark.
pub const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1d2330;--muted:#5b6472;--bg:#f6f7f9;--card:#fff;--line:#d9dde3;--accent:#2456c9;--bad:#b3261e;--ok:#1e7b34}\
@media (prefers-color-scheme:dark){:root{--fg:#e7e9ee;--muted:#a2a9b6;--bg:#15181d;--card:#1f232a;--line:#343a44;--accent:#8fb0ff;--bad:#ff8a80;--ok:#7fd48f}}\
*{box-sizing:border-box}\
body{margin:0;font:16px/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif;color:var(--fg);background:var(--bg)}\
header{background:var(--card);border-bottom:1px solid var(--line)}\
header nav{max-width:44rem;margin:0 auto;padding:.6rem 1rem;display:flex;flex-wrap:wrap;gap:.4rem 1rem;align-items:center}\
header .brand{font-weight:700;margin-right:auto;color:var(--fg);text-decoration:none}\
main{max-width:44rem;margin:0 auto;padding:1rem}\
h1{font-size:1.5rem;margin:.5rem 0 1rem}h2{font-size:1.1rem;margin:0 0 .5rem}\
a{color:var(--accent)}\
.card{background:var(--card);border:1px solid var(--line);border-radius:.6rem;padding:1rem;margin:0 0 1rem}\
.current{border-color:var(--accent);box-shadow:0 0 0 1px var(--accent)}\
.badge{display:inline-block;font-size:.75rem;font-weight:600;padding:.05rem .5rem;border-radius:1rem;background:var(--accent);color:var(--card);vertical-align:middle}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:0 0 .8rem}dt{color:var(--muted)}dd{margin:0}\
label{display:block;margin:.6rem 0 .2rem;font-weight:600}\
input{width:100%;max-width:22rem;font:inherit;padding:.5rem .6rem;border:1px solid var(--line);border-radius:.4rem;background:var(--bg);color:var(--fg)}\
button{font:inherit;font-weight:600;padding:.5rem 1rem;margin:.6rem .4rem 0 0;border:0;border-radius:.4rem;background:var(--accent);color:var(--card);cursor:pointer;min-height:2.6rem}\
button.danger{background:var(--bad)}button.plain{background:transparent;color:var(--accent);border:1px solid var(--line)}\
.message{padding:.6rem .8rem;border-radius:.4rem;border-left:4px solid var(--bad);background:var(--card)}\
.note{color:var(--muted);font-size:.9rem}\
.countdown{font-variant-numeric:tabular-nums;font-weight:600}\
ol.events{margin:0;padding-left:1.2rem}ol.events time{color:var(--muted);font-variant-numeric:tabular-nums;margin-right:.5rem}\
ul.devices{list-style:none;margin:0;padding:0}\
form.inline{display:flex;flex-wrap:wrap;align-items:end;gap:0 .6rem}form.inline label{margin-top:0}\
";

/// The countdown script, served from `/countdown.js`: every element with
/// `data-deadline` (Unix milliseconds) shows the time left until then,
/// once a second; when one that also has `data-reload` passes, the page
/// reloads (and then shows that the session has ended).
pub const COUNTDOWN_JS: &str = r#""use strict";
(function () {
  var els = document.querySelectorAll("[data-deadline]");
  var reloading = false;
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function left(ms) {
    if (ms <= 0) { return "passed"; }
    var s = Math.ceil(ms / 1000), h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
    return (h > 0 ? h + " h " + pad(m) + " min " : m + " min ") + pad(s % 60) + " s left";
  }
  function tick() {
    var now = Date.now();
    for (var i = 0; i < els.length; i++) {
      var ms = Number(els[i].getAttribute("data-deadline")) - now;
      els[i].textContent = left(ms);
      if (ms <= 0 && els[i].hasAttribute("data-reload") && !reloading) {
        reloading = true;
        setTimeout(function () { location.reload(); }, 1500);
      }
    }
  }
  tick();
  setInterval(tick, 1000);
})();
"#;

/// The `Content-Security-Policy` of every response: nothing from other
/// origins, scripts from this origin only (`/countdown.js`), inline styles.
pub const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Whether the navigation shows the logged-in links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// Links for a logged-in user: profile, devices, transfer.
    LoggedIn,
    /// No links but the home page.
    Anonymous,
}

/// A whole HTML page: `title` as the heading, `body` (already HTML) below
/// it, with the countdown script when `script` is true.
pub fn page_with(status: StatusCode, title: &str, nav: Nav, script: bool, body: &str) -> Response {
    let links = match nav {
        Nav::LoggedIn => {
            "<a href=\"/profile\">Profile</a><a href=\"/devices\">Your devices</a><a href=\"/transfer\">Transfer</a>"
        }
        Nav::Anonymous => "",
    };
    let script = if script {
        "<script src=\"/countdown.js\" defer></script>"
    } else {
        ""
    };
    let title = text(title);
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} - session demo</title><style>{STYLE}</style>{script}</head>\
         <body><header><nav aria-label=\"Main\"><a class=\"brand\" href=\"/\">Session demo</a>{links}</nav></header>\
         <main><h1>{title}</h1>{body}</main></body></html>"
    );
    (status, Html(html)).into_response()
}

/// [`page_with`] for a page without links or script.
pub fn page(status: StatusCode, title: &str, body: &str) -> Response {
    page_with(status, title, Nav::Anonymous, false, body)
}

/// `t` as `2025-01-31 14:05:09 UTC`.
pub fn when(t: Timestamp) -> String {
    let t = t.to_offset_date_time();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A `<time>` element for `t`, as text.
pub fn time_tag(t: Timestamp) -> String {
    let shown = when(t);
    format!(
        "<time datetime=\"{}\">{shown}</time>",
        shown.replacen(' ', "T", 1).replace(" UTC", "Z")
    )
}

/// A deadline: its time, then a live countdown (see [`COUNTDOWN_JS`]);
/// with `reload`, the page reloads when it passes.
pub fn deadline(t: Timestamp, reload: bool) -> String {
    format!(
        "{} <span class=\"countdown\" data-deadline=\"{}\"{}></span>",
        time_tag(t),
        t.as_unix_millis(),
        if reload { " data-reload" } else { "" }
    )
}

/// A duration of whole seconds as `30 min`, `12 h`, `1 h 30 min`, `45 s`.
pub fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut parts = Vec::new();
    if h > 0 {
        parts.push(format!("{h} h"));
    }
    if m > 0 {
        parts.push(format!("{m} min"));
    }
    if s > 0 || parts.is_empty() {
        parts.push(format!("{s} s"));
    }
    parts.join(" ")
}

/// What an error status means for the user of the demo, for the pages the
/// session layer answers with a bare status.
fn explain(status: StatusCode) -> Option<(&'static str, &'static str)> {
    Some(match status {
        StatusCode::SERVICE_UNAVAILABLE => (
            "Try again in a moment",
            "The session store is not answering right now, so the demo cannot tell who you are. Nothing was changed; try again in a few seconds.",
        ),
        StatusCode::CONFLICT => (
            "Try again",
            "Your session changed in another tab at the same moment. Nothing was lost; try again.",
        ),
        StatusCode::UNAUTHORIZED => (
            "Not logged in",
            "Your session has ended: you logged out, it was ended from another device, or it timed out.",
        ),
        StatusCode::FORBIDDEN => (
            "Not allowed",
            "This session may not do that: you have too many sessions open, or the request was refused.",
        ),
        StatusCode::NOT_FOUND => (
            "Not found",
            "That is not one of your sessions (it may have ended already).",
        ),
        StatusCode::TOO_MANY_REQUESTS => (
            "Slow down",
            "Too many requests: wait a little and try again.",
        ),
        s if s.is_server_error() => (
            "Something went wrong",
            "Something went wrong on the server; the details are in its log. Try again, or go back to the home page.",
        ),
        _ => return None,
    })
}

/// Gives an error response that is not already a page (the bare status
/// text of a session failure) a page with a human sentence, keeping its
/// status and headers (`Retry-After`, `Cache-Control`).
pub fn humanize(res: Response) -> Response {
    let status = res.status();
    let is_html = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_html {
        return res;
    }
    let Some((title, sentence)) = explain(status) else {
        return res;
    };
    let built = page(
        status,
        title,
        &format!(
            "<p class=\"message\" id=\"message\" role=\"alert\">{}</p><p><a href=\"/\">Home</a></p>",
            text(sentence)
        ),
    );
    let (mut parts, _) = res.into_parts();
    let (built_parts, body) = built.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        built_parts
            .headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("text/html; charset=utf-8")),
    );
    Response::from_parts(parts, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use session_axum::Error;
    use session_core::{SessionError, StoreError};

    async fn body(res: Response) -> String {
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_store_failure_answers_a_page_with_a_sentence_and_keeps_retry_after() {
        let e = Error::from(SessionError::from(StoreError::unavailable(
            "connection refused to secret-host:6379",
        )));
        let res = humanize(e.into_response());
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
        assert!(res.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = body(res).await;
        assert!(
            html.contains("The session store is not answering right now"),
            "{html}"
        );
        assert!(!html.contains("secret-host"), "no details: {html}");
    }

    #[tokio::test]
    async fn pages_and_successes_pass_unchanged() {
        let ok = humanize((StatusCode::OK, "plain").into_response());
        assert_eq!(body(ok).await, "plain");
        let already = humanize(page(StatusCode::FORBIDDEN, "Refused", "<p>own words</p>"));
        assert!(body(already).await.contains("own words"));
    }

    #[test]
    fn times_and_durations_read_well() {
        let t = Timestamp::from_unix_millis(1_700_000_000_123);
        assert_eq!(when(t), "2023-11-14 22:13:20 UTC");
        assert!(time_tag(t).contains("datetime=\"2023-11-14T22:13:20Z\""));
        assert!(deadline(t, true).contains("data-deadline=\"1700000000123\" data-reload"));
        assert_eq!(duration(30 * 60), "30 min");
        assert_eq!(duration(12 * 3600), "12 h");
        assert_eq!(duration(5400), "1 h 30 min");
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(61), "1 min 1 s");
    }
}
