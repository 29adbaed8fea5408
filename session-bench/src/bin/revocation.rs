//! `revocation`: how long a session ended on one near-cached instance is
//! still served by another.
//!
//! Two `RedisStore`s with near caches on separate connections (instances A
//! and B). Each round creates a session on A, loads it on B until B answers
//! from its cache, then ends it on A (a logout: `delete`) and loads it on B
//! in a tight loop until B answers "no session". Reported: the time from
//! A's `delete` returning to B's first "no session" (what a client sees
//! after its logout response), and from A's `delete` starting, as
//! percentiles in microseconds.
//!
//! ```text
//! cargo run --release -p session-bench --bin revocation -- --rounds 2000
//! ```
//!
//! `REDIS_URL` (default redis://127.0.0.1:6379), or `--cluster` with
//! `REDIS_CLUSTER_URLS`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use session_core::{SessionRecord, SessionStore, StorageKey, Timestamp};
use session_redis::{NearCache, RedisStore};

/// Revocation latency across two near-cached instances.
#[derive(Debug, Parser)]
struct Args {
    /// Sessions ended (one measurement each).
    #[arg(long, default_value_t = 2000)]
    rounds: usize,
    /// Run against the cluster in `REDIS_CLUSTER_URLS` instead.
    #[arg(long)]
    cluster: bool,
}

async fn instance(args: &Args, ns: &str) -> Result<RedisStore, Box<dyn std::error::Error>> {
    let builder = RedisStore::builder()
        .prefix(ns)
        .near_cache(NearCache::new());
    Ok(if args.cluster {
        let urls = std::env::var("REDIS_CLUSTER_URLS").unwrap_or_else(|_| {
            "redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103".into()
        });
        builder.connect_cluster(urls.split(',')).await?
    } else {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        builder.connect(&url).await?
    })
}

fn key(round: usize) -> StorageKey {
    StorageKey::from_stored(&format!("{round:064x}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let ns = format!("revocation{}", std::process::id());
    let a = instance(&args, &ns).await?;
    let b = instance(&args, &ns).await?;
    let mut after_return = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut after_start = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut not_cached = 0usize;
    for round in 0..args.rounds {
        let now = Timestamp::now();
        let record = SessionRecord::new(
            Bytes::from_static(b"payload"),
            None,
            now,
            now.saturating_add(Duration::from_secs(600)),
            now.saturating_add(Duration::from_secs(600)),
        );
        let k = key(round);
        a.create(&k, &record).await?;
        // Until B serves it from its cache.
        let cached = Instant::now();
        loop {
            let hits = b.near_cache_stats().map_or(0, |s| s.hits);
            b.load(&k).await?;
            if b.near_cache_stats().map_or(0, |s| s.hits) > hits {
                break;
            }
            if cached.elapsed() > Duration::from_secs(1) {
                not_cached += 1;
                break;
            }
        }
        let start = Instant::now();
        a.delete(&k).await?;
        let returned = Instant::now();
        loop {
            if b.load(&k).await?.is_none() {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err("B served an ended session for 10 s".into());
            }
            tokio::task::yield_now().await;
        }
        let end = Instant::now();
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        after_return.saturating_record(us(end.saturating_duration_since(returned)));
        after_start.saturating_record(us(end - start));
    }
    println!(
        "| from | rounds | p50 µs | p90 µs | p99 µs | max µs |\n|---|---:|---:|---:|---:|---:|"
    );
    for (name, h) in [
        ("A's delete returned", &after_return),
        ("A's delete started", &after_start),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
    if not_cached > 0 {
        eprintln!("{not_cached} rounds never had the session in B's cache");
    }
    Ok(())
}
