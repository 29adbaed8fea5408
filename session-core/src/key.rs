//! Storage keys: what stores see instead of the bearer session ID.
//!
//! A [`StorageKey`] is a BLAKE3 hash of the [`SessionId`], optionally keyed
//! by an application secret ([`KeyDeriver::with_secret`]). It is one-way: a
//! dump of any store yields keys that cannot be turned back into cookies.

use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::id::SessionId;

const UNKEYED_CONTEXT: &str = "session-core 2026-11 storage key v1";
const SECRET_CONTEXT: &str = "session-core 2026-11 storage key secret v1";
const AUDIT_CONTEXT: &str = "session-core 2026-11 audit salt v1";

/// The key under which a store keeps a session record: 64 lowercase hex
/// characters, safe in Redis keys, SQL text columns and Memcached keys.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageKey(Arc<str>);

impl StorageKey {
    /// Wraps a key read back from a store.
    ///
    /// Stores use this when they rebuild keys from their own index; it does
    /// not validate the format, so it accepts keys written by a future
    /// derivation scheme.
    #[must_use]
    pub fn from_stored(s: &str) -> Self {
        Self(Arc::from(s))
    }

    /// The key as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageKey({})", &self.0)
    }
}

impl fmt::Display for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StorageKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Derives [`StorageKey`]s from [`SessionId`]s.
#[derive(Clone)]
pub struct KeyDeriver {
    key: Zeroizing<[u8; 32]>,
    keyed: bool,
}

impl KeyDeriver {
    /// Derivation without an application secret: a BLAKE3 keyed hash under a
    /// fixed, public key. Already one-way; a secret adds defence in depth.
    #[must_use]
    pub fn new() -> Self {
        Self {
            key: Zeroizing::new(blake3::derive_key(UNKEYED_CONTEXT, b"")),
            keyed: false,
        }
    }

    /// Keyed derivation: a BLAKE3 keyed hash with a key derived from
    /// `secret` (any length; use at least 32 random bytes).
    #[must_use]
    pub fn with_secret(secret: &[u8]) -> Self {
        Self {
            key: Zeroizing::new(blake3::derive_key(SECRET_CONTEXT, secret)),
            keyed: true,
        }
    }

    /// The storage key for `id`.
    #[must_use]
    pub fn derive(&self, id: &SessionId) -> StorageKey {
        let hash = blake3::keyed_hash(&self.key, id.as_bytes());
        StorageKey(Arc::from(hash.to_hex().as_str()))
    }
}

impl Default for KeyDeriver {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for KeyDeriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyDeriver")
            .field("keyed", &self.keyed)
            .finish()
    }
}

/// Short salted tags that name a session in logs without revealing it.
///
/// The tag is a keyed hash of the storage key under a salt, truncated to 64
/// bits: enough to correlate events, useless as a token or to find the
/// record. The salt is random per process unless configured.
#[derive(Clone)]
pub struct AuditTagger {
    salt: Zeroizing<[u8; 32]>,
}

impl AuditTagger {
    /// A tagger with a fresh random salt (tags differ across restarts).
    #[must_use]
    pub fn random() -> Self {
        let mut salt = Zeroizing::new([0u8; 32]);
        getrandom::fill(salt.as_mut()).expect("the operating system CSPRNG failed");
        Self { salt }
    }

    /// A tagger with a salt derived from `salt` (tags stable across
    /// restarts and instances that share it).
    #[must_use]
    pub fn with_salt(salt: &[u8]) -> Self {
        Self {
            salt: Zeroizing::new(blake3::derive_key(AUDIT_CONTEXT, salt)),
        }
    }

    /// The tag for a session.
    #[must_use]
    pub fn tag(&self, key: &StorageKey) -> String {
        let h = blake3::keyed_hash(&self.salt, key.as_str().as_bytes());
        h.to_hex()[..16].to_string()
    }
}

impl fmt::Debug for AuditTagger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditTagger(<salt redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_deterministic_and_hides_the_id() {
        let id = SessionId::generate();
        let d = KeyDeriver::new();
        let k = d.derive(&id);
        assert_eq!(k, d.derive(&id));
        assert_eq!(k.as_str().len(), 64);
        assert!(!k.as_str().contains(&id.expose()));
        assert_ne!(k, d.derive(&SessionId::generate()));
    }

    #[test]
    fn secret_changes_the_key() {
        let id = SessionId::generate();
        let plain = KeyDeriver::new().derive(&id);
        let a = KeyDeriver::with_secret(b"a").derive(&id);
        let b = KeyDeriver::with_secret(b"b").derive(&id);
        assert_ne!(plain, a);
        assert_ne!(a, b);
    }

    #[test]
    fn audit_tags_are_salted() {
        let k = KeyDeriver::new().derive(&SessionId::generate());
        let t1 = AuditTagger::random().tag(&k);
        let t2 = AuditTagger::random().tag(&k);
        assert_eq!(t1.len(), 16);
        assert_ne!(t1, t2);
        assert!(!k.as_str().contains(&t1));
        let s = AuditTagger::with_salt(b"x");
        assert_eq!(s.tag(&k), AuditTagger::with_salt(b"x").tag(&k));
    }
}
