//! Key layout: every item lives under `<namespace>:<kind>:<id>`.
//!
//! - `<ns>:s:<storage key>`: a session record. Storage keys are 64 hex
//!   characters; anything else (a key from a foreign scheme) is hashed so
//!   that it is always a valid Memcached key (at most 250 bytes, no spaces
//!   or control characters).
//! - `<ns>:u:<hash>`: a user's index. User ids may be long, non-ASCII or
//!   contain spaces, so the key holds a BLAKE3 hash of the id instead.

use session_core::StorageKey;

const USER_CONTEXT: &str = "session-memcached 2026-11 user index key v1";
const FOREIGN_KEY_CONTEXT: &str = "session-memcached 2026-11 foreign storage key v1";

/// Longest storage key used verbatim.
const MAX_VERBATIM: usize = 128;

/// Builds the Memcached keys of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    namespace: String,
}

impl Keys {
    /// Keys under `namespace` (already validated).
    pub(crate) fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }

    /// The item key of a session record.
    pub(crate) fn session(&self, key: &StorageKey) -> String {
        let k = key.as_str();
        let verbatim = !k.is_empty()
            && k.len() <= MAX_VERBATIM
            && k.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
        if verbatim {
            format!("{}:s:{k}", self.namespace)
        } else {
            let h = blake3::Hasher::new_derive_key(FOREIGN_KEY_CONTEXT)
                .update(k.as_bytes())
                .finalize();
            format!("{}:s:#{}", self.namespace, h.to_hex())
        }
    }

    /// The item key of a user's index.
    pub(crate) fn user(&self, user_id: &str) -> String {
        let tag = session_core::codec::UserTag::derive(USER_CONTEXT, user_id.as_bytes());
        format!("{}:u:{}", self.namespace, tag.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_NAMESPACE_LEN;

    fn valid(k: &str) -> bool {
        k.len() <= 250 && k.bytes().all(|b| b.is_ascii_graphic())
    }

    #[test]
    fn keys_are_valid_memcached_keys() {
        let keys = Keys::new(&"n".repeat(MAX_NAMESPACE_LEN));
        let hex = StorageKey::from_stored(&"ab".repeat(32));
        assert!(keys.session(&hex).ends_with(hex.as_str()));
        for odd in ["", "a b", "\n", &"x".repeat(1000), "ü", "#abc"] {
            let k = keys.session(&StorageKey::from_stored(odd));
            assert!(valid(&k), "{k:?}");
        }
        for user in ["alice", "a b\t", &"ü".repeat(2000), ""] {
            assert!(valid(&keys.user(user)));
        }
    }

    #[test]
    fn distinct_inputs_give_distinct_keys() {
        let keys = Keys::new("ns");
        assert_ne!(keys.user("alice"), keys.user("alice "));
        assert_ne!(keys.user("alice"), Keys::new("other").user("alice"));
        assert_ne!(
            keys.session(&StorageKey::from_stored("a b")),
            keys.session(&StorageKey::from_stored("a  b"))
        );
        // A hashed foreign key never collides with a verbatim one.
        assert!(keys
            .session(&StorageKey::from_stored("a b"))
            .contains(":s:#"));
    }
}
