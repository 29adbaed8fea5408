//! [`Blocking`]: the blocking meta client on Tokio's blocking pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use memcache::exp::MetaClient;
use session_core::redact::RedactedError;
use session_core::{StoreError, StoreResult};
use tokio::sync::Semaphore;

use super::{
    connection_broke, delete_op, get_op, item, log_retry, map_error, merge_retried, outcome,
    retry_on_fresh, retry_positions, set_op, store_outcome, Item, Mode, Outcome, Renewing,
    Transport,
};
use crate::config::{MemcachedConfig, SetupError};

/// The blocking meta client, run on Tokio's blocking pool with at most
/// `max_in_flight` calls at once.
#[derive(Clone)]
pub(crate) struct Blocking {
    /// The pooled client, replaced when one of its connections breaks.
    client: Arc<Renewing<MetaClient>>,
    config: Arc<MemcachedConfig>,
    /// The same servers without a pool (no idle connection kept): every
    /// request on it dials. For the one retry after a connection failure.
    fresh: MetaClient,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Blocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocking")
            .field("available_permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl Blocking {
    /// Builds the client; connections are dialed lazily.
    pub(crate) fn new(config: &MemcachedConfig) -> Result<Self, SetupError> {
        Ok(Self {
            client: Arc::new(Renewing::new(Self::client(config, config.max_idle)?)),
            fresh: Self::client(config, 0)?,
            config: Arc::new(config.clone()),
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
        })
    }

    /// A client for `config`'s servers keeping at most `max_idle` idle
    /// connections per server.
    fn client(config: &MemcachedConfig, max_idle: usize) -> Result<MetaClient, SetupError> {
        MetaClient::builder()
            .io_timeout(Some(config.io_timeout))
            .connect_timeout(Some(config.connect_timeout))
            .max_idle(max_idle)
            .max_connections(Some(config.max_in_flight))
            .connect_multiple(config.servers.iter().map(String::as_str))
            .map_err(|e| SetupError::Client(RedactedError::new(e)))
    }

    /// Runs `f` on the pooled client, and once more on the fresh one when
    /// it failed in a way [`retry_on_fresh`] allows.
    async fn run<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&MetaClient) -> Result<T, memcache::exp::Error> + Send + 'static,
    {
        self.run_with(op, move |client, fresh, broke| match f(client) {
            Err(e) if retry_on_fresh(&e) => {
                broke.store(true, Ordering::Relaxed);
                log_retry(op, &e);
                f(fresh)
            }
            Err(e) => {
                if connection_broke(&e) {
                    broke.store(true, Ordering::Relaxed);
                }
                Err(e)
            }
            ok => ok,
        })
        .await
    }

    /// Runs `f`, the request `op`, with the pooled and the fresh client on
    /// the blocking pool.
    /// `f` sets the flag when a pooled connection broke; the pool is then
    /// replaced (see [`Renewing`]).
    async fn run_with<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&MetaClient, &MetaClient, &AtomicBool) -> Result<T, memcache::exp::Error>
            + Send
            + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(StoreError::backend)?;
        let (generation, client) = self.client.get();
        let fresh = self.fresh.clone();
        let (pool, config) = (Arc::clone(&self.client), Arc::clone(&self.config));
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let broke = AtomicBool::new(false);
            let result = f(&client, &fresh, &broke);
            if broke.load(Ordering::Relaxed) {
                if let Ok(renewed) = Self::client(&config, config.max_idle) {
                    pool.renew(generation, renewed);
                }
            }
            result
        })
        .await
        .map_err(|e| StoreError::backend(format!("memcached call did not complete: {e}")))?;
        result.map_err(map_error(op, self.config.io_timeout))
    }
}

#[async_trait]
impl Transport for Blocking {
    async fn get(&self, key: String) -> StoreResult<Option<Item>> {
        self.run("get", move |c| c.run(get_op(&key)).map(|r| item(&r)))
            .await
    }

    async fn get_many(&self, keys: Vec<String>) -> StoreResult<Vec<Option<Item>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.run_with("get_many", move |c, fresh, broke| {
            let first = c.run_many(keys.iter().map(|k| get_op(k)));
            note_broken(&first, broke);
            let first = first?;
            let again = retry_positions("get_many", &first);
            let retried = if again.is_empty() {
                Vec::new()
            } else {
                fresh.run_many(again.iter().map(|&i| get_op(&keys[i])))?
            };
            merge_retried(first, &again, retried)
                .into_iter()
                .map(|r| r.map(|r| item(&r)))
                .collect()
        })
        .await
    }

    async fn store(
        &self,
        key: String,
        value: Vec<u8>,
        exptime: u32,
        mode: Mode,
    ) -> StoreResult<Outcome> {
        self.run("store", move |c| {
            store_outcome(c.run(set_op(&key, &value, exptime, mode)))
        })
        .await
    }

    async fn store_many(
        &self,
        items: Vec<(String, Vec<u8>, u32, Mode)>,
    ) -> StoreResult<Vec<Outcome>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.run_with("store_many", move |c, fresh, broke| {
            let op = |(k, v, exp, mode): &(String, Vec<u8>, u32, Mode)| set_op(k, v, *exp, *mode);
            let first = c.run_many(items.iter().map(op));
            note_broken(&first, broke);
            let first = first?;
            let again = retry_positions("store_many", &first);
            let retried = if again.is_empty() {
                Vec::new()
            } else {
                fresh.run_many(again.iter().map(|&i| op(&items[i])))?
            };
            merge_retried(first, &again, retried)
                .into_iter()
                .map(store_outcome)
                .collect()
        })
        .await
    }

    async fn delete(&self, key: String, cas: Option<u64>) -> StoreResult<Outcome> {
        self.run("delete", move |c| {
            c.run(delete_op(&key, cas)).map(|r| outcome(r.status))
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run("ping", MetaClient::noop).await
    }
}

/// Sets `broke` when a batch, or any answer in it, failed on a broken
/// connection.
fn note_broken<T>(
    batch: &Result<Vec<Result<T, memcache::exp::Error>>, memcache::exp::Error>,
    broke: &AtomicBool,
) {
    let any = match batch {
        Err(e) => connection_broke(e),
        Ok(answers) => answers
            .iter()
            .any(|r| r.as_ref().is_err_and(connection_broke)),
    };
    if any {
        broke.store(true, Ordering::Relaxed);
    }
}
