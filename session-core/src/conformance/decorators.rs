//! Store decorators for tests: [`HookedStore`] runs [`StoreHooks`] around
//! every call of the store it wraps, and the hooks the suite and the
//! backends' tests need come with it: a delay that widens race windows
//! ([`SlowStore`]) and a per-operation call counter that can also fail
//! every call ([`CallCounter`]). A test that needs a store with something
//! extra (a table dropped when the store goes, a failure switch) writes
//! hooks, not another forwarding `SessionStore` impl.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Timestamp;
use crate::key::StorageKey;
use crate::record::{SessionRecord, SessionSummary};
use crate::store::{CreateOptions, Created, SessionStore, StoreError, StoreResult};

/// Which [`SessionStore`] method a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// [`SessionStore::create`].
    Create,
    /// [`SessionStore::create_with`].
    CreateWith,
    /// [`SessionStore::load`].
    Load,
    /// [`SessionStore::update`].
    Update,
    /// [`SessionStore::touch`].
    Touch,
    /// [`SessionStore::delete`].
    Delete,
    /// [`SessionStore::list_user_sessions`].
    ListUserSessions,
    /// [`SessionStore::delete_user`].
    DeleteUser,
    /// [`SessionStore::delete_expired`].
    DeleteExpired,
}

impl Operation {
    /// Whether the call writes (`create`, `create_with`, `update`).
    #[must_use]
    pub fn is_write(self) -> bool {
        matches!(self, Self::Create | Self::CreateWith | Self::Update)
    }
}

/// What a [`HookedStore`] runs around each call of its inner store.
///
/// Both hooks default to doing nothing, so a type that only needs to live
/// as long as the store (and clean up in its `Drop`) implements this with
/// an empty block.
#[async_trait]
pub trait StoreHooks: Send + Sync + 'static {
    /// Runs before the call; an error is returned instead of making it.
    async fn before(&self, _operation: Operation) -> StoreResult<()> {
        Ok(())
    }

    /// Runs after the call, whatever its outcome.
    async fn after(&self, _operation: Operation) {}
}

/// A store that runs `hooks` before and after every call of `inner`. The
/// calls themselves are forwarded unchanged, so the wrapped store is
/// exactly as atomic as `inner`.
#[derive(Debug, Clone)]
pub struct HookedStore<S, H> {
    inner: S,
    hooks: H,
}

impl<S: SessionStore, H: StoreHooks> HookedStore<S, H> {
    /// Wraps `inner` with `hooks`.
    pub fn new(inner: S, hooks: H) -> Self {
        Self { inner, hooks }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The hooks.
    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    async fn around<T>(
        &self,
        operation: Operation,
        call: impl std::future::Future<Output = StoreResult<T>> + Send,
    ) -> StoreResult<T> {
        self.hooks.before(operation).await?;
        let result = call.await;
        self.hooks.after(operation).await;
        result
    }
}

#[async_trait]
impl<S: SessionStore, H: StoreHooks> SessionStore for HookedStore<S, H> {
    async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
        self.around(Operation::Create, self.inner.create(key, record))
            .await
    }
    async fn create_with(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Created> {
        let call = self.inner.create_with(key, record, options);
        self.around(Operation::CreateWith, call).await
    }
    async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>> {
        self.around(Operation::Load, self.inner.load(key)).await
    }
    async fn update(&self, key: &StorageKey, v: u64, record: &SessionRecord) -> StoreResult<()> {
        self.around(Operation::Update, self.inner.update(key, v, record))
            .await
    }
    async fn touch(&self, key: &StorageKey, at: Timestamp, idle: Timestamp) -> StoreResult<()> {
        self.around(Operation::Touch, self.inner.touch(key, at, idle))
            .await
    }
    async fn delete(&self, key: &StorageKey) -> StoreResult<()> {
        self.around(Operation::Delete, self.inner.delete(key)).await
    }
    async fn list_user_sessions(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
        self.around(
            Operation::ListUserSessions,
            self.inner.list_user_sessions(user_id),
        )
        .await
    }
    async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
        self.around(Operation::DeleteUser, self.inner.delete_user(user_id))
            .await
    }
    async fn delete_expired(&self) -> StoreResult<u64> {
        self.around(Operation::DeleteExpired, self.inner.delete_expired())
            .await
    }
}

/// A delay is a hook: it sleeps that long before and after every call.
#[async_trait]
impl StoreHooks for Duration {
    async fn before(&self, _operation: Operation) -> StoreResult<()> {
        tokio::time::sleep(*self).await;
        Ok(())
    }
    async fn after(&self, _operation: Operation) {
        tokio::time::sleep(*self).await;
    }
}

/// A store that sleeps a fixed delay before and after every call, so the
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
pub type SlowStore<S> = HookedStore<S, Duration>;

type Failure = Arc<dyn Fn(Operation) -> StoreError + Send + Sync>;

/// Hooks that count the calls of each [`Operation`] and, while a failure
/// is set, fail every call with it instead of making it (the counts still
/// include those calls).
#[derive(Default)]
pub struct CallCounter {
    counts: Mutex<HashMap<Operation, usize>>,
    total: AtomicUsize,
    failure: Mutex<Option<Failure>>,
}

impl std::fmt::Debug for CallCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallCounter")
            .field("total", &self.total())
            .field("failing", &self.failure.lock().expect("lock").is_some())
            .finish_non_exhaustive()
    }
}

impl CallCounter {
    /// A counter at zero that fails nothing.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many calls of `operation` were made (or failed by this hook).
    #[must_use]
    pub fn calls(&self, operation: Operation) -> usize {
        self.counts
            .lock()
            .expect("lock")
            .get(&operation)
            .copied()
            .unwrap_or(0)
    }

    /// How many calls of any of `operations` were made.
    #[must_use]
    pub fn calls_of(&self, operations: &[Operation]) -> usize {
        operations.iter().map(|&op| self.calls(op)).sum()
    }

    /// How many calls of any kind were made.
    #[must_use]
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// From now on every call fails with `failure(operation)` instead of
    /// reaching the store; `None` lets calls through again.
    pub fn fail_with(&self, failure: Option<Failure>) {
        *self.failure.lock().expect("lock") = failure;
    }
}

#[async_trait]
impl StoreHooks for CallCounter {
    async fn before(&self, operation: Operation) -> StoreResult<()> {
        *self
            .counts
            .lock()
            .expect("lock")
            .entry(operation)
            .or_default() += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        let failure = self.failure.lock().expect("lock").clone();
        match failure {
            Some(fail) => Err(fail(operation)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::record;
    use crate::memory::MemoryStore;

    #[tokio::test]
    async fn counts_each_operation_and_fails_on_request() {
        let store = HookedStore::new(MemoryStore::new(), CallCounter::new());
        let key = crate::key::KeyDeriver::new().derive(&crate::id::SessionId::generate());
        store
            .create(&key, &record(None, b"x", 60_000, 60_000))
            .await
            .unwrap();
        store.load(&key).await.unwrap();
        store.load(&key).await.unwrap();
        assert_eq!(store.hooks().calls(Operation::Create), 1);
        assert_eq!(store.hooks().calls(Operation::Load), 2);
        assert_eq!(store.hooks().total(), 3);
        store
            .hooks()
            .fail_with(Some(Arc::new(|_| StoreError::unavailable("down"))));
        assert!(matches!(
            store.load(&key).await,
            Err(StoreError::Unavailable(_))
        ));
        assert_eq!(store.hooks().calls(Operation::Load), 3);
        store.hooks().fail_with(None);
        assert!(store.load(&key).await.unwrap().is_some());
    }
}
