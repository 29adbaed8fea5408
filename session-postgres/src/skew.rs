//! The application's clock against the database's: [`ClockSkew`].
//!
//! Deadlines are computed by the application (the session manager's
//! clock) and compared with the database's `now()` by every statement, so
//! the two clocks must agree. When the database's clock is ahead by more
//! than a session's idle timeout, a fresh login is already expired for the
//! database and loads as nothing; when it is behind, expired rows stay
//! (invisible to the manager, which re-checks every deadline with its own
//! clock) until the database catches up.
//!
//! The store measures the difference at
//! [`connect`](crate::PostgresStoreBuilder::connect), then again on use
//! every [`clock_skew_check_interval`](crate::PostgresStoreBuilder::clock_skew_check_interval)
//! (a lazily connected store or one built on a given pool measures on its
//! first call), and whenever asked
//! ([`PostgresStore::measure_clock_skew`](crate::PostgresStore::measure_clock_skew)).
//! A measurement beyond
//! [`max_clock_skew`](crate::PostgresStoreBuilder::max_clock_skew) is
//! logged as a warning; the latest is
//! [`PostgresStore::clock_skew`](crate::PostgresStore::clock_skew). A skew
//! is information, never an error: no operation fails because of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use session_core::{Clock, ClockSkew};

use crate::ident::TableName;

/// The statement that reads the database's clock: its current time (not
/// the transaction's start), in whole milliseconds since the Unix epoch.
/// Sent as a simple query: one round trip, nothing prepared.
pub(crate) const DATABASE_CLOCK_SQL: &str =
    "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::int8";

/// How soon a failed automatic measurement is tried again (at most the
/// check interval).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// A store's clock-skew state: the application clock, the bound, the
/// latest measurement and when the next automatic one is due.
pub(crate) struct SkewMonitor {
    clock: Arc<dyn Clock>,
    max: Duration,
    interval: Option<Duration>,
    latest: Mutex<Option<ClockSkew>>,
    /// Origin of `next_due_ms`.
    epoch: Instant,
    /// Milliseconds after `epoch` when the next automatic measurement is
    /// due; `u64::MAX`: never.
    next_due_ms: AtomicU64,
}

impl SkewMonitor {
    /// Due at once when `interval` is set (the first call measures), never
    /// otherwise.
    pub(crate) fn new(clock: Arc<dyn Clock>, max: Duration, interval: Option<Duration>) -> Self {
        Self {
            clock,
            max,
            interval,
            latest: Mutex::new(None),
            epoch: Instant::now(),
            next_due_ms: AtomicU64::new(if interval.is_some() { 0 } else { u64::MAX }),
        }
    }

    pub(crate) fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn after(&self, d: Duration) -> u64 {
        self.now_ms()
            .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Whether an automatic measurement is due; true for exactly one of
    /// several callers at once, which then owns it (the next one is pushed
    /// a whole interval away right here).
    pub(crate) fn claim_due(&self) -> bool {
        let Some(interval) = self.interval else {
            return false;
        };
        let due = self.next_due_ms.load(Ordering::Relaxed);
        if self.now_ms() < due {
            return false;
        }
        self.next_due_ms
            .compare_exchange(
                due,
                self.after(interval),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// A measurement starts: no automatic one is due until a whole
    /// interval later.
    pub(crate) fn postpone(&self) {
        if let Some(interval) = self.interval {
            self.next_due_ms
                .store(self.after(interval), Ordering::Release);
        }
    }

    /// A measurement failed: the next automatic one is due soon (a
    /// minute, or the interval if shorter), not a whole interval later.
    pub(crate) fn retry_soon(&self) {
        if let Some(interval) = self.interval {
            let soon = self.after(interval.min(RETRY_AFTER_FAILURE));
            self.next_due_ms.fetch_min(soon, Ordering::AcqRel);
        }
    }

    /// A successful measurement: kept as the latest, logged as a warning
    /// beyond the bound.
    pub(crate) fn record(&self, skew: ClockSkew, table: &TableName) {
        // Logged before it is published: whoever sees the measurement (a
        // health check, a test) finds its warning already written.
        if skew.exceeds(self.max) {
            tracing::warn!(
                target: "session_postgres",
                table = %table,
                offset_ms = skew.offset_millis(),
                uncertainty_ms = u64::try_from(skew.uncertainty().as_millis()).unwrap_or(u64::MAX),
                max_clock_skew_ms = u64::try_from(self.max.as_millis()).unwrap_or(u64::MAX),
                "{skew}: deadlines are computed on the application's clock and compared with the \
                 database's, so sessions end early (database ahead) or linger in the table \
                 (database behind); synchronize both clocks (NTP)"
            );
        } else {
            tracing::debug!(
                target: "session_postgres",
                table = %table,
                offset_ms = skew.offset_millis(),
                "measured the clock skew"
            );
        }
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(skew);
    }

    pub(crate) fn latest(&self) -> Option<ClockSkew> {
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use session_core::SystemClock;

    #[test]
    fn one_caller_claims_each_due_check() {
        let m = SkewMonitor::new(
            Arc::new(SystemClock),
            Duration::from_secs(2),
            Some(Duration::from_secs(600)),
        );
        assert!(m.claim_due());
        assert!(!m.claim_due(), "pushed an interval away");
        m.retry_soon();
        assert!(!m.claim_due(), "soon, not now");
        let never = SkewMonitor::new(Arc::new(SystemClock), Duration::from_secs(2), None);
        assert!(!never.claim_due());
        let every = SkewMonitor::new(
            Arc::new(SystemClock),
            Duration::from_secs(2),
            Some(Duration::ZERO),
        );
        assert!(every.claim_due() && every.claim_due());
    }
}
