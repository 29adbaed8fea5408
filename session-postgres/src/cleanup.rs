//! [`CleanupTask`]: the background task that deletes expired rows.
//!
//! Expired rows never load (every read filters on `expires_at > now()`);
//! clean-up only reclaims space. Each round deletes batches of at most
//! [`cleanup_batch_size`](crate::PostgresStoreBuilder::cleanup_batch_size)
//! rows with `FOR UPDATE SKIP LOCKED`, so instances running it at the same
//! time share the work instead of waiting on each other, and no statement
//! holds many row locks for long.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::store::Inner;

/// Shortest accepted clean-up period; shorter ones are raised to it.
pub const MIN_CLEANUP_PERIOD: Duration = Duration::from_millis(10);

/// Handle of a running clean-up task (see
/// [`PostgresStore::spawn_cleanup`](crate::PostgresStore::spawn_cleanup)).
///
/// Dropping the handle asks the task to stop after its current batch;
/// [`stop`](Self::stop) does the same and waits for it.
#[derive(Debug)]
pub struct CleanupTask {
    stop: Option<watch::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl CleanupTask {
    pub(crate) fn spawn(store: Weak<Inner>, period: Duration) -> Self {
        let period = period.max(MIN_CLEANUP_PERIOD);
        let (stop, stopped) = watch::channel(());
        let task = tokio::spawn(run(store, period, stopped));
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the task and waits until it has ended. A batch in progress is
    /// finished first (at most one statement, bounded by the operation
    /// timeout).
    pub async fn stop(mut self) {
        drop(self.stop.take());
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                if e.is_panic() {
                    tracing::error!(target: "session_postgres", "the clean-up task panicked");
                }
            }
        }
    }

    /// Whether the task has ended (stopped, or every clone of the store was
    /// dropped).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for CleanupTask {
    fn drop(&mut self) {
        // Dropping the sender wakes the task, which ends after its current
        // batch; nothing is aborted mid-statement.
        drop(self.stop.take());
    }
}

/// Whether the handle asked the task to stop (or was dropped).
fn stop_requested(stopped: &watch::Receiver<()>) -> bool {
    stopped.has_changed().is_err()
}

async fn run(store: Weak<Inner>, period: Duration, mut stopped: watch::Receiver<()>) {
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
            let Some(inner) = store.upgrade() else {
                return;
            };
            match inner.delete_expired_batch().await {
                Ok(batch) => {
                    removed += batch.removed;
                    if !batch.more {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        target: "session_postgres",
                        error = %session_core::ErrorChain(&error),
                        "deleting expired sessions failed; retrying next period"
                    );
                    break;
                }
            }
            drop(inner);
            tokio::task::yield_now().await;
        }
        tracing::debug!(target: "session_postgres", removed, "deleted expired sessions");
    }
}
