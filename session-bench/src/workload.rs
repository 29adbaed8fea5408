//! The request cycle and the timed runner.
//!
//! Sessions are created first (untimed; our managers then load each once, so
//! a near cache starts in its steady state, as tower-sessions' caching store
//! does, which fills its cache when it creates a session). Then `concurrency` tasks share
//! `ops` operations; each picks a random existing session, loads it, and with
//! probability `write_ratio` modifies one field and saves it. The sequence of
//! (session, write?) choices is drawn once from a seeded RNG and replayed
//! identically for every system.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::BenchResult;

/// One operation of the workload.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    /// Index of the session to use.
    pub session: usize,
    /// Whether this request modifies the session.
    pub write: bool,
}

/// Draws the operation sequence.
#[must_use]
pub fn ops(seed: u64, sessions: usize, count: usize, write_ratio: f64) -> Arc<Vec<Op>> {
    let mut rng = StdRng::seed_from_u64(seed);
    Arc::new(
        (0..count)
            .map(|_| Op {
                session: rng.random_range(0..sessions),
                write: rng.random_bool(write_ratio),
            })
            .collect(),
    )
}

/// Something the runner can drive.
#[async_trait]
pub trait System: Send + Sync {
    /// Creates `sessions` sessions with `payload` bytes of data (untimed).
    async fn setup(&mut self, sessions: usize, payload: usize) -> BenchResult<()>;
    /// Performs one operation on behalf of worker `worker`.
    async fn op(&self, worker: usize, op: Op) -> BenchResult<()>;
}

/// Measurements of one run.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Operations completed successfully.
    pub ok: u64,
    /// Operations that returned an error.
    pub errors: u64,
    /// Wall time of the timed part.
    pub elapsed: Duration,
    /// Latency histogram in microseconds.
    pub latency_us: Histogram<u64>,
    /// First error seen, for the report.
    pub first_error: Option<String>,
}

impl Measurement {
    /// Successful operations per second.
    #[must_use]
    pub fn ops_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `ops` on `system` with `concurrency` tasks.
pub async fn run(system: Arc<dyn System>, ops: Arc<Vec<Op>>, concurrency: usize) -> Measurement {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (system, ops, next) = (system.clone(), ops.clone(), next.clone());
            tokio::spawn(async move {
                let mut hist =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
                let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(op) = ops.get(i) else { break };
                    let t = Instant::now();
                    match system.op(worker, *op).await {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| e.to_string());
                        }
                    }
                    let us = u64::try_from(t.elapsed().as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    hist.saturating_record(us);
                }
                (hist, ok, errors, first_error)
            })
        })
        .collect();
    let mut m = Measurement {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        first_error: None,
    };
    for t in tasks {
        let (hist, ok, errors, first) = t.await.expect("worker panicked");
        m.latency_us.add(hist).expect("same bounds");
        m.ok += ok;
        m.errors += errors;
        if m.first_error.is_none() {
            m.first_error = first;
        }
    }
    m.elapsed = start.elapsed();
    m
}
