//! Throttling of password attempts, per client address and per account,
//! with bounded memory.
//!
//! Every password check (`POST /login`, and the password asked again before
//! "log out everywhere" or ending another session) first takes one attempt
//! from the client address's allowance, then one from the account name's
//! (the name as typed, so unknown names are throttled exactly like real
//! ones and a `429` reveals nothing). An allowance is a burst of `N`
//! attempts refilled at `N` per period ([`Rate`], e.g. `30/60`): a
//! legitimate user never notices, a guesser is slowed to the refill rate.
//!
//! Both tables are bounded: entries whose allowance is full again are
//! dropped every minute ([`LoginThrottle::housekeeping`]), and a table that
//! holds `max_keys` entries even after that refuses new attempts with `503`
//! until entries expire (fail closed: an attacker with many addresses cannot
//! grow memory, nor escape the per-account limit).

use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// An allowance: a burst of `burst` attempts, refilled at `burst` per
/// `period`. Written `N/SECS` (`30/60`: 30 attempts, then one more every
/// 2 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Attempts allowed at once.
    pub burst: NonZeroU32,
    /// The time in which `burst` attempts are refilled.
    pub period: Duration,
}

impl Rate {
    fn quota(self) -> Quota {
        let every = self.period / self.burst.get();
        Quota::with_period(every.max(Duration::from_nanos(1)))
            .expect("a positive period")
            .allow_burst(self.burst)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.burst, self.period.as_secs())
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?}: expected N/SECS with N and SECS at least 1 (e.g. 30/60)");
        let (n, secs) = s.trim().split_once('/').ok_or_else(bad)?;
        let burst: NonZeroU32 = n.trim().parse().map_err(|_| bad())?;
        let secs: u64 = secs.trim().parse().map_err(|_| bad())?;
        if secs == 0 || secs > 86_400 * 366 {
            return Err(bad());
        }
        Ok(Self {
            burst,
            period: Duration::from_secs(secs),
        })
    }
}

/// Why an attempt was not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the allowance of the address or the account: `429`, retry after
    /// this long.
    TooMany(Duration),
    /// Too much going on (throttle table full, or every password worker
    /// busy and the queue full): `503`, retry after this long.
    Busy(Duration),
}

/// The key of the per-address table: IPv4 addresses as they are, IPv6
/// addresses by their /64 prefix (what one subscriber usually holds), and
/// IPv4-mapped IPv6 addresses as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An IPv4 address.
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Self::V6(prefix)
                }
            },
        }
    }
}

/// Longest account name kept as a key (names of real users are at most 64
/// characters; longer ones are cut, which only merges junk names).
const MAX_ACCOUNT_CHARS: usize = 64;

struct Table<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    /// When the last clean-up forced by a full table ran (ms since `start`).
    last_forced: AtomicU64,
}

/// The per-address and per-account throttles.
pub struct LoginThrottle {
    per_ip: Table<ClientKey>,
    per_account: Table<String>,
    max_keys: usize,
    clock: DefaultClock,
    start: Instant,
}

impl fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginThrottle")
            .field("addresses", &self.per_ip.limiter.len())
            .field("accounts", &self.per_account.limiter.len())
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

impl LoginThrottle {
    /// Throttles of `per_ip` and `per_account`, each table holding at most
    /// `max_keys` entries.
    #[must_use]
    pub fn new(per_ip: Rate, per_account: Rate, max_keys: usize) -> Self {
        Self {
            per_ip: Table {
                limiter: RateLimiter::keyed(per_ip.quota()),
                last_forced: AtomicU64::new(0),
            },
            per_account: Table {
                limiter: RateLimiter::keyed(per_account.quota()),
                last_forced: AtomicU64::new(0),
            },
            max_keys: max_keys.max(1),
            clock: DefaultClock::default(),
            start: Instant::now(),
        }
    }

    /// Takes one attempt from `ip`'s allowance, then one from `account`'s.
    ///
    /// # Errors
    ///
    /// [`Refusal::TooMany`] over an allowance, [`Refusal::Busy`] when a
    /// table is full.
    pub fn check(&self, ip: IpAddr, account: &str) -> Result<(), Refusal> {
        self.check_in(&self.per_ip, &ClientKey::from(ip))?;
        let account: String = account.chars().take(MAX_ACCOUNT_CHARS).collect();
        self.check_in(&self.per_account, &account)
    }

    fn check_in<K: Hash + Eq + Clone>(&self, table: &Table<K>, key: &K) -> Result<(), Refusal> {
        if table.limiter.len() >= self.max_keys {
            // Forced clean-up, at most once a second per table.
            let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            let last = table.last_forced.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1000
                && table
                    .last_forced
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                table.limiter.retain_recent();
            }
            if table.limiter.len() >= self.max_keys {
                tracing::warn!(
                    target: "session_demo",
                    max_keys = self.max_keys,
                    "login throttle table full; refusing password checks until entries expire"
                );
                return Err(Refusal::Busy(Duration::from_secs(1)));
            }
        }
        table.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            Refusal::TooMany(wait)
        })
    }

    /// Drops the entries whose allowance is full again, and frees the
    /// memory they held.
    pub fn housekeeping(&self) {
        self.per_ip.limiter.retain_recent();
        self.per_ip.limiter.shrink_to_fit();
        self.per_account.limiter.retain_recent();
        self.per_account.limiter.shrink_to_fit();
    }

    /// Entries held: (addresses, accounts).
    #[must_use]
    pub fn len(&self) -> (usize, usize) {
        (self.per_ip.limiter.len(), self.per_account.limiter.len())
    }

    /// Runs [`LoginThrottle::housekeeping`] every `every` until the throttle
    /// is dropped.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn spawn_housekeeping(self: &Arc<Self>, every: Duration) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(throttle) = weak.upgrade() else {
                    return;
                };
                throttle.housekeeping();
            }
        });
    }
}

/// Whole seconds to put in `Retry-After` for `wait` (at least 1).
#[must_use]
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> Rate {
        s.parse().unwrap()
    }

    #[test]
    fn rates_parse_and_refuse_nonsense() {
        let r = rate("30/60");
        assert_eq!(r.burst.get(), 30);
        assert_eq!(r.period, Duration::from_secs(60));
        assert_eq!(r.to_string(), "30/60");
        for bad in ["", "30", "0/60", "30/0", "-1/60", "a/b", "30/60/1"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_address_and_the_account_each_have_an_allowance() {
        let t = LoginThrottle::new(rate("3/60"), rate("2/60"), 100);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(t.check(a, "alice"), Ok(()));
        assert_eq!(t.check(a, "alice"), Ok(()));
        // alice's allowance is used up, from any address.
        assert!(matches!(t.check(b, "alice"), Err(Refusal::TooMany(_))));
        // a's third attempt (other account) passes, its fourth does not.
        assert_eq!(t.check(a, "bob"), Ok(()));
        let Err(Refusal::TooMany(wait)) = t.check(a, "carol") else {
            panic!("the address is over its allowance")
        };
        assert!(wait > Duration::from_secs(15) && wait <= Duration::from_secs(20));
        assert_eq!(retry_after_secs(wait), wait.as_secs() + 1);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_prefix() {
        let t = LoginThrottle::new(rate("2/60"), rate("100/60"), 100);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let two: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(t.check(one, "x"), Ok(()));
        assert_eq!(t.check(two, "y"), Ok(()));
        assert!(t.check(one, "z").is_err(), "same /64");
        assert_eq!(t.check(other, "z"), Ok(()));
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert_eq!(
            ClientKey::from(mapped),
            ClientKey::from("192.0.2.9".parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn tables_are_bounded() {
        let t = LoginThrottle::new(rate("5/1"), rate("5/1"), 10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut refused = 0;
        for i in 0..50 {
            let ip = IpAddr::from([192, 0, 2, u8::try_from(i).unwrap()]);
            if let Err(e) = t.check(ip, &format!("user{i}")) {
                assert!(matches!(e, Refusal::Busy(_)), "{e:?}");
                refused += 1;
            }
        }
        let (ips, accounts) = t.len();
        assert!(ips <= 10 && accounts <= 10, "{ips} {accounts}");
        assert!(refused >= 40, "{refused}");
        // Once the allowances are full again, housekeeping frees the tables.
        std::thread::sleep(Duration::from_millis(1100));
        t.housekeeping();
        assert_eq!(t.len(), (0, 0));
        assert_eq!(t.check(ip, "alice"), Ok(()));
        // Very long names are cut to a bounded key.
        let long = "x".repeat(10_000);
        assert_eq!(t.check(ip, &long), Ok(()));
    }
}
