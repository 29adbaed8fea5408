//! The session benchmark: every backend through the `SessionManager`,
//! against its raw-client floor and against tower-sessions' store for the
//! same backend, in one run with the same random choices.
//!
//! - [`workload`]: the request-cycle workload and the timed runner.
//! - [`systems`]: what is measured (ours, floors, peers, extra paths).
//! - [`report`]: medians, ratios, tables and JSON lines.
//! - [`chart`]: an SVG bar chart of the ratios to the floor per table.
//! - [`progress`]: the progress bar of a long run.

pub mod chart;
pub mod progress;
pub mod report;
pub mod systems;
pub mod workload;

/// Result type of the benchmark code.
pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
