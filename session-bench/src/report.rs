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

/// The median of `v` (the mean of the middle two for an even count), NaN
/// for none.
#[must_use]
pub fn median(mut v: Vec<f64>) -> f64 {
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

/// Rows read back from Markdown tables in the format [`markdown`] writes
/// (lines of 11 cells starting with `| `; other lines are ignored), one
/// per table line, as round 0 with the median values: what [`crate::chart`]
/// needs to draw the tables of an earlier run or of BENCHMARKS.md. A line
/// whose numbers do not parse is skipped.
#[must_use]
pub fn rows_from_markdown(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let cells: Vec<&str> = line
                .strip_prefix('|')?
                .strip_suffix('|')?
                .split('|')
                .map(str::trim)
                .collect();
            let [backend, payload, sessions, system, ops, vs, p50, p99, p999, _, errors] =
                cells.as_slice()
            else {
                return None;
            };
            let ratio = |s: &str| s.strip_suffix('×').and_then(|v| v.parse::<f64>().ok());
            Some(Row {
                system: (*system).to_owned(),
                backend: (*backend).to_owned(),
                payload: payload.parse().ok()?,
                sessions: sessions.parse().ok()?,
                round: 0,
                ops_per_sec: ops.parse().ok()?,
                p50_us: p50.parse().ok()?,
                p99_us: p99.parse().ok()?,
                p999_us: p999.parse().ok()?,
                vs_floor: ratio(vs),
                errors: errors.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_reads_back() {
        let text = "### redis\n\n| backend | payload | sessions | system | ops/s | vs floor | p50 µs | p99 µs | p99.9 µs | p99 vs floor | errors |\n|---|---|---|---|---|---|---|---|---|---|---|\n| redis | 200 | 10000 | floor | 1000 | 1.00× | 10 | 20 | 30 | 1.00× | 0 |\n| redis | 200 | 10000 | manager | 810 | 0.81× | 12 | 25 | 40 | 1.25× | 0 |\n| redis | 200 | 10000 | path:login | 99 | – | 1 | 2 | 3 | – | 1 |\n| not | a | row |\n";
        let rows = rows_from_markdown(text);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].system, "manager");
        assert_eq!(rows[1].vs_floor, Some(0.81));
        assert_eq!(rows[2].vs_floor, None);
        assert_eq!(rows[2].errors, 1);
        assert_eq!(markdown(&rows).lines().count(), 5, "{}", markdown(&rows));
    }
}
