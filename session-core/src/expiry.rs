//! [`ExpiryTask`]: the background task that deletes expired sessions, one
//! type for every store.
//!
//! Expired records never load (every store checks the deadlines on read);
//! deleting them only reclaims space, for stores whose server does not
//! expire keys itself. [`ExpiryTask::spawn`] calls
//! [`SessionStore::delete_expired`] every period;
//! [`ExpiryTask::spawn_batches`] runs a store's own step (one bounded
//! batch, say) until a round is done.
//! [`MemoryStore::spawn_sweeper`](crate::MemoryStore::spawn_sweeper) and
//! `PostgresStore::spawn_cleanup` return one.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use session_core::{ExpiryTask, MemoryStore, SessionStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
//! let task = ExpiryTask::spawn(Arc::downgrade(&store), Duration::from_secs(60));
//! // ... serve requests with `store` ...
//! task.shutdown().await;
//! # }
//! ```

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::error::ErrorChain;
use crate::store::{SessionStore, StoreResult};

/// Shortest period an [`ExpiryTask`] accepts; shorter ones (zero included)
/// are raised to it.
pub const MIN_PERIOD: Duration = Duration::from_millis(1);

/// What one step of an [`ExpiryTask`] did: how many expired records it
/// removed, and whether another step may find more right away (a full
/// batch) or the round is done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Batch {
    removed: u64,
    more: bool,
}

impl Batch {
    /// The last step of a round: `removed` records, nothing more to do
    /// until the next period.
    #[must_use]
    pub fn last(removed: u64) -> Self {
        Self {
            removed,
            more: false,
        }
    }

    /// A step that came back full: `removed` records, and the task runs
    /// another step at once (after yielding to the runtime).
    #[must_use]
    pub fn partial(removed: u64) -> Self {
        Self {
            removed,
            more: true,
        }
    }

    /// Records removed by this step (what the store counts as a session;
    /// bookkeeping entries such as rotation markers are not counted).
    #[must_use]
    pub fn removed(&self) -> u64 {
        self.removed
    }

    /// Whether another step may find more.
    #[must_use]
    pub fn has_more(&self) -> bool {
        self.more
    }
}

/// Handle of a background task that deletes expired sessions every period.
///
/// Made by [`ExpiryTask::spawn`] or [`ExpiryTask::spawn_batches`] (or a
/// store's `spawn_*` method). Every period (the first one period after the
/// spawn; a round that overruns delays the next tick instead of bunching
/// them), the task runs one *round*: steps until one says it was the last
/// ([`Batch::last`]) or fails. A failure is logged (`warn`, target
/// `session_core::expiry`, the whole cause chain through [`ErrorChain`])
/// and the task carries on next period; each round's total is logged at
/// `debug`.
///
/// The task holds only a [`Weak`] reference to the store: it ends by itself
/// once every strong reference is gone (checked before each step, and the
/// store is not kept alive between steps). It also ends, after the step in
/// progress (never aborted mid-statement), when this handle is dropped or
/// [`shutdown`](Self::shutdown) is called. Steps never run concurrently
/// with each other within one task; several tasks (several instances of an
/// application) may run against one store if the store's step allows it,
/// as [`SessionStore::delete_expired`] does.
#[derive(Debug)]
pub struct ExpiryTask {
    stop: Option<watch::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ExpiryTask {
    /// Spawns a task on the current Tokio runtime that calls
    /// [`SessionStore::delete_expired`] on `store` every `period` (at
    /// least [`MIN_PERIOD`]), one call a round.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    #[must_use = "the task stops when its handle is dropped"]
    pub fn spawn<S>(store: Weak<S>, period: Duration) -> Self
    where
        S: SessionStore + ?Sized,
    {
        Self::spawn_batches(store, period, |store: Arc<S>| async move {
            store.delete_expired().await.map(Batch::last)
        })
    }

    /// Spawns a task on the current Tokio runtime that runs `step` on
    /// `target` every `period` (at least [`MIN_PERIOD`]), again and again
    /// within a round while it returns [`Batch::partial`].
    ///
    /// `step` gets a strong reference for the duration of one step only; a
    /// stop request is honoured between steps. Use it for a store that
    /// deletes in bounded batches, so that a round over a large backlog is
    /// many short operations that a shutdown can interrupt.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    #[must_use = "the task stops when its handle is dropped"]
    pub fn spawn_batches<T, F, Fut>(target: Weak<T>, period: Duration, step: F) -> Self
    where
        T: Send + Sync + ?Sized + 'static,
        F: FnMut(Arc<T>) -> Fut + Send + 'static,
        Fut: Future<Output = StoreResult<Batch>> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(());
        let task = tokio::spawn(run(target, period.max(MIN_PERIOD), step, stopped));
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the task and waits until it has ended. A step in progress is
    /// finished first (at most one store operation, bounded by the store's
    /// own timeouts).
    pub async fn shutdown(mut self) {
        drop(self.stop.take());
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                if e.is_panic() {
                    tracing::error!(target: "session_core::expiry", "the expiry task panicked");
                }
            }
        }
    }

    /// The former name of [`shutdown`](Self::shutdown).
    #[deprecated(note = "renamed to shutdown")]
    pub async fn stop(self) {
        self.shutdown().await;
    }

    /// Whether the task has ended: its store is gone, it was asked to stop
    /// and did, or it panicked.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for ExpiryTask {
    fn drop(&mut self) {
        // Dropping the sender wakes the task, which ends after its current
        // step; nothing is aborted mid-operation.
        drop(self.stop.take());
    }
}

/// Whether the handle asked the task to stop (or was dropped).
fn stop_requested(stopped: &watch::Receiver<()>) -> bool {
    stopped.has_changed().is_err()
}

async fn run<T, F, Fut>(
    target: Weak<T>,
    period: Duration,
    mut step: F,
    mut stopped: watch::Receiver<()>,
) where
    T: ?Sized,
    F: FnMut(Arc<T>) -> Fut,
    Fut: Future<Output = StoreResult<Batch>>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            // Only ever resolves with an error: when the sender is gone.
            _ = stopped.changed() => return,
            _ = tick.tick() => {}
        }
        let mut removed = 0u64;
        loop {
            if stop_requested(&stopped) {
                return;
            }
            let Some(store) = target.upgrade() else {
                return;
            };
            match step(store).await {
                Ok(batch) => {
                    removed = removed.saturating_add(batch.removed);
                    if !batch.more {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        target: "session_core::expiry",
                        error = %ErrorChain(&error),
                        "deleting expired sessions failed; retrying next period"
                    );
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        tracing::debug!(target: "session_core::expiry", removed, "deleted expired sessions");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::store::StoreError;

    /// A step that counts its calls and answers from a script.
    struct Scripted {
        calls: AtomicU64,
        answers: Mutex<Vec<StoreResult<Batch>>>,
    }

    impl Scripted {
        fn new(mut answers: Vec<StoreResult<Batch>>) -> Arc<Self> {
            answers.reverse();
            Arc::new(Self {
                calls: AtomicU64::new(0),
                answers: Mutex::new(answers),
            })
        }

        async fn step(self: Arc<Self>) -> StoreResult<Batch> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.answers
                .lock()
                .unwrap()
                .pop()
                .unwrap_or(Ok(Batch::last(0)))
        }

        fn calls(&self) -> u64 {
            self.calls.load(Ordering::SeqCst)
        }
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    #[tokio::test]
    async fn a_round_runs_steps_until_the_last_and_a_failure_waits_for_the_next_period() {
        let script = Scripted::new(vec![
            Ok(Batch::partial(3)),
            Ok(Batch::partial(3)),
            Ok(Batch::last(1)),
            Err(StoreError::timed_out(
                "delete_expired",
                Duration::from_secs(1),
            )),
            Ok(Batch::last(0)),
        ]);
        let task = ExpiryTask::spawn_batches(
            Arc::downgrade(&script),
            Duration::from_millis(200),
            Scripted::step,
        );
        until("the first round", || script.calls() >= 3).await;
        // The first round ran its three steps back to back, not a period
        // apart, and stopped at the last.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(script.calls(), 3);
        until("the failing round and the one after", || {
            script.calls() >= 5
        })
        .await;
        assert!(!task.is_finished(), "a failed step ended the task");
        task.shutdown().await;
    }

    #[tokio::test]
    async fn the_task_ends_with_its_store() {
        let script = Scripted::new(Vec::new());
        let task = ExpiryTask::spawn_batches(
            Arc::downgrade(&script),
            Duration::from_millis(5),
            Scripted::step,
        );
        until("a round", || script.calls() >= 1).await;
        drop(script);
        until("the task to end", || task.is_finished()).await;
    }

    #[tokio::test]
    async fn dropping_the_handle_or_shutting_down_stops_it() {
        let script = Scripted::new(Vec::new());
        let task = ExpiryTask::spawn_batches(
            Arc::downgrade(&script),
            Duration::from_millis(5),
            Scripted::step,
        );
        until("a round", || script.calls() >= 1).await;
        task.shutdown().await;
        let after = script.calls();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(script.calls(), after, "a round after shutdown");
        assert_eq!(Arc::strong_count(&script), 1, "the task kept the store");

        let task = ExpiryTask::spawn_batches(
            Arc::downgrade(&script),
            Duration::from_millis(5),
            Scripted::step,
        );
        until("a round", || script.calls() > after).await;
        drop(task);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let after = script.calls();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            script.calls(),
            after,
            "a round after the handle was dropped"
        );
    }

    #[tokio::test]
    async fn a_zero_period_is_raised_to_the_minimum() {
        let script = Scripted::new(Vec::new());
        let task =
            ExpiryTask::spawn_batches(Arc::downgrade(&script), Duration::ZERO, Scripted::step);
        until("two rounds", || script.calls() >= 2).await;
        assert!(!task.is_finished());
        task.shutdown().await;
    }

    #[tokio::test]
    async fn spawn_calls_delete_expired_of_any_store() {
        let clock = Arc::new(crate::clock::ManualClock::new(
            crate::Timestamp::from_unix_millis(0),
        ));
        let memory = crate::MemoryStore::with_clock(clock.clone());
        let record = crate::SessionRecord::new(
            bytes::Bytes::new(),
            None,
            crate::Timestamp::from_unix_millis(0),
            crate::Timestamp::from_unix_millis(10),
            crate::Timestamp::from_unix_millis(10),
        );
        memory
            .create(&crate::StorageKey::from_stored("a"), &record)
            .await
            .unwrap();
        clock.set(crate::Timestamp::from_unix_millis(20));
        let store: Arc<dyn SessionStore> = Arc::new(memory.clone());
        let task = ExpiryTask::spawn(Arc::downgrade(&store), Duration::from_millis(5));
        until("the expired record to go", || memory.is_empty()).await;
        drop(store);
        until("the task to end with its store", || task.is_finished()).await;
    }
}
