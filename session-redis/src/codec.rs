//! Record layout: each session is one Redis string holding
//! [`SessionRecord::encode`]'s bytes, so a load is a single `GET`.
//!
//! ```text
//! offset  size  field
//!      0     1  format (1)
//!      1     1  has user (0 or 1)
//!      2     8  version, u64 big-endian
//!     10     8  created_at, i64 big-endian unix ms
//!     18     8  last_access            (touch rewrites 18..34 in place)
//!     26     8  idle_deadline
//!     34     8  absolute_deadline
//!     42     4  user id length, u32 big-endian
//!     46     n  user id (UTF-8)
//!   46+n     …  data
//! ```
//!
//! The Lua scripts read only the fixed header (and the user id where they
//! must compare it) with `GETRANGE`, never the data.

use bytes::Bytes;
use session_core::{SessionRecord, StoreError, StoreResult, Timestamp};

/// Length of the fixed header.
pub(crate) const HEADER_LEN: usize = 46;
/// Offset of `last_access`, followed by `idle_deadline`.
#[cfg(test)]
pub(crate) const TOUCH_OFFSET: usize = 18;

/// Decodes a stored value without copying the data: the returned record's
/// `data` is a slice of `bytes`.
pub(crate) fn decode(bytes: Vec<u8>) -> StoreResult<SessionRecord> {
    let split = header_and_user_len(&bytes)
        .filter(|&n| n <= bytes.len())
        .ok_or_else(|| StoreError::Corrupt("Redis session value: truncated header".into()))?;
    let mut record = SessionRecord::decode(&bytes[..split])?;
    record.data = Bytes::from(bytes).slice(split..);
    Ok(record)
}

/// Length of header plus user id, as the header says; `None` if the header
/// is incomplete.
fn header_and_user_len(bytes: &[u8]) -> Option<usize> {
    let len: [u8; 4] = bytes.get(42..HEADER_LEN)?.try_into().ok()?;
    HEADER_LEN.checked_add(usize::try_from(u32::from_be_bytes(len)).ok()?)
}

/// The bytes scripts compare to check a record's user: the has-user flag,
/// the 4-byte length and the user id, exactly as [`SessionRecord::encode`]
/// writes them.
pub(crate) fn user_segment(user_id: Option<&str>) -> Vec<u8> {
    let user = user_id.unwrap_or("").as_bytes();
    let mut out = Vec::with_capacity(5 + user.len());
    out.push(u8::from(user_id.is_some()));
    out.extend_from_slice(&u32::try_from(user.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(user);
    out
}

/// The 16 bytes touch writes at offset 18: last access then idle deadline.
pub(crate) fn touch_bytes(last_access: Timestamp, idle_deadline: Timestamp) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&last_access.as_unix_millis().to_be_bytes());
    out[8..].copy_from_slice(&idle_deadline.as_unix_millis().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(user: Option<&str>, data: &'static [u8]) -> SessionRecord {
        SessionRecord {
            data: Bytes::from_static(data),
            user_id: user.map(str::to_owned),
            created_at: Timestamp::from_unix_millis(1),
            last_access: Timestamp::from_unix_millis(2),
            idle_deadline: Timestamp::from_unix_millis(3),
            absolute_deadline: Timestamp::from_unix_millis(4),
            version: 9,
        }
    }

    #[test]
    fn decode_round_trips_without_copying_semantics_changes() {
        for r in [
            sample(None, b""),
            sample(Some(""), b"x"),
            sample(Some("Zoë {x}"), b"\x00\xffdata"),
        ] {
            assert_eq!(decode(r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn decode_rejects_truncations() {
        let enc = sample(Some("alice"), b"data").encode();
        for n in 0..HEADER_LEN + 5 {
            let err = decode(enc[..n].to_vec()).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "len {n}: {err:?}");
        }
        assert!(
            decode(b"garbage that is long enough to hold a header but is not one".to_vec())
                .is_err()
        );
    }

    #[test]
    fn user_segment_matches_the_encoding() {
        for user in [None, Some(""), Some("Zoë")] {
            let enc = sample(user, b"d").encode();
            let seg = user_segment(user);
            let mut stored = vec![enc[1]];
            stored.extend_from_slice(&enc[42..HEADER_LEN + user.map_or(0, str::len)]);
            assert_eq!(stored, seg);
        }
    }

    #[test]
    fn touch_bytes_sit_where_the_encoding_puts_them() {
        let mut r = sample(Some("u"), b"d");
        let mut enc = r.encode();
        let (a, i) = (
            Timestamp::from_unix_millis(77),
            Timestamp::from_unix_millis(-5),
        );
        enc[TOUCH_OFFSET..TOUCH_OFFSET + 16].copy_from_slice(&touch_bytes(a, i));
        r.last_access = a;
        r.idle_deadline = i;
        assert_eq!(decode(enc).unwrap(), r);
    }
}
