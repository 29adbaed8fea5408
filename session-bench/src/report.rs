//! Rows, medians over rounds, ratios to the floor, Markdown and JSON output.

use serde::Serialize;

use crate::workload::Measurement;

/// One system in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured (`floor`, `manager`, `manager+encrypted`, a peer, a path).
    pub system: String,
    /// The backend.
    pub backend: String,
    /// Payload bytes per session.
    pub payload: usize,
    /// Sessions in the store.
    pub sessions: usize,
    /// Round number (rounds are interleaved across systems).
    pub round: usize,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Median latency.
    pub p50_us: u64,
    /// 99th percentile latency.
    pub p99_us: u64,
    /// 99.9th percentile latency.
    pub p999_us: u64,
    /// Throughput relative to the floor in the same round (None for paths
    /// without a floor).
    pub vs_floor: Option<f64>,
    /// Failed operations.
    pub errors: u64,
}

impl Row {
    /// Builds a row from a measurement.
    #[must_use]
    pub fn new(
        system: &str,
        backend: &str,
        payload: usize,
        sessions: usize,
        round: usize,
        m: &Measurement,
    ) -> Self {
        Self {
            system: system.to_owned(),
            backend: backend.to_owned(),
            payload,
            sessions,
            round,
            ops_per_sec: m.ops_per_sec(),
            p50_us: m.latency_us.value_at_quantile(0.5),
            p99_us: m.latency_us.value_at_quantile(0.99),
            p999_us: m.latency_us.value_at_quantile(0.999),
            vs_floor: None,
            errors: m.errors,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Fills `vs_floor` for every row that has a floor row in the same round.
pub fn attach_floor_ratios(rows: &mut [Row]) {
    let floors: Vec<(String, usize, usize, usize, f64)> = rows
        .iter()
        .filter(|r| r.system == "floor")
        .map(|r| {
            (
                r.backend.clone(),
                r.payload,
                r.sessions,
                r.round,
                r.ops_per_sec,
            )
        })
        .collect();
    for r in rows.iter_mut() {
        if let Some(f) = floors
            .iter()
            .find(|f| f.0 == r.backend && f.1 == r.payload && f.2 == r.sessions && f.3 == r.round)
        {
            if !r.system.starts_with("path:") {
                r.vs_floor = Some(r.ops_per_sec / f.4);
            }
        }
    }
}

/// A Markdown table of medians over rounds, in first-seen order.
#[must_use]
pub fn markdown(rows: &[Row]) -> String {
    let mut keys: Vec<(String, usize, usize, String)> = Vec::new();
    for r in rows {
        let k = (r.backend.clone(), r.payload, r.sessions, r.system.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut out = String::from(
        "| backend | payload | sessions | system | ops/s | vs floor | p50 µs | p99 µs | p99.9 µs | p99 vs floor | errors |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (backend, payload, sessions, system) in keys {
        let sel: Vec<&Row> = rows
            .iter()
            .filter(|r| {
                r.backend == backend
                    && r.payload == payload
                    && r.sessions == sessions
                    && r.system == system
            })
            .collect();
        let med = |f: &dyn Fn(&Row) -> f64| median(sel.iter().map(|r| f(r)).collect());
        let floor_p99 = median(
            rows.iter()
                .filter(|r| {
                    r.backend == backend
                        && r.payload == payload
                        && r.sessions == sessions
                        && r.system == "floor"
                })
                .map(|r| r.p99_us as f64)
                .collect(),
        );
        let vs = if sel.iter().all(|r| r.vs_floor.is_some()) {
            format!("{:.2}×", med(&|r| r.vs_floor.unwrap_or(f64::NAN)))
        } else {
            "–".to_owned()
        };
        let p99 = med(&|r| r.p99_us as f64);
        let p99_vs = if floor_p99.is_nan() || system.starts_with("path:") {
            "–".to_owned()
        } else {
            format!("{:.2}×", p99 / floor_p99)
        };
        let errors: u64 = sel.iter().map(|r| r.errors).sum();
        out.push_str(&format!(
            "| {backend} | {payload} | {sessions} | {system} | {:.0} | {vs} | {:.0} | {p99:.0} | {:.0} | {p99_vs} | {errors} |\n",
            med(&|r| r.ops_per_sec),
            med(&|r| r.p50_us as f64),
            med(&|r| r.p999_us as f64),
        ));
    }
    out
}
