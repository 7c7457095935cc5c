//! The instance's link to Redis: the client, the one multiplexed command
//! connection (PUBLISH and presence commands, pipelined), and whether Redis
//! is up.
//!
//! The pub/sub supervisor in `broker/redis.rs` owns the link's life: it
//! connects, declares the link up once both connections work and probes
//! answer, and down when a probe fails or the pub/sub stream ends. Others
//! only borrow the command connection, and fail fast while the link is down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::watch;

use crate::metrics;

/// How long connecting or any one command may take before it counts as a
/// failure.
pub const TIMEOUT: Duration = Duration::from_secs(2);

pub struct RedisLink {
    client: Client,
    command: RwLock<Option<MultiplexedConnection>>,
    up: AtomicBool,
    connected: watch::Sender<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("AETHER_REDIS_URL: {0}")]
pub struct UrlError(redis::RedisError);

impl RedisLink {
    pub fn new(url: &str) -> Result<RedisLink, UrlError> {
        let client = Client::open(url).map_err(UrlError)?;
        metrics::redis_link_created();
        Ok(RedisLink {
            client,
            command: RwLock::new(None),
            up: AtomicBool::new(false),
            connected: watch::Sender::new(0),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens a command connection (not yet in use).
    pub async fn open_command(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(TIMEOUT)
            .set_response_timeout(TIMEOUT);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// The command connection, or `None` while Redis is down.
    pub fn command(&self) -> Option<MultiplexedConnection> {
        if !self.is_up() {
            return None;
        }
        self.command.read().ok().and_then(|c| c.clone())
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Redis answers again: this connection serves commands from now on.
    pub fn set_up(&self, command: MultiplexedConnection) {
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
