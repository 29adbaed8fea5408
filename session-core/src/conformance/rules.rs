//! Cases for rules of the contract that the first cases checked only from
//! one side: a record must not die *before* its deadline, an update stores
//! every field it is given, listings reflect touches and updates, and the
//! calls that remove records remove exactly what they should.
//!
//! Timing: every deadline leaves at least 400 ms between the instant the
//! case checks and the instant that decides the outcome, so no case passes
//! or fails by luck of the millisecond.

use super::*;

/// A record loads until its deadline: at 1.5 s of a 1.9 s idle deadline it
/// is still live. (A store that rounds TTLs down to whole seconds, or whose
/// clock runs ahead, kills it early.)
pub async fn record_is_live_until_its_idle_deadline(h: Harness) {
    live_until_deadline(h, "idle", |user| record(user, b"x", 1_900, HOUR)).await;
}

/// The same for the absolute deadline.
pub async fn record_is_live_until_its_absolute_deadline(h: Harness) {
    live_until_deadline(h, "absolute", |user| record(user, b"x", HOUR, 1_900)).await;
}

/// Creates the record `make` gives (a deadline 1.9 s away), and loads it
/// at 1.5 s: it must be live. A load that could only start within 100 ms
/// of the deadline (a machine stalled that long) proves nothing either way;
/// the attempt is made again, up to five times.
async fn live_until_deadline(
    h: Harness,
    which: &str,
    make: impl Fn(Option<&str>) -> SessionRecord,
) {
    let store = h.store().await;
    for _ in 0..5 {
        let key = h.key();
        let rec = make(None);
        let deadline = rec.expires_at();
        store.create(&key, &rec).await.unwrap();
        sleep_ms(1_500).await;
        let asked_at = Timestamp::now();
        let loaded = store.load(&key).await.unwrap();
        if asked_at.as_unix_millis() + 100 > deadline.as_unix_millis() {
            continue;
        }
        assert!(
            loaded.is_some(),
            "dead {} ms before its {which} deadline",
            deadline.as_unix_millis() - asked_at.as_unix_millis()
        );
        return;
    }
    panic!("five attempts could not load the record 100 ms before its {which} deadline: the machine is too busy for this case");
}

/// A touch's new idle deadline holds to its end too.
pub async fn touched_record_is_live_until_its_new_deadline(h: Harness) {
    let store = h.store().await;
    // As in `live_until_deadline`: an attempt the machine stalled through
    // (the touch came after the 500 ms idle deadline, or the load within
    // 100 ms of the new one) proves nothing and is made again.
    for _ in 0..5 {
        let key = h.key();
        let first = record(None, b"x", 500, HOUR);
        let idle_deadline = first.idle_deadline;
        store.create(&key, &first).await.unwrap();
        let now = Timestamp::now();
        let deadline = now.saturating_add(Duration::from_millis(1_900));
        match store.touch(&key, now, deadline).await {
            Ok(()) => {}
            Err(StoreError::NotFound)
                if Timestamp::now().as_unix_millis() + 100 > idle_deadline.as_unix_millis() =>
            {
                continue
            }
            Err(e) => panic!("touch: {e:?}"),
        }
        sleep_ms(1_500).await;
        let asked_at = Timestamp::now();
        let loaded = store.load(&key).await.unwrap();
        if asked_at.as_unix_millis() + 100 > deadline.as_unix_millis() {
            continue;
        }
        assert!(
            loaded.is_some(),
            "dead {} ms before the deadline touch gave it",
            deadline.as_unix_millis() - asked_at.as_unix_millis()
        );
        return;
    }
    panic!("five attempts could not touch and load in time: the machine is too busy for this case");
}

/// `create` over a record that expired succeeds (only a live record
/// blocks it).
pub async fn create_over_an_expired_record_succeeds(h: Harness) {
    let store = h.store().await;
    let key = h.key();
    store
        .create(&key, &record(None, b"old", 300, HOUR))
        .await
        .unwrap();
    sleep_ms(700).await;
    store.create(&key, &live(None, b"new")).await.unwrap();
    assert_eq!(&must_load(&*store, &key).await.data[..], b"new");
}

/// `update` stores every field it is given: data, version, last access and
/// both deadlines, not only data and version.
pub async fn update_stores_every_field(h: Harness) {
    let store = h.store().await;
    let user = h.user("every");
    let key = h.key();
    let first = live(Some(&user), b"1");
    store.create(&key, &first).await.unwrap();
    let later = |ms: u64| first.created_at.saturating_add(Duration::from_millis(ms));
    let next = SessionRecord {
        data: Bytes::from_static(b"2"),
        last_access: later(1_234),
        idle_deadline: later(HOUR + 5_678),
        absolute_deadline: later(3 * HOUR + 9),
        version: 2,
        ..first.clone()
    };
    store.update(&key, 1, &next).await.unwrap();
    assert_eq!(must_load(&*store, &key).await, next);
}

/// An update of an expired record is `NotFound` whatever version it names,
/// the record's own included.
pub async fn update_of_an_expired_record_is_not_found_at_any_version(h: Harness) {
    let store = h.store().await;
    let key = h.key();
    store
        .create(&key, &record(None, b"x", 300, HOUR))
        .await
        .unwrap();
    sleep_ms(700).await;
    for expected in [1, 7] {
        let r = store
            .update(
                &key,
                expected,
                &SessionRecord {
                    version: expected + 1,
                    ..live(None, b"y")
                },
            )
            .await;
        assert!(
            matches!(r, Err(StoreError::NotFound)),
            "version {expected}: got {r:?}"
        );
    }
}

/// `list_user_sessions` reflects `touch` and `update`: the fresh last access and
/// deadlines, and the session stays listed after its original deadline.
pub async fn list_user_reflects_touch_and_update(h: Harness) {
    let store = h.store().await;
    let user = h.user("reflect");
    let key = h.key();
    let first = record(Some(&user), b"1", 600, HOUR);
    store.create(&key, &first).await.unwrap();
    let t = Timestamp::now();
    let idle = t.saturating_add(Duration::from_millis(HOUR));
    store.touch(&key, t, idle).await.unwrap();
    sleep_ms(1_000).await;
    let listed = store.list_user_sessions(&user).await.unwrap();
    assert_eq!(listed.len(), 1, "a touched session dropped out of the list");
    assert_eq!(listed[0].last_access, t);
    assert_eq!(listed[0].idle_deadline, idle);
    let next = SessionRecord {
        data: Bytes::from_static(b"2"),
        last_access: t.saturating_add(Duration::from_millis(5)),
        idle_deadline: idle.saturating_add(Duration::from_millis(7)),
        absolute_deadline: first
            .absolute_deadline
            .saturating_add(Duration::from_millis(11)),
        version: 2,
        ..first.clone()
    };
    store.update(&key, 1, &next).await.unwrap();
    let listed = store.list_user_sessions(&user).await.unwrap();
    assert_eq!(listed, vec![next.summary(&key)]);
}

/// `delete_user` deletes exactly that user's sessions, even among ids that
/// are prefixes of it or contain separators, and returns exactly how many
/// live sessions it ended (not the expired ones).
pub async fn delete_user_is_exact_and_counts_live_sessions(h: Harness) {
    let store = h.store().await;
    let user = h.user("u");
    let others = [
        format!("{user}2"),
        format!("{user}:x"),
        format!("{user} "),
        format!("x{user}"),
        user[..user.len() - 1].to_owned(),
    ];
    let mine = [h.key(), h.key()];
    for k in &mine {
        store.create(k, &live(Some(&user), b"m")).await.unwrap();
    }
    let short = h.key();
    store
        .create(&short, &record(Some(&user), b"s", 300, HOUR))
        .await
        .unwrap();
    let mut theirs = Vec::new();
    for other in &others {
        let k = h.key();
        store.create(&k, &live(Some(other), b"t")).await.unwrap();
        theirs.push((other, k));
    }
    sleep_ms(700).await;
    assert_eq!(store.delete_user(&user).await.unwrap(), 2);
    for k in mine.iter().chain([&short]) {
        assert!(store.load(k).await.unwrap().is_none());
    }
    for (other, k) in &theirs {
        assert!(
            store.load(k).await.unwrap().is_some(),
            "deleting {user:?} deleted {other:?}'s session"
        );
        assert_eq!(store.list_user_sessions(other).await.unwrap().len(), 1);
    }
    assert_eq!(store.delete_user(&user).await.unwrap(), 0);
}

/// A create refused because the key is taken leaves nothing of the
/// refused user behind: `delete_user` of that user ends none of the
/// owner's sessions, neither where the key is nor where a rotation moved
/// the session afterwards, and lists none.
pub async fn refused_create_leaves_the_owner_alone(h: Harness) {
    let store = h.store().await;
    let (owner, intruder) = (h.user("owner"), h.user("intruder"));
    let (key, moved_to) = (h.key(), h.key());
    store.create(&key, &live(Some(&owner), b"o")).await.unwrap();
    let refused = store.create(&key, &live(Some(&intruder), b"i")).await;
    assert!(
        matches!(refused, Err(StoreError::AlreadyExists)),
        "create over a live record: {refused:?}"
    );
    assert!(store
        .list_user_sessions(&intruder)
        .await
        .unwrap()
        .is_empty());
    let version = must_load(&*store, &key).await.version;
    store
        .create_with(
            &moved_to,
            &live(Some(&owner), b"o"),
            &CreateOptions::default().replacing(key.clone(), version),
        )
        .await
        .unwrap();
    assert!(store
        .list_user_sessions(&intruder)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.delete_user(&intruder).await.unwrap(),
        0,
        "delete_user ended a session of another user"
    );
    assert!(
        store.load(&moved_to).await.unwrap().is_some(),
        "delete_user of {intruder:?} ended {owner:?}'s rotated session"
    );
    assert_eq!(store.list_user_sessions(&owner).await.unwrap().len(), 1);
    // The old key still leads a delete to where the session went.
    store.delete(&key).await.unwrap();
    assert!(store.load(&moved_to).await.unwrap().is_none());
}

/// A rotation that fails changes nothing. A rotation from a key with no
/// session onto a key that a session once moved away from (which still
/// leads a `delete` to where the session went) is refused as not found;
/// deleting that old key then still ends the session it moved to, whose
/// key is free again afterwards.
pub async fn failed_rotation_leaves_the_keys_as_they_were(h: Harness) {
    let store = h.store().await;
    let (old, moved_to, missing) = (h.key(), h.key(), h.key());
    store.create(&old, &live(None, b"o")).await.unwrap();
    let version = must_load(&*store, &old).await.version;
    store
        .create_with(
            &moved_to,
            &live(None, b"m"),
            &CreateOptions::default().replacing(old.clone(), version),
        )
        .await
        .unwrap();
    let refused = store
        .create_with(
            &old,
            &live(None, b"x"),
            &CreateOptions::default().replacing(missing.clone(), 1),
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::NotFound)),
        "rotation from a key with no session: {refused:?}"
    );
    assert!(store.load(&old).await.unwrap().is_none());
    store.delete(&old).await.unwrap();
    assert!(
        store.load(&moved_to).await.unwrap().is_none(),
        "the failed rotation cut the old key's way to the session"
    );
    store.create(&moved_to, &live(None, b"n")).await.unwrap();
}

/// `delete_expired` never removes a live record, even one that expires
/// later in the same second.
pub async fn delete_expired_never_removes_a_live_record(h: Harness) {
    let store = h.store().await;
    let key = h.key();
    store
        .create(&key, &record(None, b"x", 900, HOUR))
        .await
        .unwrap();
    store.delete_expired().await.unwrap();
    assert!(
        store.load(&key).await.unwrap().is_some(),
        "delete_expired removed a record 900 ms before its deadline"
    );
}

/// Versions are any `u64`, compared for equality: the ends of the range
/// round-trip and compare-and-set like any other.
pub async fn versions_span_the_whole_u64_range(h: Harness) {
    let store = h.store().await;
    let key = h.key();
    let first = SessionRecord {
        version: u64::MAX - 1,
        ..live(None, b"1")
    };
    store.create(&key, &first).await.unwrap();
    assert_eq!(must_load(&*store, &key).await.version, u64::MAX - 1);
    let top = SessionRecord {
        version: u64::MAX,
        ..first.clone()
    };
    store.update(&key, u64::MAX - 1, &top).await.unwrap();
    assert_eq!(must_load(&*store, &key).await.version, u64::MAX);
    let stale = store
        .update(
            &key,
            0,
            &SessionRecord {
                version: 1,
                ..first.clone()
            },
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict)), "got {stale:?}");
    let wrapped = SessionRecord {
        version: 0,
        ..first.clone()
    };
    store.update(&key, u64::MAX, &wrapped).await.unwrap();
    assert_eq!(must_load(&*store, &key).await.version, 0);
}

/// A 1 KiB user id of mixed scripts, separators and braces round-trips
/// and is listed and deleted exactly.
pub async fn user_ids_up_to_1_kib_with_any_characters(h: Harness) {
    let store = h.store().await;
    let base = h.user("ü{x}: y/\\*?");
    let mut user = base.clone();
    while user.len() < 1_000 {
        user.push_str("é中{}:");
    }
    let key = h.key();
    store.create(&key, &live(Some(&user), b"u")).await.unwrap();
    assert_eq!(
        must_load(&*store, &key).await.user_id.as_deref(),
        Some(user.as_str())
    );
    assert_eq!(
        keys_of(&store.list_user_sessions(&user).await.unwrap()),
        vec![key.clone()]
    );
    assert!(store.list_user_sessions(&base).await.unwrap().is_empty());
    assert_eq!(store.delete_user(&user).await.unwrap(), 1);
    assert!(store.load(&key).await.unwrap().is_none());
}
