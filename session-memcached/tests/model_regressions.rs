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
use session_memcached::MemcachedStore;

const HOUR_MS: i64 = 3_600_000;

async fn store(case: &str) -> MemcachedStore {
    let url = common::url().await;
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
    SessionRecord {
        data: Bytes::from(vec![data]),
        user_id: user.map(str::to_owned),
        created_at: created,
        last_access: created,
        idle_deadline: at(HOUR_MS),
        absolute_deadline: at(3 * HOUR_MS),
        version: 1,
    }
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
        .list_user(user)
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
                assert_eq!(created.evicted, [victim.clone()], "round {round}");
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
