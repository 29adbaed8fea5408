//! Time: the [`Timestamp`] type used in records, and the injectable [`Clock`].
//!
//! The manager takes "now" from a [`Clock`], so timeout logic can be tested
//! deterministically with a [`ManualClock`]. Stores compare deadlines against
//! their own notion of now (the system clock or the server's), which is why
//! the manager re-checks every deadline after a load.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in time, in milliseconds since the Unix epoch (UTC).
///
/// Millisecond precision is what every backend can store exactly (Redis
/// `PEXPIREAT`, PostgreSQL `timestamptz`, a 64-bit integer anywhere else).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    /// Builds a timestamp from milliseconds since the Unix epoch.
    #[must_use]
    pub const fn from_unix_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    #[must_use]
    pub const fn as_unix_millis(self) -> i64 {
        self.0
    }

    /// The current system time, truncated to milliseconds.
    #[must_use]
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// This timestamp moved forward by `d`, saturating at the end of time.
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(ms))
    }

    /// This timestamp moved back by `d`, saturating.
    #[must_use]
    pub fn saturating_sub(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_sub(ms))
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    #[must_use]
    pub fn duration_since(self, earlier: Timestamp) -> Duration {
        u64::try_from(self.0.saturating_sub(earlier.0))
            .map(Duration::from_millis)
            .unwrap_or(Duration::ZERO)
    }

    /// Converts to a `time::OffsetDateTime` (UTC).
    #[must_use]
    pub fn to_offset_date_time(self) -> time::OffsetDateTime {
        // Out-of-range values saturate (a "never" deadline must not turn
        // into 1970, which would read as long expired).
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000).unwrap_or(
            if self.0 < 0 {
                time::PrimitiveDateTime::MIN.assume_utc()
            } else {
                time::PrimitiveDateTime::MAX.assume_utc()
            },
        )
    }

    /// Converts from a `time::OffsetDateTime`, truncating to milliseconds.
    #[must_use]
    pub fn from_offset_date_time(t: time::OffsetDateTime) -> Self {
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        Self(i64::try_from(ms).unwrap_or(i64::MAX))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => Self(-i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_offset_date_time())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self
            .to_offset_date_time()
            .format(&time::format_description::well_known::Rfc3339)
        {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{}ms", self.0),
        }
    }
}

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to, for deterministic tests.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock stopped at `start`.
    #[must_use]
    pub fn new(start: Timestamp) -> Self {
        Self(AtomicI64::new(start.as_unix_millis()))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.as_unix_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_unix_millis(1_000);
        assert_eq!(
            t.saturating_add(Duration::from_secs(1)).as_unix_millis(),
            2_000
        );
        assert_eq!(t.saturating_add(Duration::MAX).as_unix_millis(), i64::MAX);
        assert_eq!(
            t.duration_since(Timestamp::from_unix_millis(2_000)),
            Duration::ZERO
        );
        assert_eq!(
            Timestamp::from_unix_millis(2_500).duration_since(t),
            Duration::from_millis(1_500)
        );
    }

    #[test]
    fn manual_clock_advances() {
        let c = ManualClock::new(Timestamp::from_unix_millis(10));
        c.advance(Duration::from_millis(5));
        assert_eq!(c.now().as_unix_millis(), 15);
    }

    #[test]
    fn out_of_range_saturates() {
        assert!(
            Timestamp::from_unix_millis(i64::MAX)
                .to_offset_date_time()
                .year()
                >= 9999
        );
        assert!(
            Timestamp::from_unix_millis(i64::MIN)
                .to_offset_date_time()
                .year()
                <= -9999
        );
    }

    #[test]
    fn offset_date_time_round_trip() {
        let t = Timestamp::from_unix_millis(1_700_000_000_123);
        assert_eq!(Timestamp::from_offset_date_time(t.to_offset_date_time()), t);
        assert_eq!(t.to_string(), "2023-11-14T22:13:20.123Z");
    }
}
