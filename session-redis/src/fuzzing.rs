//! Fuzzing entry point (not part of the public API): [`codec`], which the
//! `cargo fuzz` target `redis_codec` and the corpus replay test below both
//! call, so they cannot drift apart.
#![doc(hidden)]
#![allow(missing_docs)]

use session_core::{SessionRecord, StoreError};

use session_core::codec::layout as l;

use crate::codec::{self, Stored, HEADER_LEN};

/// Both deadlines, which a rotation copies into its moved marker.
const DEADLINES: std::ops::Range<usize> = l::IDLE_DEADLINE..l::USER_LEN;

/// A value read from a session key: `codec::classify` (on the value and
/// on the header prefix scripts read), `codec::is_marker` and
/// `codec::decode` must agree, never panic, and what decodes must
/// re-encode to the same record or marker.
pub fn codec(data: &[u8]) {
    let stored = codec::classify(data);
    let _ = codec::classify(&data[..data.len().min(HEADER_LEN)]);
    assert_eq!(
        codec::is_marker(data),
        matches!(stored, Stored::Moved(_) | Stored::Ended | Stored::Pending),
        "is_marker and classify disagree"
    );
    match codec::decode(data.to_vec()) {
        Ok(r) => {
            assert_eq!(
                stored,
                Stored::Record(r.clone()),
                "decode and classify disagree"
            );
            let enc = r.encode();
            assert_eq!(codec::decode(enc.clone()).ok().as_ref(), Some(&r));
            assert_eq!(SessionRecord::decode(&enc).ok().as_ref(), Some(&r));
            if data[l::USER_FLAG] == l::HAS_USER {
                let n = r.user_id.as_deref().map_or(0, str::len);
                let mut seg = vec![data[l::USER_FLAG]];
                seg.extend_from_slice(&data[l::USER_LEN..HEADER_LEN + n]);
                assert_eq!(codec::user_segment(r.user_id.as_deref()), seg);
            }
        }
        Err(e) => {
            assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
            assert!(
                !matches!(stored, Stored::Record(_)),
                "classify read a record decode refused"
            );
        }
    }
    if let Stored::Moved(m) = &stored {
        if let Some(to) = &m.to {
            let mut again = codec::moved_marker(to, m.created_at, m.moved_at, None);
            again[DEADLINES].copy_from_slice(&data[DEADLINES]);
            assert_eq!(codec::classify(&again), stored, "moved marker round trip");
        }
    }
}

/// Seed inputs for [`codec`]: records and the three markers as the crate
/// writes them, and truncations.
#[must_use]
pub fn seeds() -> Vec<Vec<u8>> {
    use session_core::{StorageKey, Timestamp};
    let mut out: Vec<Vec<u8>> = session_core::fuzzing::sample_records()
        .iter()
        .map(SessionRecord::encode)
        .collect();
    let records = out.clone();
    let mut moved = codec::moved_marker(
        &StorageKey::from_stored(&"ab".repeat(32)),
        Timestamp::from_unix_millis(1_700_000_000_000),
        Timestamp::from_unix_millis(1_700_000_000_500),
        Some("user"),
    );
    moved[DEADLINES].copy_from_slice(&records[2][DEADLINES]);
    out.push(moved.clone());
    out.push(moved[..HEADER_LEN + 3].to_vec());
    out.push(codec::ended_marker().to_vec());
    out.push(codec::pending_marker().to_vec());
    out.push(records[2][..HEADER_LEN - 1].to_vec());
    out.push(records[2][..HEADER_LEN + 2].to_vec());
    let mut touched = records[2].clone();
    touched[l::LAST_ACCESS..l::ABSOLUTE_DEADLINE].copy_from_slice(&codec::touch_bytes(
        Timestamp::from_unix_millis(i64::MAX),
        Timestamp::from_unix_millis(-1),
    ));
    out.push(touched);
    out
}

#[cfg(test)]
mod tests {
    /// The corpus replay: every kept input of `fuzz/corpus/redis_codec/`.
    #[test]
    fn redis_codec_corpus() {
        session_core::fuzzing::replay_corpus(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/redis_codec"),
            super::codec,
        );
    }
}
