//! A real Redis Cluster for the tests: six `redis-server` processes (three
//! masters, three replicas) on loopback ports, each in a directory of its
//! own, joined by `redis-cli --cluster create`, the way an operator builds
//! one. It can kill a master (SIGKILL) and wait for its replica to take
//! over, run a graceful `CLUSTER FAILOVER`, and move one slot from a master
//! to another with the real `SETSLOT`/`MIGRATE` sequence, so tests watch
//! the hub through what Redis itself reports.
//!
//! [`Cluster::start`] gives a test its own cluster, killed on drop;
//! [`Cluster::shared`] is one cluster per test binary, started on first use
//! (a test that kills or moves something on it puts things back).
//! [`Cluster::start_secured`] and [`Cluster::shared_secured`] are the same
//! as production runs one ([`Secured`]): TLS only, on the client port, the
//! cluster bus and replication (`--port 0 --tls-port --tls-cluster yes
//! --tls-replication yes`), with certificates of a CA made at run time,
//! and a password on every node (`requirepass`, `masterauth`); the harness
//! then speaks TLS and authenticates too. The
//! server processes are started by one long-lived thread and ask the kernel
//! to kill them when it goes (`PR_SET_PDEATHSIG`), so even the shared
//! cluster, which nothing drops, ends with the test binary. Every wait is
//! bounded by [`CLUSTER_TIMEOUT`].

mod layout;
mod node;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::RedisConnectionInfo;

use super::redis::{connect_tls, RedisTls};
use layout::layout;
pub use layout::{key_slot, parse_nodes, NodeView, SLOTS};
use node::{create, remove_stale_dirs, Node};

/// The longest the cluster may take to form, fail over or settle.
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// The password of [`Cluster::shared_secured`]'s nodes.
pub const SHARED_PASSWORD: &str = "clusterpw4b7e";

const NODES: usize = 6;

pub struct Cluster {
    nodes: Mutex<Vec<Node>>,
    secured: Option<Arc<Secured>>,
}

/// What every node of a secured cluster asks of its clients, the other
/// nodes included: TLS with a certificate of one test CA (none asked of
/// clients: `tls-auth-clients no`), and a password.
pub struct Secured {
    pub tls: RedisTls,
    /// The `default` user's password on every node (`requirepass`), and
    /// what replicas give their masters (`masterauth`). Letters and
    /// digits only: it goes into URLs as is.
    pub password: String,
}

impl Secured {
    /// A new CA and certificates, in a directory the next test binary
    /// removes if this one could not (see `remove_stale_dirs`).
    fn new(password: &str) -> Secured {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "aether-cluster-{}-tls{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        Secured {
            tls: RedisTls::new(dir),
            password: password.to_owned(),
        }
    }
}

impl Cluster {
    /// A cluster of its own for one test, formed and settled.
    pub fn start() -> Cluster {
        Self::start_nodes(None)
    }

    /// The same over TLS only, with `password` on every node.
    pub fn start_secured(password: &str) -> Cluster {
        Self::start_nodes(Some(Arc::new(Secured::new(password))))
    }

    fn start_nodes(secured: Option<Arc<Secured>>) -> Cluster {
        remove_stale_dirs();
        let mut nodes: Vec<Node> = (0..NODES).map(|_| Node::new(secured.clone())).collect();
        for node in &mut nodes {
            node.spawn();
        }
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let dirs: Vec<_> = nodes.iter().map(|n| n.dir.clone()).collect();
        create(&ports, &dirs, secured.as_deref());
        for node in &mut nodes {
            node.formed();
        }
        let cluster = Cluster {
            nodes: Mutex::new(nodes),
            secured,
        };
        cluster.wait_settled_blocking();
        cluster
    }

    /// The cluster this test binary shares, started on first use.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(Cluster::start)
    }

    /// The secured cluster this test binary shares (TLS only, password
    /// [`SHARED_PASSWORD`]), started on first use.
    pub fn shared_secured() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| Cluster::start_secured(SHARED_PASSWORD))
    }

    /// What a secured cluster asks for (`None` for a plain one).
    pub fn secured(&self) -> Option<&Secured> {
        self.secured.as_deref()
    }

    /// Every node's port, running or not, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.lock().iter().map(|n| n.port).collect()
    }

    fn running_ports(&self) -> Vec<u16> {
        self.lock()
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The seed list for `AETHER_REDIS_CLUSTER`: every node.
    pub fn seeds(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The seed list as URLs, `rediss://` with `:password@` on a secured
    /// cluster (`redis://` on a plain one): every node.
    pub fn seed_urls(&self) -> Vec<String> {
        self.ports().iter().map(|p| self.seed_url(*p)).collect()
    }

    /// One node's seed URL (see [`Cluster::seed_urls`]).
    pub fn seed_url(&self, port: u16) -> String {
        match &self.secured {
            Some(s) => format!("rediss://:{}@127.0.0.1:{port}", s.password),
            None => format!("redis://127.0.0.1:{port}"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Node>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection to one node, for commands a test sends itself.
    pub async fn client(&self, port: u16) -> MultiplexedConnection {
        self.connect(port)
            .await
            .unwrap_or_else(|e| panic!("connect to cluster node {port}: {e}"))
    }

    /// A connection to one node, over TLS and authenticated on a secured
    /// cluster; an error if it does not answer within 2 s.
    async fn connect(&self, port: u16) -> redis::RedisResult<MultiplexedConnection> {
        connect(self.secured.as_deref(), port).await
    }

    /// The last lines of a node's log, for a failure message.
    pub fn log_tail(&self, port: u16) -> String {
        let nodes = self.lock();
        let Some(node) = nodes.iter().find(|n| n.port == port) else {
            return String::new();
        };
        let log = std::fs::read_to_string(node.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The cluster as a running node sees it.
    pub async fn nodes(&self) -> Vec<NodeView> {
        for port in self.running_ports() {
            if let Ok(mut conn) = self.connect(port).await {
                if let Ok(text) = cluster_nodes(&mut conn).await {
                    return parse_nodes(&text);
                }
            }
        }
        panic!("no cluster node answers CLUSTER NODES");
    }

    /// The masters' ports that serve slots, by their lowest slot: index 0
    /// owns slot 0, and after a failover the promoted replica takes its
    /// master's index.
    pub async fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<(u16, u16)> = self
            .nodes()
            .await
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .map(|n| (n.slots.iter().map(|s| s.0).min().unwrap_or(SLOTS), n.port))
            .collect();
        masters.sort_unstable();
        masters.into_iter().map(|(_, port)| port).collect()
    }

    /// A master other than `master` (a slot's destination in a migration).
    pub async fn other_master(&self, master: u16) -> u16 {
        let masters = self.masters().await;
        *masters
            .iter()
            .find(|&&m| m != master)
            .expect("another master")
    }

    /// The replicas' ports, each with its master's port.
    pub async fn replicas(&self) -> Vec<(u16, u16)> {
        let nodes = self.nodes().await;
        let port_of = |id: &str| nodes.iter().find(|n| n.id == id).map(|n| n.port);
        nodes
            .iter()
            .filter(|n| !n.master && !n.failed)
            .filter_map(|n| Some((n.port, port_of(n.master_id.as_deref()?)?)))
            .collect()
    }

    /// The port of the master that owns `slot`.
    pub async fn master_of_slot(&self, slot: u16) -> u16 {
        self.nodes()
            .await
            .into_iter()
            .find(|n| n.master && !n.failed && n.owns(slot))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no live master owns slot {slot}"))
    }

    /// The master that owns `key` (or channel).
    pub async fn master_of_key(&self, key: &str) -> u16 {
        self.master_of_slot(key_slot(key)).await
    }

    /// The first `{stem}{n}` whose `key(name)` lives on the master at
    /// `index` of [`Cluster::masters`]: ids whose keys or channels land on
    /// different masters.
    pub async fn id_on_master(
        &self,
        index: usize,
        stem: &str,
        key: impl Fn(&str) -> String,
    ) -> String {
        let wanted = self.masters().await[index];
        let nodes = self.nodes().await;
        let owner = nodes
            .iter()
            .find(|n| n.port == wanted)
            .expect("the master is listed");
        (0..100_000)
            .map(|n| format!("{stem}{n}"))
            .find(|id| owner.owns(key_slot(&key(id))))
            .expect("some name hashes to every master")
    }

    /// `CLUSTER KEYSLOT key`, as Redis computes it.
    pub async fn slot_of(&self, key: &str) -> u16 {
        let port = self.masters().await[0];
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut self.client(port).await)
            .await
            .expect("CLUSTER KEYSLOT")
    }

    async fn id_of(&self, port: u16) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut self.client(port).await)
            .await
            .expect("CLUSTER MYID")
    }

    /// SIGKILLs the `index`-th master (see [`Cluster::masters`]); returns
    /// its port. [`Cluster::wait_for_failover`] waits for its replica.
    pub async fn kill_master(&self, index: usize) -> u16 {
        let port = self.masters().await[index];
        self.kill_node(port);
        port
    }

    /// Freezes one node (SIGSTOP, `stop`) or wakes it (SIGCONT): its
    /// sockets stay open but nothing answers. The cluster's node timeout
    /// is raised meanwhile (see [`Cluster::set_node_timeout`]) or its
    /// replica takes over.
    pub fn freeze_node(&self, port: u16, stop: bool) {
        let nodes = self.lock();
        let pid = nodes
            .iter()
            .find(|n| n.port == port)
            .and_then(|n| n.child.as_ref())
            .map(|c| c.id())
            .expect("a running node of this cluster");
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signalling a child process of this test.
        unsafe { libc::kill(pid as libc::pid_t, sig) };
    }

    /// `CONFIG SET cluster-node-timeout` on every running node.
    pub async fn set_node_timeout(&self, ms: u64) {
        for port in self.running_ports() {
            let Ok(Ok(mut conn)) =
                tokio::time::timeout(Duration::from_secs(2), self.connect(port)).await
            else {
                continue;
            };
            let _: Result<(), _> = redis::cmd("CONFIG")
                .arg("SET")
                .arg("cluster-node-timeout")
                .arg(ms)
                .query_async(&mut conn)
                .await;
        }
    }

    /// SIGKILLs one node, as a crash would.
    pub fn kill_node(&self, port: u16) {
        let mut nodes = self.lock();
        if let Some(node) = nodes.iter_mut().find(|n| n.port == port) {
            node.kill();
        }
    }

    /// Waits until the slots the dead master `dead` served belong to a
    /// live master every running node agrees on; returns that master.
    pub async fn wait_for_failover(&self, dead: u16, first_slot: u16) -> u16 {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let owner = self
                .nodes()
                .await
                .into_iter()
                .find(|n| n.master && !n.failed && n.owns(first_slot) && n.port != dead);
            if let Some(owner) = owner {
                self.wait_settled().await;
                return owner.port;
            }
            assert!(
                Instant::now() < deadline,
                "no replica took over from {dead}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a killed node again on its port with its old identity: it
    /// rejoins as a replica of whoever took over its slots.
    pub async fn restart_node(&self, port: u16) {
        {
            let mut nodes = self.lock();
            let node = nodes
                .iter_mut()
                .find(|n| n.port == port)
                .expect("a node of this cluster");
            node.kill();
            node.spawn();
        }
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let back = self
                .nodes()
                .await
                .into_iter()
                .any(|n| n.port == port && !n.failed && !n.master);
            if back && self.settled().await {
                return;
            }
            assert!(Instant::now() < deadline, "node {port} did not rejoin");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `CLUSTER FAILOVER` on `replica`: it and its master swap roles, with
    /// no write lost. Returns once every node agrees.
    pub async fn failover(&self, replica: u16) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        // A manual failover gives up after 5 s (the master may not have
        // heard of a replica that just rejoined): ask again after 6.
        let mut asked: Option<Instant> = None;
        loop {
            // Where the replica itself says it stands: its own view
            // changes first.
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut self.client(replica).await)
                .await
                .unwrap_or_default();
            if info.contains("role:master") {
                if self.settled().await {
                    return;
                }
            } else if asked.is_none_or(|at| at.elapsed() > Duration::from_secs(6)) {
                let _: () = redis::cmd("CLUSTER")
                    .arg("FAILOVER")
                    .query_async(&mut self.client(replica).await)
                    .await
                    .expect("CLUSTER FAILOVER");
                asked = Some(Instant::now());
            }
            assert!(
                Instant::now() < deadline,
                "{replica} was not promoted: {}",
                self.log_tail(replica)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Moves `slot` from master `from` to master `to`, keys and all, as
    /// `redis-cli --cluster reshard` does: `IMPORTING`/`MIGRATING`, then
    /// `MIGRATE` of the slot's keys in batches, then `SETSLOT … NODE` on
    /// every master (the old owner then unsubscribes the slot's sharded
    /// channels itself).
    pub async fn migrate_slot(&self, slot: u16, from: u16, to: u16) {
        let (from_id, to_id) = (self.id_of(from).await, self.id_of(to).await);
        let mut source = self.client(from).await;
        let mut target = self.client(to).await;
        setslot(&mut target, slot, "IMPORTING", Some(&from_id)).await;
        setslot(&mut source, slot, "MIGRATING", Some(&to_id)).await;
        for _ in 0..10_000 {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query_async(&mut source)
                .await
                .expect("CLUSTER GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("REPLACE");
            if let Some(secured) = &self.secured {
                migrate.arg("AUTH").arg(&secured.password);
            }
            let _: () = migrate
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut source)
                .await
                .expect("MIGRATE");
        }
        setslot(&mut target, slot, "NODE", Some(&to_id)).await;
        setslot(&mut source, slot, "NODE", Some(&to_id)).await;
        for master in self.masters().await {
            if master != from && master != to {
                setslot(&mut self.client(master).await, slot, "NODE", Some(&to_id)).await;
            }
        }
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        while !(self.settled().await && self.master_of_slot(slot).await == to) {
            assert!(
                Instant::now() < deadline,
                "slot {slot} did not settle on {to}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running node reports `cluster_state:ok` and they
    /// all describe the same masters, replicas and slots.
    pub async fn wait_settled(&self) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        while !self.settled().await {
            assert!(Instant::now() < deadline, "the cluster did not settle");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn settled(&self) -> bool {
        let mut views = Vec::new();
        for port in self.running_ports() {
            let Ok(mut conn) = self.connect(port).await else {
                return false;
            };
            let info: redis::RedisResult<String> = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await;
            let Ok(info) = info else { return false };
            if !info.contains("cluster_state:ok") || !replica_in_sync(&mut conn).await {
                return false;
            }
            let Ok(text) = cluster_nodes(&mut conn).await else {
                return false;
            };
            views.push(layout(&parse_nodes(&text)));
        }
        let covered = views
            .first()
            .is_some_and(|v| v.0.iter().map(|r| u32::from(r.1 - r.0) + 1).sum::<u32>() == 16384);
        covered && views.windows(2).all(|w| w[0] == w[1])
    }

    /// Waits on a thread of its own: a runtime cannot block inside the
    /// test's runtime, and `start` may be called from one.
    fn wait_settled_blocking(&self) {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime to watch the cluster form")
                        .block_on(self.wait_settled());
                })
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
        });
    }

    /// `PUBSUB SHARDNUMSUB channel` on one node.
    pub async fn shard_numsub(&self, port: u16, channel: &str) -> i64 {
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(channel)
            .query_async(&mut self.client(port).await)
            .await
            .expect("PUBSUB SHARDNUMSUB");
        count
    }

    /// `PUBSUB SHARDCHANNELS` on one node: its active sharded channels.
    pub async fn shard_channels(&self, port: u16) -> Vec<String> {
        let mut channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .query_async(&mut self.client(port).await)
            .await
            .expect("PUBSUB SHARDCHANNELS");
        channels.sort();
        channels
    }
}

/// True for a master, or a replica whose link to its master is up.
async fn replica_in_sync(conn: &mut MultiplexedConnection) -> bool {
    let info: redis::RedisResult<String> = redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await;
    info.is_ok_and(|i| i.contains("role:master") || i.contains("master_link_status:up"))
}

async fn connect(
    secured: Option<&Secured>,
    port: u16,
) -> redis::RedisResult<MultiplexedConnection> {
    let connecting = async {
        match secured {
            Some(secured) => {
                let info = RedisConnectionInfo {
                    password: Some(secured.password.clone()),
                    ..RedisConnectionInfo::default()
                };
                connect_tls(port, secured.tls.ca.client_config(), &info).await
            }
            None => {
                redis::Client::open(format!("redis://127.0.0.1:{port}/"))?
                    .get_multiplexed_async_connection()
                    .await
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), connecting)
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "connect timed out")))?
}

async fn cluster_nodes(conn: &mut MultiplexedConnection) -> redis::RedisResult<String> {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("NODES");
    tokio::time::timeout(Duration::from_secs(2), cmd.query_async(conn))
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "no answer")))?
}

async fn setslot(conn: &mut MultiplexedConnection, slot: u16, state: &str, node: Option<&str>) {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SETSLOT").arg(slot).arg(state);
    if let Some(node) = node {
        cmd.arg(node);
    }
    let _: () = cmd
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {state}: {e}"));
}
