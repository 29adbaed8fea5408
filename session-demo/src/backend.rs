//! Picks the session store named by `SESSION_BACKEND`, and wraps it in
//! `EncryptedStore` when `SESSION_ENCRYPTION_KEY` is set.
//!
//! | `SESSION_BACKEND` | server, from | default |
//! |---|---|---|
//! | `memory` (default) | this process | |
//! | `redis` | `REDIS_URL` | `redis://127.0.0.1:6379` |
//! | `postgres` | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/test` |
//! | `memcached` | `MEMCACHED_URL` | `memcache://127.0.0.1:11211` |
//!
//! `SESSION_ENCRYPTION_KEY` is one base64 AES-256 key (`openssl rand -base64
//! 32`), or `id:key,id:key` with the primary first to rotate keys.

use std::sync::Arc;
use std::time::Duration;

use session_core::{ExpiryTask, MemoryStore, SessionStore};
use session_encrypted::{EncryptedStore, KeyError, KeyRing};

/// Environment variable holding the encryption key ring.
pub const ENCRYPTION_KEY_VAR: &str = "SESSION_ENCRYPTION_KEY";

/// An opened store, plus whatever must live as long as it.
pub struct Backend {
    /// The store the session manager uses.
    pub store: Arc<dyn SessionStore>,
    /// Whether records are encrypted at rest.
    pub encrypted: bool,
    /// The store's expiry task (memory sweeper, PostgreSQL clean-up), if
    /// it needs one; it stops when the backend is dropped.
    _expiry: Option<ExpiryTask>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("encrypted", &self.encrypted)
            .finish_non_exhaustive()
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// `SESSION_BACKEND` names no known backend.
    #[error("unknown SESSION_BACKEND {0:?}; expected one of: {KNOWN}")]
    Unknown(String),
    /// The backend failed to connect or initialise.
    #[error("could not open the {backend} session store")]
    Open {
        /// The backend name.
        backend: &'static str,
        /// The cause.
        #[source]
        source: session_core::BoxError,
    },
    /// `SESSION_ENCRYPTION_KEY` is set but unusable.
    #[error("{ENCRYPTION_KEY_VAR} is unusable")]
    Encryption(#[from] KeyError),
}

/// The backend names [`open`] accepts.
pub const KNOWN: &str = "memory, redis, postgres, memcached";

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn open_err(backend: &'static str) -> impl Fn(session_core::BoxError) -> BackendError {
    move |source| BackendError::Open { backend, source }
}

/// Opens the store named `name` (case-insensitive) with its keys or table
/// named by `namespace`, encrypted when
/// `SESSION_ENCRYPTION_KEY` is set.
///
/// # Errors
///
/// [`BackendError::Unknown`] for an unknown name; [`BackendError::Open`]
/// when the backend cannot be reached; [`BackendError::Encryption`] for a
/// malformed key.
///
/// # Panics
///
/// Outside a Tokio runtime.
pub async fn open(name: &str, namespace: &str) -> Result<Backend, BackendError> {
    let ring = match std::env::var(ENCRYPTION_KEY_VAR) {
        Ok(v) if !v.trim().is_empty() => Some(KeyRing::parse(&v)?),
        _ => None,
    };
    let name = name.trim().to_ascii_lowercase();
    let (store, expiry): (Arc<dyn SessionStore>, Option<ExpiryTask>) = match name.as_str() {
        "memory" => {
            let store = MemoryStore::new();
            let sweeper = store.spawn_sweeper(Duration::from_secs(60));
            (Arc::new(store), Some(sweeper))
        }
        "redis" => {
            let url = env_or("REDIS_URL", "redis://127.0.0.1:6379");
            let store = session_redis::RedisStore::builder()
                .prefix(namespace)
                .connect(&url)
                .await
                .map_err(|e| open_err("redis")(e.into()))?;
            (Arc::new(store), None)
        }
        "postgres" => {
            let url = env_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
            let store = session_postgres::PostgresStore::builder()
                .table(namespace)
                .connect(&url)
                .await
                .map_err(|e| open_err("postgres")(e.into()))?;
            store
                .migrate()
                .await
                .map_err(|e| open_err("postgres")(e.into()))?;
            let cleanup = store.spawn_cleanup(Duration::from_secs(60));
            (Arc::new(store), Some(cleanup))
        }
        "memcached" => {
            let url = env_or("MEMCACHED_URL", "memcache://127.0.0.1:11211");
            let config = session_memcached::MemcachedConfig::new([url.as_str()])
                .and_then(|c| c.with_namespace(namespace))
                .map_err(|e| open_err("memcached")(e.into()))?;
            let store = session_memcached::MemcachedStore::new(config)
                .map_err(|e| open_err("memcached")(e.into()))?;
            store
                .ping()
                .await
                .map_err(|e| open_err("memcached")(e.into()))?;
            (Arc::new(store), None)
        }
        _ => return Err(BackendError::Unknown(name)),
    };
    let encrypted = ring.is_some();
    let store = match ring {
        Some(ring) => Arc::new(EncryptedStore::new(store, ring)) as Arc<dyn SessionStore>,
        None => store,
    };
    Ok(Backend {
        store,
        encrypted,
        _expiry: expiry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_is_known_and_unknown_names_are_refused() {
        assert!(open("Memory", "t").await.is_ok());
        let err = open("mongodb", "t").await.unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown SESSION_BACKEND \"mongodb\""),
            "{err}"
        );
    }
}
