//! `Async`: the `memcache` crate's Tokio meta client (feature `async`).

use async_trait::async_trait;
use memcache::exp::{AsyncMetaClient, MetaClient};
use session_core::redact::RedactedError;
use session_core::StoreResult;

use super::{
    connection_broke, delete_op, get_op, item, log_retry, map_error, merge_retried, outcome,
    retry_on_fresh, retry_positions, set_op, store_outcome, Item, Mode, Outcome, Renewing,
    Transport,
};
use crate::config::{MemcachedConfig, SetupError};

/// The Tokio meta client: no thread hop per call.
#[derive(Clone)]
pub(crate) struct Async {
    /// The pooled client, replaced when one of its connections breaks.
    client: std::sync::Arc<Renewing<AsyncMetaClient>>,
    config: std::sync::Arc<MemcachedConfig>,
    /// The same servers without a pool (no idle connection kept): every
    /// request on it dials. For the one retry after a connection failure.
    fresh: AsyncMetaClient,
}

impl Async {
    /// Builds the client (resolving addresses); connections are dialed
    /// lazily.
    pub(crate) async fn new(config: &MemcachedConfig) -> Result<Self, SetupError> {
        Ok(Self {
            client: std::sync::Arc::new(Renewing::new(
                Self::client(config, config.max_idle).await?,
            )),
            fresh: Self::client(config, 0).await?,
            config: std::sync::Arc::new(config.clone()),
        })
    }

    /// A client for `config`'s servers keeping at most `max_idle` idle
    /// connections per server.
    async fn client(
        config: &MemcachedConfig,
        max_idle: usize,
    ) -> Result<AsyncMetaClient, SetupError> {
        MetaClient::builder()
            .io_timeout(Some(config.io_timeout))
            .connect_timeout(Some(config.connect_timeout))
            .max_idle(max_idle)
            .max_connections(Some(config.max_in_flight))
            .connect_multiple_async(config.servers.iter().map(String::as_str))
            .await
            .map_err(|e| SetupError::Client(RedactedError::new(e)))
    }

    /// Replaces the pool of `generation` when `broke` (see [`Renewing`]).
    async fn renew_if(&self, generation: u64, broke: bool) {
        if broke {
            if let Ok(fresh) = Self::client(&self.config, self.config.max_idle).await {
                self.client.renew(generation, fresh);
            }
        }
    }

    /// Runs a batch on the pooled client, replacing the pool when the batch
    /// or any answer in it failed on a broken connection.
    async fn run_batch<T, F, Fut>(
        &self,
        f: F,
    ) -> Result<Vec<Result<T, memcache::exp::Error>>, memcache::exp::Error>
    where
        F: FnOnce(AsyncMetaClient) -> Fut,
        Fut: std::future::Future<
            Output = Result<Vec<Result<T, memcache::exp::Error>>, memcache::exp::Error>,
        >,
    {
        let (generation, client) = self.client.get();
        let batch = f(client).await;
        let broke = match &batch {
            Err(e) => connection_broke(e),
            Ok(answers) => answers
                .iter()
                .any(|r| r.as_ref().is_err_and(connection_broke)),
        };
        self.renew_if(generation, broke).await;
        batch
    }

    /// Runs `f` on the pooled client, and once more on the fresh one when
    /// it failed in a way [`retry_on_fresh`] allows.
    async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, memcache::exp::Error>
    where
        F: Fn(AsyncMetaClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, memcache::exp::Error>>,
    {
        let (generation, client) = self.client.get();
        match f(client).await {
            Err(e) => {
                self.renew_if(generation, connection_broke(&e)).await;
                if retry_on_fresh(&e) {
                    log_retry(op, &e);
                    f(self.fresh.clone()).await
                } else {
                    Err(e)
                }
            }
            ok => ok,
        }
    }
}

/// [`Async`] built on first use: a store made without awaiting anything
/// (`MemcachedStore::new`, `connect_lazy`). The client resolves its server
/// addresses when it is built, so a host that does not resolve fails the
/// first calls with `Unavailable` (and is tried again on the next).
pub(crate) struct LazyAsync {
    config: MemcachedConfig,
    transport: tokio::sync::OnceCell<Async>,
}

impl LazyAsync {
    pub(crate) fn new(config: &MemcachedConfig) -> Self {
        Self {
            config: config.clone(),
            transport: tokio::sync::OnceCell::new(),
        }
    }

    async fn transport(&self) -> StoreResult<&Async> {
        self.transport
            .get_or_try_init(|| Async::new(&self.config))
            .await
            .map_err(session_core::StoreError::unavailable)
    }
}

#[async_trait]
impl Transport for LazyAsync {
    async fn get(&self, key: String) -> StoreResult<Option<Item>> {
        self.transport().await?.get(key).await
    }

    async fn get_many(&self, keys: Vec<String>) -> StoreResult<Vec<Option<Item>>> {
        self.transport().await?.get_many(keys).await
    }

    async fn store(
        &self,
        key: String,
        value: Vec<u8>,
        exptime: u32,
        mode: Mode,
    ) -> StoreResult<Outcome> {
        self.transport()
            .await?
            .store(key, value, exptime, mode)
            .await
    }

    async fn store_many(
        &self,
        items: Vec<(String, Vec<u8>, u32, Mode)>,
    ) -> StoreResult<Vec<Outcome>> {
        self.transport().await?.store_many(items).await
    }

    async fn delete(&self, key: String, cas: Option<u64>) -> StoreResult<Outcome> {
        self.transport().await?.delete(key, cas).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.transport().await?.ping().await
    }
}

#[async_trait]
impl Transport for Async {
    async fn get(&self, key: String) -> StoreResult<Option<Item>> {
        let r = self
            .run("get", |c| {
                let key = &key;
                async move { c.run(get_op(key)).await }
            })
            .await
            .map_err(map_error("get", self.config.io_timeout))?;
        Ok(item(&r))
    }

    async fn get_many(&self, keys: Vec<String>) -> StoreResult<Vec<Option<Item>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let first = self
            .run_batch(|c| {
                let keys = &keys;
                async move { c.run_many(keys.iter().map(|k| get_op(k))).await }
            })
            .await
            .map_err(map_error("get_many", self.config.io_timeout))?;
        let rerun = retry_positions("get_many", &first);
        let again = if rerun.is_empty() {
            Vec::new()
        } else {
            self.fresh
                .run_many(rerun.iter().map(|&i| get_op(&keys[i])))
                .await
                .map_err(map_error("get_many", self.config.io_timeout))?
        };
        merge_retried(first, &rerun, again)
            .into_iter()
            .map(|r| {
                r.map(|r| item(&r))
                    .map_err(map_error("get_many", self.config.io_timeout))
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
            self.run("store", |c| {
                let (key, value) = (&key, &value);
                async move { c.run(set_op(key, value, exptime, mode)).await }
            })
            .await,
        )
        .map_err(map_error("store", self.config.io_timeout))
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
            .run_batch(|c| {
                let items = &items;
                async move { c.run_many(items.iter().map(op)).await }
            })
            .await
            .map_err(map_error("store_many", self.config.io_timeout))?;
        let rerun = retry_positions("store_many", &first);
        let again = if rerun.is_empty() {
            Vec::new()
        } else {
            self.fresh
                .run_many(rerun.iter().map(|&i| op(&items[i])))
                .await
                .map_err(map_error("store_many", self.config.io_timeout))?
        };
        merge_retried(first, &rerun, again)
            .into_iter()
            .map(|r| store_outcome(r).map_err(map_error("store_many", self.config.io_timeout)))
            .collect()
    }

    async fn delete(&self, key: String, cas: Option<u64>) -> StoreResult<Outcome> {
        let r = self
            .run("delete", |c| {
                let key = &key;
                async move { c.run(delete_op(key, cas)).await }
            })
            .await
            .map_err(map_error("delete", self.config.io_timeout))?;
        Ok(outcome(r.status))
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run("ping", |c| async move { c.noop().await })
            .await
            .map_err(map_error("ping", self.config.io_timeout))
    }
}
