//! SessionManager behaviour, with a manual clock so timeouts are exact.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use session_core::{
    Clock, CommitOutcome, ConflictPolicy, LimitStrategy, ManualClock, MemoryStore, SessionConfig,
    SessionError, SessionManager, SessionStore, Timestamp,
};

const MIN: Duration = Duration::from_secs(60);

struct Env {
    clock: Arc<ManualClock>,
    store: MemoryStore,
    manager: SessionManager,
}

fn env_with(config: SessionConfig) -> Env {
    let clock = Arc::new(ManualClock::new(Timestamp::from_unix_millis(
        1_800_000_000_000,
    )));
    let store = MemoryStore::with_clock(clock.clone());
    let manager = SessionManager::builder(store.clone())
        .config(config)
        .clock(clock.clone())
        .build();
    Env {
        clock,
        store,
        manager,
    }
}

fn env() -> Env {
    env_with(SessionConfig::default())
}

#[tokio::test]
async fn an_untouched_new_session_is_never_stored() {
    let e = env();
    let mut s = e.manager.start();
    assert_eq!(
        e.manager.commit(&mut s).await.unwrap(),
        CommitOutcome::Unchanged
    );
    assert!(e.manager.response_cookie(&s).is_none());
    assert!(e.store.is_empty());
}

#[tokio::test]
async fn first_write_creates_and_sets_a_secure_cookie() {
    let e = env();
    let mut s = e.manager.start();
    s.insert("cart", &[1, 2]).unwrap();
    assert_eq!(
        e.manager.commit(&mut s).await.unwrap(),
        CommitOutcome::Created
    );
    let c = e.manager.response_cookie(&s).unwrap().to_string();
    assert!(c.starts_with("__Host-session="));
    assert!(c.contains("Max-Age=43200"), "{c}");
    let header = format!("other=1; __Host-session={}", s.id().expose());
    let back = e
        .manager
        .load_from_cookie_headers([header.as_str()])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.get::<Vec<i32>>("cart").unwrap(), Some(vec![1, 2]));
    assert!(
        e.manager.response_cookie(&back).is_none(),
        "unchanged id is not re-sent"
    );
}

#[tokio::test]
async fn read_only_requests_write_nothing_until_the_touch_interval() {
    let e = env();
    let mut s = e.manager.start();
    s.insert("a", &1).unwrap();
    e.manager.commit(&mut s).await.unwrap();
    e.clock.advance(Duration::from_secs(30));
    let mut r = e.manager.load(s.id()).await.unwrap().unwrap();
    let _ = r.get::<i32>("a").unwrap();
    assert_eq!(
        e.manager.commit(&mut r).await.unwrap(),
        CommitOutcome::Unchanged
    );
    e.clock.advance(Duration::from_secs(31));
    let mut r = e.manager.load(s.id()).await.unwrap().unwrap();
    assert_eq!(
        e.manager.commit(&mut r).await.unwrap(),
        CommitOutcome::Touched
    );
    let stored = e.store.load(s.storage_key()).await.unwrap().unwrap();
    assert_eq!(stored.last_access, e.clock.now());
    assert_eq!(stored.idle_deadline, e.clock.now().saturating_add(30 * MIN));
    assert_eq!(stored.version, 1, "touch does not bump the version");
    // Inserting an identical value is not a change.
    r.insert("a", &1).unwrap();
    assert!(!r.is_modified());
}

#[tokio::test]
async fn idle_timeout_ends_the_session() {
    let e = env();
    let mut s = e.manager.start();
    s.insert("a", &1).unwrap();
    e.manager.commit(&mut s).await.unwrap();
    e.clock.advance(30 * MIN - Duration::from_millis(1));
    assert!(e.manager.load(s.id()).await.unwrap().is_some());
    e.clock.advance(Duration::from_millis(1));
    assert!(e.manager.load(s.id()).await.unwrap().is_none());
}

#[tokio::test]
async fn the_manager_enforces_deadlines_even_if_the_store_does_not() {
    // The store runs on the system clock; only the manager's clock moves.
    let clock = Arc::new(ManualClock::new(Timestamp::now()));
    let manager = SessionManager::builder(MemoryStore::new())
        .clock(clock.clone())
        .build();
    let mut s = manager.start();
    s.insert("a", &1).unwrap();
    manager.commit(&mut s).await.unwrap();
    clock.advance(31 * MIN);
    assert!(manager.load(s.id()).await.unwrap().is_none());
}

#[tokio::test]
async fn absolute_timeout_ends_even_an_active_session() {
    let e = env();
    let mut s = e.manager.start();
    e.manager.login(&mut s, "alice").await.unwrap();
    for _ in 0..(12 * 60 / 20 - 1) {
        e.clock.advance(20 * MIN);
        let mut r = e
            .manager
            .load(s.id())
            .await
            .unwrap()
            .expect("active session alive");
        assert_eq!(
            e.manager.commit(&mut r).await.unwrap(),
            CommitOutcome::Touched
        );
        assert!(r.idle_deadline() <= r.absolute_deadline());
    }
    e.clock.advance(20 * MIN);
    assert!(
        e.manager.load(s.id()).await.unwrap().is_none(),
        "outlived absolute lifetime"
    );
}

#[tokio::test]
async fn rotation_invalidates_the_old_id_at_once() {
    let e = env();
    let mut s = e.manager.start();
    s.insert("k", "v").unwrap();
    e.manager.commit(&mut s).await.unwrap();
    let old = s.id().clone();
    e.manager.rotate(&mut s).await.unwrap();
    assert_ne!(&old, s.id());
    assert!(e.manager.load(&old).await.unwrap().is_none());
    let now = e.manager.load(s.id()).await.unwrap().unwrap();
    assert_eq!(now.get::<String>("k").unwrap().as_deref(), Some("v"));
    assert!(
        e.manager.response_cookie(&s).is_some(),
        "rotated id must be sent"
    );
}

#[tokio::test]
async fn login_always_issues_a_fresh_id() {
    let e = env();
    // An attacker plants a session and hands its cookie to the victim.
    let mut planted = e.manager.start();
    planted.insert("x", &1).unwrap();
    e.manager.commit(&mut planted).await.unwrap();
    let planted_id = planted.id().clone();
    let mut victim = e.manager.load(&planted_id).await.unwrap().unwrap();
    e.manager.login(&mut victim, "alice").await.unwrap();
    assert_ne!(victim.id(), &planted_id);
    assert!(
        e.manager.load(&planted_id).await.unwrap().is_none(),
        "fixated id survived login"
    );
    let logged = e.manager.load(victim.id()).await.unwrap().unwrap();
    assert_eq!(logged.user_id(), Some("alice"));
    assert_eq!(
        logged.get::<i32>("x").unwrap(),
        Some(1),
        "pre-login data carries over"
    );
}

#[tokio::test]
async fn another_users_login_does_not_inherit_the_session_data() {
    let e = env();
    let mut s = e.manager.start();
    s.insert("cart", "anonymous").unwrap();
    e.manager.login(&mut s, "alice").await.unwrap();
    s.insert("alice-secret", "s3cr3t").unwrap();
    e.manager.commit(&mut s).await.unwrap();
    let alices = s.id().clone();
    // Bob logs in on the same browser without logging Alice out.
    e.manager.login(&mut s, "bob").await.unwrap();
    let bob = e.manager.load(s.id()).await.unwrap().unwrap();
    assert_eq!(bob.user_id(), Some("bob"));
    assert!(
        !bob.contains("alice-secret"),
        "alice's data followed bob's login"
    );
    assert!(!bob.contains("cart"));
    assert!(e.manager.load(&alices).await.unwrap().is_none());
    // Re-login as the same user keeps the data.
    let mut again = e.manager.load(s.id()).await.unwrap().unwrap();
    again.insert("theme", "dark").unwrap();
    e.manager.login(&mut again, "bob").await.unwrap();
    let after = e.manager.load(again.id()).await.unwrap().unwrap();
    assert_eq!(
        after.get::<String>("theme").unwrap().as_deref(),
        Some("dark")
    );
}

#[tokio::test]
async fn a_client_chosen_id_is_never_adopted() {
    let e = env();
    let chosen = session_core::SessionId::generate();
    assert!(e.manager.load(&chosen).await.unwrap().is_none());
    let mut s = e.manager.start();
    s.insert("a", &1).unwrap();
    e.manager.commit(&mut s).await.unwrap();
    assert_ne!(s.id(), &chosen);
}

#[tokio::test]
async fn malformed_cookies_are_no_session() {
    let e = env();
    for v in ["", "x", "=====", "%41%41", &"A".repeat(44), "é"] {
        assert!(
            e.manager.load_cookie_value(v).await.unwrap().is_none(),
            "{v:?}"
        );
    }
}

#[tokio::test]
async fn unreadable_data_is_no_session() {
    let e = env();
    let mut s = e.manager.start();
    s.insert("a", &1).unwrap();
    e.manager.commit(&mut s).await.unwrap();
    let rec = e.store.load(s.storage_key()).await.unwrap().unwrap();
    let garbage = rec
        .with_data(Bytes::from_static(b"\xff\x00not json"))
        .with_version(2);
    e.store.update(s.storage_key(), 1, &garbage).await.unwrap();
    assert!(e.manager.load(s.id()).await.unwrap().is_none());
}

#[tokio::test]
async fn reject_new_refuses_logins_beyond_the_limit() {
    let e = env_with(
        SessionConfig::builder()
            .max_sessions_per_user(NonZeroUsize::new(2).unwrap(), LimitStrategy::RejectNew)
            .build()
            .unwrap(),
    );
    let mut a = e.manager.start();
    e.manager.login(&mut a, "bob").await.unwrap();
    let mut b = e.manager.start();
    e.manager.login(&mut b, "bob").await.unwrap();
    let mut c = e.manager.start();
    let err = e.manager.login(&mut c, "bob").await.unwrap_err();
    assert!(matches!(err, SessionError::TooManySessions { max: 2 }));
    assert!(c.user_id().is_none());
    // Re-login from an existing session of bob does not count itself.
    e.manager.login(&mut a, "bob").await.unwrap();
    e.manager.logout(&mut b).await.unwrap();
    e.manager.login(&mut c, "bob").await.unwrap();
    assert_eq!(e.manager.list_user_sessions("bob").await.unwrap().len(), 2);
}

#[tokio::test]
async fn evict_oldest_ends_the_oldest_sessions() {
    let e = env_with(
        SessionConfig::builder()
            .max_sessions_per_user(NonZeroUsize::new(2).unwrap(), LimitStrategy::EvictOldest)
            .build()
            .unwrap(),
    );
    let mut ids = Vec::new();
    for _ in 0..4 {
        e.clock.advance(Duration::from_secs(1));
        let mut s = e.manager.start();
        e.manager.login(&mut s, "carol").await.unwrap();
        ids.push(s.id().clone());
    }
    assert!(e.manager.load(&ids[0]).await.unwrap().is_none());
    assert!(e.manager.load(&ids[1]).await.unwrap().is_none());
    assert!(e.manager.load(&ids[2]).await.unwrap().is_some());
    assert!(e.manager.load(&ids[3]).await.unwrap().is_some());
}

#[tokio::test]
async fn logout_and_logout_everywhere() {
    let e = env();
    let mut a = e.manager.start();
    e.manager.login(&mut a, "dave").await.unwrap();
    let mut b = e.manager.start();
    e.manager.login(&mut b, "dave").await.unwrap();
    let mut other = e.manager.start();
    e.manager.login(&mut other, "erin").await.unwrap();

    e.manager.logout(&mut a).await.unwrap();
    assert!(e.manager.load(a.id()).await.unwrap().is_none());
    let removal = e.manager.response_cookie(&a).unwrap().to_string();
    assert!(removal.contains("Max-Age=0"), "{removal}");

    let mut c = e.manager.start();
    e.manager.login(&mut c, "dave").await.unwrap();
    assert_eq!(e.manager.logout_everywhere(&mut c).await.unwrap(), 2);
    assert!(e.manager.load(b.id()).await.unwrap().is_none());
    assert!(e.manager.load(c.id()).await.unwrap().is_none());
    assert!(e.manager.load(other.id()).await.unwrap().is_some());
    let mut anon = e.manager.start();
    assert!(matches!(
        e.manager.logout_everywhere(&mut anon).await,
        Err(SessionError::NotLoggedIn)
    ));
}

#[tokio::test]
async fn list_user_sessions_is_oldest_first_and_id_free() {
    let e = env();
    for _ in 0..3 {
        e.clock.advance(Duration::from_secs(5));
        let mut s = e.manager.start();
        e.manager.login(&mut s, "fay").await.unwrap();
    }
    let list = e.manager.list_user_sessions("fay").await.unwrap();
    assert_eq!(list.len(), 3);
    assert!(list.windows(2).all(|w| w[0].created_at <= w[1].created_at));
}

#[tokio::test]
async fn concurrent_commits_merge_changed_keys() {
    let e = env();
    let mut s = e.manager.start();
    s.insert("base", &0).unwrap();
    e.manager.commit(&mut s).await.unwrap();
    let mut a = e.manager.load(s.id()).await.unwrap().unwrap();
    let mut b = e.manager.load(s.id()).await.unwrap().unwrap();
    a.insert("a", &1).unwrap();
    b.insert("b", &2).unwrap();
    b.remove("base");
    assert_eq!(
        e.manager.commit(&mut a).await.unwrap(),
        CommitOutcome::Updated
    );
    assert_eq!(
        e.manager.commit(&mut b).await.unwrap(),
        CommitOutcome::Updated
    );
    let end = e.manager.load(s.id()).await.unwrap().unwrap();
    assert_eq!(end.get::<i32>("a").unwrap(), Some(1));
    assert_eq!(end.get::<i32>("b").unwrap(), Some(2));
    assert!(!end.contains("base"));
}

#[tokio::test]
async fn fail_policy_reports_the_conflict() {
    let e = env_with(
        SessionConfig::builder()
            .conflict_policy(ConflictPolicy::Fail)
            .build()
            .unwrap(),
    );
    let mut s = e.manager.start();
    s.insert("n", &0).unwrap();
    e.manager.commit(&mut s).await.unwrap();
    let mut a = e.manager.load(s.id()).await.unwrap().unwrap();
    let mut b = e.manager.load(s.id()).await.unwrap().unwrap();
    a.insert("n", &1).unwrap();
    b.insert("n", &2).unwrap();
    e.manager.commit(&mut a).await.unwrap();
    assert!(matches!(
        e.manager.commit(&mut b).await,
        Err(SessionError::Conflict)
    ));
    let end = e.manager.load(s.id()).await.unwrap().unwrap();
    assert_eq!(end.get::<i32>("n").unwrap(), Some(1));
}

#[tokio::test]
async fn committing_a_session_ended_elsewhere_is_gone_not_resurrected() {
    let e = env();
    let mut s = e.manager.start();
    e.manager.login(&mut s, "gus").await.unwrap();
    let mut stale = e.manager.load(s.id()).await.unwrap().unwrap();
    e.manager.logout_user("gus").await.unwrap();
    stale.insert("x", &1).unwrap();
    assert_eq!(
        e.manager.commit(&mut stale).await.unwrap(),
        CommitOutcome::Gone
    );
    assert!(e.manager.load(s.id()).await.unwrap().is_none());
    // The client may already hold a newer cookie: nothing is sent.
    assert!(e.manager.response_cookie(&stale).is_none());
}

#[tokio::test]
async fn one_time_tokens_work_exactly_once() {
    let e = env();
    let mut s = e.manager.start();
    e.manager.login(&mut s, "hal").await.unwrap();
    let token = e.manager.issue_token(&mut s, "transfer");
    assert!(!format!("{token:?}").contains(token.expose()));
    e.manager.commit(&mut s).await.unwrap();

    let mut r = e.manager.load(s.id()).await.unwrap().unwrap();
    assert!(!e
        .manager
        .consume_token(&mut r, "transfer", "wrong")
        .await
        .unwrap()
        .is_accepted());
    assert!(!e
        .manager
        .consume_token(&mut r, "other", token.expose())
        .await
        .unwrap()
        .is_accepted());
    assert!(e
        .manager
        .consume_token(&mut r, "transfer", token.expose())
        .await
        .unwrap()
        .is_accepted());
    assert!(!e
        .manager
        .consume_token(&mut r, "transfer", token.expose())
        .await
        .unwrap()
        .is_accepted());
    let mut again = e.manager.load(s.id()).await.unwrap().unwrap();
    assert!(
        !e.manager
            .consume_token(&mut again, "transfer", token.expose())
            .await
            .unwrap()
            .is_accepted(),
        "replay"
    );
}

#[tokio::test]
async fn concurrent_replays_of_a_token_succeed_once() {
    let e = env();
    let mut s = e.manager.start();
    e.manager.login(&mut s, "ida").await.unwrap();
    let token = e.manager.issue_token(&mut s, "pay");
    e.manager.commit(&mut s).await.unwrap();
    let mut copies = Vec::new();
    for _ in 0..8 {
        copies.push(e.manager.load(s.id()).await.unwrap().unwrap());
    }
    let mut wins = 0;
    for c in &mut copies {
        // An unrelated concurrent write must not make the token fail.
        c.insert("seen", &true).unwrap();
        wins += usize::from(
            e.manager
                .consume_token(c, "pay", token.expose())
                .await
                .unwrap()
                .is_accepted(),
        );
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn tokens_expire_and_do_not_survive_login() {
    let e = env();
    let mut s = e.manager.start();
    let early = e.manager.issue_token(&mut s, "t");
    s.insert("a", &1).unwrap();
    e.manager.commit(&mut s).await.unwrap();
    e.manager.login(&mut s, "jo").await.unwrap();
    let mut r = e.manager.load(s.id()).await.unwrap().unwrap();
    assert!(
        !e.manager
            .consume_token(&mut r, "t", early.expose())
            .await
            .unwrap()
            .is_accepted(),
        "token crossed login"
    );
    let late = e.manager.issue_token(&mut r, "t");
    e.manager.commit(&mut r).await.unwrap();
    e.clock.advance(11 * MIN);
    let mut r = e.manager.load(s.id()).await.unwrap().unwrap();
    assert!(
        !e.manager
            .consume_token(&mut r, "t", late.expose())
            .await
            .unwrap()
            .is_accepted(),
        "expired token"
    );
}

#[tokio::test]
async fn a_refused_login_leaves_the_session_as_it_was() {
    let e = env_with(
        SessionConfig::builder()
            .max_sessions_per_user(NonZeroUsize::new(1).unwrap(), LimitStrategy::RejectNew)
            .build()
            .unwrap(),
    );
    let mut first = e.manager.start();
    e.manager.login(&mut first, "dora").await.unwrap();
    let mut anon = e.manager.start();
    anon.insert("cart", "apples").unwrap();
    e.manager.commit(&mut anon).await.unwrap();
    let id = anon.id().clone();
    // The next request of that browser logs in.
    let mut anon = e.manager.load(&id).await.unwrap().unwrap();
    let created = anon.created_at();
    let err = e.manager.login(&mut anon, "dora").await.unwrap_err();
    assert!(matches!(err, SessionError::TooManySessions { max: 1 }));
    // Same ID, still anonymous, same data and lifetime: nothing to send.
    assert_eq!(anon.id(), &id);
    assert_eq!(anon.user_id(), None);
    assert_eq!(anon.created_at(), created);
    assert!(e.manager.response_cookie(&anon).is_none());
    assert_eq!(
        e.manager.commit(&mut anon).await.unwrap(),
        CommitOutcome::Unchanged
    );
    let stored = e.manager.load(&id).await.unwrap().expect("still stored");
    assert_eq!(stored.user_id(), None);
    assert_eq!(
        stored.get::<String>("cart").unwrap().as_deref(),
        Some("apples")
    );
}

#[tokio::test]
async fn rotating_an_ended_session_fails_and_sets_no_session_cookie() {
    let e = env();
    let mut s = e.manager.start();
    e.manager.login(&mut s, "erin").await.unwrap();
    let id = s.id().clone();
    let mut a = e.manager.load(&id).await.unwrap().unwrap();
    let mut b = e.manager.load(&id).await.unwrap().unwrap();
    e.manager.logout(&mut b).await.unwrap();
    let err = e.manager.rotate(&mut a).await.unwrap_err();
    assert!(matches!(err, SessionError::SessionEnded), "{err:?}");
    assert!(a.is_deleted());
    assert!(e.manager.response_cookie(&a).is_none());
    assert!(e
        .manager
        .list_user_sessions("erin")
        .await
        .unwrap()
        .is_empty());
    // After its own logout a handle is a fresh anonymous session: rotating
    // it only draws another ID and stores nothing.
    e.manager.rotate(&mut b).await.unwrap();
    assert!(b.is_new() && e.store.is_empty());
}

#[tokio::test]
async fn rotation_and_login_never_extend_an_expired_session() {
    let e = env();
    let mut s = e.manager.start();
    s.insert("k", "v").unwrap();
    e.manager.commit(&mut s).await.unwrap();
    let mut loaded = e.manager.load(s.id()).await.unwrap().unwrap();
    e.clock.advance(31 * MIN);
    let err = e.manager.login(&mut loaded, "finn").await.unwrap_err();
    assert!(matches!(err, SessionError::SessionEnded), "{err:?}");
    assert!(e
        .manager
        .list_user_sessions("finn")
        .await
        .unwrap()
        .is_empty());
    assert!(e.store.list_user_sessions("finn").await.unwrap().is_empty());
}

#[tokio::test]
async fn rotating_a_new_session_draws_an_id_and_writes_nothing() {
    let e = env();
    let mut s = e.manager.start();
    let first = s.id().clone();
    e.manager.rotate(&mut s).await.unwrap();
    assert_ne!(s.id(), &first);
    assert!(e.store.is_empty());
}

#[tokio::test]
async fn a_logout_with_a_rotated_away_id_still_ends_the_session() {
    let e = env();
    let mut s = e.manager.start();
    e.manager.login(&mut s, "gus").await.unwrap();
    let mut stale = e.manager.load(s.id()).await.unwrap().unwrap();
    e.manager.rotate(&mut s).await.unwrap();
    e.manager.logout(&mut stale).await.unwrap();
    assert!(e.manager.load(s.id()).await.unwrap().is_none());
    assert!(e
        .manager
        .list_user_sessions("gus")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn another_users_login_ends_the_previous_users_session() {
    let e = env();
    let mut s = e.manager.start();
    e.manager.login(&mut s, "hana").await.unwrap();
    e.manager.login(&mut s, "ivan").await.unwrap();
    assert!(e
        .manager
        .list_user_sessions("hana")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(e.manager.list_user_sessions("ivan").await.unwrap().len(), 1);
}

#[tokio::test]
async fn after_logout_the_handle_is_a_new_anonymous_session() {
    let e = env();
    let mut s = e.manager.start();
    e.manager.login(&mut s, "jade").await.unwrap();
    s.insert("secret", "x").unwrap();
    e.manager.commit(&mut s).await.unwrap();
    let old = s.id().clone();
    let mut s = e.manager.load(&old).await.unwrap().unwrap();
    e.manager.logout(&mut s).await.unwrap();
    assert_eq!(s.user_id(), None);
    assert!(!s.contains("secret"));
    assert!(s.logged_out());
    // Nothing written afterwards: only the removal cookie.
    let removal = e.manager.response_cookie(&s).unwrap();
    assert!(removal.value().is_empty());
    // A flash message written after logout lands in a new anonymous session.
    s.insert("flash", "bye").unwrap();
    e.manager.commit(&mut s).await.unwrap();
    let cookie = e.manager.response_cookie(&s).unwrap();
    assert!(!cookie.value().is_empty());
    let next = e
        .manager
        .load_cookie_value(cookie.value())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.user_id(), None);
    assert_eq!(next.get::<String>("flash").unwrap().as_deref(), Some("bye"));
    assert!(e.manager.load(&old).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_increments_add_fifty() {
    let e = env();
    let mut s = e.manager.start();
    e.manager.login(&mut s, "kim").await.unwrap();
    let id = s.id().clone();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (manager, id) = (e.manager.clone(), id.clone());
            tokio::spawn(async move {
                let mut s = manager.load(&id).await.unwrap().unwrap();
                manager
                    .update_value(&mut s, "n", |n: Option<u64>| Some(n.unwrap_or(0) + 1))
                    .await
                    .unwrap();
                manager.commit(&mut s).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let s = e.manager.load(&id).await.unwrap().unwrap();
    assert_eq!(s.get::<u64>("n").unwrap(), Some(50));
}

#[tokio::test]
async fn update_value_on_an_ended_session_writes_nothing() {
    let e = env();
    let mut s = e.manager.start();
    e.manager.login(&mut s, "lee").await.unwrap();
    let mut stale = e.manager.load(s.id()).await.unwrap().unwrap();
    e.manager.logout(&mut s).await.unwrap();
    let err = e
        .manager
        .update_value(&mut stale, "n", |_: Option<u64>| Some(1))
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::SessionEnded), "{err:?}");
    assert!(e.store.is_empty());
}

#[tokio::test]
async fn a_failed_login_never_brings_back_the_ended_id() {
    let e = env_with(
        SessionConfig::builder()
            .max_sessions_per_user(NonZeroUsize::new(1).unwrap(), LimitStrategy::RejectNew)
            .build()
            .unwrap(),
    );
    let mut full = e.manager.start();
    e.manager.login(&mut full, "yan").await.unwrap();
    let mut s = e.manager.start();
    e.manager.login(&mut s, "xia").await.unwrap();
    let xia = s.id().clone();
    let mut s = e.manager.load(&xia).await.unwrap().unwrap();
    // Yan logs in on Xia's browser while at the limit: refused, and Xia's
    // session ended.
    let err = e.manager.login(&mut s, "yan").await.unwrap_err();
    assert!(matches!(err, SessionError::TooManySessions { max: 1 }));
    assert_ne!(s.id(), &xia);
    s.insert("flash", "try again").unwrap();
    e.manager.commit(&mut s).await.unwrap();
    assert!(e.manager.load(&xia).await.unwrap().is_none());
    assert_ne!(e.manager.response_cookie(&s).unwrap().value(), xia.expose());
}

#[tokio::test]
async fn a_value_of_the_wrong_type_is_an_error_that_does_not_quote_it() {
    let e = env();
    let mut s = e.manager.start();
    s.insert("n", "secret-value-123").unwrap();
    let err = s.get::<u64>("n").unwrap_err();
    assert!(!err.to_string().contains("secret-value"), "{err}");
}
