//! What the store leaves in Redis: key names, TTLs, in-place touches, index
//! upkeep and crash ordering, on a single server and on the cluster.

mod common;

use std::time::Duration;

use redis::aio::ConnectionLike;
use session_core::{SessionRecord, SessionStore, StoreError, Timestamp};
use session_redis::{KeyPrefix, RedisStore};

use session_test_support::storage_key as key;

use session_core::conformance::record;

async fn single() -> (RedisStore, redis::aio::MultiplexedConnection) {
    let url = common::redis_url();
    let store = common::store(&common::unique("layout")).await;
    let raw = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    (store, raw)
}

async fn cluster() -> (RedisStore, redis::cluster_async::ClusterConnection) {
    let urls = common::cluster_urls();
    let store = common::cluster_store(&common::unique("layout")).await;
    let raw = redis::cluster::ClusterClient::new(urls)
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    (store, raw)
}

fn prefix(store: &RedisStore) -> KeyPrefix {
    KeyPrefix::new(store.prefix()).unwrap()
}

async fn pttl<C: ConnectionLike + Send>(raw: &mut C, k: &str) -> i64 {
    redis::cmd("PTTL").arg(k).query_async(raw).await.unwrap()
}

async fn get<C: ConnectionLike + Send>(raw: &mut C, k: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(k).query_async(raw).await.unwrap()
}

async fn ttls_are_milliseconds_and_touch_is_in_place<C: ConnectionLike + Send>(
    store: &RedisStore,
    raw: &mut C,
) {
    let p = prefix(store);
    let user = "Zoë {tag}: with spaces";
    let k = key();
    let rec = record(Some(user), b"payload bytes", 1_500, 3_600_000);
    store.create(&k, &rec).await.unwrap();
    let sk = p.session_key(&k);
    let ik = p.index_key(user.as_bytes());
    assert!(!sk.contains("Zoë") && !ik.contains("Zoë") && !ik.contains("tag"));
    let ttl = pttl(raw, &sk).await;
    assert!((1..=1_500).contains(&ttl), "session TTL {ttl} ms");
    assert!(
        pttl(raw, &ik).await > 3_600_000,
        "index must outlive the session"
    );

    let before = get(raw, &sk).await.unwrap();
    let now = Timestamp::now();
    let idle = now.saturating_add(Duration::from_millis(30_000));
    store.touch(&k, now, idle).await.unwrap();
    let after = get(raw, &sk).await.unwrap();
    assert_eq!(before.len(), after.len());
    assert_eq!(
        before[..18],
        after[..18],
        "touch changed fields before last access"
    );
    assert_eq!(
        before[34..],
        after[34..],
        "touch changed fields after the idle deadline"
    );
    let ttl = pttl(raw, &sk).await;
    assert!((28_000..=30_000).contains(&ttl), "touched TTL {ttl} ms");
}

async fn update_later_absolute_deadline_extends_index<C: ConnectionLike + Send>(
    store: &RedisStore,
    raw: &mut C,
) {
    let p = prefix(store);
    let k = key();
    let rec = record(Some("abs"), b"x", 5_000, 10_000);
    store.create(&k, &rec).await.unwrap();
    let ik = p.index_key(b"abs");
    assert!(pttl(raw, &ik).await < 80_000);
    let next = (record(Some("abs"), b"y", 3_600_000, 7_200_000)).with_version(2);
    store.update(&k, 1, &next).await.unwrap();
    assert!(pttl(raw, &ik).await > 7_200_000, "index TTL not extended");
    assert_eq!(store.list_user_sessions("abs").await.unwrap().len(), 1);
}

async fn update_refuses_to_change_the_user(store: &RedisStore) {
    let k = key();
    store
        .create(&k, &record(Some("owner"), b"x", 60_000, 60_000))
        .await
        .unwrap();
    let other = (record(Some("intruder"), b"y", 60_000, 60_000)).with_version(2);
    let err = store.update(&k, 1, &other).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let got = store.load(&k).await.unwrap().unwrap();
    assert_eq!(
        (got.user_id.as_deref(), &got.data[..]),
        (Some("owner"), &b"x"[..])
    );
    assert!(store
        .list_user_sessions("intruder")
        .await
        .unwrap()
        .is_empty());
}

async fn corrupt_values_are_typed_errors<C: ConnectionLike + Send>(
    store: &RedisStore,
    raw: &mut C,
) {
    let k = key();
    let sk = prefix(store).session_key(&k);
    redis::cmd("SET")
        .arg(&sk)
        .arg("garbage")
        .arg("PX")
        .arg(60_000)
        .query_async::<()>(raw)
        .await
        .unwrap();
    assert!(matches!(store.load(&k).await, Err(StoreError::Corrupt(_))));
    let now = Timestamp::now();
    let r = store
        .touch(&k, now, now.saturating_add(Duration::from_secs(9)))
        .await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    store.delete(&k).await.unwrap();
    assert!(get(raw, &sk).await.is_none());
}

async fn too_large_records_are_refused() {
    let url = common::redis_url();
    let store = RedisStore::builder()
        .prefix(common::unique("small"))
        .max_record_size(1_000)
        .connect(&url)
        .await
        .unwrap();
    let k = key();
    let err = store
        .create(&k, &record(None, &[7; 2_000], 60_000, 60_000))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { limit: 1_000, .. }),
        "{err:?}"
    );
    assert!(store.load(&k).await.unwrap().is_none());
}

/// A crash after the index write of a create (the cluster's first step):
/// the entry is never listed; it is kept while young (its session may be in
/// flight) on a cluster, and pruned once old.
async fn index_entries_without_sessions<C: ConnectionLike + Send>(store: &RedisStore, raw: &mut C) {
    let p = prefix(store);
    let ik = p.index_key(b"crash");
    let live = key();
    store
        .create(&live, &record(Some("crash"), b"x", 60_000, 60_000))
        .await
        .unwrap();
    let (young, old) = (key(), key());
    let now = Timestamp::now().as_unix_millis();
    redis::cmd("ZADD")
        .arg(&ik)
        .arg(now)
        .arg(young.as_str())
        .arg(now - 120_000)
        .arg(old.as_str())
        .query_async::<()>(raw)
        .await
        .unwrap();
    let listed: Vec<_> = store
        .list_user_sessions("crash")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(listed, vec![live.clone()]);
    let remaining: Vec<String> = redis::cmd("ZRANGE")
        .arg(&ik)
        .arg(0)
        .arg(-1)
        .query_async(raw)
        .await
        .unwrap();
    assert!(
        !remaining.contains(&old.as_str().to_owned()),
        "old stale entry not pruned"
    );
    assert_eq!(
        remaining.contains(&young.as_str().to_owned()),
        store.is_cluster(),
        "young entry: kept on a cluster only"
    );
    // A session created after its entry was written is found by delete_user.
    store
        .create(&young, &record(Some("crash"), b"late", 60_000, 60_000))
        .await
        .unwrap();
    assert_eq!(store.delete_user("crash").await.unwrap(), 2);
    assert!(store.load(&young).await.unwrap().is_none());
}

/// A rotation leaves a moved marker under the old key: format byte 2, the
/// new storage key after the fixed header and then the user it moved with,
/// the old record's deadlines, and
/// the old record's remaining life as its TTL. It never loads, and deleting
/// it deletes where the session went, index entry included.
async fn rotation_leaves_a_moved_marker<C: ConnectionLike + Send>(store: &RedisStore, raw: &mut C) {
    use session_core::store::CreateOptions;
    let p = prefix(store);
    let (old, new) = (key(), key());
    let rec = record(Some("mover"), b"x", 60_000, 120_000);
    store.create(&old, &rec).await.unwrap();
    store
        .create_with(
            &new,
            &record(Some("mover"), b"y", 60_000, 120_000),
            &CreateOptions::default().replacing(old.clone(), 1),
        )
        .await
        .unwrap();
    let marker = get(raw, &p.session_key(&old))
        .await
        .expect("a moved marker");
    assert_eq!(marker[0], 2, "format byte of a moved marker");
    assert_eq!(&marker[42..46], &64u32.to_be_bytes());
    assert_eq!(&marker[46..110], new.as_str().as_bytes());
    // Then the user segment of the session that moved.
    let mut owner = vec![1u8];
    owner.extend_from_slice(&5u32.to_be_bytes());
    owner.extend_from_slice(b"mover");
    assert_eq!(&marker[110..], &owner[..]);
    assert_eq!(marker[1], 1, "the moved record's has-user flag");
    assert_eq!(
        &marker[26..34],
        &rec.idle_deadline.as_unix_millis().to_be_bytes()
    );
    assert_eq!(
        &marker[34..42],
        &rec.absolute_deadline.as_unix_millis().to_be_bytes()
    );
    let ttl = pttl(raw, &p.session_key(&old)).await;
    assert!((50_000..=60_000).contains(&ttl), "marker ttl {ttl}");
    assert!(store.load(&old).await.unwrap().is_none());
    let listed: Vec<_> = store
        .list_user_sessions("mover")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(listed, vec![new.clone()]);
    store.delete(&old).await.unwrap();
    assert!(get(raw, &p.session_key(&old)).await.is_none());
    assert!(get(raw, &p.session_key(&new)).await.is_none());
    assert!(store.list_user_sessions("mover").await.unwrap().is_empty());
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(p.index_key(b"mover"))
        .arg(0)
        .arg(-1)
        .query_async(raw)
        .await
        .unwrap();
    assert!(members.is_empty(), "index entries left: {members:?}");
}

/// Deadlines at the ends of time: TTLs are capped, touch caps the idle
/// deadline at the absolute one, and a record born expired is never stored.
async fn extreme_deadlines<C: ConnectionLike + Send>(store: &RedisStore, raw: &mut C) {
    let p = prefix(store);
    let far = Timestamp::from_unix_millis(i64::MAX);
    let k = key();
    let forever = (record(Some("far"), b"x", 0, 0))
        .with_idle_deadline(far)
        .with_absolute_deadline(far);
    store.create(&k, &forever).await.unwrap();
    assert!(pttl(raw, &p.session_key(&k)).await > 3_000_000_000_000);
    store.touch(&k, Timestamp::now(), far).await.unwrap();
    let next = forever.clone().with_version(2);
    store.update(&k, 1, &next).await.unwrap();
    assert_eq!(store.load(&k).await.unwrap().unwrap(), next);

    let capped = key();
    store
        .create(&capped, &record(None, b"x", 5_000, 10_000))
        .await
        .unwrap();
    store.touch(&capped, Timestamp::now(), far).await.unwrap();
    let ttl = pttl(raw, &p.session_key(&capped)).await;
    assert!(
        (1..=10_000).contains(&ttl),
        "touch went past the absolute deadline: {ttl}"
    );

    let born_dead = key();
    let past = Timestamp::from_unix_millis(-5);
    let dead = (record(Some("far"), b"x", 0, 0))
        .with_idle_deadline(past)
        .with_absolute_deadline(past);
    store.create(&born_dead, &dead).await.unwrap();
    assert!(get(raw, &p.session_key(&born_dead)).await.is_none());
    assert!(store.load(&born_dead).await.unwrap().is_none());
    let listed: Vec<_> = store
        .list_user_sessions("far")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(listed, vec![k]);
}

/// A labelled record is stored as core encodes it (format 5, the label
/// between user id and data); an unlabelled one in format 1, byte for
/// byte as before labels existed. A touch rewrites neither label nor data,
/// and the listing returns the label.
async fn labels_sit_after_the_user_id<C: ConnectionLike + Send>(store: &RedisStore, raw: &mut C) {
    let p = prefix(store);
    let user = "label {owner}";
    let (labelled, plain) = (key(), key());
    let rec = record(Some(user), b"data", 60_000, 3_600_000)
        .with_label(Some("Firefox – Linux".to_owned()));
    store.create(&labelled, &rec).await.unwrap();
    let unlabelled = record(Some(user), b"data", 60_000, 3_600_000);
    store.create(&plain, &unlabelled).await.unwrap();
    let value = get(raw, &p.session_key(&labelled)).await.unwrap();
    assert_eq!(value, rec.encode());
    assert_eq!(value[0], 5);
    let at = session_core::codec::layout::HEADER_LEN + user.len();
    assert_eq!(&value[at..at + 4], &17u32.to_be_bytes());
    assert_eq!(&value[at + 4..at + 21], "Firefox – Linux".as_bytes());
    let value = get(raw, &p.session_key(&plain)).await.unwrap();
    assert_eq!(value, unlabelled.encode());
    assert_eq!(value[0], 1);

    let now = Timestamp::now();
    store
        .touch(&labelled, now, now.saturating_add(Duration::from_secs(120)))
        .await
        .unwrap();
    let loaded = store.load(&labelled).await.unwrap().unwrap();
    assert_eq!(loaded.label, rec.label);
    assert_eq!(loaded.data, rec.data);
    let mut listed: Vec<_> = store
        .list_user_sessions(user)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.key == labelled, s.label))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![(false, None), (true, Some("Firefox – Linux".to_owned()))]
    );
}

/// An index entry of one user under another user's old key (left by a crash
/// between the index write and the session's, or by hand) never reaches the
/// other user's session: `delete_user` skips it, a `RejectNew` login does
/// not count it, an `EvictOldest` login does not evict through it.
async fn stale_entries_never_reach_another_users_session<C: ConnectionLike + Send>(
    store: &RedisStore,
    raw: &mut C,
) {
    use session_core::store::CreateOptions;
    use session_core::{LimitStrategy, UserSessionLimit};
    let p = prefix(store);
    let (alice, bob) = (
        session_test_support::unique("alice"),
        session_test_support::unique("bob"),
    );
    let (old, new) = (key(), key());
    store
        .create(&old, &record(Some(&alice), b"a", 60_000, 120_000))
        .await
        .unwrap();
    store
        .create_with(
            &new,
            &record(Some(&alice), b"a", 60_000, 120_000),
            &CreateOptions::default().replacing(old.clone(), 1),
        )
        .await
        .unwrap();
    redis::cmd("ZADD")
        .arg(p.index_key(bob.as_bytes()))
        .arg(Timestamp::now().as_unix_millis())
        .arg(old.as_str())
        .query_async::<()>(raw)
        .await
        .unwrap();
    let limit = |strategy| {
        CreateOptions::default().with_limit(UserSessionLimit {
            max: std::num::NonZeroUsize::MIN,
            strategy,
        })
    };
    let alice_still_in = |what: &'static str| {
        let new = new.clone();
        async move {
            assert!(
                store.load(&new).await.unwrap().is_some(),
                "{what} reached another user's session"
            );
        }
    };
    assert_eq!(store.delete_user(&bob).await.unwrap(), 0);
    alice_still_in("delete_user").await;
    let first = key();
    store
        .create_with(
            &first,
            &record(Some(&bob), b"b", 60_000, 120_000),
            &limit(LimitStrategy::RejectNew),
        )
        .await
        .expect("the stale entry counted as one of bob's sessions");
    for _ in 0..2 {
        store
            .create_with(
                &key(),
                &record(Some(&bob), b"b", 60_000, 120_000),
                &limit(LimitStrategy::EvictOldest),
            )
            .await
            .unwrap();
        alice_still_in("an EvictOldest login").await;
    }
    assert!(store.load(&first).await.unwrap().is_none());
    assert_eq!(store.delete_user(&bob).await.unwrap(), 1);
    alice_still_in("delete_user").await;
    assert_eq!(store.list_user_sessions(&alice).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_server_layout() {
    let (store, mut raw) = single().await;
    assert!(!store.is_cluster());
    ttls_are_milliseconds_and_touch_is_in_place(&store, &mut raw).await;
    update_later_absolute_deadline_extends_index(&store, &mut raw).await;
    update_refuses_to_change_the_user(&store).await;
    corrupt_values_are_typed_errors(&store, &mut raw).await;
    index_entries_without_sessions(&store, &mut raw).await;
    extreme_deadlines(&store, &mut raw).await;
    rotation_leaves_a_moved_marker(&store, &mut raw).await;
    labels_sit_after_the_user_id(&store, &mut raw).await;
    stale_entries_never_reach_another_users_session(&store, &mut raw).await;
    too_large_records_are_refused().await;
    // Everything written lives under the store's prefix.
    // SCAN, not KEYS: the server may hold millions of other keys.
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}:*", store.prefix()))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut raw)
            .await
            .unwrap();
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert!(!keys.is_empty());
    assert!(keys
        .iter()
        .all(|k| k.starts_with(&format!("{}:s:{{", store.prefix()))
            || k.starts_with(&format!("{}:u:{{", store.prefix()))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_layout() {
    let (store, mut raw) = cluster().await;
    assert!(store.is_cluster());
    ttls_are_milliseconds_and_touch_is_in_place(&store, &mut raw).await;
    update_later_absolute_deadline_extends_index(&store, &mut raw).await;
    update_refuses_to_change_the_user(&store).await;
    corrupt_values_are_typed_errors(&store, &mut raw).await;
    index_entries_without_sessions(&store, &mut raw).await;
    extreme_deadlines(&store, &mut raw).await;
    rotation_leaves_a_moved_marker(&store, &mut raw).await;
    labels_sit_after_the_user_id(&store, &mut raw).await;
    stale_entries_never_reach_another_users_session(&store, &mut raw).await;
}

/// What the layout probe returns: format, user flag, version, the four
/// timestamps, user id length, user id, user segment equal, live.
type Probe = (
    u8,
    u8,
    Vec<u8>,
    String,
    String,
    String,
    String,
    u64,
    Vec<u8>,
    u8,
    u8,
);

/// The Lua scripts read records with offsets generated from core's
/// `codec::layout`: a probe built from the same locals and helpers reads
/// back every header field of records core encoded, on a real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_read_the_record_layout_core_writes() {
    let url = common::redis_url();
    let mut raw = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let probe = redis::Script::new(&session_redis::scripts::layout_probe());
    let name = format!("{}:probe", common::unique("layout"));
    let now = 1_700_000_000_000i64;
    for user in [None, Some(""), Some("Zoë {tag}: with spaces")] {
        let r = SessionRecord::new(
            bytes::Bytes::from_static(b"\x00payload\xff"),
            user.map(str::to_owned),
            Timestamp::from_unix_millis(now - 3_000),
            Timestamp::from_unix_millis(now + 60_000),
            Timestamp::from_unix_millis(now + 3_600_000),
        )
        .with_last_access(Timestamp::from_unix_millis(now - 1_000))
        .with_version(0x0102_0304_0506_0708);
        let () = redis::cmd("SET")
            .arg(&name)
            .arg(r.encode())
            .query_async(&mut raw)
            .await
            .unwrap();
        // Flag, length, id: what the scripts compare a record's user with.
        let mut seg = vec![u8::from(user.is_some())];
        seg.extend_from_slice(&(user.map_or(0, str::len) as u32).to_be_bytes());
        seg.extend_from_slice(user.unwrap_or("").as_bytes());
        let got: Probe = probe
            .key(&name)
            .arg(&seg)
            .arg(now)
            .invoke_async(&mut raw)
            .await
            .unwrap();
        let ms = |t: Timestamp| t.as_unix_millis().to_string();
        assert_eq!(got.0, 1, "format");
        assert_eq!(got.1, u8::from(user.is_some()), "user flag");
        assert_eq!(got.2, r.version.to_be_bytes(), "version");
        assert_eq!(got.3, ms(r.created_at), "created_at");
        assert_eq!(got.4, ms(r.last_access), "last_access");
        assert_eq!(got.5, ms(r.idle_deadline), "idle_deadline");
        assert_eq!(got.6, ms(r.absolute_deadline), "absolute_deadline");
        assert_eq!(got.7, user.map_or(0, str::len) as u64, "user id length");
        assert_eq!(got.8, user.unwrap_or("").as_bytes(), "user id");
        assert_eq!(got.9, 1, "user segment");
        assert_eq!(got.10, 1, "live at now");
        let later = redis::Script::new(&session_redis::scripts::layout_probe());
        let dead: Vec<redis::Value> = later
            .key(&name)
            .arg(&seg)
            .arg(now + 60_000)
            .invoke_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(
            dead.last(),
            Some(&redis::Value::Int(0)),
            "dead at its idle deadline"
        );
    }
    let () = redis::cmd("DEL")
        .arg(&name)
        .query_async(&mut raw)
        .await
        .unwrap();
}
