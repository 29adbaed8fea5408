//! Test support shared by the integration tests of every session backend.
//!
//! - [`servers`]: where the tests find Redis, a Redis Cluster, PostgreSQL
//!   and Memcached (environment, local default, container fallback), and
//!   the message that says how to provide one when none answers.
//! - [`names`]: unique names for a test's keys and tables, fresh storage
//!   keys.
//! - [`postgres`]: a fresh PostgreSQL schema per test binary.
//! - [`process`]: spare ports, and waiting for a signalled server process to
//!   stop, for fault tests that run a private server.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod names;
pub mod postgres;
pub mod process;
pub mod servers;

pub use crate::names::{storage_key, unique};
