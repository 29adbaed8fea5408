//! The connection: one multiplexed connection to a single server
//! ([`ConnectionManager`], which reconnects by itself) or the cluster client's
//! connection ([`ClusterConnection`], which follows slots and reconnects per
//! node). Both are cheap handles; every operation clones one. A near cache's
//! tracking connection to one primary is a third kind (see
//! `tracking`).

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Single server or cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server (or a proxy that speaks for one).
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
    /// The near cache's tracking connection to the primary of the keys
    /// sent on it (never reconnects: a new one is a new link).
    Tracked(MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Tracked(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Tracked(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Tracked(c) => c.get_db(),
        }
    }
}

/// The value of the server setting `name` (`CONFIG GET`, read as a map on
/// RESP3 and as a flat array on RESP2); `None` when the server has no such
/// setting.
pub(crate) async fn config_get<C: ConnectionLike>(
    conn: &mut C,
    name: &str,
) -> redis::RedisResult<Option<String>> {
    let mut pairs: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(conn)
        .await?;
    Ok(pairs.remove(name))
}
