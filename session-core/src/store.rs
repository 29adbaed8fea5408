//! The storage contract every backend implements: [`SessionStore`].
//!
//! Stores see [`StorageKey`]s (one-way hashes of session IDs) and
//! [`SessionRecord`]s (opaque bytes plus metadata). They never see a bearer
//! session ID and never interpret the data. The conformance suite
//! (`conformance` feature) checks every rule written here.

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::Timestamp;
use crate::key::StorageKey;
use crate::record::{SessionRecord, SessionSummary};

/// A boxed error from a backend driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in a store operation.
///
/// Messages never contain session data, keys of live sessions' IDs, or
/// secrets; backends must keep it that way in the errors they wrap.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `create` found a live record under the key; nothing was written.
    #[error("a session record already exists under this key")]
    AlreadyExists,
    /// `update` was given a version that is no longer current: another writer
    /// saved first. Reload, re-apply the change and retry.
    #[error("the session was changed by another request (stale version)")]
    Conflict,
    /// `update` or `touch` found no live record under the key (never
    /// created, deleted, or expired).
    #[error("no live session record under this key")]
    NotFound,
    /// The record is too large for this backend; nothing was written.
    #[error("session record of {size} bytes exceeds this store's limit of {limit} bytes")]
    TooLarge {
        /// Size of the rejected record in bytes.
        size: usize,
        /// The backend's limit in bytes.
        limit: usize,
    },
    /// A stored record could not be decoded or authenticated (truncated,
    /// tampered, written by another deployment). The manager treats it as
    /// "no session".
    #[error("stored session record is unreadable: {0}")]
    Corrupt(String),
    /// The backend could not be reached or did not answer in time. Check that
    /// the server is running and the URL is right; the store reconnects by
    /// itself.
    #[error("session store unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The backend answered with an error.
    #[error("session store backend error: {0}")]
    Backend(#[source] BoxError),
}

impl StoreError {
    /// Wraps a connectivity error.
    pub fn unavailable(e: impl Into<BoxError>) -> Self {
        Self::Unavailable(e.into())
    }

    /// Wraps a backend error.
    pub fn backend(e: impl Into<BoxError>) -> Self {
        Self::Backend(e.into())
    }
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A place to keep session records.
///
/// Object-safe: `Arc<dyn SessionStore>` is what the manager holds. All
/// methods take `&self` and must be safe to call concurrently.
///
/// "Live" below means: present and `now < min(idle_deadline,
/// absolute_deadline)`, with "now" as the store sees it (its own clock or its
/// server's). A record that is not live must behave exactly as if absent,
/// whatever the backend's TTL granularity.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Inserts a new record under `key`.
    ///
    /// Insert-only: if a live record exists under `key` this returns
    /// [`StoreError::AlreadyExists`] and leaves it untouched; it never
    /// overwrites. If `record.user_id` is set, the key joins that user's
    /// index in the same operation (or, where the backend cannot do both
    /// atomically, the index entry is written first, so a failure leaves at
    /// most a stale index entry, never an unindexed live session).
    async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()>;

    /// Returns the live record under `key`, or `None`.
    ///
    /// Never returns a record whose earlier deadline has passed, even if the
    /// backend has not evicted it yet.
    async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>>;

    /// Replaces the record under `key` if and only if its stored version
    /// equals `expected_version` (compare-and-set).
    ///
    /// `record.version` is the new version and must differ from
    /// `expected_version` (the manager uses `expected_version + 1`). Returns
    /// [`StoreError::Conflict`] if a live record has another version, and
    /// [`StoreError::NotFound`] if there is no live record; in both cases
    /// nothing is written. `record.user_id` must equal the stored one (it is
    /// fixed at creation); stores may ignore a different value.
    async fn update(
        &self,
        key: &StorageKey,
        expected_version: u64,
        record: &SessionRecord,
    ) -> StoreResult<()>;

    /// Moves a live record's idle deadline and last-access time without
    /// rewriting its data or changing its version.
    ///
    /// The caller caps `idle_deadline` at the absolute deadline. Returns
    /// [`StoreError::NotFound`] if there is no live record; touch never
    /// resurrects an expired one.
    async fn touch(
        &self,
        key: &StorageKey,
        last_access: Timestamp,
        idle_deadline: Timestamp,
    ) -> StoreResult<()>;

    /// Deletes the record under `key` and its index entry. Idempotent:
    /// deleting a missing key succeeds.
    async fn delete(&self, key: &StorageKey) -> StoreResult<()>;

    /// Lists the live sessions of `user_id`, in no particular order.
    ///
    /// Never includes expired or deleted sessions; stores may prune stale
    /// index entries while listing.
    async fn list_user(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>>;

    /// Deletes every session of `user_id` and its index; returns how many
    /// live sessions were deleted. After it returns, none of them loads.
    async fn delete_user(&self, user_id: &str) -> StoreResult<u64>;

    /// Removes expired records, for stores without server-side expiry;
    /// returns how many were removed. A no-op returning 0 where the server
    /// expires keys itself.
    async fn delete_expired(&self) -> StoreResult<u64>;
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        #[async_trait]
        impl<S: SessionStore + ?Sized> SessionStore for $ty {
            async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
                (**self).create(key, record).await
            }
            async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>> {
                (**self).load(key).await
            }
            async fn update(&self, key: &StorageKey, expected_version: u64, record: &SessionRecord) -> StoreResult<()> {
                (**self).update(key, expected_version, record).await
            }
            async fn touch(&self, key: &StorageKey, last_access: Timestamp, idle_deadline: Timestamp) -> StoreResult<()> {
                (**self).touch(key, last_access, idle_deadline).await
            }
            async fn delete(&self, key: &StorageKey) -> StoreResult<()> {
                (**self).delete(key).await
            }
            async fn list_user(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
                (**self).list_user(user_id).await
            }
            async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
                (**self).delete_user(user_id).await
            }
            async fn delete_expired(&self) -> StoreResult<u64> {
                (**self).delete_expired().await
            }
        }
    )*};
}

forward_store!(Arc<S>, Box<S>);
