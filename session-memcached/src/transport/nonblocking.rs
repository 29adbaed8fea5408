//! `Async`: the `memcache` crate's Tokio meta client (feature `async`).

use async_trait::async_trait;
use memcache::exp::{AsyncMetaClient, MetaClient};
use session_core::StoreResult;

use super::{
    delete_op, get_op, item, map_error, outcome, set_op, store_outcome, Item, Mode, Outcome,
    Transport,
};
use crate::config::{ConfigError, MemcachedConfig};

/// The Tokio meta client: no thread hop per call.
#[derive(Clone)]
pub(crate) struct Async {
    client: AsyncMetaClient,
}

impl Async {
    /// Builds the client (resolving addresses); connections are dialed
    /// lazily.
    pub(crate) async fn new(config: &MemcachedConfig) -> Result<Self, ConfigError> {
        let client = MetaClient::builder()
            .io_timeout(Some(config.io_timeout))
            .connect_timeout(Some(config.connect_timeout))
            .max_idle(config.max_idle)
            .max_connections(Some(config.max_in_flight))
            .connect_multiple_async(config.servers.iter().map(String::as_str))
            .await
            .map_err(|e| ConfigError::Client(e.to_string()))?;
        Ok(Self { client })
    }
}

#[async_trait]
impl Transport for Async {
    async fn get(&self, key: String) -> StoreResult<Option<Item>> {
        let r = self.client.run(get_op(&key)).await.map_err(map_error)?;
        Ok(item(&r))
    }

    async fn get_many(&self, keys: Vec<String>) -> StoreResult<Vec<Option<Item>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.client
            .run_many(keys.iter().map(|k| get_op(k)))
            .await
            .map_err(map_error)?
            .into_iter()
            .map(|r| r.map(|r| item(&r)).map_err(map_error))
            .collect()
    }

    async fn store(
        &self,
        key: String,
        value: Vec<u8>,
        exptime: u32,
        mode: Mode,
    ) -> StoreResult<Outcome> {
        store_outcome(self.client.run(set_op(&key, &value, exptime, mode)).await).map_err(map_error)
    }

    async fn delete(&self, key: String, cas: Option<u64>) -> StoreResult<Outcome> {
        let r = self
            .client
            .run(delete_op(&key, cas))
            .await
            .map_err(map_error)?;
        Ok(outcome(r.status))
    }

    async fn delete_many(&self, keys: Vec<(String, Option<u64>)>) -> StoreResult<Vec<Outcome>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.client
            .run_many(keys.iter().map(|(k, cas)| delete_op(k, *cas)))
            .await
            .map_err(map_error)?
            .into_iter()
            .map(|r| r.map(|r| outcome(r.status)).map_err(map_error))
            .collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.client.noop().await.map_err(map_error)
    }
}
