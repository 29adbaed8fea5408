//! The background deletion of expired rows:
//! [`PostgresStore::spawn_cleanup`](crate::PostgresStore::spawn_cleanup)
//! runs a [`session_core::ExpiryTask`] whose step is one batch.
//!
//! Expired rows never load (every read filters on `expires_at > now()`);
//! clean-up only reclaims space. Each round deletes batches of at most
//! [`cleanup_batch_size`](crate::PostgresStoreBuilder::cleanup_batch_size)
//! rows with `FOR UPDATE SKIP LOCKED`, so instances running it at the same
//! time share the work instead of waiting on each other, and no statement
//! holds many row locks for long. A stop request is honoured between
//! batches.

use std::sync::{Arc, Weak};
use std::time::Duration;

use session_core::ExpiryTask;

use crate::store::Inner;

/// Shortest accepted clean-up period; shorter ones are raised to it.
pub const MIN_CLEANUP_PERIOD: Duration = Duration::from_millis(10);

/// The former type of
/// [`PostgresStore::spawn_cleanup`](crate::PostgresStore::spawn_cleanup)'s
/// handle: now the [`ExpiryTask`] every store's background deletion
/// shares.
#[deprecated(note = "PostgresStore::spawn_cleanup returns a session_core::ExpiryTask")]
pub type CleanupTask = ExpiryTask;

/// The clean-up task of `store`: one batch a step, every `period` (at least
/// [`MIN_CLEANUP_PERIOD`]).
pub(crate) fn spawn(store: Weak<Inner>, period: Duration) -> ExpiryTask {
    ExpiryTask::spawn_batches(
        store,
        period.max(MIN_CLEANUP_PERIOD),
        |inner: Arc<Inner>| async move { inner.delete_expired_batch().await },
    )
}
