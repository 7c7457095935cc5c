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

use redis::aio::{AsyncPushSender, ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{AsyncConnectionConfig, Client, RedisResult, Value};
use tokio::sync::watch;

pub use addr::NodeAddr;
pub use backoff::Backoff;
pub use commands::{Commands, Publish};

use crate::config::RedisServers;
use crate::metrics;

/// How long connecting or any one command may take before it counts as a
/// failure.
pub const TIMEOUT: Duration = Duration::from_secs(2);

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
    #[error("the pub/sub connection closed")]
    StreamEnded,
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

pub struct RedisLink {
    servers: RedisServers,
    target: Target,
    command: RwLock<Option<Commands>>,
    up: AtomicBool,
    connected: watch::Sender<u64>,
}

impl RedisLink {
    /// A link to `servers`; nothing is connected yet.
    pub fn new(servers: &RedisServers) -> Result<RedisLink, UrlError> {
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
            target,
            command: RwLock::new(None),
            up: AtomicBool::new(false),
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
            Target::Single(client) => client
                .get_multiplexed_async_connection_with_config(&config(TIMEOUT))
                .await
                .map(Commands::Single),
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

    /// Opens the one server's pub/sub connection (a cluster has one per
    /// shard: [`RedisLink::open_node_pushing`]).
    pub async fn open_pubsub(&self) -> Result<PubSub, LinkError> {
        let Target::Single(client) = &self.target else {
            return Err(LinkError::StreamEnded);
        };
        timed(client.get_async_pubsub()).await
    }

    /// A connection of its own to one cluster node (its publisher's, or
    /// `CLUSTER SHARDS`), answering within `timeout`.
    pub async fn open_node(
        &self,
        addr: &NodeAddr,
        timeout: Duration,
    ) -> RedisResult<MultiplexedConnection> {
        Client::open(addr.url())?
            .get_multiplexed_async_connection_with_config(&config(timeout))
            .await
    }

    /// A RESP3 connection to one cluster node whose pushes (messages,
    /// server-sent unsubscribes, the disconnection) go to `push`: a
    /// shard's pub/sub connection.
    pub async fn open_node_pushing(
        &self,
        addr: &NodeAddr,
        push: impl AsyncPushSender,
    ) -> RedisResult<MultiplexedConnection> {
        Client::open(format!("{}?protocol=resp3", addr.url()))?
            .get_multiplexed_async_connection_with_config(&config(TIMEOUT).set_push_sender(push))
            .await
    }

    /// The command connection, or `None` while Redis is down.
    pub fn command(&self) -> Option<Commands> {
        if !self.is_up() {
            return None;
        }
        self.command.read().ok().and_then(|c| c.clone())
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Redis answers again: this connection serves commands from now on.
    pub fn set_up(&self, command: Commands) {
        if let Ok(mut slot) = self.command.write() {
            *slot = Some(command);
        }
        self.up.store(true, Ordering::Release);
        metrics::redis_up(true);
        self.connected.send_modify(|n| *n += 1);
    }

    pub fn set_down(&self) {
        self.up.store(false, Ordering::Release);
        if let Ok(mut slot) = self.command.write() {
            *slot = None;
        }
        metrics::redis_up(false);
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
