//! Command-line options and environment variables.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use session_core::{LimitStrategy, SessionConfig};

use crate::limits::Rate;

/// Serves the session demo over HTTPS.
///
/// Environment: `SESSION_BACKEND` selects the session store (default
/// `memory`); `DEMO_USERS` lists the users as `name:password,name:password`
/// (when unset, a user `demo` with a random password is created and the
/// password printed at start); `SESSION_DEMO_STORAGE_KEY_SECRET` keys the
/// storage keys (at least 32 bytes; when unset, a random one is generated
/// and a warning printed). Every option below can also be set from the
/// environment variable it names.
#[derive(Debug, Clone, Parser)]
#[command(name = "session-demo", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// PEM certificate chain; with --key. Without both, a self-signed
    /// certificate for localhost and the listen address is generated.
    #[arg(long, requires = "key", value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// PEM private key for --cert.
    #[arg(long, requires = "cert", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Session store: memory, redis, postgres or memcached (servers from
    /// REDIS_URL, DATABASE_URL, MEMCACHED_URL; encrypted when
    /// SESSION_ENCRYPTION_KEY is set).
    #[arg(
        long,
        env = "SESSION_BACKEND",
        default_value = "memory",
        value_name = "NAME"
    )]
    pub backend: String,

    /// Key prefix / table name of this app's sessions in a shared backend
    /// (`[a-z0-9_]`); apps sharing one server need different namespaces.
    #[arg(
        long,
        env = "SESSION_NAMESPACE",
        default_value = "session_demo",
        value_name = "NAME"
    )]
    pub namespace: String,

    /// Maximum concurrent sessions per user (unlimited when absent).
    #[arg(long, value_name = "N")]
    pub max_sessions_per_user: Option<NonZeroUsize>,

    /// What a login beyond --max-sessions-per-user does.
    #[arg(long, value_enum, default_value_t = OnLimit::Reject)]
    pub on_limit: OnLimit,

    /// A session ends after this many seconds without a request.
    #[arg(long, default_value_t = 30 * 60, value_name = "SECS")]
    pub idle_timeout_secs: u64,

    /// A session ends this many seconds after login, whatever happens.
    #[arg(long, default_value_t = 12 * 60 * 60, value_name = "SECS")]
    pub absolute_timeout_secs: u64,

    /// Password attempts allowed per client address (IPv6: per /64), as
    /// `N/SECS`: a burst of N, refilled at N per SECS seconds. Over it,
    /// `429` with `Retry-After`.
    #[arg(
        long,
        env = "SESSION_DEMO_LOGIN_LIMIT_PER_IP",
        default_value = "30/60",
        value_name = "N/SECS"
    )]
    pub login_limit_per_ip: Rate,

    /// Password attempts allowed per account name (as typed, known or
    /// not), as `N/SECS`. Over it, `429` with `Retry-After`.
    #[arg(
        long,
        env = "SESSION_DEMO_LOGIN_LIMIT_PER_ACCOUNT",
        default_value = "10/600",
        value_name = "N/SECS"
    )]
    pub login_limit_per_account: Rate,

    /// Most client addresses, and most account names, the login throttles
    /// keep track of; beyond it password checks answer `503` until entries
    /// expire.
    #[arg(
        long,
        env = "SESSION_DEMO_THROTTLE_MAX_KEYS",
        default_value_t = NonZeroUsize::new(100_000).expect("non-zero"),
        value_name = "N"
    )]
    pub throttle_max_keys: NonZeroUsize,

    /// Password checks (Argon2id, 19 MiB each) running at once; default
    /// twice the number of cores.
    #[arg(long, env = "SESSION_DEMO_PASSWORD_WORKERS", value_name = "N")]
    pub password_workers: Option<NonZeroUsize>,

    /// Password checks waiting for a worker; beyond it `503` with
    /// `Retry-After`.
    #[arg(
        long,
        env = "SESSION_DEMO_PASSWORD_QUEUE",
        default_value_t = 16,
        value_name = "N"
    )]
    pub password_queue: usize,

    /// `name:password,...`; read from `DEMO_USERS` (not a flag, so
    /// passwords stay out of the process list).
    #[arg(skip = std::env::var("DEMO_USERS").ok())]
    pub users: Option<String>,

    /// The secret keying storage keys (the hashes of session IDs the store
    /// sees); read from `SESSION_DEMO_STORAGE_KEY_SECRET` (not a flag, so it
    /// stays out of the process list). When unset, a random one is
    /// generated at start (sessions then do not survive a restart) and a
    /// warning printed.
    #[arg(skip = std::env::var(STORAGE_KEY_SECRET_VAR).ok().filter(|v| !v.is_empty()))]
    pub storage_key_secret: Option<String>,
}

/// The environment variable holding the storage-key secret.
pub const STORAGE_KEY_SECRET_VAR: &str = "SESSION_DEMO_STORAGE_KEY_SECRET";

/// The shortest storage-key secret accepted, in bytes.
pub const MIN_STORAGE_KEY_SECRET_LEN: usize = 32;

/// The `--on-limit` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnLimit {
    /// Refuse the new login.
    Reject,
    /// Accept it and end the user's oldest session.
    Evict,
}

impl Config {
    /// The session policies these options describe.
    ///
    /// # Errors
    ///
    /// When the timeouts are inconsistent (zero, or idle above absolute).
    pub fn session_config(&self) -> Result<SessionConfig, session_core::ConfigError> {
        let idle = Duration::from_secs(self.idle_timeout_secs);
        // Touch often enough that an active session never idles out.
        let touch = (idle / 2).min(Duration::from_secs(60));
        let mut b = SessionConfig::builder()
            .idle_timeout(idle)
            .absolute_timeout(Duration::from_secs(self.absolute_timeout_secs))
            .touch_interval(touch);
        if let Some(max) = self.max_sessions_per_user {
            let strategy = match self.on_limit {
                OnLimit::Reject => LimitStrategy::RejectNew,
                OnLimit::Evict => LimitStrategy::EvictOldest,
            };
            b = b.max_sessions_per_user(max, strategy);
        }
        b.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::try_parse_from(["session-demo"]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(c.on_limit, OnLimit::Reject);
        let s = c.session_config().unwrap();
        assert_eq!(s.idle_timeout(), Duration::from_secs(1800));
        assert_eq!(s.touch_interval(), Duration::from_secs(60));
        assert_eq!(s.user_limit(), None);
        assert_eq!(c.login_limit_per_ip.to_string(), "30/60");
        assert_eq!(c.login_limit_per_account.to_string(), "10/600");
        assert_eq!(c.throttle_max_keys.get(), 100_000);
        assert_eq!(c.password_workers, None);
        assert_eq!(c.password_queue, 16);
    }

    #[test]
    fn login_limits_are_options() {
        let c = Config::try_parse_from([
            "session-demo",
            "--login-limit-per-ip",
            "5/10",
            "--login-limit-per-account",
            "2/3600",
            "--password-workers",
            "1",
            "--password-queue",
            "0",
        ])
        .unwrap();
        assert_eq!(c.login_limit_per_ip.burst.get(), 5);
        assert_eq!(c.login_limit_per_account.period, Duration::from_secs(3600));
        assert_eq!(c.password_workers.map(NonZeroUsize::get), Some(1));
        assert_eq!(c.password_queue, 0);
        assert!(Config::try_parse_from(["session-demo", "--login-limit-per-ip", "5"]).is_err());
        assert!(Config::try_parse_from(["session-demo", "--password-workers", "0"]).is_err());
    }

    #[test]
    fn limits_and_short_timeouts() {
        let c = Config::try_parse_from([
            "session-demo",
            "--max-sessions-per-user",
            "2",
            "--on-limit",
            "evict",
            "--idle-timeout-secs",
            "1",
            "--absolute-timeout-secs",
            "2",
        ])
        .unwrap();
        let s = c.session_config().unwrap();
        let limit = s.user_limit().unwrap();
        assert_eq!(limit.max.get(), 2);
        assert_eq!(limit.strategy, LimitStrategy::EvictOldest);
        assert_eq!(s.touch_interval(), Duration::from_millis(500));
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(Config::try_parse_from(["session-demo", "--on-limit", "queue"]).is_err());
        assert!(Config::try_parse_from(["session-demo", "--max-sessions-per-user", "0"]).is_err());
        assert!(Config::try_parse_from(["session-demo", "--cert", "c.pem"]).is_err());
        let c = Config::try_parse_from(["session-demo", "--idle-timeout-secs", "0"]).unwrap();
        assert!(c.session_config().is_err());
    }
}
