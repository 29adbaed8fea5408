//! [`Session`]: one request's view of a session, with typed access and
//! change tracking. Created and persisted by the
//! [`SessionManager`](crate::SessionManager).

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Timestamp;
use crate::error::SessionError;
use crate::id::SessionId;
use crate::key::StorageKey;
use crate::record::SessionRecord;
use crate::token::TokenEntry;

/// The serialized form of a session's data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Payload {
    #[serde(rename = "d", default)]
    pub(crate) data: HashMap<String, Value>,
    #[serde(rename = "t", default, skip_serializing_if = "HashMap::is_empty")]
    pub(crate) tokens: HashMap<String, TokenEntry>,
}

impl Payload {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_slice(bytes)
    }

    pub(crate) fn encode(&self) -> Result<Bytes, serde_json::Error> {
        serde_json::to_vec(self).map(Bytes::from)
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
    Data(Option<Value>),
    Token(Option<TokenEntry>),
}

/// Where the session stands relative to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Not stored yet; created by the first commit that has something to save.
    New,
    /// Stored at this version.
    Stored(u64),
    /// Deleted (logout); the cookie must be removed.
    Deleted,
}

/// One request's view of a session.
///
/// Values are read and written through serde ([`Session::get`],
/// [`Session::insert`]); every write is tracked, so
/// [`SessionManager::commit`](crate::SessionManager::commit) writes only
/// when something changed. `Debug` shows neither the ID nor the data.
pub struct Session {
    pub(crate) id: SessionId,
    pub(crate) key: StorageKey,
    pub(crate) state: State,
    pub(crate) payload: Payload,
    pub(crate) changes: HashMap<Field, Change>,
    pub(crate) user_id: Option<String>,
    pub(crate) created_at: Timestamp,
    pub(crate) last_access: Timestamp,
    pub(crate) idle_deadline: Timestamp,
    pub(crate) absolute_deadline: Timestamp,
    pub(crate) touch_due: bool,
    pub(crate) id_changed: bool,
}

impl Session {
    /// Reads `key` as a `T`; `Ok(None)` if absent.
    ///
    /// # Errors
    ///
    /// [`SessionError::Serialization`] if the stored value is not a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        match self.payload.data.get(key) {
            Some(v) => Ok(Some(T::deserialize(v)?)),
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
        let v = serde_json::to_value(value)?;
        if self.payload.data.get(key) == Some(&v) {
            return Ok(());
        }
        self.payload.data.insert(key.to_owned(), v.clone());
        self.changes
            .insert(Field::Data(key.to_owned()), Change::Data(Some(v)));
        Ok(())
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&mut self, key: &str) -> bool {
        let was = self.payload.data.remove(key).is_some();
        if was {
            self.changes
                .insert(Field::Data(key.to_owned()), Change::Data(None));
        }
        was
    }

    /// Whether `key` is present.
    #[must_use]
    pub fn contains(&self, key: &str) -> bool {
        self.payload.data.contains_key(key)
    }

    /// The keys present, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.payload.data.keys().map(String::as_str)
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

    /// Whether the session has never been stored.
    #[must_use]
    pub fn is_new(&self) -> bool {
        self.state == State::New
    }

    /// Whether the session was deleted (logged out) during this request.
    #[must_use]
    pub fn is_deleted(&self) -> bool {
        self.state == State::Deleted
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

    /// The storage key (not a token; safe to log or show).
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
        match &entry {
            Some(e) => {
                self.payload.tokens.insert(purpose.to_owned(), e.clone());
            }
            None => {
                self.payload.tokens.remove(purpose);
            }
        }
        self.changes
            .insert(Field::Token(purpose.to_owned()), Change::Token(entry));
    }

    /// Replaces the payload with `fresh` and re-applies pending changes.
    pub(crate) fn rebase(&mut self, fresh: Payload) {
        self.payload = fresh;
        for (field, change) in &self.changes {
            match (field, change) {
                (Field::Data(k), Change::Data(Some(v))) => {
                    self.payload.data.insert(k.clone(), v.clone());
                }
                (Field::Data(k), Change::Data(None)) => {
                    self.payload.data.remove(k);
                }
                (Field::Token(p), Change::Token(Some(e))) => {
                    self.payload.tokens.insert(p.clone(), e.clone());
                }
                (Field::Token(p), Change::Token(None)) => {
                    self.payload.tokens.remove(p);
                }
                _ => {}
            }
        }
    }

    pub(crate) fn to_record(&self, version: u64) -> Result<SessionRecord, SessionError> {
        Ok(SessionRecord {
            data: self.payload.encode()?,
            user_id: self.user_id.clone(),
            created_at: self.created_at,
            last_access: self.last_access,
            idle_deadline: self.idle_deadline,
            absolute_deadline: self.absolute_deadline,
            version,
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
            .field("keys", &self.payload.data.len())
            .field("modified", &self.is_modified())
            .field("idle_deadline", &self.idle_deadline)
            .field("absolute_deadline", &self.absolute_deadline)
            .finish_non_exhaustive()
    }
}
