//! Progress of a long run on standard error: a bar over the timed runs
//! (every system, payload and round) with what is running now, drawn only
//! when standard error is a terminal and the run is not `--quiet`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress display of one benchmark run.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
    quiet: bool,
}

impl Progress {
    /// A display on standard error: a bar when it is a terminal and
    /// `quiet` is false; otherwise no bar, and [`note`](Self::note) lines
    /// are printed as plain lines (none when `quiet`).
    #[must_use]
    pub fn new(quiet: bool) -> Self {
        let visible = !quiet && std::io::stderr().is_terminal();
        Self::with_target(
            quiet,
            if visible {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        )
    }

    /// A display that draws nothing and prints nothing (for tests).
    #[must_use]
    pub fn hidden() -> Self {
        Self::with_target(true, ProgressDrawTarget::hidden())
    }

    fn with_target(quiet: bool, target: ProgressDrawTarget) -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), target);
        // The template is a constant: it parses.
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} runs, eta {eta}: {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self { bar, quiet }
    }

    /// Whether a bar is drawn.
    #[must_use]
    pub fn is_visible(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Announces `n` more timed runs.
    pub fn add_runs(&self, n: usize) {
        self.bar.inc_length(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Says what runs now (shown beside the bar).
    pub fn running(&self, what: String) {
        self.bar.set_message(what);
    }

    /// One timed run is done.
    pub fn run_done(&self) {
        self.bar.inc(1);
    }

    /// An information line (setup steps): above the bar, or a plain line
    /// when there is no bar; nothing when quiet.
    pub fn note(&self, line: &str) {
        if self.quiet {
            return;
        }
        if self.is_visible() {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    /// A warning (failed operations): always printed, above the bar.
    pub fn warn(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hidden_display_counts_runs_and_draws_nothing() {
        let p = Progress::hidden();
        assert!(!p.is_visible());
        p.add_runs(3);
        p.running("redis 200 B manager round 1".to_owned());
        p.run_done();
        assert_eq!((p.bar.position(), p.bar.length()), (1, Some(3)));
        p.note("not shown");
        p.finish();
    }

    #[test]
    fn quiet_never_draws() {
        assert!(!Progress::new(true).is_visible());
    }
}
