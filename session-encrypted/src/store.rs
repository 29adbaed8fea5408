//! [`EncryptedStore`]: AES-256-GCM encryption at rest around any store.
//!
//! Stored `data` layout (all integers big-endian):
//!
//! ```text
//! format (1 byte = 1) | key id (2) | nonce (12) | ciphertext | tag (16)
//! ```
//!
//! The plaintext is `user flag (1) | user id length (4) | user id | data`.
//! The associated data binds the format version, the key id, the storage key,
//! the creation time and the absolute deadline, so a ciphertext copied under
//! another key, or with its lifetime extended, fails to decrypt. The inner
//! store's per-user index sees only `k<id>:<keyed BLAKE3 of the user id>`.

use std::sync::Arc;

use aes_gcm::aead::{AeadInOut, Nonce, Tag};
use aes_gcm::Aes256Gcm;
use async_trait::async_trait;
use bytes::Bytes;
use session_core::{
    CreateOptions, Created, SessionRecord, SessionStore, SessionSummary, StorageKey, StoreError,
    StoreResult, Timestamp,
};
use zeroize::Zeroizing;

use crate::key::{KeyRing, RingKey};

pub(crate) const FORMAT_V1: u8 = 1;
const AAD_CONTEXT: &[u8] = b"session-encrypted/v1\0";
pub(crate) const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
pub(crate) const HEADER_LEN: usize = 1 + 2 + NONCE_LEN;

/// Wraps a [`SessionStore`] so that it holds only ciphertext and hashed user
/// ids. It is itself a `SessionStore` and passes the same conformance suite.
///
/// Records that fail to decrypt (tampered, truncated, foreign, unknown key)
/// load as [`StoreError::Corrupt`], which the manager treats as "no session".
pub struct EncryptedStore<S> {
    inner: S,
    ring: Arc<KeyRing>,
}

impl<S> std::fmt::Debug for EncryptedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("ring", &self.ring)
            .finish_non_exhaustive()
    }
}

impl<S: SessionStore> EncryptedStore<S> {
    /// Encrypts everything written to `inner` under `ring`'s primary key.
    pub fn new(inner: S, ring: KeyRing) -> Self {
        Self {
            inner,
            ring: Arc::new(ring),
        }
    }

    /// The wrapped store (it holds ciphertext).
    pub fn inner(&self) -> &S {
        &self.inner
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
        out.push(FORMAT_V1);
        out.extend_from_slice(&k.id.to_be_bytes());
        out.extend_from_slice(&nonce_bytes);
        out.push(u8::from(record.user_id.is_some()));
        out.extend_from_slice(&u32::try_from(user.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(user);
        out.extend_from_slice(&record.data);
        let aad = aad(k.id, key, record.created_at, record.absolute_deadline);
        let nonce = Nonce::<Aes256Gcm>::from(nonce_bytes);
        let tag = k
            .cipher
            .encrypt_inout_detached(&nonce, &aad, (&mut out[HEADER_LEN..]).into())
            .expect("AES-GCM accepts messages of this size");
        out.extend_from_slice(&tag);
        SessionRecord {
            data: Bytes::from(out),
            user_id: record.user_id.as_deref().map(|u| k.user_tag(u)),
            ..record.clone()
        }
    }

    fn open(&self, key: &StorageKey, stored: SessionRecord) -> StoreResult<SessionRecord> {
        let corrupt = |why: &str| StoreError::Corrupt(format!("encrypted record: {why}"));
        let raw = &stored.data;
        if raw.len() < HEADER_LEN + TAG_LEN {
            return Err(corrupt("truncated"));
        }
        if raw[0] != FORMAT_V1 {
            return Err(corrupt("unknown format version"));
        }
        let key_id = u16::from_be_bytes([raw[1], raw[2]]);
        let k = self
            .ring
            .get(key_id)
            .ok_or_else(|| corrupt("written under a key that is not in the key ring"))?;
        let nonce_bytes: [u8; NONCE_LEN] = raw[3..HEADER_LEN].try_into().expect("12 bytes");
        let nonce = Nonce::<Aes256Gcm>::from(nonce_bytes);
        let tag_at = raw.len() - TAG_LEN;
        let tag_bytes: [u8; TAG_LEN] = raw[tag_at..].try_into().expect("16 bytes");
        let tag = Tag::<Aes256Gcm>::from(tag_bytes);
        let mut plain = Zeroizing::new(raw[HEADER_LEN..tag_at].to_vec());
        let aad = aad(key_id, key, stored.created_at, stored.absolute_deadline);
        k.cipher
            .decrypt_inout_detached(&nonce, &aad, plain.as_mut_slice().into(), &tag)
            .map_err(|_| corrupt("authentication failed (tampered, moved or foreign)"))?;
        if plain.len() < 5 || plain[0] > 1 {
            return Err(corrupt("bad plaintext header"));
        }
        let user_len = u32::from_be_bytes([plain[1], plain[2], plain[3], plain[4]]) as usize;
        let rest = &plain[5..];
        if rest.len() < user_len {
            return Err(corrupt("bad user id length"));
        }
        let user_id = if plain[0] == 1 {
            let u = std::str::from_utf8(&rest[..user_len]).map_err(|_| corrupt("user id"))?;
            Some(u.to_owned())
        } else {
            None
        };
        if !self.user_tag_matches(stored.user_id.as_deref(), user_id.as_deref()) {
            return Err(corrupt(
                "user index entry does not match the encrypted user",
            ));
        }
        Ok(SessionRecord {
            data: Bytes::copy_from_slice(&rest[user_len..]),
            user_id,
            ..stored
        })
    }

    /// The stored user tag must be the keyed hash of the encrypted user id,
    /// under the key it names (the key current when the record was created).
    fn user_tag_matches(&self, tag: Option<&str>, user: Option<&str>) -> bool {
        match (tag, user) {
            (None, None) => true,
            (Some(tag), Some(user)) => tag
                .strip_prefix('k')
                .and_then(|t| t.split_once(':'))
                .and_then(|(id, _)| id.parse::<u16>().ok())
                .and_then(|id| self.ring.get(id))
                .is_some_and(|k| k.user_tag(user) == tag),
            _ => false,
        }
    }

    fn user_tags(&self, user_id: &str) -> impl Iterator<Item = String> + '_ {
        let user_id = user_id.to_owned();
        self.ring
            .keys
            .iter()
            .map(move |k: &RingKey| k.user_tag(&user_id))
    }
}

pub(crate) fn aad(
    key_id: u16,
    key: &StorageKey,
    created: Timestamp,
    absolute: Timestamp,
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_CONTEXT.len() + 3 + key.as_str().len() + 16);
    aad.extend_from_slice(AAD_CONTEXT);
    aad.push(FORMAT_V1);
    aad.extend_from_slice(&key_id.to_be_bytes());
    aad.extend_from_slice(&created.as_unix_millis().to_be_bytes());
    aad.extend_from_slice(&absolute.as_unix_millis().to_be_bytes());
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
        match self.inner.load(key).await? {
            Some(stored) => self.open(key, stored).map(Some),
            None => Ok(None),
        }
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

    async fn list_user(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
        let mut all = Vec::new();
        for tag in self.user_tags(user_id) {
            all.extend(self.inner.list_user(&tag).await?);
        }
        Ok(all)
    }

    async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
        let mut n = 0;
        for tag in self.user_tags(user_id) {
            n += self.inner.delete_user(&tag).await?;
        }
        Ok(n)
    }

    async fn delete_expired(&self) -> StoreResult<u64> {
        self.inner.delete_expired().await
    }
}
