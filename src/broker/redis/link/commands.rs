//! The command connection every part of the hub shares (publishes,
//! scripts, presence), whatever Redis is behind it, and which command
//! publishes on it.

use std::sync::Arc;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::{timed, LinkError};

/// Cheap to clone: clones share the connection. Presence and history code
/// is written once against [`ConnectionLike`] (a pipeline on a cluster
/// must stay within one slot).
#[derive(Clone)]
pub enum Commands {
    Single(MultiplexedConnection),
    /// One master and its lineage: its replication ID (`master_replid`),
    /// which a promotion changes. History numbering is tied to it
    /// (`history.rs`, `NUMBER`), so that a failover never hands out an
    /// offset twice. The master Sentinel names, and each cluster master
    /// the publisher holds a connection to.
    Master(MultiplexedConnection, Arc<str>),
    /// Routes by key slot to the owning master; follows `MOVED`/`ASK`.
    Cluster(ClusterConnection),
}

impl Commands {
    /// `conn` to a master, with its lineage read from it.
    pub async fn master(mut conn: MultiplexedConnection) -> Result<Commands, LinkError> {
        let info: String =
            timed(redis::cmd("INFO").arg("replication").query_async(&mut conn)).await?;
        let lineage = info
            .lines()
            .find_map(|l| l.strip_prefix("master_replid:"))
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                LinkError::Refused("INFO replication has no master_replid".to_owned())
            })?;
        Ok(Commands::Master(conn, lineage.into()))
    }

    /// The master's lineage; `""` where it is not known (one server as
    /// configured; the cluster client's own connections).
    pub fn lineage(&self) -> &str {
        match self {
            Commands::Master(_, lineage) => lineage,
            Commands::Single(_) | Commands::Cluster(_) => "",
        }
    }
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Single(c) | Commands::Master(c, _) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Single(c) | Commands::Master(c, _) => {
                c.req_packed_commands(cmd, offset, count)
            }
            Commands::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) | Commands::Master(c, _) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

/// How a channel's messages are published: classic pub/sub on one Redis,
/// sharded pub/sub on a cluster (docs/protocol.md section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    Classic,
    Sharded,
}

impl Publish {
    pub fn command(self) -> &'static str {
        match self {
            Publish::Classic => "PUBLISH",
            Publish::Sharded => "SPUBLISH",
        }
    }
}
