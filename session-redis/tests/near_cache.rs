//! The near cache across two "instances": two stores on separate
//! connections, both near-cached, against real Redis (`REDIS_URL`) and the
//! cluster (`REDIS_CLUSTER_URLS`). Every change made on A (logout, "log
//! out everywhere", rotation, update, touch, expiry) must reach B's next
//! load within the bound (polled with a deadline, never a sleep), and B must
//! empty its cache when a Redis restart or a `CLIENT KILL` cuts tracking.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use session_core::conformance::faults::FaultInjector;
use session_core::store::CreateOptions;
use session_core::{SessionRecord, SessionStore, StorageKey, StoreError, Timestamp};
use session_redis::{NearCache, RedisStore};
use session_test_support::process::{spare_port, ServerProcess};
use session_test_support::servers::redis_url;
use session_test_support::storage_key as key;
use session_test_support::unique;

/// How long a change on A may take to show on B in these tests. The
/// measured p99 is well under a millisecond on loopback; this leaves room
/// for a loaded test machine.
const REACH: Duration = Duration::from_secs(2);

fn record(user: Option<&str>, data: &[u8], version: u64) -> SessionRecord {
    let now = Timestamp::now();
    SessionRecord::new(
        Bytes::copy_from_slice(data),
        user.map(str::to_owned),
        now,
        now.saturating_add(Duration::from_secs(3600)),
        now.saturating_add(Duration::from_secs(7200)),
    )
    .with_last_access(now)
    .with_version(version)
}

async fn single(namespace: &str, url: &str) -> RedisStore {
    RedisStore::builder()
        .namespace(namespace)
        .near_cache(NearCache::new().heartbeat(Duration::from_millis(50)))
        .operation_timeout(Duration::from_millis(800))
        .connect_timeout(Duration::from_millis(800))
        .connect(url)
        .await
        .expect("connecting to the test Redis failed")
}

async fn cluster(namespace: &str) -> RedisStore {
    RedisStore::builder()
        .namespace(namespace)
        .near_cache(NearCache::new().heartbeat(Duration::from_millis(50)))
        .connect_cluster(common::cluster_urls())
        .await
        .expect("connecting to the test Redis Cluster failed")
}

/// Two instances on the single server, or on the cluster.
async fn pair(on_cluster: bool) -> (RedisStore, RedisStore) {
    let ns = unique("near");
    if on_cluster {
        (cluster(&ns).await, cluster(&ns).await)
    } else {
        (
            single(&ns, &redis_url()).await,
            single(&ns, &redis_url()).await,
        )
    }
}

/// Loads `key` on `store` until `done` holds, failing after [`REACH`].
/// Returns how long it took.
async fn until<F>(store: &RedisStore, key: &StorageKey, what: &str, done: F) -> Duration
where
    F: Fn(&Option<SessionRecord>) -> bool,
{
    let start = Instant::now();
    loop {
        let loaded = store.load(key).await.expect("load");
        if done(&loaded) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < REACH,
            "{what}: the loading instance still serves the old state after {REACH:?} (last load: version {:?})",
            loaded.map(|r| r.version)
        );
        tokio::task::yield_now().await;
    }
}

/// Loads on B until it answers from its cache (the copy is in place).
async fn cached_on(b: &RedisStore, key: &StorageKey) -> SessionRecord {
    let start = Instant::now();
    loop {
        let before = b.near_cache_stats().expect("near cache on").hits;
        let loaded = b.load(key).await.expect("load").expect("present");
        if b.near_cache_stats().expect("near cache on").hits > before {
            return loaded;
        }
        assert!(
            start.elapsed() < REACH,
            "B never served the record from its cache"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn every_change_on_a_reaches_b(on_cluster: bool) {
    let (a, b) = pair(on_cluster).await;
    let user = unique("user");

    // update
    let k = key();
    a.create(&k, &record(Some(&user), b"v1", 1)).await.unwrap();
    assert_eq!(cached_on(&b, &k).await.data, Bytes::from_static(b"v1"));
    a.update(&k, 1, &record(Some(&user), b"v2", 2))
        .await
        .unwrap();
    until(&b, &k, "update", |r| {
        r.as_ref().is_some_and(|r| r.version == 2)
    })
    .await;

    // touch
    cached_on(&b, &k).await;
    let later = Timestamp::now().saturating_add(Duration::from_secs(5000));
    a.touch(&k, Timestamp::now(), later).await.unwrap();
    until(&b, &k, "touch", |r| {
        r.as_ref().is_some_and(|r| r.idle_deadline == later)
    })
    .await;

    // rotation: the old key ends, the new one is live on B too
    cached_on(&b, &k).await;
    let rotated = key();
    a.create_with(
        &rotated,
        &record(Some(&user), b"v2", 1),
        &CreateOptions::default().replacing(k.clone(), 2),
    )
    .await
    .unwrap();
    until(&b, &k, "rotation", Option::is_none).await;
    assert!(b.load(&rotated).await.unwrap().is_some());

    // logout
    cached_on(&b, &rotated).await;
    a.delete(&rotated).await.unwrap();
    until(&b, &rotated, "logout", Option::is_none).await;

    // log out everywhere
    let keys: Vec<StorageKey> = (0..4).map(|_| key()).collect();
    for k in &keys {
        a.create(k, &record(Some(&user), b"s", 1)).await.unwrap();
        cached_on(&b, k).await;
    }
    assert_eq!(a.delete_user(&user).await.unwrap(), 4);
    for k in &keys {
        until(&b, k, "log out everywhere", Option::is_none).await;
    }

    // expiry: judged by the record's deadline on every hit
    let k = key();
    let now = Timestamp::now();
    let short = SessionRecord::new(
        Bytes::from_static(b"e"),
        None,
        now,
        now.saturating_add(Duration::from_millis(300)),
        now.saturating_add(Duration::from_secs(60)),
    );
    a.create(&k, &short).await.unwrap();
    cached_on(&b, &k).await;
    let waited = until(&b, &k, "expiry", Option::is_none).await;
    assert!(
        Timestamp::now() >= now.saturating_add(Duration::from_millis(300)),
        "expired early (after {waited:?})"
    );
}

#[tokio::test]
async fn every_change_on_one_instance_reaches_the_other_single() {
    every_change_on_a_reaches_b(false).await;
}

#[tokio::test]
async fn every_change_on_one_instance_reaches_the_other_cluster() {
    every_change_on_a_reaches_b(true).await;
}

/// An instance reads its own writes at once: the write returns only after
/// its invalidations were handled (the barrier), on the writing instance.
async fn own_writes_are_seen_at_once(on_cluster: bool) {
    let (a, _) = pair(on_cluster).await;
    let user = unique("user");
    for round in 0..50u64 {
        let k = key();
        a.create(&k, &record(Some(&user), b"x", 1)).await.unwrap();
        cached_on(&a, &k).await;
        a.update(&k, 1, &record(Some(&user), b"y", 2))
            .await
            .unwrap();
        assert_eq!(
            a.load(&k).await.unwrap().map(|r| r.version),
            Some(2),
            "round {round}"
        );
        // An eviction ends another cached session in the same script.
        a.delete_user(&user).await.unwrap();
        assert!(a.load(&k).await.unwrap().is_none(), "round {round}");
    }
}

#[tokio::test]
async fn own_writes_are_seen_at_once_single() {
    own_writes_are_seen_at_once(false).await;
}

#[tokio::test]
async fn own_writes_are_seen_at_once_cluster() {
    own_writes_are_seen_at_once(true).await;
}

/// An `update` keeps its bytes as the writer's copy (its next load is a
/// hit on the new version), and a write by another instance after it still
/// reaches the writer: the update script read the key back, so the server
/// tracks it again for the writer, whose own write had untracked it.
async fn updates_are_written_through(on_cluster: bool) {
    let (a, b) = pair(on_cluster).await;
    let rounds = 40u64;
    let mut hits = 0;
    for round in 0..rounds {
        let k = key();
        a.create(&k, &record(None, b"v1", 1)).await.unwrap();
        cached_on(&a, &k).await;
        a.update(&k, 1, &record(None, b"v2", 2)).await.unwrap();
        let before = a.near_cache_stats().expect("near cache on");
        let loaded = a.load(&k).await.unwrap().map(|r| r.version);
        assert_eq!(loaded, Some(2), "round {round}: A reads its own update");
        if a.near_cache_stats().expect("near cache on").hits > before.hits {
            hits += 1;
        }
        // Another instance writes after A's written-through update.
        b.update(&k, 2, &record(None, b"v3", 3)).await.unwrap();
        until(&a, &k, "B's update after A's written-through one", |r| {
            r.as_ref().is_some_and(|r| r.version == 3)
        })
        .await;
        // And A again, on top of B's, from its refreshed copy.
        cached_on(&a, &k).await;
        a.update(&k, 3, &record(None, b"v4", 4)).await.unwrap();
        a.delete(&k).await.unwrap();
        assert!(a.load(&k).await.unwrap().is_none(), "round {round}");
    }
    // A round misses only when tracking lapsed (a heartbeat late on a
    // loaded machine); without write-through every round would.
    assert!(
        hits * 4 >= rounds * 3,
        "only {hits} of {rounds} loads after an update were served from the cache"
    );
}

#[tokio::test]
async fn updates_are_written_through_single() {
    updates_are_written_through(false).await;
}

#[tokio::test]
async fn updates_are_written_through_cluster() {
    updates_are_written_through(true).await;
}

/// A touch through A keeps A's copy, with the deadlines moved (its next
/// load is a hit on them); a later write by B still reaches A; a touch to
/// a deadline already past leaves nothing to load on either instance.
async fn touches_are_written_through(on_cluster: bool) {
    let (a, b) = pair(on_cluster).await;
    let rounds = 40u64;
    let mut hits = 0;
    for round in 0..rounds {
        let k = key();
        a.create(&k, &record(None, b"v1", 1)).await.unwrap();
        let cached = cached_on(&a, &k).await;
        let later = cached
            .last_access
            .saturating_add(Duration::from_millis(500));
        let idle = later.saturating_add(Duration::from_secs(600));
        a.touch(&k, later, idle).await.unwrap();
        let before = a.near_cache_stats().expect("near cache on");
        let loaded = a.load(&k).await.unwrap().expect("touched, still live");
        assert_eq!(
            (loaded.last_access, loaded.idle_deadline, loaded.version),
            (later, idle, 1),
            "round {round}: A reads its own touch"
        );
        assert_eq!(loaded.data, cached.data, "round {round}");
        if a.near_cache_stats().expect("near cache on").hits > before.hits {
            hits += 1;
        }
        // B writes after A's written-through touch: A follows.
        b.update(&k, 1, &record(None, b"v2", 2)).await.unwrap();
        until(&a, &k, "B's update after A's written-through touch", |r| {
            r.as_ref().is_some_and(|r| r.version == 2)
        })
        .await;
        // A touch to a deadline already past ends the session everywhere.
        cached_on(&a, &k).await;
        cached_on(&b, &k).await;
        let now = Timestamp::now();
        let past = now.saturating_sub(Duration::from_secs(1));
        a.touch(&k, now, past).await.unwrap();
        assert!(a.load(&k).await.unwrap().is_none(), "round {round}: A");
        until(
            &b,
            &k,
            "a touch that ended the session on A",
            Option::is_none,
        )
        .await;
        // A new record under the same key (as a conformance case may
        // write) reaches A too: A kept no copy of the deleted one.
        b.create(&k, &record(None, b"again", 1)).await.unwrap();
        until(&a, &k, "a record created again under the key", |r| {
            r.as_ref()
                .is_some_and(|r| r.data == Bytes::from_static(b"again"))
        })
        .await;
    }
    assert!(
        hits * 4 >= rounds * 3,
        "only {hits} of {rounds} loads after a touch were served from the cache"
    );
}

#[tokio::test]
async fn touches_are_written_through_single() {
    touches_are_written_through(false).await;
}

#[tokio::test]
async fn touches_are_written_through_cluster() {
    touches_are_written_through(true).await;
}

/// How long after a write returned no instance may still serve an older
/// version, in the racing tests.
const STALE_BOUND: Duration = Duration::from_millis(250);

/// Per key: the newest version whose write has returned, and when.
type Written = std::sync::Arc<Vec<std::sync::Mutex<(u64, Instant)>>>;

/// `n` sessions created at version 1 on `store`, and their [`Written`].
async fn racing_keys(store: &RedisStore, n: usize) -> (Vec<StorageKey>, Written) {
    let keys: Vec<StorageKey> = (0..n).map(|_| key()).collect();
    for k in &keys {
        store.create(k, &record(None, b"0", 1)).await.unwrap();
    }
    let written = std::sync::Arc::new(
        keys.iter()
            .map(|_| std::sync::Mutex::new((1, Instant::now())))
            .collect(),
    );
    (keys, written)
}

/// Loads every key on `store` until `stop`, asserting that no load returns
/// a version older than one written more than [`STALE_BOUND`] before the
/// load began. Returns how many loads it made.
fn spawn_reader(
    store: &RedisStore,
    keys: &[StorageKey],
    written: &Written,
    stop: Instant,
) -> tokio::task::JoinHandle<u64> {
    let (store, keys, written) = (store.clone(), keys.to_vec(), written.clone());
    tokio::spawn(async move {
        let mut reads = 0;
        while Instant::now() < stop {
            for (i, k) in keys.iter().enumerate() {
                // What had certainly been written before this load began.
                let (floor, at) = *written[i].lock().unwrap();
                let settled = at.elapsed() > STALE_BOUND;
                let got = store.load(k).await.unwrap().expect("live").version;
                assert!(
                    !settled || got >= floor,
                    "served version {got} after version {floor} had been written {:?} before",
                    at.elapsed()
                );
                reads += 1;
            }
            tokio::task::yield_now().await;
        }
        reads
    })
}

/// Racing writers on A, readers on B: once a write of version `v` has
/// returned on A for longer than the bound, B never serves an older one.
async fn no_stale_read_after_the_bound(on_cluster: bool) {
    let (a, b) = pair(on_cluster).await;
    let (keys, written) = racing_keys(&a, 8).await;
    let stop = Instant::now() + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let (a, k, written) = (a.clone(), k.clone(), written.clone());
        tasks.push(tokio::spawn(async move {
            let mut version = 1;
            while Instant::now() < stop {
                a.update(&k, version, &record(None, b"n", version + 1))
                    .await
                    .unwrap();
                version += 1;
                *written[i].lock().unwrap() = (version, Instant::now());
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            0u64
        }));
    }
    for _ in 0..4 {
        tasks.push(spawn_reader(&b, &keys, &written, stop));
    }
    let mut reads = 0u64;
    for task in tasks {
        reads += task.await.expect("a racing task failed");
    }
    let stats = b.near_cache_stats().unwrap();
    assert!(reads > 100, "too few reads to mean anything: {reads}");
    assert!(stats.hits > 0, "B never hit its cache: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_read_after_the_bound_single() {
    no_stale_read_after_the_bound(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_read_after_the_bound_cluster() {
    no_stale_read_after_the_bound(true).await;
}

/// Writers on both instances (each loads the version, then
/// compare-and-sets the next; a conflict loads again) and readers on both:
/// once a write of version `v` has returned on either instance for longer
/// than the bound, neither serves an older one.
async fn no_stale_read_with_writers_on_both(on_cluster: bool) {
    let (a, b) = pair(on_cluster).await;
    let (keys, written) = racing_keys(&a, 4).await;
    let stop = Instant::now() + Duration::from_secs(2);
    let mut writers = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        for store in [&a, &b] {
            let (store, k, written) = (store.clone(), k.clone(), written.clone());
            writers.push(tokio::spawn(async move {
                let mut stored = 0u64;
                while Instant::now() < stop {
                    let v = store.load(&k).await.unwrap().expect("live").version;
                    match store.update(&k, v, &record(None, b"n", v + 1)).await {
                        Ok(()) => {
                            stored += 1;
                            let mut w = written[i].lock().unwrap();
                            if v + 1 > w.0 {
                                *w = (v + 1, Instant::now());
                            }
                        }
                        Err(StoreError::Conflict) => {}
                        Err(e) => panic!("update: {e}"),
                    }
                }
                stored
            }));
        }
    }
    let readers: Vec<_> = [&a, &b, &a, &b]
        .into_iter()
        .map(|store| spawn_reader(store, &keys, &written, stop))
        .collect();
    let mut stored = 0;
    for w in writers {
        stored += w.await.expect("a writer failed");
    }
    let mut reads = 0;
    for r in readers {
        reads += r.await.expect("a reader failed");
    }
    assert!(
        stored > 50 && reads > 100,
        "too little traffic: {stored} writes, {reads} reads"
    );
    // Both instances end agreeing with Redis.
    for (i, k) in keys.iter().enumerate() {
        let last = written[i].lock().unwrap().0;
        for store in [&a, &b] {
            let got = until(store, k, "the last write", |r| {
                r.as_ref().is_some_and(|r| r.version == last)
            })
            .await;
            assert!(got < STALE_BOUND, "took {got:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_read_with_writers_on_both_single() {
    no_stale_read_with_writers_on_both(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_read_with_writers_on_both_cluster() {
    no_stale_read_with_writers_on_both(true).await;
}

/// Waits until `store`'s cache serves again after an outage.
async fn serving_again(store: &RedisStore) {
    let start = Instant::now();
    while !store.near_cache_stats().unwrap().serving {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tracking never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_client_kill_of_the_tracking_connection_empties_the_cache() {
    let server = ServerProcess::redis(spare_port(), &[]).await;
    let url = server.url("redis");
    let a = single("kill", &url).await;
    let b = single("kill", &url).await;
    let k = key();
    a.create(&k, &record(None, b"v1", 1)).await.unwrap();
    cached_on(&b, &k).await;
    let flushes = b.near_cache_stats().unwrap().flushes;

    // Kill every tracking connection (B's and A's), and change the record
    // while tracking is down, before anyone re-establishes it.
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    let tracking: Vec<&str> = list
        .lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.starts_with("flags=") && f.contains('t'))
        })
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert_eq!(
        tracking.len(),
        2,
        "expected A's and B's tracking connections:\n{list}"
    );
    for id in tracking {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut admin)
            .await
            .unwrap();
    }
    let start = Instant::now();
    while b.near_cache_stats().unwrap().flushes == flushes {
        assert!(
            start.elapsed() < REACH,
            "B did not notice the killed connection"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(b.near_cache_stats().unwrap().entries, 0);
    a.update(&k, 1, &record(None, b"v2", 2)).await.unwrap();
    assert_eq!(b.load(&k).await.unwrap().unwrap().version, 2);
    serving_again(&b).await;
    assert_eq!(cached_on(&b, &k).await.version, 2);
}

#[tokio::test]
async fn a_redis_restart_empties_the_cache() {
    let server = ServerProcess::redis(spare_port(), &[]).await;
    let url = server.url("redis");
    let b = single("restart", &url).await;
    let k = key();
    b.create(&k, &record(None, b"v1", 1)).await.unwrap();
    cached_on(&b, &k).await;

    server.stop().await;
    server.start().await;
    // The restarted server kept nothing (no persistence): B must not serve
    // its old copy.
    let start = Instant::now();
    loop {
        match b.load(&k).await {
            Ok(None) => break,
            Ok(Some(_)) => panic!("B served a session the restarted server no longer has"),
            Err(e) => assert!(start.elapsed() < REACH, "B kept failing: {e}"),
        }
    }
    assert_eq!(b.near_cache_stats().unwrap().entries, 0);
    serving_again(&b).await;
    b.create(&k, &record(None, b"v2", 1)).await.unwrap();
    assert_eq!(cached_on(&b, &k).await.data, Bytes::from_static(b"v2"));
}
