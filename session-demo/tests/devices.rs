//! The devices page, the profile's deadlines and events, and the error
//! pages, over real TLS with a real HTTP client.

mod common;

use common::{shared, start, Reply, Server};

const FIREFOX_LINUX: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const CHROME_ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36";

/// Logs `user` in with `user_agent`; returns the session cookie.
async fn login_as(s: &Server, user: &str, user_agent: &str) -> String {
    let res = s
        .client
        .post(format!("{}/login", s.base))
        .header("user-agent", user_agent)
        .form(&[("username", user), ("password", &format!("pw-{user}"))])
        .send()
        .await
        .unwrap();
    let r = Server::reply(res).await;
    assert_eq!(r.status, 303, "{r:?}");
    r.cookie()
}

/// The `device` tags of the "end this session" forms, in page order, each
/// with whether its row is the current session.
fn rows(page: &str) -> Vec<(String, bool)> {
    page.split("<li class=\"card device")
        .skip(1)
        .map(|row| {
            let current = row.contains("data-current=\"true\"");
            let at = row.find("name=\"device\" value=\"").unwrap() + 21;
            let end = row[at..].find('"').unwrap() + at;
            (row[at..end].to_owned(), current)
        })
        .collect()
}

/// The storage keys `/sessions` lists for `cookie`.
async fn storage_keys(s: &Server, cookie: &str) -> Vec<String> {
    let r = s.get("/sessions", Some(cookie)).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect()
}

async fn end(s: &Server, cookie: &str, device: &str, password: &str) -> Reply {
    s.post(
        "/devices/end",
        Some(cookie),
        &[("device", device), ("password", password)],
    )
    .await
}

#[tokio::test]
async fn the_devices_page_lists_labels_marks_this_one_and_hides_keys_and_ids() {
    let s = start(&[]).await;
    let laptop = login_as(&s, "alice", FIREFOX_LINUX).await;
    let phone = login_as(&s, "alice", CHROME_ANDROID).await;
    let r = s.get("/devices", Some(&phone)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.cache_control.as_deref(), Some("no-store"));
    let laptop_at = r.body.find("Firefox on Linux").expect("laptop listed");
    let phone_at = r.body.find("Chrome on Android").expect("phone listed");
    assert!(laptop_at < phone_at, "oldest first");
    let listed = rows(&r.body);
    assert_eq!(listed.len(), 2, "{}", r.body);
    assert_eq!(
        listed.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
        [false, true],
        "the phone asked: its row is the current one"
    );
    assert!(r.body.contains("this device"));
    for tag in listed.iter().map(|(t, _)| t) {
        assert_eq!(tag.len(), 16, "{tag}");
    }
    for secret in [&laptop, &phone] {
        let value = secret.split_once('=').unwrap().1;
        assert!(!r.body.contains(value), "a session ID leaked");
    }
    let keys = storage_keys(&s, &phone).await;
    assert_eq!(keys.len(), 2);
    for key in &keys {
        assert!(!r.body.contains(key.as_str()), "a storage key leaked");
    }
    // Idle and absolute deadlines, each with a countdown, per row.
    assert_eq!(r.body.matches("data-deadline=").count(), 4);
    assert!(r.body.contains("<script src=\"/countdown.js\""));
    let js = s.get("/countdown.js", None).await;
    assert_eq!(js.status, 200);
    assert!(js.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.body.contains("data-deadline"));
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline'; script") && !csp.contains("script-src 'unsafe"));

    let anonymous = s.get("/devices", None).await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.body.contains("id=\"username\""), "the login form");
}

#[tokio::test]
async fn ending_a_device_needs_the_password_and_only_reaches_the_users_own_sessions() {
    let s = start(&[]).await;
    let laptop = login_as(&s, "alice", FIREFOX_LINUX).await;
    let phone = login_as(&s, "alice", CHROME_ANDROID).await;
    let bob = login_as(&s, "bob", FIREFOX_LINUX).await;
    let listed = rows(&s.get("/devices", Some(&phone)).await.body);
    let laptop_tag = &listed.iter().find(|(_, c)| !c).unwrap().0;
    let bob_tag = &rows(&s.get("/devices", Some(&bob)).await.body)[0].0;

    for (password, status) in [("", 403), ("pw-bob", 403)] {
        let r = end(&s, &phone, laptop_tag, password).await;
        assert_eq!(r.status, status, "password {password:?}");
        assert!(r.body.contains("Enter your password again"));
    }
    for junk in [
        bob_tag.as_str(),
        "",
        "0123456789abcdef",
        "<script>",
        "f".repeat(5000).as_str(),
    ] {
        let r = end(&s, &phone, junk, "pw-alice").await;
        assert_eq!(r.status, 404, "{junk:.20}");
        assert!(r.body.contains("not one of your sessions"));
    }
    assert_eq!(
        s.whoami(&bob).await.as_deref(),
        Some("bob"),
        "bob untouched"
    );
    assert_eq!(s.whoami(&laptop).await.as_deref(), Some("alice"));

    let r = end(&s, &phone, laptop_tag, "pw-alice").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location.as_deref(), Some("/devices"));
    assert!(!r.removes_cookie(), "the phone stays logged in");
    assert_eq!(s.whoami(&laptop).await, None, "the laptop is logged out");
    let ended = s.get("/profile", Some(&laptop)).await;
    assert!(
        ended.body.contains("Your session has ended") && ended.body.contains("id=\"username\""),
        "{}",
        ended.body
    );
    let left = rows(&s.get("/devices", Some(&phone)).await.body);
    assert_eq!(left.len(), 1);
    assert!(left[0].1);
    let profile = s.get("/profile", Some(&phone)).await.body;
    assert!(profile.contains("Ended the session of another device."));

    // Ending this device's own row logs it out.
    let r = end(&s, &phone, &left[0].0, "pw-alice").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location.as_deref(), Some("/"));
    assert!(r.removes_cookie());
    assert_eq!(s.whoami(&phone).await, None);
}

#[tokio::test]
async fn the_profile_shows_the_deadlines_the_policy_and_the_sessions_events() {
    let s = start(&[
        "--idle-timeout-secs",
        "600",
        "--absolute-timeout-secs",
        "3600",
        "--max-sessions-per-user",
        "3",
        "--on-limit",
        "evict",
    ])
    .await;
    let cookie = login_as(&s, "alice", FIREFOX_LINUX).await;
    let r = s.get("/profile", Some(&cookie)).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("<dd id=\"label\">Firefox on Linux</dd>"));
    let deadline = |id: &str| -> i64 {
        let at = r.body.find(&format!("id=\"{id}\"")).unwrap();
        let at = r.body[at..].find("data-deadline=\"").unwrap() + at + 15;
        let end = r.body[at..].find('"').unwrap() + at;
        r.body[at..end].parse().unwrap()
    };
    let (idle, absolute) = (deadline("idle-deadline"), deadline("absolute-deadline"));
    assert!(
        (absolute - idle - 3000 * 1000).abs() < 5000,
        "idle 10 min, absolute 1 h: {idle} {absolute}"
    );
    assert!(r.body.contains(
        "A session ends after 10 min without a request, 1 h after login at the latest; \
         at most 3 sessions per user (a login beyond that ends the oldest)."
    ));
    assert!(r.body.contains("Logged in on Firefox on Linux."));
    assert!(r.body.contains("Session ID rotated at login"));

    // A token used twice: the second is refused with a sentence, and both
    // show in the session's history.
    let form = s.post("/transfer/new", Some(&cookie), &[]).await.body;
    let at = form.find("name=\"token\" value=\"").unwrap() + 20;
    let token = &form[at..at + form[at..].find('"').unwrap()];
    let fields = [("token", token), ("to", "bob"), ("amount", "1")];
    assert_eq!(
        s.post("/transfer", Some(&cookie), &fields).await.status,
        200
    );
    let again = s.post("/transfer", Some(&cookie), &fields).await;
    assert_eq!(again.status, 403);
    assert!(again.body.contains("already sent once"));
    let r = s.get("/profile", Some(&cookie)).await;
    let history = &r.body[r.body.find("id=\"events\"").unwrap()..];
    let order: Vec<usize> = [
        "Logged in on",
        "rotated at login",
        "token issued",
        "token used",
        "was refused",
    ]
    .iter()
    .map(|e| history.find(e).unwrap_or_else(|| panic!("{e} missing")))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    assert!(!r.body.contains(token), "the token is not shown");
}

#[tokio::test]
async fn the_per_user_limit_ends_the_oldest_and_that_browser_is_told() {
    let s = start(&["--max-sessions-per-user", "1", "--on-limit", "evict"]).await;
    let first = login_as(&s, "alice", FIREFOX_LINUX).await;
    let second = login_as(&s, "alice", CHROME_ANDROID).await;
    let r = s.get("/profile", Some(&first)).await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Your session has ended"));
    let r = s.get("/devices", Some(&second)).await;
    assert_eq!(rows(&r.body).len(), 1);
    assert!(!r.body.contains("Firefox on Linux"));
}

#[tokio::test]
async fn a_logout_everywhere_tells_the_other_browsers() {
    let s = shared();
    let laptop = login_as(&s, "bob", FIREFOX_LINUX).await;
    let phone = login_as(&s, "bob", CHROME_ANDROID).await;
    let r = s
        .post("/logout-all", Some(&phone), &[("password", "pw-bob")])
        .await;
    assert_eq!(r.status, 303);
    for cookie in [&laptop, &phone] {
        let r = s.get("/devices", Some(cookie)).await;
        assert_eq!(r.status, 401);
        assert!(r.body.contains("Your session has ended"));
    }
    // Without a cookie the page only asks to log in.
    let r = s.get("/profile", None).await;
    assert!(r.body.contains("Please log in.") && !r.body.contains("has ended"));
}
