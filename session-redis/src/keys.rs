//! Key layout: how a prefix, a storage key and a user id become Redis key
//! names.
//!
//! ```text
//! <prefix>:s:{<storage key>}     one string per session (see [`crate::codec`])
//! <prefix>:u:{<user hash>}       one sorted set per user: member = storage key,
//!                                score = when the entry was written (unix ms)
//! ```
//!
//! The part in braces is the Redis Cluster hash tag, so keys spread over the
//! slots by session and by user. User ids never appear in key names: the
//! user hash is a BLAKE3 hash (under a fixed derivation context) of the
//! user id's bytes, 64 hex characters, so long, non-ASCII or brace-laden ids
//! cannot change the slot or collide with another namespace. Stored records
//! keep the full user id, and every index read checks it, so even a hash
//! collision could not show one user another's sessions.

use std::fmt;
use std::sync::Arc;

use session_core::StorageKey;

/// Derivation context of the per-user index hash.
const USER_CONTEXT: &str = "session-redis 2026-11 user index v1";

/// Longest accepted key prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 128;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "session";

/// A key prefix was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Redis key prefix: {reason}; use 1 to {MAX_PREFIX_LEN} printable ASCII characters without braces or spaces, such as \"myapp\"")]
pub struct InvalidPrefix {
    reason: &'static str,
}

/// A validated key prefix (namespace). Stores with different prefixes share
/// no key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPrefix(Arc<str>);

impl KeyPrefix {
    /// Validates `prefix`: 1 to [`MAX_PREFIX_LEN`] printable ASCII
    /// characters, no `{`, `}` (they would capture the cluster hash tag) and
    /// no whitespace.
    ///
    /// # Errors
    ///
    /// [`InvalidPrefix`] saying what is wrong.
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let reason = if prefix.is_empty() {
            "it is empty"
        } else if prefix.len() > MAX_PREFIX_LEN {
            "it is too long"
        } else if prefix.contains(['{', '}']) {
            "it contains a brace"
        } else if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            "it contains whitespace, control or non-ASCII characters"
        } else {
            return Ok(Self(Arc::from(prefix)));
        };
        Err(InvalidPrefix { reason })
    }

    /// The prefix as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Redis key of a session: `<prefix>:s:{<storage key>}`.
    #[must_use]
    pub fn session_key(&self, key: &StorageKey) -> String {
        let key = key.as_str();
        let mut out = String::with_capacity(self.0.len() + key.len() + 5);
        out.push_str(&self.0);
        out.push_str(":s:{");
        out.push_str(key);
        out.push('}');
        out
    }

    /// What every session key starts with, `<prefix>:s:{`: a script that
    /// computes session keys from storage keys appends `<storage key>}`.
    #[must_use]
    pub(crate) fn session_key_head(&self) -> String {
        format!("{}:s:{{", self.0)
    }

    /// The Redis key of a user's index: `<prefix>:u:{<hash>}`, where the
    /// hash is a BLAKE3 hash of the user id's bytes.
    #[must_use]
    pub fn index_key(&self, user_id: &[u8]) -> String {
        let tag = session_core::codec::UserTag::derive(USER_CONTEXT, user_id);
        let mut out = String::with_capacity(self.0.len() + 64 + 5);
        out.push_str(&self.0);
        out.push_str(":u:{");
        out.push_str(&tag.to_hex());
        out.push('}');
        out
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        Self(Arc::from(DEFAULT_PREFIX))
    }
}

impl fmt::Debug for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPrefix({:?})", &*self.0)
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = open + key[open..].find('}').unwrap();
        &key[open + 1..close]
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(KeyPrefix::new("myapp").is_ok());
        assert!(KeyPrefix::new("cs_0123_a").is_ok());
        assert!(KeyPrefix::new("a:b-c.d").is_ok());
        for bad in ["", "a{b", "a}b", "a b", "tab\t", "é", &"x".repeat(129)] {
            let err = KeyPrefix::new(bad).unwrap_err();
            assert!(err.to_string().contains("invalid Redis key prefix"));
        }
    }

    #[test]
    fn session_keys_are_tagged_by_storage_key() {
        let p = KeyPrefix::new("app").unwrap();
        let k = StorageKey::from_stored("abc123");
        assert_eq!(p.session_key(&k), "app:s:{abc123}");
        assert_eq!(slot_tag(&p.session_key(&k)), "abc123");
        assert_eq!(
            format!("{}{}}}", p.session_key_head(), k.as_str()),
            p.session_key(&k)
        );
    }

    #[test]
    fn index_keys_hide_and_separate_user_ids() {
        let p = KeyPrefix::new("app").unwrap();
        let nasty = format!("{{tag}}:a b*?\u{0301}Zoë{}", "x".repeat(1000));
        let k = p.index_key(nasty.as_bytes());
        assert_eq!(k.len(), "app:u:{}".len() + 64);
        assert!(!k.contains("tag") && !k.contains("Zoë"));
        assert_eq!(slot_tag(&k).len(), 64);
        assert_eq!(k, p.index_key(nasty.as_bytes()));
        assert_ne!(p.index_key(b"alice"), p.index_key(b"Alice"));
        assert_ne!(p.index_key(b"alice"), p.index_key(b"alice "));
        let q = KeyPrefix::new("other").unwrap();
        assert_ne!(p.index_key(b"alice"), q.index_key(b"alice"));
    }
}
