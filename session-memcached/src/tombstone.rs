//! Markers: what a session key holds when it holds no session.
//!
//! A session item holds either an encoded [`SessionRecord`] or a marker,
//! told apart by the first byte: records start with `session-core`'s
//! format byte (1), markers with [`MARKER_FORMAT`]. This module owns that
//! byte and the marker layout.
//!
//! - [`Marker::Moved`] (the "tombstone" of a rotation): the session moved
//!   to `to`. `load` sees no session, `update`/`touch` see `NotFound`,
//!   another rotation from it is `NotFound`, and `delete` follows it to
//!   `to` until `until` (the old record's own deadline), when the item
//!   expires. `nonce` identifies the creation of `to`, so that a `delete`
//!   that gets there before the record does can cancel exactly that
//!   creation; `to_expires` is when the record written to `to` stops
//!   being live.
//! - [`Marker::Ended`]: a creation that was cancelled before its record
//!   was written (by `delete_user`, an eviction or a `delete` following a
//!   move). The creation whose `nonce` it carries finds it in place of its
//!   `add` and knows its session has already ended; anyone else treats the
//!   key as free. It expires when that record would have (`until`).
//!   Ending a live record (`delete`, `delete_user`, an eviction) also
//!   leaves an `Ended` marker (with a nonce of its own) rather than
//!   deleting the item, so that an index entry whose record was ended
//!   never looks like a creation that has not written yet.
//! - [`Marker::Reserved`]: a creation that will write here once its other
//!   steps are done (a rotation moving the old key, a login ending the
//!   sessions it evicts) holds the key with this marker, so that no other
//!   creation takes the key after those steps have started. Others wait
//!   for it to become a record (or be released or cancelled); loads see
//!   nothing. A cancellation replaces it with `Ended` of the same nonce.
//!
//! Layout (big-endian): `MARKER_FORMAT`, a kind byte (1 moved, 2 ended,
//! 3 reserved),
//! the nonce (`u64`), `until` (`i64` Unix ms), then for `Moved` only
//! `to_expires` (`i64` Unix ms), a `u16` key length and the key bytes.

use session_core::{SessionRecord, StorageKey, StoreError, Timestamp};

/// First byte of every marker item. Session records start with 1.
pub(crate) const MARKER_FORMAT: u8 = 0xA7;

const KIND_MOVED: u8 = 1;
const KIND_ENDED: u8 = 2;
const KIND_RESERVED: u8 = 3;

/// A marker item's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Marker {
    /// The session moved to `to` (rotation).
    Moved {
        /// Where the session went.
        to: StorageKey,
        /// Identifies the creation of the record under `to`.
        nonce: u64,
        /// The old record's deadline: `delete` follows the move until then.
        until: Timestamp,
        /// When the record written under `to` stops being live.
        to_expires: Timestamp,
    },
    /// The creation with this `nonce` was cancelled before it wrote.
    Ended {
        /// The cancelled creation.
        nonce: u64,
        /// When the cancelled record would have stopped being live.
        until: Timestamp,
    },
    /// The creation with this `nonce` holds the key until it writes.
    Reserved {
        /// The creation holding the key.
        nonce: u64,
        /// When its record would stop being live.
        until: Timestamp,
    },
}

impl Marker {
    /// Serializes the marker.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 8 + 8 + 8 + 2 + 64);
        out.push(MARKER_FORMAT);
        match self {
            Self::Moved {
                to,
                nonce,
                until,
                to_expires,
            } => {
                out.push(KIND_MOVED);
                out.extend_from_slice(&nonce.to_be_bytes());
                out.extend_from_slice(&until.as_unix_millis().to_be_bytes());
                out.extend_from_slice(&to_expires.as_unix_millis().to_be_bytes());
                let k = to.as_str().as_bytes();
                // Storage keys are far shorter than u16::MAX; a longer one
                // would not fit a Memcached item key either.
                let len = u16::try_from(k.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&k[..usize::from(len)]);
            }
            Self::Ended { nonce, until } | Self::Reserved { nonce, until } => {
                out.push(if matches!(self, Self::Ended { .. }) {
                    KIND_ENDED
                } else {
                    KIND_RESERVED
                });
                out.extend_from_slice(&nonce.to_be_bytes());
                out.extend_from_slice(&until.as_unix_millis().to_be_bytes());
            }
        }
        out
    }

    /// Parses what [`Marker::encode`] wrote.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] for anything else; never panics.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |why: &str| StoreError::Corrupt(format!("session key marker: {why}"));
        let (&format, rest) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
        if format != MARKER_FORMAT {
            return Err(corrupt("unknown format"));
        }
        let (&kind, rest) = rest.split_first().ok_or_else(|| corrupt("truncated"))?;
        let (nonce, rest) = take_u64(rest).ok_or_else(|| corrupt("truncated nonce"))?;
        let (until, rest) = take_u64(rest).ok_or_else(|| corrupt("truncated deadline"))?;
        let until = Timestamp::from_unix_millis(until as i64);
        match kind {
            KIND_ENDED if rest.is_empty() => Ok(Self::Ended { nonce, until }),
            KIND_RESERVED if rest.is_empty() => Ok(Self::Reserved { nonce, until }),
            KIND_MOVED => {
                let (to_expires, rest) =
                    take_u64(rest).ok_or_else(|| corrupt("truncated deadline"))?;
                let (len, rest) = rest
                    .split_at_checked(2)
                    .ok_or_else(|| corrupt("truncated key length"))?;
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                if rest.len() != len {
                    return Err(corrupt("bad key length"));
                }
                let key = std::str::from_utf8(rest).map_err(|_| corrupt("key is not UTF-8"))?;
                Ok(Self::Moved {
                    to: StorageKey::from_stored(key),
                    nonce,
                    until,
                    to_expires: Timestamp::from_unix_millis(to_expires as i64),
                })
            }
            _ => Err(corrupt("unknown kind")),
        }
    }
}

fn take_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = bytes.split_at_checked(8)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(head);
    Some((u64::from_be_bytes(b), rest))
}

/// What a session item holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stored {
    /// A session record (live or not: check its deadlines).
    Record(SessionRecord),
    /// A marker: never a live session.
    Marker(Marker),
}

impl Stored {
    /// Decodes a session item's value.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] for a value that is neither.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.first() == Some(&MARKER_FORMAT) {
            Marker::decode(bytes).map(Self::Marker)
        } else {
            SessionRecord::decode(bytes).map(Self::Record)
        }
    }

    /// The nonce of the creation holding the key, if this is a
    /// reservation that has not run out at `now`.
    pub(crate) fn reserved_by(&self, now: Timestamp) -> Option<u64> {
        match self {
            Self::Marker(Marker::Reserved { nonce, until }) if now < *until => Some(*nonce),
            _ => None,
        }
    }

    /// The record, if this is one that is live at `now`.
    pub(crate) fn live(self, now: Timestamp) -> Option<SessionRecord> {
        match self {
            Self::Record(r) if !r.is_expired_at(now) => Some(r),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    fn moved() -> Marker {
        Marker::Moved {
            to: StorageKey::from_stored(&"ab".repeat(32)),
            nonce: 0xdead_beef_0102_0304,
            until: at(1_800_000_000_123),
            to_expires: at(-5),
        }
    }

    #[test]
    fn markers_round_trip() {
        let ended = Marker::Ended {
            nonce: 7,
            until: at(42),
        };
        let reserved = Marker::Reserved {
            nonce: 8,
            until: at(43),
        };
        for m in [moved(), ended, reserved] {
            let enc = m.encode();
            assert_eq!(enc[0], MARKER_FORMAT);
            assert_eq!(Marker::decode(&enc).unwrap(), m);
            assert_eq!(Stored::decode(&enc).unwrap(), Stored::Marker(m.clone()));
        }
    }

    #[test]
    fn decode_rejects_every_truncation_and_extension_without_panicking() {
        for m in [
            moved(),
            Marker::Ended {
                nonce: 1,
                until: at(2),
            },
            Marker::Reserved {
                nonce: 1,
                until: at(2),
            },
        ] {
            let enc = m.encode();
            for n in 0..enc.len() {
                assert!(Marker::decode(&enc[..n]).is_err(), "len {n}");
            }
            let mut long = enc.clone();
            long.push(0);
            assert!(Marker::decode(&long).is_err());
        }
        let mut bad = moved().encode();
        bad[1] = 9;
        assert!(Marker::decode(&bad).is_err());
        assert!(Marker::decode(&[1, 2, 3]).is_err());
    }

    #[test]
    fn records_and_markers_are_told_apart() {
        let record = SessionRecord::new(
            Bytes::from_static(&[MARKER_FORMAT, 0]),
            None,
            at(1),
            at(100),
            at(200),
        )
        .with_last_access(at(1))
        .with_version(3);
        let stored = Stored::decode(&record.encode()).unwrap();
        assert_eq!(stored, Stored::Record(record.clone()));
        assert_eq!(stored.clone().live(at(99)), Some(record));
        assert_eq!(stored.live(at(100)), None);
        assert_eq!(Stored::Marker(moved()).live(at(0)), None);
        assert!(Stored::decode(b"\xffgarbage").is_err());
    }
}
