//! Session policies: timeouts, touch throttling, per-user limits, conflict
//! handling and one-time tokens, gathered in [`SessionConfig`] with secure
//! defaults.

use std::num::NonZeroUsize;
use std::time::Duration;

/// What to do when a user already has the maximum number of sessions and
/// logs in again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitStrategy {
    /// Refuse the new login with [`SessionError::TooManySessions`].
    ///
    /// [`SessionError::TooManySessions`]: crate::SessionError::TooManySessions
    RejectNew,
    /// Accept the new login and end the user's oldest sessions (by creation
    /// time, ties broken by storage key: see
    /// [`newest_first`](crate::store::newest_first)) until the limit holds.
    EvictOldest,
}

/// A cap on concurrent sessions per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserSessionLimit {
    /// Maximum number of live sessions per user.
    pub max: NonZeroUsize,
    /// What happens at the limit.
    pub strategy: LimitStrategy,
}

/// What `commit` does when another request saved the same session first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConflictPolicy {
    /// Return [`SessionError::Conflict`] and let the application decide.
    ///
    /// [`SessionError::Conflict`]: crate::SessionError::Conflict
    Fail,
    /// Reload the latest record, re-apply this request's changes key by key
    /// (last writer wins per key, not per session) and retry, up to
    /// `max_attempts` writes in all, then fail with `Conflict`.
    MergeChanges {
        /// Total write attempts, at least 1.
        max_attempts: u32,
    },
}

impl ConflictPolicy {
    /// The [`RetryPolicy`](crate::RetryPolicy) this policy gives a commit
    /// or a rotation: one attempt for [`Fail`](Self::Fail), `max_attempts`
    /// for [`MergeChanges`](Self::MergeChanges); no wait in between (the
    /// reload before each retry already spaces writers out).
    #[must_use]
    pub const fn retry_policy(&self) -> crate::RetryPolicy {
        match self {
            Self::Fail => crate::RetryPolicy::new(1),
            Self::MergeChanges { max_attempts } => crate::RetryPolicy::new(*max_attempts),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A duration that must be positive was zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// The idle timeout was longer than the absolute lifetime.
    #[error("idle timeout ({idle:?}) must not exceed the absolute lifetime ({absolute:?})")]
    IdleExceedsAbsolute {
        /// The idle timeout given.
        idle: Duration,
        /// The absolute lifetime given.
        absolute: Duration,
    },
    /// The touch interval was not shorter than the idle timeout, so sessions
    /// could expire while in use.
    #[error("touch interval ({touch:?}) must be shorter than the idle timeout ({idle:?})")]
    TouchNotBelowIdle {
        /// The touch interval given.
        touch: Duration,
        /// The idle timeout given.
        idle: Duration,
    },
    /// The cookie policy is inconsistent.
    #[error("cookie policy: {0}")]
    Cookie(String),
    /// What to do at the per-user session limit was set, but no limit.
    #[error("a session limit strategy was set without max_sessions_per_user")]
    StrategyWithoutLimit,
}

/// Session policies. Build with [`SessionConfig::builder`]; the defaults are
/// the secure ones.
///
/// | setting | default |
/// |---|---|
/// | idle timeout | 30 minutes |
/// | absolute lifetime | 12 hours |
/// | touch interval | 60 seconds |
/// | sessions per user | unlimited |
/// | on commit conflict | merge changed keys, 3 attempts |
/// | one-time token lifetime | 10 minutes (and never beyond the session) |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub(crate) idle_timeout: Duration,
    pub(crate) absolute_timeout: Duration,
    pub(crate) touch_interval: Duration,
    pub(crate) user_limit: Option<UserSessionLimit>,
    pub(crate) conflict: ConflictPolicy,
    pub(crate) token_ttl: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_timeout: Duration::from_secs(12 * 60 * 60),
            touch_interval: Duration::from_secs(60),
            user_limit: None,
            conflict: ConflictPolicy::MergeChanges { max_attempts: 3 },
            token_ttl: Duration::from_secs(10 * 60),
        }
    }
}

impl SessionConfig {
    /// A builder starting from the secure defaults.
    pub fn builder() -> SessionConfigBuilder {
        SessionConfigBuilder(Self::default())
    }

    /// A session ends after this long without a request.
    #[must_use]
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// A session ends this long after it was created (or rotated into being
    /// by login), however active it is.
    #[must_use]
    pub fn absolute_timeout(&self) -> Duration {
        self.absolute_timeout
    }

    /// The idle deadline is refreshed at most this often by read-only
    /// requests.
    #[must_use]
    pub fn touch_interval(&self) -> Duration {
        self.touch_interval
    }

    /// The per-user session cap, if any.
    #[must_use]
    pub fn user_limit(&self) -> Option<UserSessionLimit> {
        self.user_limit
    }

    /// What commit does on a version conflict.
    #[must_use]
    pub fn conflict_policy(&self) -> ConflictPolicy {
        self.conflict
    }

    /// How long a one-time token stays valid (capped by the session).
    #[must_use]
    pub fn token_ttl(&self) -> Duration {
        self.token_ttl
    }
}

/// Builder for [`SessionConfig`].
#[derive(Debug, Clone)]
#[must_use]
pub struct SessionConfigBuilder(SessionConfig);

impl SessionConfigBuilder {
    /// Sets the idle timeout (default 30 minutes).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.0.idle_timeout = d;
        self
    }

    /// Sets the absolute lifetime (default 12 hours).
    pub fn absolute_timeout(mut self, d: Duration) -> Self {
        self.0.absolute_timeout = d;
        self
    }

    /// Sets the touch interval (default 60 seconds). Zero touches on every
    /// request.
    ///
    /// A read-only request writes to the store (a touch, moving the idle
    /// deadline) when the session was last written more than this long ago.
    /// Where most sessions are read less often than that, nearly every
    /// request pays that extra write; a longer interval trades it for an
    /// idle deadline that may come up to one interval early. It must stay
    /// shorter than the idle timeout.
    pub fn touch_interval(mut self, d: Duration) -> Self {
        self.0.touch_interval = d;
        self
    }

    /// Caps concurrent sessions per user.
    pub fn max_sessions_per_user(mut self, max: NonZeroUsize, strategy: LimitStrategy) -> Self {
        self.0.user_limit = Some(UserSessionLimit { max, strategy });
        self
    }

    /// Sets the conflict policy (default: merge changed keys, 3 attempts).
    pub fn conflict_policy(mut self, p: ConflictPolicy) -> Self {
        self.0.conflict = p;
        self
    }

    /// Sets the one-time token lifetime (default 10 minutes).
    pub fn token_ttl(mut self, d: Duration) -> Self {
        self.0.token_ttl = d;
        self
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when a timeout is zero, the idle timeout exceeds the
    /// absolute lifetime, or the touch interval is not below the idle
    /// timeout.
    pub fn build(self) -> Result<SessionConfig, ConfigError> {
        self.0.validated()
    }
}

impl SessionConfig {
    /// The configuration if it is consistent (see
    /// [`SessionConfigBuilder::build`]).
    pub(crate) fn validated(self) -> Result<SessionConfig, ConfigError> {
        let c = self;
        if c.idle_timeout.is_zero() {
            return Err(ConfigError::Zero("idle timeout"));
        }
        if c.absolute_timeout.is_zero() {
            return Err(ConfigError::Zero("absolute timeout"));
        }
        if c.token_ttl.is_zero() {
            return Err(ConfigError::Zero("token lifetime"));
        }
        if let ConflictPolicy::MergeChanges { max_attempts: 0 } = c.conflict {
            return Err(ConfigError::Zero("conflict max_attempts"));
        }
        if c.idle_timeout > c.absolute_timeout {
            return Err(ConfigError::IdleExceedsAbsolute {
                idle: c.idle_timeout,
                absolute: c.absolute_timeout,
            });
        }
        if c.touch_interval >= c.idle_timeout {
            return Err(ConfigError::TouchNotBelowIdle {
                touch: c.touch_interval,
                idle: c.idle_timeout,
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_secure() {
        let c = SessionConfig::default();
        assert_eq!(c.idle_timeout(), Duration::from_secs(1800));
        assert_eq!(c.absolute_timeout(), Duration::from_secs(43200));
        assert!(c.touch_interval() < c.idle_timeout());
        assert_eq!(SessionConfig::builder().build().unwrap(), c);
    }

    #[test]
    fn rejects_inconsistent_timeouts() {
        let e = SessionConfig::builder()
            .idle_timeout(Duration::from_secs(10))
            .absolute_timeout(Duration::from_secs(5))
            .build()
            .unwrap_err();
        assert!(matches!(e, ConfigError::IdleExceedsAbsolute { .. }));
        let e = SessionConfig::builder()
            .idle_timeout(Duration::from_secs(10))
            .touch_interval(Duration::from_secs(10))
            .build()
            .unwrap_err();
        assert!(matches!(e, ConfigError::TouchNotBelowIdle { .. }));
        assert_eq!(
            SessionConfig::builder()
                .idle_timeout(Duration::ZERO)
                .build(),
            Err(ConfigError::Zero("idle timeout"))
        );
        assert!(SessionConfig::builder()
            .conflict_policy(ConflictPolicy::MergeChanges { max_attempts: 0 })
            .build()
            .is_err());
    }

    #[test]
    fn limit_is_recorded() {
        let c = SessionConfig::builder()
            .max_sessions_per_user(NonZeroUsize::new(2).unwrap(), LimitStrategy::EvictOldest)
            .build()
            .unwrap();
        assert_eq!(c.user_limit().unwrap().max.get(), 2);
    }
}
