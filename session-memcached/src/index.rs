//! The per-user index item: which sessions a user has.
//!
//! Memcached has no secondary index, so each user gets one item listing
//! their sessions' storage keys. Writers change it with `gets`/`cas`
//! loops, so concurrent logins never lose an entry, and every decision
//! about the user's sessions (how many there are, which to evict) is made
//! on one version of it and committed by a `cas` on that version: this
//! item is where a user's lifecycle changes are serialized (see the
//! crate documentation).
//!
//! An entry is written before its session record. Until the record is
//! there the entry is *pending*; its `nonce` names that creation, so that
//! `delete_user` or an eviction can cancel exactly it (see
//! [`crate::tombstone`]).
//!
//! Format 2: a version byte, then per entry a big-endian `u16` key length,
//! the key bytes, the nonce (`u64`), four `i64` Unix-millisecond times
//! (added, created, first expiry, absolute deadline) and a `u16` length
//! (0 for none) plus bytes of the key the session was rotated from.
//! Format 1 (key, added, absolute deadline) is still read.
//!
//! [`UserItem`] is what the item holds: the index, plus (format 3, written
//! only when there is something to say) whether `delete_user` has closed
//! it and which entries a login has evicted. Format 3: the version byte,
//! a flags byte (bit 0: closed), a `u16` count of evictions, each a `u16`
//! key length, the key bytes, the evicted entry's nonce and the evicting
//! creation's nonce (`u64`s), then the entries as in format 2.

use session_core::codec::{Reader, Writer};
use session_core::{StorageKey, StoreError, Timestamp};

const FORMAT_V1: u8 = 1;
const FORMAT_V2: u8 = 2;
const FORMAT_V3: u8 = 3;
const CLOSED: u8 = 1;

/// One session in a user's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The session's storage key.
    pub(crate) key: StorageKey,
    /// Identifies the creation that wrote this entry.
    pub(crate) nonce: u64,
    /// When the entry was written (before the session itself).
    pub(crate) added: Timestamp,
    /// The record's creation time (the eviction order).
    pub(crate) created_at: Timestamp,
    /// When the record as first written stops being live: a missing record
    /// past this instant can never become live.
    pub(crate) first_expiry: Timestamp,
    /// The session's absolute deadline: the entry is dead after it.
    pub(crate) absolute_deadline: Timestamp,
    /// The key this session is being rotated from, while the rotation may
    /// be in flight.
    pub(crate) replaces: Option<StorageKey>,
}

/// A user's index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Index {
    pub(crate) entries: Vec<Entry>,
}

impl Index {
    /// Moves the deadline of every entry for `key` to at least
    /// `absolute_deadline`, or adds `entry` if there is none; drops entries
    /// whose absolute deadline has passed.
    pub(crate) fn upsert(&mut self, entry: Entry, now: Timestamp) {
        self.entries.retain(|e| e.absolute_deadline > now);
        let mut found = false;
        for e in self.entries.iter_mut().filter(|e| e.key == entry.key) {
            e.absolute_deadline = e.absolute_deadline.max(entry.absolute_deadline);
            found = true;
        }
        if !found {
            self.entries.push(entry);
        }
    }

    /// The latest absolute deadline, which bounds the index item's life.
    pub(crate) fn last_deadline(&self) -> Option<Timestamp> {
        self.entries.iter().map(|e| e.absolute_deadline).max()
    }

    /// Serializes the index (format 2).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(1 + self.entries.len() * ENTRY_SIZE);
        w.u8(FORMAT_V2);
        for e in &self.entries {
            let k = e.key.as_str();
            let r = e.replaces.as_ref().map_or("", StorageKey::as_str);
            // Keys longer than u16::MAX are never produced by session-core;
            // truncating would corrupt, so such an entry is skipped instead.
            if k.len() > usize::from(u16::MAX) || r.len() > usize::from(u16::MAX) {
                continue;
            }
            let _ = w.str_u16(k).map(|w| {
                w.u64(e.nonce)
                    .timestamp(e.added)
                    .timestamp(e.created_at)
                    .timestamp(e.first_expiry)
                    .timestamp(e.absolute_deadline)
                    .str_u16(r)
            });
        }
        w.into_vec()
    }

    /// Parses what [`Index::encode`] wrote (or format 1).
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] for anything else; never panics.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader::new(bytes, "user index item");
        let version = r.u8()?;
        if version != FORMAT_V1 && version != FORMAT_V2 {
            return Err(r.corrupt("unknown format version"));
        }
        let mut entries = Vec::new();
        while r.remaining() > 0 {
            let key = StorageKey::from_stored(r.str_u16()?);
            let entry = if version == FORMAT_V1 {
                let added = r.timestamp()?;
                let deadline = r.timestamp()?;
                Entry {
                    key,
                    nonce: 0,
                    added,
                    created_at: added,
                    first_expiry: deadline,
                    absolute_deadline: deadline,
                    replaces: None,
                }
            } else {
                let nonce = r.u64()?;
                let added = r.timestamp()?;
                let created_at = r.timestamp()?;
                let first_expiry = r.timestamp()?;
                let absolute_deadline = r.timestamp()?;
                let replaces = r.str_u16()?;
                Entry {
                    key,
                    nonce,
                    added,
                    created_at,
                    first_expiry,
                    absolute_deadline,
                    replaces: (!replaces.is_empty()).then(|| StorageKey::from_stored(replaces)),
                }
            };
            entries.push(entry);
        }
        Ok(Self { entries })
    }
}

/// An entry a login evicted: the entry (key and nonce) and the login's
/// creation nonce. From the decision on, the session no longer counts nor
/// lists; the evicting login ends it, and its entry is pruned once it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Eviction {
    pub(crate) key: StorageKey,
    pub(crate) nonce: u64,
    pub(crate) by: u64,
}

/// The user index item: the index and the state of decisions on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UserItem {
    pub(crate) index: Index,
    /// `delete_user` decided to end every session listed: nothing listed
    /// counts or lists any more, and the next login starts a new index
    /// (once it has helped end them).
    pub(crate) closed: bool,
    /// Entries evicted by a login that may not have ended them yet.
    pub(crate) evicted: Vec<Eviction>,
}

impl UserItem {
    /// The nonce of the login that evicted `e`, if one did and its entry
    /// is still listed (a login that failed takes its entry back, and with
    /// it its evictions).
    pub(crate) fn evicted_by(&self, e: &Entry) -> Option<u64> {
        self.evicted
            .iter()
            .find(|v| v.key == e.key && v.nonce == e.nonce && self.listed(v))
            .map(|v| v.by)
    }

    /// Whether both the evicted entry and the evicting login's are listed.
    fn listed(&self, v: &Eviction) -> bool {
        let entries = &self.index.entries;
        entries.iter().any(|e| e.key == v.key && e.nonce == v.nonce)
            && entries.iter().any(|e| e.nonce == v.by)
    }

    /// The latest absolute deadline, which bounds the item's life.
    pub(crate) fn last_deadline(&self) -> Option<Timestamp> {
        self.index.last_deadline()
    }

    /// Serializes the item: format 2 when it is a plain index, else 3.
    /// Evictions of entries no longer listed are dropped.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let evicted: Vec<&Eviction> = self.evicted.iter().filter(|v| self.listed(v)).collect();
        let entries = self.index.encode();
        if !self.closed && evicted.is_empty() {
            return entries;
        }
        let mut w = Writer::with_capacity(entries.len() + 4 + evicted.len() * 84);
        w.u8(FORMAT_V3).u8(if self.closed { CLOSED } else { 0 });
        let evicted: Vec<&Eviction> = evicted
            .into_iter()
            .filter(|v| v.key.as_str().len() <= usize::from(u16::MAX))
            .take(usize::from(u16::MAX))
            .collect();
        w.u16(u16::try_from(evicted.len()).unwrap_or(u16::MAX));
        for v in evicted {
            let _ = w.str_u16(v.key.as_str()).map(|w| w.u64(v.nonce).u64(v.by));
        }
        w.bytes(&entries[1..]);
        w.into_vec()
    }

    /// Parses what [`UserItem::encode`] wrote (any format).
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] for anything else; never panics.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.first() != Some(&FORMAT_V3) {
            return Ok(Self {
                index: Index::decode(bytes)?,
                ..Self::default()
            });
        }
        let mut r = Reader::new(&bytes[1..], "user index item");
        let flags = r.u8()?;
        if flags & !CLOSED != 0 {
            return Err(r.corrupt("unknown flags"));
        }
        let count = r.u16()?;
        let mut evicted = Vec::with_capacity(usize::from(count).min(1024));
        for _ in 0..count {
            let key = StorageKey::from_stored(r.str_u16()?);
            let nonce = r.u64()?;
            let by = r.u64()?;
            evicted.push(Eviction { key, nonce, by });
        }
        let rest = r.rest();
        let mut entries = Vec::with_capacity(rest.len() + 1);
        entries.push(FORMAT_V2);
        entries.extend_from_slice(rest);
        Ok(Self {
            index: Index::decode(&entries)?,
            closed: flags & CLOSED != 0,
            evicted,
        })
    }
}

/// Bytes an entry of a 64-character key takes, roughly.
const ENTRY_SIZE: usize = 2 + 64 + 8 + 4 * 8 + 2;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(k: &str, added: i64, dl: i64) -> Entry {
        Entry {
            key: StorageKey::from_stored(k),
            nonce: 9,
            added: Timestamp::from_unix_millis(added),
            created_at: Timestamp::from_unix_millis(added),
            first_expiry: Timestamp::from_unix_millis(dl),
            absolute_deadline: Timestamp::from_unix_millis(dl),
            replaces: None,
        }
    }

    #[test]
    fn round_trips() {
        let mut rotated = entry("ü x", -5, i64::MAX);
        rotated.nonce = u64::MAX;
        rotated.created_at = Timestamp::from_unix_millis(-7);
        rotated.first_expiry = Timestamp::from_unix_millis(3);
        rotated.replaces = Some(StorageKey::from_stored(&"b".repeat(64)));
        let idx = Index {
            entries: vec![entry(&"a".repeat(64), 1, 2), rotated],
        };
        assert_eq!(Index::decode(&idx.encode()).unwrap(), idx);
        assert_eq!(Index::decode(&[1]).unwrap(), Index::default());
        assert_eq!(Index::decode(&[2]).unwrap(), Index::default());
    }

    #[test]
    fn reads_format_1() {
        let mut v1 = vec![1, 0, 3];
        v1.extend_from_slice(b"abc");
        v1.extend_from_slice(&5i64.to_be_bytes());
        v1.extend_from_slice(&50i64.to_be_bytes());
        let idx = Index::decode(&v1).unwrap();
        let mut want = entry("abc", 5, 50);
        want.nonce = 0;
        assert_eq!(idx.entries, vec![want]);
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
        let mut bad_key = enc.clone();
        bad_key[3] = 0xff;
        assert!(Index::decode(&bad_key).is_err());
    }

    #[test]
    fn user_items_round_trip_and_stay_format_2_when_plain() {
        let index = Index {
            entries: vec![entry(&"a".repeat(64), 1, 2), entry("b", 3, 4)],
        };
        let plain = UserItem {
            index: index.clone(),
            ..UserItem::default()
        };
        assert_eq!(plain.encode(), index.encode());
        assert_eq!(UserItem::decode(&index.encode()).unwrap(), plain);
        let eviction = Eviction {
            key: StorageKey::from_stored("b"),
            nonce: 9,
            by: 9,
        };
        let stray = Eviction {
            key: StorageKey::from_stored("gone"),
            nonce: 9,
            by: 1,
        };
        let item = UserItem {
            index,
            closed: true,
            evicted: vec![eviction.clone(), stray],
        };
        let enc = item.encode();
        assert_eq!(enc[0], FORMAT_V3);
        let back = UserItem::decode(&enc).unwrap();
        assert!(back.closed);
        assert_eq!(back.evicted, vec![eviction]);
        assert_eq!(back.index, item.index);
        assert_eq!(back.evicted_by(&item.index.entries[1]), Some(9));
        assert_eq!(back.evicted_by(&item.index.entries[0]), None);
        // Whole prefixes: after the evictions (no entries), after one entry.
        let after_evictions = 4 + 2 + 1 + 16;
        let after_one_entry = after_evictions + 2 + 64 + 8 + 32 + 2;
        for n in 0..enc.len() {
            if n == after_evictions || n == after_one_entry {
                continue;
            }
            assert!(UserItem::decode(&enc[..n]).is_err(), "len {n}");
        }
        assert!(UserItem::decode(&[3, 2, 0, 0]).is_err());
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
        let mut k = entry("k", 0, 200);
        k.absolute_deadline = Timestamp::from_unix_millis(300);
        assert_eq!(idx.entries, vec![k, entry("n", 70, 150)]);
        assert_eq!(idx.last_deadline(), Some(Timestamp::from_unix_millis(300)));
    }
}
