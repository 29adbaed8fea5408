//! Record layout: each session is one Redis string holding
//! [`SessionRecord::encode`]'s bytes, so a load is a single `GET`.
//!
//! ```text
//! offset  size  field
//!      0     1  format (1, or 5 with a label)
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
//! A record with a label (format 5, see
//! [`session_core::codec::layout`]) has the label's length (u32) and the
//! label between the user id and the data. A record without one is
//! written in format 1, byte for byte as before labels existed, so values
//! stored by earlier versions load unchanged (and earlier versions still
//! read every unlabelled record; they take a labelled one for unreadable
//! bytes, that is, for no session).
//!
//! The Lua scripts read only the fixed header (and the user id where they
//! must compare it) with `GETRANGE`, never the data; the listing script
//! reads the label too. A script takes a value for a record when its format
//! byte is 1 or 5.
//!
//! # Markers
//!
//! Two more values can sit under a session key. They share the fixed header
//! (so every script reads them with the same `GETRANGE`) but carry another
//! format byte, so no script ever takes them for a live record (the scripts'
//! `live()` requires format 1) and `load` returns `None` for them.
//!
//! A **moved marker** (format 2, the "tombstone") replaces a record that a
//! rotation moved to another key. Its TTL is the old record's remaining
//! life, and `delete` of the old key follows it to the new one:
//!
//! ```text
//! offset  size  field
//!      0     1  format (2)
//!      1     1  0
//!      2     8  0
//!     10     8  created_at of the record it moved to
//!     18     8  when the move happened (unix ms)
//!     26     8  the old record's idle_deadline      (copied by the script
//!     34     8  the old record's absolute_deadline   from the old header)
//!     42     4  length n of the new storage key, u32 big-endian
//!     46     n  the new storage key
//!   46+n     …  the user segment of the record it moved (byte 1, then
//!               the user id's length, u32 big-endian, then the id)
//! ```
//!
//! `delete_user` follows a marker only when that segment is its user's: an
//! index entry another user left under the key (a create refused because
//! the key was taken) leads nowhere. Markers written before the segment was
//! added (no bytes after the key) are followed as before.
//!
//! An **ended marker** (format 3, header only, every field 0) is written on
//! a Redis Cluster only, by a `delete` that followed a moved marker to a key
//! holding a pending marker (the rotation is still in flight, its record
//! not written yet): the rotation's last write then finds it and fails, so
//! the session it was moving stays ended. A key holding nothing gets no
//! ended marker: the session already ended there, and the key stays free.
//! It expires by itself (see
//! [`CLUSTER_INDEX_GRACE`](crate::CLUSTER_INDEX_GRACE)).
//!
//! A **pending marker** (format 4, header only, every field 0) is written on
//! a Redis Cluster only, under the new key of a rotation or of a login under
//! a `RejectNew` limit (before its index entry), and overwritten by the
//! record: it tells racing logins that count the user's sessions that this
//! one is being written (a missing record is then really not coming), and
//! a `delete` following the rotation's moved marker that the record is
//! still to come. It expires by itself after
//! [`CLUSTER_INDEX_GRACE`](crate::CLUSTER_INDEX_GRACE).

use bytes::Bytes;
use session_core::codec::layout;
use session_core::{SessionRecord, StorageKey, StoreError, StoreResult, Timestamp};

/// Length of the fixed header (core's record layout).
pub(crate) const HEADER_LEN: usize = layout::HEADER_LEN;
/// Format byte of a session record without a label
/// ([`SessionRecord::encode`]).
pub(crate) const FORMAT_RECORD: u8 = layout::FORMAT_RECORD;
/// Format byte of a session record with a label.
pub(crate) const FORMAT_RECORD_LABELLED: u8 = layout::FORMAT_RECORD_LABELLED;
/// Format byte of a moved marker.
pub(crate) const FORMAT_MOVED: u8 = 2;
/// Format byte of an ended marker.
pub(crate) const FORMAT_ENDED: u8 = 3;
/// Format byte of a pending marker.
pub(crate) const FORMAT_PENDING: u8 = 4;
/// Offset of the two deadlines, which a script copies from the old record
/// into a moved marker.
#[cfg(test)]
pub(crate) const DEADLINES_OFFSET: usize = layout::IDLE_DEADLINE;

/// What a session key holds, judged from (a prefix of) its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Nothing.
    Missing,
    /// A session record (only its header and user id when given a prefix).
    Record(SessionRecord),
    /// A moved marker.
    Moved(Moved),
    /// An ended marker.
    Ended,
    /// A pending marker.
    Pending,
    /// Bytes that are none of these.
    Unreadable,
}

/// The content of a moved marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Moved {
    /// Where the record went; `None` if the bytes read were cut short of it.
    pub(crate) to: Option<StorageKey>,
    /// Creation time of the record it moved to.
    pub(crate) created_at: Timestamp,
    /// When the move happened.
    pub(crate) moved_at: Timestamp,
    /// The old record's deadline: the marker matters until then.
    pub(crate) until: Timestamp,
}

fn i64_at(bytes: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(b)
}

/// Classifies a value (or a prefix of one at least [`HEADER_LEN`] bytes
/// long where it is that long).
pub(crate) fn classify(bytes: &[u8]) -> Stored {
    if bytes.is_empty() {
        return Stored::Missing;
    }
    if bytes.len() < HEADER_LEN {
        return Stored::Unreadable;
    }
    match bytes[0] {
        FORMAT_MOVED => {
            let to = header_and_user_len(bytes)
                .and_then(|end| bytes.get(HEADER_LEN..end))
                .and_then(|k| std::str::from_utf8(k).ok())
                .map(StorageKey::from_stored);
            let (idle, absolute) = (
                i64_at(bytes, layout::IDLE_DEADLINE),
                i64_at(bytes, layout::ABSOLUTE_DEADLINE),
            );
            Stored::Moved(Moved {
                to,
                created_at: Timestamp::from_unix_millis(i64_at(bytes, layout::CREATED_AT)),
                moved_at: Timestamp::from_unix_millis(i64_at(bytes, layout::LAST_ACCESS)),
                until: Timestamp::from_unix_millis(idle.min(absolute)),
            })
        }
        FORMAT_ENDED => Stored::Ended,
        FORMAT_PENDING => Stored::Pending,
        FORMAT_RECORD_LABELLED if head_len(bytes).is_none_or(|n| n > bytes.len()) => {
            // A prefix cut within the label: the header and user id, which
            // is all a prefix read wants, without the label.
            match header_and_user_len(bytes).filter(|&n| n <= bytes.len()) {
                Some(n) => {
                    let mut unlabelled = bytes[..n].to_vec();
                    unlabelled[layout::FORMAT] = FORMAT_RECORD;
                    SessionRecord::decode(&unlabelled).map_or(Stored::Unreadable, Stored::Record)
                }
                None => Stored::Unreadable,
            }
        }
        _ => SessionRecord::decode(bytes).map_or(Stored::Unreadable, Stored::Record),
    }
}

/// The part of a labelled record's label that `prefix` (a prefix of a
/// stored value, read at least through the label's length) lacks, as
/// offsets into the value; `None` when there is nothing more to read (not
/// a labelled record, the label complete, or the prefix too short to
/// tell).
pub(crate) fn missing_label(prefix: &[u8]) -> Option<std::ops::Range<usize>> {
    if prefix.first() != Some(&FORMAT_RECORD_LABELLED) {
        return None;
    }
    let end = head_len(prefix)?;
    (end > prefix.len()).then_some(prefix.len()..end)
}

/// Whether a stored value is one of the markers (which `load` treats as
/// absent).
pub(crate) fn is_marker(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && matches!(bytes[0], FORMAT_MOVED | FORMAT_ENDED | FORMAT_PENDING)
}

/// A moved marker pointing at `to`, for a record of `user` created at
/// `created_at`, moved at `moved_at`. Its deadlines are zero: the script
/// that writes it copies the old record's deadlines into
/// `DEADLINES_OFFSET..DEADLINES_OFFSET + 16`.
pub(crate) fn moved_marker(
    to: &StorageKey,
    created_at: Timestamp,
    moved_at: Timestamp,
    user: Option<&str>,
) -> Vec<u8> {
    let to = to.as_str().as_bytes();
    let owner = user_segment(user);
    let mut out = Vec::with_capacity(HEADER_LEN + to.len() + owner.len());
    out.push(FORMAT_MOVED);
    out.push(0);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&created_at.as_unix_millis().to_be_bytes());
    out.extend_from_slice(&moved_at.as_unix_millis().to_be_bytes());
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&u32::try_from(to.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(to);
    out.extend_from_slice(&owner);
    out
}

/// Whether `bytes` (a moved marker, or a prefix of one that reaches past
/// its user segment) moved a session of `user`. A marker written before
/// the segment was added (nothing after the key) counts as the user's when
/// it moved a logged-in session.
pub(crate) fn moved_session_of(bytes: &[u8], user: &str) -> bool {
    if bytes.len() < HEADER_LEN
        || bytes[0] != FORMAT_MOVED
        || bytes[layout::USER_FLAG] != layout::HAS_USER
    {
        return false;
    }
    match header_and_user_len(bytes).and_then(|end| bytes.get(end..)) {
        Some([]) => true,
        Some(owner) => owner == user_segment(Some(user)),
        None => false,
    }
}

/// How many bytes of a value [`moved_session_of`] needs for a user id of
/// `user_len` bytes under storage keys of up to [`MAX_STORAGE_KEY_LEN`].
pub(crate) fn owner_read_len(user_len: usize) -> usize {
    HEADER_LEN + MAX_STORAGE_KEY_LEN + 5 + user_len
}

/// The longest storage key a marker is read for (a derived key is 64
/// bytes; room is left for longer ones).
pub(crate) const MAX_STORAGE_KEY_LEN: usize = 128;

/// The ended marker.
pub(crate) fn ended_marker() -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0] = FORMAT_ENDED;
    out
}

/// The pending marker.
pub(crate) fn pending_marker() -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0] = FORMAT_PENDING;
    out
}

/// Offset of `last_access`, followed by `idle_deadline` (what a touch
/// rewrites).
pub(crate) const TOUCH_OFFSET: usize = layout::LAST_ACCESS;

/// Decodes a stored value without copying the data: the returned record's
/// `data` is a slice of `bytes`.
pub(crate) fn decode(bytes: impl Into<Bytes>) -> StoreResult<SessionRecord> {
    let bytes: Bytes = bytes.into();
    let split = head_len(&bytes)
        .filter(|&n| n <= bytes.len())
        .ok_or_else(|| StoreError::Corrupt("Redis session value: truncated header".into()))?;
    let mut record = SessionRecord::decode(&bytes[..split])?;
    // The data shares the buffer (a cached one too): no copy.
    record.data = bytes.slice(split..);
    Ok(record)
}

/// Length of header plus user id, as the header says; `None` if the header
/// is incomplete.
fn header_and_user_len(bytes: &[u8]) -> Option<usize> {
    let len: [u8; 4] = bytes.get(layout::USER_LEN..HEADER_LEN)?.try_into().ok()?;
    HEADER_LEN.checked_add(usize::try_from(u32::from_be_bytes(len)).ok()?)
}

/// Length of everything before a record's data: header, user id and, in a
/// labelled record, the label's length and the label. `None` if the
/// bytes end before the lengths it needs.
fn head_len(bytes: &[u8]) -> Option<usize> {
    let user_end = header_and_user_len(bytes)?;
    if bytes.first() != Some(&FORMAT_RECORD_LABELLED) {
        return Some(user_end);
    }
    let len_end = user_end.checked_add(layout::LABEL_LEN_SIZE)?;
    let len: [u8; 4] = bytes.get(user_end..len_end)?.try_into().ok()?;
    len_end.checked_add(usize::try_from(u32::from_be_bytes(len)).ok()?)
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

/// The 16 bytes touch writes at [`layout::LAST_ACCESS`]: last access then
/// idle deadline (the two fields are adjacent in the layout).
pub(crate) fn touch_bytes(last_access: Timestamp, idle_deadline: Timestamp) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&last_access.as_unix_millis().to_be_bytes());
    out[8..].copy_from_slice(&idle_deadline.as_unix_millis().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_marker_layout() {
        let to = StorageKey::from_stored("ab12");
        let (created, moved) = (
            Timestamp::from_unix_millis(1_000),
            Timestamp::from_unix_millis(2_000),
        );
        let mut m = moved_marker(&to, created, moved, Some("u"));
        assert_eq!(m.len(), HEADER_LEN + 4 + 6);
        assert_eq!(m[0], FORMAT_MOVED);
        assert_eq!(&m[1..10], &[0; 9]);
        assert_eq!(&m[10..18], &1_000i64.to_be_bytes());
        assert_eq!(&m[18..26], &2_000i64.to_be_bytes());
        assert_eq!(&m[26..42], &[0; 16]);
        assert_eq!(&m[42..46], &4u32.to_be_bytes());
        assert_eq!(&m[46..50], b"ab12");
        assert_eq!(&m[50..], &user_segment(Some("u"))[..]);
        assert_eq!(
            moved_marker(&to, created, moved, None)[50..],
            user_segment(None)[..]
        );
        // What the script splices in: the old record's deadlines.
        let old = sample(Some("u"), b"d").encode();
        m[DEADLINES_OFFSET..DEADLINES_OFFSET + 16]
            .copy_from_slice(&old[DEADLINES_OFFSET..DEADLINES_OFFSET + 16]);
        assert!(is_marker(&m));
        assert_eq!(
            classify(&m),
            Stored::Moved(Moved {
                to: Some(to),
                created_at: created,
                moved_at: moved,
                until: Timestamp::from_unix_millis(3),
            })
        );
        // Cut short of the key: still a moved marker, without its target.
        assert!(matches!(
            classify(&m[..HEADER_LEN + 2]),
            Stored::Moved(Moved { to: None, .. })
        ));
        // A marker is never a record.
        assert!(SessionRecord::decode(&m).is_err());
    }

    #[test]
    fn a_moved_marker_names_the_user_whose_session_moved() {
        let to = StorageKey::from_stored(&"k".repeat(64));
        let at = Timestamp::from_unix_millis(1);
        let mut m = moved_marker(&to, at, at, Some("alice"));
        // The script copies the moved record's user flag into byte 1.
        assert!(!moved_session_of(&m, "alice"), "flag not set: anonymous");
        m[layout::USER_FLAG] = layout::HAS_USER;
        assert!(moved_session_of(&m, "alice"));
        assert!(!moved_session_of(&m, "bob"));
        assert!(!moved_session_of(&m, "alic"));
        assert!(!moved_session_of(&m, "alice2"));
        assert!(m.len() <= owner_read_len("alice".len()));
        // Cut within the segment: not provably the user's.
        assert!(!moved_session_of(&m[..m.len() - 1], "alice"));
        // Written before markers named the user: counted as before.
        let legacy = &m[..HEADER_LEN + 64];
        assert!(moved_session_of(legacy, "bob"));
        assert!(!moved_session_of(
            &sample(Some("alice"), b"d").encode(),
            "alice"
        ));
    }

    #[test]
    fn ended_and_pending_markers_layout_and_classification() {
        let e = ended_marker();
        assert_eq!(e[0], FORMAT_ENDED);
        assert!(e[1..].iter().all(|&b| b == 0));
        assert!(is_marker(&e));
        assert_eq!(classify(&e), Stored::Ended);
        let p = pending_marker();
        assert_eq!(p[0], FORMAT_PENDING);
        assert!(p[1..].iter().all(|&b| b == 0));
        assert!(is_marker(&p));
        assert_eq!(classify(&p), Stored::Pending);
        assert_eq!(classify(b""), Stored::Missing);
        assert_eq!(classify(b"garbage"), Stored::Unreadable);
        let r = sample(Some("u"), b"d");
        let enc = r.encode();
        assert_eq!(enc[0], FORMAT_RECORD);
        assert!(!is_marker(&enc));
        assert_eq!(classify(&enc), Stored::Record(r));
    }

    fn sample(user: Option<&str>, data: &'static [u8]) -> SessionRecord {
        SessionRecord::new(
            Bytes::from_static(data),
            user.map(str::to_owned),
            Timestamp::from_unix_millis(1),
            Timestamp::from_unix_millis(3),
            Timestamp::from_unix_millis(4),
        )
        .with_last_access(Timestamp::from_unix_millis(2))
        .with_version(9)
    }

    #[test]
    fn decode_round_trips_without_copying_semantics_changes() {
        for r in [
            sample(None, b""),
            sample(Some(""), b"x"),
            sample(Some("Zoë {x}"), b"\x00\xffdata"),
        ] {
            assert_eq!(decode(r.encode()).unwrap(), r);
            let labelled = r.with_label(Some("Pixel – 7".into()));
            assert_eq!(decode(labelled.encode()).unwrap(), labelled);
        }
    }

    #[test]
    fn labelled_records_are_records_for_every_reader() {
        let r = sample(Some("alice"), b"data").with_label(Some("Firefox".into()));
        let enc = r.encode();
        assert_eq!(enc[0], FORMAT_RECORD_LABELLED);
        assert!(!is_marker(&enc));
        assert_eq!(classify(&enc), Stored::Record(r.clone()));
        // A prefix read through the user id (as the lifecycle reads do):
        // the header and user id, no label.
        let user_end = HEADER_LEN + 5;
        for cut in [user_end, user_end + 2, user_end + 4, user_end + 6] {
            let Stored::Record(head) = classify(&enc[..cut]) else {
                panic!("cut {cut}: {:?}", classify(&enc[..cut]));
            };
            assert_eq!(head.user_id.as_deref(), Some("alice"), "cut {cut}");
            assert_eq!(head.label, None, "cut {cut}");
        }
        // Through the label: all of it.
        let label_end = user_end + 4 + "Firefox".len();
        let Stored::Record(full) = classify(&enc[..label_end]) else {
            panic!("not a record");
        };
        assert_eq!(full.label.as_deref(), Some("Firefox"));
        // What a listing still has to read.
        assert_eq!(
            missing_label(&enc[..user_end + 4]),
            Some(user_end + 4..label_end)
        );
        assert_eq!(
            missing_label(&enc[..user_end + 6]),
            Some(user_end + 6..label_end)
        );
        assert_eq!(missing_label(&enc[..label_end]), None);
        assert_eq!(missing_label(&enc[..user_end + 2]), None);
        assert_eq!(missing_label(&sample(Some("alice"), b"d").encode()), None);
        // Cut in the label or its length, a full decode refuses.
        for n in user_end..label_end {
            assert!(decode(enc[..n].to_vec()).is_err(), "len {n}");
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
