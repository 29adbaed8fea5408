//! Picks the session store named by `SESSION_BACKEND`.

use std::sync::Arc;
use std::time::Duration;

use session_core::{MemoryStore, SessionStore};

/// An opened store, plus whatever must live as long as it.
pub struct Backend {
    /// The store the session manager uses.
    pub store: Arc<dyn SessionStore>,
    /// Background work tied to the store (the memory store's sweeper).
    _guard: Option<session_core::memory::Sweeper>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").finish_non_exhaustive()
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// `SESSION_BACKEND` names no known backend.
    #[error("unknown SESSION_BACKEND {0:?}; expected one of: {KNOWN}")]
    Unknown(String),
    /// The backend failed to connect or initialise.
    #[error("could not open the {backend} session store: {source}")]
    Open {
        /// The backend name.
        backend: &'static str,
        /// The cause.
        #[source]
        source: session_core::BoxError,
    },
}

/// The backend names [`open`] accepts.
pub const KNOWN: &str = "memory";

/// Opens the store named `name` (case-insensitive). Adding a backend is one
/// match arm giving the `Arc<dyn SessionStore>` (and `None` for the guard,
/// unless the store needs background work kept alive).
///
/// # Errors
///
/// [`BackendError::Unknown`] for an unknown name; [`BackendError::Open`]
/// when the backend cannot be reached.
///
/// # Panics
///
/// Outside a Tokio runtime.
pub async fn open(name: &str) -> Result<Backend, BackendError> {
    let name = name.trim().to_ascii_lowercase();
    let (store, guard): (Arc<dyn SessionStore>, _) = match name.as_str() {
        "memory" => {
            let store = MemoryStore::new();
            let sweeper = store.spawn_sweeper(Duration::from_secs(60));
            (Arc::new(store), Some(sweeper))
        }
        _ => return Err(BackendError::Unknown(name)),
    };
    Ok(Backend {
        store,
        _guard: guard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_is_known_and_unknown_names_are_refused() {
        assert!(open("Memory").await.is_ok());
        let err = open("mongodb").await.unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown SESSION_BACKEND \"mongodb\""),
            "{err}"
        );
    }
}
