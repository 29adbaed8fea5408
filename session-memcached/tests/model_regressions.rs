//! Sequences the model-based conformance case found against this store
//! (`store_agrees_with_the_model`), replayed with fixed keys and times so
//! that each fault is checked on every run (`MEMCACHED_URL`).

mod common;

use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::Bytes;
use session_core::store::CreateOptions;
use session_core::{
    LimitStrategy, SessionRecord, SessionStore, StorageKey, StoreError, Timestamp, UserSessionLimit,
};
use session_memcached::{MemcachedConfig, MemcachedStore};

const HOUR_MS: i64 = 3_600_000;

async fn store(case: &str) -> MemcachedStore {
    let url = common::url();
    let ns = format!("mr_{case}_{}_{}", std::process::id(), nanos());
    common::store(&[&url], &ns)
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A key of 64 hex characters made of `c`: keys made of larger digits
/// sort later, which decides ties of the eviction order.
fn key(c: char) -> StorageKey {
    StorageKey::from_stored(&c.to_string().repeat(64))
}

/// A live record of `user` created `age_s` seconds before `base`.
fn rec(base: Timestamp, user: Option<&str>, data: u8, age_s: i64) -> SessionRecord {
    let at = |ms: i64| Timestamp::from_unix_millis(base.as_unix_millis() + ms);
    let created = at(-1_000 * age_s - 10_000);
    SessionRecord::new(
        Bytes::from(vec![data]),
        user.map(str::to_owned),
        created,
        at(HOUR_MS),
        at(3 * HOUR_MS),
    )
    .with_last_access(created)
    .with_version(1)
}

fn limit(max: usize, strategy: LimitStrategy) -> CreateOptions {
    CreateOptions::default().with_limit(UserSessionLimit {
        max: NonZeroUsize::new(max).unwrap(),
        strategy,
    })
}

fn evict(max: usize) -> CreateOptions {
    limit(max, LimitStrategy::EvictOldest)
}

async fn listed(store: &MemcachedStore, user: &str) -> Vec<StorageKey> {
    let mut keys: Vec<StorageKey> = store
        .list_user_sessions(user)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    keys.sort();
    keys
}

/// Found as: `create k2`, `create_with k4` (limit 1, evict), `create_with
/// k1` (limit 1, evict) reported `Evicted([k2, k4])`. The first eviction
/// left k2's index entry behind with no record, which later decisions
/// took for a login still in flight: they counted it and reported it as
/// evicted again. The same happened to sessions ended by `delete` and
/// `delete_user` while their entries were still indexed.
#[tokio::test]
async fn an_ended_session_is_never_counted_nor_reported_again() {
    let s = store("evicted").await;
    let base = Timestamp::now();
    let u = "user-evicted";
    s.create(&key('2'), &rec(base, Some(u), 1, 3))
        .await
        .unwrap();
    let created = s
        .create_with(&key('4'), &rec(base, Some(u), 2, 2), &evict(1))
        .await
        .unwrap();
    assert_eq!(created.evicted, [key('2')]);
    let created = s
        .create_with(&key('1'), &rec(base, Some(u), 3, 1), &evict(1))
        .await
        .unwrap();
    assert_eq!(created.evicted, [key('4')], "only the live session ends");
    assert_eq!(listed(&s, u).await, [key('1')]);

    // Only the live session counts towards a limit that rejects.
    s.create_with(
        &key('5'),
        &rec(base, Some(u), 4, 0),
        &limit(2, LimitStrategy::RejectNew),
    )
    .await
    .unwrap();
    let err = s
        .create_with(
            &key('6'),
            &rec(base, Some(u), 5, 0),
            &limit(2, LimitStrategy::RejectNew),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::UserLimitReached { max: 2 }),
        "{err:?}"
    );

    // A deleted session neither counts nor is evicted again.
    s.delete(&key('5')).await.unwrap();
    let created = s
        .create_with(&key('6'), &rec(base, Some(u), 6, 0), &evict(2))
        .await
        .unwrap();
    assert!(created.evicted.is_empty(), "{:?}", created.evicted);
    assert_eq!(listed(&s, u).await, [key('1'), key('6')]);
    assert_eq!(s.delete_user(u).await.unwrap(), 2);

    // Nor does one that `delete_user` ended.
    s.create(&key('7'), &rec(base, Some(u), 7, 1))
        .await
        .unwrap();
    assert_eq!(s.delete_user(u).await.unwrap(), 1);
    let created = s
        .create_with(&key('8'), &rec(base, Some(u), 8, 0), &evict(1))
        .await
        .unwrap();
    assert!(created.evicted.is_empty(), "{:?}", created.evicted);
    assert_eq!(s.delete_user(u).await.unwrap(), 1);
}

/// Found as: `[create_with k4 (limit 2, evict), create k4 of another
/// user]` at once, then the limited login's victim no longer loaded
/// although that login had failed with `AlreadyExists`. It ended its
/// victims before writing its record and only then found the key taken.
/// Now the login holds its key (a reservation) before it ends anyone or
/// moves an old key, and others wait for that to settle.
#[tokio::test]
async fn a_login_that_loses_its_key_to_a_racing_create_ends_nobody() {
    let s = store("race_key").await;
    let u = "user-race";
    for round in 0..40u8 {
        let base = Timestamp::now();
        let victim = StorageKey::from_stored(&format!("{round:02x}").repeat(32));
        let contested = StorageKey::from_stored(&format!("{:02x}", 200 - round).repeat(32));
        s.create(&victim, &rec(base, Some(u), 1, 3)).await.unwrap();
        let login = {
            let (s, k) = (s.clone(), contested.clone());
            tokio::spawn(async move {
                s.create_with(&k, &rec(base, Some(u), 2, 1), &evict(1))
                    .await
            })
        };
        let other = {
            let (s, k) = (s.clone(), contested.clone());
            tokio::spawn(async move { s.create(&k, &rec(base, Some("other"), 3, 1)).await })
        };
        let (login, other) = (login.await.unwrap(), other.await.unwrap());
        let holder = s.load(&contested).await.unwrap().unwrap();
        match login {
            Ok(created) => {
                assert_eq!(
                    created.evicted,
                    std::slice::from_ref(&victim),
                    "round {round}"
                );
                assert!(
                    matches!(other, Err(StoreError::AlreadyExists)),
                    "round {round}"
                );
                assert_eq!(holder.user_id.as_deref(), Some(u));
                assert!(s.load(&victim).await.unwrap().is_none(), "round {round}");
            }
            Err(StoreError::AlreadyExists) => {
                other.unwrap();
                assert_eq!(holder.user_id.as_deref(), Some("other"));
                assert!(
                    s.load(&victim).await.unwrap().is_some(),
                    "round {round}: the failed login ended its victim"
                );
                // Nor does its decision hide the victim from the index.
                assert_eq!(
                    listed(&s, u).await,
                    std::slice::from_ref(&victim),
                    "round {round}"
                );
            }
            Err(e) => panic!("round {round}: {e:?}"),
        }
        s.delete_user(u).await.unwrap();
        s.delete(&contested).await.unwrap();
    }
}

/// The same race with a rotation: a rotation that loses its new key to a
/// racing create fails and leaves the old session where it was.
#[tokio::test]
async fn a_rotation_that_loses_its_key_to_a_racing_create_keeps_the_session() {
    let s = store("race_rotation").await;
    let u = "user-rotation";
    for round in 0..40u8 {
        let base = Timestamp::now();
        let old = StorageKey::from_stored(&format!("{round:02x}").repeat(32));
        let contested = StorageKey::from_stored(&format!("{:02x}", 200 - round).repeat(32));
        s.create(&old, &rec(base, Some(u), 1, 3)).await.unwrap();
        let rotation = {
            let (s, k, o) = (s.clone(), contested.clone(), old.clone());
            tokio::spawn(async move {
                let options = CreateOptions::default().replacing(o, 1);
                s.create_with(&k, &rec(base, Some(u), 2, 3), &options).await
            })
        };
        let other = {
            let (s, k) = (s.clone(), contested.clone());
            tokio::spawn(async move { s.create(&k, &rec(base, None, 3, 1)).await })
        };
        let (rotation, other) = (rotation.await.unwrap(), other.await.unwrap());
        let holder = s.load(&contested).await.unwrap().unwrap();
        match rotation {
            Ok(_) => {
                assert!(
                    matches!(other, Err(StoreError::AlreadyExists)),
                    "round {round}"
                );
                assert_eq!(holder.data.as_ref(), [2]);
                assert!(s.load(&old).await.unwrap().is_none());
            }
            Err(StoreError::AlreadyExists) => {
                other.unwrap();
                assert_eq!(holder.data.as_ref(), [3]);
                let kept = s.load(&old).await.unwrap();
                assert!(
                    kept.is_some(),
                    "round {round}: the failed rotation moved the session"
                );
                // `delete` of the old key ends only its own session.
                s.delete(&old).await.unwrap();
                assert!(s.load(&contested).await.unwrap().is_some(), "round {round}");
            }
            Err(e) => panic!("round {round}: {e:?}"),
        }
        s.delete_user(u).await.unwrap();
        s.delete(&contested).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Found as: rotate k2 to k1, `delete k2` (ends k1), create k1 again,
/// `delete k2` again: the second delete followed the old move marker and
/// ended the new, unrelated session under k1. A delete that follows a
/// move now ends the marker too.
#[tokio::test]
async fn a_followed_move_is_not_followed_again() {
    let s = store("moved_twice").await;
    let base = Timestamp::now();
    for user in [None, Some("user-moved")] {
        let (old, new) = (key('a'), key('b'));
        s.create(&old, &rec(base, None, 1, 0)).await.unwrap();
        let rotation = CreateOptions::default().replacing(old.clone(), 1);
        s.create_with(&new, &rec(base, user, 2, 0), &rotation)
            .await
            .unwrap();
        s.delete(&old).await.unwrap();
        assert!(s.load(&new).await.unwrap().is_none());
        s.create(&new, &rec(base, user, 3, 0)).await.unwrap();
        s.delete(&old).await.unwrap();
        let kept = s.load(&new).await.unwrap();
        assert_eq!(
            kept.map(|r| r.data),
            Some(Bytes::from_static(&[3])),
            "{user:?}"
        );
        s.delete(&new).await.unwrap();
    }
}

/// Found as: a rotation of anonymous k1 to k5 for u2, then `create k1`
/// for u2, then a login of u2 under `RejectNew` 3 (u2 has k2, k5, k1):
/// admitted. The finished rotation's entry still named k1 as the key it
/// replaced, so k5 and the new k1 counted as one session.
#[tokio::test]
async fn a_finished_rotation_does_not_merge_its_old_key_with_a_new_session() {
    let s = store("stale_link").await;
    let base = Timestamp::now();
    let u = "user-link";
    s.create(&key('2'), &rec(base, Some(u), 1, 0))
        .await
        .unwrap();
    s.create(&key('1'), &rec(base, None, 2, 0)).await.unwrap();
    let rotation = CreateOptions::default().replacing(key('1'), 1);
    s.create_with(&key('5'), &rec(base, Some(u), 3, 0), &rotation)
        .await
        .unwrap();
    s.create(&key('1'), &rec(base, Some(u), 4, 0))
        .await
        .unwrap();
    assert_eq!(listed(&s, u).await, [key('1'), key('2'), key('5')]);
    let err = s
        .create_with(
            &key('3'),
            &rec(base, Some(u), 5, 0),
            &limit(3, LimitStrategy::RejectNew),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::UserLimitReached { max: 3 }),
        "{err:?}"
    );
    assert_eq!(s.delete_user(u).await.unwrap(), 3);
}

/// Found as `[ListUserSessions u1, Create k1 (u1), DeleteUser u1]` returning
/// `[Listed([k1]), Done, Count(2)]`, and `[create_with k2 (limit 1,
/// evict), DeleteUser, ...]` returning `[Evicted([k3]), Count(2)]`:
/// `delete_user` ended sessions over several rounds and added up what it
/// ended in each, so it counted sessions a racing login had evicted, and
/// did not count a login it cancelled although that login succeeded.
/// Now it closes the index first (one decision, like a login's) and
/// counts the sessions of that version.
#[tokio::test]
async fn delete_user_counts_the_sessions_of_one_moment() {
    let s = store("count").await;
    let u = "user-count";
    for round in 0..30u8 {
        let base = Timestamp::now();
        let (older, newer) = (key('3'), key('2'));
        s.create(&older, &rec(base, Some(u), 1, 1)).await.unwrap();
        let login = {
            let s = s.clone();
            tokio::spawn(async move {
                s.create_with(&newer, &rec(base, Some(u), 2, 0), &evict(1))
                    .await
            })
        };
        let list = {
            let s = s.clone();
            tokio::spawn(async move { s.list_user_sessions(u).await })
        };
        let delete_user = {
            let s = s.clone();
            tokio::spawn(async move { s.delete_user(u).await })
        };
        let login = login.await.unwrap().unwrap();
        let listed: Vec<StorageKey> = list
            .await
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|s| s.key)
            .collect();
        let count = delete_user.await.unwrap().unwrap();
        // Either the login came first (it evicted `older`, and delete_user
        // ended the login's session) or delete_user did (it ended `older`,
        // and the login evicted nothing): one session either way.
        assert_eq!(count, 1, "round {round}: {login:?}, listed {listed:?}");
        let login_first = login.evicted == [key('3')];
        assert!(login_first || login.evicted.is_empty(), "round {round}");
        assert!(listed.len() <= 1, "round {round}: listed {listed:?}");
        if login_first {
            assert!(s.load(&key('2')).await.unwrap().is_none(), "round {round}");
        } else {
            assert!(s.load(&key('2')).await.unwrap().is_some(), "round {round}");
        }
        assert!(s.load(&key('3')).await.unwrap().is_none(), "round {round}");
        s.delete_user(u).await.unwrap();
    }
}

/// Two `delete_user` of one user at once: one counts the sessions, the
/// other finds them ended (it used to fail, out of retries).
#[tokio::test]
async fn racing_delete_users_split_the_count() {
    let s = store("two_deletes").await;
    let u = "user-two-deletes";
    for round in 0..30u8 {
        let base = Timestamp::now();
        s.create(&key('4'), &rec(base, Some(u), 1, 0))
            .await
            .unwrap();
        s.create(&key('5'), &rec(base, Some(u), 2, 0))
            .await
            .unwrap();
        let a = {
            let s = s.clone();
            tokio::spawn(async move { s.delete_user(u).await })
        };
        let b = {
            let s = s.clone();
            tokio::spawn(async move { s.delete_user(u).await })
        };
        let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
        assert_eq!(a + b, 2, "round {round}: {a} and {b}");
        assert!(a == 0 || b == 0, "round {round}: {a} and {b}");
        assert!(listed(&s, u).await.is_empty());
    }
}

/// Found as `[create_with k4 (limit 1, evict), create_with k5 (limit 1,
/// evict)]` of one user who had k0: both reported k0 as evicted. A login
/// that lost the index race re-read the index without the first login's
/// eviction of k0, so it counted k0 again.
#[tokio::test]
async fn racing_evicting_logins_each_end_their_own_victims() {
    let s = store("two_logins").await;
    let u = "user-two-logins";
    for round in 0..30u8 {
        let base = Timestamp::now();
        s.create(&key('0'), &rec(base, Some(u), 1, 2))
            .await
            .unwrap();
        let logins: Vec<_> = ['4', '5']
            .into_iter()
            .map(|c| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.create_with(&key(c), &rec(base, Some(u), 2, 1), &evict(1))
                        .await
                })
            })
            .collect();
        let mut reported = Vec::new();
        for login in logins {
            reported.extend(login.await.unwrap().unwrap().evicted);
        }
        reported.sort();
        // k0 goes first, then the smaller of the two (same creation time).
        assert_eq!(reported, [key('0'), key('4')], "round {round}");
        assert_eq!(listed(&s, u).await, [key('5')], "round {round}");
        s.delete_user(u).await.unwrap();
    }
}

/// Found as `create k3` (expired), then a login of u0 under a limit that
/// evicted the login itself (`Evicted([k3])`), then `create k3` failed
/// with `AlreadyExists` for good: the login had reserved the key, which
/// held something, and never gave it back.
#[tokio::test]
async fn a_login_evicted_at_once_leaves_its_key_free() {
    let s = store("evicted_at_once").await;
    let base = Timestamp::now();
    let u = "user-at-once";
    s.create(&key('0'), &rec(base, Some(u), 1, 0))
        .await
        .unwrap();
    let mut expired = rec(base, None, 2, 0);
    expired.idle_deadline = Timestamp::from_unix_millis(base.as_unix_millis() - HOUR_MS);
    s.create(&key('3'), &expired).await.unwrap();
    let created = s
        .create_with(&key('3'), &rec(base, Some(u), 3, 1), &evict(1))
        .await
        .unwrap();
    assert_eq!(created.evicted, [key('3')]);
    s.create(&key('3'), &rec(base, None, 4, 0)).await.unwrap();
    assert_eq!(listed(&s, u).await, [key('0')]);
}

/// Found as `[create_with k3 (u1), delete k3]` where k3 held an expired
/// record of u1: the delete ended the expired record and dropped every
/// entry of k3 from u1's index, the login's included, so its session was
/// live but never listed. Also `[Create k3 (expired), CreateWith k3]`
/// failing both. A creation now holds a key that holds anything with a
/// reservation before it indexes it, and a delete drops only dead entries.
#[tokio::test]
async fn a_login_over_a_dead_record_stays_indexed_whatever_races_it() {
    let s = store("over_dead").await;
    let u = "user-over-dead";
    for round in 0..30u8 {
        let base = Timestamp::now();
        let k = StorageKey::from_stored(&format!("{round:02x}").repeat(32));
        let mut expired = rec(base, Some(u), 1, 1);
        expired.idle_deadline = Timestamp::from_unix_millis(base.as_unix_millis() - HOUR_MS);
        s.create(&k, &expired).await.unwrap();
        let login = {
            let (s, k) = (s.clone(), k.clone());
            tokio::spawn(async move {
                s.create_with(&k, &rec(base, Some(u), 2, 2), &CreateOptions::default())
                    .await
            })
        };
        let other = {
            let (s, k) = (s.clone(), k.clone());
            tokio::spawn(async move {
                if round % 2 == 0 {
                    s.delete(&k).await
                } else {
                    s.create(&k, &expired).await.map(drop)
                }
            })
        };
        login.await.unwrap().unwrap();
        let other = other.await.unwrap();
        let loaded = s.load(&k).await.unwrap();
        match other {
            Ok(()) => {}
            // The login's record was there first.
            Err(StoreError::AlreadyExists) if round % 2 == 1 && loaded.is_some() => {}
            Err(e) => panic!("round {round}: {e:?}"),
        }
        match loaded {
            Some(r) => {
                assert_eq!(r.data.as_ref(), [2]);
                assert_eq!(
                    listed(&s, u).await,
                    std::slice::from_ref(&k),
                    "round {round}"
                );
            }
            None => assert!(listed(&s, u).await.is_empty(), "round {round}"),
        }
        s.delete_user(u).await.unwrap();
    }
}

/// Found as: rotate anonymous k2 to k3 (u1), a login of u1 under k2
/// refused with `UserLimitReached`, `delete k2`, then `list_user_sessions u1` still
/// listed k3. The refused login had reserved k2 (it held the move marker)
/// and, giving it back, deleted the marker instead of restoring it, so the
/// delete no longer reached k3.
#[tokio::test]
async fn a_refused_login_puts_back_the_marker_it_held() {
    let s = store("restore").await;
    let base = Timestamp::now();
    let u = "user-restore";
    s.create(&key('2'), &rec(base, None, 1, 0)).await.unwrap();
    let rotation = CreateOptions::default().replacing(key('2'), 1);
    s.create_with(&key('3'), &rec(base, Some(u), 2, 0), &rotation)
        .await
        .unwrap();
    let err = s
        .create_with(
            &key('2'),
            &rec(base, Some(u), 3, 0),
            &limit(1, LimitStrategy::RejectNew),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::UserLimitReached { max: 1 }),
        "{err:?}"
    );
    s.delete(&key('2')).await.unwrap();
    assert!(s.load(&key('3')).await.unwrap().is_none());
    assert!(listed(&s, u).await.is_empty());
}

/// Found as `[Delete k3, ListUserSessions u2, DeleteUser u2]` returning
/// `[Done, Listed([k2]), Count(2)]`: the listing read the index before
/// `delete_user` closed it and the records while it was ending them, so it
/// listed half of them. A listing now checks that the index is unchanged
/// after reading the records, and reads again otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listing_racing_delete_user_sees_all_or_nothing() {
    // Where it was found: the async transport over two servers.
    let (a, b) = (common::url(), common::url2());
    let ns = format!("mr_list_race_{}_{}", std::process::id(), nanos());
    let config = MemcachedConfig::new([a, b])
        .unwrap()
        .with_namespace(&ns)
        .unwrap();
    let s = MemcachedStore::new_async(config).await.unwrap();
    let u = "user-list-race";
    let keys: Vec<StorageKey> = "0123456789ab".chars().map(key).collect();
    for round in 0..60u8 {
        let base = Timestamp::now();
        for (i, k) in keys.iter().enumerate() {
            let data = u8::try_from(i).unwrap();
            s.create(k, &rec(base, Some(u), data, 0)).await.unwrap();
        }
        let delete_user = {
            let s = s.clone();
            tokio::spawn(async move { s.delete_user(u).await })
        };
        let lists: Vec<_> = (0..3)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { listed(&s, u).await })
            })
            .collect();
        let count = delete_user.await.unwrap().unwrap();
        assert_eq!(count, 12, "round {round}");
        for list in lists {
            let list = list.await.unwrap();
            assert!(
                list.is_empty() || list == keys,
                "round {round}: listed {list:?}"
            );
        }
    }
}
