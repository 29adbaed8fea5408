//! The per-user index item: which sessions a user has.
//!
//! Memcached has no secondary index, so each user gets one item listing
//! their sessions' storage keys, each with when it was added and the
//! session's absolute deadline. Writers change it with `gets`/`cas` loops,
//! so concurrent logins of one user never lose an entry.
//!
//! Format: a version byte, then per entry a big-endian `u16` key length,
//! the key bytes, and two big-endian `i64` Unix-millisecond times.

use session_core::{StorageKey, StoreError, Timestamp};

const FORMAT_V1: u8 = 1;

/// One session in a user's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The session's storage key.
    pub(crate) key: StorageKey,
    /// When the entry was written (before the session itself).
    pub(crate) added: Timestamp,
    /// The session's absolute deadline: the entry is dead after it.
    pub(crate) absolute_deadline: Timestamp,
}

/// A user's index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Index {
    pub(crate) entries: Vec<Entry>,
}

impl Index {
    /// Adds `entry`, or updates the entry with the same key (keeping the
    /// later deadline); drops entries whose absolute deadline has passed.
    pub(crate) fn upsert(&mut self, entry: Entry, now: Timestamp) {
        self.entries.retain(|e| e.absolute_deadline > now);
        match self.entries.iter_mut().find(|e| e.key == entry.key) {
            Some(e) => e.absolute_deadline = e.absolute_deadline.max(entry.absolute_deadline),
            None => self.entries.push(entry),
        }
    }

    /// The latest absolute deadline, which bounds the index item's life.
    pub(crate) fn last_deadline(&self) -> Option<Timestamp> {
        self.entries.iter().map(|e| e.absolute_deadline).max()
    }

    /// Serializes the index.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.entries.len() * 82);
        out.push(FORMAT_V1);
        for e in &self.entries {
            let k = e.key.as_str().as_bytes();
            // Keys longer than u16::MAX are never produced by session-core;
            // truncating would corrupt, so such an entry is skipped instead.
            let Ok(len) = u16::try_from(k.len()) else {
                continue;
            };
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&e.added.as_unix_millis().to_be_bytes());
            out.extend_from_slice(&e.absolute_deadline.as_unix_millis().to_be_bytes());
        }
        out
    }

    /// Parses what [`Index::encode`] wrote.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] for anything else; never panics.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |why: &str| StoreError::Corrupt(format!("user index item: {why}"));
        let (&version, mut rest) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
        if version != FORMAT_V1 {
            return Err(corrupt("unknown format version"));
        }
        let mut entries = Vec::new();
        while !rest.is_empty() {
            let (len, tail) = rest
                .split_at_checked(2)
                .ok_or_else(|| corrupt("truncated"))?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let (key, tail) = tail
                .split_at_checked(len)
                .ok_or_else(|| corrupt("truncated key"))?;
            let key = std::str::from_utf8(key).map_err(|_| corrupt("key is not UTF-8"))?;
            let (times, tail) = tail
                .split_at_checked(16)
                .ok_or_else(|| corrupt("truncated times"))?;
            let mut a = [0u8; 8];
            let mut d = [0u8; 8];
            a.copy_from_slice(&times[..8]);
            d.copy_from_slice(&times[8..]);
            entries.push(Entry {
                key: StorageKey::from_stored(key),
                added: Timestamp::from_unix_millis(i64::from_be_bytes(a)),
                absolute_deadline: Timestamp::from_unix_millis(i64::from_be_bytes(d)),
            });
            rest = tail;
        }
        Ok(Self { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(k: &str, added: i64, dl: i64) -> Entry {
        Entry {
            key: StorageKey::from_stored(k),
            added: Timestamp::from_unix_millis(added),
            absolute_deadline: Timestamp::from_unix_millis(dl),
        }
    }

    #[test]
    fn round_trips() {
        let idx = Index {
            entries: vec![entry(&"a".repeat(64), 1, 2), entry("ü x", -5, i64::MAX)],
        };
        assert_eq!(Index::decode(&idx.encode()).unwrap(), idx);
        assert_eq!(Index::decode(&[1]).unwrap(), Index::default());
    }

    #[test]
    fn rejects_every_truncation_without_panicking() {
        let enc = Index {
            entries: vec![entry("abc", 1, 2)],
        }
        .encode();
        for n in 0..enc.len() {
            if n == 1 {
                continue; // the bare version byte is an empty index
            }
            assert!(Index::decode(&enc[..n]).is_err(), "len {n}");
        }
        assert!(Index::decode(&[9]).is_err());
    }

    #[test]
    fn upsert_dedups_and_prunes_dead_entries() {
        let now = Timestamp::from_unix_millis(100);
        let mut idx = Index {
            entries: vec![entry("dead", 0, 100), entry("k", 0, 200)],
        };
        idx.upsert(entry("k", 50, 300), now);
        idx.upsert(entry("k", 60, 250), now);
        idx.upsert(entry("n", 70, 150), now);
        assert_eq!(idx.entries, vec![entry("k", 0, 300), entry("n", 70, 150)]);
        assert_eq!(idx.last_deadline(), Some(Timestamp::from_unix_millis(300)));
    }
}
