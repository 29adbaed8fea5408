//! Unique names and fresh keys, so that tests sharing a server never see
//! each other's data.

use std::sync::atomic::{AtomicU64, Ordering};

use session_core::{KeyDeriver, SessionId, StorageKey};

/// A name unique to this call, process and moment:
/// `t_<name>_<nanoseconds hex>_<process id>_<counter>`. Only ASCII letters,
/// digits and `_` are added, so it is a valid Redis prefix, Memcached
/// namespace and PostgreSQL table name whenever `name` is.
#[must_use]
pub fn unique(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("t_{name}_{nanos:x}_{}_{n}", std::process::id())
}

/// The storage key of a freshly generated session ID.
#[must_use]
pub fn storage_key() -> StorageKey {
    KeyDeriver::new().derive(&SessionId::generate())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys_are_unique() {
        assert_ne!(unique("a"), unique("a"));
        assert!(unique("x_1")
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        assert_ne!(storage_key(), storage_key());
    }
}
