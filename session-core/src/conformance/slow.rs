//! [`SlowStore`]: a decorator that widens every race window.

use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Timestamp;
use crate::key::StorageKey;
use crate::record::{SessionRecord, SessionSummary};
use crate::store::{CreateOptions, Created, SessionStore, StoreResult};

/// Wraps a store and sleeps `delay` before and after every call, so the
/// gaps between the store calls of one manager operation (load, then
/// rotate, then commit) are wide enough for racing requests to fall into
/// them every time. The store's own calls stay as atomic as they are.
///
/// ```
/// use std::time::Duration;
/// use session_core::conformance::SlowStore;
/// use session_core::{MemoryStore, SessionManager};
///
/// let manager = SessionManager::new(SlowStore::new(MemoryStore::new(), Duration::from_millis(5)));
/// # let _ = manager;
/// ```
#[derive(Debug, Clone)]
pub struct SlowStore<S> {
    inner: S,
    delay: Duration,
}

impl<S: SessionStore> SlowStore<S> {
    /// Wraps `inner`, sleeping `delay` before and after each call.
    pub fn new(inner: S, delay: Duration) -> Self {
        Self { inner, delay }
    }

    async fn pause(&self) {
        tokio::time::sleep(self.delay).await;
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for SlowStore<S> {
    async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
        self.pause().await;
        let r = self.inner.create(key, record).await;
        self.pause().await;
        r
    }
    async fn create_with(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Created> {
        self.pause().await;
        let r = self.inner.create_with(key, record, options).await;
        self.pause().await;
        r
    }
    async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>> {
        self.pause().await;
        let r = self.inner.load(key).await;
        self.pause().await;
        r
    }
    async fn update(&self, key: &StorageKey, v: u64, record: &SessionRecord) -> StoreResult<()> {
        self.pause().await;
        let r = self.inner.update(key, v, record).await;
        self.pause().await;
        r
    }
    async fn touch(&self, key: &StorageKey, a: Timestamp, i: Timestamp) -> StoreResult<()> {
        self.pause().await;
        let r = self.inner.touch(key, a, i).await;
        self.pause().await;
        r
    }
    async fn delete(&self, key: &StorageKey) -> StoreResult<()> {
        self.pause().await;
        let r = self.inner.delete(key).await;
        self.pause().await;
        r
    }
    async fn list_user(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
        self.pause().await;
        let r = self.inner.list_user(user_id).await;
        self.pause().await;
        r
    }
    async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
        self.pause().await;
        let r = self.inner.delete_user(user_id).await;
        self.pause().await;
        r
    }
    async fn delete_expired(&self) -> StoreResult<u64> {
        self.pause().await;
        let r = self.inner.delete_expired().await;
        self.pause().await;
        r
    }
}
