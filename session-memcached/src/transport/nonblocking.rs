//! `Async`: the `memcache` crate's Tokio meta client (feature `async`).

use std::time::Duration;

use async_trait::async_trait;
use memcache::exp::{AsyncMetaClient, MetaClient};
use session_core::redact::RedactedError;
use session_core::StoreResult;

use super::{
    delete_op, get_op, item, log_retry, map_error, merge_retried, outcome, retry_on_fresh,
    retry_positions, set_op, store_outcome, Item, Mode, Outcome, Transport,
};
use crate::config::{MemcachedConfig, SetupError};

/// The Tokio meta client: no thread hop per call.
#[derive(Clone)]
pub(crate) struct Async {
    client: AsyncMetaClient,
    /// The same servers without a pool (no idle connection kept): every
    /// request on it dials. For the one retry after a connection failure.
    fresh: AsyncMetaClient,
    /// The exchange deadline, for [`map_error`].
    io_timeout: Duration,
}

impl Async {
    /// Builds the client (resolving addresses); connections are dialed
    /// lazily.
    pub(crate) async fn new(config: &MemcachedConfig) -> Result<Self, SetupError> {
        let client = |max_idle| async move {
            MetaClient::builder()
                .io_timeout(Some(config.io_timeout))
                .connect_timeout(Some(config.connect_timeout))
                .max_idle(max_idle)
                .max_connections(Some(config.max_in_flight))
                .connect_multiple_async(config.servers.iter().map(String::as_str))
                .await
                .map_err(|e| SetupError::Client(RedactedError::new(e)))
        };
        Ok(Self {
            client: client(config.max_idle).await?,
            fresh: client(0).await?,
            io_timeout: config.io_timeout,
        })
    }

    /// Runs `f` on the pooled client, and once more on the fresh one when
    /// it failed in a way [`retry_on_fresh`] allows.
    async fn run<'a, T, F, Fut>(&'a self, op: &'static str, f: F) -> Result<T, memcache::exp::Error>
    where
        F: Fn(&'a AsyncMetaClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, memcache::exp::Error>>,
    {
        match f(&self.client).await {
            Err(e) if retry_on_fresh(&e) => {
                log_retry(op, &e);
                f(&self.fresh).await
            }
            other => other,
        }
    }
}

#[async_trait]
impl Transport for Async {
    async fn get(&self, key: String) -> StoreResult<Option<Item>> {
        let r = self
            .run("get", |c| c.run(get_op(&key)))
            .await
            .map_err(map_error("get", self.io_timeout))?;
        Ok(item(&r))
    }

    async fn get_many(&self, keys: Vec<String>) -> StoreResult<Vec<Option<Item>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let first = self
            .client
            .run_many(keys.iter().map(|k| get_op(k)))
            .await
            .map_err(map_error("get_many", self.io_timeout))?;
        let rerun = retry_positions("get_many", &first);
        let again = if rerun.is_empty() {
            Vec::new()
        } else {
            self.fresh
                .run_many(rerun.iter().map(|&i| get_op(&keys[i])))
                .await
                .map_err(map_error("get_many", self.io_timeout))?
        };
        merge_retried(first, &rerun, again)
            .into_iter()
            .map(|r| {
                r.map(|r| item(&r))
                    .map_err(map_error("get_many", self.io_timeout))
            })
            .collect()
    }

    async fn store(
        &self,
        key: String,
        value: Vec<u8>,
        exptime: u32,
        mode: Mode,
    ) -> StoreResult<Outcome> {
        store_outcome(
            self.run("store", |c| c.run(set_op(&key, &value, exptime, mode)))
                .await,
        )
        .map_err(map_error("store", self.io_timeout))
    }

    async fn store_many(
        &self,
        items: Vec<(String, Vec<u8>, u32, Mode)>,
    ) -> StoreResult<Vec<Outcome>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let op = |(k, v, exp, mode): &(String, Vec<u8>, u32, Mode)| set_op(k, v, *exp, *mode);
        let first = self
            .client
            .run_many(items.iter().map(op))
            .await
            .map_err(map_error("store_many", self.io_timeout))?;
        let rerun = retry_positions("store_many", &first);
        let again = if rerun.is_empty() {
            Vec::new()
        } else {
            self.fresh
                .run_many(rerun.iter().map(|&i| op(&items[i])))
                .await
                .map_err(map_error("store_many", self.io_timeout))?
        };
        merge_retried(first, &rerun, again)
            .into_iter()
            .map(|r| store_outcome(r).map_err(map_error("store_many", self.io_timeout)))
            .collect()
    }

    async fn delete(&self, key: String, cas: Option<u64>) -> StoreResult<Outcome> {
        let r = self
            .run("delete", |c| c.run(delete_op(&key, cas)))
            .await
            .map_err(map_error("delete", self.io_timeout))?;
        Ok(outcome(r.status))
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run("ping", AsyncMetaClient::noop)
            .await
            .map_err(map_error("ping", self.io_timeout))
    }
}
