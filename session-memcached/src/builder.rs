//! [`MemcachedStoreBuilder`]: the same builder shape as every other backend
//! (`XStore::builder()` … `.connect(url).await` or `.connect_lazy(url)`),
//! with the shared option names.

use std::time::Duration;

use crate::config::{MemcachedConfig, SetupError};
use crate::store::MemcachedStore;

/// Builder for [`MemcachedStore`]; start with [`MemcachedStore::builder`].
///
/// Every setting has a production-ready default (those of
/// [`MemcachedConfig`]); the setters cannot fail, and the values are checked
/// when the store is built.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use session_memcached::MemcachedStore;
///
/// let store = MemcachedStore::builder()
///     .namespace("myapp")
///     .operation_timeout(Duration::from_millis(500))
///     .connect("memcache://10.0.0.1:11211,memcache://10.0.0.2:11211")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct MemcachedStoreBuilder {
    namespace: Option<String>,
    operation_timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    max_record_size: Option<usize>,
    max_in_flight: Option<usize>,
    max_idle: Option<usize>,
    cas_retries: Option<u32>,
    index_grace: Option<Duration>,
    recent_reads: Option<usize>,
    blocking_transport: bool,
}

impl MemcachedStoreBuilder {
    /// Prefix of every key the store writes (default `session`); see
    /// [`MemcachedConfig::with_namespace`].
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// How long one request may take (default 1 s); see
    /// [`MemcachedConfig::with_io_timeout`].
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = Some(timeout);
        self
    }

    /// How long connecting may take (default 1 s); see
    /// [`MemcachedConfig::with_connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The largest encoded record (header, user id and data) the store
    /// writes, in bytes; see [`MemcachedConfig::with_max_item_size`].
    pub fn max_record_size(mut self, bytes: usize) -> Self {
        self.max_record_size = Some(bytes);
        self
    }

    /// How many calls may run at once (default 64); see
    /// [`MemcachedConfig::with_max_in_flight`].
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n);
        self
    }

    /// Idle connections kept per server (default 16).
    pub fn max_idle(mut self, n: usize) -> Self {
        self.max_idle = Some(n);
        self
    }

    /// Compare-and-set retries on a contended item (default 64); see
    /// [`MemcachedConfig::with_cas_retries`].
    pub fn cas_retries(mut self, n: u32) -> Self {
        self.cas_retries = Some(n);
        self
    }

    /// How long a creation in flight is waited for (default 60 s); see
    /// [`MemcachedConfig::with_index_grace`].
    pub fn index_grace(mut self, grace: Duration) -> Self {
        self.index_grace = Some(grace);
        self
    }

    /// Recent loads remembered (default 10,000); see
    /// [`MemcachedConfig::with_recent_reads`].
    pub fn recent_reads(mut self, entries: usize) -> Self {
        self.recent_reads = Some(entries);
        self
    }

    /// Whether to use the `memcache` crate's Tokio client (default `true`
    /// with the `async` feature, which is on by default). `false` selects
    /// the slower blocking transport (see
    /// [`MemcachedStore::new_blocking`]), which is also what every store
    /// uses without the feature, whatever this says.
    pub fn tokio_transport(mut self, on: bool) -> Self {
        self.blocking_transport = !on;
        self
    }

    /// The configuration these settings make for `servers` (comma-separated
    /// `memcache://host:port` URLs).
    ///
    /// # Errors
    ///
    /// [`SetupError`] for a malformed URL, a bad namespace or a setting out
    /// of range.
    pub fn config(&self, servers: &str) -> Result<MemcachedConfig, SetupError> {
        let mut c = MemcachedConfig::new([servers])?;
        if let Some(ns) = &self.namespace {
            c = c.with_namespace(ns)?;
        }
        if let Some(t) = self.operation_timeout {
            c = c.with_io_timeout(t);
        }
        if let Some(t) = self.connect_timeout {
            c = c.with_connect_timeout(t);
        }
        if let Some(n) = self.max_record_size {
            c = c.with_max_item_size(n);
        }
        if let Some(n) = self.max_in_flight {
            c = c.with_max_in_flight(n)?;
        }
        if let Some(n) = self.max_idle {
            c = c.with_max_idle(n);
        }
        if let Some(n) = self.cas_retries {
            c = c.with_cas_retries(n);
        }
        if let Some(g) = self.index_grace {
            c = c.with_index_grace(g);
        }
        if let Some(n) = self.recent_reads {
            c = c.with_recent_reads(n);
        }
        Ok(c)
    }

    /// Builds the store and checks that every server answers.
    ///
    /// # Errors
    ///
    /// [`SetupError`] for a bad setting or URL, and
    /// [`SetupError::Unavailable`] when a server does not answer within the
    /// timeouts.
    pub async fn connect(self, servers: &str) -> Result<MemcachedStore, SetupError> {
        let config = self.config(servers)?;
        #[cfg(feature = "async")]
        let store = if self.blocking_transport {
            MemcachedStore::new_blocking(config)?
        } else {
            MemcachedStore::new_async(config).await?
        };
        #[cfg(not(feature = "async"))]
        let store = MemcachedStore::new_blocking(config)?;
        store.ping().await.map_err(SetupError::Unavailable)?;
        store
            .read_server_limits()
            .await
            .map_err(SetupError::Unavailable)?;
        Ok(store)
    }

    /// Builds the store without contacting a server: an unreachable server
    /// (or, on the default transport, a host that does not resolve) shows
    /// up as [`StoreError::Unavailable`](session_core::StoreError) on the
    /// first operation. Same transport as [`connect`](Self::connect).
    ///
    /// # Errors
    ///
    /// [`SetupError`] for a bad setting or URL, or, on the blocking
    /// transport, a host that does not resolve.
    pub fn connect_lazy(self, servers: &str) -> Result<MemcachedStore, SetupError> {
        let config = self.config(servers)?;
        if self.blocking_transport {
            MemcachedStore::new_blocking(config)
        } else {
            MemcachedStore::new(config)
        }
    }
}
