//! [`ClockSkew`]: how far a server's clock is from the application's, as a
//! store measured it. Stores judge liveness against one clock and expire
//! data by another (Redis expires keys by its own clock, PostgreSQL
//! compares with `now()`); when the two disagree by more than a few
//! seconds, sessions end early or live too long, and nothing else says
//! why. Stores measure the skew at connect and now and then, log a warning
//! past a bound, and expose the last measurement.

use std::fmt;
use std::time::Duration;

use crate::clock::Timestamp;

/// The default bound past which a store warns about clock skew: 2 s.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(2);

/// One measurement of a server's clock against the application's.
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
/// use session_core::ClockSkew;
///
/// // The application clock read 12:00:00.000, the round trip took 4 ms,
/// // the database said 13:00:00.002: the database is an hour ahead.
/// let app = Timestamp::from_unix_millis(1_800_000_000_000);
/// let db = Timestamp::from_unix_millis(1_800_003_600_002);
/// let skew = ClockSkew::from_round_trip(app, Duration::from_millis(4), db);
/// assert_eq!(skew.offset_millis(), 3_600_000);
/// assert!(skew.server_is_ahead());
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
    /// later (a monotonic measurement), and the server's clock read
    /// `server` in between.
    #[must_use]
    pub fn from_round_trip(app_before: Timestamp, round_trip: Duration, server: Timestamp) -> Self {
        let half = round_trip / 2;
        let midpoint = app_before.saturating_add(half);
        let half_ms = u64::try_from(half.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        Self {
            offset_millis: server
                .as_unix_millis()
                .saturating_sub(midpoint.as_unix_millis()),
            uncertainty: Duration::from_millis(half_ms.saturating_add(1)),
            measured_at: midpoint,
        }
    }

    /// The server's clock minus the application's, in milliseconds:
    /// positive when the server's clock is ahead (the application's is
    /// behind), negative when it is behind.
    #[must_use]
    pub fn offset_millis(&self) -> i64 {
        self.offset_millis
    }

    /// How far apart the clocks are, whichever is ahead.
    #[must_use]
    pub fn magnitude(&self) -> Duration {
        Duration::from_millis(self.offset_millis.unsigned_abs())
    }

    /// Whether the server's clock is ahead of the application's
    /// ([`offset_millis`](Self::offset_millis) > 0).
    #[must_use]
    pub fn server_is_ahead(&self) -> bool {
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
        let side = if self.server_is_ahead() {
            "ahead of"
        } else {
            "behind"
        };
        write!(
            f,
            "the server clock is {} ms {side} the application's (± {} ms, measured at {})",
            self.offset_millis.unsigned_abs(),
            self.uncertainty.as_millis(),
            self.measured_at
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!behind.server_is_ahead());
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
}
