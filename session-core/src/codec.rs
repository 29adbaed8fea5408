//! Byte layouts shared by the backends, with one owner each.
//!
//! - [`layout`]: the offsets of the fixed header of an encoded
//!   [`SessionRecord`](crate::SessionRecord) (see
//!   [`SessionRecord::encode`](crate::SessionRecord::encode)). Backends whose
//!   server-side code reads records in place (the Redis Lua scripts) take
//!   their offsets from here, so a change of layout cannot leave them behind.
//! - [`Reader`] and [`Writer`]: bounds-checked big-endian readers and writers
//!   for the formats a backend defines on top (markers, indexes). A reader
//!   never panics on short or hostile input: every read past the end is a
//!   [`StoreError::Corrupt`] naming what was being read.
//! - [`UserTag`]: the one way a backend turns a user id into a fixed-size
//!   name (an index key, a tag), domain-separated by a context string.
//!
//! Every integer is big-endian; a timestamp is an `i64` of Unix
//! milliseconds.

use crate::clock::Timestamp;
use crate::store::StoreError;

/// Offsets (in bytes, from 0) of the fixed header of an encoded record.
///
/// ```text
/// offset  size  field
///      0     1  format (FORMAT_RECORD)
///      1     1  user flag (0 anonymous, 1 logged in)
///      2     8  version, u64
///     10     8  created_at, i64 unix ms
///     18     8  last_access
///     26     8  idle_deadline
///     34     8  absolute_deadline
///     42     4  user id length n, u32
///     46     n  user id (UTF-8)
///   46+n     …  data
/// ```
///
/// A record with a label has format [`FORMAT_RECORD_LABELLED`] and the
/// label between the user id and the data:
///
/// ```text
///   46+n     4  label length m, u32
///   50+n     m  label (UTF-8)
/// 50+n+m     …  data
/// ```
///
/// A record without one keeps format [`FORMAT_RECORD`] and the layout
/// above, byte for byte as written before labels existed, so stored
/// records stay readable and readers that predate labels still read every
/// unlabelled record. The fixed header is the same in both formats.
///
/// Format bytes 2 to 4 are taken by the Redis store's markers and `0xA7` by
/// the Memcached store's; new formats must avoid them.
///
/// [`FORMAT_RECORD_LABELLED`]: layout::FORMAT_RECORD_LABELLED
/// [`FORMAT_RECORD`]: layout::FORMAT_RECORD
pub mod layout {
    /// The format byte.
    pub const FORMAT: usize = 0;
    /// The user flag: [`HAS_USER`] when the record is bound to a user.
    pub const USER_FLAG: usize = 1;
    /// The version, 8 bytes.
    pub const VERSION: usize = 2;
    /// The creation time, 8 bytes.
    pub const CREATED_AT: usize = 10;
    /// The last access, 8 bytes.
    pub const LAST_ACCESS: usize = 18;
    /// The idle deadline, 8 bytes.
    pub const IDLE_DEADLINE: usize = 26;
    /// The absolute deadline, 8 bytes.
    pub const ABSOLUTE_DEADLINE: usize = 34;
    /// The user id's length, 4 bytes.
    pub const USER_LEN: usize = 42;
    /// Length of the fixed header; the user id starts here.
    pub const HEADER_LEN: usize = 46;
    /// Size of each timestamp and of the version.
    pub const WORD: usize = 8;
    /// The format byte of a record without a label.
    pub const FORMAT_RECORD: u8 = 1;
    /// The format byte of a record with a label: the label's length and
    /// the label follow the user id.
    pub const FORMAT_RECORD_LABELLED: u8 = 5;
    /// Size of the label's length (a `u32`) in a labelled record.
    pub const LABEL_LEN_SIZE: usize = 4;
    /// The user flag's value for a record bound to a user (0 otherwise).
    pub const HAS_USER: u8 = 1;
}

/// A bounds-checked cursor over bytes in one of the workspace's formats.
///
/// Every method that reads past the end returns [`StoreError::Corrupt`]
/// with the name given to [`Reader::new`] and what was missing; none panics.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`; `what` names the format in errors
    /// (e.g. `"user index"`).
    #[must_use]
    pub fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, at: 0, what }
    }

    /// A [`StoreError::Corrupt`] for this format: `"<what>: <why>"`.
    #[must_use]
    pub fn corrupt(&self, why: &str) -> StoreError {
        StoreError::Corrupt(format!("{}: {why}", self.what))
    }

    /// The next `n` bytes.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when fewer remain.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| self.corrupt("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// The next `N` bytes as an array.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when fewer remain.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// One byte.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] at the end of the input.
    pub fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian `u16`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when fewer than 2 bytes remain.
    pub fn u16(&mut self) -> Result<u16, StoreError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian `u32`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when fewer than 4 bytes remain.
    pub fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian `u64`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when fewer than 8 bytes remain.
    pub fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A big-endian `i64`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when fewer than 8 bytes remain.
    pub fn i64(&mut self) -> Result<i64, StoreError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A timestamp (`i64` Unix milliseconds).
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when fewer than 8 bytes remain.
    pub fn timestamp(&mut self) -> Result<Timestamp, StoreError> {
        Ok(Timestamp::from_unix_millis(self.i64()?))
    }

    /// `n` bytes of UTF-8.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when fewer remain or they are not UTF-8.
    pub fn str(&mut self, n: usize) -> Result<&'a str, StoreError> {
        let b = self.take(n)?;
        std::str::from_utf8(b).map_err(|_| self.corrupt("text is not UTF-8"))
    }

    /// A string prefixed by its `u16` length.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when truncated or not UTF-8.
    pub fn str_u16(&mut self) -> Result<&'a str, StoreError> {
        let n = self.u16()?;
        self.str(usize::from(n))
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.bytes[self.at..];
        self.at = self.bytes.len();
        out
    }

    /// How many bytes are left.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// Where the next read starts, from the start of the input.
    #[must_use]
    pub fn position(&self) -> usize {
        self.at
    }

    /// Checks that everything was read.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] ("trailing bytes") otherwise.
    pub fn finish(&self) -> Result<(), StoreError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(self.corrupt("trailing bytes"))
        }
    }
}

/// Appends values in the workspace's formats (big-endian) to a buffer.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// An empty writer with room for `capacity` bytes.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            out: Vec::with_capacity(capacity),
        }
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A big-endian `i64`.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A timestamp (`i64` Unix milliseconds).
    pub fn timestamp(&mut self, t: Timestamp) -> &mut Self {
        self.i64(t.as_unix_millis())
    }

    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }

    /// A length as a `u32`, saturating (a caller that allows values that
    /// long checks sizes first).
    pub fn len_u32(&mut self, n: usize) -> &mut Self {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// A string prefixed by its `u16` length.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when it is longer than `u16::MAX` bytes (a
    /// caller's format cannot hold it; nothing is written).
    pub fn str_u16(&mut self, s: &str) -> Result<&mut Self, StoreError> {
        let n = u16::try_from(s.len())
            .map_err(|_| StoreError::Corrupt("a text longer than 65535 bytes".into()))?;
        Ok(self.u16(n).bytes(s.as_bytes()))
    }

    /// The bytes written.
    #[must_use]
    pub fn into_vec(self) -> Vec<u8> {
        self.out
    }
}

/// A fixed-size name for a user id: 32 bytes of BLAKE3, domain-separated
/// by a context string, or keyed with a secret.
///
/// Backends name a user's index with it (so any user id, however long or
/// strange, makes a key of one size and alphabet), and the encryption layer
/// stands a keyed tag in for the user id. The context string is part of a
/// backend's stored format: changing it orphans every stored index.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserTag([u8; 32]);

impl UserTag {
    /// The tag of `user_id` under `context` (BLAKE3 `derive_key` mode; the
    /// context should name the crate, a date and a purpose).
    #[must_use]
    pub fn derive(context: &str, user_id: &[u8]) -> Self {
        Self(
            blake3::Hasher::new_derive_key(context)
                .update(user_id)
                .finalize()
                .into(),
        )
    }

    /// The tag of `user_id` keyed with a 32-byte secret (BLAKE3 keyed mode):
    /// without the key, tags cannot be linked to user ids.
    #[must_use]
    pub fn keyed(key: &[u8; 32], user_id: &[u8]) -> Self {
        Self(blake3::keyed_hash(key, user_id).into())
    }

    /// The 64 lowercase hex digits of the tag.
    #[must_use]
    pub fn to_hex(&self) -> String {
        blake3::Hash::from(self.0).to_hex().to_string()
    }

    /// The tag's bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for UserTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserTag({})", &self.to_hex()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SessionRecord;
    use bytes::Bytes;

    #[test]
    fn layout_matches_the_encoder() {
        let r = SessionRecord {
            data: Bytes::from_static(b"data"),
            user_id: Some("alice".into()),
            created_at: Timestamp::from_unix_millis(11),
            last_access: Timestamp::from_unix_millis(22),
            idle_deadline: Timestamp::from_unix_millis(33),
            absolute_deadline: Timestamp::from_unix_millis(-44),
            version: 55,
            label: None,
        };
        let enc = r.encode();
        let at = |o: usize| {
            let mut r = Reader::new(&enc[o..], "test");
            r.i64().unwrap()
        };
        assert_eq!(enc[layout::FORMAT], layout::FORMAT_RECORD);
        assert_eq!(enc[layout::USER_FLAG], layout::HAS_USER);
        assert_eq!(at(layout::VERSION), 55);
        assert_eq!(at(layout::CREATED_AT), 11);
        assert_eq!(at(layout::LAST_ACCESS), 22);
        assert_eq!(at(layout::IDLE_DEADLINE), 33);
        assert_eq!(at(layout::ABSOLUTE_DEADLINE), -44);
        let mut len = Reader::new(&enc[layout::USER_LEN..], "test");
        assert_eq!(len.u32().unwrap(), 5);
        assert_eq!(&enc[layout::HEADER_LEN..layout::HEADER_LEN + 5], b"alice");
        assert_eq!(&enc[layout::HEADER_LEN + 5..], b"data");
        // With a label: the same header under the labelled format byte,
        // the label's length and the label between user id and data.
        let enc = r.with_label(Some("tab".into())).encode();
        assert_eq!(enc[layout::FORMAT], layout::FORMAT_RECORD_LABELLED);
        assert_eq!(at(layout::VERSION), 55);
        let at_label = layout::HEADER_LEN + 5;
        let mut len = Reader::new(&enc[at_label..], "test");
        assert_eq!(len.u32().unwrap(), 3);
        let start = at_label + layout::LABEL_LEN_SIZE;
        assert_eq!(&enc[start..start + 3], b"tab");
        assert_eq!(&enc[start + 3..], b"data");
    }

    #[test]
    fn reader_never_reads_past_the_end() {
        let mut w = Writer::with_capacity(32);
        w.u8(7).u16(300).u32(70_000).u64(u64::MAX).i64(-1);
        w.str_u16("héllo").unwrap();
        let bytes = w.into_vec();
        for n in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..n], "sample");
            let all = (|| {
                r.u8()?;
                r.u16()?;
                r.u32()?;
                r.u64()?;
                r.i64()?;
                r.str_u16()?;
                Ok::<_, StoreError>(())
            })();
            let err = all.unwrap_err();
            assert!(err.to_string().contains("sample"), "{err}");
        }
        let mut r = Reader::new(&bytes, "sample");
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u16().unwrap(), 300);
        assert_eq!(r.u32().unwrap(), 70_000);
        assert_eq!(r.u64().unwrap(), u64::MAX);
        assert_eq!(r.i64().unwrap(), -1);
        assert_eq!(r.str_u16().unwrap(), "héllo");
        r.finish().unwrap();
    }

    #[test]
    fn reader_rejects_bad_utf8_and_trailing_bytes() {
        let mut r = Reader::new(&[0, 2, 0xff, 0xfe], "sample");
        assert!(r.str_u16().is_err());
        let r = Reader::new(&[1], "sample");
        assert!(r.finish().is_err());
    }

    #[test]
    fn user_tags_separate_contexts_and_keys() {
        let a = UserTag::derive("ctx a", b"alice");
        assert_eq!(a, UserTag::derive("ctx a", b"alice"));
        assert_ne!(a, UserTag::derive("ctx b", b"alice"));
        assert_ne!(a, UserTag::derive("ctx a", b"alicf"));
        assert_ne!(
            UserTag::keyed(&[1; 32], b"a"),
            UserTag::keyed(&[2; 32], b"a")
        );
        assert_eq!(a.to_hex().len(), 64);
        assert_eq!(
            a.to_hex(),
            blake3::Hasher::new_derive_key("ctx a")
                .update(b"alice")
                .finalize()
                .to_hex()
                .as_str()
        );
    }
}
