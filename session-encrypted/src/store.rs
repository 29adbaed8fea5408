//! [`EncryptedStore`]: AES-256-GCM encryption at rest around any store.
//!
//! Stored `data` layout (all integers big-endian):
//!
//! ```text
//! format (1 byte = 2) | key id (2) | nonce (12) | ciphertext | tag (16)
//! ```
//!
//! The plaintext is `user flag (1) | user id length (4) | user id | data`.
//! The associated data binds the format, the key id, the storage key, the
//! creation time, the absolute deadline and the record's **version**, so a
//! ciphertext copied under another storage key, with its lifetime extended,
//! or put back under a later version, fails to decrypt. Format 1 (written
//! before the version was bound) still opens, and is rewritten as format 2
//! on the session's next write or migrating load. The inner store's
//! per-user index sees only `k<id>:<keyed BLAKE3 of the user id>`, keyed
//! with the ring's index key, and every load checks that tag against the
//! user id inside the ciphertext.
//!
//! # Labels
//!
//! A session's label (a device name the application derived from the
//! `User-Agent`: personal data) is encrypted too, on its own, so that a
//! listing can show it without opening each session's data. The inner
//! store's label is the text `e1.<base64url of key id (2) | nonce (12) |
//! ciphertext | tag (16)>`, sealed with the same key ring (the primary key,
//! a fresh nonce per write, re-sealed on every write and by a migrating
//! load). Its associated data binds a context of its own, the key id and
//! the storage key, so a sealed label copied to another session does not
//! open. Nothing else is bound: a label is fixed at login, and stores keep
//! the stored one on `update` while the deadlines may move (a label put
//! back from an earlier write of the same session opens, and says what it
//! said). A sealed label of `n` bytes is at most `4n/3 + 44` bytes long, so
//! for the longest label the contract allows
//! ([`MAX_STORED_LABEL_LEN`](session_core::label::MAX_STORED_LABEL_LEN))
//! the inner store holds more than the contract asks of it. Every store of
//! this workspace accepts that (none bounds labels), and the manager's own
//! labels (at most 128 bytes) seal to at most 214 bytes.
//!
//! A label that fails to open makes `load` fail like tampered data
//! (`Corrupt`, "no session"); in a listing the session is still listed,
//! without a label (its load fails on its own).
//!
//! # What an attacker with write access to the inner store can do
//!
//! Such an attacker (a leaked database password, a shared Redis) holds no
//! encryption key. They **cannot**:
//!
//! - read session data or user ids (only ciphertext and keyed user tags;
//!   equal user tags show that two sessions belong to one user);
//! - forge a session, or change a single byte of one, that then loads;
//! - move a record to another storage key (another user's cookie), extend
//!   its creation time or absolute deadline, or file it in another user's
//!   index (it then loads as "no session");
//! - splice an older ciphertext of a session under its current version:
//!   the version is bound, so the stored version and the ciphertext must
//!   come from the same write.
//!
//! They **can**:
//!
//! - delete sessions, or make them unloadable (availability is theirs);
//! - put back an *entire* earlier state of a session (ciphertext together
//!   with the version and deadlines it was written with), for instance one
//!   holding a one-time token that was used since. Nothing inside the store
//!   can tell a complete earlier state from the current one; the only bound
//!   is the session's absolute deadline, which never moves. Where that
//!   matters, record one-time tokens' consumption where the attacker cannot
//!   write;
//! - change the idle deadline and last-access time, which `touch` writes
//!   without re-encrypting (never beyond the bound absolute deadline);
//! - see how many sessions each (tagged) user has, when they were created,
//!   their deadlines, and the size of each session's data.

use std::sync::Arc;

use aes_gcm::aead::{AeadInOut, Nonce, Tag};
use aes_gcm::Aes256Gcm;
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use session_core::{
    CreateOptions, Created, SessionRecord, SessionStore, SessionSummary, StorageKey, StoreError,
    StoreResult, Timestamp,
};
use zeroize::Zeroizing;

use crate::key::KeyRing;

/// The first format: the associated data does not bind the version.
pub(crate) const FORMAT_V1: u8 = 1;
/// The current format: the associated data binds the version.
pub(crate) const FORMAT_V2: u8 = 2;
const AAD_CONTEXT_V1: &[u8] = b"session-encrypted/v1\0";
const AAD_CONTEXT_V2: &[u8] = b"session-encrypted/v2\0";
const LABEL_AAD_CONTEXT: &[u8] = b"session-encrypted/label/v1\0";
/// The prefix of a sealed label in the inner store.
const LABEL_PREFIX: &str = "e1.";
pub(crate) const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
pub(crate) const HEADER_LEN: usize = 1 + 2 + NONCE_LEN;

/// Wraps a [`SessionStore`] so that it holds only ciphertext and keyed
/// hashes of user ids. It is itself a `SessionStore` and passes the same
/// conformance suite, with the inner store's guarantees under concurrency
/// unchanged: every operation is one call to the inner store, except a
/// migrating load (below), which adds one compare-and-set write.
///
/// Records that fail to open (tampered, truncated, foreign, written under a
/// key the ring does not hold, tagged under another index key) load as
/// [`StoreError::Corrupt`] with the reason, which the manager logs and
/// treats as "no session".
///
/// # Migration on load
///
/// By default a load that finds a record under an older key (or in the
/// older format) re-encrypts it under the primary key at once, with a
/// compare-and-set [`update`](SessionStore::update) that bumps the version,
/// so active sessions move to a new key on their first request after a
/// rotation, not only when their data changes. If another request wrote the
/// session first, the load reads it again instead. Turn it off with
/// [`EncryptedStore::migrate_on_load`] to keep loads read-only; sessions then
/// move to the new key on their next write.
pub struct EncryptedStore<S> {
    inner: S,
    ring: Arc<KeyRing>,
    migrate_on_load: bool,
}

impl<S> std::fmt::Debug for EncryptedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("ring", &self.ring)
            .field("migrate_on_load", &self.migrate_on_load)
            .finish_non_exhaustive()
    }
}

/// A record opened from the inner store, and whether it should be
/// rewritten under the primary key in the current format.
struct Opened {
    record: SessionRecord,
    stale: bool,
}

impl<S: SessionStore> EncryptedStore<S> {
    /// Encrypts everything written to `inner` under `ring`'s primary key.
    pub fn new(inner: S, ring: KeyRing) -> Self {
        Self {
            inner,
            ring: Arc::new(ring),
            migrate_on_load: true,
        }
    }

    /// Whether a load re-encrypts a record found under an older key or
    /// format (default `true`; see the type's docs).
    #[must_use]
    pub fn migrate_on_load(mut self, migrate: bool) -> Self {
        self.migrate_on_load = migrate;
        self
    }

    /// The wrapped store (it holds ciphertext).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The key ring.
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    fn seal(&self, key: &StorageKey, record: &SessionRecord) -> SessionRecord {
        let k = self.ring.primary();
        // A fresh random nonce from the thread-local CSPRNG (seeded and
        // periodically reseeded from the OS): 96 random bits per write.
        let mut nonce_bytes = [0u8; NONCE_LEN];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut nonce_bytes);
        let user = record.user_id.as_deref().unwrap_or("").as_bytes();
        let plain_len = 1 + 4 + user.len() + record.data.len();
        let mut out = Vec::with_capacity(HEADER_LEN + plain_len + TAG_LEN);
        out.push(FORMAT_V2);
        out.extend_from_slice(&k.id.to_be_bytes());
        out.extend_from_slice(&nonce_bytes);
        out.push(u8::from(record.user_id.is_some()));
        out.extend_from_slice(&u32::try_from(user.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(user);
        out.extend_from_slice(&record.data);
        let aad = aad(FORMAT_V2, k.id, key, record);
        let nonce = Nonce::<Aes256Gcm>::from(nonce_bytes);
        let tag = k
            .cipher
            .encrypt_inout_detached(&nonce, &aad, (&mut out[HEADER_LEN..]).into())
            .expect("AES-GCM accepts messages of this size");
        out.extend_from_slice(&tag);
        record
            .clone()
            .with_data(Bytes::from(out))
            .with_user_id(record.user_id.as_deref().map(|u| self.ring.user_tag(u)))
            .with_label(record.label.as_deref().map(|l| self.seal_label(key, l)))
    }

    /// Seals a label under the primary key (see "Labels" in the module
    /// docs).
    fn seal_label(&self, key: &StorageKey, label: &str) -> String {
        let k = self.ring.primary();
        let mut nonce_bytes = [0u8; NONCE_LEN];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut nonce_bytes);
        let mut out = Vec::with_capacity(2 + NONCE_LEN + label.len() + TAG_LEN);
        out.extend_from_slice(&k.id.to_be_bytes());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(label.as_bytes());
        let aad = label_aad(k.id, key);
        let nonce = Nonce::<Aes256Gcm>::from(nonce_bytes);
        let tag = k
            .cipher
            .encrypt_inout_detached(&nonce, &aad, (&mut out[2 + NONCE_LEN..]).into())
            .expect("AES-GCM accepts messages of this size");
        out.extend_from_slice(&tag);
        format!("{LABEL_PREFIX}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens what [`EncryptedStore::seal_label`] sealed for the session
    /// under `key`.
    fn open_label(&self, key: &StorageKey, sealed: &str) -> Result<String, String> {
        let raw = sealed
            .strip_prefix(LABEL_PREFIX)
            .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
            .ok_or("the label is not a sealed label")?;
        if raw.len() < 2 + NONCE_LEN + TAG_LEN {
            return Err("the sealed label is truncated".into());
        }
        let key_id = u16::from_be_bytes([raw[0], raw[1]]);
        let k = self.ring.get(key_id).ok_or_else(|| {
            format!("the label is sealed under a key this ring does not hold (key id {key_id})")
        })?;
        let nonce_bytes: [u8; NONCE_LEN] = raw[2..2 + NONCE_LEN].try_into().expect("12 bytes");
        let tag_at = raw.len() - TAG_LEN;
        let tag_bytes: [u8; TAG_LEN] = raw[tag_at..].try_into().expect("16 bytes");
        let mut plain = Zeroizing::new(raw[2 + NONCE_LEN..tag_at].to_vec());
        let aad = label_aad(key_id, key);
        k.cipher
            .decrypt_inout_detached(
                &Nonce::<Aes256Gcm>::from(nonce_bytes),
                &aad,
                plain.as_mut_slice().into(),
                &Tag::<Aes256Gcm>::from(tag_bytes),
            )
            .map_err(|_| format!("label authentication failed under key id {key_id}"))?;
        std::str::from_utf8(&plain)
            .map(str::to_owned)
            .map_err(|_| "the label is not UTF-8".to_owned())
    }

    fn open(&self, key: &StorageKey, stored: SessionRecord) -> StoreResult<Opened> {
        let corrupt = |why: String| StoreError::Corrupt(format!("encrypted record: {why}"));
        let raw = &stored.data;
        if raw.len() < HEADER_LEN + TAG_LEN {
            return Err(corrupt("truncated".into()));
        }
        let format = raw[0];
        if format != FORMAT_V1 && format != FORMAT_V2 {
            return Err(corrupt(format!("unknown format version {format}")));
        }
        let key_id = u16::from_be_bytes([raw[1], raw[2]]);
        let k = self.ring.get(key_id).ok_or_else(|| {
            corrupt(format!(
                "written under a key this ring does not hold (key id {key_id}; the ring holds {:?})",
                self.ring.key_ids()
            ))
        })?;
        let nonce_bytes: [u8; NONCE_LEN] = raw[3..HEADER_LEN].try_into().expect("12 bytes");
        let nonce = Nonce::<Aes256Gcm>::from(nonce_bytes);
        let tag_at = raw.len() - TAG_LEN;
        let tag_bytes: [u8; TAG_LEN] = raw[tag_at..].try_into().expect("16 bytes");
        let tag = Tag::<Aes256Gcm>::from(tag_bytes);
        let mut plain = Zeroizing::new(raw[HEADER_LEN..tag_at].to_vec());
        let aad = aad(format, key_id, key, &stored);
        k.cipher
            .decrypt_inout_detached(&nonce, &aad, plain.as_mut_slice().into(), &tag)
            .map_err(|_| {
                corrupt(format!(
                    "authentication failed under key id {key_id} (tampered, moved to another \
                     storage key or version, or written under another key with this id)"
                ))
            })?;
        if plain.len() < 5 || plain[0] > 1 {
            return Err(corrupt("bad plaintext header".into()));
        }
        let user_len = u32::from_be_bytes([plain[1], plain[2], plain[3], plain[4]]) as usize;
        let rest = &plain[5..];
        if rest.len() < user_len {
            return Err(corrupt("bad user id length".into()));
        }
        let user_id = if plain[0] == 1 {
            let u = std::str::from_utf8(&rest[..user_len])
                .map_err(|_| corrupt("user id is not UTF-8".into()))?;
            Some(u.to_owned())
        } else {
            None
        };
        self.check_user_tag(stored.user_id.as_deref(), user_id.as_deref())
            .map_err(corrupt)?;
        let label = match stored.label.as_deref() {
            Some(sealed) => Some(self.open_label(key, sealed).map_err(corrupt)?),
            None => None,
        };
        Ok(Opened {
            stale: format != FORMAT_V2 || key_id != self.ring.primary_id(),
            record: stored
                .with_data(Bytes::copy_from_slice(&rest[user_len..]))
                .with_user_id(user_id)
                .with_label(label),
        })
    }

    /// The stored user tag must be the index key's hash of the encrypted
    /// user id: a tag keyed otherwise could not be written again unchanged.
    fn check_user_tag(&self, tag: Option<&str>, user: Option<&str>) -> Result<(), String> {
        match (tag, user) {
            (None, None) => Ok(()),
            (Some(tag), Some(user)) if self.ring.user_tag(user) == tag => Ok(()),
            (Some(tag), Some(_)) => {
                let named = tag
                    .strip_prefix('k')
                    .and_then(|t| t.split_once(':'))
                    .and_then(|(id, _)| id.parse::<u16>().ok());
                Err(match named {
                    Some(id) if id != self.ring.index_key_id() => format!(
                        "the user index entry is keyed with index key {id}, not with this \
                         ring's index key {} (keep `index:{id}:<key>` in the ring to keep \
                         such sessions)",
                        self.ring.index_key_id()
                    ),
                    _ => "the user index entry does not match the encrypted user".to_owned(),
                })
            }
            _ => Err("the user index entry does not match the encrypted user".to_owned()),
        }
    }

    /// Re-encrypts a stale record under the primary key with a
    /// compare-and-set write; returns what the session now is.
    async fn migrate(
        &self,
        key: &StorageKey,
        opened: SessionRecord,
    ) -> StoreResult<Option<SessionRecord>> {
        let next = opened.clone().with_version(opened.version.wrapping_add(1));
        match self
            .inner
            .update(key, opened.version, &self.seal(key, &next))
            .await
        {
            Ok(()) => {
                tracing::debug!(
                    target: "session_encrypted",
                    primary = self.ring.primary_id(),
                    "session re-encrypted under the primary key on load"
                );
                Ok(Some(next))
            }
            // Another request wrote it first (under the primary key, or it
            // will be migrated by the next load) or ended it: read again.
            Err(StoreError::Conflict | StoreError::NotFound) => match self.inner.load(key).await? {
                Some(stored) => self.open(key, stored).map(|o| Some(o.record)),
                None => Ok(None),
            },
            // The record was read; a failed rewrite is retried next time.
            Err(e) => {
                tracing::debug!(target: "session_encrypted", error = %e, "re-encryption on load failed; will retry on the next load");
                Ok(Some(opened))
            }
        }
    }
}

/// The associated data of a sealed label under key `key_id`, of the
/// session stored under `key`.
fn label_aad(key_id: u16, key: &StorageKey) -> Vec<u8> {
    let mut aad = Vec::with_capacity(LABEL_AAD_CONTEXT.len() + 2 + key.as_str().len());
    aad.extend_from_slice(LABEL_AAD_CONTEXT);
    aad.extend_from_slice(&key_id.to_be_bytes());
    aad.extend_from_slice(key.as_str().as_bytes());
    aad
}

/// The associated data of a record in format `format` under key `key_id`,
/// stored under `key`, with `record`'s creation time, absolute deadline
/// and (format 2) version.
pub(crate) fn aad(format: u8, key_id: u16, key: &StorageKey, record: &SessionRecord) -> Vec<u8> {
    let context = if format == FORMAT_V1 {
        AAD_CONTEXT_V1
    } else {
        AAD_CONTEXT_V2
    };
    let mut aad = Vec::with_capacity(context.len() + 3 + 24 + key.as_str().len());
    aad.extend_from_slice(context);
    aad.push(format);
    aad.extend_from_slice(&key_id.to_be_bytes());
    aad.extend_from_slice(&record.created_at.as_unix_millis().to_be_bytes());
    aad.extend_from_slice(&record.absolute_deadline.as_unix_millis().to_be_bytes());
    if format != FORMAT_V1 {
        aad.extend_from_slice(&record.version.to_be_bytes());
    }
    aad.extend_from_slice(key.as_str().as_bytes());
    aad
}

#[async_trait]
impl<S: SessionStore> SessionStore for EncryptedStore<S> {
    async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
        self.inner.create(key, &self.seal(key, record)).await
    }

    async fn create_with(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Created> {
        // Rotation, limit and eviction are the inner store's atomic step;
        // only the new record is sealed (under its own storage key).
        self.inner
            .create_with(key, &self.seal(key, record), options)
            .await
    }

    async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>> {
        let Some(stored) = self.inner.load(key).await? else {
            return Ok(None);
        };
        let opened = self.open(key, stored)?;
        if opened.stale && self.migrate_on_load {
            return self.migrate(key, opened.record).await;
        }
        Ok(Some(opened.record))
    }

    async fn update(
        &self,
        key: &StorageKey,
        expected_version: u64,
        record: &SessionRecord,
    ) -> StoreResult<()> {
        self.inner
            .update(key, expected_version, &self.seal(key, record))
            .await
    }

    async fn touch(
        &self,
        key: &StorageKey,
        last_access: Timestamp,
        idle_deadline: Timestamp,
    ) -> StoreResult<()> {
        self.inner.touch(key, last_access, idle_deadline).await
    }

    async fn delete(&self, key: &StorageKey) -> StoreResult<()> {
        self.inner.delete(key).await
    }

    async fn list_user_sessions(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
        let mut list = self
            .inner
            .list_user_sessions(&self.ring.user_tag(user_id))
            .await?;
        for summary in &mut list {
            let Some(sealed) = summary.label.take() else {
                continue;
            };
            match self.open_label(&summary.key, &sealed) {
                Ok(label) => summary.label = Some(label),
                // Listed without its label; its load fails on its own.
                Err(why) => tracing::debug!(
                    target: "session_encrypted",
                    session = %summary.key,
                    reason = why,
                    "a session's label did not open; listed without it"
                ),
            }
        }
        Ok(list)
    }

    async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
        self.inner.delete_user(&self.ring.user_tag(user_id)).await
    }

    async fn delete_expired(&self) -> StoreResult<u64> {
        self.inner.delete_expired().await
    }
}
