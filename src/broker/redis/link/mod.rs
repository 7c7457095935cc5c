//! The link: how this instance reaches Redis, and whether it can.
//!
//! The bottom of the Redis path. It owns how every connection is made
//! (`connect.rs`: the one server, or the master Sentinel names; the
//! cluster client; any cluster node), with which credentials and TLS
//! (`access.rs`), through which sentinels (`sentinel.rs`), how long
//! anything may take ([`TIMEOUT`], [`timed`]), how to wait before trying
//! again ([`Backoff`]), the probe ([`RedisLink::probe`]), the errors
//! ([`LinkError`]) and why a connection is down (`health.rs`). It knows
//! nothing of channels, routes or supervisors.
//!
//! [`RedisLink`] also holds the shared command connection ([`Commands`]:
//! publishes, scripts, presence, pipelined) and whether Redis is up. The
//! supervisor of the topology (`single.rs` or `cluster/`) owns the link's
//! life: it connects, declares the link up once its connections work and
//! probes answer, and down when they fail. Others only borrow the command
//! connection, and fail fast while the link is down.

mod access;
mod addr;
mod backoff;
mod commands;
mod connect;
mod health;
mod sentinel;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::{AsyncConnectionConfig, RedisResult, Value};
use tokio::sync::{watch, Notify};

use access::{Access, AccessError, Entry, TlsFiles};
pub use addr::NodeAddr;
pub use backoff::Backoff;
pub use commands::{Commands, Publish};
pub use connect::Role;
use connect::{cluster_client, entries};
use health::Health;
pub use health::{reason, Connection};
pub use sentinel::watch as watch_sentinels;
use sentinel::{check_master, Sentinels};

use crate::config::{Redis, RedisServers};
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
    #[error("no master known ({0})")]
    NoMaster(String),
    #[error("the server is not the master (ROLE: {0})")]
    NotMaster(String),
    #[error("the sentinels named a new master")]
    Switched,
}

/// A Redis setting that cannot be used (at start-up). Never holds a
/// password: addresses are redacted, files named by their variable.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("{0}: {1}")]
    Address(&'static str, AccessError),
    /// Names its own variable.
    #[error("{0}")]
    Tls(AccessError),
    #[error("AETHER_REDIS_CLUSTER: {0}")]
    Cluster(redis::RedisError),
}

impl UrlError {
    fn of(var: &'static str, e: AccessError) -> UrlError {
        match e {
            AccessError::TlsFile { .. } => UrlError::Tls(e),
            other => UrlError::Address(var, other),
        }
    }
}

/// Where the link goes.
enum Target {
    Single(NodeAddr),
    Cluster {
        client: ClusterClient,
        seeds: Vec<NodeAddr>,
    },
    Sentinel(Sentinels),
}

pub struct RedisLink {
    servers: RedisServers,
    /// This instance's id, in every connection's name.
    instance: String,
    target: Target,
    /// Credentials and TLS of every data node.
    access: Access,
    /// Why each connection is down, for `/readyz` and the logs.
    health: Health,
    /// The master last connected to (Sentinel): a new one is a failover.
    master: Mutex<Option<NodeAddr>>,
    /// Counts `+switch-master` events (Sentinel).
    switched: watch::Sender<u64>,
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
    /// A link to `redis` for the instance `instance`; nothing is
    /// connected yet.
    pub fn new(redis: &Redis, instance: &str) -> Result<RedisLink, UrlError> {
        let tls = TlsFiles {
            ca: redis.tls.ca_file.clone(),
            cert: redis.tls.cert_file.clone(),
            key: redis.tls.key_file.clone(),
        };
        let user = redis.credentials.username.as_deref();
        let password = redis.credentials.password.as_deref();
        let (target, access) = match &redis.servers {
            RedisServers::Single { url } => {
                let entries = entries("AETHER_REDIS_URL", std::slice::from_ref(url))?;
                let access = Access::of(&entries, user, password, &tls)
                    .map_err(|e| UrlError::of("AETHER_REDIS_URL", e))?;
                (Target::Single(entries[0].addr.clone()), access)
            }
            RedisServers::Cluster { seeds } => {
                let entries = entries("AETHER_REDIS_CLUSTER", seeds)?;
                let access = Access::of(&entries, user, password, &tls)
                    .map_err(|e| UrlError::of("AETHER_REDIS_CLUSTER", e))?;
                let seeds: Vec<NodeAddr> = entries.into_iter().map(|e| e.addr).collect();
                let client = cluster_client(&seeds, &access).map_err(UrlError::Cluster)?;
                (Target::Cluster { client, seeds }, access)
            }
            RedisServers::Sentinel { sentinels, master } => {
                let var = "AETHER_REDIS_SENTINELS";
                let entries = entries(var, sentinels)?;
                let creds = &redis.sentinel_credentials;
                let sentinel_access = Access::of(
                    &entries,
                    creds.username.as_deref(),
                    creds.password.as_deref(),
                    &tls,
                )
                .map_err(|e| UrlError::of(var, e))?;
                // The master speaks TLS when the sentinels do; its
                // credentials are the data nodes' own, never the URLs'.
                let master_access = Access::of(
                    &[Entry::bare(NodeAddr::default(), sentinel_access.is_tls())],
                    user,
                    password,
                    &tls,
                )
                .map_err(|e| UrlError::of(var, e))?;
                let sentinels = Sentinels {
                    list: entries.into_iter().map(|e| e.addr).collect(),
                    access: sentinel_access,
                    name: master.clone(),
                };
                (Target::Sentinel(sentinels), master_access)
            }
        };
        metrics::redis_link_created();
        Ok(RedisLink {
            servers: redis.servers.clone(),
            instance: instance.to_owned(),
            target,
            access,
            health: Health::default(),
            master: Mutex::new(None),
            switched: watch::Sender::new(0),
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
            Target::Cluster { seeds, .. } => seeds,
            Target::Single(_) | Target::Sentinel(_) => &[],
        }
    }

    /// The sentinels, when the master is found through them.
    fn sentinels(&self) -> Option<&Sentinels> {
        match &self.target {
            Target::Sentinel(sentinels) => Some(sentinels),
            _ => None,
        }
    }

    /// How messages are published through this link.
    pub fn publish(&self) -> Publish {
        match self.target {
            Target::Single(_) | Target::Sentinel(_) => Publish::Classic,
            Target::Cluster { .. } => Publish::Sharded,
        }
    }

    /// A master connected to: a different one than before is a failover
    /// the hub followed.
    fn note_master(&self, addr: NodeAddr) {
        let Ok(mut last) = self.master.lock() else {
            return;
        };
        if let Some(before) = last.as_ref().filter(|before| **before != addr) {
            tracing::warn!(master = %addr, was = %before, "Redis master changed (failover followed)");
            metrics::redis_failover();
        }
        *last = Some(addr);
    }

    /// A sentinel announced a new master: every connection to the old
    /// one is dropped and made again ([`RedisLink::switched`]).
    pub fn master_switched(&self) {
        self.switched.send_modify(|n| *n += 1);
    }

    /// Changes at each `+switch-master` of our master.
    pub fn switches(&self) -> watch::Receiver<u64> {
        self.switched.subscribe()
    }

    /// Whether the probe must also check that the server is the master
    /// (Sentinel: a demoted master answers `PING` as before).
    pub fn checks_role(&self) -> bool {
        self.sentinels().is_some()
    }

    /// The probe of a connection to the one server: it answers in time
    /// and, on Sentinel, is still the master.
    pub async fn probe(&self, conn: &mut impl ConnectionLike) -> Result<(), LinkError> {
        match self.checks_role() {
            true => check_master(conn).await,
            false => ping(conn).await,
        }
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

    /// Whether the pub/sub connections carry every wanted route.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
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
        self.health.up(Connection::Commands);
        self.report();
        self.connected.send_modify(|n| *n += 1);
    }

    /// The command connection failed (or cannot be made), and why:
    /// publishing fails fast until [`RedisLink::set_up`].
    pub fn set_down(&self, why: &LinkError) {
        self.up.store(false, Ordering::Release);
        if let Ok(mut slot) = self.command.write() {
            *slot = None;
        }
        self.health.down(Connection::Commands, why);
        self.report();
    }

    /// The pub/sub connections carry every wanted route.
    pub fn set_listening(&self) {
        self.health.up(Connection::PubSub);
        if !self.listening.swap(true, Ordering::AcqRel) {
            self.report();
        }
    }

    /// A pub/sub connection is down (or cannot be made), and why. This
    /// does not stop publishing (docs/protocol.md section 7), but a
    /// socket joining now would not get its messages: not ready.
    pub fn set_deaf(&self, why: &LinkError) {
        self.health.down(Connection::PubSub, why);
        if self.listening.swap(false, Ordering::AcqRel) {
            self.report();
        }
    }

    /// Why the instance is not ready, a line per connection that is
    /// down; `None` when it is ready.
    pub fn unready(&self) -> Option<String> {
        (!self.is_ready()).then(|| self.health.describe())
    }

    /// Whether the last failure of a connection was already logged as
    /// this one (a retry loop logs a failure once, and again when its
    /// reason changes).
    pub fn is_new_failure(&self, connection: Connection, why: &LinkError) -> bool {
        self.health.is_new(connection, why)
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
