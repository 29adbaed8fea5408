//! Cases for a "your devices" page: session labels through every store
//! path, the listing that marks the current session, and ending one of the
//! user's other sessions by storage key, never another user's, also under
//! racing rotations and logins.

use super::lifecycle::{race, slow_manager};
use super::*;
use crate::conformance::decorators::{CallCounter, HookedStore};
use crate::label::{InvalidLabel, MAX_LABEL_LEN, MAX_STORED_LABEL_LEN};
use crate::manager::{LoginOptions, SessionManager};
use crate::SessionError;

fn labelled(user: Option<&str>, data: &[u8], label: &str) -> SessionRecord {
    live(user, data).with_label(Some(label.to_owned()))
}

/// The label of `key` in `user`'s listing (`None` inside when it has no
/// label); panics when `key` is not listed.
async fn listed_label(store: &dyn SessionStore, user: &str, key: &StorageKey) -> Option<String> {
    let list = store
        .list_user_sessions(user)
        .await
        .expect("list_user_sessions failed");
    list.into_iter()
        .find(|s| &s.key == key)
        .expect("the session is not listed")
        .label
}

/// A label (non-ASCII, exactly [`MAX_LABEL_LEN`] bytes) comes back from
/// `load` and `list_user_sessions`, survives `update` and `touch`, and
/// moves with the record in a rotation (`create_with` replacing it).
pub async fn label_round_trips_through_create_rotation_and_listing(h: Harness) {
    let store = h.store().await;
    let user = h.user("label");
    // "Téléphone d'Ada " is 18 bytes; pad with ASCII to exactly the limit.
    let mut label = String::from("Téléphone d'Ada ");
    while label.len() < MAX_LABEL_LEN {
        label.push('x');
    }
    assert_eq!(label.len(), MAX_LABEL_LEN);
    let key = h.key();
    let rec = labelled(Some(&user), b"d", &label);
    store.create(&key, &rec).await.unwrap();
    assert_eq!(must_load(&*store, &key).await, rec, "create then load");
    assert_eq!(
        listed_label(&*store, &user, &key).await.as_deref(),
        Some(label.as_str())
    );

    let next = rec.clone().with_data(&b"d2"[..]).with_version(2);
    store.update(&key, 1, &next).await.unwrap();
    let now = Timestamp::now();
    store
        .touch(&key, now, now.saturating_add(Duration::from_millis(HOUR)))
        .await
        .unwrap();
    assert_eq!(
        must_load(&*store, &key).await.label.as_deref(),
        Some(label.as_str()),
        "update or touch lost the label"
    );

    let rotated = h.key();
    store
        .create_with(
            &rotated,
            &next.clone().with_version(1),
            &CreateOptions::default().replacing(key.clone(), 2),
        )
        .await
        .unwrap();
    assert_eq!(
        must_load(&*store, &rotated).await.label.as_deref(),
        Some(label.as_str())
    );
    let list = store.list_user_sessions(&user).await.unwrap();
    assert_eq!(keys_of(&list), vec![rotated.clone()], "{list:?}");
    assert_eq!(list[0].label.as_deref(), Some(label.as_str()));
}

/// A record without a label has none after create, update, rotation and
/// in the listing, next to a labelled session of the same user: labels
/// are never invented or mixed up between sessions.
pub async fn absent_label_stays_none(h: Harness) {
    let store = h.store().await;
    let user = h.user("nolabel");
    let (plain, named) = (h.key(), h.key());
    let rec = live(Some(&user), b"p");
    store.create(&plain, &rec).await.unwrap();
    store
        .create(&named, &labelled(Some(&user), b"n", "Laptop"))
        .await
        .unwrap();
    store
        .update(&plain, 1, &rec.clone().with_version(2))
        .await
        .unwrap();
    assert_eq!(must_load(&*store, &plain).await.label, None);
    let rotated = h.key();
    store
        .create_with(
            &rotated,
            &rec,
            &CreateOptions::default().replacing(plain, 2),
        )
        .await
        .unwrap();
    assert_eq!(must_load(&*store, &rotated).await.label, None);
    assert_eq!(listed_label(&*store, &user, &rotated).await, None);
    assert_eq!(
        listed_label(&*store, &user, &named).await.as_deref(),
        Some("Laptop")
    );
    // An anonymous record without a label, too.
    let anon = h.key();
    store.create(&anon, &live(None, b"a")).await.unwrap();
    assert_eq!(must_load(&*store, &anon).await.label, None);
}

/// Stores keep every label a store must accept exactly: the empty label
/// (distinct from none), quotes, separators, braces, non-ASCII text, and
/// [`MAX_STORED_LABEL_LEN`] bytes.
pub async fn labels_up_to_the_stored_limit_with_any_characters(h: Harness) {
    let store = h.store().await;
    let user = h.user("labels");
    let mut long = String::new();
    while long.len() + "ü".len() <= MAX_STORED_LABEL_LEN {
        long.push('ü');
    }
    let labels = [
        String::new(),
        "\"quoted\" 'single' \\ back".to_owned(),
        "a:b|c{d}e[f] %s %% ${x}".to_owned(),
        "📱 Téléphone — 手机".to_owned(),
        long,
    ];
    for label in &labels {
        let key = h.key();
        store
            .create(&key, &labelled(Some(&user), b"x", label))
            .await
            .unwrap();
        assert_eq!(
            must_load(&*store, &key).await.label.as_ref(),
            Some(label),
            "label of {} bytes changed",
            label.len()
        );
        assert_eq!(
            listed_label(&*store, &user, &key).await.as_ref(),
            Some(label)
        );
    }
}

/// Through the manager: a label given at login is stored with the login,
/// loads with the session, survives rotation and a re-login without a
/// label, and the listing for a session marks that session, and only it,
/// as current.
pub async fn manager_login_label_is_listed_with_the_current_session_marked(h: Harness) {
    let store = h.store().await;
    let manager = SessionManager::builder_arc(store).build();
    let user = h.user("devices");
    let mut laptop = manager.start();
    manager
        .login_with(
            &mut laptop,
            &user,
            LoginOptions::new().with_label("Firefox on Linux"),
        )
        .await
        .unwrap();
    assert_eq!(laptop.label(), Some("Firefox on Linux"));
    manager.rotate(&mut laptop).await.unwrap();
    let mut phone = manager.start();
    manager
        .login_with(
            &mut phone,
            &user,
            LoginOptions::new().with_label("Safari on iPhone"),
        )
        .await
        .unwrap();
    let mut unnamed = manager.start();
    manager.login(&mut unnamed, &user).await.unwrap();

    let laptop = manager
        .load(laptop.id())
        .await
        .unwrap()
        .expect("the laptop's session loads");
    assert_eq!(laptop.label(), Some("Firefox on Linux"));
    let list = manager.list_sessions_for(&laptop).await.unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    let current: Vec<_> = list.iter().filter(|e| e.is_current()).collect();
    assert_eq!(current.len(), 1, "{list:?}");
    assert_eq!(current[0].key(), laptop.storage_key());
    assert_eq!(current[0].label(), Some("Firefox on Linux"));
    let mut labels: Vec<Option<&str>> = list.iter().map(|e| e.label()).collect();
    labels.sort_unstable();
    assert_eq!(
        labels,
        vec![None, Some("Firefox on Linux"), Some("Safari on iPhone")]
    );
    let from_phone = manager.list_sessions_for(&phone).await.unwrap();
    let current: Vec<_> = from_phone.iter().filter(|e| e.current).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].key(), phone.storage_key());

    // A re-login of the same user without a label keeps the device's name.
    let mut laptop = laptop;
    manager.login(&mut laptop, &user).await.unwrap();
    assert_eq!(laptop.label(), Some("Firefox on Linux"));
    let list = manager.list_sessions_for(&laptop).await.unwrap();
    let me = list
        .iter()
        .find(|e| e.is_current())
        .expect("current listed");
    assert_eq!(me.label(), Some("Firefox on Linux"));
    // Not logged in: no listing.
    assert!(matches!(
        manager.list_sessions_for(&manager.start()).await,
        Err(SessionError::NotLoggedIn)
    ));
}

/// An invalid label (too long, empty, a control character) is refused with
/// [`SessionError::InvalidLabel`] before any store call, on a fresh
/// session and on another user's session (which a valid login would have
/// ended first); the session is left as it was.
pub async fn manager_refuses_an_invalid_label_before_any_store_call(h: Harness) {
    let store = h.store().await;
    let counted = Arc::new(HookedStore::new(store, CallCounter::new()));
    let manager = SessionManager::builder_arc(counted.clone() as Arc<dyn SessionStore>).build();
    let user = h.user("badlabel");
    let mut other = manager.start();
    manager.login(&mut other, &h.user("other")).await.unwrap();
    let mut fresh = manager.start();
    fresh.insert("cart", &[1, 2]).unwrap();
    let too_long = "é".repeat(MAX_LABEL_LEN / 2 + 1);
    for (label, want) in [
        (
            too_long.as_str(),
            InvalidLabel::TooLong {
                len: MAX_LABEL_LEN + 2,
                max: MAX_LABEL_LEN,
            },
        ),
        ("", InvalidLabel::Empty),
        ("line\nbreak", InvalidLabel::ControlCharacter),
    ] {
        for session in [&mut fresh, &mut other] {
            let (id, user_before) = (session.id().clone(), session.user_id().map(str::to_owned));
            let calls = counted.hooks().total();
            let r = manager
                .login_with(session, &user, LoginOptions::new().with_label(label))
                .await;
            assert!(
                matches!(&r, Err(SessionError::InvalidLabel(e)) if *e == want),
                "got {r:?}"
            );
            assert_eq!(counted.hooks().total(), calls, "the store was called");
            assert_eq!(session.id(), &id, "the session changed");
            assert_eq!(session.user_id().map(str::to_owned), user_before);
            assert_eq!(session.label(), None);
        }
    }
    assert!(
        manager.load(other.id()).await.unwrap().is_some(),
        "the other user's session was ended by a refused login"
    );
    assert!(counted.list_user_sessions(&user).await.unwrap().is_empty());
}

/// User B cannot end user A's session by its storage key: refused with
/// [`SessionError::NotYourSession`], and A's session stays live and
/// listed. A can end their own other session with the same call.
pub async fn manager_end_user_session_refuses_another_users_session(h: Harness) {
    let store = h.store().await;
    let manager = SessionManager::builder_arc(store).build();
    let (alice, bob) = (h.user("alice"), h.user("bob"));
    let mut a1 = manager.start();
    manager
        .login_with(&mut a1, &alice, LoginOptions::new().with_label("A laptop"))
        .await
        .unwrap();
    let mut a2 = manager.start();
    manager.login(&mut a2, &alice).await.unwrap();
    let mut b = manager.start();
    manager.login(&mut b, &bob).await.unwrap();
    // B got A's key somehow (a leaked listing, a guess): refused.
    let r = manager.end_user_session(&b, a1.storage_key()).await;
    assert!(matches!(r, Err(SessionError::NotYourSession)), "got {r:?}");
    assert!(manager.load(a1.id()).await.unwrap().is_some());
    assert_eq!(manager.list_user_sessions(&alice).await.unwrap().len(), 2);
    // A ends their other session from the first one.
    manager
        .end_user_session(&a1, a2.storage_key())
        .await
        .unwrap();
    assert!(manager.load(a2.id()).await.unwrap().is_none());
    assert!(manager.load(b.id()).await.unwrap().is_some());
    let list = manager.list_sessions_for(&a1).await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].is_current());
}

/// Races `end_user_session` against what can happen to its target
/// meanwhile, over a slow store, [`Harness::rounds`] rounds:
///
/// - user B ends A's session while A's browser rotates it, or logs in as
///   B (which ends A's session and starts a new one of B's): always
///   refused, and A's rotated session, or B's new one, stays live;
/// - A's other device ends the session while it rotates: either it is
///   ended wherever the rotation moved it, or the call is refused and the
///   session lives on under its new key, never both or neither.
pub async fn manager_end_user_session_racing_rotation_and_login(h: Harness) {
    let store = h.store().await;
    let manager = slow_manager(&h, store.clone(), None);
    for round in 0..h.rounds() {
        let (alice, bob) = (h.user(&format!("ra{round}")), h.user(&format!("rb{round}")));
        let mut target = manager.start();
        manager.login(&mut target, &alice).await.unwrap();
        let mut other_device = manager.start();
        manager.login(&mut other_device, &alice).await.unwrap();
        let mut b = manager.start();
        manager.login(&mut b, &bob).await.unwrap();
        let key = target.storage_key().clone();

        // B against a rotation of A's session.
        let mut moving = manager.load(target.id()).await.unwrap().expect("loads");
        let b1 = manager.load(b.id()).await.unwrap().expect("loads");
        let (rotated, ended) = race(
            {
                let manager = manager.clone();
                async move { (manager.rotate(&mut moving).await, moving) }
            },
            {
                let manager = manager.clone();
                async move { manager.end_user_session(&b1, &key).await }
            },
        )
        .await;
        let (rotated, moving) = rotated;
        assert!(
            matches!(ended, Err(SessionError::NotYourSession)),
            "round {round}: B ended A's session: {ended:?}"
        );
        rotated.unwrap();
        assert!(
            manager.load(moving.id()).await.unwrap().is_some(),
            "round {round}: A's rotated session is gone"
        );

        // B against A's browser logging in as B.
        let mut shared = manager.load(moving.id()).await.unwrap().expect("loads");
        let shared_key = shared.storage_key().clone();
        let b2 = manager.load(b.id()).await.unwrap().expect("loads");
        let (logged_in, ended) = race(
            {
                let (manager, bob) = (manager.clone(), bob.clone());
                async move { (manager.login(&mut shared, &bob).await, shared) }
            },
            {
                let manager = manager.clone();
                async move { manager.end_user_session(&b2, &shared_key).await }
            },
        )
        .await;
        let (logged_in, shared) = logged_in;
        logged_in.unwrap();
        assert!(
            matches!(ended, Err(SessionError::NotYourSession)),
            "round {round}: B ended a session through A's old key: {ended:?}"
        );
        assert!(
            manager.load(shared.id()).await.unwrap().is_some(),
            "round {round}: the new session of B on A's browser was ended"
        );

        // A's other device against a rotation of A's third session.
        let mut third = manager.start();
        manager.login(&mut third, &alice).await.unwrap();
        let third_key = third.storage_key().clone();
        let (rotated, ended) = race(
            {
                let manager = manager.clone();
                async move { (manager.rotate(&mut third).await, third) }
            },
            {
                let manager = manager.clone();
                async move { manager.end_user_session(&other_device, &third_key).await }
            },
        )
        .await;
        let (rotated, third) = rotated;
        let alive = match &rotated {
            Ok(()) => manager.load(third.id()).await.unwrap().is_some(),
            Err(SessionError::SessionEnded) => false,
            Err(e) => panic!("round {round}: rotation failed: {e:?}"),
        };
        match ended {
            Ok(()) => assert!(!alive, "round {round}: ended, yet it lives on"),
            Err(SessionError::NotYourSession) => {
                assert!(alive, "round {round}: refused, yet it is gone");
            }
            Err(e) => panic!("round {round}: {e:?}"),
        }
    }
}
