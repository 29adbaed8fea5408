//! [`Session`]: one request's view of a session, with typed access and
//! change tracking. Created and persisted by the
//! [`SessionManager`](crate::SessionManager).

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::clock::Timestamp;
use crate::codec::{Reader, Writer};
use crate::error::SessionError;
use crate::id::SessionId;
use crate::key::StorageKey;
use crate::record::SessionRecord;
use crate::token::TokenEntry;

/// A session's data as stored: each value is kept as its own JSON text and
/// decoded only when read, so a load parses no more than a length-prefixed
/// list and never copies a value.
///
/// Layout (integers big-endian): `format (1 byte = 1) | value count (u32) |
/// { key length (u32) | key | value length (u32) | JSON value }* | token
/// count (u32) | { purpose length (u32) | purpose | hash (32) | expiry (i64
/// ms) }*`. Empty bytes are an empty session.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Payload {
    pub(crate) data: Vec<(String, Bytes)>,
    pub(crate) tokens: Vec<(String, TokenEntry)>,
}

const PAYLOAD_V1: u8 = 1;

/// Why stored session data could not be read: a
/// [`StoreError::Corrupt`](crate::StoreError::Corrupt) naming "session data".
pub(crate) type BadPayload = crate::StoreError;

/// The next `u32`-prefixed run of bytes, as a zero-copy view of `buf`.
fn bytes_u32(r: &mut Reader<'_>, buf: &Bytes) -> Result<Bytes, BadPayload> {
    let n = r.u32()? as usize;
    let start = r.position();
    r.take(n)?;
    Ok(buf.slice(start..r.position()))
}

fn string_u32(r: &mut Reader<'_>) -> Result<String, BadPayload> {
    let n = r.u32()? as usize;
    Ok(r.str(n)?.to_owned())
}

impl Payload {
    pub(crate) fn decode(bytes: &Bytes) -> Result<Self, BadPayload> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        let mut r = Reader::new(bytes, "session data");
        if r.u8()? != PAYLOAD_V1 {
            return Err(r.corrupt("unknown format"));
        }
        let n = r.u32()? as usize;
        // Every entry takes at least 8 bytes: bound the allocation by the input.
        let mut data = Vec::with_capacity(n.min(bytes.len() / 8));
        for _ in 0..n {
            let key = string_u32(&mut r)?;
            data.push((key, bytes_u32(&mut r, bytes)?));
        }
        let n = r.u32()? as usize;
        let mut tokens = Vec::with_capacity(n.min(bytes.len() / 44));
        for _ in 0..n {
            let purpose = string_u32(&mut r)?;
            let hash = r.array::<32>()?;
            let expires_at = r.timestamp()?;
            tokens.push((purpose, TokenEntry { hash, expires_at }));
        }
        r.finish()?;
        Ok(Self { data, tokens })
    }

    pub(crate) fn encode(&self) -> Bytes {
        let size = 9
            + self
                .data
                .iter()
                .map(|(k, v)| 8 + k.len() + v.len())
                .sum::<usize>()
            + self.tokens.iter().map(|(p, _)| 44 + p.len()).sum::<usize>();
        let mut w = Writer::with_capacity(size);
        w.u8(PAYLOAD_V1).len_u32(self.data.len());
        for (k, v) in &self.data {
            w.len_u32(k.len())
                .bytes(k.as_bytes())
                .len_u32(v.len())
                .bytes(v);
        }
        w.len_u32(self.tokens.len());
        for (p, t) in &self.tokens {
            w.len_u32(p.len())
                .bytes(p.as_bytes())
                .bytes(&t.hash)
                .timestamp(t.expires_at);
        }
        let out = w.into_vec();
        Bytes::from(out)
    }

    pub(crate) fn value(&self, key: &str) -> Option<&Bytes> {
        self.data.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub(crate) fn set_value(&mut self, key: &str, value: Option<Bytes>) -> Option<Bytes> {
        let pos = self.data.iter().position(|(k, _)| k == key);
        match (pos, value) {
            (Some(i), Some(v)) => Some(std::mem::replace(&mut self.data[i].1, v)),
            (Some(i), None) => Some(self.data.swap_remove(i).1),
            (None, Some(v)) => {
                self.data.push((key.to_owned(), v));
                None
            }
            (None, None) => None,
        }
    }

    pub(crate) fn token(&self, purpose: &str) -> Option<&TokenEntry> {
        self.tokens
            .iter()
            .find(|(p, _)| p == purpose)
            .map(|(_, t)| t)
    }

    pub(crate) fn set_token(&mut self, purpose: &str, entry: Option<TokenEntry>) {
        self.tokens.retain(|(p, _)| p != purpose);
        if let Some(e) = entry {
            self.tokens.push((purpose.to_owned(), e));
        }
    }
}

/// A tracked change, re-applied on top of a fresher record after a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Field {
    Data(String),
    Token(String),
}

#[derive(Debug, Clone)]
pub(crate) enum Change {
    Data(Option<Bytes>),
    Token(Option<TokenEntry>),
}

/// Where the session stands relative to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Not stored yet; created by the first commit that has something to save.
    New,
    /// Stored at this version.
    Stored(u64),
    /// Ended while this request held it (logged out or expired elsewhere,
    /// evicted, rotated by another request): nothing more is saved, and the
    /// client's cookie is left alone (it may already hold a newer one).
    Deleted,
}

/// One request's view of a session.
///
/// Values are read and written through serde ([`Session::get`],
/// [`Session::insert`]); every write is tracked, so
/// [`SessionManager::commit`](crate::SessionManager::commit) writes only
/// when something changed. `Debug` shows neither the ID, nor the storage
/// key (only its salted tag), nor the data, nor one-time tokens.
pub struct Session {
    pub(crate) id: SessionId,
    pub(crate) key: StorageKey,
    pub(crate) state: State,
    pub(crate) payload: Payload,
    pub(crate) changes: HashMap<Field, Change>,
    pub(crate) user_id: Option<String>,
    pub(crate) label: Option<String>,
    pub(crate) created_at: Timestamp,
    pub(crate) last_access: Timestamp,
    pub(crate) idle_deadline: Timestamp,
    pub(crate) absolute_deadline: Timestamp,
    pub(crate) touch_due: bool,
    pub(crate) id_changed: bool,
    /// This request logged out (the cookie is removed unless a new session
    /// is stored after it).
    pub(crate) logged_out: bool,
}

impl Session {
    /// Reads `key` as a `T`; `Ok(None)` if absent.
    ///
    /// # Errors
    ///
    /// [`SessionError::Serialization`] if the stored value is not a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        match self.payload.value(key) {
            Some(v) => Ok(Some(serde_json::from_slice(v)?)),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key`. Marks the session changed only if the
    /// value differs from what is there.
    ///
    /// # Errors
    ///
    /// [`SessionError::Serialization`] if `value` cannot be serialized.
    pub fn insert<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), SessionError> {
        let v = Bytes::from(serde_json::to_vec(value)?);
        if self.payload.value(key) == Some(&v) {
            return Ok(());
        }
        self.payload.set_value(key, Some(v.clone()));
        self.changes
            .insert(Field::Data(key.to_owned()), Change::Data(Some(v)));
        Ok(())
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&mut self, key: &str) -> bool {
        let was = self.payload.set_value(key, None).is_some();
        if was {
            self.changes
                .insert(Field::Data(key.to_owned()), Change::Data(None));
        }
        was
    }

    /// Whether `key` is present.
    #[must_use]
    pub fn contains(&self, key: &str) -> bool {
        self.payload.value(key).is_some()
    }

    /// The keys present, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.payload.data.iter().map(|(k, _)| k.as_str())
    }

    /// Whether the session holds no values.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.payload.data.is_empty()
    }

    /// The user this session is logged in as.
    #[must_use]
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// The label the application gave this session at login (see
    /// [`LoginOptions::with_label`](crate::LoginOptions::with_label)), if
    /// any. It is what [`SessionSummary::label`](crate::SessionSummary::label)
    /// shows for this session in the user's listing.
    #[must_use]
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// Whether the session has never been stored.
    #[must_use]
    pub fn is_new(&self) -> bool {
        self.state == State::New
    }

    /// Whether the session turned out to have ended while this request held
    /// it (logged out elsewhere, evicted, expired, rotated by another
    /// request): nothing more is saved for it.
    #[must_use]
    pub fn is_deleted(&self) -> bool {
        self.state == State::Deleted
    }

    /// Whether this request logged out. The handle then reads as a new,
    /// empty anonymous session (stored only if something is written to it)
    /// and the response removes the cookie unless that new session is
    /// stored.
    #[must_use]
    pub fn logged_out(&self) -> bool {
        self.logged_out
    }

    /// Whether there are unsaved changes.
    #[must_use]
    pub fn is_modified(&self) -> bool {
        !self.changes.is_empty()
    }

    /// Whether the session ID changed during this request (new, rotated or
    /// logged in), so the response must set the cookie.
    #[must_use]
    pub fn id_changed(&self) -> bool {
        self.id_changed
    }

    /// The storage key. Not a token, but it names the session's row in the
    /// store: its `Display`/`Debug` is a salted tag, safe to log;
    /// [`StorageKey::as_str`] is the key itself.
    #[must_use]
    pub fn storage_key(&self) -> &StorageKey {
        &self.key
    }

    /// When the session was created.
    #[must_use]
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// When the session was last used.
    #[must_use]
    pub fn last_access(&self) -> Timestamp {
        self.last_access
    }

    /// The idle deadline as last stored.
    #[must_use]
    pub fn idle_deadline(&self) -> Timestamp {
        self.idle_deadline
    }

    /// The absolute deadline.
    #[must_use]
    pub fn absolute_deadline(&self) -> Timestamp {
        self.absolute_deadline
    }

    /// The session ID. Handle with care: it is the bearer token.
    #[must_use]
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    pub(crate) fn set_token(&mut self, purpose: &str, entry: Option<TokenEntry>) {
        self.payload.set_token(purpose, entry.clone());
        self.changes
            .insert(Field::Token(purpose.to_owned()), Change::Token(entry));
    }

    /// Replaces the payload with `fresh` and re-applies pending changes.
    pub(crate) fn rebase(&mut self, fresh: Payload) {
        self.payload = fresh;
        for (field, change) in &self.changes {
            match (field, change) {
                (Field::Data(k), Change::Data(v)) => {
                    self.payload.set_value(k, v.clone());
                }
                (Field::Token(p), Change::Token(e)) => self.payload.set_token(p, e.clone()),
                _ => {}
            }
        }
    }

    pub(crate) fn to_record(&self, version: u64) -> Result<SessionRecord, SessionError> {
        Ok(SessionRecord {
            data: self.payload.encode(),
            user_id: self.user_id.clone(),
            created_at: self.created_at,
            last_access: self.last_access,
            idle_deadline: self.idle_deadline,
            absolute_deadline: self.absolute_deadline,
            version,
            label: self.label.clone(),
        })
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("state", &self.state)
            .field("user_id", &self.user_id)
            .field("label", &crate::label::Redacted(&self.label))
            .field("keys", &self.payload.data.len())
            .field("modified", &self.is_modified())
            .field("idle_deadline", &self.idle_deadline)
            .field("absolute_deadline", &self.absolute_deadline)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Payload {
        let mut p = Payload::default();
        p.set_value("a", Some(Bytes::from_static(b"1")));
        p.set_value("ключ", Some(Bytes::from_static(b"\"x\"")));
        p.set_token(
            "transfer",
            Some(TokenEntry {
                hash: [7; 32],
                expires_at: Timestamp::from_unix_millis(-5),
            }),
        );
        p
    }

    #[test]
    fn payload_round_trips() {
        let p = sample();
        assert_eq!(Payload::decode(&p.encode()).unwrap(), p);
        assert_eq!(Payload::decode(&Bytes::new()).unwrap(), Payload::default());
    }

    #[test]
    fn every_truncation_and_extension_is_rejected_without_panicking() {
        let enc = sample().encode();
        for n in 1..enc.len() {
            assert!(Payload::decode(&enc.slice(..n)).is_err(), "len {n}");
        }
        let mut longer = enc.to_vec();
        longer.push(0);
        assert!(Payload::decode(&Bytes::from(longer)).is_err());
        let mut huge = enc.to_vec();
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Payload::decode(&Bytes::from(huge)).is_err());
        assert!(Payload::decode(&Bytes::from_static(b"{\"d\":{}}")).is_err());
    }
}
