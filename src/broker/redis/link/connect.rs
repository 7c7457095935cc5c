//! Making connections: to the one server (the configured one, or the
//! master Sentinel names, checked with `ROLE`), to one cluster node, and
//! the cluster client; each with the link's credentials and TLS
//! ([`Access`]) and named for what it is for ([`Role`]).

use std::time::Duration;

use redis::aio::{AsyncPushSender, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{AsyncConnectionConfig, ProtocolVersion, RedisResult};

use super::access::{Access, AccessError, Entry};
use super::sentinel::check_master;
use super::{
    config, timed, Commands, LinkError, NodeAddr, RedisLink, Target, UrlError, CLUSTER_RETRIES,
    TIMEOUT,
};

/// What a connection is for. Each connection the hub opens says it, and
/// which instance it belongs to, in its `CLIENT SETNAME`
/// (`aether:{instance}:{role}`), so an operator's `CLIENT LIST` tells them
/// apart. (The cluster client's own per-node connections cannot be named:
/// redis-rs opens them.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The shared command connection (one server).
    Commands,
    /// A pub/sub connection: the one server's, or a cluster shard's.
    PubSub,
    /// The publisher's own connection to a cluster master.
    Publish,
    /// A short-lived question to a cluster node (`CLUSTER SHARDS`).
    Topology,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Commands => "commands",
            Role::PubSub => "pubsub",
            Role::Publish => "publish",
            Role::Topology => "topology",
        }
    }
}

impl RedisLink {
    /// The one server to connect to now: the configured one, or the
    /// master the sentinels name.
    async fn server(&self) -> Result<NodeAddr, LinkError> {
        match &self.target {
            Target::Single(addr) => Ok(addr.clone()),
            Target::Sentinel(sentinels) => sentinels.master().await,
            Target::Cluster { .. } => {
                Err(LinkError::Refused("a cluster has no one server".to_owned()))
            }
        }
    }

    /// A connection to the one server (`push`: RESP3, its pushes go
    /// there), named for `role`; on Sentinel, checked to be the master.
    async fn open_server(
        &self,
        role: Role,
        push: Option<AsyncConnectionConfig>,
    ) -> Result<MultiplexedConnection, LinkError> {
        let addr = self.server().await?;
        let protocol = match push {
            Some(_) => ProtocolVersion::RESP3,
            None => ProtocolVersion::RESP2,
        };
        let client = self.access.client(&addr, protocol)?;
        let settings = push.unwrap_or_else(|| config(TIMEOUT));
        let mut conn =
            timed(client.get_multiplexed_async_connection_with_config(&settings)).await?;
        timed(self.name(&mut conn, role)).await?;
        if self.sentinels().is_some() {
            check_master(&mut conn).await?;
            self.note_master(addr);
        }
        Ok(conn)
    }

    /// Opens a command connection (not yet in use).
    pub async fn open_command(&self) -> Result<Commands, LinkError> {
        match &self.target {
            Target::Single(_) => {
                let conn = self.open_server(Role::Commands, None).await?;
                Ok(Commands::Single(conn))
            }
            Target::Sentinel(_) => {
                let conn = self.open_server(Role::Commands, None).await?;
                Commands::master(conn).await
            }
            Target::Cluster { client, .. } => {
                let connecting = client.get_async_connection();
                match tokio::time::timeout(TIMEOUT * 2, connecting).await {
                    Ok(connected) => Ok(connected.map(Commands::Cluster)?),
                    Err(_) => Err(LinkError::Timeout),
                }
            }
        }
    }

    /// A connection of its own to one cluster node (its publisher's, or
    /// `CLUSTER SHARDS`), answering within `timeout`.
    pub async fn open_node(
        &self,
        addr: &NodeAddr,
        timeout: Duration,
        role: Role,
    ) -> RedisResult<MultiplexedConnection> {
        let mut conn = self
            .access
            .client(addr, ProtocolVersion::RESP2)?
            .get_multiplexed_async_connection_with_config(&config(timeout))
            .await?;
        self.name(&mut conn, role).await?;
        Ok(conn)
    }

    /// A pub/sub connection: RESP3, whose pushes (messages, server-sent
    /// unsubscribes, the disconnection) go to `push`. To the one server
    /// (`node` is `None`), or to one cluster node.
    pub async fn open_listener(
        &self,
        node: Option<&NodeAddr>,
        push: impl AsyncPushSender,
    ) -> Result<MultiplexedConnection, LinkError> {
        let settings = config(TIMEOUT).set_push_sender(push);
        let Some(addr) = node else {
            return self.open_server(Role::PubSub, Some(settings)).await;
        };
        let client = self.access.client(addr, ProtocolVersion::RESP3)?;
        let mut conn =
            timed(client.get_multiplexed_async_connection_with_config(&settings)).await?;
        timed(self.name(&mut conn, Role::PubSub)).await?;
        Ok(conn)
    }

    async fn name(&self, conn: &mut MultiplexedConnection, role: Role) -> RedisResult<()> {
        let name = format!("aether:{}:{}", self.instance, role.as_str());
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(name)
            .query_async::<()>(conn)
            .await
    }
}

/// Every configured address, taken apart; an error names the variable.
pub(super) fn entries(var: &'static str, list: &[String]) -> Result<Vec<Entry>, UrlError> {
    let entries: Vec<Entry> = list
        .iter()
        .map(|a| Entry::parse(a))
        .collect::<Result<_, _>>()
        .map_err(|e| UrlError::Address(var, e))?;
    if entries.is_empty() {
        return Err(UrlError::Address(var, AccessError::Address(String::new())));
    }
    Ok(entries)
}

/// The cluster client: every node it finds gets the same credentials and
/// TLS as the seeds.
pub(super) fn cluster_client(seeds: &[NodeAddr], access: &Access) -> RedisResult<ClusterClient> {
    let infos = seeds.iter().map(|s| access.info(s, ProtocolVersion::RESP2));
    let mut builder = ClusterClientBuilder::new(infos)
        .connection_timeout(TIMEOUT)
        .response_timeout(TIMEOUT)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(50)
        .max_retry_wait(500);
    if let Some(certs) = access.certificates() {
        builder = builder.certs(certs);
    }
    builder.build()
}
