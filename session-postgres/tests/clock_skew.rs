//! The store measures the application's clock against the database's, at
//! connect and periodically, logs a warning past `max_clock_skew`, and
//! never fails an operation because of a skew.
//!
//! Its own test binary: the warnings are captured by a process-wide
//! subscriber (the measurements may run on any worker thread).

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{database_url, unique, Scratch};
use session_core::conformance::record;
use session_core::{Clock, SessionManager, SessionStore, Timestamp};
use session_postgres::{ClockSkew, PostgresStore, PostgresStoreBuilder};
use session_test_support::storage_key as key;

const HOUR_MS: i64 = 3_600_000;
/// How far a measurement on this machine (application and database on one
/// host, one clock) may be from the true shift.
const TOLERANCE_MS: i64 = 500;

/// The system clock shifted by a fixed number of milliseconds.
#[derive(Debug)]
struct Shifted(i64);

impl Clock for Shifted {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(Timestamp::now().as_unix_millis() + self.0)
    }
}

/// Everything logged at `warn` and above, by any thread.
fn warnings() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(log.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        log
    })
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The warnings logged about `table` so far.
fn warnings_about(table: &str) -> Vec<String> {
    let log = warnings().lock().unwrap();
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|line| line.contains(table))
        .map(str::to_owned)
        .collect()
}

/// The `offset_ms` field of a logged warning.
fn logged_offset(line: &str) -> i64 {
    let (_, rest) = line
        .split_once("offset_ms=")
        .unwrap_or_else(|| panic!("no offset_ms in {line}"));
    let value = rest.split_whitespace().next().unwrap_or_default();
    value
        .parse()
        .unwrap_or_else(|_| panic!("offset_ms={value} in {line}"))
}

fn builder(table: &str, shift_ms: i64) -> PostgresStoreBuilder {
    common::builder(table).clock(Arc::new(Shifted(shift_ms)))
}

fn assert_about(skew: ClockSkew, offset_ms: i64) {
    assert!(
        (skew.offset_millis() - offset_ms).abs() <= TOLERANCE_MS,
        "expected about {offset_ms} ms: {skew}"
    );
    assert!(
        skew.uncertainty() < Duration::from_millis(TOLERANCE_MS as u64),
        "{skew}"
    );
}

/// The application's clock an hour behind the database's: measured at
/// connect as the database an hour ahead, with a warning naming the
/// offset; operations go on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_clock_an_hour_behind_is_reported_and_logged() {
    warnings();
    let table = unique("skew_behind");
    let t = Scratch::with(builder(&table, -HOUR_MS)).await;
    let at_connect = t.store.clock_skew().expect("measured at connect");
    println!("application clock 1 h behind: {at_connect}");
    assert_about(at_connect, HOUR_MS);
    assert!(at_connect.server_is_ahead());
    assert!(at_connect.exceeds(Duration::from_secs(2)));

    let logged = warnings_about(&table);
    assert_eq!(logged.len(), 1, "{logged:#?}");
    println!("logged: {}", logged[0]);
    assert!(logged[0].contains("WARN"), "{}", logged[0]);
    assert!((logged_offset(&logged[0]) - HOUR_MS).abs() <= TOLERANCE_MS);
    assert!(
        logged[0].contains("ahead of the application"),
        "{}",
        logged[0]
    );

    // Measured again on demand: a new measurement, logged again.
    let again = t.store.measure_clock_skew().await.unwrap();
    assert_about(again, HOUR_MS);
    assert!(again.measured_at() >= at_connect.measured_at());
    assert_eq!(t.store.clock_skew(), Some(again));
    assert_eq!(warnings_about(&table).len(), 2);

    // Information only: the store works (with deadlines from the real
    // clock), and a manager on the skewed clock (30 min idle timeout) shows
    // the symptom the warning is about.
    let k = key();
    t.store
        .create(&k, &record(None, b"x", 3_600_000, 3_600_000))
        .await
        .unwrap();
    assert!(t.store.load(&k).await.unwrap().is_some());
    let manager = SessionManager::builder(t.store.clone())
        .clock(Arc::new(Shifted(-HOUR_MS)))
        .build();
    let mut session = manager.start();
    manager.login(&mut session, "kim").await.unwrap();
    assert!(
        manager.load(session.id()).await.unwrap().is_none(),
        "a fresh login already expired for the database"
    );
}

/// The application's clock an hour ahead: the database is an hour behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_clock_an_hour_ahead_is_reported_and_logged() {
    warnings();
    let table = unique("skew_ahead");
    let t = Scratch::with(builder(&table, HOUR_MS)).await;
    let skew = t.store.clock_skew().expect("measured at connect");
    println!("application clock 1 h ahead: {skew}");
    assert_about(skew, -HOUR_MS);
    assert!(!skew.server_is_ahead());
    let logged = warnings_about(&table);
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert!((logged_offset(&logged[0]) + HOUR_MS).abs() <= TOLERANCE_MS);
}

/// Synchronized clocks: a skew well under the bound, and no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronized_clocks_report_less_than_the_bound_and_no_warning() {
    warnings();
    let table = unique("skew_none");
    let t = Scratch::with(common::builder(&table)).await;
    let skew = t.store.clock_skew().expect("measured at connect");
    println!("system clock: {skew}");
    assert_about(skew, 0);
    assert!(skew.magnitude() < Duration::from_secs(2), "{skew}");
    assert!(!skew.exceeds(Duration::from_secs(2)));
    for _ in 0..5 {
        let skew = t.store.measure_clock_skew().await.unwrap();
        assert!(!skew.exceeds(Duration::from_secs(2)), "{skew}");
    }
    assert!(warnings_about(&table).is_empty());
}

/// The bound is the builder's: 10 s of skew is fine under a 1 min bound,
/// not under the default 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_is_configurable() {
    warnings();
    let lenient = unique("skew_lenient");
    let t = Scratch::with(builder(&lenient, -10_000).max_clock_skew(Duration::from_secs(60))).await;
    assert_about(t.store.clock_skew().unwrap(), 10_000);
    assert!(warnings_about(&lenient).is_empty());
    let strict = unique("skew_strict");
    let _t = Scratch::with(builder(&strict, -10_000)).await;
    assert_eq!(warnings_about(&strict).len(), 1);
}

/// A lazily connected store measures on its first call (in the background:
/// the call does not wait), then again once the interval has passed; with
/// no interval, only when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_stores_measure_on_first_use_then_periodically() {
    warnings();
    let table = unique("skew_lazy");
    let store = builder(&table, -HOUR_MS)
        .clock_skew_check_interval(Duration::from_secs(1))
        .connect_lazy(&database_url())
        .unwrap();
    assert_eq!(store.clock_skew(), None, "nothing measured before a call");
    store.migrate().await.unwrap();
    let k = key();
    store.load(&k).await.unwrap();
    let first = wait_for_measurement(&store, None).await;
    assert_about(first, HOUR_MS);
    // Within the interval, calls measure nothing more.
    store.load(&k).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.clock_skew(), Some(first));
    // Past it, the next call does.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    store.load(&k).await.unwrap();
    let second = wait_for_measurement(&store, Some(first)).await;
    assert!(second.measured_at() > first.measured_at());
    assert!(warnings_about(&table).len() >= 2);
    let _ = Scratch { store };

    let manual = unique("skew_manual");
    let t = Scratch::with(builder(&manual, -HOUR_MS).clock_skew_check_interval(None)).await;
    t.store.load(&k).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(t.store.clock_skew(), None, "no automatic measurement");
    assert_about(t.store.measure_clock_skew().await.unwrap(), HOUR_MS);
    assert!(t.store.clock_skew().is_some());
}

/// A store on a pool of the application's measures on its first call too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_a_given_pool_measures_on_first_use() {
    warnings();
    let table = unique("skew_pool");
    let pool = session_postgres::sqlx::PgPool::connect(&database_url())
        .await
        .unwrap();
    let store = builder(&table, -HOUR_MS).build(pool).unwrap();
    assert_eq!(store.clock_skew(), None);
    store.migrate().await.unwrap();
    let t = Scratch { store };
    t.store.load(&key()).await.unwrap();
    assert_about(wait_for_measurement(&t.store, None).await, HOUR_MS);
}

/// Waits (up to 5 s) for a measurement other than `previous`.
async fn wait_for_measurement(store: &PostgresStore, previous: Option<ClockSkew>) -> ClockSkew {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(skew) = store.clock_skew().filter(|s| Some(*s) != previous) {
            return skew;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new measurement within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
