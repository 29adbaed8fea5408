//! A Redis Cluster master dies under traffic and its replica takes over,
//! for real: on a private cluster of 3 masters with one replica each (its
//! own processes and ports, so killing a master does not disturb the
//! shared test cluster), racing tasks create, load, update, list and
//! delete users' sessions while the master that holds some of their
//! sessions and user indexes is killed (`SIGKILL`, a crash) or frozen
//! (`SIGSTOP`, a host that stops answering with its connections open).
//!
//! What must hold:
//! - no call panics or hangs: each one ends within the operation timeout
//!   plus a little slack;
//! - while the slots of the dead master have no master (the failover
//!   window), calls that touch them fail with `Unavailable` only;
//! - once the replica has taken over, every operation works again on those
//!   slots, the per-user index included (`list_user_sessions`,
//!   `delete_user`, per-user limits), with no restart of the store.
//!
//! The failover window (from the kill to the first successful write on the
//! dead master's slots) is printed; the figure in the crate's README comes
//! from this test.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use session_core::conformance::faults::FaultInjector;
use session_core::conformance::record;
use session_core::store::CreateOptions;
use session_core::{
    LimitStrategy, SessionRecord, SessionStore, StorageKey, StoreError, StoreResult,
    UserSessionLimit,
};
use session_redis::{KeyPrefix, NearCache, RedisStore};
use session_test_support::process::RedisCluster;
use session_test_support::storage_key as key;

/// How long a master may not answer before its replica fails it over. The
/// production default is 15 s; a short one keeps the test short (the
/// window scales with it).
const NODE_TIMEOUT: Duration = Duration::from_millis(1_000);
/// The store's operation timeout.
const OP_TIMEOUT: Duration = Duration::from_millis(1_000);
/// What a call may take past the operation timeout before it counts as
/// hanging.
const SLACK: Duration = Duration::from_millis(500);
/// The longest failover this test accepts: the node timeout, the replica's
/// election delay (500 ms plus up to 500 ms random, plus its rank) and the
/// time the client takes to learn the new topology, with room for a loaded
/// machine.
const MAX_WINDOW: Duration = Duration::from_secs(15);
/// After the first success on the dead master's slots, how long other
/// connections and racing calls may still fail before every call must work.
const SETTLE: Duration = Duration::from_secs(3);

const HOUR: u64 = 3_600_000;

/// One store call during the traffic: when it started (after the kill;
/// zero for a call under way when the master was killed), whether it
/// ended before the kill, how long it took, what it answered.
#[derive(Debug)]
struct Call {
    op: &'static str,
    started: Duration,
    before_kill: bool,
    took: Duration,
    outcome: Result<(), String>,
}

/// Records every call the racing tasks make.
#[derive(Clone)]
struct Log {
    calls: Arc<Mutex<Vec<Call>>>,
    kill: Arc<Mutex<Option<Instant>>>,
}

impl Log {
    fn new() -> Self {
        Self {
            calls: Arc::new(Mutex::new(Vec::new())),
            kill: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs `fut` under a hard bound of the operation timeout plus slack and
    /// records it; `Err` answers are returned for the caller to act on,
    /// typed errors other than `Unavailable` are recorded as such.
    async fn call<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = StoreResult<T>>,
    ) -> Option<T> {
        let start = Instant::now();
        let answer = tokio::time::timeout(OP_TIMEOUT + SLACK, fut).await;
        let took = start.elapsed();
        let kill = *self.kill.lock().unwrap();
        let end = start + took;
        let (started, before_kill) = match kill {
            Some(k) => (start.saturating_duration_since(k), end < k),
            None => (Duration::ZERO, true),
        };
        let (outcome, value) = match answer {
            Err(_) => (Err(format!("HUNG past {:?}", OP_TIMEOUT + SLACK)), None),
            Ok(Ok(v)) => (Ok(()), Some(v)),
            Ok(Err(e)) => (Err(describe(&e)), None),
        };
        self.calls.lock().unwrap().push(Call {
            op,
            started,
            before_kill,
            took,
            outcome,
        });
        value
    }
}

/// `Unavailable` (`timeout` when the operation timeout ran out) or the
/// error's kind and message.
fn describe(e: &StoreError) -> String {
    match e {
        StoreError::Unavailable(_) if e.is_timeout() => "Unavailable(timeout)".to_owned(),
        StoreError::Unavailable(_) => "Unavailable".to_owned(),
        other => format!("{other:?}"),
    }
}

/// The slots of the master to kill, taken before the kill.
struct Victim {
    port: u16,
    slots: Vec<std::ops::RangeInclusive<u16>>,
}

impl Victim {
    fn holds(&self, key: &str) -> bool {
        let slot = RedisCluster::slot_of(key);
        self.slots.iter().any(|r| r.contains(&slot))
    }
}

/// The first `n` users `user<i>` whose index lies (`on` true) or does not
/// lie on the victim's slots.
fn users(victim: &Victim, prefix: &KeyPrefix, on: bool, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("user{i}"))
        .filter(|u| victim.holds(&prefix.index_key(u.as_bytes())) == on)
        .take(n)
        .collect()
}

/// A fresh storage key whose session lies on the victim's slots.
fn key_on(victim: &Victim, prefix: &KeyPrefix) -> StorageKey {
    loop {
        let k = key();
        if victim.holds(&prefix.session_key(&k)) {
            return k;
        }
    }
}

/// One racing task: as `user`, create a session, load it, update it, and
/// now and then list the user's sessions and log the user out everywhere,
/// until `stop`.
async fn traffic(store: RedisStore, log: Log, user: String, stop: Arc<AtomicBool>) {
    let mut round = 0u32;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let k = key();
        let rec = record(Some(&user), b"racing", HOUR, HOUR);
        if log.call("create", store.create(&k, &rec)).await.is_some() {
            // A session acknowledged as created loads (or was ended by a
            // racing delete_user of the same user).
            if let Some(Some(loaded)) = log.call("load", store.load(&k)).await {
                assert_eq!(loaded.data.as_ref(), b"racing");
            }
            let next = rec.clone().with_data(&b"updated"[..]).with_version(2);
            log.call("update", async {
                match store.update(&k, 1, &next).await {
                    // Ended by a racing delete_user of the same user.
                    Err(StoreError::NotFound) => Ok(()),
                    other => other,
                }
            })
            .await;
        }
        if round.is_multiple_of(4) {
            log.call("list_user_sessions", store.list_user_sessions(&user))
                .await;
        }
        if round.is_multiple_of(8) {
            log.call("delete_user", store.delete_user(&user)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How the master fails.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `SIGKILL`: its connections are reset, new ones refused (a crash).
    Kill,
    /// `SIGSTOP`: its connections stay open and nothing answers (a host
    /// that froze or fell off the network); thawed at the end.
    Freeze,
}

/// The cases share the machine's cores; one at a time keeps the measured
/// windows meaningful.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_traffic_is_replaced_by_its_replica() {
    let _serial = ONE_AT_A_TIME.lock().await;
    a_master_fails_under_traffic(Fault::Kill).await;
}

/// A frozen primary (a host that stops answering without closing its
/// connections): the cluster client reads the slot map again only after a
/// redirection or a broken connection, neither of which a frozen node
/// gives, so the store makes a new cluster connection after a timeout. The
/// store carrying traffic follows the failover that way (window measured at
/// 2.2-2.9 s with a 1 s node timeout); a second instance idle through the
/// failover still times out on its first loads afterwards while the frozen
/// node stays in the cluster, which is why this stays known to fail (run it
/// with `--ignored`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known limitation: an instance idle through the failover of a frozen primary keeps timing out on its slots while the frozen node stays in the cluster"]
async fn a_master_frozen_under_traffic_is_replaced_by_its_replica() {
    let _serial = ONE_AT_A_TIME.lock().await;
    a_master_fails_under_traffic(Fault::Freeze).await;
}

async fn a_master_fails_under_traffic(fault: Fault) {
    let cluster = Arc::new(RedisCluster::start(3, NODE_TIMEOUT).await);
    let store = RedisStore::builder()
        .namespace("failover")
        .operation_timeout(OP_TIMEOUT)
        .connect_timeout(Duration::from_millis(500))
        .connect_cluster(cluster.urls())
        .await
        .expect("connecting to the private cluster");
    let prefix = KeyPrefix::new(store.prefix()).unwrap();
    // A second instance with a near cache, on its own connections.
    let near = RedisStore::builder()
        .namespace("failover")
        .near_cache(NearCache::new().heartbeat(Duration::from_millis(50)))
        .operation_timeout(OP_TIMEOUT)
        .connect_timeout(Duration::from_millis(500))
        .connect_cluster(cluster.urls())
        .await
        .expect("connecting to the private cluster with a near cache");

    // The master to kill: the one holding user0's index.
    let port = cluster
        .master_of(RedisCluster::slot_of(&prefix.index_key(b"user0")))
        .expect("a master for user0's index");
    let victim = Victim {
        port,
        slots: cluster.slots_of(port),
    };
    let mut racing_users = users(&victim, &prefix, true, 3);
    racing_users.extend(users(&victim, &prefix, false, 2));
    // The users the checks after the failover use: their indexes are on
    // the dead master's slots.
    let after = users(&victim, &prefix, true, 5)[3..].to_vec();

    // Sessions acknowledged well before the kill: replicated by the time
    // the master dies, so they survive the failover.
    let old = key_on(&victim, &prefix);
    store
        .create(&old, &record(Some("keeper"), b"old", HOUR, HOUR))
        .await
        .unwrap();

    let log = Log::new();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = racing_users
        .iter()
        .map(|u| tokio::spawn(traffic(store.clone(), log.clone(), u.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    // Kill the master mid-traffic; probe its slots with writes until one
    // goes through.
    // The near-cached instance holds a copy from the victim's slots.
    assert_cached(&near, &old).await;
    let flushes_before = near.near_cache_stats().unwrap().flushes;
    let killed_at = Instant::now();
    *log.kill.lock().unwrap() = Some(killed_at);
    match fault {
        Fault::Kill => cluster.node(victim.port).stop().await,
        Fault::Freeze => cluster.node(victim.port).freeze().await,
    }
    // When the cluster itself has promoted the replica (its nodes' view),
    // to tell the servers' part of the window from the client's.
    let promoted = {
        let (cluster, slot, dead) = (cluster.clone(), victim.slots[0].clone(), victim.port);
        tokio::task::spawn_blocking(move || loop {
            if cluster.master_of(*slot.start()).is_some_and(|m| m != dead) {
                return killed_at.elapsed();
            }
            assert!(
                killed_at.elapsed() < MAX_WINDOW,
                "the replica was never promoted"
            );
            std::thread::sleep(Duration::from_millis(10));
        })
    };
    // A probe write every 50 ms, each in its own task (one that went to
    // the dead node waits out its operation timeout without holding up the
    // next): the window ends when the first one succeeds.
    let mut probes = tokio::task::JoinSet::new();
    let mut window = loop {
        if let Some(Ok(Some(done))) = probes.try_join_next() {
            break done;
        }
        assert!(
            killed_at.elapsed() < MAX_WINDOW,
            "no write reached the dead master's slots within {MAX_WINDOW:?} of the kill"
        );
        let (store, log, probe) = (store.clone(), log.clone(), key_on(&victim, &prefix));
        probes.spawn(async move {
            let rec = record(Some("prober"), b"p", HOUR, HOUR);
            log.call("probe create", store.create(&probe, &rec))
                .await
                .map(|()| killed_at.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The other probes end too, within the operation timeout; the
    // earliest success ends the window.
    while let Some(done) = probes.join_next().await {
        if let Some(at) = done.expect("a probe panicked") {
            window = window.min(at);
        }
    }
    let promoted = promoted.await.expect("watching the promotion");
    // Racing traffic goes on well past the failover, then stops.
    tokio::time::sleep(SETTLE + Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("a racing task panicked");
    }

    // The client follows the promotion by itself, within about one
    // operation timeout (a call that went to the dead node first).
    assert!(
        window <= promoted + OP_TIMEOUT + SLACK,
        "the first write on the dead master's slots succeeded {window:?} after the kill, \
         although the replica was promoted after {promoted:?}"
    );
    let calls = std::mem::take(&mut *log.calls.lock().unwrap());
    let failed: Vec<&Call> = calls.iter().filter(|c| c.outcome.is_err()).collect();
    let last_failure = failed
        .iter()
        .filter(|c| !c.before_kill)
        .map(|c| c.started + c.took)
        .max();
    eprintln!(
        "{fault:?}: cluster-node-timeout {NODE_TIMEOUT:?}, operation timeout {OP_TIMEOUT:?}: failover window \
         {window:?} (kill to first write on the dead master's slots; the cluster showed the \
         replica promoted after {promoted:?}); {} calls, {} failed, last failure ended \
         {last_failure:?} after the kill; slowest call {:?}",
        calls.len(),
        failed.len(),
        calls.iter().map(|c| c.took).max().unwrap_or_default(),
    );
    let mut kinds = std::collections::BTreeMap::<(&str, &str), usize>::new();
    for c in &failed {
        *kinds
            .entry((c.op, c.outcome.as_ref().unwrap_err().as_str()))
            .or_default() += 1;
    }
    eprintln!("failures by operation and error: {kinds:?}");

    assert!(
        calls.iter().filter(|c| !c.before_kill).count() > 50,
        "too little traffic after the kill to judge"
    );
    for c in &calls {
        assert!(
            c.took <= OP_TIMEOUT + SLACK,
            "{} took {:?}, past the operation timeout {OP_TIMEOUT:?} + {SLACK:?}",
            c.op,
            c.took
        );
        if let Err(e) = &c.outcome {
            assert!(!c.before_kill, "{} failed before the kill: {e}", c.op);
            assert!(
                e.starts_with("Unavailable"),
                "{} failed {:?} after the kill with {e}, not Unavailable",
                c.op,
                c.started
            );
            assert!(
                c.started < window + SETTLE,
                "{} still failed {:?} after the kill ({e}), {SETTLE:?} past the first success \
                 at {window:?}",
                c.op,
                c.started
            );
        }
    }
    assert!(
        calls
            .iter()
            .any(|c| !c.before_kill && c.started >= window + SETTLE && c.outcome.is_ok()),
        "no traffic after the failover settled"
    );

    // The replica took over the dead master's slots.
    let new_master = cluster.master_of(RedisCluster::slot_of(&prefix.index_key(b"user0")));
    assert!(
        new_master.is_some_and(|m| m != victim.port),
        "the dead master's slots have master {new_master:?}"
    );

    // Everything works on the dead master's slots, without a new store.
    every_operation_works(&store, &victim, &prefix, &after).await;
    let old_record = store.load(&old).await.expect("load after the failover");
    assert_eq!(
        old_record.map(|r| r.data),
        Some(data(b"old")),
        "a session written a second before the kill was lost"
    );
    // The near cache was emptied when the master died (its tracking
    // connection closed, or its heartbeat went unanswered), serves again
    // once tracking reaches the new master, and sees changes made there.
    let stats = near.near_cache_stats().unwrap();
    assert!(
        stats.flushes > flushes_before,
        "the near cache was not emptied by the failover: {stats:?}"
    );
    let start = Instant::now();
    while !near.near_cache_stats().unwrap().serving {
        assert!(
            start.elapsed() < MAX_WINDOW,
            "near cache tracking never reached the new master"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let loaded = assert_cached(&near, &old).await;
    store
        .update(
            &old,
            loaded.version,
            &record(Some("keeper"), b"new", HOUR, HOUR).with_version(loaded.version + 1),
        )
        .await
        .expect("update on the new master");
    let start = Instant::now();
    while near.load(&old).await.ok().flatten().map(|r| r.data) != Some(data(b"new")) {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the near cache kept serving a copy the new master had changed"
        );
        tokio::task::yield_now().await;
    }

    // The old master comes back as a replica of the new one; nothing
    // changes for the store.
    match fault {
        Fault::Kill => cluster.node(victim.port).start().await,
        Fault::Freeze => cluster.node(victim.port).thaw().await,
    }
    cluster.wait_until_healthy(Duration::from_secs(30)).await;
    every_operation_works(&store, &victim, &prefix, &after).await;
}

/// Loads `key` on `store` until its near cache answers (the copy is in
/// place); returns the record.
async fn assert_cached(store: &RedisStore, key: &StorageKey) -> SessionRecord {
    let start = Instant::now();
    let mut last_error = None;
    loop {
        let hits = store.near_cache_stats().unwrap().hits;
        // An instance idle through a silent failover (a frozen primary)
        // times out once on the old primary, then follows the cluster.
        match store.load(key).await {
            Ok(loaded) => {
                let loaded = loaded.expect("present");
                if store.near_cache_stats().unwrap().hits > hits {
                    return loaded;
                }
            }
            Err(e) => {
                assert!(
                    matches!(e, StoreError::Unavailable(_)),
                    "load failed with {e}"
                );
                last_error = Some(e);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the near cache never served the record: {:?}, last error {last_error:?}",
            store.near_cache_stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn data(b: &'static [u8]) -> bytes::Bytes {
    bytes::Bytes::from_static(b)
}

/// Every operation on sessions and indexes held by the slots that were the
/// dead master's: create, load, update, touch, delete,
/// list_user_sessions, delete_user, and both limit strategies.
async fn every_operation_works(
    store: &RedisStore,
    victim: &Victim,
    prefix: &KeyPrefix,
    users: &[String],
) {
    let (user, other) = (&users[0], &users[1]);
    let k = key_on(victim, prefix);
    let rec = record(Some(user), b"after", HOUR, HOUR);
    store.create(&k, &rec).await.expect("create");
    assert_eq!(
        store.load(&k).await.expect("load").map(|r| r.data),
        Some(data(b"after"))
    );
    let next = rec.clone().with_data(&b"after 2"[..]).with_version(2);
    store.update(&k, 1, &next).await.expect("update");
    assert!(matches!(
        store.update(&k, 1, &next).await,
        Err(StoreError::Conflict)
    ));
    let now = session_core::Timestamp::now();
    store
        .touch(&k, now, now.saturating_add(Duration::from_secs(600)))
        .await
        .expect("touch");
    store.delete(&k).await.expect("delete");
    assert!(store.load(&k).await.expect("load").is_none());

    // The per-user index: three sessions listed, limits, log out everywhere.
    let keys: Vec<StorageKey> = (0..3).map(|_| key_on(victim, prefix)).collect();
    for k in &keys {
        store
            .create(k, &record(Some(user), b"s", HOUR, HOUR))
            .await
            .expect("create");
    }
    store
        .create(&key(), &record(Some(other), b"o", HOUR, HOUR))
        .await
        .expect("another user's session");
    let mut listed: Vec<String> = store
        .list_user_sessions(user)
        .await
        .expect("list_user_sessions")
        .into_iter()
        .map(|s| s.key.as_str().to_owned())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = keys.iter().map(|k| k.as_str().to_owned()).collect();
    expected.sort();
    assert_eq!(listed, expected, "the user's index after the failover");

    let limit = |strategy| {
        CreateOptions::default().with_limit(UserSessionLimit {
            max: NonZeroUsize::new(3).unwrap(),
            strategy,
        })
    };
    let refused = store
        .create_with(
            &key(),
            &record(Some(user), b"s", HOUR, HOUR),
            &limit(LimitStrategy::RejectNew),
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::UserLimitReached { max: 3 })),
        "{refused:?}"
    );
    let newest = key_on(victim, prefix);
    let created = store
        .create_with(
            &newest,
            &record(Some(user), b"s", HOUR, HOUR),
            &limit(LimitStrategy::EvictOldest),
        )
        .await
        .expect("create_with evicting the oldest");
    assert_eq!(created.evicted.len(), 1, "{created:?}");
    assert_eq!(store.list_user_sessions(user).await.unwrap().len(), 3);

    assert_eq!(store.delete_user(user).await.expect("delete_user"), 3);
    assert!(store.list_user_sessions(user).await.unwrap().is_empty());
    for k in keys.iter().chain([&newest]) {
        assert!(
            store.load(k).await.unwrap().is_none(),
            "survived delete_user"
        );
    }
    assert_eq!(store.delete_user(other).await.expect("delete_user"), 1);
}
