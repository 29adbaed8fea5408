//! Cases for the atomic lifecycle step ([`SessionStore::create_with`]):
//! rotation, per-user limits, moved keys, and the races between them and
//! the calls that end sessions. The race cases run [`Harness::rounds`]
//! rounds of dozens of concurrent calls each.

use std::collections::HashSet;
use std::num::NonZeroUsize;

use futures::future::join_all;

use super::*;
use crate::manager::SessionManager;
use crate::policy::{LimitStrategy, SessionConfig, UserSessionLimit};
use crate::store::{newest_first, CreateOptions};
use crate::SessionError;

/// Concurrent logins per round in the race cases.
const RACERS: usize = 32;

fn limit(max: usize, strategy: LimitStrategy) -> UserSessionLimit {
    UserSessionLimit {
        max: NonZeroUsize::new(max).expect("max > 0"),
        strategy,
    }
}

fn with_limit(max: usize, strategy: LimitStrategy) -> CreateOptions {
    CreateOptions::default().with_limit(limit(max, strategy))
}

fn moving(key: &StorageKey, version: u64) -> CreateOptions {
    CreateOptions::default().replacing(key.clone(), version)
}

fn versioned(mut r: SessionRecord, version: u64) -> SessionRecord {
    r.version = version;
    r
}

fn created_ms_ago(mut r: SessionRecord, ms: u64) -> SessionRecord {
    r.created_at = r.created_at.saturating_sub(Duration::from_millis(ms));
    r
}

/// Runs `a` and `b` on separate tasks (separate worker threads where the
/// runtime has them), released together.
pub(super) async fn race<A, B>(a: A, b: B) -> (A::Output, B::Output)
where
    A: Future + Send + 'static,
    A::Output: Send + 'static,
    B: Future + Send + 'static,
    B::Output: Send + 'static,
{
    let gate = Arc::new(tokio::sync::Barrier::new(2));
    let (ga, gb) = (gate.clone(), gate);
    let a = tokio::spawn(async move {
        ga.wait().await;
        a.await
    });
    let b = tokio::spawn(async move {
        gb.wait().await;
        b.await
    });
    (
        a.await.expect("racer panicked"),
        b.await.expect("racer panicked"),
    )
}

/// Runs every future on its own task, released together.
async fn race_all<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let gate = Arc::new(tokio::sync::Barrier::new(futures.len()));
    let tasks: Vec<_> = futures
        .into_iter()
        .map(|f| {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.wait().await;
                f.await
            })
        })
        .collect();
    join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("racer panicked"))
        .collect()
}

async fn loads(store: &dyn SessionStore, key: &StorageKey) -> bool {
    store.load(key).await.expect("load failed").is_some()
}

async fn listed(store: &dyn SessionStore, user: &str) -> Vec<StorageKey> {
    keys_of(
        &store
            .list_user_sessions(user)
            .await
            .expect("list_user_sessions failed"),
    )
}

/// With default options `create_with` is `create`: stored, indexed, and
/// insert-only.
pub async fn create_with_default_options_is_create(h: Harness) {
    let store = h.store().await;
    let user = h.user("plain");
    let key = h.key();
    let rec = live(Some(&user), b"p");
    let created = store
        .create_with(&key, &rec, &CreateOptions::default())
        .await
        .unwrap();
    assert!(created.evicted.is_empty());
    assert_eq!(must_load(&*store, &key).await, rec);
    assert_eq!(listed(&*store, &user).await, vec![key.clone()]);
    let again = store
        .create_with(&key, &live(Some(&user), b"q"), &CreateOptions::default())
        .await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists)),
        "got {again:?}"
    );
}

/// A rotation moves the record: the new key loads exactly what was given,
/// the old key loads nothing, and the index lists only the new key.
pub async fn rotation_moves_the_record(h: Harness) {
    let store = h.store().await;
    let user = h.user("rot");
    let (old, new) = (h.key(), h.key());
    store
        .create(&old, &versioned(live(Some(&user), b"old"), 3))
        .await
        .unwrap();
    let next = live(Some(&user), b"new");
    store
        .create_with(&new, &next, &moving(&old, 3))
        .await
        .unwrap();
    assert!(!loads(&*store, &old).await, "old key still loads");
    assert_eq!(must_load(&*store, &new).await, next);
    assert_eq!(listed(&*store, &user).await, vec![new]);
}

/// An anonymous record rotated into a logged-in one joins the user's index.
pub async fn rotation_into_a_login_indexes_the_new_key(h: Harness) {
    let store = h.store().await;
    let user = h.user("anonlogin");
    let (old, new) = (h.key(), h.key());
    store.create(&old, &live(None, b"cart")).await.unwrap();
    store
        .create_with(&new, &live(Some(&user), b"cart"), &moving(&old, 1))
        .await
        .unwrap();
    assert!(!loads(&*store, &old).await);
    assert_eq!(listed(&*store, &user).await, vec![new]);
}

async fn rotation_fails(
    store: &dyn SessionStore,
    old: &StorageKey,
    version: u64,
    user: &str,
) -> StoreError {
    let new = KeyDeriver::new().derive(&SessionId::generate());
    let err = store
        .create_with(&new, &live(Some(user), b"n"), &moving(old, version))
        .await
        .expect_err("rotation of a record that may not move succeeded");
    assert!(
        !loads(store, &new).await,
        "a failed rotation wrote the new key"
    );
    err
}

/// Rotating a key that never held a record is `NotFound` and writes nothing.
pub async fn rotation_of_a_missing_record_is_not_found(h: Harness) {
    let store = h.store().await;
    let user = h.user("rotmiss");
    let err = rotation_fails(&*store, &h.key(), 1, &user).await;
    assert!(matches!(err, StoreError::NotFound), "got {err:?}");
    assert!(listed(&*store, &user).await.is_empty());
}

/// Rotating a deleted record is `NotFound`: a logout is never undone.
pub async fn rotation_of_a_deleted_record_is_not_found(h: Harness) {
    let store = h.store().await;
    let user = h.user("rotdel");
    let old = h.key();
    store.create(&old, &live(Some(&user), b"o")).await.unwrap();
    store.delete(&old).await.unwrap();
    let err = rotation_fails(&*store, &old, 1, &user).await;
    assert!(matches!(err, StoreError::NotFound), "got {err:?}");
    assert!(listed(&*store, &user).await.is_empty());
}

/// Rotating a record past its deadline is `NotFound`: expiry is never
/// undone.
pub async fn rotation_of_an_expired_record_is_not_found(h: Harness) {
    let store = h.store().await;
    let user = h.user("rotexp");
    let old = h.key();
    store
        .create(&old, &record(Some(&user), b"o", 300, HOUR))
        .await
        .unwrap();
    sleep_ms(1_000).await;
    let err = rotation_fails(&*store, &old, 1, &user).await;
    assert!(matches!(err, StoreError::NotFound), "got {err:?}");
}

/// Rotating with a version that is no longer current is `Conflict`; the old
/// record stays as it was.
pub async fn rotation_with_a_stale_version_conflicts(h: Harness) {
    let store = h.store().await;
    let user = h.user("rotstale");
    let old = h.key();
    let rec = versioned(live(Some(&user), b"o"), 2);
    store.create(&old, &rec).await.unwrap();
    let err = rotation_fails(&*store, &old, 1, &user).await;
    assert!(matches!(err, StoreError::Conflict), "got {err:?}");
    assert_eq!(must_load(&*store, &old).await, rec);
    assert_eq!(listed(&*store, &user).await, vec![old]);
}

/// Rotating another user's record into this user's is `Conflict`.
pub async fn rotation_of_another_users_record_conflicts(h: Harness) {
    let store = h.store().await;
    let (alice, bob) = (h.user("rotalice"), h.user("rotbob"));
    let old = h.key();
    store.create(&old, &live(Some(&alice), b"a")).await.unwrap();
    let err = rotation_fails(&*store, &old, 1, &bob).await;
    assert!(matches!(err, StoreError::Conflict), "got {err:?}");
    assert!(loads(&*store, &old).await);
    assert_eq!(listed(&*store, &alice).await, vec![old]);
    assert!(listed(&*store, &bob).await.is_empty());
}

/// Rotating onto a key that holds a live record is `AlreadyExists`; both
/// records stay as they were.
pub async fn rotation_onto_a_live_key_is_rejected(h: Harness) {
    let store = h.store().await;
    let user = h.user("rotonto");
    let (old, taken) = (h.key(), h.key());
    store.create(&old, &live(Some(&user), b"o")).await.unwrap();
    store.create(&taken, &live(None, b"t")).await.unwrap();
    let err = store
        .create_with(&taken, &live(Some(&user), b"n"), &moving(&old, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists), "got {err:?}");
    assert_eq!(&must_load(&*store, &old).await.data[..], b"o");
    assert_eq!(&must_load(&*store, &taken).await.data[..], b"t");
    // The other way round: an anonymous record onto a logged-in one.
    let (anon, owned) = (h.key(), h.key());
    store.create(&anon, &live(None, b"a")).await.unwrap();
    store
        .create(&owned, &live(Some(&user), b"u"))
        .await
        .unwrap();
    let err = store
        .create_with(&owned, &live(None, b"n"), &moving(&anon, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists), "got {err:?}");
    assert_eq!(&must_load(&*store, &anon).await.data[..], b"a");
    assert_eq!(&must_load(&*store, &owned).await.data[..], b"u");
}

/// A moved key is dead for every call: load, update, touch and another
/// rotation.
pub async fn moved_key_is_dead(h: Harness) {
    let store = h.store().await;
    let user = h.user("moved");
    let (old, new) = (h.key(), h.key());
    let rec = live(Some(&user), b"o");
    store.create(&old, &rec).await.unwrap();
    store
        .create_with(&new, &live(Some(&user), b"n"), &moving(&old, 1))
        .await
        .unwrap();
    assert!(!loads(&*store, &old).await);
    let update = store.update(&old, 1, &versioned(rec.clone(), 2)).await;
    assert!(
        matches!(update, Err(StoreError::NotFound)),
        "update: {update:?}"
    );
    let touch = store.touch(&old, rec.last_access, rec.idle_deadline).await;
    assert!(
        matches!(touch, Err(StoreError::NotFound)),
        "touch: {touch:?}"
    );
    let err = rotation_fails(&*store, &old, 1, &user).await;
    assert!(matches!(err, StoreError::NotFound), "rotation: {err:?}");
    assert_eq!(&must_load(&*store, &new).await.data[..], b"n");
}

/// Deleting a moved key ends the session where it moved to, following
/// every move: a logout that raced two rotations still logs out.
pub async fn delete_of_a_moved_key_ends_the_session(h: Harness) {
    let store = h.store().await;
    let user = h.user("chain");
    let (a, b, c) = (h.key(), h.key(), h.key());
    store.create(&a, &live(Some(&user), b"a")).await.unwrap();
    store
        .create_with(&b, &live(Some(&user), b"b"), &moving(&a, 1))
        .await
        .unwrap();
    store
        .create_with(&c, &live(Some(&user), b"c"), &moving(&b, 1))
        .await
        .unwrap();
    store.delete(&a).await.unwrap();
    for k in [&a, &b, &c] {
        assert!(!loads(&*store, k).await, "a session survived its logout");
    }
    assert!(listed(&*store, &user).await.is_empty());
}

/// `RejectNew` at the limit is `UserLimitReached` and writes nothing.
pub async fn reject_new_refuses_at_the_limit(h: Harness) {
    let store = h.store().await;
    let user = h.user("rejfull");
    let mut keys = Vec::new();
    for _ in 0..2 {
        let k = h.key();
        store
            .create_with(
                &k,
                &live(Some(&user), b"x"),
                &with_limit(2, LimitStrategy::RejectNew),
            )
            .await
            .unwrap();
        keys.push(k);
    }
    let refused = h.key();
    let err = store
        .create_with(
            &refused,
            &live(Some(&user), b"x"),
            &with_limit(2, LimitStrategy::RejectNew),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::UserLimitReached { max: 2 }),
        "got {err:?}"
    );
    assert!(!loads(&*store, &refused).await);
    assert_eq!(listed(&*store, &user).await, sorted(keys));
}

/// `RejectNew` counts only the user's live sessions: not the record being
/// rotated, not expired ones, not other users' or anonymous ones.
pub async fn reject_new_counts_only_the_users_other_live_sessions(h: Harness) {
    let store = h.store().await;
    let (user, other) = (h.user("rejcount"), h.user("rejother"));
    let short = h.key();
    store
        .create(&short, &record(Some(&user), b"s", 300, HOUR))
        .await
        .unwrap();
    for _ in 0..2 {
        store
            .create(&h.key(), &live(Some(&other), b"o"))
            .await
            .unwrap();
        store.create(&h.key(), &live(None, b"anon")).await.unwrap();
    }
    sleep_ms(1_000).await;
    let first = h.key();
    store
        .create_with(
            &first,
            &live(Some(&user), b"1"),
            &with_limit(1, LimitStrategy::RejectNew),
        )
        .await
        .expect("an expired session or other users' sessions counted against the limit");
    // Re-login on the one live session: it is replaced, not counted.
    let second = h.key();
    let options = moving(&first, 1).with_limit(limit(1, LimitStrategy::RejectNew));
    store
        .create_with(&second, &live(Some(&user), b"2"), &options)
        .await
        .expect("the rotated session counted against the limit");
    assert_eq!(listed(&*store, &user).await, vec![second]);
}

/// `EvictOldest` keeps the newest `max` by creation time and deletes the
/// rest, index entries included.
pub async fn evict_oldest_keeps_the_newest(h: Harness) {
    let store = h.store().await;
    let user = h.user("evnew");
    let mut old = Vec::new();
    for ago in [3_000, 1_000, 2_000] {
        let k = h.key();
        store
            .create(&k, &created_ms_ago(live(Some(&user), b"o"), ago))
            .await
            .unwrap();
        old.push(k);
    }
    let new = h.key();
    let created = store
        .create_with(
            &new,
            &live(Some(&user), b"n"),
            &with_limit(2, LimitStrategy::EvictOldest),
        )
        .await
        .unwrap();
    assert_eq!(
        sorted(created.evicted),
        sorted(vec![old[0].clone(), old[2].clone()])
    );
    assert!(!loads(&*store, &old[0]).await && !loads(&*store, &old[2]).await);
    assert!(loads(&*store, &old[1]).await && loads(&*store, &new).await);
    assert_eq!(
        listed(&*store, &user).await,
        sorted(vec![old[1].clone(), new])
    );
}

/// Equal creation times are ordered by storage key ([`newest_first`]), and
/// a new record that is not among the newest `max` is not stored.
pub async fn evict_oldest_breaks_ties_by_key(h: Harness) {
    let store = h.store().await;
    let user = h.user("evtie");
    let base = live(Some(&user), b"t");
    let mut all = Vec::new();
    for _ in 0..3 {
        let k = h.key();
        store.create(&k, &base).await.unwrap();
        all.push(k);
    }
    let new = h.key();
    all.push(new.clone());
    let created = store
        .create_with(&new, &base, &with_limit(2, LimitStrategy::EvictOldest))
        .await
        .unwrap();
    all.sort_by(|a, b| newest_first((base.created_at, a), (base.created_at, b)));
    assert_eq!(sorted(created.evicted.clone()), sorted(all[2..].to_vec()));
    assert_eq!(listed(&*store, &user).await, sorted(all[..2].to_vec()));
    for k in &all[2..] {
        assert!(!loads(&*store, k).await, "an evicted session still loads");
    }
}

/// A new record older than every survivor is evicted at once: reported,
/// not stored.
pub async fn evict_oldest_does_not_store_an_older_new_record(h: Harness) {
    let store = h.store().await;
    let user = h.user("evolder");
    let kept = h.key();
    store.create(&kept, &live(Some(&user), b"k")).await.unwrap();
    let new = h.key();
    let created = store
        .create_with(
            &new,
            &created_ms_ago(live(Some(&user), b"n"), 10_000),
            &with_limit(1, LimitStrategy::EvictOldest),
        )
        .await
        .unwrap();
    assert_eq!(created.evicted, vec![new.clone()]);
    assert!(!loads(&*store, &new).await);
    assert_eq!(listed(&*store, &user).await, vec![kept]);
}

/// 32 concurrent logins of one user with 2 free places under `RejectNew`:
/// exactly 2 are admitted (at most 2 where the backend's lifecycle is only
/// ordered), every round.
pub async fn racing_logins_reject_new_admit_exactly_the_free_places(h: Harness) {
    let store = h.store().await;
    for round in 0..h.rounds() {
        let user = h.user(&format!("rej{round}"));
        store
            .create(&h.key(), &live(Some(&user), b"pre"))
            .await
            .unwrap();
        let results = race_all(
            (0..RACERS)
                .map(|_| {
                    let (store, user, key) = (store.clone(), user.clone(), h.key());
                    async move {
                        let r = store
                            .create_with(
                                &key,
                                &live(Some(&user), b"r"),
                                &with_limit(3, LimitStrategy::RejectNew),
                            )
                            .await;
                        (key, r)
                    }
                })
                .collect(),
        )
        .await;
        let mut admitted = Vec::new();
        for (key, r) in results {
            match r {
                Ok(_) => admitted.push(key),
                Err(StoreError::UserLimitReached { max: 3 }) => {}
                Err(e) => panic!("round {round}: unexpected error {e:?}"),
            }
        }
        if h.is_atomic() {
            assert_eq!(
                admitted.len(),
                2,
                "round {round}: admitted {}",
                admitted.len()
            );
        } else {
            assert!(
                admitted.len() <= 2,
                "round {round}: admitted {}",
                admitted.len()
            );
        }
        let live_now = listed(&*store, &user).await;
        assert_eq!(live_now.len(), 1 + admitted.len(), "round {round}");
        for k in &admitted {
            assert!(
                live_now.contains(k) && loads(&*store, k).await,
                "round {round}"
            );
        }
    }
}

/// 32 concurrent logins of one user under `EvictOldest` with limit 3: all
/// succeed, and afterwards exactly the newest 3 (by [`newest_first`]) are
/// live and listed; every other one is gone from loads and the list.
pub async fn racing_logins_evict_oldest_leave_exactly_max(h: Harness) {
    let store = h.store().await;
    for round in 0..h.rounds() {
        let user = h.user(&format!("ev{round}"));
        let mut all = Vec::new();
        for ago in [500, 400] {
            let (k, r) = (h.key(), created_ms_ago(live(Some(&user), b"pre"), ago));
            store.create(&k, &r).await.unwrap();
            all.push((r.created_at, k));
        }
        let racers: Vec<(StorageKey, SessionRecord)> = (0..RACERS)
            .map(|i| {
                (
                    h.key(),
                    created_ms_ago(live(Some(&user), b"r"), (i % 4) as u64),
                )
            })
            .collect();
        let results = race_all(
            racers
                .iter()
                .map(|(key, rec)| {
                    let (store, key, rec) = (store.clone(), key.clone(), rec.clone());
                    async move {
                        store
                            .create_with(&key, &rec, &with_limit(3, LimitStrategy::EvictOldest))
                            .await
                    }
                })
                .collect(),
        )
        .await;
        for r in results {
            r.unwrap_or_else(|e| panic!("round {round}: a login failed: {e:?}"));
        }
        all.extend(racers.iter().map(|(k, r)| (r.created_at, k.clone())));
        all.sort_by(|a, b| newest_first((a.0, &a.1), (b.0, &b.1)));
        let survivors: Vec<StorageKey> = all[..3].iter().map(|(_, k)| k.clone()).collect();
        assert_eq!(
            listed(&*store, &user).await,
            sorted(survivors.clone()),
            "round {round}"
        );
        for (_, k) in &all {
            assert_eq!(
                loads(&*store, k).await,
                survivors.contains(k),
                "round {round}"
            );
        }
    }
}

/// 16 concurrent rotations of one record: exactly one wins, the others get
/// `NotFound` or `Conflict`, and only the winner's key loads.
pub async fn racing_rotations_of_one_record_have_one_winner(h: Harness) {
    let store = h.store().await;
    for round in 0..h.rounds() {
        let user = h.user(&format!("rr{round}"));
        let old = h.key();
        store.create(&old, &live(Some(&user), b"o")).await.unwrap();
        let news: Vec<StorageKey> = (0..16).map(|_| h.key()).collect();
        let results = race_all(
            news.iter()
                .map(|new| {
                    let (store, old, new, user) =
                        (store.clone(), old.clone(), new.clone(), user.clone());
                    async move {
                        store
                            .create_with(&new, &live(Some(&user), b"n"), &moving(&old, 1))
                            .await
                    }
                })
                .collect(),
        )
        .await;
        let mut winners = Vec::new();
        for (new, r) in news.iter().zip(results) {
            match r {
                Ok(_) => winners.push(new.clone()),
                Err(StoreError::NotFound | StoreError::Conflict) => {}
                Err(e) => panic!("round {round}: unexpected error {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
        for new in &news {
            assert_eq!(
                loads(&*store, new).await,
                winners.contains(new),
                "round {round}"
            );
        }
        assert_eq!(listed(&*store, &user).await, winners, "round {round}");
    }
}

/// A rotation racing an update of the same record at the same version: at
/// most one of them succeeds, so the update is never lost under the moved
/// record; if the update won, the old key holds its data.
pub async fn rotation_racing_update_never_loses_the_update(h: Harness) {
    let store = h.store().await;
    for round in 0..h.rounds() {
        let user = h.user(&format!("ru{round}"));
        let (old, new) = (h.key(), h.key());
        let first = live(Some(&user), b"o");
        store.create(&old, &first).await.unwrap();
        let (rotated, updated) = race(
            {
                let (store, old, new, user) =
                    (store.clone(), old.clone(), new.clone(), user.clone());
                async move {
                    store
                        .create_with(&new, &live(Some(&user), b"n"), &moving(&old, 1))
                        .await
                }
            },
            {
                let (store, old) = (store.clone(), old.clone());
                let next = versioned(
                    SessionRecord {
                        data: Bytes::from_static(b"u"),
                        ..first.clone()
                    },
                    2,
                );
                async move { store.update(&old, 1, &next).await }
            },
        )
        .await;
        match (&rotated, &updated) {
            (Ok(_), Err(StoreError::NotFound)) => {
                assert!(loads(&*store, &new).await, "round {round}");
            }
            (Err(StoreError::Conflict), Ok(())) => {
                assert_eq!(
                    &must_load(&*store, &old).await.data[..],
                    b"u",
                    "round {round}"
                );
                assert!(!loads(&*store, &new).await, "round {round}");
            }
            other => panic!("round {round}: rotation and update both decided: {other:?}"),
        }
    }
}

/// A rotation racing `delete_user` (log out everywhere): whichever comes
/// first, nothing of the session is live afterwards.
pub async fn rotation_racing_delete_user_leaves_nothing_live(h: Harness) {
    let store = h.store().await;
    for round in 0..h.rounds() {
        let user = h.user(&format!("rdu{round}"));
        let (old, new) = (h.key(), h.key());
        store.create(&old, &live(Some(&user), b"o")).await.unwrap();
        let (rotated, deleted) = race(
            {
                let (store, old, new, user) =
                    (store.clone(), old.clone(), new.clone(), user.clone());
                async move {
                    store
                        .create_with(&new, &live(Some(&user), b"n"), &moving(&old, 1))
                        .await
                }
            },
            {
                let (store, old, user) = (store.clone(), old.clone(), user.clone());
                let _ = (&old, &user);
                async move { store.delete_user(&user).await }
            },
        )
        .await;
        assert!(
            matches!(rotated, Ok(_) | Err(StoreError::NotFound)),
            "round {round}: {rotated:?}"
        );
        assert_eq!(
            deleted.unwrap(),
            1,
            "round {round}: delete_user missed the session"
        );
        assert!(
            !loads(&*store, &old).await && !loads(&*store, &new).await,
            "round {round}: a session survived"
        );
        assert!(listed(&*store, &user).await.is_empty(), "round {round}");
    }
}

/// Several "log out everywhere" calls for one user at once (a double
/// click, two devices): every session ends, each is counted by exactly one
/// call, and on an atomic store one call counts them all (the others find
/// nothing left), as in some order of the calls.
pub async fn racing_delete_users_count_each_session_once(h: Harness) {
    const SESSIONS: u64 = 6;
    const CALLS: usize = 4;
    let store = h.store().await;
    for round in 0..h.rounds() {
        let user = h.user(&format!("rdd{round}"));
        let keys: Vec<StorageKey> = (0..SESSIONS).map(|_| h.key()).collect();
        for k in &keys {
            store.create(k, &live(Some(&user), b"s")).await.unwrap();
        }
        let calls = (0..CALLS)
            .map(|_| {
                let (store, user) = (store.clone(), user.clone());
                async move { store.delete_user(&user).await }
            })
            .collect();
        let mut counts: Vec<u64> = race_all(calls)
            .await
            .into_iter()
            .map(|r| r.expect("delete_user"))
            .collect();
        assert_eq!(
            counts.iter().sum::<u64>(),
            SESSIONS,
            "round {round}: each session must be counted by exactly one call: {counts:?}"
        );
        if h.is_atomic() {
            counts.sort_unstable();
            assert_eq!(
                counts,
                [0, 0, 0, SESSIONS],
                "round {round}: no order of the calls splits the count"
            );
        }
        for k in &keys {
            assert!(
                !loads(&*store, k).await,
                "round {round}: a session survived"
            );
        }
        assert!(listed(&*store, &user).await.is_empty(), "round {round}");
    }
}

/// A rotation racing a `delete` of the old key (logout, "end that
/// session", an eviction): nothing of the session is live afterwards.
pub async fn rotation_racing_delete_leaves_nothing_live(h: Harness) {
    let store = h.store().await;
    for round in 0..h.rounds() {
        let user = h.user(&format!("rd{round}"));
        let (old, new) = (h.key(), h.key());
        store.create(&old, &live(Some(&user), b"o")).await.unwrap();
        let (rotated, deleted) = race(
            {
                let (store, old, new, user) =
                    (store.clone(), old.clone(), new.clone(), user.clone());
                async move {
                    store
                        .create_with(&new, &live(Some(&user), b"n"), &moving(&old, 1))
                        .await
                }
            },
            {
                let (store, old, user) = (store.clone(), old.clone(), user.clone());
                let _ = (&old, &user);
                async move { store.delete(&old).await }
            },
        )
        .await;
        assert!(
            matches!(rotated, Ok(_) | Err(StoreError::NotFound)),
            "round {round}: {rotated:?}"
        );
        deleted.unwrap();
        assert!(
            !loads(&*store, &old).await && !loads(&*store, &new).await,
            "round {round}: a session survived"
        );
        assert!(listed(&*store, &user).await.is_empty(), "round {round}");
    }
}

/// Logins racing `delete_user`: afterwards every session of the user that
/// still loads is in the user's index, so a second `delete_user` ends it.
pub async fn create_racing_delete_user_leaves_every_session_indexed(h: Harness) {
    let store = h.store().await;
    for round in 0..h.rounds() {
        let user = h.user(&format!("cdu{round}"));
        for _ in 0..4 {
            store
                .create(&h.key(), &live(Some(&user), b"pre"))
                .await
                .unwrap();
        }
        let keys: Vec<StorageKey> = (0..16).map(|_| h.key()).collect();
        let creates = race_all(
            keys.iter()
                .map(|k| {
                    let (store, user, k) = (store.clone(), user.clone(), k.clone());
                    async move {
                        store
                            .create_with(&k, &live(Some(&user), b"c"), &CreateOptions::default())
                            .await
                    }
                })
                .collect(),
        );
        let delete_user = {
            let (store, user) = (store.clone(), user.clone());
            async move { store.delete_user(&user).await }
        };
        let (created, deleted) = race(creates, delete_user).await;
        deleted.unwrap();
        for r in created {
            r.unwrap_or_else(|e| panic!("round {round}: create failed: {e:?}"));
        }
        let index: HashSet<StorageKey> = listed(&*store, &user).await.into_iter().collect();
        for k in &keys {
            if loads(&*store, k).await {
                assert!(
                    index.contains(k),
                    "round {round}: a live session is missing from the index"
                );
            }
        }
        store.delete_user(&user).await.unwrap();
        for k in &keys {
            assert!(
                !loads(&*store, k).await,
                "round {round}: a session outlived delete_user"
            );
        }
    }
}

pub(super) fn slow_manager(
    h: &Harness,
    store: Arc<dyn SessionStore>,
    limit: Option<UserSessionLimit>,
) -> SessionManager {
    let slow: Arc<dyn SessionStore> = Arc::new(SlowStore::new(store, h.slow_delay()));
    let mut config = SessionConfig::builder();
    if let Some(l) = limit {
        config = config.max_sessions_per_user(l.max, l.strategy);
    }
    SessionManager::builder_arc(slow)
        .config(config.build().expect("valid config"))
        .build()
}

/// Through the manager over a slow store: 32 concurrent `start`, `login`,
/// `commit` of one user with limit 2 under `RejectNew` admit exactly 2
/// (at most 2 where the lifecycle is only ordered); the rest get
/// `TooManySessions` and no cookie.
pub async fn manager_racing_logins_respect_reject_new(h: Harness) {
    let store = h.store().await;
    let manager = slow_manager(&h, store.clone(), Some(limit(2, LimitStrategy::RejectNew)));
    for round in 0..h.rounds() {
        let user = h.user(&format!("mrej{round}"));
        let results = race_all(
            (0..RACERS)
                .map(|_| {
                    let (manager, user) = (manager.clone(), user.clone());
                    async move {
                        let mut s = manager.start();
                        let r = manager.login(&mut s, &user).await;
                        if r.is_ok() {
                            manager.commit(&mut s).await.expect("commit after login");
                        }
                        (r, manager.response_cookie(&s).is_some())
                    }
                })
                .collect(),
        )
        .await;
        let mut admitted = 0;
        for (r, cookie) in results {
            match r {
                Ok(()) => {
                    assert!(cookie, "round {round}: a login without a cookie");
                    admitted += 1;
                }
                Err(SessionError::TooManySessions { max: 2 }) => {
                    assert!(!cookie, "round {round}: a refused login set a cookie");
                }
                Err(e) => panic!("round {round}: unexpected error {e:?}"),
            }
        }
        if h.is_atomic() {
            assert_eq!(admitted, 2, "round {round}");
        } else {
            assert!(admitted <= 2, "round {round}: admitted {admitted}");
        }
        assert_eq!(
            listed(&*store, &user).await.len(),
            admitted,
            "round {round}"
        );
    }
}

/// Through the manager over a slow store: 32 concurrent logins under
/// `EvictOldest` with limit 2 all succeed; afterwards exactly 2 sessions
/// are live, the survivors' cookies keep working and every other one is
/// gone.
pub async fn manager_racing_logins_evict_oldest_keep_max(h: Harness) {
    let store = h.store().await;
    let manager = slow_manager(
        &h,
        store.clone(),
        Some(limit(2, LimitStrategy::EvictOldest)),
    );
    for round in 0..h.rounds() {
        let user = h.user(&format!("mev{round}"));
        let sessions = race_all(
            (0..RACERS)
                .map(|_| {
                    let (manager, user) = (manager.clone(), user.clone());
                    async move {
                        let mut s = manager.start();
                        manager
                            .login(&mut s, &user)
                            .await
                            .expect("EvictOldest admits every login");
                        manager.commit(&mut s).await.expect("commit after login");
                        s
                    }
                })
                .collect(),
        )
        .await;
        let index = listed(&*store, &user).await;
        assert_eq!(
            index.len(),
            2,
            "round {round}: {} live sessions",
            index.len()
        );
        let mut alive = 0;
        for s in &sessions {
            let loaded = manager.load(s.id()).await.unwrap();
            assert_eq!(
                loaded.is_some(),
                index.contains(s.storage_key()),
                "round {round}"
            );
            alive += usize::from(loaded.is_some());
        }
        assert_eq!(alive, 2, "round {round}");
    }
}

/// How a racing request ends the session in [`rotation_race`].
#[derive(Debug, Clone, Copy)]
enum Ending {
    Logout,
    LogoutEverywhere,
    EndSession,
}

/// Request A loaded the session and rotates it while request B, which
/// loaded it too, ends it. Whatever the interleaving, the session is ended
/// afterwards: neither ID loads, the user has no session, and a rotation
/// that lost the race fails with `SessionEnded` and sets no session cookie.
async fn rotation_race(h: Harness, ending: Ending) {
    let store = h.store().await;
    let manager = slow_manager(&h, store.clone(), None);
    for round in 0..h.rounds() {
        let user = h.user(&format!("mrot{round}"));
        let mut s = manager.start();
        manager.login(&mut s, &user).await.unwrap();
        manager.commit(&mut s).await.unwrap();
        let id = s.id().clone();
        let mut a = manager.load(&id).await.unwrap().expect("loads");
        let mut b = manager.load(&id).await.unwrap().expect("loads");
        let rotate = {
            let manager = manager.clone();
            async move {
                let r = manager.rotate(&mut a).await;
                if r.is_ok() {
                    a.insert("after", &round).unwrap();
                    manager.commit(&mut a).await.unwrap();
                }
                (r, a)
            }
        };
        let end = {
            let manager = manager.clone();
            async move {
                match ending {
                    Ending::Logout => manager.logout(&mut b).await.map(drop),
                    Ending::LogoutEverywhere => manager.logout_everywhere(&mut b).await.map(drop),
                    Ending::EndSession => manager.end_session(b.storage_key()).await,
                }
            }
        };
        let ((rotated, a), ended) = race(rotate, end).await;
        ended.unwrap();
        match rotated {
            Ok(()) => {}
            Err(SessionError::SessionEnded) => {
                let cookie = manager.response_cookie(&a);
                assert!(
                    cookie.is_none_or(|c| c.value().is_empty()),
                    "round {round}: a failed rotation set a session cookie"
                );
            }
            Err(e) => panic!("round {round}: unexpected error {e:?}"),
        }
        assert!(
            manager.load(&id).await.unwrap().is_none(),
            "round {round}: old id loads"
        );
        assert!(
            manager.load(a.id()).await.unwrap().is_none(),
            "round {round} ({ending:?}): the rotated session outlived its ending"
        );
        assert!(listed(&*store, &user).await.is_empty(), "round {round}");
    }
}

/// `rotate` racing `logout` (see `rotation_race`).
pub async fn manager_rotate_racing_logout_ends_the_session(h: Harness) {
    rotation_race(h, Ending::Logout).await;
}

/// `rotate` racing `logout_everywhere` (see `rotation_race`).
pub async fn manager_rotate_racing_logout_everywhere_ends_the_session(h: Harness) {
    rotation_race(h, Ending::LogoutEverywhere).await;
}

/// `rotate` racing `end_session` by storage key (see `rotation_race`).
pub async fn manager_rotate_racing_end_session_ends_the_session(h: Harness) {
    rotation_race(h, Ending::EndSession).await;
}

/// `rotate` and `login` of a session whose idle deadline passed while the
/// request ran fail with `SessionEnded`, set no session cookie, and bring
/// nothing back.
pub async fn manager_rotate_and_login_after_expiry_are_session_ended(h: Harness) {
    let store = h.store().await;
    let config = SessionConfig::builder()
        .idle_timeout(Duration::from_millis(400))
        .touch_interval(Duration::ZERO)
        .build()
        .unwrap();
    let manager = SessionManager::builder_arc(store.clone())
        .config(config)
        .build();
    let user = h.user("mexp");
    let mut s = manager.start();
    manager.login(&mut s, &user).await.unwrap();
    let mut anon = manager.start();
    anon.insert("cart", &1).unwrap();
    manager.commit(&mut anon).await.unwrap();
    let mut a = manager.load(s.id()).await.unwrap().expect("loads");
    let mut b = manager.load(anon.id()).await.unwrap().expect("loads");
    sleep_ms(1_000).await;
    let rotated = manager.rotate(&mut a).await;
    assert!(
        matches!(rotated, Err(SessionError::SessionEnded)),
        "rotate: {rotated:?}"
    );
    let logged_in = manager.login(&mut b, &user).await;
    assert!(
        matches!(logged_in, Err(SessionError::SessionEnded)),
        "login: {logged_in:?}"
    );
    for x in [&a, &b] {
        assert!(manager
            .response_cookie(x)
            .is_none_or(|c| c.value().is_empty()));
        assert!(manager.load(x.id()).await.unwrap().is_none());
    }
    assert!(listed(&*store, &user).await.is_empty());
}
