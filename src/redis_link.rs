//! The instance's link to Redis: the client, the one multiplexed command
//! connection (PUBLISH and presence commands, pipelined), and whether Redis
//! is up.
//!
//! The link is to one Redis server (`AETHER_REDIS_URL`) or to a Redis
//! Cluster (`AETHER_REDIS_CLUSTER`). Either way others borrow one
//! [`Commands`] connection: with a cluster it sends each command or script
//! to the master of its key's slot and follows `MOVED`/`ASK`, so presence
//! and history code is written once against [`ConnectionLike`] (a pipeline
//! on a cluster must stay within one slot).
//!
//! The pub/sub supervisor (`broker/redis.rs`, or `broker/cluster/` for a
//! cluster) owns the link's life: it connects, declares the link up once
//! its connections work and probes answer, and down when a probe fails or
//! a pub/sub stream ends. Others only borrow the command connection, and
//! fail fast while the link is down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::watch;

use crate::metrics;

/// How long connecting or any one command may take before it counts as a
/// failure.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Retries of one cluster command (after `MOVED`, `TRYAGAIN`, a lost node)
/// before it fails; each refreshes the slot map first.
const CLUSTER_RETRIES: u32 = 3;

/// The command connection every part of the hub shares, whatever Redis is
/// behind it. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub enum Commands {
    Single(MultiplexedConnection),
    /// Routes by key slot to the owning master; follows `MOVED`/`ASK`.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
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
            Commands::Single(c) => c.req_packed_commands(cmd, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the link goes.
enum Target {
    Single(Client),
    Cluster {
        client: ClusterClient,
        /// `host:port` of the seed nodes, as configured.
        seeds: Vec<String>,
    },
}

pub struct RedisLink {
    target: Target,
    command: RwLock<Option<Commands>>,
    up: AtomicBool,
    connected: watch::Sender<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("AETHER_REDIS_URL: {0}")]
    Url(redis::RedisError),
    #[error("AETHER_REDIS_CLUSTER: {0}")]
    Cluster(redis::RedisError),
}

impl RedisLink {
    /// A link to one Redis server.
    pub fn new(url: &str) -> Result<RedisLink, UrlError> {
        let client = Client::open(url).map_err(UrlError::Url)?;
        Ok(RedisLink::with(Target::Single(client)))
    }

    /// A link to a Redis Cluster, given seed nodes `host:port`.
    pub fn cluster(seeds: &[String]) -> Result<RedisLink, UrlError> {
        let urls: Vec<String> = seeds.iter().map(|s| format!("redis://{s}/")).collect();
        let client = ClusterClientBuilder::new(urls)
            .connection_timeout(TIMEOUT)
            .response_timeout(TIMEOUT)
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(50)
            .max_retry_wait(500)
            .build()
            .map_err(UrlError::Cluster)?;
        Ok(RedisLink::with(Target::Cluster {
            client,
            seeds: seeds.to_vec(),
        }))
    }

    fn with(target: Target) -> RedisLink {
        metrics::redis_link_created();
        RedisLink {
            target,
            command: RwLock::new(None),
            up: AtomicBool::new(false),
            connected: watch::Sender::new(0),
        }
    }

    /// The single server's client; `None` for a cluster.
    pub fn client(&self) -> Option<&Client> {
        match &self.target {
            Target::Single(client) => Some(client),
            Target::Cluster { .. } => None,
        }
    }

    /// The cluster's seed nodes (`host:port`); empty for a single server.
    pub fn seeds(&self) -> &[String] {
        match &self.target {
            Target::Single(_) => &[],
            Target::Cluster { seeds, .. } => seeds,
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// Opens a command connection (not yet in use).
    pub async fn open_command(&self) -> redis::RedisResult<Commands> {
        match &self.target {
            Target::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(TIMEOUT)
                    .set_response_timeout(TIMEOUT);
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Commands::Single)
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
