//! Fault scenarios: the server under a store stops, restarts or freezes
//! while requests race, and every backend must answer the same way.
//!
//! The guarantee the scenarios check, for every store:
//!
//! - **Typed and prompt while the server is away.** Every call that needs
//!   the server fails with [`StoreError::Unavailable`] within
//!   [`FaultHarness::bound`] (a few operation timeouts); none hangs, panics
//!   or answers with another error.
//! - **Recovery by itself.** The same store instance works again once the
//!   server is back, and the very first call after a restart (made on
//!   connections the restart killed) succeeds where it can be retried
//!   safely: reads, `touch`, `delete`, `list_user_sessions`, and a `create` that
//!   provably never reached the server.
//! - **No acknowledged write is lost, none is invented.** Writers racing
//!   through restarts end with each counter at least at the number of
//!   updates the store acknowledged and at most that plus the updates
//!   whose outcome it reported as unknown (`Unavailable`).
//!
//! A backend runs them with one macro call next to
//! [`conformance_suite!`](crate::conformance_suite), naming its server's URL
//! and a factory that builds a store on a [`FaultTarget`]:
//!
//! ```text
//! session_core::fault_scenarios!(redis_url(), |target: FaultTarget| async move {
//!     RedisStore::builder()
//!         .namespace(target.namespace())
//!         .operation_timeout(target.timeout())
//!         .connect_timeout(target.timeout())
//!         .connect(target.url())
//!         .await
//!         .expect("connect through the fault proxy")
//! });
//! ```
//!
//! Each scenario puts its own [`FaultProxy`] between the store and the
//! server and breaks the proxy, not the server, so scenarios run in
//! parallel against one shared server. A backend with a better way to
//! break its server (signals to a private process) implements
//! [`FaultInjector`] and calls the functions in [`scenarios`] directly.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::store::{SessionStore, StoreError};

mod proxy;

pub use proxy::FaultProxy;

/// A way to break the server (or the path to it) under a store.
///
/// Each method returns once the fault is in place, so the call a scenario
/// makes next meets it.
#[async_trait]
pub trait FaultInjector: Send + Sync {
    /// The server goes away: open connections close, new ones are refused.
    async fn stop(&self);
    /// The server is back at the same address, with the data it had.
    async fn start(&self);
    /// The server stops answering: connections stay open, new ones are
    /// accepted, no byte comes back (a frozen process, a black-holed route).
    async fn freeze(&self);
    /// A frozen server answers again, in order, everything it was sent.
    async fn thaw(&self);
    /// [`stop`](Self::stop) then [`start`](Self::start): every connection
    /// open before dies, the server is back at once.
    async fn restart(&self) {
        self.stop().await;
        self.start().await;
    }
}

/// Where a fault scenario's store must connect, and how patient it may be.
#[derive(Debug, Clone)]
pub struct FaultTarget {
    url: String,
    namespace: String,
    timeout: Duration,
}

impl FaultTarget {
    /// The server's URL with its host and port replaced by the fault
    /// proxy's (scheme, credentials, path and query kept). It holds the
    /// server's credentials: do not print it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A namespace (`[a-z0-9_]`, at most 24 characters) unique to this
    /// scenario.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The longest a single call may wait on a silent server: build the
    /// store with its operation timeout, and its connect and pool-acquire
    /// timeouts, at most this long.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

type FaultFactory =
    Arc<dyn Fn(FaultTarget) -> BoxFuture<'static, Arc<dyn SessionStore>> + Send + Sync>;

/// What a fault scenario gets: the server's URL and a store factory.
#[derive(Clone)]
pub struct FaultHarness {
    server_url: String,
    factory: FaultFactory,
    timeout: Duration,
}

impl std::fmt::Debug for FaultHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultHarness")
            .field("server_url", &crate::redact::redact_url(&self.server_url))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The operation timeout the scenarios ask stores for.
pub const FAULT_TIMEOUT: Duration = Duration::from_millis(500);

impl FaultHarness {
    /// Wraps `server_url` (the real server, `scheme://[user[:password]@]host:port[/…]`)
    /// and a factory `FaultTarget -> store`.
    pub fn new<F, Fut, S>(server_url: impl Into<String>, factory: F) -> Self
    where
        F: Fn(FaultTarget) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = S> + Send + 'static,
        S: SessionStore,
    {
        let factory: FaultFactory = Arc::new(move |target| {
            let fut = factory(target);
            Box::pin(async move { Arc::new(fut.await) as Arc<dyn SessionStore> })
        });
        Self {
            server_url: server_url.into(),
            factory,
            timeout: FAULT_TIMEOUT,
        }
    }

    /// The longest any call may take while the server is stopped or
    /// frozen: three operation timeouts (a store may spend one connecting,
    /// one on a pooled connection that turns out dead, one on the request)
    /// plus a second of scheduling slack on a busy machine.
    pub fn bound(&self) -> Duration {
        self.timeout * 3 + Duration::from_secs(1)
    }

    /// Starts a [`FaultProxy`] in front of the server and a store on it.
    ///
    /// # Panics
    ///
    /// When the URL has no host or port, or the proxy cannot start.
    pub async fn setup(&self) -> (Arc<dyn SessionStore>, FaultProxy) {
        let (upstream, url) = through_proxy_parts(&self.server_url);
        let proxy = FaultProxy::start(upstream)
            .await
            .expect("the fault proxy could not bind a loopback port");
        let mut proxied = url;
        proxied
            .set_ip_host(proxy.addr().ip())
            .expect("the server URL cannot have its host replaced");
        proxied
            .set_port(Some(proxy.addr().port()))
            .expect("the server URL cannot have its port replaced");
        let mut raw = [0u8; 5];
        getrandom::fill(&mut raw).expect("the operating system CSPRNG failed");
        let namespace = format!(
            "flt_{}",
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let target = FaultTarget {
            url: proxied.to_string(),
            namespace,
            timeout: self.timeout,
        };
        ((self.factory)(target).await, proxy)
    }
}

/// `(host:port of the server, its parsed URL)`.
fn through_proxy_parts(server_url: &str) -> (String, url::Url) {
    let url = url::Url::parse(server_url).unwrap_or_else(|_| {
        panic!(
            "the fault scenarios need the server's URL (scheme://host:port/...), got {}",
            crate::redact::redact_url(server_url)
        )
    });
    let host = url.host_str().map(str::to_owned);
    let port = url.port().or(match url.scheme() {
        "redis" | "rediss" => Some(6379),
        "postgres" | "postgresql" => Some(5432),
        "memcache" | "memcached" => Some(11211),
        _ => url.port_or_known_default(),
    });
    match (host, port) {
        (Some(host), Some(port)) => (format!("{host}:{port}"), url),
        _ => panic!(
            "the fault scenarios need a host and port in the server URL, got {}",
            crate::redact::redact_url(server_url)
        ),
    }
}

/// Expands into one `#[tokio::test]` per fault scenario (named `fault_*`),
/// each behind its own [`FaultProxy`]. See the [module docs](self).
///
/// `$server_url` is the real server's URL; `$factory` builds a store on a
/// [`FaultTarget`].
#[macro_export]
macro_rules! fault_scenarios {
    ($server_url:expr, $factory:expr $(,)?) => {
        $crate::__fault_scenarios! {
            $crate::conformance::faults::FaultHarness::new($server_url, $factory);
            fault_outage_mid_traffic,
            fault_first_call_after_a_restart_succeeds,
            fault_frozen_server_times_out_and_recovers,
            fault_restarts_lose_no_acknowledged_write,
            fault_idle_connections_reset_on_use,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __fault_scenarios {
    ($harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::faults::scenarios::$case($harness).await;
            }
        )*
    };
}

/// Shorthand for a scenario's records: live for an hour.
fn live(user: Option<&str>, data: &[u8]) -> crate::record::SessionRecord {
    super::record(user, data, super::HOUR, 2 * super::HOUR)
}

fn key() -> crate::key::StorageKey {
    crate::key::KeyDeriver::new().derive(&crate::id::SessionId::generate())
}

/// Runs `call`; it must fail with [`StoreError::Unavailable`] within
/// `bound`. `Ok` is accepted for calls that may not need the server
/// (`may_skip_server`).
async fn expect_unavailable<T: std::fmt::Debug>(
    what: &str,
    phase: &str,
    bound: Duration,
    may_skip_server: bool,
    call: impl Future<Output = Result<T, StoreError>>,
) {
    expect_unavailable_hiding(what, phase, bound, may_skip_server, None, call).await;
}

/// [`expect_unavailable`], and the error (its `Debug` and its whole
/// `source()` chain) must not show `hidden`, the storage key of the call.
async fn expect_unavailable_hiding<T: std::fmt::Debug>(
    what: &str,
    phase: &str,
    bound: Duration,
    may_skip_server: bool,
    hidden: Option<&crate::key::StorageKey>,
    call: impl Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(bound, call)
        .await
        .unwrap_or_else(|_| panic!("{phase}: {what} still had no answer after {bound:?}"));
    let elapsed = started.elapsed();
    if let (Err(e), Some(key)) = (&result, hidden) {
        let shown = format!("{e:?} {}", crate::error::ErrorChain(e));
        let raw = key.as_str();
        let as_bytes = format!("{:?}", &raw.as_bytes()[..8.min(raw.len())]);
        let as_bytes = as_bytes.trim_start_matches('[').trim_end_matches(']');
        assert!(
            !shown.contains(raw) && !shown.contains(as_bytes),
            "{phase}: the error of {what} shows the storage key"
        );
    }
    match result {
        Err(StoreError::Unavailable(_)) => {}
        Ok(_) if may_skip_server => {}
        other => panic!("{phase}: {what} must fail with Unavailable, got {other:?}"),
    }
    assert!(
        elapsed < bound,
        "{phase}: {what} took {elapsed:?} (bound {bound:?})"
    );
}

/// Makes one call of every kind (`known` is a key the store held before
/// the fault): each must fail with [`StoreError::Unavailable`] within
/// `bound`. `delete_expired` may answer `Ok` (a store whose server expires
/// records itself need not ask it).
///
/// # Panics
///
/// When a call hangs past `bound` or answers anything else; the message
/// names the call and `phase`.
pub async fn assert_every_call_unavailable(
    store: &dyn SessionStore,
    known: &crate::key::StorageKey,
    bound: Duration,
    phase: &str,
) {
    use crate::store::CreateOptions;
    let now = crate::clock::Timestamp::now();
    let later = now.saturating_add(Duration::from_secs(600));
    let user = "fault-user";
    let next = live(Some(user), b"next").with_version(2);
    let hide = Some(known);
    expect_unavailable_hiding("load", phase, bound, false, hide, store.load(known)).await;
    expect_unavailable("create", phase, bound, false, store.create(&key(), &next)).await;
    let rotate = CreateOptions::default().replacing(known.clone(), 1);
    expect_unavailable_hiding(
        "create_with (rotation)",
        phase,
        bound,
        false,
        hide,
        store.create_with(&key(), &next, &rotate),
    )
    .await;
    let update = store.update(known, 1, &next);
    expect_unavailable_hiding("update", phase, bound, false, hide, update).await;
    let touch = store.touch(known, now, later);
    expect_unavailable_hiding("touch", phase, bound, false, hide, touch).await;
    expect_unavailable("delete", phase, bound, false, store.delete(&key())).await;
    expect_unavailable(
        "list_user_sessions",
        phase,
        bound,
        false,
        store.list_user_sessions(user),
    )
    .await;
    expect_unavailable(
        "delete_user",
        phase,
        bound,
        false,
        store.delete_user("fault-nobody"),
    )
    .await;
    expect_unavailable("delete_expired", phase, bound, true, store.delete_expired()).await;
}

/// Retries `call` until it succeeds, for at most `within`; any error other
/// than `Unavailable` fails at once.
async fn until_ok<T, F, Fut>(what: &str, within: Duration, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match call().await {
            Ok(v) => return v,
            Err(StoreError::Unavailable(e)) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{what}: the store did not recover within {within:?}: {e:?}"),
        }
    }
}

/// How long a store may take to notice that its server is back.
const RECOVERY: Duration = Duration::from_secs(15);

/// The scenarios, one public async function each; [`fault_scenarios!`]
/// calls them with a [`FaultHarness`] and a [`FaultProxy`], and a backend
/// with its own [`FaultInjector`] can call the `run_*` functions.
///
/// [`fault_scenarios!`]: crate::fault_scenarios
pub mod scenarios {
    use super::*;
    use crate::record::SessionRecord;

    /// The server stops while 16 tasks create, load, update and delete
    /// sessions: every kind of call fails `Unavailable` within the bound,
    /// twice half a second apart; the server starts again and the same
    /// store serves every kind of call, traffic resumes, and a session
    /// written before the outage is intact.
    pub async fn fault_outage_mid_traffic(h: FaultHarness) {
        let (store, proxy) = h.setup().await;
        run_outage_mid_traffic(&*store, &proxy, h.bound()).await;
    }

    /// [`fault_outage_mid_traffic`] with any injector.
    pub async fn run_outage_mid_traffic(
        store: &dyn SessionStore,
        faults: &dyn FaultInjector,
        bound: Duration,
    ) {
        let known = key();
        store
            .create(&known, &live(Some("fault-known"), b"before"))
            .await
            .expect("create before the outage");
        let stop = AtomicBool::new(false);
        let ok = AtomicU64::new(0);
        let unavailable = AtomicU64::new(0);
        let worker = |w: usize| {
            let (stop, ok, unavailable) = (&stop, &ok, &unavailable);
            async move {
                let user = format!("fault-worker-{w}");
                while !stop.load(Ordering::SeqCst) {
                    let k = key();
                    let started = Instant::now();
                    let cycle = async {
                        store.create(&k, &live(Some(&user), b"v1")).await?;
                        let got = store.load(&k).await?.ok_or(StoreError::NotFound)?;
                        let next = got
                            .clone()
                            .with_data(&b"v2"[..])
                            .with_version(got.version + 1);
                        store.update(&k, got.version, &next).await?;
                        let again = store.load(&k).await?.ok_or(StoreError::NotFound)?;
                        assert_eq!(
                            &again.data[..],
                            b"v2",
                            "an acknowledged update was not kept"
                        );
                        store.delete(&k).await
                    }
                    .await;
                    assert!(
                        started.elapsed() < bound * 5,
                        "one create-load-update-load-delete cycle took {:?}",
                        started.elapsed()
                    );
                    match cycle {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(StoreError::Unavailable(_)) => {
                            unavailable.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("worker {w}: unexpected error around an outage: {e:?}"),
                    }
                }
            }
        };
        let traffic = futures::future::join_all((0..16).map(worker));
        let script = async {
            let warmup = Instant::now() + Duration::from_secs(20);
            while ok.load(Ordering::SeqCst) < 32 {
                assert!(
                    Instant::now() < warmup,
                    "no traffic went through before the outage"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            faults.stop().await;
            assert_every_call_unavailable(store, &known, bound, "stopped").await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_every_call_unavailable(store, &known, bound, "still stopped").await;
            let ok_while_down = ok.load(Ordering::SeqCst);
            faults.start().await;

            let got = until_ok("load after the restart", RECOVERY, || store.load(&known)).await;
            assert_eq!(
                &got.expect("the session written before the outage").data[..],
                b"before"
            );
            let resumed = Instant::now() + RECOVERY;
            while ok.load(Ordering::SeqCst) < ok_while_down + 32 {
                assert!(
                    Instant::now() < resumed,
                    "traffic did not resume after the restart"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop.store(true, Ordering::SeqCst);
        };
        futures::join!(traffic, script);
        assert!(
            unavailable.load(Ordering::SeqCst) > 0,
            "the outage went unnoticed by the traffic"
        );
        every_call_works(store, &known).await;
    }

    /// The server restarts while the store is idle (every pooled
    /// connection dies): the first `load`, `list_user_sessions`, `touch` and
    /// `delete` after each restart succeed, each after its own restart; so
    /// does a `create` after an outage long enough for the store's
    /// reconnection attempts to give up.
    pub async fn fault_first_call_after_a_restart_succeeds(h: FaultHarness) {
        let (store, proxy) = h.setup().await;
        run_first_call_after_a_restart_succeeds(&*store, &proxy).await;
    }

    /// [`fault_first_call_after_a_restart_succeeds`] with any injector.
    pub async fn run_first_call_after_a_restart_succeeds(
        store: &dyn SessionStore,
        faults: &dyn FaultInjector,
    ) {
        let user = "fault-restart";
        let k = key();
        first_calls_after_each(store, user, &k, "a restart", || faults.restart()).await;

        // Down long enough for reconnection attempts to give up, then back:
        // the insert-only create must go through on the first call.
        faults.stop().await;
        let down = store.load(&k).await;
        assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        faults.start().await;
        let k2 = key();
        store
            .create(&k2, &live(Some(user), b"new"))
            .await
            .expect("the first create after the server came back");
        assert_eq!(
            store
                .list_user_sessions(user)
                .await
                .expect("list_user_sessions")
                .len(),
            1
        );
    }

    /// The server freezes (connections open, no answer): every kind of
    /// call, and 32 racing loads, fail `Unavailable` within the bound;
    /// after a thaw the same store works and the data is intact.
    pub async fn fault_frozen_server_times_out_and_recovers(h: FaultHarness) {
        let (store, proxy) = h.setup().await;
        run_frozen_server_times_out_and_recovers(&*store, &proxy, h.bound()).await;
    }

    /// [`fault_frozen_server_times_out_and_recovers`] with any injector.
    pub async fn run_frozen_server_times_out_and_recovers(
        store: &dyn SessionStore,
        faults: &dyn FaultInjector,
        bound: Duration,
    ) {
        let known = key();
        store
            .create(&known, &live(Some("fault-frozen"), b"before"))
            .await
            .expect("create before the freeze");
        faults.freeze().await;
        assert_every_call_unavailable(store, &known, bound, "frozen").await;
        let known_ref = &known;
        let racing = (0..32).map(|_| {
            expect_unavailable(
                "one of 32 racing loads",
                "frozen",
                bound,
                false,
                store.load(known_ref),
            )
        });
        futures::future::join_all(racing).await;
        faults.thaw().await;
        let got = until_ok("load after the thaw", RECOVERY, || store.load(&known)).await;
        assert_eq!(&got.expect("the session").data[..], b"before");
        every_call_works(store, &known).await;
    }

    /// 16 writers increment a counter each (load, then compare-and-set
    /// update) while the server restarts three times: afterwards each
    /// counter is at least the number of acknowledged increments, and at
    /// most that plus the updates whose outcome was reported unknown.
    pub async fn fault_restarts_lose_no_acknowledged_write(h: FaultHarness) {
        let (store, proxy) = h.setup().await;
        run_restarts_lose_no_acknowledged_write(&*store, &proxy).await;
    }

    /// [`fault_restarts_lose_no_acknowledged_write`] with any injector.
    pub async fn run_restarts_lose_no_acknowledged_write(
        store: &dyn SessionStore,
        faults: &dyn FaultInjector,
    ) {
        fn counter(r: &SessionRecord) -> u64 {
            u64::from_be_bytes(r.data[..8].try_into().expect("an 8-byte counter"))
        }
        const WRITERS: usize = 16;
        let keys: Vec<_> = (0..WRITERS).map(|_| key()).collect();
        for k in &keys {
            store
                .create(k, &live(Some("fault-counter"), &0u64.to_be_bytes()))
                .await
                .expect("create a counter");
        }
        let stop = AtomicBool::new(false);
        let acked = AtomicU64::new(0);
        let failed = AtomicU64::new(0);
        let (stop, acked, failed_ref) = (&stop, &acked, &failed);
        let writer = move |k| async move {
            {
                // (acknowledged, unknown outcome)
                let mut tally = (0u64, 0u64);
                while !stop.load(Ordering::SeqCst) {
                    let current = match store.load(k).await {
                        Ok(Some(r)) => r,
                        Ok(None) => panic!("a counter vanished across a restart"),
                        Err(StoreError::Unavailable(_)) => {
                            failed_ref.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        Err(e) => panic!("load: {e:?}"),
                    };
                    let next = current
                        .clone()
                        .with_data((counter(&current) + 1).to_be_bytes().to_vec())
                        .with_version(current.version + 1);
                    match store.update(k, current.version, &next).await {
                        Ok(()) => {
                            tally.0 += 1;
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        // Only this writer writes this key: a conflict
                        // means an earlier update reported unknown was
                        // applied after all, which the tally allows.
                        Err(StoreError::Conflict) => {}
                        Err(StoreError::Unavailable(_)) => {
                            failed_ref.fetch_add(1, Ordering::SeqCst);
                            tally.1 += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("update: {e:?}"),
                    }
                }
                tally
            }
        };
        let traffic =
            futures::future::join_all(keys.iter().map(|k: &crate::key::StorageKey| writer(k)));
        let script = async {
            for round in 0..3 {
                let before = acked.load(Ordering::SeqCst);
                let deadline = Instant::now() + RECOVERY;
                while acked.load(Ordering::SeqCst) < before + 2 * WRITERS as u64 {
                    assert!(
                        Instant::now() < deadline,
                        "round {round}: writes did not go through"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                faults.stop().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                faults.start().await;
            }
            let before = acked.load(Ordering::SeqCst);
            let deadline = Instant::now() + RECOVERY;
            while acked.load(Ordering::SeqCst) < before + 2 * WRITERS as u64 {
                assert!(Instant::now() < deadline, "writes did not resume");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            stop.store(true, Ordering::SeqCst);
        };
        let (tallies, ()) = futures::join!(traffic, script);
        assert!(
            failed.load(Ordering::SeqCst) > 0,
            "three restarts went unnoticed by 16 writers"
        );
        for (k, (acknowledged, unknown)) in keys.iter().zip(tallies) {
            let r = until_ok("load a counter", RECOVERY, || store.load(k))
                .await
                .expect("a counter vanished");
            let value = counter(&r);
            assert!(
                value >= acknowledged,
                "lost acknowledged writes: counter {value}, acknowledged {acknowledged}"
            );
            assert!(
                value <= acknowledged + unknown,
                "invented writes: counter {value}, acknowledged {acknowledged}, unknown {unknown}"
            );
        }
    }

    /// Every idle connection of the store is forgotten by the path
    /// ([`FaultProxy::forget_connections`]: reset when next used, after the
    /// request was written): the first `load`, `list_user_sessions`, `touch` and
    /// `delete` after each such reset succeed, each after its own.
    pub async fn fault_idle_connections_reset_on_use(h: FaultHarness) {
        let (store, proxy) = h.setup().await;
        let store = &*store;
        let user = "fault-forgotten";
        let k = key();
        first_calls_after_each(store, user, &k, "a reset of every connection", || async {
            proxy.forget_connections();
        })
        .await;
    }

    /// Creates a session for `user` under `k`, then four times: several
    /// pooled connections in use, `fault`, and the first `load`, then
    /// `list_user_sessions`, `touch`, `delete` after it must succeed. Ends
    /// with the session deleted.
    async fn first_calls_after_each<F, Fut>(
        store: &dyn SessionStore,
        user: &str,
        k: &crate::key::StorageKey,
        what: &str,
        fault: F,
    ) where
        F: Fn() -> Fut,
        Fut: Future<Output = ()>,
    {
        store
            .create(k, &live(Some(user), b"kept"))
            .await
            .expect("create before the faults");
        // Several pooled connections, all of which the fault breaks.
        let warm = || async {
            let loads = (0..8).map(|_| store.load(k));
            for loaded in futures::future::join_all(loads).await {
                loaded.expect("load before the fault");
            }
        };

        warm().await;
        fault().await;
        let loaded = store.load(k).await;
        let loaded = loaded.unwrap_or_else(|e| panic!("the first load after {what}: {e:?}"));
        assert_eq!(&loaded.expect("the session").data[..], b"kept");

        warm().await;
        fault().await;
        let listed = store.list_user_sessions(user).await;
        let listed =
            listed.unwrap_or_else(|e| panic!("the first list_user_sessions after {what}: {e:?}"));
        assert_eq!(listed.len(), 1);

        warm().await;
        fault().await;
        let now = crate::clock::Timestamp::now();
        let touched = store
            .touch(k, now, now.saturating_add(Duration::from_secs(600)))
            .await;
        touched.unwrap_or_else(|e| panic!("the first touch after {what}: {e:?}"));

        warm().await;
        fault().await;
        let deleted = store.delete(k).await;
        deleted.unwrap_or_else(|e| panic!("the first delete after {what}: {e:?}"));
        assert!(store.load(k).await.expect("load").is_none());
    }

    /// Every kind of call succeeds (the store has recovered).
    async fn every_call_works(store: &dyn SessionStore, known: &crate::key::StorageKey) {
        let user = "fault-after";
        let k = key();
        let first = live(Some(user), b"after");
        until_ok("create after recovery", RECOVERY, || {
            store.create(&k, &first)
        })
        .await;
        let got = store
            .load(&k)
            .await
            .expect("load")
            .expect("the new session");
        store
            .update(
                &k,
                got.version,
                &got.clone()
                    .with_data(&b"again"[..])
                    .with_version(got.version + 1),
            )
            .await
            .expect("update after recovery");
        let now = crate::clock::Timestamp::now();
        store
            .touch(&k, now, now.saturating_add(Duration::from_secs(600)))
            .await
            .expect("touch after recovery");
        assert_eq!(
            store
                .list_user_sessions(user)
                .await
                .expect("list_user_sessions")
                .len(),
            1
        );
        assert_eq!(store.delete_user(user).await.expect("delete_user"), 1);
        store.delete(known).await.expect("delete after recovery");
        store
            .delete_expired()
            .await
            .expect("delete_expired after recovery");
    }
}
