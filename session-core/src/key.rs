//! Storage keys: what stores see instead of the bearer session ID.
//!
//! A [`StorageKey`] is a BLAKE3 hash of the [`SessionId`], optionally keyed
//! by an application secret ([`KeyDeriver::with_secret`]). It is one-way: a
//! dump of any store yields keys that cannot be turned back into cookies.
//!
//! A storage key still names a row of the store, so it is kept out of logs:
//! its `Display` and `Debug` show a salted tag (see [`StorageKey`]), and
//! only [`StorageKey::as_str`] gives the key itself, for the stores.

use std::fmt;
use std::sync::{Arc, OnceLock};

use zeroize::Zeroizing;

use crate::id::SessionId;

const UNKEYED_CONTEXT: &str = "session-core 2026-11 storage key v1";
const SECRET_CONTEXT: &str = "session-core 2026-11 storage key secret v1";
const AUDIT_CONTEXT: &str = "session-core 2026-11 audit salt v1";

/// The salt of this process's tags: random, drawn on first use.
fn process_salt() -> &'static [u8; 32] {
    static SALT: OnceLock<[u8; 32]> = OnceLock::new();
    SALT.get_or_init(|| {
        let mut salt = [0u8; 32];
        getrandom::fill(&mut salt).expect("the operating system CSPRNG failed");
        salt
    })
}

/// The first 64 bits of the keyed hash of `key` under `salt`, as hex.
fn tag_of(salt: &[u8; 32], key: &str) -> String {
    blake3::keyed_hash(salt, key.as_bytes()).to_hex()[..16].to_string()
}

/// The key under which a store keeps a session record: 64 lowercase hex
/// characters, safe in Redis keys, SQL text columns and Memcached keys.
///
/// `Display` and `Debug` never show the key: they show `tag:` and 16 hex
/// characters, a keyed BLAKE3 hash of the key under a random per-process
/// salt. The tag is the same for a key throughout the process (so log lines
/// about one session can be correlated, and it equals the
/// [`SessionManager`](crate::SessionManager)'s default audit tag), but
/// cannot be matched with a row of the store or across restarts. Stores
/// build their keys from [`StorageKey::as_str`], never from `Display`.
///
/// ```
/// use session_core::{KeyDeriver, SessionId};
///
/// let key = KeyDeriver::new().derive(&SessionId::generate());
/// let shown = key.to_string();
/// assert!(shown.starts_with("tag:") && shown.len() == 20);
/// assert!(!format!("{key:?}").contains(key.as_str()));
/// ```
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

    /// The key itself, as the store keeps it: what stores build their
    /// item keys and query parameters from. It names the session's row, so
    /// do not log it (`Display` is the loggable tag).
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The salted per-process tag that `Display` shows (without `tag:`).
    #[must_use]
    pub fn tag(&self) -> String {
        tag_of(process_salt(), &self.0)
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageKey(tag:{})", self.tag())
    }
}

impl fmt::Display for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tag:{}", self.tag())
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
    /// A tagger with this process's random salt: its tags are the ones
    /// [`StorageKey`]'s `Display` shows (after `tag:`), and differ across
    /// restarts. The [`SessionManager`](crate::SessionManager)'s default.
    #[must_use]
    pub fn process() -> Self {
        Self {
            salt: Zeroizing::new(*process_salt()),
        }
    }

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
        tag_of(&self.salt, key.as_str())
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
        assert_eq!(
            format!("tag:{}", AuditTagger::process().tag(&k)),
            k.to_string()
        );
    }

    #[test]
    fn display_and_debug_show_a_stable_salted_tag_never_the_key() {
        let k = KeyDeriver::new().derive(&SessionId::generate());
        let other = KeyDeriver::new().derive(&SessionId::generate());
        let shown = [
            k.to_string(),
            format!("{k:?}"),
            format!("{:?}", Some(&k)),
            format!("{k:#?}"),
        ];
        for s in &shown {
            assert!(!s.contains(k.as_str()), "{s}");
            // No 16-character window of the key either.
            for w in k.as_str().as_bytes().windows(16) {
                assert!(!s.contains(std::str::from_utf8(w).unwrap()), "{s}");
            }
        }
        assert_eq!(shown[0], format!("tag:{}", k.tag()));
        assert_eq!(shown[1], format!("StorageKey(tag:{})", k.tag()));
        assert_eq!(shown[0].len(), 4 + 16);
        assert_eq!(k.to_string(), k.clone().to_string(), "stable in a process");
        assert_eq!(
            StorageKey::from_stored(k.as_str()).to_string(),
            shown[0],
            "same key, same tag"
        );
        assert_ne!(other.to_string(), shown[0]);
        // The tag is salted: not the unsalted hash of the key.
        let unsalted = blake3::hash(k.as_str().as_bytes()).to_hex();
        assert!(!shown[0].contains(&unsalted[..16]));
        // A foreign (short) key is not shown either.
        let short = StorageKey::from_stored("row-17");
        assert!(!format!("{short} {short:?}").contains("row-17"));
    }
}
