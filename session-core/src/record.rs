//! What a store keeps: [`SessionRecord`] (opaque bytes plus metadata) and the
//! id-free [`SessionSummary`] returned by the per-user index.

use bytes::Bytes;

use crate::clock::Timestamp;
use crate::codec::layout::{self, HEADER_LEN};
use crate::codec::{Reader, Writer};
use crate::key::StorageKey;
use crate::label::Redacted;
use crate::store::StoreError;

/// One stored session.
///
/// `data` is opaque to stores: the manager serializes the session's values
/// into it (and `session-encrypted` turns it into ciphertext). The metadata is
/// what stores need to expire, index and version the record.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionRecord {
    /// The serialized session data. Stores must round-trip it byte for byte.
    pub data: Bytes,
    /// The user this session is bound to, if logged in. Stores index it.
    /// It is fixed when the record is created: [`update`] never changes it.
    ///
    /// [`update`]: crate::SessionStore::update
    pub user_id: Option<String>,
    /// When the session was created.
    pub created_at: Timestamp,
    /// When the session was last used (as of the last write or touch).
    pub last_access: Timestamp,
    /// The session ends at this instant unless touched again.
    pub idle_deadline: Timestamp,
    /// The session ends at this instant whatever happens.
    pub absolute_deadline: Timestamp,
    /// Optimistic-concurrency version; the manager starts at 1 and bumps it
    /// on every update.
    pub version: u64,
    /// A short name for the session chosen by the application at login (a
    /// device name), shown in the per-user listing; `None` when it set
    /// none. Like `user_id` it is fixed when the record is created:
    /// [`update`] keeps the stored one, and a rotation carries it to the
    /// new key. The manager writes only labels that pass
    /// [`validate_label`](crate::label::validate_label); stores must keep
    /// any text without U+0000 of up to
    /// [`MAX_STORED_LABEL_LEN`](crate::label::MAX_STORED_LABEL_LEN) bytes
    /// exactly. See [`label`](crate::label).
    ///
    /// [`update`]: crate::SessionStore::update
    pub label: Option<String>,
}

impl SessionRecord {
    /// A record of `data` for `user_id` (`None`: anonymous), created (and
    /// last used) at `created_at`, live until the earlier deadline, at
    /// version 1. Set the other fields with the `with_*` methods; the struct
    /// is `#[non_exhaustive]`, so fields added later get a default here
    /// instead of breaking every backend that builds records.
    #[must_use]
    pub fn new(
        data: impl Into<Bytes>,
        user_id: Option<String>,
        created_at: Timestamp,
        idle_deadline: Timestamp,
        absolute_deadline: Timestamp,
    ) -> Self {
        Self {
            data: data.into(),
            user_id,
            created_at,
            last_access: created_at,
            idle_deadline,
            absolute_deadline,
            version: 1,
            label: None,
        }
    }

    /// This record with other data.
    #[must_use]
    pub fn with_data(mut self, data: impl Into<Bytes>) -> Self {
        self.data = data.into();
        self
    }

    /// This record bound to another user (`None`: anonymous).
    #[must_use]
    pub fn with_user_id(mut self, user_id: Option<String>) -> Self {
        self.user_id = user_id;
        self
    }

    /// This record with another creation time.
    #[must_use]
    pub fn with_created_at(mut self, created_at: Timestamp) -> Self {
        self.created_at = created_at;
        self
    }

    /// This record with another last access.
    #[must_use]
    pub fn with_last_access(mut self, last_access: Timestamp) -> Self {
        self.last_access = last_access;
        self
    }

    /// This record with another idle deadline.
    #[must_use]
    pub fn with_idle_deadline(mut self, idle_deadline: Timestamp) -> Self {
        self.idle_deadline = idle_deadline;
        self
    }

    /// This record with another absolute deadline.
    #[must_use]
    pub fn with_absolute_deadline(mut self, absolute_deadline: Timestamp) -> Self {
        self.absolute_deadline = absolute_deadline;
        self
    }

    /// This record at another version.
    #[must_use]
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// This record with another label (`None`: no label). Not validated
    /// here: the manager validates the labels it writes (see
    /// [`label`](crate::label)).
    #[must_use]
    pub fn with_label(mut self, label: Option<String>) -> Self {
        self.label = label;
        self
    }

    /// The instant the record stops being loadable: the earlier deadline.
    #[must_use]
    pub fn expires_at(&self) -> Timestamp {
        self.idle_deadline.min(self.absolute_deadline)
    }

    /// Whether the record has expired at `now` (a deadline is exclusive: a
    /// record is dead *at* its deadline).
    #[must_use]
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        now >= self.expires_at()
    }

    /// The id-free summary of this record, stored under `key`.
    #[must_use]
    pub fn summary(&self, key: &StorageKey) -> SessionSummary {
        SessionSummary {
            key: key.clone(),
            created_at: self.created_at,
            last_access: self.last_access,
            idle_deadline: self.idle_deadline,
            absolute_deadline: self.absolute_deadline,
            label: self.label.clone(),
        }
    }

    /// Encodes the whole record into one self-describing byte string, for
    /// stores that keep a record as a single value (Memcached, Redis). The
    /// layout is [`codec::layout`](crate::codec::layout): a record without a
    /// label is written in format [`FORMAT_RECORD`](layout::FORMAT_RECORD),
    /// byte for byte as before labels existed, one with a label in format
    /// [`FORMAT_RECORD_LABELLED`](layout::FORMAT_RECORD_LABELLED).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let user = self.user_id.as_deref().unwrap_or("").as_bytes();
        let label = self.label.as_deref().map(str::as_bytes);
        let label_len = label.map_or(0, |l| layout::LABEL_LEN_SIZE + l.len());
        let mut w = Writer::with_capacity(HEADER_LEN + user.len() + label_len + self.data.len());
        w.u8(if label.is_some() {
            layout::FORMAT_RECORD_LABELLED
        } else {
            layout::FORMAT_RECORD
        })
        .u8(if self.user_id.is_some() {
            layout::HAS_USER
        } else {
            0
        })
        .u64(self.version)
        .timestamp(self.created_at)
        .timestamp(self.last_access)
        .timestamp(self.idle_deadline)
        .timestamp(self.absolute_deadline)
        .len_u32(user.len())
        .bytes(user);
        if let Some(label) = label {
            w.len_u32(label.len()).bytes(label);
        }
        w.bytes(&self.data);
        w.into_vec()
    }

    /// Decodes what [`SessionRecord::encode`] produced, in either format
    /// (records written before labels existed decode with no label).
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] for truncated or unknown input; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader::new(bytes, "encoded record");
        if bytes.len() < HEADER_LEN {
            return Err(r.corrupt("truncated header"));
        }
        let labelled = match r.u8()? {
            layout::FORMAT_RECORD => false,
            layout::FORMAT_RECORD_LABELLED => true,
            _ => return Err(r.corrupt("unknown format version")),
        };
        let has_user = match r.u8()? {
            0 => false,
            layout::HAS_USER => true,
            _ => return Err(r.corrupt("bad user flag")),
        };
        let version = r.u64()?;
        let created_at = r.timestamp()?;
        let last_access = r.timestamp()?;
        let idle_deadline = r.timestamp()?;
        let absolute_deadline = r.timestamp()?;
        debug_assert_eq!(r.position(), layout::USER_LEN);
        let user_len = r.u32()? as usize;
        if r.remaining() < user_len {
            return Err(r.corrupt("truncated user id"));
        }
        let user = r.str(user_len)?;
        let label = if labelled {
            let n = r.u32()? as usize;
            if r.remaining() < n {
                return Err(r.corrupt("truncated label"));
            }
            Some(r.str(n)?.to_owned())
        } else {
            None
        };
        Ok(Self {
            user_id: has_user.then(|| user.to_owned()),
            data: Bytes::copy_from_slice(r.rest()),
            created_at,
            last_access,
            idle_deadline,
            absolute_deadline,
            version,
            label,
        })
    }
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .field("user_id", &self.user_id)
            .field("created_at", &self.created_at)
            .field("last_access", &self.last_access)
            .field("idle_deadline", &self.idle_deadline)
            .field("absolute_deadline", &self.absolute_deadline)
            .field("version", &self.version)
            .field("label", &Redacted(&self.label))
            .finish()
    }
}

/// What the per-user index returns for one session: no session ID, no data.
///
/// `key` is the storage key (a one-way hash of the ID), which lets the
/// manager evict or revoke a specific session; it is not a usable token, but
/// applications showing a "your devices" page need not expose it either.
///
/// `#[non_exhaustive]`: stores build one with [`SessionRecord::summary`] or
/// [`SessionSummary::new`] and the `with_*` methods. `Debug` shows the
/// label's length only.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionSummary {
    /// The storage key of the session.
    pub key: StorageKey,
    /// When the session was created.
    pub created_at: Timestamp,
    /// When the session was last used, as last written or touched.
    pub last_access: Timestamp,
    /// When it ends unless used again.
    pub idle_deadline: Timestamp,
    /// When it ends whatever happens.
    pub absolute_deadline: Timestamp,
    /// The label the application gave the session at login (see
    /// [`SessionRecord::label`]), `None` if it gave none.
    pub label: Option<String>,
}

impl std::fmt::Debug for SessionSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSummary")
            .field("key", &self.key)
            .field("created_at", &self.created_at)
            .field("last_access", &self.last_access)
            .field("idle_deadline", &self.idle_deadline)
            .field("absolute_deadline", &self.absolute_deadline)
            .field("label", &Redacted(&self.label))
            .finish()
    }
}

impl SessionSummary {
    /// The summary of a session stored under `key`, without a label (set
    /// it with [`SessionSummary::with_label`]).
    #[must_use]
    pub fn new(
        key: StorageKey,
        created_at: Timestamp,
        last_access: Timestamp,
        idle_deadline: Timestamp,
        absolute_deadline: Timestamp,
    ) -> Self {
        Self {
            key,
            created_at,
            last_access,
            idle_deadline,
            absolute_deadline,
            label: None,
        }
    }

    /// This summary with another label.
    #[must_use]
    pub fn with_label(mut self, label: Option<String>) -> Self {
        self.label = label;
        self
    }

    /// The earlier of the two deadlines.
    #[must_use]
    pub fn expires_at(&self) -> Timestamp {
        self.idle_deadline.min(self.absolute_deadline)
    }
}

/// One entry of a logged-in session's listing of its user's sessions
/// ([`SessionManager::list_sessions_for`](crate::SessionManager::list_sessions_for)):
/// the summary, and whether it is the session that asked.
///
/// `current` compares storage keys; the session ID never enters the
/// listing. It dereferences to its [`SessionSummary`], so `entry.key`,
/// `entry.created_at` and `entry.label` read as on a summary.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListedSession {
    /// The session's summary (storage key, times, label).
    pub summary: SessionSummary,
    /// Whether this is the session the listing was made for: the device
    /// the request came from.
    pub current: bool,
}

impl std::ops::Deref for ListedSession {
    type Target = SessionSummary;

    fn deref(&self) -> &SessionSummary {
        &self.summary
    }
}

impl ListedSession {
    /// An entry for `summary`, marked current or not.
    #[must_use]
    pub fn new(summary: SessionSummary, current: bool) -> Self {
        Self { summary, current }
    }

    /// Whether this is the session the listing was made for.
    #[must_use]
    pub fn is_current(&self) -> bool {
        self.current
    }

    /// The session's storage key (what
    /// [`SessionManager::end_user_session`](crate::SessionManager::end_user_session)
    /// takes).
    #[must_use]
    pub fn key(&self) -> &StorageKey {
        &self.summary.key
    }

    /// The session's label, if the application gave it one at login.
    #[must_use]
    pub fn label(&self) -> Option<&str> {
        self.summary.label.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(user: Option<&str>) -> SessionRecord {
        SessionRecord {
            data: Bytes::from_static(b"\x00\x01payload\xff"),
            user_id: user.map(str::to_owned),
            created_at: Timestamp::from_unix_millis(1),
            last_access: Timestamp::from_unix_millis(2),
            idle_deadline: Timestamp::from_unix_millis(3),
            absolute_deadline: Timestamp::from_unix_millis(-4),
            version: 7,
            label: None,
        }
    }

    #[test]
    fn encode_round_trips() {
        for r in [sample(None), sample(Some("")), sample(Some("ünï:{x}"))] {
            assert_eq!(SessionRecord::decode(&r.encode()).unwrap(), r);
            for label in ["", "Firefox on Linux", "📱 \"x\" <b>"] {
                let labelled = r.clone().with_label(Some(label.to_owned()));
                let enc = labelled.encode();
                assert_eq!(enc[0], layout::FORMAT_RECORD_LABELLED);
                assert_eq!(SessionRecord::decode(&enc).unwrap(), labelled);
            }
        }
    }

    #[test]
    fn a_record_without_a_label_is_encoded_as_before_labels() {
        let r = sample(Some("alice"));
        let enc = r.encode();
        assert_eq!(enc[0], layout::FORMAT_RECORD);
        assert_eq!(enc.len(), HEADER_LEN + 5 + r.data.len());
        assert_eq!(&enc[HEADER_LEN..HEADER_LEN + 5], b"alice");
        assert_eq!(&enc[HEADER_LEN + 5..], &r.data[..]);
    }

    #[test]
    fn the_label_sits_between_the_user_id_and_the_data() {
        let r = sample(Some("bob")).with_label(Some("tab".into()));
        let enc = r.encode();
        let at = HEADER_LEN + 3;
        assert_eq!(&enc[at..at + layout::LABEL_LEN_SIZE], &3u32.to_be_bytes());
        assert_eq!(&enc[at + 4..at + 7], b"tab");
        assert_eq!(&enc[at + 7..], &r.data[..]);
        for n in 0..at + 7 {
            assert!(SessionRecord::decode(&enc[..n]).is_err(), "len {n}");
        }
    }

    #[test]
    fn summaries_carry_the_label_and_debug_hides_it() {
        let key = StorageKey::from_stored("k");
        let r = sample(Some("u")).with_label(Some("Pixel of Ada".into()));
        let s = r.summary(&key);
        assert_eq!(s.label.as_deref(), Some("Pixel of Ada"));
        for shown in [format!("{s:?}"), format!("{r:?}")] {
            assert!(!shown.contains("Ada"), "{shown}");
            assert!(shown.contains("12 bytes"), "{shown}");
        }
    }

    #[test]
    fn decode_rejects_every_truncation_without_panicking() {
        let enc = sample(Some("alice")).encode();
        for n in 0..HEADER_LEN + 5 {
            assert!(SessionRecord::decode(&enc[..n]).is_err(), "len {n}");
        }
        let mut bad = enc.clone();
        bad[0] = 9;
        assert!(SessionRecord::decode(&bad).is_err());
    }

    #[test]
    fn expiry_uses_the_earlier_deadline() {
        let r = sample(None);
        assert_eq!(r.expires_at(), Timestamp::from_unix_millis(-4));
        assert!(r.is_expired_at(Timestamp::from_unix_millis(-4)));
        assert!(!r.is_expired_at(Timestamp::from_unix_millis(-5)));
    }

    #[test]
    fn debug_hides_data() {
        let s = format!("{:?}", sample(None));
        assert!(!s.contains("payload"));
    }
}
