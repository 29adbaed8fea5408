//! AES-256-GCM encryption at rest for any [`session_core::SessionStore`].
//!
//! - [`key`]: [`EncryptionKey`] (zeroized, redacted) and the rotating
//!   [`KeyRing`] (one primary key encrypts, older keys still decrypt).
//! - [`store`]: [`EncryptedStore`], a store wrapper that keeps only
//!   ciphertext and keyed hashes of user ids in the inner store.
//!
//! ```
//! use session_core::{MemoryStore, SessionManager};
//! use session_encrypted::{EncryptedStore, EncryptionKey, KeyRing};
//!
//! // In production: KeyRing::from_env("SESSION_ENCRYPTION_KEY")?
//! let ring = KeyRing::new(1, EncryptionKey::generate());
//! let manager = SessionManager::new(EncryptedStore::new(MemoryStore::new(), ring));
//! # let _ = manager;
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[doc(hidden)]
pub mod fuzzing;
pub mod key;
pub mod store;

pub use crate::key::{EncryptionKey, KeyError, KeyRing};
pub use crate::store::EncryptedStore;
