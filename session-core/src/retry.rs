//! [`RetryPolicy`]: how often a lost compare-and-set is tried again, and
//! how long to wait in between. The one retry rule of the workspace: the
//! manager's commits, `update_value` and `consume_token`, and the
//! backends' own compare-and-set loops all take one.

use std::time::Duration;

/// How many attempts an optimistic write gets, and the "full jitter"
/// backoff between them: before retry `n` (0-based count of attempts that
/// already lost) the caller sleeps a uniformly random time in
/// `[0, min(first_backoff · 2ⁿ, max_backoff)]`, so writers that collided
/// spread out instead of colliding again.
///
/// ```
/// use std::time::Duration;
/// use session_core::RetryPolicy;
///
/// let policy = RetryPolicy::new(8).with_backoff(Duration::from_millis(1), Duration::from_millis(64));
/// assert_eq!(policy.max_attempts(), 8);
/// assert_eq!(policy.backoff_cap(0), Duration::from_millis(1));
/// assert_eq!(policy.backoff_cap(10), Duration::from_millis(64));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    first_backoff: Duration,
    max_backoff: Duration,
}

impl RetryPolicy {
    /// `max_attempts` attempts in all (at least 1), with no wait between
    /// them until [`with_backoff`](Self::with_backoff) sets one.
    #[must_use]
    pub const fn new(max_attempts: u32) -> Self {
        Self {
            max_attempts: if max_attempts == 0 { 1 } else { max_attempts },
            first_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        }
    }

    /// Waits at most `first` before the first retry, doubling per retry up
    /// to `max`.
    #[must_use]
    pub const fn with_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.first_backoff = first;
        self.max_backoff = max;
        self
    }

    /// Attempts in all (at least 1).
    #[must_use]
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether another attempt is allowed after `attempts_made` attempts.
    #[must_use]
    pub const fn allows_another(&self, attempts_made: u32) -> bool {
        attempts_made < self.max_attempts
    }

    /// The longest wait before retry `retry` (0-based).
    #[must_use]
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let doubled = self
            .first_backoff
            .checked_mul(1u32 << retry.min(20))
            .unwrap_or(self.max_backoff);
        doubled.min(self.max_backoff)
    }

    /// Sleeps a random time up to [`backoff_cap(retry)`](Self::backoff_cap);
    /// yields to the scheduler when the cap is zero.
    pub async fn backoff(&self, retry: u32) {
        let cap = self.backoff_cap(retry);
        if cap.is_zero() {
            tokio::task::yield_now().await;
            return;
        }
        let cap_micros = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
        let r = getrandom::u64().unwrap_or(0);
        let micros = r % cap_micros.saturating_add(1);
        tokio::time::sleep(Duration::from_micros(micros)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_one_attempt_and_a_capped_doubling_backoff() {
        assert_eq!(RetryPolicy::new(0).max_attempts(), 1);
        let p = RetryPolicy::new(3)
            .with_backoff(Duration::from_micros(100), Duration::from_micros(12_800));
        assert!(p.allows_another(2));
        assert!(!p.allows_another(3));
        assert_eq!(p.backoff_cap(0), Duration::from_micros(100));
        assert_eq!(p.backoff_cap(1), Duration::from_micros(200));
        assert_eq!(p.backoff_cap(7), Duration::from_micros(12_800));
        assert_eq!(p.backoff_cap(u32::MAX), Duration::from_micros(12_800));
        assert_eq!(RetryPolicy::new(5).backoff_cap(3), Duration::ZERO);
    }

    #[tokio::test]
    async fn backoff_never_waits_past_its_cap() {
        let p =
            RetryPolicy::new(2).with_backoff(Duration::from_millis(1), Duration::from_millis(2));
        for retry in 0..4 {
            let started = std::time::Instant::now();
            p.backoff(retry).await;
            assert!(started.elapsed() < Duration::from_millis(200));
        }
    }
}
