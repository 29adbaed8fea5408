//! Model-based testing: random sequences of store calls, some of them
//! concurrent, run against a real store and compared with a reference model
//! of the contract ([`Model`]). Failures shrink (with `proptest`) to a
//! minimal sequence.
//!
//! Every record a sequence writes is either live for hours or expired from
//! the start, so no outcome depends on the millisecond the call lands in,
//! and the model needs no clock of its own. A concurrent step runs two or
//! three calls at once; the store's results must equal those of *some*
//! order of the same calls applied to the model (linearizability), and the
//! model keeps every state such an order could have left.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::Harness;
use crate::clock::Timestamp;
use crate::key::StorageKey;
use crate::policy::{LimitStrategy, UserSessionLimit};
use crate::record::SessionRecord;
use crate::store::{newest_first, CreateOptions, Created, SessionStore, StoreError};

const KEYS: usize = 6;
const USERS: usize = 3;
const HOUR_MS: i64 = 3_600_000;

/// One store call, over a small universe of keys and users so that calls
/// collide often.
#[derive(Debug, Clone)]
pub enum Call {
    /// `create`.
    Create {
        /// Key index.
        key: usize,
        /// The record.
        record: Rec,
    },
    /// `create_with`, optionally rotating from `replaces` (key index,
    /// version) and applying a limit (max, evict?).
    CreateWith {
        /// Key index.
        key: usize,
        /// The record.
        record: Rec,
        /// Rotation source: key index and version.
        replaces: Option<(usize, u64)>,
        /// Limit: max and whether it evicts (else rejects).
        limit: Option<(usize, bool)>,
    },
    /// `load`.
    Load {
        /// Key index.
        key: usize,
    },
    /// `update` expecting `expected`, writing `data` at `expected + 1`.
    Update {
        /// Key index.
        key: usize,
        /// Expected version.
        expected: u64,
        /// New data byte.
        data: u8,
    },
    /// `touch` to an idle deadline two hours out.
    Touch {
        /// Key index.
        key: usize,
    },
    /// `delete`.
    Delete {
        /// Key index.
        key: usize,
    },
    /// `list_user_sessions`.
    ListUserSessions {
        /// User index.
        user: usize,
    },
    /// `delete_user`.
    DeleteUser {
        /// User index.
        user: usize,
    },
}

/// The parts of a record a sequence chooses.
#[derive(Debug, Clone)]
pub struct Rec {
    user: Option<usize>,
    data: u8,
    expired: bool,
    /// Creation time, in seconds before the sequence's base time.
    age: u8,
}

/// A step: one call, or calls released at once.
#[derive(Debug, Clone)]
pub enum Step {
    /// One call on its own.
    One(Call),
    /// Two or three calls at once.
    Together(Vec<Call>),
}

fn rec() -> impl Strategy<Value = Rec> {
    (
        prop::option::weighted(0.8, 0..USERS),
        any::<u8>(),
        prop::bool::weighted(0.15),
        0u8..4,
    )
        .prop_map(|(user, data, expired, age)| Rec {
            user,
            data,
            expired,
            age,
        })
}

fn call() -> impl Strategy<Value = Call> {
    let key = 0..KEYS;
    prop_oneof![
        3 => (key.clone(), rec()).prop_map(|(key, record)| Call::Create { key, record }),
        // The manager never creates a record that is already expired; what
        // a limit does with one is left open.
        4 => (
            key.clone(),
            rec().prop_map(|r| Rec { expired: false, ..r }),
            prop::option::of((0..KEYS, 1u64..4)),
            prop::option::of((1usize..4, any::<bool>()))
        )
            .prop_map(|(key, record, replaces, limit)| Call::CreateWith {
                key,
                record,
                replaces,
                limit
            }),
        3 => key.clone().prop_map(|key| Call::Load { key }),
        3 => (key.clone(), 1u64..4, any::<u8>())
            .prop_map(|(key, expected, data)| Call::Update { key, expected, data }),
        1 => key.clone().prop_map(|key| Call::Touch { key }),
        2 => key.prop_map(|key| Call::Delete { key }),
        2 => (0..USERS).prop_map(|user| Call::ListUserSessions { user }),
        1 => (0..USERS).prop_map(|user| Call::DeleteUser { user }),
    ]
}

/// A call that may run concurrently: `Update` is left out, since the
/// sequence builds its record from a `load` just before it.
fn concurrent_call() -> impl Strategy<Value = Call> {
    call().prop_filter("updates run on their own", |c| {
        !matches!(c, Call::Update { .. })
    })
}

fn steps(concurrent: bool) -> BoxedStrategy<Vec<Step>> {
    let step = if concurrent {
        prop_oneof![
            4 => call().prop_map(Step::One),
            1 => prop::collection::vec(concurrent_call(), 2..=3).prop_map(Step::Together),
        ]
        .boxed()
    } else {
        call().prop_map(Step::One).boxed()
    };
    prop::collection::vec(step, 1..40).boxed()
}

/// A loaded record as [`Outcome::Loaded`] compares it: data, version,
/// user id, label.
pub type Loaded = (Vec<u8>, u64, Option<String>, Option<String>);

/// What a call returned, reduced to what the contract decides.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// `Ok(())`.
    Done,
    /// A loaded record: data, version, user id, label.
    Loaded(Option<Loaded>),
    /// Listed keys with their labels (sorted).
    Listed(Vec<(StorageKey, Option<String>)>),
    /// A count.
    Count(u64),
    /// `create_with` succeeded with these evictions (sorted).
    Evicted(Vec<StorageKey>),
    /// An error of this kind.
    Error(&'static str),
}

fn kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::AlreadyExists => "AlreadyExists",
        StoreError::Conflict => "Conflict",
        StoreError::NotFound => "NotFound",
        StoreError::UserLimitReached { .. } => "UserLimitReached",
        _ => "other",
    }
}

/// The names and times of one sequence: fresh keys and users, so sequences
/// never see each other's records.
struct Universe {
    keys: Vec<StorageKey>,
    users: Vec<String>,
    base: Timestamp,
}

impl Universe {
    fn new(h: &Harness, n: usize) -> Self {
        Self {
            keys: (0..KEYS).map(|_| h.key()).collect(),
            users: (0..USERS).map(|u| h.user(&format!("m{n}u{u}"))).collect(),
            base: Timestamp::now(),
        }
    }

    fn at(&self, offset_ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(self.base.as_unix_millis() + offset_ms)
    }

    fn record(&self, r: &Rec) -> SessionRecord {
        let created = self.at(-1_000 * i64::from(r.age) - 10_000);
        let (idle, absolute) = if r.expired {
            (self.at(-2 * HOUR_MS), self.at(-HOUR_MS))
        } else {
            (self.at(HOUR_MS), self.at(3 * HOUR_MS))
        };
        SessionRecord {
            data: Bytes::from(vec![r.data]),
            user_id: r.user.map(|u| self.users[u].clone()),
            created_at: created,
            last_access: created,
            idle_deadline: idle,
            absolute_deadline: absolute,
            version: 1,
            // Every other record is labelled, so a store that drops,
            // mixes up or invents labels on any path disagrees with the
            // model; the labels vary in length and script.
            label: (r.data % 2 == 1)
                .then(|| format!("dévice {}", "x".repeat(usize::from(r.data % 100)))),
        }
    }
}

/// The reference model of the contract: a plain map, one call at a time.
///
/// Real keys are random and never reused; this small universe reuses them,
/// which the contract leaves open in one corner: whether `delete` of a
/// moved key still follows the move once either key has been written
/// again by an unrelated `create`. The model then keeps both outcomes as
/// possible states and lets later calls tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Model {
    records: BTreeMap<StorageKey, SessionRecord>,
    /// How many times each key was written by a create.
    generation: BTreeMap<StorageKey, u64>,
    /// Moved keys: where to, and the generations of both keys at the move.
    moved: BTreeMap<StorageKey, Move>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Move {
    to: StorageKey,
    from_generation: u64,
    to_generation: u64,
}

impl Model {
    fn live(&self, key: &StorageKey, now: Timestamp) -> Option<&SessionRecord> {
        self.records.get(key).filter(|r| !r.is_expired_at(now))
    }

    fn user_live(&self, user: &str, now: Timestamp) -> Vec<(Timestamp, StorageKey)> {
        self.records
            .iter()
            .filter(|(_, r)| !r.is_expired_at(now) && r.user_id.as_deref() == Some(user))
            .map(|(k, r)| (r.created_at, k.clone()))
            .collect()
    }

    fn insert(&mut self, key: &StorageKey, record: SessionRecord) {
        *self.generation.entry(key.clone()).or_default() += 1;
        self.records.insert(key.clone(), record);
    }

    fn generation(&self, key: &StorageKey) -> u64 {
        self.generation.get(key).copied().unwrap_or(0)
    }

    /// Every (state, outcome) `call` may lead to from this state.
    fn step(&self, u: &Universe, call: &Call, now: Timestamp) -> Vec<(Model, Outcome)> {
        if let Call::Delete { key } = call {
            let mut done = Vec::new();
            self.delete_from(u.keys[*key].clone(), 0, &mut done);
            return done;
        }
        if let Call::CreateWith {
            key,
            record,
            replaces,
            limit,
        } = call
        {
            // When several checks fail, any of their errors may come back.
            let refusals = self.refusals(u, *key, record, *replaces, *limit, now);
            if !refusals.is_empty() {
                return refusals
                    .into_iter()
                    .map(|e| (self.clone(), Outcome::Error(e)))
                    .collect();
            }
        }
        let mut m = self.clone();
        let out = m.apply(u, call, now);
        vec![(m, out)]
    }

    /// `delete` from `key`, branching where following a move is open.
    fn delete_from(&self, key: StorageKey, hops: usize, out: &mut Vec<(Model, Outcome)>) {
        let mut m = self.clone();
        m.records.remove(&key);
        let Some(mv) = m.moved.remove(&key) else {
            out.push((m, Outcome::Done));
            return;
        };
        let settled = self.generation(&key) == mv.from_generation
            && self.generation(&mv.to) == mv.to_generation;
        if !settled || hops >= 64 {
            // Not following the move is one possible reading.
            out.push((m.clone(), Outcome::Done));
            if hops >= 64 {
                return;
            }
        }
        m.delete_from(mv.to, hops + 1, out);
    }

    fn apply(&mut self, u: &Universe, call: &Call, now: Timestamp) -> Outcome {
        match call {
            Call::Create { key, record } => {
                let key = &u.keys[*key];
                if self.live(key, now).is_some() {
                    return Outcome::Error("AlreadyExists");
                }
                self.insert(key, u.record(record));
                Outcome::Done
            }
            Call::CreateWith {
                key,
                record,
                replaces,
                limit,
            } => self.create_with(u, *key, record, *replaces, *limit, now),
            Call::Load { key } => Outcome::Loaded(self.live(&u.keys[*key], now).map(|r| {
                (
                    r.data.to_vec(),
                    r.version,
                    r.user_id.clone(),
                    r.label.clone(),
                )
            })),
            Call::Update {
                key,
                expected,
                data,
            } => {
                let key = &u.keys[*key];
                let Some(current) = self.live(key, now) else {
                    return Outcome::Error("NotFound");
                };
                if current.version != *expected {
                    return Outcome::Error("Conflict");
                }
                let next = SessionRecord {
                    data: Bytes::from(vec![*data]),
                    version: expected + 1,
                    ..current.clone()
                };
                self.records.insert(key.clone(), next);
                Outcome::Done
            }
            Call::Touch { key } => {
                let key = &u.keys[*key];
                let Some(current) = self.live(key, now) else {
                    return Outcome::Error("NotFound");
                };
                let next = SessionRecord {
                    last_access: u.base,
                    idle_deadline: u.at(2 * HOUR_MS).min(current.absolute_deadline),
                    ..current.clone()
                };
                self.records.insert(key.clone(), next);
                Outcome::Done
            }
            Call::Delete { .. } => unreachable!("deletes go through Model::step"),
            Call::ListUserSessions { user } => {
                let mut keys: Vec<(StorageKey, Option<String>)> = self
                    .user_live(&u.users[*user], now)
                    .into_iter()
                    .map(|(_, k)| {
                        let label = self.records.get(&k).and_then(|r| r.label.clone());
                        (k, label)
                    })
                    .collect();
                keys.sort();
                Outcome::Listed(keys)
            }
            Call::DeleteUser { user } => {
                let user = &u.users[*user];
                let live = self.user_live(user, now).len() as u64;
                self.records
                    .retain(|_, r| r.user_id.as_deref() != Some(user.as_str()));
                Outcome::Count(live)
            }
        }
    }

    /// Every check of `create_with` that fails, in the contract's order.
    fn refusals(
        &self,
        u: &Universe,
        key: usize,
        record: &Rec,
        replaces: Option<(usize, u64)>,
        limit: Option<(usize, bool)>,
        now: Timestamp,
    ) -> Vec<&'static str> {
        let key = &u.keys[key];
        let record = u.record(record);
        let mut out = Vec::new();
        let old = replaces.map(|(k, v)| (&u.keys[k], v));
        if let Some((old_key, version)) = old {
            match self.live(old_key, now) {
                None => out.push("NotFound"),
                Some(current) => {
                    let other_user = current.user_id.is_some() && current.user_id != record.user_id;
                    if current.version != version || other_user {
                        out.push("Conflict");
                    }
                }
            }
        }
        if self.live(key, now).is_some() {
            out.push("AlreadyExists");
        }
        if let (Some((max, false)), Some(user)) = (limit, &record.user_id) {
            let others = self
                .user_live(user, now)
                .into_iter()
                .filter(|(_, k)| k != key && old.is_none_or(|(o, _)| o != k))
                .count();
            if others >= max {
                out.push("UserLimitReached");
            }
        }
        out
    }

    fn create_with(
        &mut self,
        u: &Universe,
        key: usize,
        record: &Rec,
        replaces: Option<(usize, u64)>,
        limit: Option<(usize, bool)>,
        now: Timestamp,
    ) -> Outcome {
        let key = &u.keys[key];
        let record = u.record(record);
        let old = replaces.map(|(k, v)| (&u.keys[k], v));
        if let Some((old_key, version)) = old {
            let Some(current) = self.live(old_key, now) else {
                return Outcome::Error("NotFound");
            };
            let other_user = current.user_id.is_some() && current.user_id != record.user_id;
            if current.version != version || other_user {
                return Outcome::Error("Conflict");
            }
        }
        if self.live(key, now).is_some() {
            return Outcome::Error("AlreadyExists");
        }
        let mut evicted = Vec::new();
        if let (Some((max, evict)), Some(user)) = (limit, &record.user_id) {
            let mut others: Vec<(Timestamp, StorageKey)> = self
                .user_live(user, now)
                .into_iter()
                .filter(|(_, k)| k != key && old.is_none_or(|(o, _)| o != k))
                .collect();
            if !evict && others.len() >= max {
                return Outcome::Error("UserLimitReached");
            }
            if evict {
                others.push((record.created_at, key.clone()));
                others.sort_by(|a, b| newest_first((a.0, &a.1), (b.0, &b.1)));
                evicted = others
                    .split_off(max.min(others.len()))
                    .into_iter()
                    .map(|(_, k)| k)
                    .collect();
            }
        }
        let stays = !evicted.contains(key);
        if stays {
            self.insert(key, record);
        }
        if let Some((old_key, _)) = old {
            self.records.remove(old_key);
            let mv = Move {
                to: key.clone(),
                from_generation: self.generation(old_key),
                to_generation: self.generation(key),
            };
            self.moved.insert(old_key.clone(), mv);
        }
        for victim in evicted.iter().filter(|k| *k != key) {
            self.records.remove(victim);
            self.moved.remove(victim);
        }
        evicted.sort();
        Outcome::Evicted(evicted)
    }
}

async fn run_call(store: &dyn SessionStore, u: &Universe, call: &Call) -> Outcome {
    let result = match call {
        Call::Create { key, record } => store
            .create(&u.keys[*key], &u.record(record))
            .await
            .map(|()| Outcome::Done),
        Call::CreateWith {
            key,
            record,
            replaces,
            limit,
        } => {
            let mut options = CreateOptions::default();
            if let Some((k, v)) = replaces {
                options = options.replacing(u.keys[*k].clone(), *v);
            }
            if let Some((max, evict)) = limit {
                options = options.with_limit(UserSessionLimit {
                    max: NonZeroUsize::new(*max).expect("max > 0"),
                    strategy: if *evict {
                        LimitStrategy::EvictOldest
                    } else {
                        LimitStrategy::RejectNew
                    },
                });
            }
            store
                .create_with(&u.keys[*key], &u.record(record), &options)
                .await
                .map(|Created { mut evicted, .. }| {
                    evicted.sort();
                    Outcome::Evicted(evicted)
                })
        }
        Call::Load { key } => store
            .load(&u.keys[*key])
            .await
            .map(|r| Outcome::Loaded(r.map(|r| (r.data.to_vec(), r.version, r.user_id, r.label)))),
        Call::Update {
            key,
            expected,
            data,
        } => {
            let key = &u.keys[*key];
            // The contract's update writes the record it is given: build it
            // from the current one so only data and version change.
            match store.load(key).await {
                Ok(current) => {
                    let base = current.unwrap_or_else(|| {
                        u.record(&Rec {
                            user: None,
                            data: 0,
                            expired: false,
                            age: 0,
                        })
                    });
                    let next = SessionRecord {
                        data: Bytes::from(vec![*data]),
                        version: expected + 1,
                        ..base
                    };
                    store
                        .update(key, *expected, &next)
                        .await
                        .map(|()| Outcome::Done)
                }
                Err(e) => Err(e),
            }
        }
        Call::Touch { key } => {
            let key = &u.keys[*key];
            // Capped at the absolute deadline as the manager does: both
            // kinds of live record in these sequences end later.
            store
                .touch(key, u.base, u.at(2 * HOUR_MS))
                .await
                .map(|()| Outcome::Done)
        }
        Call::Delete { key } => store.delete(&u.keys[*key]).await.map(|()| Outcome::Done),
        Call::ListUserSessions { user } => {
            store.list_user_sessions(&u.users[*user]).await.map(|list| {
                let mut keys: Vec<(StorageKey, Option<String>)> =
                    list.into_iter().map(|s| (s.key, s.label)).collect();
                keys.sort();
                Outcome::Listed(keys)
            })
        }
        Call::DeleteUser { user } => store.delete_user(&u.users[*user]).await.map(Outcome::Count),
    };
    result.unwrap_or_else(|e| Outcome::Error(kind(&e)))
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    match n {
        2 => vec![vec![0, 1], vec![1, 0]],
        3 => vec![
            vec![0, 1, 2],
            vec![0, 2, 1],
            vec![1, 0, 2],
            vec![1, 2, 0],
            vec![2, 0, 1],
            vec![2, 1, 0],
        ],
        _ => vec![(0..n).collect()],
    }
}

async fn check_sequence(
    store: Arc<dyn SessionStore>,
    u: Arc<Universe>,
    steps: &[Step],
) -> Result<(), TestCaseError> {
    // Every state the model may be in: a concurrent step can leave several.
    let mut states = vec![Model::default()];
    for (i, step) in steps.iter().enumerate() {
        let now = Timestamp::now();
        match step {
            Step::One(call) => {
                let got = run_call(&*store, &u, call).await;
                let mut next = Vec::new();
                let mut expected = BTreeSet::new();
                for m in &states {
                    for (m, want) in m.step(&u, call, now) {
                        if want == got {
                            if !next.contains(&m) {
                                next.push(m);
                            }
                        } else {
                            expected.insert(format!("{want:?}"));
                        }
                    }
                }
                prop_assert!(
                    !next.is_empty(),
                    "step {i}: {call:?} returned {got:?}, the model says {expected:?}"
                );
                states = next;
            }
            Step::Together(calls) => {
                let tasks: Vec<_> = calls
                    .iter()
                    .cloned()
                    .map(|call| {
                        let (store, u) = (store.clone(), u.clone());
                        tokio::spawn(async move { run_call(&*store, &u, &call).await })
                    })
                    .collect();
                let mut got = Vec::new();
                for t in tasks {
                    got.push(t.await.expect("a store call panicked"));
                }
                let mut next = Vec::new();
                for m in &states {
                    for order in permutations(calls.len()) {
                        // Every path through the calls in this order.
                        let mut paths = vec![(m.clone(), vec![None; calls.len()])];
                        for &j in &order {
                            let mut longer = Vec::new();
                            for (m, results) in paths {
                                for (m, out) in m.step(&u, &calls[j], now) {
                                    let mut results = results.clone();
                                    results[j] = Some(out);
                                    longer.push((m, results));
                                }
                            }
                            paths = longer;
                        }
                        for (m, results) in paths {
                            let results: Vec<Outcome> = results.into_iter().flatten().collect();
                            if results == got && !next.contains(&m) {
                                next.push(m);
                            }
                        }
                    }
                }
                prop_assert!(
                    !next.is_empty(),
                    "step {i}: concurrent {calls:?} returned {got:?}, which no order of them gives"
                );
                states = next;
            }
        }
    }
    Ok(())
}

/// Runs `cases` random sequences against `harness`'s store and compares
/// each with the model; panics with the shrunk, minimal failing sequence.
///
/// # Panics
///
/// When the store disagrees with the model.
pub fn check(harness: &Harness, cases: u32) {
    let rt = tokio::runtime::Handle::current();
    let store = tokio::task::block_in_place(|| rt.block_on(harness.store()));
    let counter = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    // An ordered (not atomic) lifecycle may refuse more than a sequential
    // order would under races: only its sequential behaviour is compared.
    let result = runner.run(&steps(harness.concurrent_model()), |steps| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let u = Arc::new(Universe::new(harness, n));
        tokio::task::block_in_place(|| rt.block_on(check_sequence(store.clone(), u, &steps)))
    });
    if let Err(e) = result {
        panic!("the store disagrees with the model of the contract: {e}");
    }
}

/// How many sequences [`check`] runs unless `SESSION_MODEL_CASES` says
/// otherwise.
pub const DEFAULT_CASES: u32 = 256;

/// Model-based case of the suite: [`DEFAULT_CASES`] random sequences (or
/// `SESSION_MODEL_CASES`).
pub async fn store_agrees_with_the_model(h: Harness) {
    let cases = std::env::var("SESSION_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    check(&h, cases);
}
