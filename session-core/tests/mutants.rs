//! A mutation test of the conformance suite: stores that each break one
//! rule of the `SessionStore` contract, the way a backend author plausibly
//! gets it wrong, wrapped around `MemoryStore`. The suite must fail on every
//! one of them, and pass on the same wrapper without a bug.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use session_core::conformance::{run_suite, Harness};
use session_core::store::newest_first;
use session_core::{
    Clock, CreateOptions, Created, LimitStrategy, MemoryStore, SessionRecord, SessionStore,
    SessionSummary, StorageKey, StoreError, StoreResult, Timestamp,
};

/// The rule each mutant breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    CreateOverwrites,
    LoadsExpired,
    DiesEarly,
    UpdateIgnoresVersion,
    UpdateKeepsOldDeadlines,
    UpdateOfExpiredConflicts,
    TouchBumpsVersion,
    TouchResurrects,
    DeleteOfMissingFails,
    ListDropsNewest,
    ListIgnoresTouch,
    DeleteUserOverreaches,
    DeleteUserMiscounts,
    DeleteExpiredEager,
    RejectNewNotAtomic,
    EvictNotAtomic,
    EvictWrongTieBreak,
    LimitIgnored,
    RefusedLoginWritten,
    RotationIgnoresVersion,
    RotationRevives,
    RotationLeavesOld,
    RotationWithoutMove,
    DataTruncated,
    MillisLost,
    NamespacesShared,
}

/// The system clock shifted by a fixed offset.
#[derive(Debug)]
struct Shifted(i64);

impl Clock for Shifted {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(Timestamp::now().as_unix_millis() + self.0)
    }
}

struct Mutant {
    inner: MemoryStore,
    bug: Bug,
    /// The last record written under each key.
    written: Mutex<HashMap<StorageKey, SessionRecord>>,
    users: Mutex<HashSet<String>>,
}

impl Mutant {
    fn new(bug: Bug) -> Self {
        let inner = match bug {
            Bug::LoadsExpired => MemoryStore::with_clock(Arc::new(Shifted(-10_000))),
            Bug::DiesEarly => MemoryStore::with_clock(Arc::new(Shifted(900))),
            _ => MemoryStore::new(),
        };
        Self {
            inner,
            bug,
            written: Mutex::new(HashMap::new()),
            users: Mutex::new(HashSet::new()),
        }
    }

    fn remember(&self, key: &StorageKey, record: &SessionRecord) {
        self.written
            .lock()
            .unwrap()
            .insert(key.clone(), record.clone());
        if let Some(u) = &record.user_id {
            self.users.lock().unwrap().insert(u.clone());
        }
    }

    /// What this mutant writes instead of `record`.
    fn mangle(&self, record: &SessionRecord) -> SessionRecord {
        let mut r = record.clone();
        match self.bug {
            Bug::DataTruncated if r.data.len() > 256 * 1024 => r.data.truncate(256 * 1024),
            Bug::MillisLost => {
                let secs =
                    |t: Timestamp| Timestamp::from_unix_millis(t.as_unix_millis() / 1000 * 1000);
                r.created_at = secs(r.created_at);
                r.last_access = secs(r.last_access);
            }
            _ => {}
        }
        r
    }

    async fn others(&self, user: &str, except: &[&StorageKey]) -> StoreResult<Vec<SessionSummary>> {
        Ok(self
            .inner
            .list_user_sessions(user)
            .await?
            .into_iter()
            .filter(|s| !except.contains(&&s.key))
            .collect())
    }
}

#[async_trait]
impl SessionStore for Mutant {
    async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
        let record = self.mangle(record);
        self.remember(key, &record);
        if self.bug == Bug::CreateOverwrites {
            self.inner.delete(key).await?;
        }
        self.inner.create(key, &record).await
    }

    async fn create_with(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Created> {
        let record = self.mangle(record);
        self.remember(key, &record);
        let mut plain = options.clone();
        plain.limit = None;
        let user = record.user_id.clone();
        let replaced = options.replaces.as_ref().map(|r| &r.key);
        match (self.bug, options.limit, &user) {
            (Bug::LimitIgnored, _, _) => return self.inner.create_with(key, &record, &plain).await,
            (Bug::RejectNewNotAtomic, Some(l), Some(u))
                if l.strategy == LimitStrategy::RejectNew =>
            {
                let n = self
                    .others(u, &replaced.into_iter().collect::<Vec<_>>())
                    .await?
                    .len();
                tokio::task::yield_now().await;
                if n >= l.max.get() {
                    return Err(StoreError::UserLimitReached { max: l.max.get() });
                }
                return self.inner.create_with(key, &record, &plain).await;
            }
            (Bug::EvictNotAtomic, Some(l), Some(u)) if l.strategy == LimitStrategy::EvictOldest => {
                let created = self.inner.create_with(key, &record, &plain).await?;
                tokio::task::yield_now().await;
                let mut others = self.others(u, &[key]).await?;
                others.sort_by_key(|s| s.created_at);
                let excess = (others.len() + 1).saturating_sub(l.max.get());
                for victim in others.into_iter().take(excess) {
                    self.inner.delete(&victim.key).await?;
                }
                return Ok(created);
            }
            (Bug::EvictWrongTieBreak, Some(l), Some(u))
                if l.strategy == LimitStrategy::EvictOldest =>
            {
                let mut all: Vec<(Timestamp, StorageKey)> = self
                    .others(u, &[key])
                    .await?
                    .into_iter()
                    .map(|s| (s.created_at, s.key))
                    .collect();
                all.push((record.created_at, key.clone()));
                // Ties broken the other way round.
                all.sort_by(|a, b| newest_first((a.0, &b.1), (b.0, &a.1)));
                let evicted: Vec<StorageKey> = all
                    .split_off(l.max.get().min(all.len()))
                    .into_iter()
                    .map(|(_, k)| k)
                    .collect();
                for k in evicted.iter().filter(|k| *k != key) {
                    self.inner.delete(k).await?;
                }
                if !evicted.contains(key) {
                    self.inner.create_with(key, &record, &plain).await?;
                }
                return Ok(Created::with_evicted(evicted));
            }
            _ => {}
        }
        if let Some(r) = &options.replaces {
            match self.bug {
                Bug::RotationIgnoresVersion => {
                    if let Some(current) = self.inner.load(&r.key).await? {
                        let opts = options.clone().replacing(r.key.clone(), current.version);
                        return self.inner.create_with(key, &record, &opts).await;
                    }
                }
                Bug::RotationRevives if self.inner.load(&r.key).await?.is_none() => {
                    let mut opts = options.clone();
                    opts.replaces = None;
                    return self.inner.create_with(key, &record, &opts).await;
                }
                Bug::RotationLeavesOld => {
                    let mut opts = options.clone();
                    opts.replaces = None;
                    return self.inner.create_with(key, &record, &opts).await;
                }
                Bug::RotationWithoutMove => {
                    let current = self.inner.load(&r.key).await?.ok_or(StoreError::NotFound)?;
                    if current.version != r.version {
                        return Err(StoreError::Conflict);
                    }
                    let mut opts = options.clone();
                    opts.replaces = None;
                    let created = self.inner.create_with(key, &record, &opts).await?;
                    self.inner.delete(&r.key).await?;
                    return Ok(created);
                }
                _ => {}
            }
        }
        match self.inner.create_with(key, &record, options).await {
            Err(StoreError::UserLimitReached { max }) if self.bug == Bug::RefusedLoginWritten => {
                self.inner.create(key, &record).await?;
                Err(StoreError::UserLimitReached { max })
            }
            other => other,
        }
    }

    async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>> {
        self.inner.load(key).await
    }

    async fn update(
        &self,
        key: &StorageKey,
        expected: u64,
        record: &SessionRecord,
    ) -> StoreResult<()> {
        let mut record = self.mangle(record);
        let current = self.inner.load(key).await?;
        let mut expected = expected;
        match (self.bug, &current) {
            (Bug::UpdateIgnoresVersion, Some(c)) => expected = c.version,
            (Bug::UpdateKeepsOldDeadlines, Some(c)) => {
                record.last_access = c.last_access;
                record.idle_deadline = c.idle_deadline;
                record.absolute_deadline = c.absolute_deadline;
            }
            (Bug::UpdateOfExpiredConflicts, None) => return Err(StoreError::Conflict),
            _ => {}
        }
        self.inner.update(key, expected, &record).await?;
        self.remember(key, &record);
        Ok(())
    }

    async fn touch(
        &self,
        key: &StorageKey,
        last_access: Timestamp,
        idle: Timestamp,
    ) -> StoreResult<()> {
        match self.bug {
            Bug::TouchBumpsVersion => {
                let c = self.inner.load(key).await?.ok_or(StoreError::NotFound)?;
                let next = c
                    .clone()
                    .with_last_access(last_access)
                    .with_idle_deadline(idle)
                    .with_version(c.version + 1);
                self.inner.update(key, c.version, &next).await
            }
            Bug::TouchResurrects => match self.inner.touch(key, last_access, idle).await {
                Err(StoreError::NotFound) => {
                    let old = self.written.lock().unwrap().get(key).cloned();
                    match old {
                        Some(r) => {
                            let r = r.with_last_access(last_access).with_idle_deadline(idle);
                            self.inner.create(key, &r).await
                        }
                        None => Err(StoreError::NotFound),
                    }
                }
                other => other,
            },
            _ => self.inner.touch(key, last_access, idle).await,
        }
    }

    async fn delete(&self, key: &StorageKey) -> StoreResult<()> {
        if self.bug == Bug::DeleteOfMissingFails && self.inner.load(key).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        self.inner.delete(key).await
    }

    async fn list_user_sessions(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
        let mut list = self.inner.list_user_sessions(user_id).await?;
        match self.bug {
            Bug::ListDropsNewest if list.len() > 1 => {
                list.sort_by_key(|s| s.created_at);
                list.pop();
            }
            Bug::ListIgnoresTouch => {
                let written = self.written.lock().unwrap();
                for s in &mut list {
                    if let Some(r) = written.get(&s.key) {
                        if r.version == 1 {
                            *s = r.summary(&s.key);
                        }
                    }
                }
                list.retain(|s| Timestamp::now() < s.expires_at());
            }
            _ => {}
        }
        Ok(list)
    }

    async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
        match self.bug {
            Bug::DeleteUserOverreaches => {
                let similar: Vec<String> = self
                    .users
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|u| u.starts_with(user_id))
                    .cloned()
                    .collect();
                let mut n = 0;
                for u in similar {
                    n += self.inner.delete_user(&u).await?;
                }
                Ok(n)
            }
            Bug::DeleteUserMiscounts => {
                let listed = self
                    .written
                    .lock()
                    .unwrap()
                    .values()
                    .filter(|r| r.user_id.as_deref() == Some(user_id))
                    .count();
                self.inner.delete_user(user_id).await?;
                Ok(listed as u64)
            }
            _ => self.inner.delete_user(user_id).await,
        }
    }

    async fn delete_expired(&self) -> StoreResult<u64> {
        if self.bug == Bug::DeleteExpiredEager {
            // Anything that expires within the current second.
            let horizon = Timestamp::from_unix_millis(Timestamp::now().as_unix_millis() + 1_000);
            let doomed: Vec<StorageKey> = self
                .written
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, r)| r.expires_at() < horizon)
                .map(|(k, _)| k.clone())
                .collect();
            for k in doomed {
                self.inner.delete(&k).await?;
            }
        }
        self.inner.delete_expired().await
    }
}

fn harness(bug: Bug) -> Harness {
    let shared = Arc::new(Mutant::new(bug));
    Harness::new(move |_namespace: String| {
        let shared = Arc::clone(&shared);
        async move {
            if bug == Bug::NamespacesShared {
                shared
            } else {
                Arc::new(Mutant::new(bug))
            }
        }
    })
    .with_rounds(10)
}

const MUTANTS: &[Bug] = &[
    Bug::CreateOverwrites,
    Bug::LoadsExpired,
    Bug::DiesEarly,
    Bug::UpdateIgnoresVersion,
    Bug::UpdateKeepsOldDeadlines,
    Bug::UpdateOfExpiredConflicts,
    Bug::TouchBumpsVersion,
    Bug::TouchResurrects,
    Bug::DeleteOfMissingFails,
    Bug::ListDropsNewest,
    Bug::ListIgnoresTouch,
    Bug::DeleteUserOverreaches,
    Bug::DeleteUserMiscounts,
    Bug::DeleteExpiredEager,
    Bug::RejectNewNotAtomic,
    Bug::EvictNotAtomic,
    Bug::EvictWrongTieBreak,
    Bug::LimitIgnored,
    Bug::RefusedLoginWritten,
    Bug::RotationIgnoresVersion,
    Bug::RotationRevives,
    Bug::RotationLeavesOld,
    Bug::RotationWithoutMove,
    Bug::DataTruncated,
    Bug::MillisLost,
    Bug::NamespacesShared,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_the_wrapper_without_a_bug() {
    let failed = run_suite(&harness(Bug::None)).await;
    assert!(failed.is_empty(), "failed on a correct store: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_catches_every_planted_bug() {
    // Panics of the failing cases are expected here; keep the output to the
    // verdicts.
    std::panic::set_hook(Box::new(|_| {}));
    let mut missed = Vec::new();
    for &bug in MUTANTS {
        let failed = run_suite(&harness(bug)).await;
        println!("{bug:?}: caught by {failed:?}");
        if failed.is_empty() {
            missed.push(bug);
        }
    }
    let _ = std::panic::take_hook();
    assert!(missed.is_empty(), "the suite missed {missed:?}");
}
