//! Password checks on a fixed set of worker threads with a short queue.
//!
//! An Argon2id check takes about 19 MiB of memory and tens of milliseconds
//! of CPU. Run on the unbounded blocking pool, a flood of failed logins
//! starts one thread and one 19 MiB buffer per request in flight: hundreds
//! of concurrent requests reach gigabytes. Here at most `workers` checks run
//! at once, each worker reusing one block array
//! ([`Scratch`]), at most `queue` more wait, and
//! anything beyond is refused at once ([`Busy`], answered `503` with
//! `Retry-After`), so memory stays bounded whatever the load.

use std::fmt;
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::limits::{LoginThrottle, Refusal};
use crate::users::{Scratch, Users};

/// Every worker is busy and the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every password worker is busy and the queue is full")]
pub struct Busy;

struct Job {
    name: String,
    password: String,
    reply: oneshot::Sender<bool>,
}

/// Checks passwords on `workers` dedicated threads.
pub struct PasswordChecker {
    jobs: SyncSender<Job>,
    workers: usize,
    queue: usize,
}

impl fmt::Debug for PasswordChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordChecker")
            .field("workers", &self.workers)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// Twice the number of cores: enough to keep the cores busy while a check
/// waits to be scheduled, few enough to bound memory.
#[must_use]
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

impl PasswordChecker {
    /// Starts `workers` threads (at least one) checking against `users`,
    /// with room for `queue` waiting checks. The threads end when the
    /// checker is dropped.
    ///
    /// # Errors
    ///
    /// When a thread cannot be started.
    pub fn new(users: Arc<Users>, workers: usize, queue: usize) -> std::io::Result<Self> {
        let workers = workers.max(1);
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let (rx, users) = (Arc::clone(&rx), Arc::clone(&users));
            std::thread::Builder::new()
                .name(format!("password-check-{i}"))
                .spawn(move || work(&rx, &users))?;
        }
        Ok(Self {
            jobs,
            workers,
            queue,
        })
    }

    /// Whether `password` is `name`'s, checked on a worker.
    ///
    /// # Errors
    ///
    /// [`Busy`] at once when every worker is busy and the queue is full.
    pub async fn verify(&self, name: &str, password: &str) -> Result<bool, Busy> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            name: name.to_owned(),
            password: password.to_owned(),
            reply,
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(Busy),
            Err(TrySendError::Disconnected(_)) => return Ok(false),
        }
        // A worker that died (it cannot: verify does not panic) reads as a
        // wrong password, never as a right one.
        Ok(answer.await.unwrap_or(false))
    }

    /// The number of worker threads.
    #[must_use]
    pub fn workers(&self) -> usize {
        self.workers
    }
}

/// Password checks behind the throttles: what every route that asks for a
/// password goes through.
#[derive(Debug)]
pub struct Auth {
    /// The per-address and per-account throttles.
    pub throttle: Arc<LoginThrottle>,
    /// The bounded password workers.
    pub checker: PasswordChecker,
}

impl Auth {
    /// Whether `password` is `name`'s, for a request from `ip`: takes an
    /// attempt from the address's and the account's allowances first, then
    /// checks on a worker.
    ///
    /// # Errors
    ///
    /// [`Refusal::TooMany`] over an allowance; [`Refusal::Busy`] when a
    /// throttle table is full or every worker is busy and the queue full.
    pub async fn check(&self, ip: IpAddr, name: &str, password: &str) -> Result<bool, Refusal> {
        self.throttle.check(ip, name)?;
        self.checker
            .verify(name, password)
            .await
            .map_err(|Busy| Refusal::Busy(std::time::Duration::from_secs(1)))
    }
}

fn work(rx: &Mutex<Receiver<Job>>, users: &Users) {
    // One block array per worker, reused by every check it runs.
    let mut scratch = Scratch::default();
    loop {
        // The lock is held only while waiting for the next job.
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return; // the checker was dropped
        };
        // The request gave up (client gone): skip the work.
        if job.reply.is_closed() {
            continue;
        }
        let ok = users.verify_with(&mut scratch, &job.name, &job.password);
        let _ = job.reply.send(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_run_bounded_and_the_overflow_is_refused() {
        let users = Arc::new(Users::parse("alice:pw").unwrap());
        let checker = Arc::new(PasswordChecker::new(users, 1, 2).unwrap());
        assert!(checker.verify("alice", "pw").await.unwrap());
        assert!(!checker.verify("alice", "nope").await.unwrap());
        assert!(!checker.verify("nobody", "pw").await.unwrap());

        // 1 running + 2 queued at most: of 12 at once, most are refused.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let c = Arc::clone(&checker);
            set.spawn(async move { c.verify("alice", "wrong").await });
        }
        let results = set.join_all().await;
        let busy = results.iter().filter(|r| r.is_err()).count();
        assert!(busy >= 6, "{results:?}");
        assert!(results.iter().all(|r| matches!(r, Ok(false) | Err(Busy))));
        // Once idle, checks are accepted again.
        assert!(checker.verify("alice", "pw").await.unwrap());
    }
}
