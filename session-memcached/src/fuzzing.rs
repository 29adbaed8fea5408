//! Fuzzing entry point (not part of the public API): [`codec`], which the
//! `cargo fuzz` target `memcached_codec` and the corpus replay test below
//! both call, so they cannot drift apart.
#![doc(hidden)]
#![allow(missing_docs)]

use session_core::{SessionRecord, StoreError, Timestamp};

use crate::index::Index;
use crate::tombstone::{Marker, Stored};

/// An item read from Memcached, through every decoder of the crate: the
/// per-user index item (`Index::decode`), the session-key marker
/// (`Marker::decode`) and the session item (`Stored::decode`). None may
/// panic; an error is `Corrupt`; what decodes re-encodes to the same value
/// (byte for byte where the format has a single encoding).
pub fn codec(data: &[u8]) {
    match Index::decode(data) {
        Ok(idx) => {
            let enc = idx.encode();
            assert_eq!(
                Index::decode(&enc).ok().as_ref(),
                Some(&idx),
                "index round trip"
            );
            if data[0] == 2 {
                assert_eq!(enc, data, "format 2 index re-encoded differently");
            }
            let _ = idx.last_deadline();
            let mut pruned = idx.clone();
            if let Some(e) = idx.entries.first() {
                pruned.upsert(e.clone(), Timestamp::from_unix_millis(0));
            }
        }
        Err(e) => assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}"),
    }
    let marker = Marker::decode(data);
    match &marker {
        Ok(m) => assert_eq!(m.encode(), data, "marker re-encoded differently"),
        Err(e) => assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}"),
    }
    match Stored::decode(data) {
        Ok(Stored::Marker(m)) => assert_eq!(marker.ok(), Some(m), "marker decoders disagree"),
        Ok(Stored::Record(r)) => {
            assert_eq!(SessionRecord::decode(data).ok().as_ref(), Some(&r));
            let enc = r.encode();
            assert_eq!(Stored::decode(&enc).ok(), Some(Stored::Record(r.clone())));
            let _ = Stored::Record(r).live(Timestamp::from_unix_millis(0));
        }
        Err(e) => assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}"),
    }
}

/// Seed inputs for [`codec`]: index items (both formats), markers and
/// records as the crate writes them, and truncations.
#[must_use]
pub fn seeds() -> Vec<Vec<u8>> {
    use crate::index::Entry;
    use session_core::StorageKey;
    let at = Timestamp::from_unix_millis;
    let entry = |k: &str, nonce: u64, replaces: Option<&str>| Entry {
        key: StorageKey::from_stored(k),
        nonce,
        added: at(1_700_000_000_000),
        created_at: at(1_700_000_000_001),
        first_expiry: at(1_700_000_001_800),
        absolute_deadline: at(1_700_000_086_400),
        replaces: replaces.map(StorageKey::from_stored),
    };
    let index = Index {
        entries: vec![
            entry(&"a".repeat(64), 7, None),
            entry(&"b".repeat(64), u64::MAX, Some(&"c".repeat(64))),
        ],
    }
    .encode();
    let mut v1 = vec![1, 0, 3];
    v1.extend_from_slice(b"abc");
    v1.extend_from_slice(&5i64.to_be_bytes());
    v1.extend_from_slice(&50i64.to_be_bytes());
    let moved = Marker::Moved {
        to: StorageKey::from_stored(&"d".repeat(64)),
        nonce: 0xdead_beef,
        until: at(1_700_000_086_400),
        to_expires: at(1_700_000_001_800),
    }
    .encode();
    let ended = Marker::Ended {
        nonce: 9,
        until: at(1_700_000_001_800),
    }
    .encode();
    let mut out = vec![
        index.clone(),
        index[..index.len() - 5].to_vec(),
        vec![2],
        v1,
        moved.clone(),
        moved[..moved.len() - 1].to_vec(),
        ended,
    ];
    out.extend(
        session_core::fuzzing::sample_records()
            .iter()
            .map(SessionRecord::encode),
    );
    out
}

#[cfg(test)]
mod tests {
    /// The corpus replay: every kept input of `fuzz/corpus/memcached_codec/`.
    #[test]
    fn memcached_codec_corpus() {
        session_core::fuzzing::replay_corpus(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../fuzz/corpus/memcached_codec"
            ),
            super::codec,
        );
    }
}
