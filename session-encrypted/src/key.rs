//! Encryption keys and the key ring.

use std::fmt;

use aes_gcm::{Aes256Gcm, KeyInit};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use zeroize::Zeroizing;

const INDEX_CONTEXT: &str = "session-encrypted 2026-11 user index v1";

/// Why a key or key ring could not be built. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is not 32 bytes (AES-256).
    #[error("an encryption key must be 32 bytes (AES-256), got {0} bytes; generate one with `openssl rand -base64 32`")]
    WrongLength(usize),
    /// The key is not valid base64.
    #[error("the encryption key is not valid base64 (standard or URL-safe alphabet)")]
    NotBase64,
    /// A key id in a key list is not a number from 0 to 65535.
    #[error("key ids must be numbers from 0 to 65535 (format: `id:base64key,id:base64key`, primary first)")]
    BadKeyId,
    /// Two keys share an id.
    #[error("key id {0} appears twice in the key ring")]
    DuplicateKeyId(u16),
    /// The environment variable is not set.
    #[error("environment variable {0} is not set")]
    MissingVar(String),
}

/// A 256-bit AES-GCM key. Zeroized on drop; redacted in `Debug`.
#[derive(Clone)]
pub struct EncryptionKey(Zeroizing<[u8; 32]>);

impl EncryptionKey {
    /// Builds a key from exactly 32 bytes.
    ///
    /// # Errors
    ///
    /// [`KeyError::WrongLength`] for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(Self(Zeroizing::new(arr)))
    }

    /// Parses a base64 key (standard alphabet with padding, as
    /// `openssl rand -base64 32` prints, or URL-safe without padding).
    ///
    /// # Errors
    ///
    /// [`KeyError::NotBase64`] or [`KeyError::WrongLength`].
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text)
                .or_else(|_| URL_SAFE_NO_PAD.decode(text))
                .map_err(|_| KeyError::NotBase64)?,
        );
        Self::from_bytes(&bytes)
    }

    /// A fresh random key from the OS CSPRNG.
    ///
    /// # Panics
    ///
    /// If the operating system cannot provide random bytes.
    #[must_use]
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(k.as_mut()).expect("the operating system CSPRNG failed");
        Self(k)
    }

    /// The key as standard base64, for storing it in a secret manager.
    #[must_use]
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_ref()))
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

pub(crate) struct RingKey {
    pub(crate) id: u16,
    pub(crate) cipher: Aes256Gcm,
    pub(crate) index_key: Zeroizing<[u8; 32]>,
}

/// One primary key that encrypts, plus older keys that still decrypt.
///
/// Every ciphertext names its key by id, so keys rotate without downtime:
/// add the new key as primary, keep the old one until every session
/// written under it has expired (the absolute lifetime) or been rewritten.
pub struct KeyRing {
    pub(crate) keys: Vec<RingKey>,
}

impl KeyRing {
    /// A ring with one key, which is the primary.
    #[must_use]
    pub fn new(id: u16, key: EncryptionKey) -> Self {
        Self {
            keys: vec![ring_key(id, &key)],
        }
    }

    /// Adds an older key that still decrypts (never encrypts).
    ///
    /// # Errors
    ///
    /// [`KeyError::DuplicateKeyId`] if `id` is already in the ring.
    pub fn with_old_key(mut self, id: u16, key: EncryptionKey) -> Result<Self, KeyError> {
        if self.keys.iter().any(|k| k.id == id) {
            return Err(KeyError::DuplicateKeyId(id));
        }
        self.keys.push(ring_key(id, &key));
        Ok(self)
    }

    /// Parses a key ring: either one base64 key (id 1), or
    /// `id:base64key,id:base64key,...` with the primary first.
    ///
    /// # Errors
    ///
    /// [`KeyError`] for malformed input; the message never includes key
    /// material.
    pub fn parse(spec: &str) -> Result<Self, KeyError> {
        let mut ring: Option<KeyRing> = None;
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, key) = match part.split_once(':') {
                Some((id, key)) => (
                    id.trim().parse::<u16>().map_err(|_| KeyError::BadKeyId)?,
                    key,
                ),
                None => (1, part),
            };
            let key = EncryptionKey::from_base64(key)?;
            ring = Some(match ring {
                None => KeyRing::new(id, key),
                Some(r) => r.with_old_key(id, key)?,
            });
        }
        ring.ok_or(KeyError::WrongLength(0))
    }

    /// Reads [`KeyRing::parse`]'s format from environment variable `var`.
    ///
    /// # Errors
    ///
    /// [`KeyError::MissingVar`] or a parse error.
    pub fn from_env(var: &str) -> Result<Self, KeyError> {
        let value =
            Zeroizing::new(std::env::var(var).map_err(|_| KeyError::MissingVar(var.to_owned()))?);
        Self::parse(&value)
    }

    /// The id of the primary key.
    #[must_use]
    pub fn primary_id(&self) -> u16 {
        self.keys[0].id
    }

    /// The ids of all keys, primary first.
    #[must_use]
    pub fn key_ids(&self) -> Vec<u16> {
        self.keys.iter().map(|k| k.id).collect()
    }

    pub(crate) fn primary(&self) -> &RingKey {
        &self.keys[0]
    }

    pub(crate) fn get(&self, id: u16) -> Option<&RingKey> {
        self.keys.iter().find(|k| k.id == id)
    }
}

fn ring_key(id: u16, key: &EncryptionKey) -> RingKey {
    RingKey {
        id,
        cipher: Aes256Gcm::new_from_slice(key.0.as_ref()).expect("a 32-byte key fits AES-256"),
        index_key: Zeroizing::new(blake3::derive_key(INDEX_CONTEXT, key.0.as_ref())),
    }
}

impl RingKey {
    /// The keyed hash that stands for `user_id` in the inner store.
    pub(crate) fn user_tag(&self, user_id: &str) -> String {
        format!(
            "k{}:{}",
            self.id,
            blake3::keyed_hash(&self.index_key, user_id.as_bytes()).to_hex()
        )
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("primary", &self.primary_id())
            .field("key_ids", &self.key_ids())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_lengths_are_typed_errors() {
        assert_eq!(
            EncryptionKey::from_bytes(&[0; 31]).unwrap_err(),
            KeyError::WrongLength(31)
        );
        assert_eq!(
            EncryptionKey::from_bytes(&[0; 33]).unwrap_err(),
            KeyError::WrongLength(33)
        );
        let short = STANDARD.encode([7u8; 16]);
        assert_eq!(
            EncryptionKey::from_base64(&short).unwrap_err(),
            KeyError::WrongLength(16)
        );
        assert_eq!(
            EncryptionKey::from_base64("not base64!").unwrap_err(),
            KeyError::NotBase64
        );
    }

    #[test]
    fn parses_single_key_and_lists() {
        let a = EncryptionKey::generate();
        let b = EncryptionKey::generate();
        let ring = KeyRing::parse(&a.to_base64()).unwrap();
        assert_eq!(ring.key_ids(), vec![1]);
        let spec = format!("7:{}, 3:{}", a.to_base64().as_str(), b.to_base64().as_str());
        let ring = KeyRing::parse(&spec).unwrap();
        assert_eq!(ring.primary_id(), 7);
        assert_eq!(ring.key_ids(), vec![7, 3]);
        let dup = format!("7:{},7:{}", a.to_base64().as_str(), b.to_base64().as_str());
        assert_eq!(
            KeyRing::parse(&dup).unwrap_err(),
            KeyError::DuplicateKeyId(7)
        );
        assert_eq!(KeyRing::parse("x:abc").unwrap_err(), KeyError::BadKeyId);
        assert!(KeyRing::parse("").is_err());
    }

    #[test]
    fn nothing_secret_in_debug_or_errors() {
        let k = EncryptionKey::generate();
        let text = k.to_base64();
        let ring = KeyRing::new(1, k.clone());
        for shown in [format!("{k:?}"), format!("{ring:?}")] {
            assert!(!shown.contains(text.as_str()));
        }
        let bad = format!("1:{}", &text[..20]);
        let err = KeyRing::parse(&bad).unwrap_err().to_string();
        assert!(!err.contains(&text[..20]));
    }

    #[test]
    fn missing_env_var_is_reported() {
        assert_eq!(
            KeyRing::from_env("SESSION_ENCRYPTED_TEST_UNSET_VAR").unwrap_err(),
            KeyError::MissingVar("SESSION_ENCRYPTED_TEST_UNSET_VAR".into())
        );
    }
}
