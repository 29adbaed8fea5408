//! Encryption keys and the key ring.

use std::fmt;

use aes_gcm::{Aes256Gcm, KeyInit};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use zeroize::Zeroizing;

const INDEX_CONTEXT: &str = "session-encrypted 2026-11 user index v1";
const KEY_CHECK_CONTEXT: &str = "session-encrypted 2026-11 key check v1";
/// Bytes of the key check stored with each record.
pub(crate) const KEY_CHECK_LEN: usize = 4;

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
    /// The key ring names no encryption key.
    #[error(
        "the key ring names no encryption key (format: `id:base64key,id:base64key`, primary first)"
    )]
    NoKey,
    /// The key ring names two index keys.
    #[error("the key ring names more than one `index:` key")]
    DuplicateIndexKey,
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
    /// Tells this key from another key with the same id, nothing more:
    /// the first bytes of a BLAKE3 key derivation from it.
    pub(crate) check: [u8; KEY_CHECK_LEN],
}

/// The secret that keys the user tags the inner store indexes sessions by.
pub(crate) struct IndexKey {
    pub(crate) id: u16,
    key: Zeroizing<[u8; 32]>,
}

/// One primary key that encrypts, older keys that still decrypt, and the
/// index key that keys the user tags.
///
/// # Rotation
///
/// Every ciphertext names its key by id, so keys rotate without downtime
/// (the ids are examples):
///
/// 1. **Start** with `1:K1`. Sessions are encrypted under key 1.
/// 2. **Add** a key as primary: `2:K2,1:K1`. Every session keeps working,
///    reads and writes; each session moves to key 2 on its next write, or
///    on its next load when the store migrates on load (the default, see
///    [`EncryptedStore::migrate_on_load`](crate::EncryptedStore::migrate_on_load)).
/// 3. **Retire** key 1 once the sessions you want to keep have been
///    rewritten (an active session is rewritten on its first request after
///    step 2; an idle one at the latest when it expires): `2:K2,index:1:K1`,
///    or `2:K2` if the ring has a dedicated index key. Sessions rewritten
///    under key 2 keep working; the rest load as "no session" (logged as
///    written under an encryption key id "which is missing from this key
///    ring"), never as an error.
///
/// # The index key
///
/// The inner store indexes logged-in sessions by user (for listings, the
/// per-user limit and "log out everywhere") under a *user tag*: a keyed
/// BLAKE3 hash of the user id, so the store never sees user ids. The tag
/// must not change while a session lives (a store refuses to change a
/// session's user), so it is keyed with one **index key** that outlives
/// encryption keys:
///
/// - set explicitly with [`KeyRing::with_index_key`] or an
///   `index:<id>:<base64>` entry in [`KeyRing::parse`]: recommended for new
///   deployments (`index:0:<random>,1:<random>`), after which encryption
///   keys rotate and retire freely;
/// - otherwise derived from the **last** key of the ring (the oldest, since
///   the primary is first; the only key of a one-key ring). Retiring that key
///   then means keeping it as `index:<id>:<key>`: it no longer decrypts
///   anything, it only keys the tags.
///
/// A session whose tag was keyed with another index key (written under an
/// earlier ring whose index differed) loads as "no session".
pub struct KeyRing {
    pub(crate) keys: Vec<RingKey>,
    index: IndexKey,
    index_is_explicit: bool,
}

impl KeyRing {
    /// A ring with one key, which is the primary and (until an index key is
    /// set) also keys the user tags.
    #[must_use]
    pub fn new(id: u16, key: EncryptionKey) -> Self {
        Self {
            keys: vec![ring_key(id, &key)],
            index: index_key(id, &key),
            index_is_explicit: false,
        }
    }

    /// Adds an older key that still decrypts (never encrypts). Unless an
    /// index key was set explicitly, the index key becomes this key (the
    /// last key of the ring is the oldest).
    ///
    /// # Errors
    ///
    /// [`KeyError::DuplicateKeyId`] if `id` is already in the ring.
    pub fn with_old_key(mut self, id: u16, key: EncryptionKey) -> Result<Self, KeyError> {
        if self.keys.iter().any(|k| k.id == id) {
            return Err(KeyError::DuplicateKeyId(id));
        }
        self.keys.push(ring_key(id, &key));
        if !self.index_is_explicit {
            self.index = index_key(id, &key);
        }
        Ok(self)
    }

    /// Sets the index key that keys the user tags (see the type's docs). It
    /// may be a retired encryption key (it then decrypts nothing) or a
    /// dedicated random key. `id` names it in the tags, as `k<id>:`.
    #[must_use]
    pub fn with_index_key(mut self, id: u16, key: EncryptionKey) -> Self {
        self.index = index_key(id, &key);
        self.index_is_explicit = true;
        self
    }

    /// Parses a key ring: either one base64 key (id 1), or a list of
    /// `id:base64key` entries with the primary first, plus at most one
    /// `index:id:base64key` entry naming the index key, in any position:
    /// `index:0:<b64>,2:<b64>,1:<b64>`.
    ///
    /// # Errors
    ///
    /// [`KeyError`] for malformed input; the message never includes key
    /// material.
    pub fn parse(spec: &str) -> Result<Self, KeyError> {
        let mut ring: Option<KeyRing> = None;
        let mut index: Option<(u16, EncryptionKey)> = None;
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(rest) = part.strip_prefix("index:") {
                if index.is_some() {
                    return Err(KeyError::DuplicateIndexKey);
                }
                let (id, key) = rest.split_once(':').ok_or(KeyError::BadKeyId)?;
                let id = id.trim().parse::<u16>().map_err(|_| KeyError::BadKeyId)?;
                index = Some((id, EncryptionKey::from_base64(key)?));
                continue;
            }
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
        let ring = ring.ok_or(KeyError::NoKey)?;
        Ok(match index {
            Some((id, key)) => ring.with_index_key(id, key),
            None => ring,
        })
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

    /// The ids of all keys that decrypt, primary first.
    #[must_use]
    pub fn key_ids(&self) -> Vec<u16> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// The id of the index key (see the type's docs).
    #[must_use]
    pub fn index_key_id(&self) -> u16 {
        self.index.id
    }

    pub(crate) fn primary(&self) -> &RingKey {
        &self.keys[0]
    }

    pub(crate) fn get(&self, id: u16) -> Option<&RingKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// The tag that stands for `user_id` in the inner store.
    pub(crate) fn user_tag(&self, user_id: &str) -> String {
        self.index.user_tag(user_id)
    }
}

fn ring_key(id: u16, key: &EncryptionKey) -> RingKey {
    let derived = Zeroizing::new(blake3::derive_key(KEY_CHECK_CONTEXT, key.0.as_ref()));
    let mut check = [0u8; KEY_CHECK_LEN];
    check.copy_from_slice(&derived[..KEY_CHECK_LEN]);
    RingKey {
        id,
        cipher: Aes256Gcm::new_from_slice(key.0.as_ref()).expect("a 32-byte key fits AES-256"),
        check,
    }
}

fn index_key(id: u16, key: &EncryptionKey) -> IndexKey {
    IndexKey {
        id,
        key: Zeroizing::new(blake3::derive_key(INDEX_CONTEXT, key.0.as_ref())),
    }
}

impl IndexKey {
    /// The keyed hash that stands for `user_id` in the inner store:
    /// `k<id>:<64 hex digits>`.
    pub(crate) fn user_tag(&self, user_id: &str) -> String {
        format!(
            "k{}:{}",
            self.id,
            session_core::codec::UserTag::keyed(&self.key, user_id.as_bytes()).to_hex()
        )
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("primary", &self.primary_id())
            .field("key_ids", &self.key_ids())
            .field("index_key", &self.index_key_id())
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
    fn the_index_key_is_the_oldest_key_unless_named() {
        let (a, b, i) = (
            EncryptionKey::generate(),
            EncryptionKey::generate(),
            EncryptionKey::generate(),
        );
        let (a64, b64, i64) = (a.to_base64(), b.to_base64(), i.to_base64());
        let one = KeyRing::parse(&format!("1:{}", a64.as_str())).unwrap();
        let two = KeyRing::parse(&format!("2:{},1:{}", b64.as_str(), a64.as_str())).unwrap();
        assert_eq!((one.index_key_id(), two.index_key_id()), (1, 1));
        assert_eq!(one.user_tag("alice"), two.user_tag("alice"));
        assert!(one.user_tag("alice").starts_with("k1:"));
        // Retiring key 1 while keeping it as the index key.
        let retired =
            KeyRing::parse(&format!("2:{},index:1:{}", b64.as_str(), a64.as_str())).unwrap();
        assert_eq!(retired.key_ids(), vec![2]);
        assert_eq!(retired.user_tag("alice"), one.user_tag("alice"));
        // A dedicated index key, in any position.
        let dedicated = KeyRing::parse(&format!(
            "2:{},index:0:{},1:{}",
            b64.as_str(),
            i64.as_str(),
            a64.as_str()
        ))
        .unwrap();
        assert_eq!(dedicated.index_key_id(), 0);
        assert_eq!(dedicated.key_ids(), vec![2, 1]);
        assert_ne!(dedicated.user_tag("alice"), one.user_tag("alice"));
        assert_eq!(
            KeyRing::new(1, a.clone())
                .with_index_key(0, i.clone())
                .user_tag("alice"),
            dedicated.user_tag("alice")
        );
        assert_eq!(
            KeyRing::new(2, b)
                .with_old_key(1, a.clone())
                .unwrap()
                .user_tag("bob"),
            one.user_tag("bob")
        );
        // Malformed index entries.
        let both = format!(
            "index:0:{},index:1:{},1:{}",
            i64.as_str(),
            a64.as_str(),
            a64.as_str()
        );
        assert_eq!(
            KeyRing::parse(&both).unwrap_err(),
            KeyError::DuplicateIndexKey
        );
        assert_eq!(
            KeyRing::parse(&format!("index:0:{}", i64.as_str())).unwrap_err(),
            KeyError::NoKey
        );
        assert_eq!(
            KeyRing::parse("index:x:abc,1:abc").unwrap_err(),
            KeyError::BadKeyId
        );
        assert_eq!(KeyRing::parse("index:abc").unwrap_err(), KeyError::BadKeyId);
        let debug = format!("{dedicated:?}");
        assert!(debug.contains("index_key: 0"), "{debug}");
        assert!(!debug.contains(i64.as_str()));
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
