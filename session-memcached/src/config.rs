//! How to reach the servers and how to use them: [`MemcachedConfig`].

use std::time::Duration;

use memcache::Url;
use session_core::redact::{redact_text, RedactedError, RedactedUrl};

/// The largest record (encoded) the default configuration accepts: the
/// server's default item size limit (`memcached -I 1m`) minus room for the
/// item header and key.
pub const DEFAULT_MAX_ITEM_SIZE: usize = 1024 * 1024 - 1024;

/// How many recent loads a store remembers by default (see
/// [`MemcachedConfig::with_recent_reads`]).
pub const DEFAULT_RECENT_READS: usize = 10_000;

/// Longest namespace accepted, so that every key stays within Memcached's
/// 250-byte limit.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// Why a [`MemcachedStore`](crate::MemcachedStore) could not be built or
/// connected: a configuration it cannot be built from, or (from
/// [`MemcachedStoreBuilder::connect`](crate::MemcachedStoreBuilder::connect))
/// a server that does not answer. Every backend's setup error has this
/// name.
///
/// Neither `Display` nor `Debug` (nor any error in the `source()` chain)
/// shows a credential: URLs are shown with user and password replaced by
/// `***` ([`RedactedUrl`]), and client errors are wrapped in a
/// [`RedactedError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// No server was given.
    #[error("no Memcached server given: pass at least one URL such as memcache://127.0.0.1:11211")]
    NoServers,
    /// A server URL could not be parsed, uses an unsupported transport or
    /// carries credentials (not supported).
    #[error("bad Memcached URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given, credentials redacted.
        url: RedactedUrl,
        /// What is wrong with it.
        reason: String,
    },
    /// The namespace is empty, too long or contains characters that are not
    /// allowed in Memcached keys.
    #[error(
        "bad namespace {0:?}: use 1 to 64 characters among ASCII letters, digits, '_', '-' and '.'"
    )]
    BadNamespace(String),
    /// A numeric setting is out of range.
    #[error("bad setting: {0}")]
    BadSetting(&'static str),
    /// The client could not be set up (for example, a host name that does
    /// not resolve).
    #[error("cannot set up the Memcached client")]
    Client(#[source] RedactedError),
    /// [`MemcachedStoreBuilder::connect`](crate::MemcachedStoreBuilder::connect):
    /// a server did not answer. Check that it runs at the URL given.
    #[error("a Memcached server does not answer")]
    Unavailable(#[source] session_core::StoreError),
}

/// The former name of [`SetupError`]. (Not to be confused with
/// `session_core::ConfigError`, the session policy's validation error.)
#[deprecated(note = "renamed to SetupError")]
pub type ConfigError = SetupError;

/// Settings of a [`MemcachedStore`](crate::MemcachedStore); build one with
/// [`MemcachedConfig::new`] and the `with_*` methods.
///
/// Every field has a production-ready default except the server list.
/// It keeps servers as `host:port` only (URLs with credentials are
/// refused), so its `Debug` holds no secret.
#[derive(Debug, Clone)]
pub struct MemcachedConfig {
    pub(crate) servers: Vec<String>,
    pub(crate) namespace: String,
    pub(crate) max_item_size: usize,
    pub(crate) io_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) max_idle: usize,
    pub(crate) cas_retries: u32,
    pub(crate) index_grace: Duration,
    pub(crate) recent_reads: usize,
}

impl MemcachedConfig {
    /// A configuration for the given servers.
    ///
    /// Each entry is a `memcache://host:port` URL (or a bare `host:port`);
    /// one entry may also hold several URLs separated by commas. With more
    /// than one server, keys are spread across them by rendezvous hashing.
    ///
    /// # Errors
    ///
    /// [`SetupError::NoServers`] or [`SetupError::BadUrl`].
    pub fn new<I, S>(servers: I) -> Result<Self, SetupError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut parsed = Vec::new();
        for entry in servers {
            for url in entry.as_ref().split(',').map(str::trim) {
                if !url.is_empty() {
                    parsed.push(parse_server(url)?);
                }
            }
        }
        if parsed.is_empty() {
            return Err(SetupError::NoServers);
        }
        Ok(Self {
            servers: parsed,
            namespace: "session".to_owned(),
            max_item_size: DEFAULT_MAX_ITEM_SIZE,
            io_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            max_in_flight: 64,
            max_idle: 16,
            cas_retries: 64,
            index_grace: Duration::from_secs(60),
            recent_reads: DEFAULT_RECENT_READS,
        })
    }

    /// Prefix of every key this store writes (default `session`). Stores
    /// with different namespaces share nothing, even on the same servers.
    ///
    /// # Errors
    ///
    /// [`SetupError::BadNamespace`] unless `namespace` is 1 to 64 of
    /// `[A-Za-z0-9_.-]`.
    pub fn with_namespace(mut self, namespace: &str) -> Result<Self, SetupError> {
        let ok = !namespace.is_empty()
            && namespace.len() <= MAX_NAMESPACE_LEN
            && namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !ok {
            return Err(SetupError::BadNamespace(namespace.to_owned()));
        }
        self.namespace = namespace.to_owned();
        Ok(self)
    }

    /// The largest item this store writes, in bytes (default
    /// [`DEFAULT_MAX_ITEM_SIZE`], which fits the server's default 1 MiB
    /// limit). Larger records fail with
    /// [`StoreError::TooLarge`](session_core::StoreError::TooLarge) before
    /// anything is written. Set it to the server's `-I` value minus 1 KiB.
    #[must_use]
    pub fn with_max_item_size(mut self, bytes: usize) -> Self {
        self.max_item_size = bytes;
        self
    }

    /// How long one request (write plus answer) may take before it fails
    /// with [`StoreError::timed_out`](session_core::StoreError::timed_out)
    /// (an `Unavailable` for which
    /// [`is_timeout`](session_core::StoreError::is_timeout) is true, naming
    /// the request and this timeout, never the key) (default 1 s).
    ///
    /// What is retried: a request that fails at the connection level
    /// (broken pipe, connection reset, refused or closed; not a timeout,
    /// not an error reply) in a way the client reports as not applied is
    /// sent exactly once more, on a connection dialed for it (the pooled
    /// ones may all have died with a server restart). That covers every
    /// read (`load`, `list_user_sessions` and the reads inside every operation,
    /// which have no side effect) and any write that never left this
    /// process. A write that was sent in full before the connection broke
    /// may have been applied: `add` (create) and `cas` (update) are not
    /// sent again and the operation fails with `Unavailable`, except
    /// `touch`, which sets absolute values and so runs once more as a
    /// whole. A retried request takes at most one more connect timeout
    /// plus one more I/O timeout; a timed-out request is never repeated.
    #[must_use]
    pub fn with_io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// How long connecting to a server may take (default 1 s); also bounds
    /// the wait for a free connection.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many Memcached calls may run at once (default 64): caps the
    /// open connections per server (callers above it wait), and on the
    /// blocking transport sizes the share of Tokio's blocking thread pool
    /// the store uses.
    ///
    /// # Errors
    ///
    /// [`SetupError::BadSetting`] for zero.
    pub fn with_max_in_flight(mut self, n: usize) -> Result<Self, SetupError> {
        if n == 0 {
            return Err(SetupError::BadSetting("max_in_flight must be at least 1"));
        }
        self.max_in_flight = n;
        Ok(self)
    }

    /// How many idle connections each server keeps open (default 16).
    #[must_use]
    pub fn with_max_idle(mut self, n: usize) -> Self {
        self.max_idle = n;
        self
    }

    /// How many times a compare-and-set on a contended item (the per-user
    /// index, or a session being touched while updated) is retried before
    /// the operation gives up with a backend error (default 64). The
    /// lifecycle calls (`create_with` of a logged-in session, `delete`,
    /// `delete_user`), where all concurrent logins of one user meet, retry
    /// four times as often, with jittered exponential backoff (up to
    /// 12.8 ms a wait).
    #[must_use]
    pub fn with_cas_retries(mut self, n: u32) -> Self {
        self.cas_retries = n.max(1);
        self
    }

    /// How long a login may take between writing its index entry and
    /// writing its session (default 60 s). Until then an entry without a
    /// session counts as a login in progress (against per-user limits, for
    /// example); after it, whoever reads the index cancels that login (its
    /// session can then never be written) and prunes the entry. Keep it
    /// well above the time a login takes. Entries of expired sessions are
    /// pruned at once.
    #[must_use]
    pub fn with_index_grace(mut self, grace: Duration) -> Self {
        self.index_grace = grace;
        self
    }

    /// How many recent loads the store remembers the CAS token of (default
    /// 10,000; 0 turns it off).
    ///
    /// An update of a session loaded a moment ago (the usual request: load,
    /// change, commit) is then one `cas` with that token instead of `gets`
    /// then `cas`. The token changes on every write to the item, so a stale
    /// entry only costs the extra round trip: correctness never depends on
    /// it. Each entry holds a token, a version, two deadlines and the user
    /// id (no session data), about 150 bytes.
    #[must_use]
    pub fn with_recent_reads(mut self, entries: usize) -> Self {
        self.recent_reads = entries;
        self
    }

    /// The namespace in use.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The servers, as `host:port`.
    #[must_use]
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// The item size limit in bytes.
    #[must_use]
    pub fn max_item_size(&self) -> usize {
        self.max_item_size
    }
}

/// `memcache://host:port[?...]` or `host:port` to `host:port`.
fn parse_server(raw: &str) -> Result<String, SetupError> {
    let bad = |reason: &str| SetupError::BadUrl {
        url: RedactedUrl::new(raw),
        reason: redact_text(reason),
    };
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("memcache://{raw}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "memcache" | "memcache+tcp" => {}
        _ => return Err(bad("only memcache:// (TCP) URLs are supported")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "authentication is not supported by the meta protocol client",
        ));
    }
    let host = url.host_str().ok_or_else(|| bad("no host"))?;
    let port = url.port().unwrap_or(11211);
    Ok(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_lists() {
        let c = MemcachedConfig::new([
            "memcache://127.0.0.1:11211?protocol=ascii",
            "localhost, memcache://[::1]:11212",
        ])
        .unwrap();
        assert_eq!(
            c.servers(),
            ["127.0.0.1:11211", "localhost:11211", "[::1]:11212"]
        );
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(matches!(
            MemcachedConfig::new(Vec::<String>::new()),
            Err(SetupError::NoServers)
        ));
        assert!(matches!(
            MemcachedConfig::new(["redis://x:1"]),
            Err(SetupError::BadUrl { .. })
        ));
        assert!(matches!(
            MemcachedConfig::new(["memcache://u:p@x:1"]),
            Err(SetupError::BadUrl { .. })
        ));
        assert!(matches!(
            MemcachedConfig::new([" , "]),
            Err(SetupError::NoServers)
        ));
    }

    #[test]
    #[allow(deprecated)]
    fn the_old_setup_error_name_still_names_it() {
        let e: ConfigError = MemcachedConfig::new(Vec::<String>::new()).unwrap_err();
        assert!(matches!(e, ConfigError::NoServers));
    }

    #[test]
    fn validates_namespace() {
        let c = MemcachedConfig::new(["127.0.0.1:1"]).unwrap();
        assert!(c.clone().with_namespace("app_1.v-2").is_ok());
        for bad in ["", "a b", "a:b", "ü", &"x".repeat(65)] {
            assert!(c.clone().with_namespace(bad).is_err(), "{bad:?}");
        }
        assert!(c.with_max_in_flight(0).is_err());
    }
}
