//! Timeouts and the per-user session limit, each on a demo started with
//! the matching flags. The timeouts are short real ones (1-3 s).

mod common;

use std::time::Duration;

use common::start;
use tokio::time::sleep;

#[tokio::test]
async fn an_idle_session_ends_and_activity_keeps_it_alive() {
    // Idle 2 s; the touch interval is then 1 s.
    let s = start(&["--idle-timeout-secs", "2", "--absolute-timeout-secs", "60"]).await;
    let cookie = s.login("alice").await;
    sleep(Duration::from_millis(1200)).await;
    assert_eq!(s.whoami(&cookie).await.as_deref(), Some("alice"));
    sleep(Duration::from_millis(1200)).await;
    // 2.4 s after login: alive only because the previous request moved the deadline.
    assert_eq!(s.whoami(&cookie).await.as_deref(), Some("alice"));
    sleep(Duration::from_millis(2500)).await;
    let r = s.get("/profile", Some(&cookie)).await;
    assert_eq!(r.status, 401, "idle for 2.5 s");
    // The dead cookie is left alone: a racing request may already have given
    // the browser a newer one, which a removal would delete.
    assert!(r.set_cookie.is_empty(), "{:?}", r.set_cookie);
}

#[tokio::test]
async fn the_absolute_timeout_ends_even_an_active_session() {
    let s = start(&["--idle-timeout-secs", "2", "--absolute-timeout-secs", "3"]).await;
    let r = s.login_with(None, "alice", "pw-alice").await;
    assert!(
        r.set_cookie[0].contains("Max-Age=3") || r.set_cookie[0].contains("Max-Age=2"),
        "{:?}",
        r.set_cookie
    );
    let cookie = r.cookie();
    for _ in 0..2 {
        sleep(Duration::from_millis(1000)).await;
        assert_eq!(s.whoami(&cookie).await.as_deref(), Some("alice"));
    }
    // Last request about 1.3 s ago: well within the idle timeout.
    sleep(Duration::from_millis(1300)).await;
    assert_eq!(s.whoami(&cookie).await, None, "3.3 s after login");
    // A new login starts a new lifetime.
    let fresh = s.login("alice").await;
    assert_eq!(s.whoami(&fresh).await.as_deref(), Some("alice"));
}

#[tokio::test]
async fn the_limit_rejects_new_logins() {
    let s = start(&["--max-sessions-per-user", "2", "--on-limit", "reject"]).await;
    let a1 = s.login("alice").await;
    let a2 = s.login("alice").await;
    let r = s.login_with(None, "alice", "pw-alice").await;
    assert_eq!(r.status, 403);
    assert!(r.set_cookie.is_empty(), "{:?}", r.set_cookie);
    assert!(r.body.contains("Too many active sessions"));
    assert_eq!(s.whoami(&a1).await.as_deref(), Some("alice"));
    assert_eq!(s.whoami(&a2).await.as_deref(), Some("alice"));
    // Other users are not affected; logging out frees a slot.
    s.login("bob").await;
    s.post("/logout", Some(&a1), &[]).await;
    let a3 = s.login("alice").await;
    assert_eq!(s.whoami(&a3).await.as_deref(), Some("alice"));
}

#[tokio::test]
async fn the_limit_evicts_the_oldest_session() {
    let s = start(&["--max-sessions-per-user", "2", "--on-limit", "evict"]).await;
    let a1 = s.login("alice").await;
    let a2 = s.login("alice").await;
    let a3 = s.login("alice").await;
    assert_eq!(s.whoami(&a1).await, None, "the oldest was evicted");
    assert_eq!(s.whoami(&a2).await.as_deref(), Some("alice"));
    assert_eq!(s.whoami(&a3).await.as_deref(), Some("alice"));
    let list: serde_json::Value =
        serde_json::from_str(&s.get("/sessions", Some(&a3)).await.body).unwrap();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
}
