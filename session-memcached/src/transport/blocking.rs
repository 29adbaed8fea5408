//! [`Blocking`]: the blocking meta client on Tokio's blocking pool.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use memcache::exp::MetaClient;
use session_core::redact::RedactedError;
use session_core::{StoreError, StoreResult};
use tokio::sync::Semaphore;

use super::{
    delete_op, get_op, item, log_retry, map_error, merge_retried, outcome, retry_on_fresh,
    retry_positions, set_op, store_outcome, Item, Mode, Outcome, Transport,
};
use crate::config::{MemcachedConfig, SetupError};

/// The blocking meta client, run on Tokio's blocking pool with at most
/// `max_in_flight` calls at once.
#[derive(Clone)]
pub(crate) struct Blocking {
    client: MetaClient,
    /// The same servers without a pool (no idle connection kept): every
    /// request on it dials. For the one retry after a connection failure.
    fresh: MetaClient,
    permits: Arc<Semaphore>,
    /// The exchange deadline, for [`map_error`].
    io_timeout: Duration,
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
        let client = |max_idle| {
            MetaClient::builder()
                .io_timeout(Some(config.io_timeout))
                .connect_timeout(Some(config.connect_timeout))
                .max_idle(max_idle)
                .max_connections(Some(config.max_in_flight))
                .connect_multiple(config.servers.iter().map(String::as_str))
                .map_err(|e| SetupError::Client(RedactedError::new(e)))
        };
        Ok(Self {
            client: client(config.max_idle)?,
            fresh: client(0)?,
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            io_timeout: config.io_timeout,
        })
    }

    /// Runs `f` on the pooled client, and once more on the fresh one when
    /// it failed in a way [`retry_on_fresh`] allows.
    async fn run<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&MetaClient) -> Result<T, memcache::exp::Error> + Send + 'static,
    {
        self.run_with(op, move |client, fresh| match f(client) {
            Err(e) if retry_on_fresh(&e) => {
                log_retry(op, &e);
                f(fresh)
            }
            other => other,
        })
        .await
    }

    /// Runs `f`, the request `op`, with the pooled and the fresh client on
    /// the blocking pool.
    async fn run_with<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&MetaClient, &MetaClient) -> Result<T, memcache::exp::Error> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(StoreError::backend)?;
        let (client, fresh) = (self.client.clone(), self.fresh.clone());
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&client, &fresh)
        })
        .await
        .map_err(|e| StoreError::backend(format!("memcached call did not complete: {e}")))?;
        result.map_err(map_error(op, self.io_timeout))
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
        self.run_with("get_many", move |c, fresh| {
            let first = c.run_many(keys.iter().map(|k| get_op(k)))?;
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
        self.run_with("store_many", move |c, fresh| {
            let op = |(k, v, exp, mode): &(String, Vec<u8>, u32, Mode)| set_op(k, v, *exp, *mode);
            let first = c.run_many(items.iter().map(op))?;
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
