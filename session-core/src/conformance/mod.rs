//! The public conformance suite for [`SessionStore`] implementations
//! (feature `conformance`).
//!
//! A backend's whole test file is two macro calls and a line that finds
//! the server. Each macro expands into one `#[tokio::test]` per case, so a
//! failure names its case:
//!
//! ```text
//! // tests/conformance.rs of a backend crate; needs `tokio` (macros,
//! // rt-multi-thread) as a dev-dependency.
//! use session_core::conformance::faults::FaultTarget;
//!
//! fn server_url() -> String {
//!     std::env::var("MYSTORE_URL").unwrap_or_else(|_| "mystore://127.0.0.1:7000".into())
//! }
//!
//! // The store contract.
//! session_core::conformance_suite!(|namespace: String| async move {
//!     MyStore::connect(&server_url()).await.unwrap().with_prefix(&namespace)
//! });
//!
//! // The same store with its server stopped, restarted, frozen and its
//! // connections reset under racing requests (see [`faults`]).
//! session_core::fault_scenarios!(server_url(), |target: FaultTarget| async move {
//!     MyStore::builder()
//!         .namespace(target.namespace())
//!         .operation_timeout(target.timeout())
//!         .connect(target.url())
//!         .await
//!         .unwrap()
//! });
//! ```
//!
//! Test stores with something extra (a delay, call counts, a failure
//! switch, a table dropped with the store) are [`HookedStore`]s with
//! [`StoreHooks`], not hand-written forwarding stores.
//!
//! The factory receives a namespace (`[a-z0-9_]`, at most 24 characters,
//! unique per case) and returns a store; stores built with different
//! namespaces must share nothing. Cases also use unique keys and user ids,
//! so they run in parallel against one server without stepping on each
//! other. Expiry cases use real deadlines of one to two seconds, so they hold
//! on servers that expire keys themselves.
//!
//! The lifecycle race cases (`racing_*`, `*_racing_*`) release dozens of
//! concurrent calls at once, [`Harness::rounds`] times (50 unless the
//! `SESSION_CONFORMANCE_ROUNDS` environment variable says otherwise), the
//! manager ones through a [`SlowStore`] that widens every gap between
//! store calls. A backend whose lifecycle step is ordered rather than
//! atomic (see [`SessionStore`]'s concurrency rules) declares it, and its
//! race cases then check "never more" instead of "exactly":
//!
//! ```text
//! session_core::conformance_suite!(factory, lifecycle = ordered);
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::clock::Timestamp;
use crate::id::SessionId;
use crate::key::{KeyDeriver, StorageKey};
use crate::record::{SessionRecord, SessionSummary};
use crate::store::{CreateOptions, Created, SessionStore, StoreError, StoreResult};

pub mod decorators;
mod devices;
pub mod faults;
mod lifecycle;
pub mod model;
pub mod redaction;
mod rules;

pub use decorators::{CallCounter, HookedStore, Operation, SlowStore, StoreHooks};

type Factory = Arc<dyn Fn(String) -> BoxFuture<'static, Arc<dyn SessionStore>> + Send + Sync>;

/// What a case gets: a store factory plus unique names.
#[derive(Clone)]
pub struct Harness {
    factory: Factory,
    run: String,
    atomic: bool,
    concurrent_model: bool,
    rounds: usize,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("run", &self.run)
            .field("atomic", &self.atomic)
            .field("concurrent_model", &self.concurrent_model)
            .field("rounds", &self.rounds)
            .finish_non_exhaustive()
    }
}

/// Rounds of each race case unless `SESSION_CONFORMANCE_ROUNDS` says
/// otherwise.
pub const DEFAULT_ROUNDS: usize = 50;

impl Harness {
    /// Wraps a factory `namespace -> store`.
    pub fn new<F, Fut, S>(factory: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = S> + Send + 'static,
        S: SessionStore,
    {
        let factory: Factory = Arc::new(move |ns| {
            let fut = factory(ns);
            Box::pin(async move { Arc::new(fut.await) as Arc<dyn SessionStore> })
        });
        let mut raw = [0u8; 6];
        getrandom::fill(&mut raw).expect("the operating system CSPRNG failed");
        let run: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let rounds = std::env::var("SESSION_CONFORMANCE_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_ROUNDS);
        Self {
            factory,
            run,
            atomic: true,
            concurrent_model: true,
            rounds,
        }
    }

    /// Declares that the store's lifecycle step is ordered, not atomic: its
    /// races may refuse a login or end a session early, never the reverse.
    /// The race cases then check "at most" where they check "exactly".
    #[must_use]
    pub fn ordered_lifecycle(mut self) -> Self {
        self.atomic = false;
        self
    }

    /// Runs each race case `rounds` times instead of the default.
    #[must_use]
    pub fn with_rounds(mut self, rounds: usize) -> Self {
        self.rounds = rounds;
        self
    }

    /// Runs the model-based case with one call at a time only: for a store
    /// with a known linearizability gap under concurrent calls, so the rest
    /// of its behaviour is still compared with the model. Every other case
    /// (the race cases included) runs as before.
    #[must_use]
    pub fn sequential_model(mut self) -> Self {
        self.concurrent_model = false;
        self
    }

    /// Whether the model-based case releases calls together.
    #[must_use]
    pub fn concurrent_model(&self) -> bool {
        self.atomic && self.concurrent_model
    }

    /// Whether the store's lifecycle step is atomic (the default).
    #[must_use]
    pub fn is_atomic(&self) -> bool {
        self.atomic
    }

    /// How many rounds each race case runs.
    #[must_use]
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// The delay [`SlowStore`] adds before and after each call in the
    /// manager race cases.
    #[must_use]
    pub fn slow_delay(&self) -> Duration {
        Duration::from_millis(2)
    }

    /// The case's store, in the case's own namespace.
    pub async fn store(&self) -> Arc<dyn SessionStore> {
        self.store_in("a").await
    }

    /// A store in another namespace of this case (`suffix` is 1-8 of
    /// `[a-z0-9]`).
    pub async fn store_in(&self, suffix: &str) -> Arc<dyn SessionStore> {
        (self.factory)(format!("cs_{}_{suffix}", self.run)).await
    }

    /// A fresh storage key, derived from a fresh ID as the manager does.
    #[must_use]
    pub fn key(&self) -> StorageKey {
        KeyDeriver::new().derive(&SessionId::generate())
    }

    /// A user id unique to this case.
    #[must_use]
    pub fn user(&self, name: &str) -> String {
        format!("{name}-{}", self.run)
    }
}

/// A record for user `user`, with `data`, whose idle deadline is
/// `idle_ms` and absolute deadline `abs_ms` from now.
#[must_use]
pub fn record(user: Option<&str>, data: &[u8], idle_ms: u64, abs_ms: u64) -> SessionRecord {
    let now = Timestamp::now();
    SessionRecord {
        data: Bytes::copy_from_slice(data),
        user_id: user.map(str::to_owned),
        created_at: now,
        last_access: now,
        idle_deadline: now.saturating_add(Duration::from_millis(idle_ms)),
        absolute_deadline: now.saturating_add(Duration::from_millis(abs_ms)),
        version: 1,
        label: None,
    }
}

const HOUR: u64 = 3_600_000;

fn live(user: Option<&str>, data: &[u8]) -> SessionRecord {
    record(user, data, HOUR, 2 * HOUR)
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

async fn must_load(store: &dyn SessionStore, key: &StorageKey) -> SessionRecord {
    store
        .load(key)
        .await
        .expect("load failed")
        .expect("record missing")
}

fn keys_of(list: &[SessionSummary]) -> Vec<StorageKey> {
    let mut v: Vec<StorageKey> = list.iter().map(|s| s.key.clone()).collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<StorageKey>) -> Vec<StorageKey> {
    v.sort();
    v
}

/// Expands into one `#[tokio::test]` per conformance case. See the
/// [module docs](crate::conformance).
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr, model = sequential) => {
        $crate::conformance_suite!(@cases $crate::conformance::Harness::new($factory).sequential_model());
    };
    ($factory:expr, lifecycle = ordered) => {
        $crate::conformance_suite!(@cases $crate::conformance::Harness::new($factory).ordered_lifecycle());
    };
    ($factory:expr) => {
        $crate::conformance_suite!(@cases $crate::conformance::Harness::new($factory));
    };
    (@cases $harness:expr) => {
        $crate::__conformance_case_list! { __conformance_cases, $harness }
    };
}

/// The one list of conformance cases: calls `$crate::$callback!($arg; names...)`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_case_list {
    ($callback:ident, $arg:expr) => {
        $crate::$callback! { $arg;
            round_trip_empty_data,
            round_trip_one_byte,
            round_trip_512_kib_binary,
            round_trip_preserves_metadata,
            round_trip_anonymous_record,
            create_on_existing_key_is_rejected,
            concurrent_create_has_one_winner,
            create_after_delete_succeeds,
            load_missing_key_is_none,
            idle_deadline_expires,
            absolute_deadline_expires,
            subsecond_deadline_is_exact,
            touch_extends_idle_deadline,
            touch_keeps_data_and_version,
            touch_missing_key_is_not_found,
            touch_expired_record_is_not_found,
            delete_twice_is_ok,
            delete_missing_key_is_ok,
            update_with_current_version_succeeds,
            update_with_stale_version_conflicts,
            update_missing_key_is_not_found,
            update_expired_record_is_not_found,
            update_can_extend_deadlines,
            concurrent_read_modify_write_loses_no_update,
            list_user_returns_summaries,
            list_unknown_user_is_empty,
            list_user_many_sessions,
            user_index_after_rotation,
            user_index_after_logout,
            user_index_after_expiry,
            user_index_after_eviction,
            user_index_survives_update,
            delete_user_removes_only_that_user,
            delete_user_then_sessions_do_not_load,
            similar_user_ids_are_distinct,
            long_user_id,
            non_ascii_user_id,
            user_id_with_separators,
            namespaces_share_nothing,
            delete_expired_keeps_live_records,
            manager_round_trip,
            raw_session_id_never_reaches_store,
            create_with_default_options_is_create,
            rotation_moves_the_record,
            rotation_into_a_login_indexes_the_new_key,
            rotation_of_a_missing_record_is_not_found,
            rotation_of_a_deleted_record_is_not_found,
            rotation_of_an_expired_record_is_not_found,
            rotation_with_a_stale_version_conflicts,
            rotation_of_another_users_record_conflicts,
            rotation_onto_a_live_key_is_rejected,
            moved_key_is_dead,
            delete_of_a_moved_key_ends_the_session,
            reject_new_refuses_at_the_limit,
            reject_new_counts_only_the_users_other_live_sessions,
            evict_oldest_keeps_the_newest,
            evict_oldest_breaks_ties_by_key,
            evict_oldest_does_not_store_an_older_new_record,
            racing_logins_reject_new_admit_exactly_the_free_places,
            racing_logins_evict_oldest_leave_exactly_max,
            racing_rotations_of_one_record_have_one_winner,
            rotation_racing_delete_user_leaves_nothing_live,
            racing_delete_users_count_each_session_once,
            rotation_racing_delete_leaves_nothing_live,
            rotation_racing_update_never_loses_the_update,
            create_racing_delete_user_leaves_every_session_indexed,
            manager_racing_logins_respect_reject_new,
            manager_racing_logins_evict_oldest_keep_max,
            manager_rotate_racing_logout_ends_the_session,
            manager_rotate_racing_logout_everywhere_ends_the_session,
            manager_rotate_racing_end_session_ends_the_session,
            manager_rotate_and_login_after_expiry_are_session_ended,
            record_is_live_until_its_idle_deadline,
            record_is_live_until_its_absolute_deadline,
            touched_record_is_live_until_its_new_deadline,
            create_over_an_expired_record_succeeds,
            update_stores_every_field,
            update_of_an_expired_record_is_not_found_at_any_version,
            list_user_reflects_touch_and_update,
            delete_user_is_exact_and_counts_live_sessions,
            refused_create_leaves_the_owner_alone,
            failed_rotation_leaves_the_keys_as_they_were,
            delete_expired_never_removes_a_live_record,
            store_agrees_with_the_model,
            versions_span_the_whole_u64_range,
            user_ids_up_to_1_kib_with_any_characters,
            label_round_trips_through_create_rotation_and_listing,
            absent_label_stays_none,
            labels_up_to_the_stored_limit_with_any_characters,
            manager_login_label_is_listed_with_the_current_session_marked,
            manager_refuses_an_invalid_label_before_any_store_call,
            manager_end_user_session_refuses_another_users_session,
            manager_end_user_session_racing_rotation_and_login,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::cases::$case($harness).await;
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_case_fns {
    ($unit:expr; $($case:ident),* $(,)?) => {
        vec![$(
            $crate::conformance::Case {
                name: stringify!($case),
                run: |h| Box::pin($crate::conformance::cases::$case(h)),
            }
        ),*]
    };
}

/// One conformance case, for running the suite from code (see
/// [`run_suite`]).
#[derive(Clone, Copy)]
pub struct Case {
    /// The case's name, as in the generated tests.
    pub name: &'static str,
    /// Runs the case; it panics when the store breaks the rule.
    pub run: fn(Harness) -> BoxFuture<'static, ()>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every case of the suite, in the order the macro generates them.
#[must_use]
pub fn all_cases() -> Vec<Case> {
    crate::__conformance_case_list!(__conformance_case_fns, ())
}

/// Runs every case against `harness` concurrently, each on its own task,
/// and returns the names of the cases that failed (panicked), sorted. Used
/// to check the suite itself: a store with a planted bug must fail at least
/// one case.
pub async fn run_suite(harness: &Harness) -> Vec<&'static str> {
    let tasks: Vec<_> = all_cases()
        .into_iter()
        .map(|case| (case.name, tokio::spawn((case.run)(harness.clone()))))
        .collect();
    let mut failed = Vec::new();
    for (name, task) in tasks {
        if task.await.is_err() {
            failed.push(name);
        }
    }
    failed.sort_unstable();
    failed
}

/// The cases, one public async function each.
pub mod cases {
    pub use super::devices::*;
    pub use super::lifecycle::*;
    pub use super::model::store_agrees_with_the_model;
    pub use super::rules::*;
    use super::*;
    use crate::manager::SessionManager;
    use crate::policy::{LimitStrategy, SessionConfig};

    async fn round_trip(h: Harness, data: Vec<u8>) {
        let store = h.store().await;
        let key = h.key();
        let rec = live(None, &data);
        store.create(&key, &rec).await.expect("create failed");
        let got = must_load(&*store, &key).await;
        assert_eq!(got.data.len(), data.len(), "data length changed");
        assert!(got.data == data, "data bytes changed");
    }

    /// 0 bytes of data survive a round trip.
    pub async fn round_trip_empty_data(h: Harness) {
        round_trip(h, Vec::new()).await;
    }

    /// 1 byte of data survives a round trip.
    pub async fn round_trip_one_byte(h: Harness) {
        round_trip(h, vec![0x00]).await;
    }

    /// 512 KiB of every byte value survive a round trip.
    pub async fn round_trip_512_kib_binary(h: Harness) {
        let data: Vec<u8> = (0..512 * 1024).map(|i| (i * 7 % 256) as u8).collect();
        round_trip(h, data).await;
    }

    /// User id, timestamps (to the millisecond) and version round-trip.
    pub async fn round_trip_preserves_metadata(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        let user = h.user("meta");
        let mut rec = live(Some(&user), b"m");
        rec.created_at = rec.created_at.saturating_sub(Duration::from_millis(1234));
        rec.last_access = rec.last_access.saturating_sub(Duration::from_millis(17));
        rec.version = 41;
        store.create(&key, &rec).await.unwrap();
        assert_eq!(must_load(&*store, &key).await, rec);
    }

    /// A record without a user comes back without one.
    pub async fn round_trip_anonymous_record(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        store.create(&key, &live(None, b"anon")).await.unwrap();
        assert_eq!(must_load(&*store, &key).await.user_id, None);
    }

    /// `create` never overwrites a live record.
    pub async fn create_on_existing_key_is_rejected(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        store.create(&key, &live(None, b"first")).await.unwrap();
        let err = store
            .create(&key, &live(None, b"second"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists), "got {err:?}");
        assert_eq!(&must_load(&*store, &key).await.data[..], b"first");
    }

    /// Of 16 concurrent creates on one key, exactly one wins.
    pub async fn concurrent_create_has_one_winner(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        let tasks: Vec<_> = (0..16u8)
            .map(|i| {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move { (i, store.create(&key, &live(None, &[i])).await) })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (i, Ok(())) => winners.push(i),
                (_, Err(StoreError::AlreadyExists)) => {}
                (_, Err(e)) => panic!("unexpected error {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "winners: {winners:?}");
        assert_eq!(&must_load(&*store, &key).await.data[..], &[winners[0]]);
    }

    /// A key can be created again after it was deleted.
    pub async fn create_after_delete_succeeds(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        store.create(&key, &live(None, b"1")).await.unwrap();
        store.delete(&key).await.unwrap();
        store.create(&key, &live(None, b"2")).await.unwrap();
        assert_eq!(&must_load(&*store, &key).await.data[..], b"2");
    }

    /// Loading a key that was never written gives `None`.
    pub async fn load_missing_key_is_none(h: Harness) {
        let store = h.store().await;
        assert!(store.load(&h.key()).await.unwrap().is_none());
    }

    /// A record is gone once its idle deadline passes.
    pub async fn idle_deadline_expires(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        store
            .create(&key, &record(None, b"x", 1_000, HOUR))
            .await
            .unwrap();
        assert!(store.load(&key).await.unwrap().is_some());
        sleep_ms(1_300).await;
        assert!(
            store.load(&key).await.unwrap().is_none(),
            "loaded past idle deadline"
        );
    }

    /// A record is gone once its absolute deadline passes, even if the idle
    /// deadline is later.
    pub async fn absolute_deadline_expires(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        store
            .create(&key, &record(None, b"x", HOUR, 1_000))
            .await
            .unwrap();
        assert!(store.load(&key).await.unwrap().is_some());
        sleep_ms(1_300).await;
        assert!(
            store.load(&key).await.unwrap().is_none(),
            "loaded past absolute deadline"
        );
    }

    /// Expiry is exact to well under a second, whatever the server's TTL
    /// granularity.
    pub async fn subsecond_deadline_is_exact(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        store
            .create(&key, &record(None, b"x", 400, HOUR))
            .await
            .unwrap();
        sleep_ms(600).await;
        assert!(
            store.load(&key).await.unwrap().is_none(),
            "loaded 200 ms past deadline"
        );
    }

    /// `touch` keeps a record alive past its original idle deadline.
    pub async fn touch_extends_idle_deadline(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        store
            .create(&key, &record(None, b"x", 1_000, HOUR))
            .await
            .unwrap();
        sleep_ms(500).await;
        let now = Timestamp::now();
        let idle = now.saturating_add(Duration::from_millis(2_000));
        store.touch(&key, now, idle).await.unwrap();
        sleep_ms(1_000).await;
        let got = must_load(&*store, &key).await;
        assert_eq!(got.idle_deadline, idle);
        assert_eq!(got.last_access, now);
        sleep_ms(1_800).await;
        assert!(
            store.load(&key).await.unwrap().is_none(),
            "touched deadline not enforced"
        );
    }

    /// `touch` changes neither data nor version.
    pub async fn touch_keeps_data_and_version(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        let user = h.user("touch");
        let rec = live(Some(&user), b"payload");
        store.create(&key, &rec).await.unwrap();
        let later = Timestamp::now().saturating_add(Duration::from_millis(5_000));
        store
            .touch(
                &key,
                later,
                later.saturating_add(Duration::from_millis(HOUR)),
            )
            .await
            .unwrap();
        let got = must_load(&*store, &key).await;
        assert_eq!(got.data, rec.data);
        assert_eq!(got.version, rec.version);
        assert_eq!(got.user_id, rec.user_id);
        assert_eq!(got.created_at, rec.created_at);
        assert_eq!(got.absolute_deadline, rec.absolute_deadline);
    }

    /// Touching a missing key is `NotFound` and creates nothing.
    pub async fn touch_missing_key_is_not_found(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        let now = Timestamp::now();
        let err = store
            .touch(&key, now, now.saturating_add(Duration::from_millis(HOUR)))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound), "got {err:?}");
        assert!(store.load(&key).await.unwrap().is_none());
    }

    /// Touch never resurrects an expired record.
    pub async fn touch_expired_record_is_not_found(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        store
            .create(&key, &record(None, b"x", 300, HOUR))
            .await
            .unwrap();
        sleep_ms(500).await;
        let now = Timestamp::now();
        let r = store
            .touch(&key, now, now.saturating_add(Duration::from_millis(HOUR)))
            .await;
        assert!(matches!(r, Err(StoreError::NotFound)), "got {r:?}");
        assert!(
            store.load(&key).await.unwrap().is_none(),
            "touch resurrected a record"
        );
    }

    /// Deleting twice succeeds both times.
    pub async fn delete_twice_is_ok(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        store.create(&key, &live(None, b"x")).await.unwrap();
        store.delete(&key).await.unwrap();
        store.delete(&key).await.unwrap();
        assert!(store.load(&key).await.unwrap().is_none());
    }

    /// Deleting a key that never existed succeeds.
    pub async fn delete_missing_key_is_ok(h: Harness) {
        h.store().await.delete(&h.key()).await.unwrap();
    }

    /// An update against the current version is stored.
    pub async fn update_with_current_version_succeeds(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        let rec = live(None, b"v1");
        store.create(&key, &rec).await.unwrap();
        let next = SessionRecord {
            data: Bytes::from_static(b"v2"),
            version: 2,
            ..rec
        };
        store.update(&key, 1, &next).await.unwrap();
        assert_eq!(must_load(&*store, &key).await, next);
    }

    /// An update against a stale version is a `Conflict` and writes nothing.
    pub async fn update_with_stale_version_conflicts(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        let rec = live(None, b"v1");
        store.create(&key, &rec).await.unwrap();
        let a = SessionRecord {
            data: Bytes::from_static(b"a"),
            version: 2,
            ..rec.clone()
        };
        store.update(&key, 1, &a).await.unwrap();
        let b = SessionRecord {
            data: Bytes::from_static(b"b"),
            version: 2,
            ..rec
        };
        let err = store.update(&key, 1, &b).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict), "got {err:?}");
        assert_eq!(must_load(&*store, &key).await, a);
    }

    /// Updating a missing key is `NotFound` and creates nothing.
    pub async fn update_missing_key_is_not_found(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        let err = store.update(&key, 1, &live(None, b"x")).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound), "got {err:?}");
        assert!(store.load(&key).await.unwrap().is_none());
    }

    /// Updating an expired record is `NotFound` and does not resurrect it.
    pub async fn update_expired_record_is_not_found(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        store
            .create(&key, &record(None, b"x", 300, HOUR))
            .await
            .unwrap();
        sleep_ms(500).await;
        let r = store
            .update(
                &key,
                1,
                &SessionRecord {
                    version: 2,
                    ..live(None, b"y")
                },
            )
            .await;
        assert!(matches!(r, Err(StoreError::NotFound)), "got {r:?}");
        assert!(
            store.load(&key).await.unwrap().is_none(),
            "update resurrected a record"
        );
    }

    /// An update moves the deadlines (the record outlives its old one).
    pub async fn update_can_extend_deadlines(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        let rec = record(None, b"x", 1_000, HOUR);
        store.create(&key, &rec).await.unwrap();
        let next = SessionRecord {
            version: 2,
            ..record(None, b"y", 4_000, HOUR)
        };
        store.update(&key, 1, &next).await.unwrap();
        sleep_ms(1_400).await;
        assert_eq!(&must_load(&*store, &key).await.data[..], b"y");
    }

    /// 32 tasks each increment a counter with load / update / retry on
    /// conflict; the counter ends at exactly 32.
    pub async fn concurrent_read_modify_write_loses_no_update(h: Harness) {
        let store = h.store().await;
        let key = h.key();
        store
            .create(&key, &live(None, &0u64.to_be_bytes()))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move {
                    for _ in 0..10_000 {
                        let cur = must_load(&*store, &key).await;
                        let n = u64::from_be_bytes(cur.data[..8].try_into().unwrap());
                        let next = SessionRecord {
                            data: Bytes::copy_from_slice(&(n + 1).to_be_bytes()),
                            version: cur.version + 1,
                            ..cur.clone()
                        };
                        match store.update(&key, cur.version, &next).await {
                            Ok(()) => return,
                            Err(StoreError::Conflict) => tokio::task::yield_now().await,
                            Err(e) => panic!("update failed: {e:?}"),
                        }
                    }
                    panic!("no progress after 10000 attempts");
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let end = must_load(&*store, &key).await;
        assert_eq!(
            u64::from_be_bytes(end.data[..8].try_into().unwrap()),
            32,
            "lost updates"
        );
        assert_eq!(end.version, 33);
    }

    /// The index lists a user's sessions with their metadata.
    pub async fn list_user_returns_summaries(h: Harness) {
        let store = h.store().await;
        let user = h.user("list");
        let (k1, k2) = (h.key(), h.key());
        let r1 = live(Some(&user), b"1");
        let r2 = live(Some(&user), b"2");
        store.create(&k1, &r1).await.unwrap();
        store.create(&k2, &r2).await.unwrap();
        store
            .create(&h.key(), &live(Some(&h.user("other")), b"3"))
            .await
            .unwrap();
        store.create(&h.key(), &live(None, b"4")).await.unwrap();
        let mut list = store.list_user_sessions(&user).await.unwrap();
        list.sort_by(|a, b| a.key.cmp(&b.key));
        let mut want = vec![r1.summary(&k1), r2.summary(&k2)];
        want.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(list, want);
    }

    /// An unknown user has no sessions.
    pub async fn list_unknown_user_is_empty(h: Harness) {
        let store = h.store().await;
        assert!(store
            .list_user_sessions(&h.user("nobody"))
            .await
            .unwrap()
            .is_empty());
    }

    /// 25 sessions of one user are all listed.
    pub async fn list_user_many_sessions(h: Harness) {
        let store = h.store().await;
        let user = h.user("many");
        let mut keys = Vec::new();
        for i in 0..25u8 {
            let k = h.key();
            store.create(&k, &live(Some(&user), &[i])).await.unwrap();
            keys.push(k);
        }
        assert_eq!(
            keys_of(&store.list_user_sessions(&user).await.unwrap()),
            sorted(keys)
        );
    }

    /// After a rotation (create new, delete old) only the new key is listed.
    pub async fn user_index_after_rotation(h: Harness) {
        let store = h.store().await;
        let user = h.user("rot");
        let manager = SessionManager::builder_arc(store.clone()).build();
        let mut s = manager.start();
        manager.login(&mut s, &user).await.unwrap();
        let first = s.storage_key().clone();
        manager.rotate(&mut s).await.unwrap();
        assert_ne!(&first, s.storage_key());
        assert_eq!(
            keys_of(&store.list_user_sessions(&user).await.unwrap()),
            vec![s.storage_key().clone()]
        );
        assert!(
            store.load(&first).await.unwrap().is_none(),
            "old id still loads"
        );
    }

    /// After logout the session leaves the index.
    pub async fn user_index_after_logout(h: Harness) {
        let store = h.store().await;
        let user = h.user("out");
        let manager = SessionManager::builder_arc(store.clone()).build();
        let mut a = manager.start();
        manager.login(&mut a, &user).await.unwrap();
        let mut b = manager.start();
        manager.login(&mut b, &user).await.unwrap();
        manager.logout(&mut a).await.unwrap();
        assert_eq!(
            keys_of(&store.list_user_sessions(&user).await.unwrap()),
            vec![b.storage_key().clone()]
        );
    }

    /// Expired sessions are never listed.
    pub async fn user_index_after_expiry(h: Harness) {
        let store = h.store().await;
        let user = h.user("exp");
        let short = h.key();
        let long = h.key();
        store
            .create(&short, &record(Some(&user), b"s", 700, HOUR))
            .await
            .unwrap();
        store.create(&long, &live(Some(&user), b"l")).await.unwrap();
        assert_eq!(store.list_user_sessions(&user).await.unwrap().len(), 2);
        sleep_ms(1_000).await;
        assert_eq!(
            keys_of(&store.list_user_sessions(&user).await.unwrap()),
            vec![long]
        );
    }

    /// With a limit of 2 and eviction, a third login ends the oldest.
    pub async fn user_index_after_eviction(h: Harness) {
        let store = h.store().await;
        let user = h.user("evict");
        let config = SessionConfig::builder()
            .max_sessions_per_user(
                std::num::NonZeroUsize::new(2).unwrap(),
                LimitStrategy::EvictOldest,
            )
            .build()
            .unwrap();
        let manager = SessionManager::builder_arc(store.clone())
            .config(config)
            .build();
        let mut keys = Vec::new();
        for _ in 0..3 {
            let mut s = manager.start();
            manager.login(&mut s, &user).await.unwrap();
            keys.push(s.storage_key().clone());
            sleep_ms(5).await;
        }
        assert_eq!(
            keys_of(&store.list_user_sessions(&user).await.unwrap()),
            sorted(keys[1..].to_vec())
        );
        assert!(
            store.load(&keys[0]).await.unwrap().is_none(),
            "evicted session still loads"
        );
    }

    /// Updates keep the session in its user's index.
    pub async fn user_index_survives_update(h: Harness) {
        let store = h.store().await;
        let user = h.user("upd");
        let key = h.key();
        let rec = live(Some(&user), b"1");
        store.create(&key, &rec).await.unwrap();
        let next = SessionRecord {
            data: Bytes::from_static(b"2"),
            version: 2,
            ..rec
        };
        store.update(&key, 1, &next).await.unwrap();
        assert_eq!(
            keys_of(&store.list_user_sessions(&user).await.unwrap()),
            vec![key]
        );
    }

    /// `delete_user` removes all of that user's sessions and no others.
    pub async fn delete_user_removes_only_that_user(h: Harness) {
        let store = h.store().await;
        let (alice, bob) = (h.user("alice"), h.user("bob"));
        let a: Vec<_> = (0..3).map(|_| h.key()).collect();
        for k in &a {
            store.create(k, &live(Some(&alice), b"a")).await.unwrap();
        }
        let b = h.key();
        store.create(&b, &live(Some(&bob), b"b")).await.unwrap();
        let anon = h.key();
        store.create(&anon, &live(None, b"n")).await.unwrap();
        assert_eq!(store.delete_user(&alice).await.unwrap(), 3);
        assert!(store.list_user_sessions(&alice).await.unwrap().is_empty());
        assert_eq!(store.delete_user(&alice).await.unwrap(), 0);
        assert!(store.load(&b).await.unwrap().is_some());
        assert!(store.load(&anon).await.unwrap().is_some());
        assert_eq!(store.list_user_sessions(&bob).await.unwrap().len(), 1);
    }

    /// After `delete_user` none of the user's sessions loads.
    pub async fn delete_user_then_sessions_do_not_load(h: Harness) {
        let store = h.store().await;
        let user = h.user("gone");
        let keys: Vec<_> = (0..5).map(|_| h.key()).collect();
        for k in &keys {
            store.create(k, &live(Some(&user), b"x")).await.unwrap();
        }
        store.delete_user(&user).await.unwrap();
        for k in &keys {
            assert!(
                store.load(k).await.unwrap().is_none(),
                "session survived delete_user"
            );
        }
    }

    /// User ids differing only in case or trailing space are distinct users.
    pub async fn similar_user_ids_are_distinct(h: Harness) {
        let store = h.store().await;
        let base = h.user("sim");
        let ids = [
            base.clone(),
            base.to_uppercase(),
            format!("{base} "),
            format!("{base}\u{0301}"),
        ];
        for id in &ids {
            store.create(&h.key(), &live(Some(id), b"x")).await.unwrap();
        }
        for id in &ids {
            assert_eq!(
                store.list_user_sessions(id).await.unwrap().len(),
                1,
                "user {id:?}"
            );
        }
        assert_eq!(store.delete_user(&ids[1]).await.unwrap(), 1);
        assert_eq!(store.list_user_sessions(&ids[0]).await.unwrap().len(), 1);
    }

    async fn user_id_round_trip(h: Harness, user: String) {
        let store = h.store().await;
        let key = h.key();
        store.create(&key, &live(Some(&user), b"x")).await.unwrap();
        assert_eq!(
            must_load(&*store, &key).await.user_id.as_deref(),
            Some(user.as_str())
        );
        assert_eq!(
            keys_of(&store.list_user_sessions(&user).await.unwrap()),
            vec![key.clone()]
        );
        assert_eq!(store.delete_user(&user).await.unwrap(), 1);
        assert!(store.load(&key).await.unwrap().is_none());
    }

    /// A 1000-character user id works (index, load, delete).
    pub async fn long_user_id(h: Harness) {
        let user = format!("{}{}", h.user("long"), "x".repeat(1000));
        user_id_round_trip(h, user).await;
    }

    /// A non-ASCII user id works.
    pub async fn non_ascii_user_id(h: Harness) {
        let user = h.user("Zoë-名前-🙂-Ω");
        user_id_round_trip(h, user).await;
    }

    /// A user id with separators, braces, wildcards and whitespace works.
    pub async fn user_id_with_separators(h: Harness) {
        let user = h.user("{tag}:a b*?/\\'\"%_\t;--");
        user_id_round_trip(h, user).await;
    }

    /// Stores in different namespaces share nothing.
    pub async fn namespaces_share_nothing(h: Harness) {
        let a = h.store_in("a").await;
        let b = h.store_in("b").await;
        let key = h.key();
        let user = h.user("ns");
        a.create(&key, &live(Some(&user), b"in a")).await.unwrap();
        assert!(
            b.load(&key).await.unwrap().is_none(),
            "namespace b sees a's record"
        );
        assert!(
            b.list_user_sessions(&user).await.unwrap().is_empty(),
            "namespace b sees a's index"
        );
        b.create(&key, &live(Some(&user), b"in b"))
            .await
            .expect("b refused a key only a has");
        assert_eq!(b.delete_user(&user).await.unwrap(), 1);
        assert_eq!(&must_load(&*a, &key).await.data[..], b"in a");
        assert_eq!(a.list_user_sessions(&user).await.unwrap().len(), 1);
    }

    /// `delete_expired` keeps live records (and may remove expired ones).
    pub async fn delete_expired_keeps_live_records(h: Harness) {
        let store = h.store().await;
        let user = h.user("sweep");
        let dead = h.key();
        let alive = h.key();
        store
            .create(&dead, &record(Some(&user), b"d", 300, HOUR))
            .await
            .unwrap();
        store
            .create(&alive, &live(Some(&user), b"a"))
            .await
            .unwrap();
        sleep_ms(500).await;
        store.delete_expired().await.unwrap();
        assert!(store.load(&dead).await.unwrap().is_none());
        assert_eq!(&must_load(&*store, &alive).await.data[..], b"a");
        assert_eq!(
            keys_of(&store.list_user_sessions(&user).await.unwrap()),
            vec![alive]
        );
    }

    /// The manager works end to end over this store.
    pub async fn manager_round_trip(h: Harness) {
        let store = h.store().await;
        let manager = SessionManager::builder_arc(store).build();
        let mut s = manager.start();
        s.insert("cart", &vec![1, 2, 3]).unwrap();
        manager.commit(&mut s).await.unwrap();
        let cookie = manager
            .response_cookie(&s)
            .expect("new session sets a cookie");
        let mut again = manager
            .load_cookie_value(cookie.value())
            .await
            .unwrap()
            .expect("session did not load by its cookie");
        assert_eq!(again.get::<Vec<i32>>("cart").unwrap(), Some(vec![1, 2, 3]));
        again.insert("n", &1).unwrap();
        manager.commit(&mut again).await.unwrap();
        manager.logout(&mut again).await.unwrap();
        assert!(manager
            .load_cookie_value(cookie.value())
            .await
            .unwrap()
            .is_none());
    }

    /// Records every string and byte the manager hands to the store.
    struct Spy {
        inner: Arc<dyn SessionStore>,
        seen: Mutex<Vec<Vec<u8>>>,
    }

    impl Spy {
        fn saw(&self, bytes: &[u8]) {
            self.seen.lock().unwrap().push(bytes.to_vec());
        }
        fn saw_record(&self, key: &StorageKey, r: &SessionRecord) {
            self.saw(key.as_str().as_bytes());
            self.saw(&r.data);
            if let Some(u) = &r.user_id {
                self.saw(u.as_bytes());
            }
        }
    }

    #[async_trait]
    impl SessionStore for Spy {
        async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
            self.saw_record(key, record);
            self.inner.create(key, record).await
        }
        async fn create_with(
            &self,
            key: &StorageKey,
            record: &SessionRecord,
            options: &CreateOptions,
        ) -> StoreResult<Created> {
            self.saw_record(key, record);
            if let Some(r) = &options.replaces {
                self.saw(r.key.as_str().as_bytes());
            }
            self.inner.create_with(key, record, options).await
        }
        async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>> {
            self.saw(key.as_str().as_bytes());
            self.inner.load(key).await
        }
        async fn update(
            &self,
            key: &StorageKey,
            v: u64,
            record: &SessionRecord,
        ) -> StoreResult<()> {
            self.saw_record(key, record);
            self.inner.update(key, v, record).await
        }
        async fn touch(&self, key: &StorageKey, a: Timestamp, i: Timestamp) -> StoreResult<()> {
            self.saw(key.as_str().as_bytes());
            self.inner.touch(key, a, i).await
        }
        async fn delete(&self, key: &StorageKey) -> StoreResult<()> {
            self.saw(key.as_str().as_bytes());
            self.inner.delete(key).await
        }
        async fn list_user_sessions(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
            self.inner.list_user_sessions(user_id).await
        }
        async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
            self.inner.delete_user(user_id).await
        }
        async fn delete_expired(&self) -> StoreResult<u64> {
            self.inner.delete_expired().await
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// Neither the cookie value nor the raw ID bytes ever reach the store:
    /// not as a key, not inside data, not as a user id; and what the store
    /// holds does not contain them either.
    pub async fn raw_session_id_never_reaches_store(h: Harness) {
        let store = h.store().await;
        let spy = Arc::new(Spy {
            inner: store.clone(),
            seen: Mutex::new(Vec::new()),
        });
        let manager = SessionManager::builder_arc(spy.clone())
            .config(
                SessionConfig::builder()
                    .touch_interval(Duration::ZERO)
                    .build()
                    .unwrap(),
            )
            .build();
        let user = h.user("spy");
        let mut ids = Vec::new();
        let mut s = manager.start();
        ids.push(s.id().clone());
        s.insert("k", "v").unwrap();
        manager.commit(&mut s).await.unwrap();
        manager.rotate(&mut s).await.unwrap();
        ids.push(s.id().clone());
        manager.login(&mut s, &user).await.unwrap();
        ids.push(s.id().clone());
        let token = manager.issue_token(&mut s, "op");
        manager.commit(&mut s).await.unwrap();
        let mut loaded = manager.load(s.id()).await.unwrap().expect("session loads");
        assert!(manager
            .consume_token(&mut loaded, "op", token.expose())
            .await
            .unwrap()
            .is_accepted());
        manager.commit(&mut loaded).await.unwrap();
        let stored = store
            .load(loaded.storage_key())
            .await
            .unwrap()
            .expect("stored");
        let seen = spy.seen.lock().unwrap().clone();
        assert!(!seen.is_empty());
        for id in &ids {
            let text = id.expose();
            for item in seen.iter().chain(std::iter::once(&stored.data.to_vec())) {
                assert!(
                    !contains(item, text.as_bytes()),
                    "cookie value reached the store"
                );
                assert!(
                    !contains(item, id.as_bytes()),
                    "raw id bytes reached the store"
                );
            }
            assert!(
                !contains(&stored.data, token.expose().as_bytes()),
                "token stored in clear"
            );
        }
        manager.logout(&mut loaded).await.unwrap();
    }
}
