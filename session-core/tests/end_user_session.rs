//! `SessionManager::end_user_session`: a user ends one of their own
//! sessions by storage key, never anyone else's, even under racing
//! rotations and logins.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use session_core::{
    CommitOutcome, ManualClock, MemoryStore, Session, SessionError, SessionManager, StorageKey,
    Timestamp,
};

fn manager() -> SessionManager {
    SessionManager::new(MemoryStore::new())
}

async fn logged_in(m: &SessionManager, user: &str) -> Session {
    let mut s = m.start();
    m.login(&mut s, user).await.unwrap();
    s
}

async fn alive(m: &SessionManager, s: &Session) -> bool {
    m.load(s.id()).await.unwrap().is_some()
}

fn refused(r: Result<(), SessionError>) -> bool {
    matches!(r, Err(SessionError::NotYourSession))
}

#[tokio::test]
async fn a_user_ends_their_own_other_session() {
    let m = manager();
    let laptop = logged_in(&m, "alice").await;
    let phone = logged_in(&m, "alice").await;
    m.end_user_session(&laptop, phone.storage_key())
        .await
        .unwrap();
    assert!(!alive(&m, &phone).await, "the phone is signed out");
    assert!(alive(&m, &laptop).await, "the caller is not");
    assert_eq!(m.list_user_sessions("alice").await.unwrap().len(), 1);
}

#[tokio::test]
async fn another_users_session_is_refused_and_stays_alive() {
    let m = manager();
    let alice = logged_in(&m, "alice").await;
    let bob = logged_in(&m, "bob").await;
    assert!(refused(m.end_user_session(&alice, bob.storage_key()).await));
    assert!(alive(&m, &bob).await);
    // A key that is a prefix-alike or another user with a similar name
    // changes nothing either.
    let alice2 = logged_in(&m, "alice ").await;
    assert!(refused(
        m.end_user_session(&alice, alice2.storage_key()).await
    ));
    assert!(alive(&m, &alice2).await);
}

#[tokio::test]
async fn an_anonymous_caller_is_refused() {
    let m = manager();
    let bob = logged_in(&m, "bob").await;
    // A new, never stored session.
    let fresh = m.start();
    assert!(refused(m.end_user_session(&fresh, bob.storage_key()).await));
    // A stored anonymous session (it holds data, but no user).
    let mut stored = m.start();
    stored.insert("cart", &[1]).unwrap();
    m.commit(&mut stored).await.unwrap();
    assert!(!stored.is_new());
    assert!(refused(
        m.end_user_session(&stored, bob.storage_key()).await
    ));
    // Not even its own key: an anonymous session has no sessions to manage.
    assert!(refused(
        m.end_user_session(&stored, stored.storage_key()).await
    ));
    assert!(alive(&m, &bob).await);
    assert!(alive(&m, &stored).await);
}

#[tokio::test]
async fn a_logged_out_caller_is_refused() {
    let m = manager();
    let mut alice = logged_in(&m, "alice").await;
    let other = logged_in(&m, "alice").await;
    m.logout(&mut alice).await.unwrap();
    assert!(refused(
        m.end_user_session(&alice, other.storage_key()).await
    ));
    assert!(alive(&m, &other).await);
}

#[tokio::test]
async fn unknown_ended_and_rotated_away_keys_are_refused_alike() {
    let m = manager();
    let alice = logged_in(&m, "alice").await;
    let unknown = StorageKey::from_stored(&"0".repeat(64));
    let r = m.end_user_session(&alice, &unknown).await;
    assert!(refused(r));
    let garbage = StorageKey::from_stored("not a key at all");
    assert!(refused(m.end_user_session(&alice, &garbage).await));

    let mut ended = logged_in(&m, "alice").await;
    let ended_key = ended.storage_key().clone();
    m.logout(&mut ended).await.unwrap();
    assert!(refused(m.end_user_session(&alice, &ended_key).await));

    // A key rotated away is refused even though it is the user's session:
    // the client lists the sessions again and uses the current key.
    let mut moving = logged_in(&m, "alice").await;
    let old_key = moving.storage_key().clone();
    m.rotate(&mut moving).await.unwrap();
    assert!(refused(m.end_user_session(&alice, &old_key).await));
    assert!(alive(&m, &moving).await);

    // The refusals all read the same, whatever the reason.
    let messages: HashSet<String> = [
        m.end_user_session(&alice, &unknown).await,
        m.end_user_session(&alice, &ended_key).await,
        m.end_user_session(&alice, &old_key).await,
        m.end_user_session(&m.start(), moving.storage_key()).await,
    ]
    .into_iter()
    .map(|r| r.unwrap_err().to_string())
    .collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
}

#[tokio::test]
async fn an_expired_session_is_refused() {
    let clock = Arc::new(ManualClock::new(Timestamp::from_unix_millis(
        1_800_000_000_000,
    )));
    let store = MemoryStore::with_clock(clock.clone());
    let m = SessionManager::builder(store).clock(clock.clone()).build();
    let idle = logged_in(&m, "alice").await;
    clock.advance(Duration::from_secs(29 * 60));
    let fresh = logged_in(&m, "alice").await;
    clock.advance(Duration::from_secs(2 * 60));
    assert!(refused(
        m.end_user_session(&fresh, idle.storage_key()).await
    ));
    assert!(!alive(&m, &idle).await, "idle for 31 minutes");
    assert!(alive(&m, &fresh).await);
}

#[tokio::test]
async fn the_current_session_may_end_itself() {
    let m = manager();
    let mut s = logged_in(&m, "alice").await;
    let key = s.storage_key().clone();
    m.end_user_session(&s, &key).await.unwrap();
    assert!(!alive(&m, &s).await);
    // The handle learns it at its next write: gone, and no cookie is due.
    s.insert("theme", "dark").unwrap();
    assert_eq!(m.commit(&mut s).await.unwrap(), CommitOutcome::Gone);
    assert!(s.is_deleted());
    assert!(m.response_cookie(&s).is_none());
}

/// Dozens of concurrent `end_user_session` calls from alice aim at every
/// key bob's sessions ever had (current ones, rotated-away ones that lead
/// to his live sessions, anonymous ones he then logs into, and alice's own
/// sessions that log in as bob on a shared computer), while bob keeps
/// rotating, logging in again and adding sessions. None of bob's sessions
/// may end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_calls_never_end_another_users_session() {
    const BOB_SESSIONS: usize = 8;
    const ROUNDS: usize = 25;
    const ATTACKERS: usize = 48;

    let m = manager();
    let alice = Arc::new(logged_in(&m, "alice").await);
    let keys: Arc<Mutex<Vec<StorageKey>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut attackers = tokio::task::JoinSet::new();
    for i in 0..ATTACKERS {
        let (m, alice, keys, done) = (m.clone(), alice.clone(), keys.clone(), done.clone());
        attackers.spawn(async move {
            let (mut tries, mut ended) = (0u64, 0u64);
            let mut next = i;
            loop {
                let target = {
                    let k = keys.lock().unwrap();
                    (!k.is_empty()).then(|| k[next % k.len()].clone())
                };
                next = next.wrapping_mul(31).wrapping_add(7);
                if let Some(key) = target {
                    tries += 1;
                    match m.end_user_session(&alice, &key).await {
                        Err(SessionError::NotYourSession) => {}
                        // Alice's own sessions (before they switch to bob)
                        // may legitimately end.
                        Ok(()) => ended += 1,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return (tries, ended);
                }
                tokio::task::yield_now().await;
            }
        });
    }

    // Bob's activity: each worker owns one session and, round after round,
    // rotates it, logs in again as bob (another move), or replaces it by a
    // fresh anonymous session that then logs in as bob, or by one of
    // alice's that then logs in as bob. Every key is published for alice
    // to aim at, before and after each move.
    let mut bob = tokio::task::JoinSet::new();
    for w in 0..BOB_SESSIONS {
        let (m, keys) = (m.clone(), keys.clone());
        bob.spawn(async move {
            let publish = |k: &StorageKey| keys.lock().unwrap().push(k.clone());
            let mut s = logged_in(&m, "bob").await;
            publish(s.storage_key());
            for round in 0..ROUNDS {
                match (w + round) % 4 {
                    0 => m.rotate(&mut s).await.unwrap(),
                    1 => m.login(&mut s, "bob").await.unwrap(),
                    2 => {
                        let mut anon = m.start();
                        anon.insert("cart", &round).unwrap();
                        m.commit(&mut anon).await.unwrap();
                        publish(anon.storage_key());
                        m.login(&mut anon, "bob").await.unwrap();
                        // The previous session stays alive too: bob has
                        // one more device now.
                        let old = std::mem::replace(&mut s, anon);
                        assert!(alive(&m, &old).await, "bob's session ended");
                        m.end_user_session(&s, old.storage_key()).await.unwrap();
                    }
                    _ => {
                        // A shared computer: alice's session there logs in as bob.
                        let mut shared = logged_in(&m, "alice").await;
                        publish(shared.storage_key());
                        tokio::task::yield_now().await;
                        m.login(&mut shared, "bob").await.unwrap();
                        let old = std::mem::replace(&mut s, shared);
                        assert!(alive(&m, &old).await, "bob's session ended");
                        m.end_user_session(&s, old.storage_key()).await.unwrap();
                    }
                }
                publish(s.storage_key());
                assert!(alive(&m, &s).await, "bob's session ended mid-run");
                tokio::task::yield_now().await;
            }
            s
        });
    }
    let finals: Vec<Session> = bob.join_all().await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let results: Vec<(u64, u64)> = attackers.join_all().await;

    let tries: u64 = results.iter().map(|r| r.0).sum();
    assert!(tries >= 500, "the attackers barely ran: {tries} calls");
    for s in &finals {
        assert!(alive(&m, s).await, "one of bob's sessions was ended");
        assert_eq!(s.user_id(), Some("bob"));
    }
    assert_eq!(
        m.list_user_sessions("bob").await.unwrap().len(),
        BOB_SESSIONS,
        "bob has exactly his sessions"
    );
    assert!(alive(&m, &alice).await);
}
