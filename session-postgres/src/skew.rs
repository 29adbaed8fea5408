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

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use session_core::{Clock, Timestamp};

use crate::ident::TableName;

/// The statement that reads the database's clock: its current time (not
/// the transaction's start), in whole milliseconds since the Unix epoch.
/// Sent as a simple query: one round trip, nothing prepared.
pub(crate) const DATABASE_CLOCK_SQL: &str =
    "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::int8";

/// How soon a failed automatic measurement is tried again (at most the
/// check interval).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// One measurement of the database's clock against the application's.
///
/// The application's clock is read just before the query is sent, the
/// database's (`clock_timestamp()`) while it runs; the database's reading
/// is compared with the application's time at the middle of the round
/// trip. The true offset lies within [`uncertainty`](Self::uncertainty)
/// (half the round trip, plus 1 ms for the millisecond resolution of both
/// readings) of the measured one.
///
/// ```
/// use std::time::Duration;
/// use session_core::Timestamp;
/// use session_postgres::ClockSkew;
///
/// // The application clock read 12:00:00.000, the round trip took 4 ms,
/// // the database said 13:00:00.002: the database is an hour ahead.
/// let app = Timestamp::from_unix_millis(1_800_000_000_000);
/// let db = Timestamp::from_unix_millis(1_800_003_600_002);
/// let skew = ClockSkew::from_round_trip(app, Duration::from_millis(4), db);
/// assert_eq!(skew.offset_millis(), 3_600_000);
/// assert!(skew.database_is_ahead());
/// assert_eq!(skew.uncertainty(), Duration::from_millis(3));
/// assert!(skew.exceeds(Duration::from_secs(2)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClockSkew {
    offset_millis: i64,
    uncertainty: Duration,
    measured_at: Timestamp,
}

impl ClockSkew {
    /// The skew shown by one round trip: the application's clock read
    /// `app_before` just before sending, the answer came back `round_trip`
    /// later (a monotonic measurement), and the database's clock read
    /// `database` in between.
    #[must_use]
    pub fn from_round_trip(
        app_before: Timestamp,
        round_trip: Duration,
        database: Timestamp,
    ) -> Self {
        let half = round_trip / 2;
        let midpoint = app_before.saturating_add(half);
        let half_ms = u64::try_from(half.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        Self {
            offset_millis: database
                .as_unix_millis()
                .saturating_sub(midpoint.as_unix_millis()),
            uncertainty: Duration::from_millis(half_ms.saturating_add(1)),
            measured_at: midpoint,
        }
    }

    /// The database's clock minus the application's, in milliseconds:
    /// positive when the database's clock is ahead (the application's is
    /// behind: sessions end early by that much), negative when it is
    /// behind.
    #[must_use]
    pub fn offset_millis(&self) -> i64 {
        self.offset_millis
    }

    /// How far apart the clocks are, whichever is ahead.
    #[must_use]
    pub fn magnitude(&self) -> Duration {
        Duration::from_millis(self.offset_millis.unsigned_abs())
    }

    /// Whether the database's clock is ahead of the application's
    /// ([`offset_millis`](Self::offset_millis) > 0).
    #[must_use]
    pub fn database_is_ahead(&self) -> bool {
        self.offset_millis > 0
    }

    /// The error bound of the measurement: half the round trip plus 1 ms.
    /// The true offset is within this of [`offset_millis`](Self::offset_millis).
    #[must_use]
    pub fn uncertainty(&self) -> Duration {
        self.uncertainty
    }

    /// When it was measured, on the application's clock (the middle of the
    /// round trip).
    #[must_use]
    pub fn measured_at(&self) -> Timestamp {
        self.measured_at
    }

    /// Whether the clocks are certainly further apart than `bound`: the
    /// [magnitude](Self::magnitude) minus the
    /// [uncertainty](Self::uncertainty) exceeds it. A slow round trip
    /// widens the uncertainty rather than raising a false alarm.
    #[must_use]
    pub fn exceeds(&self, bound: Duration) -> bool {
        self.magnitude().saturating_sub(self.uncertainty) > bound
    }
}

impl fmt::Display for ClockSkew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = if self.database_is_ahead() {
            "ahead of"
        } else {
            "behind"
        };
        write!(
            f,
            "the database clock is {} ms {side} the application's (± {} ms, measured at {})",
            self.offset_millis.unsigned_abs(),
            self.uncertainty.as_millis(),
            self.measured_at
        )
    }
}

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
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(skew);
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
    fn the_offset_is_taken_at_the_middle_of_the_round_trip() {
        let app = Timestamp::from_unix_millis(1_000_000);
        let db = Timestamp::from_unix_millis(1_000_010);
        let skew = ClockSkew::from_round_trip(app, Duration::from_millis(20), db);
        assert_eq!(skew.offset_millis(), 0);
        assert_eq!(skew.uncertainty(), Duration::from_millis(11));
        assert_eq!(skew.measured_at(), Timestamp::from_unix_millis(1_000_010));
        assert!(!skew.exceeds(Duration::ZERO));

        let behind = ClockSkew::from_round_trip(
            app,
            Duration::from_micros(300),
            Timestamp::from_unix_millis(996_400),
        );
        assert_eq!(behind.offset_millis(), -3_600);
        assert!(!behind.database_is_ahead());
        assert_eq!(behind.magnitude(), Duration::from_millis(3_600));
        assert_eq!(behind.uncertainty(), Duration::from_millis(2));
        assert!(behind.exceeds(Duration::from_secs(2)));
        assert!(!behind.exceeds(Duration::from_secs(4)));
        assert!(behind.to_string().contains("3600 ms behind"), "{behind}");
    }

    #[test]
    fn a_slow_round_trip_widens_the_bound_instead_of_alarming() {
        let app = Timestamp::from_unix_millis(0);
        let skew = ClockSkew::from_round_trip(
            app,
            Duration::from_secs(6),
            Timestamp::from_unix_millis(5_500),
        );
        assert_eq!(skew.offset_millis(), 2_500);
        assert!(!skew.exceeds(Duration::from_secs(2)), "{skew}");
    }

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
