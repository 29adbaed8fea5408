//! Deadlines to Memcached expiration times.
//!
//! Memcached counts whole seconds on a clock that ticks once a second, and
//! reads an expiration above 30 days as an absolute Unix time. An item must
//! never vanish before its record's deadline, so times are rounded up and
//! given one extra second; the store still checks the record's own
//! deadlines on every read, so the slack is never visible.

use session_core::Timestamp;

/// Longest relative expiration Memcached accepts (30 days, in seconds).
pub(crate) const MAX_RELATIVE: i64 = 30 * 24 * 3600;

/// The expiration to send for an item that must live until `deadline`,
/// judged at `now`. Never 0 (which would mean "never expires").
pub(crate) fn exptime(deadline: Timestamp, now: Timestamp) -> u32 {
    let remaining_ms = deadline
        .as_unix_millis()
        .saturating_sub(now.as_unix_millis());
    if remaining_ms <= 0 {
        // Already dead: keep it just long enough to be judged expired.
        return 1;
    }
    let secs = ceil_secs(remaining_ms).saturating_add(1);
    if secs <= MAX_RELATIVE {
        // In range 2..=MAX_RELATIVE, fits in u32.
        u32::try_from(secs).unwrap_or(1)
    } else {
        let absolute = ceil_secs(deadline.as_unix_millis()).saturating_add(1);
        u32::try_from(absolute).unwrap_or(u32::MAX)
    }
}

fn ceil_secs(ms: i64) -> i64 {
    ms / 1000 + i64::from(ms % 1000 > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    #[test]
    fn rounds_up_with_one_second_of_slack() {
        assert_eq!(exptime(at(NOW + 1), at(NOW)), 2);
        assert_eq!(exptime(at(NOW + 1000), at(NOW)), 2);
        assert_eq!(exptime(at(NOW + 1001), at(NOW)), 3);
        assert_eq!(exptime(at(NOW + 3_600_000), at(NOW)), 3601);
    }

    #[test]
    fn past_deadlines_expire_at_once_but_never_mean_forever() {
        assert_eq!(exptime(at(NOW), at(NOW)), 1);
        assert_eq!(exptime(at(0), at(NOW)), 1);
        assert_eq!(exptime(at(i64::MIN), at(NOW)), 1);
    }

    #[test]
    fn beyond_thirty_days_is_absolute() {
        let max_rel = MAX_RELATIVE * 1000;
        assert_eq!(
            exptime(at(NOW + max_rel - 1000), at(NOW)),
            u32::try_from(MAX_RELATIVE).unwrap()
        );
        let far = NOW + max_rel + 500;
        let e = exptime(at(far), at(NOW));
        assert_eq!(i64::from(e), far / 1000 + 2);
        assert!(i64::from(e) > MAX_RELATIVE);
        assert_eq!(exptime(at(i64::MAX), at(NOW)), u32::MAX);
    }
}
