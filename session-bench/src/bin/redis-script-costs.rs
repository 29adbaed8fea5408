//! Server time per call of the Redis write path, from `INFO commandstats`
//! (`usec_per_call`): a plain `SET`, scripts of growing size, the store's
//! own compare-and-set (through `RedisStore::update`, an `FCALL` of its
//! function library on Redis 7), and a staged write
//! (`SET` to a staging key, then a script that checks and renames).
//!
//! ```sh
//! cargo run --release -p session-bench --bin redis-script-costs
//! ```
//!
//! Uses `REDIS_URL` (default `redis://127.0.0.1:6379`). Resets the server's
//! command statistics (`CONFIG RESETSTAT`) before every measurement: run it
//! on a server nothing else is measuring. Prints a Markdown table of
//! medians over 5 interleaved repetitions of 20,000 calls each.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use session_bench::BenchResult;
use session_core::{SessionRecord, SessionStore, StorageKey, Timestamp};
use session_redis::RedisStore;

const CALLS: usize = 20_000;
const BATCH: usize = 500;
const REPETITIONS: usize = 5;
const TTL_MS: u64 = 600_000;
const TASKS: usize = 32;

/// `GETRANGE` + `SET`: the least a version check can be in Lua.
const BARE_CAS: &str = "\
local h = redis.call('GETRANGE', KEYS[1], 0, 45)
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1";

/// Checks, then moves the staged value into place (KEYS: session, staging).
const STAGED: &str = "\
local h = redis.call('GETRANGE', KEYS[1], 0, 45)
if string.sub(h, 3, 10) ~= ARGV[1] then redis.call('DEL', KEYS[2]) return -1 end
redis.call('RENAME', KEYS[2], KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1";

fn record(version: u64, size: usize) -> SessionRecord {
    let now = Timestamp::now();
    SessionRecord::new(
        Bytes::from(vec![b'x'; size]),
        None,
        now,
        now.saturating_add(Duration::from_secs(600)),
        now.saturating_add(Duration::from_secs(3600)),
    )
    .with_last_access(now)
    .with_version(version)
}

/// `usec_per_call` of each listed command since the last reset, summed.
async fn usec_per_call(conn: &mut MultiplexedConnection, commands: &[&str]) -> BenchResult<f64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    let mut total = 0.0;
    for command in commands {
        let prefix = format!("cmdstat_{command}:");
        let line = info
            .lines()
            .find(|l| l.starts_with(&prefix))
            .ok_or_else(|| format!("no {command} calls recorded"))?;
        let value = line
            .split(',')
            .find_map(|f| f.strip_prefix("usec_per_call="))
            .ok_or("no usec_per_call")?;
        total += value.trim().parse::<f64>()?;
    }
    Ok(total)
}

async fn reset(conn: &mut MultiplexedConnection) -> BenchResult<()> {
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Sends `CALLS` commands built by `cmd` in pipelined batches.
async fn pipelined(
    conn: &mut MultiplexedConnection,
    mut cmd: impl FnMut(&mut redis::Pipeline),
) -> BenchResult<()> {
    for _ in 0..CALLS / BATCH {
        let mut pipe = redis::pipe();
        for _ in 0..BATCH {
            cmd(&mut pipe);
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

/// What is measured, in the order of the table.
#[derive(Debug, Clone, Copy)]
enum Measurement {
    PlainSet,
    EmptyScript,
    BareCas,
    StoreUpdate,
    Staged,
}

impl Measurement {
    const ALL: [Self; 5] = [
        Self::PlainSet,
        Self::EmptyScript,
        Self::BareCas,
        Self::StoreUpdate,
        Self::Staged,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::PlainSet => "plain SET … PX",
            Self::EmptyScript => "EVALSHA `return 1`, 10 arguments",
            Self::BareCas => "EVALSHA `GETRANGE` + `SET`",
            Self::StoreUpdate => "the store's `update` (one FCALL of its function library)",
            Self::Staged => "staged: `SET` + EVALSHA `GETRANGE`, `RENAME`, `PEXPIRE`",
        }
    }
}

async fn measure(
    what: Measurement,
    size: usize,
    conn: &mut MultiplexedConnection,
    store: &RedisStore,
) -> BenchResult<f64> {
    let key = format!("bench-script-costs:{size}");
    let stored = record(1, size).encode();
    // Ten arguments as the store's update sends them, the record among them.
    let args = |cmd: &mut redis::Cmd| {
        cmd.arg(1u64.to_be_bytes().as_slice())
            .arg(0)
            .arg(&stored[..])
            .arg(TTL_MS)
            .arg("seg")
            .arg(0)
            .arg(TTL_MS)
            .arg("0")
            .arg("member");
    };
    let eval = |script: &redis::Script, keys: &[&str]| {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
        cmd
    };
    match what {
        Measurement::PlainSet => {
            reset(conn).await?;
            pipelined(conn, |p| {
                p.cmd("SET")
                    .arg(&key)
                    .arg(&stored[..])
                    .arg("PX")
                    .arg(TTL_MS);
            })
            .await?;
            usec_per_call(conn, &["set"]).await
        }
        Measurement::EmptyScript | Measurement::BareCas => {
            let script = redis::Script::new(if matches!(what, Measurement::EmptyScript) {
                "return 1"
            } else {
                BARE_CAS
            });
            script.load_async(conn).await?;
            let mut cmd = eval(&script, &[&key]);
            args(&mut cmd);
            reset(conn).await?;
            pipelined(conn, |p| {
                p.add_command(cmd.clone());
            })
            .await?;
            usec_per_call(conn, &["evalsha"]).await
        }
        Measurement::Staged => {
            let script = redis::Script::new(STAGED);
            script.load_async(conn).await?;
            redis::cmd("SET")
                .arg(&key)
                .arg(&stored[..])
                .query_async::<()>(conn)
                .await?;
            let staging = format!("{key}:staging");
            let mut cmd = eval(&script, &[&key, &staging]);
            cmd.arg(1u64.to_be_bytes().as_slice()).arg(0).arg(TTL_MS);
            reset(conn).await?;
            pipelined(conn, |p| {
                p.cmd("SET")
                    .arg(&staging)
                    .arg(&stored[..])
                    .arg("PX")
                    .arg(60_000);
                p.add_command(cmd.clone());
            })
            .await?;
            usec_per_call(conn, &["set", "evalsha"]).await
        }
        Measurement::StoreUpdate => {
            // 32 sessions updated concurrently, so the server is as busy as
            // with the pipelined calls above (an idle server between calls
            // answers each more slowly).
            let keys: Vec<StorageKey> = (0..TASKS)
                .map(|t| StorageKey::from_stored(&format!("script-costs-{size}-{t}")))
                .collect();
            for k in &keys {
                store.delete(k).await?;
                store.create(k, &record(1, size)).await?;
            }
            reset(conn).await?;
            let per_task = (CALLS / TASKS) as u64;
            let mut runs = tokio::task::JoinSet::new();
            for k in keys.clone() {
                let store = store.clone();
                runs.spawn(async move {
                    for version in 1..=per_task {
                        store
                            .update(&k, version, &record(version + 1, size))
                            .await?;
                    }
                    Ok::<_, session_core::StoreError>(())
                });
            }
            while let Some(r) = runs.join_next().await {
                r??;
            }
            let cost = usec_per_call(conn, &["fcall"]).await;
            for k in &keys {
                store.delete(k).await?;
            }
            cost
        }
    }
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await.map_err(|e| {
        format!("cannot reach Redis at {url} ({e}); start it with scripts/services.sh or set REDIS_URL")
    })?;
    let store = RedisStore::builder()
        .prefix("bench-script-costs")
        .connect(&url)
        .await?;
    let mut samples: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    for _ in 0..REPETITIONS {
        for size in [200, 4096] {
            for (i, what) in Measurement::ALL.into_iter().enumerate() {
                let t = measure(what, size, &mut conn, &store).await?;
                samples.entry((i, size)).or_default().push(t);
            }
        }
    }
    redis::cmd("DEL")
        .arg("bench-script-costs:200")
        .arg("bench-script-costs:4096")
        .query_async::<()>(&mut conn)
        .await?;
    println!("| server time per write | 200 B | 4 KiB |\n|---|---|---|");
    for (i, what) in Measurement::ALL.into_iter().enumerate() {
        let median = |size| {
            let mut v = samples[&(i, size)].clone();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "| {} | {:.2} µs | {:.2} µs |",
            what.label(),
            median(200),
            median(4096)
        );
    }
    Ok(())
}
