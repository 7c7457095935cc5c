//! The link: how this instance reaches Redis, and whether it can.
//!
//! The bottom of the Redis path. It owns how every connection is made
//! (the one server's client, the cluster client, a client for any cluster
//! node: the one place TLS, credentials and Sentinel plug in), how long
//! anything may take ([`TIMEOUT`], [`timed`]), how to wait before trying
//! again ([`Backoff`]), the probe ([`ping`]) and the errors ([`LinkError`]).
//! It knows nothing of channels, routes or supervisors.
//!
//! [`RedisLink`] also holds the shared command connection ([`Commands`]:
//! publishes, scripts, presence, pipelined) and whether Redis is up. The
//! supervisor of the topology (`single.rs` or `cluster/`) owns the link's
//! life: it connects, declares the link up once its connections work and
//! probes answer, and down when they fail. Others only borrow the command
//! connection, and fail fast while the link is down.

mod addr;
mod backoff;
mod commands;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use redis::aio::{AsyncPushSender, ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion, RedisResult, Value,
};
use tokio::sync::{watch, Notify};

pub use addr::NodeAddr;
pub use backoff::Backoff;
pub use commands::{Commands, Publish};

use crate::config::RedisServers;
use crate::metrics;

/// How long connecting or any one command may take before it counts as a
/// failure.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// How long a pub/sub supervisor waits for the command connection's probe
/// after losing its own connection ([`RedisLink::recheck`]).
const RECHECK: Duration = Duration::from_millis(500);

/// How often a supervisor probes its connections.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Retries of one cluster command (after `MOVED`, `TRYAGAIN`, a lost node)
/// before it fails; each refreshes the slot map first.
const CLUSTER_RETRIES: u32 = 3;

/// Why a connection, or a command on it, failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {TIMEOUT:?}")]
    Timeout,
    #[error("the connection closed")]
    Closed,
    #[error("{0}")]
    Refused(String),
}

/// A Redis setting that cannot be used (at start-up).
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("AETHER_REDIS_URL: {0}")]
    Url(redis::RedisError),
    #[error("AETHER_REDIS_CLUSTER: {0}")]
    Cluster(redis::RedisError),
}

/// Where the link goes.
enum Target {
    Single(Client),
    Cluster {
        client: ClusterClient,
        seeds: Vec<NodeAddr>,
    },
}

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

pub struct RedisLink {
    servers: RedisServers,
    /// This instance's id, in every connection's name.
    instance: String,
    target: Target,
    command: RwLock<Option<Commands>>,
    /// The command connection works: messages can be published.
    up: AtomicBool,
    /// The pub/sub connections carry every route this instance wants.
    listening: AtomicBool,
    /// A command failed as if the connection were gone: probe now.
    suspect: Notify,
    /// Counts the command connection's probes ([`RedisLink::recheck`]).
    probes: watch::Sender<u64>,
    connected: watch::Sender<u64>,
}

impl RedisLink {
    /// A link to `servers` for the instance `instance`; nothing is
    /// connected yet.
    pub fn new(servers: &RedisServers, instance: &str) -> Result<RedisLink, UrlError> {
        let target = match servers {
            RedisServers::Single { url } => {
                Target::Single(Client::open(url.as_str()).map_err(UrlError::Url)?)
            }
            RedisServers::Cluster { seeds } => {
                let urls: Vec<String> = seeds.iter().map(|s| format!("redis://{s}/")).collect();
                let client = ClusterClientBuilder::new(urls)
                    .connection_timeout(TIMEOUT)
                    .response_timeout(TIMEOUT)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(50)
                    .max_retry_wait(500)
                    .build()
                    .map_err(UrlError::Cluster)?;
                let seeds = seeds.iter().filter_map(|s| NodeAddr::parse(s)).collect();
                Target::Cluster { client, seeds }
            }
        };
        metrics::redis_link_created();
        Ok(RedisLink {
            servers: servers.clone(),
            instance: instance.to_owned(),
            target,
            command: RwLock::new(None),
            up: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            suspect: Notify::new(),
            probes: watch::Sender::new(0),
            connected: watch::Sender::new(0),
        })
    }

    /// The servers this link reaches, as configured.
    pub fn servers(&self) -> &RedisServers {
        &self.servers
    }

    /// The cluster's seed nodes; empty for a single server.
    pub fn seeds(&self) -> &[NodeAddr] {
        match &self.target {
            Target::Single(_) => &[],
            Target::Cluster { seeds, .. } => seeds,
        }
    }

    /// How messages are published through this link.
    pub fn publish(&self) -> Publish {
        match self.target {
            Target::Single(_) => Publish::Classic,
            Target::Cluster { .. } => Publish::Sharded,
        }
    }

    /// Opens a command connection (not yet in use).
    pub async fn open_command(&self) -> RedisResult<Commands> {
        match &self.target {
            Target::Single(client) => {
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config(TIMEOUT))
                    .await?;
                self.name(&mut conn, Role::Commands).await?;
                Ok(Commands::Single(conn))
            }
            Target::Cluster { client, .. } => {
                let connecting = client.get_async_connection();
                match tokio::time::timeout(TIMEOUT * 2, connecting).await {
                    Ok(connected) => connected.map(Commands::Cluster),
                    Err(_) => Err(redis::RedisError::from((
                        redis::ErrorKind::IoError,
                        "cluster connect timed out",
                    ))),
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
        let mut conn = Client::open(addr.url())?
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
    ) -> RedisResult<MultiplexedConnection> {
        let mut info = match (node, &self.target) {
            (Some(addr), _) => addr.url().into_connection_info()?,
            (None, Target::Single(client)) => client.get_connection_info().clone(),
            (None, Target::Cluster { .. }) => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::ClientError,
                    "a cluster listens per node",
                )))
            }
        };
        info.redis.protocol = ProtocolVersion::RESP3;
        let mut conn = Client::open(info)?
            .get_multiplexed_async_connection_with_config(&config(TIMEOUT).set_push_sender(push))
            .await?;
        self.name(&mut conn, Role::PubSub).await?;
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

    /// The command connection, or `None` while Redis is down.
    pub fn command(&self) -> Option<Commands> {
        if !self.is_up() {
            return None;
        }
        self.command.read().ok().and_then(|c| c.clone())
    }

    /// Whether messages can be published: the command connection works.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether the instance can take sockets (`/readyz`): it can publish,
    /// and its pub/sub connections carry every route it wants, so a
    /// socket joining now gets its messages.
    pub fn is_ready(&self) -> bool {
        self.is_up() && self.listening.load(Ordering::Acquire)
    }

    /// Redis answers again: this connection serves commands from now on.
    pub fn set_up(&self, command: Commands) {
        if let Ok(mut slot) = self.command.write() {
            *slot = Some(command);
        }
        self.up.store(true, Ordering::Release);
        self.report();
        self.connected.send_modify(|n| *n += 1);
    }

    /// The command connection failed: publishing fails fast until
    /// [`RedisLink::set_up`].
    pub fn set_down(&self) {
        self.up.store(false, Ordering::Release);
        if let Ok(mut slot) = self.command.write() {
            *slot = None;
        }
        self.report();
    }

    /// Whether the pub/sub connections carry every wanted route (a lost
    /// pub/sub connection does not stop publishing: docs/protocol.md
    /// section 7).
    pub fn set_listening(&self, listening: bool) {
        if self.listening.swap(listening, Ordering::AcqRel) != listening {
            self.report();
        }
    }

    /// A command on the command connection failed as a dropped
    /// connection does: its supervisor probes at once rather than at the
    /// next tick, so what is published meanwhile fails as unavailable
    /// rather than being written to a dead connection.
    pub fn suspect(&self) {
        self.suspect.notify_one();
    }

    /// Resolves at the next [`RedisLink::suspect`].
    pub async fn suspected(&self) {
        self.suspect.notified().await;
    }

    /// The command connection was probed (and declared down if it failed).
    pub fn probed(&self) {
        self.probes.send_modify(|n| *n += 1);
    }

    /// Has the command connection probed now, and waits (at most
    /// [`RECHECK`]) for the outcome. When a pub/sub connection drops, Redis
    /// itself may be gone: once this returns, a message published is
    /// failed rather than written to a dead connection and unconfirmed.
    pub async fn recheck(&self) {
        let mut probes = self.probes.subscribe();
        probes.mark_unchanged();
        self.suspect();
        let _ = tokio::time::timeout(RECHECK, probes.changed()).await;
    }

    /// `aether_redis_up` tells what `/readyz` tells.
    fn report(&self) {
        metrics::redis_up(self.is_ready());
    }

    /// Changes each time the link comes up (first connect and every
    /// reconnect): the moment to rebuild what Redis may have lost.
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.connected.subscribe()
    }
}

fn config(timeout: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
}

/// `op`, failed if Redis has not answered within [`TIMEOUT`].
pub async fn timed<T>(
    op: impl std::future::Future<Output = RedisResult<T>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(TIMEOUT, op).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(LinkError::Timeout),
    }
}

/// The probe: `conn` must answer a `PING` in time. (A half-open TCP
/// connection never fails by itself: only an unanswered probe shows it.)
pub async fn ping(conn: &mut impl ConnectionLike) -> Result<(), LinkError> {
    timed(redis::cmd("PING").query_async::<Value>(conn)).await?;
    Ok(())
}
