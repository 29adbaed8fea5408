//! The one-round-trip update: an update of a session loaded a moment ago is
//! a single `cas`, counted on the server; a token made stale by another
//! instance's write falls back to `gets`/`cas` and still detects the
//! conflict.
//!
//! The round-trip test reads the server's global `stats`, so it is the only
//! test in this binary (test binaries run one at a time).

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use session_core::conformance::record;
use session_core::{KeyDeriver, SessionId, SessionRecord, SessionStore, StorageKey, StoreError};
use session_memcached::{MemcachedConfig, MemcachedStore};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The server's counters (`stats`).
async fn stats(url: &str) -> HashMap<String, u64> {
    let addr = url.trim_start_matches("memcache://");
    let mut conn = BufReader::new(TcpStream::connect(addr).await.expect("connect for stats"));
    conn.get_mut().write_all(b"stats\r\n").await.unwrap();
    let mut out = HashMap::new();
    let mut line = String::new();
    loop {
        line.clear();
        conn.read_line(&mut line).await.unwrap();
        let line = line.trim_end();
        if line == "END" || line.is_empty() {
            return out;
        }
        let mut parts = line.split(' ');
        if let (Some("STAT"), Some(name), Some(value)) = (parts.next(), parts.next(), parts.next())
        {
            if let Ok(v) = value.parse() {
                out.insert(name.to_owned(), v);
            }
        }
    }
}

fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, name: &str) -> u64 {
    after[name] - before[name]
}

fn store(url: &str, namespace: &str, recent_reads: usize) -> MemcachedStore {
    let config = MemcachedConfig::new([url])
        .unwrap()
        .with_namespace(namespace)
        .unwrap()
        .with_recent_reads(recent_reads);
    MemcachedStore::new(config).unwrap()
}

fn next(rec: &SessionRecord, data: &'static [u8]) -> SessionRecord {
    rec.clone()
        .with_data(Bytes::from_static(data))
        .with_version(rec.version + 1)
}

/// Loads then updates `n` fresh sessions; returns the server's `cmd_get`
/// and `cas_hits` deltas.
async fn load_then_update(url: &str, store: &MemcachedStore, n: u64) -> (u64, u64) {
    let keys: Vec<StorageKey> = (0..n)
        .map(|_| KeyDeriver::new().derive(&SessionId::generate()))
        .collect();
    let rec = record(Some("round-trips"), b"v1", 60_000, 120_000);
    for k in &keys {
        store.create(k, &rec).await.unwrap();
    }
    let before = stats(url).await;
    for k in &keys {
        let loaded = store.load(k).await.unwrap().expect("just created");
        store
            .update(k, loaded.version, &next(&loaded, b"v2"))
            .await
            .unwrap();
    }
    let after = stats(url).await;
    for k in &keys {
        assert_eq!(&store.load(k).await.unwrap().unwrap().data[..], b"v2");
    }
    (
        delta(&before, &after, "cmd_get"),
        delta(&before, &after, "cas_hits"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_after_load_is_one_round_trip_and_stale_tokens_still_conflict() {
    let url = common::url();
    let ns = format!("recent_{}", std::process::id());

    // With the cache: one `mg` per load, none per update.
    let fast = store(&url, &ns, 1000);
    assert_eq!(load_then_update(&url, &fast, 20).await, (20, 20));
    // Without it: the update reads again first.
    let slow = store(&url, &ns, 0);
    assert_eq!(load_then_update(&url, &slow, 20).await, (40, 20));

    // Instance A loads; instance B writes; A's token is stale, and A's
    // update against the version it loaded is a conflict, not a lost write.
    let (a, b) = (store(&url, &ns, 1000), store(&url, &ns, 1000));
    let key = KeyDeriver::new().derive(&SessionId::generate());
    a.create(&key, &record(Some("ada"), b"v1", 60_000, 120_000))
        .await
        .unwrap();
    let seen_by_a = a.load(&key).await.unwrap().unwrap();
    let seen_by_b = b.load(&key).await.unwrap().unwrap();
    b.update(&key, seen_by_b.version, &next(&seen_by_b, b"from b"))
        .await
        .unwrap();
    let err = a
        .update(&key, seen_by_a.version, &next(&seen_by_a, b"from a"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    let now = a.load(&key).await.unwrap().unwrap();
    assert_eq!(&now.data[..], b"from b");

    // A deleted session is not found, whatever A remembers of it.
    let again = a.load(&key).await.unwrap().unwrap();
    b.delete(&key).await.unwrap();
    let err = a
        .update(&key, again.version, &next(&again, b"late"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");

    // The user binding stays the stored one on the fast path too.
    let key = KeyDeriver::new().derive(&SessionId::generate());
    a.create(&key, &record(Some("ada"), b"v1", 60_000, 120_000))
        .await
        .unwrap();
    let loaded = a.load(&key).await.unwrap().unwrap();
    let mut other_user = next(&loaded, b"v2");
    other_user.user_id = Some("mallory".into());
    a.update(&key, loaded.version, &other_user).await.unwrap();
    let stored = a.load(&key).await.unwrap().unwrap();
    assert_eq!(stored.user_id.as_deref(), Some("ada"));
    assert_eq!(&stored.data[..], b"v2");
}
