//! Recent reads: what each recent `load` saw of an item, CAS token
//! included, so that the `update` that usually follows in the same request
//! is a single `cas` instead of `gets` then `cas`.
//!
//! Why this is safe: Memcached changes an item's CAS token on every
//! modification. A `cas` with the token a load returned therefore succeeds
//! only if the item is still exactly the one that load decoded, whose
//! version, user and deadlines are recorded here. If anything changed in
//! between (another request, another application instance, a touch, a
//! delete and re-create), the `cas` fails and the store falls back to
//! reading the item again, which decides between conflict and not found as
//! before. A stale or evicted entry costs a round trip, never correctness.
//!
//! The cache is bounded (S3-FIFO eviction, from `quick_cache`) and holds no
//! session data: a token, a version, two deadlines and the user id.

use quick_cache::sync::Cache;
use session_core::{SessionRecord, StorageKey, Timestamp};

/// What a load saw of one item.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// The item's CAS token.
    pub(crate) cas: u64,
    /// The record's version.
    pub(crate) version: u64,
    /// The record's user binding.
    pub(crate) user_id: Option<String>,
    /// The record's absolute deadline.
    pub(crate) absolute_deadline: Timestamp,
    /// The record's earlier deadline.
    pub(crate) expires_at: Timestamp,
}

impl Seen {
    pub(crate) fn new(record: &SessionRecord, cas: u64) -> Self {
        Self {
            cas,
            version: record.version,
            user_id: record.user_id.clone(),
            absolute_deadline: record.absolute_deadline,
            expires_at: record.expires_at(),
        }
    }
}

/// A bounded map from storage key to [`Seen`]; capacity 0 disables it.
pub(crate) struct RecentReads {
    cache: Option<Cache<StorageKey, Seen>>,
}

impl RecentReads {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            cache: (capacity > 0).then(|| Cache::new(capacity)),
        }
    }

    /// Remembers what a load of `key` saw.
    pub(crate) fn remember(&self, key: &StorageKey, seen: Seen) {
        if let Some(cache) = &self.cache {
            cache.insert(key.clone(), seen);
        }
    }

    /// Takes the entry for `key`: whatever happens next changes the item's
    /// token, so an entry is good for one write at most.
    pub(crate) fn take(&self, key: &StorageKey) -> Option<Seen> {
        self.cache.as_ref()?.remove(key).map(|(_, seen)| seen)
    }

    /// Forgets `key`.
    pub(crate) fn forget(&self, key: &StorageKey) {
        if let Some(cache) = &self.cache {
            cache.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(version: u64) -> SessionRecord {
        SessionRecord::new(
            Bytes::from_static(b"x"),
            Some("ada".into()),
            Timestamp::from_unix_millis(1),
            Timestamp::from_unix_millis(30),
            Timestamp::from_unix_millis(40),
        )
        .with_last_access(Timestamp::from_unix_millis(2))
        .with_version(version)
    }

    fn key(c: char) -> StorageKey {
        StorageKey::from_stored(&c.to_string().repeat(64))
    }

    #[test]
    fn an_entry_serves_one_write() {
        let recent = RecentReads::new(16);
        recent.remember(&key('a'), Seen::new(&record(3), 77));
        let seen = recent.take(&key('a')).unwrap();
        assert_eq!((seen.cas, seen.version), (77, 3));
        assert_eq!(seen.user_id.as_deref(), Some("ada"));
        assert_eq!(seen.expires_at, Timestamp::from_unix_millis(30));
        assert!(recent.take(&key('a')).is_none());
    }

    #[test]
    fn forget_and_disabled() {
        let recent = RecentReads::new(16);
        recent.remember(&key('b'), Seen::new(&record(1), 1));
        recent.forget(&key('b'));
        assert!(recent.take(&key('b')).is_none());

        let off = RecentReads::new(0);
        off.remember(&key('c'), Seen::new(&record(1), 1));
        assert!(off.take(&key('c')).is_none());
    }

    #[test]
    fn bounded() {
        let recent = RecentReads::new(8);
        for c in "0123456789abcdef".chars() {
            recent.remember(&key(c), Seen::new(&record(1), 1));
        }
        let kept = "0123456789abcdef"
            .chars()
            .filter(|&c| recent.take(&key(c)).is_some())
            .count();
        assert!(kept <= 8, "{kept} entries kept");
    }
}
