//! AES-256-GCM encryption at rest for any [`session_core::SessionStore`].
//!
//! - [`key`]: [`EncryptionKey`] (zeroized, redacted) and the rotating
//!   [`KeyRing`] (one primary key encrypts, older keys still decrypt, one
//!   index key keys the user tags). Its docs give the rotation procedure:
//!   add a key, let sessions move to it, retire the old one.
//! - [`store`]: [`EncryptedStore`], a store wrapper that keeps only
//!   ciphertext and keyed hashes of user ids in the inner store. Its module
//!   docs give the stored layout and **what an attacker who can write to the
//!   inner store can and cannot do**.
//!
//! Errors and `Debug` output never show key material (keys, rings and
//! [`KeyError`]s are redacted), storage keys, or the inner store's
//! credentials (the backends redact those, and this crate passes their
//! errors on unchanged).
//!
//! Rotation is tested through the session manager on every backend
//! (MemoryStore, Redis, Redis Cluster, PostgreSQL, Memcached), with racing
//! requests on sessions written under the old key.
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
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations)]

#[doc(hidden)]
pub mod fuzzing;
pub mod key;
pub mod store;

pub use crate::key::{EncryptionKey, KeyError, KeyRing};
pub use crate::store::EncryptedStore;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
