//! [`Blocking`]: the blocking meta client on Tokio's blocking pool.

use std::sync::Arc;

use async_trait::async_trait;
use memcache::exp::MetaClient;
use session_core::{StoreError, StoreResult};
use tokio::sync::Semaphore;

use super::{
    delete_op, get_op, item, map_error, outcome, set_op, store_outcome, Item, Mode, Outcome,
    Transport,
};
use crate::config::{ConfigError, MemcachedConfig};

/// The blocking meta client, run on Tokio's blocking pool with at most
/// `max_in_flight` calls at once.
#[derive(Clone)]
pub(crate) struct Blocking {
    client: MetaClient,
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
    pub(crate) fn new(config: &MemcachedConfig) -> Result<Self, ConfigError> {
        let client = MetaClient::builder()
            .io_timeout(Some(config.io_timeout))
            .connect_timeout(Some(config.connect_timeout))
            .max_idle(config.max_idle)
            .max_connections(Some(config.max_in_flight))
            .connect_multiple(config.servers.iter().map(String::as_str))
            .map_err(|e| ConfigError::Client(e.to_string()))?;
        Ok(Self {
            client,
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
        })
    }

    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&MetaClient) -> Result<T, memcache::exp::Error> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(StoreError::backend)?;
        let client = self.client.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&client)
        })
        .await
        .map_err(|e| StoreError::backend(format!("memcached call did not complete: {e}")))?;
        result.map_err(map_error)
    }
}

#[async_trait]
impl Transport for Blocking {
    async fn get(&self, key: String) -> StoreResult<Option<Item>> {
        self.run(move |c| c.run(get_op(&key)).map(|r| item(&r)))
            .await
    }

    async fn get_many(&self, keys: Vec<String>) -> StoreResult<Vec<Option<Item>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.run(move |c| {
            c.run_many(keys.iter().map(|k| get_op(k)))?
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
        self.run(move |c| store_outcome(c.run(set_op(&key, &value, exptime, mode))))
            .await
    }

    async fn delete(&self, key: String, cas: Option<u64>) -> StoreResult<Outcome> {
        self.run(move |c| c.run(delete_op(&key, cas)).map(|r| outcome(r.status)))
            .await
    }

    async fn delete_many(&self, keys: Vec<(String, Option<u64>)>) -> StoreResult<Vec<Outcome>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.run(move |c| {
            c.run_many(keys.iter().map(|(k, cas)| delete_op(k, *cas)))?
                .into_iter()
                .map(|r| r.map(|r| outcome(r.status)))
                .collect()
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run(MetaClient::noop).await
    }
}
