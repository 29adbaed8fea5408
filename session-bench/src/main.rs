//! `session-bench`: see `--help` and BENCHMARKS.md.

use std::sync::Arc;

use clap::{Parser, ValueEnum};
use session_bench::chart;
use session_bench::progress::Progress;
use session_bench::report::{attach_floor_ratios, markdown, Row};
use session_bench::systems::{self, Servers};
use session_bench::workload::{self, Op, System};
use session_bench::BenchResult;
use session_core::SessionStore;
use session_encrypted::{EncryptedStore, EncryptionKey, KeyRing};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Memory,
    Redis,
    Postgres,
    Memcached,
}

/// Request-cycle benchmark of every session backend against its raw-client
/// floor and tower-sessions, with interleaved rounds and medians.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Backends to run (repeatable).
    #[arg(long = "backend", value_enum, default_values_t = [Backend::Memory])]
    backends: Vec<Backend>,
    /// Also run each backend wrapped in EncryptedStore.
    #[arg(long)]
    encrypted: bool,
    /// Sessions created before timing.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Timed operations per system and round.
    #[arg(long, default_value_t = 200_000)]
    ops: usize,
    /// Concurrent tasks.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Probability that a request modifies the session.
    #[arg(long, default_value_t = 0.2)]
    write_ratio: f64,
    /// Payload bytes per session (repeatable).
    #[arg(long = "payload", default_values_t = [200, 4096])]
    payloads: Vec<usize>,
    /// Interleaved rounds; tables report medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Skip tower-sessions peers.
    #[arg(long)]
    no_peers: bool,
    /// Skip the login, logout-everywhere and listing paths.
    #[arg(long)]
    no_paths: bool,
    /// Print one JSON object per system and round instead of the table.
    #[arg(long)]
    json: bool,
    /// Touch interval of the manager in seconds (the library default is 60:
    /// a session's first read after a minute moves its idle deadline, one
    /// extra write that the floors and tower-sessions never do).
    #[arg(long, default_value_t = 60)]
    touch_interval_secs: u64,
    /// Redis floors name their keys like the store's session keys
    /// (`<prefix>:s:{<64 hex digits>}`) instead of `<prefix>:<n>`: the
    /// same key length on both sides, to separate what key length costs
    /// from what the store's code costs.
    #[arg(long)]
    store_shaped_floor_keys: bool,
    /// Also write the Markdown table to this file.
    #[arg(long, value_name = "FILE")]
    markdown: Option<std::path::PathBuf>,
    /// Also draw each table as an SVG bar chart (throughput relative to the
    /// floor per system) into this directory, one file per backend, payload
    /// and session count.
    #[arg(long, value_name = "DIR")]
    chart_dir: Option<std::path::PathBuf>,
    /// Run nothing: draw the charts of the Markdown tables in this file (a
    /// report written by `--markdown`, or BENCHMARKS.md) into `--chart-dir`.
    #[arg(long, value_name = "FILE", requires = "chart_dir")]
    chart_from: Option<std::path::PathBuf>,
    /// No progress bar and no setup lines on standard error (the bar is
    /// drawn only when standard error is a terminal anyway); warnings
    /// about failed operations are still printed.
    #[arg(long, short)]
    quiet: bool,
    /// Random seed of the operation sequence.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Run only the systems whose name starts with this (repeatable), or,
    /// with a leading `=`, the one named exactly this (`=manager`), for
    /// profiling one of them; without the floor there are no ratios.
    #[arg(long = "only", value_name = "SYSTEM")]
    only: Vec<String>,
}

fn session_config(args: &Args) -> BenchResult<session_core::SessionConfig> {
    Ok(session_core::SessionConfig::builder()
        .touch_interval(std::time::Duration::from_secs(args.touch_interval_secs))
        .build()?)
}

fn floor_keys(args: &Args) -> systems::FloorKeys {
    if args.store_shaped_floor_keys {
        systems::FloorKeys::LikeTheStore
    } else {
        systems::FloorKeys::Short
    }
}

fn ns(tag: &str) -> String {
    format!("bench{}{}", std::process::id(), tag)
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis => "redis",
            Backend::Postgres => "postgres",
            Backend::Memcached => "memcached",
        }
    }
}

async fn our_store(b: Backend, servers: &Servers, tag: &str) -> BenchResult<Arc<dyn SessionStore>> {
    session_bench::systems::our_store(b.name(), servers, &ns(tag)).await
}

fn encrypted(store: Arc<dyn SessionStore>) -> Arc<dyn SessionStore> {
    Arc::new(EncryptedStore::new(
        store,
        KeyRing::new(1, EncryptionKey::generate()),
    ))
}

async fn systems_for(
    b: Backend,
    args: &Args,
    servers: &Servers,
    payload: usize,
) -> BenchResult<Vec<(String, Box<dyn System>)>> {
    let tag = format!("p{payload}");
    let mut out: Vec<(String, Box<dyn System>)> = Vec::new();
    let floor: Box<dyn System> = match b {
        Backend::Memory => Box::<systems::MemoryFloor>::default(),
        Backend::Redis => Box::new(
            systems::RedisFloor::connect(&servers.redis, &ns(&format!("floor{tag}")))
                .await?
                .with_keys(floor_keys(args)),
        ),
        Backend::Postgres => Box::new(
            systems::PostgresFloor::connect(
                &servers.postgres,
                &format!("session_bench.{}", ns(&format!("floor{tag}"))),
                10,
            )
            .await?,
        ),
        Backend::Memcached => Box::new(
            systems::MemcachedFloor::connect(
                &servers.memcached_addr(),
                &ns(&format!("floor{tag}")),
                args.concurrency,
            )
            .await?,
        ),
    };
    out.push(("floor".into(), floor));
    if b == Backend::Redis {
        out.push((
            "floor+cas".into(),
            Box::new(
                systems::RedisCasFloor::connect(&servers.redis, &ns(&format!("cas{tag}")))
                    .await?
                    .with_keys(floor_keys(args)),
            ),
        ));
    }
    out.push((
        "manager".into(),
        Box::new(systems::Manager::with_config(
            our_store(b, servers, &format!("m{tag}")).await?,
            session_config(args)?,
        )),
    ));
    if b == Backend::Redis {
        let near = |tag: String| async move {
            session_bench::systems::our_store("redis-near-cache", servers, &ns(&tag)).await
        };
        out.push((
            "manager+near-cache".into(),
            Box::new(systems::Manager::with_config(
                near(format!("n{tag}")).await?,
                session_config(args)?,
            )),
        ));
        out.push((
            "manager+near-cache, 2 instances".into(),
            Box::new(systems::TwoInstances::new(
                near(format!("n2{tag}")).await?,
                near(format!("n2{tag}")).await?,
                session_config(args)?,
            )),
        ));
    }
    if b == Backend::Memcached {
        out.push((
            "floor (memcache crate)".into(),
            Box::new(
                systems::MemcacheCrateFloor::connect(
                    &servers.memcached_addr(),
                    &ns(&format!("c{tag}")),
                    16,
                    64,
                )
                .await?,
            ),
        ));
        let store = session_bench::systems::our_store(
            "memcached-blocking",
            servers,
            &ns(&format!("a{tag}")),
        )
        .await?;
        out.push((
            "manager (blocking transport)".into(),
            Box::new(systems::Manager::with_config(store, session_config(args)?)),
        ));
    }
    if args.encrypted {
        let store = encrypted(our_store(b, servers, &format!("e{tag}")).await?);
        out.push((
            "manager+encrypted".into(),
            Box::new(systems::Manager::with_config(store, session_config(args)?)),
        ));
    }
    if !args.no_peers {
        for (name, peer) in systems::peers(b.name(), servers, &ns(&format!("t{tag}"))).await? {
            out.push((name, peer));
        }
    }
    Ok(out)
}

async fn paths_for(
    b: Backend,
    servers: &Servers,
    payload: usize,
) -> BenchResult<Vec<(String, Box<dyn System>)>> {
    let tag = format!("p{payload}");
    Ok(vec![
        (
            "path:login".into(),
            Box::new(systems::Login::new(
                our_store(b, servers, &format!("l{tag}")).await?,
            )) as Box<dyn System>,
        ),
        (
            "path:list-user".into(),
            Box::new(systems::PerUser::new(
                our_store(b, servers, &format!("u{tag}")).await?,
                false,
            )),
        ),
    ])
}

async fn run(args: Args, progress: &Progress) -> BenchResult<Vec<Row>> {
    let servers = Servers::from_env();
    let mut rows = Vec::new();
    let ops = workload::ops(args.seed, args.sessions, args.ops, args.write_ratio);
    if args.backends.contains(&Backend::Postgres) {
        systems::reset_postgres_schema(&servers).await?;
    }
    for &b in &args.backends {
        let backend = b.name();
        for &payload in &args.payloads {
            let mut list = systems_for(b, &args, &servers, payload).await?;
            if !args.no_paths {
                list.extend(paths_for(b, &servers, payload).await?);
            }
            let mut ready: Vec<(String, Arc<dyn System>)> = Vec::new();
            for (name, mut sys) in list {
                if !args.only.is_empty()
                    && !args.only.iter().any(|o| match o.strip_prefix('=') {
                        Some(exact) => name == exact,
                        None => name.starts_with(o.as_str()),
                    })
                {
                    continue;
                }
                progress.note(&format!(
                    "setup {backend} {payload} B {name}: {} sessions",
                    args.sessions
                ));
                sys.setup(args.sessions, payload).await?;
                ready.push((name, Arc::from(sys)));
            }
            progress.add_runs(ready.len() * args.rounds);
            if !args.no_paths {
                progress.add_runs(args.rounds);
            }
            for round in 0..args.rounds {
                for (name, sys) in &ready {
                    progress.running(format!(
                        "{backend} {payload} B {name}, round {}/{}",
                        round + 1,
                        args.rounds
                    ));
                    let seq = path_ops(name, &ops, args.sessions, round);
                    let m = workload::run(sys.clone(), seq, args.concurrency).await;
                    if let Some(e) = &m.first_error {
                        progress.warn(&format!(
                            "{backend} {name}: {} errors, first: {e}",
                            m.errors
                        ));
                    }
                    rows.push(Row::new(name, backend, payload, args.sessions, round, &m));
                    progress.run_done();
                }
            }
            // Logout-everywhere consumes its users: one fresh setup per round.
            if !args.no_paths {
                for round in 0..args.rounds {
                    progress.running(format!(
                        "{backend} {payload} B path:logout-everywhere, round {}/{}",
                        round + 1,
                        args.rounds
                    ));
                    let mut sys = systems::PerUser::new(
                        our_store(b, &servers, &format!("o{payload}r{round}")).await?,
                        true,
                    );
                    sys.setup(args.sessions, payload).await?;
                    let users = (args.sessions / 10).max(1);
                    let seq = Arc::new(
                        (0..users)
                            .map(|i| Op {
                                session: i,
                                write: true,
                            })
                            .collect::<Vec<_>>(),
                    );
                    let m = workload::run(Arc::new(sys), seq, args.concurrency).await;
                    rows.push(Row::new(
                        "path:logout-everywhere",
                        backend,
                        payload,
                        args.sessions,
                        round,
                        &m,
                    ));
                    progress.run_done();
                }
            }
        }
    }
    attach_floor_ratios(&mut rows);
    Ok(rows)
}

/// Login ops: each session at most once per round (it is rotated); listing
/// uses the shared sequence.
fn path_ops(name: &str, ops: &Arc<Vec<Op>>, sessions: usize, _round: usize) -> Arc<Vec<Op>> {
    if name == "path:login" {
        let n = ops.len().min(sessions);
        Arc::new(ops.iter().take(n).copied().collect())
    } else {
        ops.clone()
    }
}

/// One SVG per table into `dir` (created if missing).
fn write_charts(rows: &[Row], dir: &std::path::Path) -> BenchResult<()> {
    std::fs::create_dir_all(dir)?;
    for c in chart::charts(rows)? {
        std::fs::write(dir.join(&c.file_name), c.svg)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let json = args.json;
    let markdown_file = args.markdown.clone();
    let chart_dir = args.chart_dir.clone();
    if let (Some(from), Some(dir)) = (&args.chart_from, &chart_dir) {
        let drawn = std::fs::read_to_string(from)
            .map_err(Into::into)
            .and_then(|text| write_charts(&session_bench::report::rows_from_markdown(&text), dir));
        if let Err(e) = drawn {
            eprintln!(
                "session-bench: cannot draw the charts of {}: {e}",
                from.display()
            );
            std::process::exit(1);
        }
        return;
    }
    let progress = Progress::new(args.quiet);
    let result = run(args, &progress).await;
    progress.finish();
    match result {
        Ok(rows) => {
            if let Some(path) = markdown_file {
                if let Err(e) = std::fs::write(&path, markdown(&rows)) {
                    eprintln!("session-bench: cannot write {}: {e}", path.display());
                    std::process::exit(1);
                }
            }
            if let Some(dir) = chart_dir {
                if let Err(e) = write_charts(&rows, &dir) {
                    eprintln!(
                        "session-bench: cannot write the charts to {}: {e}",
                        dir.display()
                    );
                    std::process::exit(1);
                }
            }
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r).expect("row serializes"));
                }
            } else {
                print!("{}", markdown(&rows));
            }
        }
        Err(e) => {
            eprintln!("session-bench: {e}");
            std::process::exit(1);
        }
    }
}
