//! A Memcached backend for [`session_core`]: [`MemcachedStore`].
//!
//! - [`config`]: servers, namespace, item size limit, timeouts, concurrency.
//! - [`store`]: [`MemcachedStore`], the [`SessionStore`](session_core::SessionStore).
//! - `transport` (private): the Memcached primitives, run on Tokio's blocking
//!   pool, or on the Tokio client with the `async` feature
//!   (`MemcachedStore::new_async`).
//! - `keys`, `expiry`, `index` (private): key layout, deadlines to
//!   expiration times, the per-user index item.
//! - `recent` (private): the CAS tokens of recent loads, which make the
//!   usual update a single round trip.
//!
//! ```no_run
//! use session_core::SessionManager;
//! use session_memcached::{MemcachedConfig, MemcachedStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = MemcachedConfig::new(["memcache://10.0.0.1:11211,memcache://10.0.0.2:11211"])?
//!     .with_namespace("myapp")?;
//! let manager = SessionManager::new(MemcachedStore::new(config)?);
//! # let _ = manager; Ok(()) }
//! ```
//!
//! # A cache, not a database
//!
//! Memcached keeps items in memory only. A server that restarts or is lost
//! takes its share of the sessions with it (with several servers, the keys
//! hashed to it), and a full server evicts items it has not used lately.
//! The application then sees "no session": the cookie no longer loads, the
//! user is logged out and signs in again. A lost user index makes
//! `list_user` / `delete_user` miss sessions that survived on other
//! servers. While a server is unreachable, operations on its keys fail
//! with [`StoreError::Unavailable`](session_core::StoreError::Unavailable)
//! within the configured timeouts, and the store reconnects by itself.
//! Use a persistent backend where losing sessions is not acceptable.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
mod expiry;
mod index;
mod keys;
mod recent;
pub mod store;
mod tombstone;
mod transport;

pub use crate::config::{
    ConfigError, MemcachedConfig, DEFAULT_MAX_ITEM_SIZE, DEFAULT_RECENT_READS,
};
pub use crate::store::MemcachedStore;
