//! [`ClockSkew`]: how far a server's clock is from the application's, as a
//! store measured it. Stores judge liveness against one clock and expire
//! data by another (Redis expires keys by its own clock, PostgreSQL
//! compares with `now()`); when the two disagree by more than a few
//! seconds, sessions end early or live too long, and nothing else says
//! why. Stores measure the skew at connect and now and then, log a warning
//! past a bound, and expose the last measurement.

use std::time::Duration;

use crate::clock::Timestamp;

/// The default bound past which a store warns about clock skew: 2 s.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(2);

/// One measurement of a server's clock against the application's.
///
/// `offset_ms` is the server's clock minus the application's, in
/// milliseconds (positive: the server is ahead). It is measured as the
/// server's time minus the midpoint of the application's clock before and
/// after the round trip, so it is exact to within `uncertainty_ms`, half
/// the round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSkew {
    offset_ms: i64,
    uncertainty_ms: u64,
    measured_at: Timestamp,
}

impl ClockSkew {
    /// The skew from one round trip: the application's clock read `before`
    /// sending and `after` the answer, and the server's clock `server` in
    /// that answer.
    #[must_use]
    pub fn from_round_trip(before: Timestamp, server: Timestamp, after: Timestamp) -> Self {
        let (b, a) = (
            before.as_unix_millis(),
            after.as_unix_millis().max(before.as_unix_millis()),
        );
        let midpoint = b + (a - b) / 2;
        Self {
            offset_ms: server.as_unix_millis().saturating_sub(midpoint),
            uncertainty_ms: u64::try_from((a - b + 1) / 2).unwrap_or(u64::MAX),
            measured_at: after,
        }
    }

    /// The server's clock minus the application's, in milliseconds
    /// (positive: the server is ahead).
    #[must_use]
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms
    }

    /// How far off `offset_ms` may be: half the round trip, in
    /// milliseconds.
    #[must_use]
    pub fn uncertainty_ms(&self) -> u64 {
        self.uncertainty_ms
    }

    /// When (application clock) it was measured.
    #[must_use]
    pub fn measured_at(&self) -> Timestamp {
        self.measured_at
    }

    /// Whether the clocks surely differ by more than `bound`: the offset's
    /// size minus the uncertainty exceeds it.
    #[must_use]
    pub fn exceeds(&self, bound: Duration) -> bool {
        let sure = self
            .offset_ms
            .unsigned_abs()
            .saturating_sub(self.uncertainty_ms);
        u128::from(sure) > bound.as_millis()
    }

    /// Logs a `tracing` warning (target `session_core::clock_skew`) naming
    /// the backend when this measurement [`exceeds`](Self::exceeds)
    /// `bound`; returns whether it did.
    pub fn warn_if_exceeds(&self, backend: &'static str, bound: Duration) -> bool {
        let exceeds = self.exceeds(bound);
        if exceeds {
            tracing::warn!(
                target: "session_core::clock_skew",
                backend,
                server_minus_application_ms = self.offset_ms,
                uncertainty_ms = self.uncertainty_ms,
                bound_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
                "the server's clock and the application's differ: sessions may end early or live too long; sync both with NTP"
            );
        }
        exceeds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    #[test]
    fn offset_is_measured_from_the_midpoint_of_the_round_trip() {
        let s = ClockSkew::from_round_trip(at(1_000), at(1_010), at(1_020));
        assert_eq!((s.offset_ms(), s.uncertainty_ms()), (0, 10));
        let behind = ClockSkew::from_round_trip(at(3_600_000), at(0), at(3_600_004));
        assert_eq!(behind.offset_ms(), -3_600_002);
        assert!(behind.exceeds(DEFAULT_MAX_CLOCK_SKEW));
        assert!(behind.warn_if_exceeds("test", DEFAULT_MAX_CLOCK_SKEW));
    }

    #[test]
    fn a_slow_round_trip_is_no_proof_of_skew() {
        // 3 s off, but the round trip took 4 s: it could be 1 s.
        let s = ClockSkew::from_round_trip(at(0), at(5_000), at(4_000));
        assert_eq!(s.offset_ms(), 3_000);
        assert!(!s.exceeds(DEFAULT_MAX_CLOCK_SKEW));
        let clear = ClockSkew::from_round_trip(at(0), at(2_500), at(2));
        assert!(clear.exceeds(DEFAULT_MAX_CLOCK_SKEW));
        // An application clock that went back during the trip.
        let odd = ClockSkew::from_round_trip(at(10), at(10), at(5));
        assert_eq!(odd.offset_ms(), 0);
    }
}
