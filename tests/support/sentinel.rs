//! A Redis with Sentinel for the tests, as production runs one: a master
//! and one replica (`redis-server` with `replicaof`), watched by three
//! sentinels (`redis-server <conf> --sentinel`, quorum 2), all on loopback
//! ports, each process in a directory of its own under one temporary
//! directory (sentinels rewrite their config file, so each has a writable
//! one). The master's name carries its port, so tests run side by side.
//!
//! The fixture asks the sentinels what they know rather than assuming it:
//! [`Sentinels::master_port`] is what they answer, [`Sentinels::role`] is
//! what a node says of itself (`ROLE`). It can SIGKILL a node, wait until
//! every sentinel agrees on a promoted replica, run a manual `SENTINEL
//! FAILOVER` (and demote the old master itself, [`Sentinels::demote`],
//! without the sentinels' closing of its clients), and restart a killed node on its port (it comes back empty
//! and believing it is a master, as after a crash, until the sentinels
//! convert it into a replica of the new master; the restart waits for
//! that, as [`Sentinels::wait_replica`] does for a master demoted by a
//! manual failover). Processes die with the fixture, and with the test binary even
//! when no destructor runs (`PR_SET_PDEATHSIG`); the directory is removed
//! on drop, and a later fixture removes those of binaries that have gone.
//! Every wait is bounded: [`FAILOVER_TIMEOUT`] and [`REJOIN_TIMEOUT`] for
//! what the sentinels do, [`TIMEOUT`](super::TIMEOUT) for the rest.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::process::spawn_kept;

/// The longest the sentinels may take to agree on a new master (some 2 s
/// here after a kill, 1 s for `SENTINEL FAILOVER`).
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest they may take to turn a node that came back into a replica
/// (some 20 s here: they see it at their next `INFO`, up to 10 s apart,
/// and wait 8 s more before converting a node that claims to be a master).
pub const REJOIN_TIMEOUT: Duration = Duration::from_secs(45);

/// How long a master may be silent before a sentinel calls it down.
const DOWN_AFTER_MS: u64 = 1000;
/// A failover that does not progress is abandoned after this, and retried
/// after twice this.
const FAILOVER_TIMEOUT_MS: u64 = 5000;

const SENTINELS: usize = 3;

/// What a node says it is (`ROLE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Master,
    /// A replica of the master on `master_port`; `state` is the link's
    /// (`connected` once in sync).
    Replica {
        master_port: u16,
        state: String,
    },
    Sentinel,
}

/// One process: a data node or a sentinel.
struct Node {
    port: u16,
    dir: PathBuf,
    sentinel: bool,
    child: Option<Child>,
}

impl Node {
    fn conf(&self) -> PathBuf {
        self.dir.join("redis.conf")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command.arg(self.conf());
        if self.sentinel {
            command.arg("--sentinel");
        }
        command
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(spawn_kept(command));
        let deadline = Instant::now() + super::TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server :{} did not start: {}",
                self.port,
                tail(&self.log(), 15)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A master, its replica and three sentinels.
pub struct Sentinels {
    name: String,
    dir: PathBuf,
    /// The data nodes: the first master, then its replica.
    data: Vec<Node>,
    sentinels: Vec<Node>,
}

impl Sentinels {
    /// Starts everything and returns once every sentinel knows the master,
    /// the replica (in sync) and the two other sentinels: a failover can
    /// be authorised from then on.
    pub async fn start() -> Sentinels {
        remove_stale_dirs();
        let master_port = super::private_port();
        let name = format!("aether-{master_port}");
        let dir = std::env::temp_dir().join(format!(
            "aether-sentinel-{}-{master_port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut fixture = Sentinels {
            name,
            dir,
            data: Vec::new(),
            sentinels: Vec::new(),
        };
        let replica_port = super::private_port();
        for (port, replica_of) in [(master_port, None), (replica_port, Some(master_port))] {
            let node = fixture.node(port, false, &data_conf(port, replica_of));
            fixture.data.push(node);
        }
        for _ in 0..SENTINELS {
            let port = super::private_port();
            let conf = sentinel_conf(port, &fixture.name, master_port);
            let node = fixture.node(port, true, &conf);
            fixture.sentinels.push(node);
        }
        fixture.wait_watched(master_port, replica_port).await;
        fixture
    }

    /// A node in a directory of its own with `conf`, started.
    fn node(&self, port: u16, sentinel: bool, conf: &str) -> Node {
        let kind = if sentinel { "sentinel" } else { "data" };
        let dir = self.dir.join(format!("{kind}-{port}"));
        std::fs::create_dir_all(&dir).expect("a node directory");
        let mut node = Node {
            port,
            dir,
            sentinel,
            child: None,
        };
        std::fs::write(node.conf(), conf).expect("a node config file");
        node.spawn();
        node
    }

    /// The master's name the sentinels monitor (`AETHER_REDIS_SENTINEL_MASTER`).
    pub fn master_name(&self) -> String {
        self.name.clone()
    }

    /// Every sentinel as `host:port`, for `redis_sentinels`.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The same as a comma list, as `AETHER_REDIS_SENTINELS` takes it.
    pub fn sentinels_list(&self) -> String {
        self.sentinel_addrs().join(",")
    }

    /// The data nodes' ports, running or not: the first master, then the
    /// first replica.
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(|n| n.port).collect()
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|n| n.port).collect()
    }

    /// The master's port as the first sentinel that answers reports it.
    pub async fn master_port(&self) -> u16 {
        for port in self.sentinel_ports() {
            if let Some(master) = self.master_by(port).await {
                return master;
            }
        }
        panic!("no sentinel reports a master for {}", self.name);
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME` on the sentinel at `port`.
    pub async fn master_by(&self, port: u16) -> Option<u16> {
        let mut conn = connect(port).await.ok()?;
        let addr: Option<(String, String)> = query(
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&self.name),
            &mut conn,
        )
        .await
        .ok()?;
        addr?.1.parse().ok()
    }

    /// The master every sentinel reports, if they all report the same.
    pub async fn agreed_master(&self) -> Option<u16> {
        let mut agreed = None;
        for port in self.sentinel_ports() {
            let master = self.master_by(port).await?;
            if *agreed.get_or_insert(master) != master {
                return None;
            }
        }
        agreed
    }

    /// A connection to a data node or a sentinel, for commands a test
    /// sends itself.
    pub async fn client(&self, port: u16) -> MultiplexedConnection {
        connect(port)
            .await
            .unwrap_or_else(|e| panic!("connect to :{port}: {e}"))
    }

    /// A connection to the master the sentinels report now.
    pub async fn master_client(&self) -> MultiplexedConnection {
        self.client(self.master_port().await).await
    }

    /// What the node at `port` says it is (`ROLE`); `None` when it does
    /// not answer.
    pub async fn role(&self, port: u16) -> Option<Role> {
        let mut conn = connect(port).await.ok()?;
        let reply: Vec<redis::Value> = query(&redis::cmd("ROLE"), &mut conn).await.ok()?;
        let text = |i: usize| -> Option<String> { redis::from_redis_value(reply.get(i)?).ok() };
        match text(0)?.as_str() {
            "master" => Some(Role::Master),
            "slave" => Some(Role::Replica {
                master_port: redis::from_redis_value(reply.get(2)?).ok()?,
                state: text(3)?,
            }),
            "sentinel" => Some(Role::Sentinel),
            _ => None,
        }
    }

    /// Freezes the data node at `port` (SIGSTOP, `stop`) or wakes it
    /// (SIGCONT): a replica frozen for less than the down-after time
    /// misses the master's writes meanwhile without being called down.
    pub fn freeze(&self, port: u16, stop: bool) {
        let pid = self
            .data
            .iter()
            .find(|n| n.port == port)
            .and_then(|n| n.child.as_ref())
            .map(Child::id)
            .unwrap_or_else(|| panic!("no running data node on {port}"));
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signalling a child process of this test.
        unsafe { libc::kill(pid as libc::pid_t, sig) };
    }

    /// Closes the master's links to its replicas (`CLIENT KILL TYPE
    /// replica` on the master at `master`); returns how many. With the
    /// replica frozen ([`Sentinels::freeze`]), it cannot link again: what
    /// the master takes from then on is on the master alone.
    pub async fn cut_replication(&self, master: u16) -> u64 {
        query(
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica"),
            &mut self.client(master).await,
        )
        .await
        .unwrap_or_else(|e| panic!("CLIENT KILL TYPE replica: {e}"))
    }

    /// SIGKILLs the data node at `port`, as a crash would.
    pub fn kill(&mut self, port: u16) {
        self.data_node(port).kill();
    }

    /// SIGKILLs the master the sentinels report; returns its port.
    pub async fn kill_master(&mut self) -> u16 {
        let port = self.master_port().await;
        self.kill(port);
        port
    }

    fn data_node(&mut self, port: u16) -> &mut Node {
        self.data
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no data node on {port}"))
    }

    /// Waits until every sentinel reports a master other than `old`, and
    /// that node says it is one; returns its port.
    pub async fn wait_for_failover(&self, old: u16) -> u16 {
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        loop {
            if let Some(new) = self.agreed_master().await.filter(|&m| m != old) {
                if self.role(new).await == Some(Role::Master) {
                    return new;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not agree on a master other than {old}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `SENTINEL FAILOVER` (a clean switch: the master is alive and is
    /// demoted to a replica of its replica); returns the new master once
    /// every sentinel reports it.
    pub async fn failover(&self) -> u16 {
        let old = self.master_port().await;
        let mut conn = self.client(self.sentinel_ports()[0]).await;
        let _: () = query(
            redis::cmd("SENTINEL").arg("FAILOVER").arg(&self.name),
            &mut conn,
        )
        .await
        .unwrap_or_else(|e| panic!("SENTINEL FAILOVER: {e}"));
        self.wait_for_failover(old).await
    }

    /// Makes the data node at `port` a replica of the one at `master`
    /// (`REPLICAOF`), as the sentinels demote an old master, but without
    /// the `CLIENT KILL TYPE normal` they send with it: its clients stay
    /// connected to what is now a replica. Returns once it answered.
    pub async fn demote(&self, port: u16, master: u16) {
        let _: () = query(
            redis::cmd("REPLICAOF").arg("127.0.0.1").arg(master),
            &mut self.client(port).await,
        )
        .await
        .unwrap_or_else(|e| panic!("REPLICAOF on {port}: {e}"));
    }

    /// Starts the killed data node at `port` again, empty and with its
    /// old config (so it first claims to be a master, as a crashed master
    /// does), and waits until the sentinels have made it a replica of the
    /// current master ([`Sentinels::wait_replica`], with `watch`).
    pub async fn restart_as_replica<F, Fut>(&mut self, port: u16, watch: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let node = self.data_node(port);
        node.kill();
        node.spawn();
        self.wait_replica(port, watch).await;
    }

    /// Waits until the data node at `port` is a replica of the master
    /// every sentinel reports, in sync, and listed by every sentinel: a
    /// node that came back, or a master demoted by `SENTINEL FAILOVER`
    /// (which stays a master until the sentinels convert it). `watch` is
    /// called about every 100 ms meanwhile (a test looks at the node while
    /// it is a stray master).
    pub async fn wait_replica<F, Fut>(&self, port: u16, mut watch: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let deadline = Instant::now() + REJOIN_TIMEOUT;
        loop {
            watch().await;
            let master = self.agreed_master().await;
            if let (Some(master), Some(Role::Replica { master_port, state })) =
                (master, self.role(port).await)
            {
                if master_port == master && state == "connected" && self.replica_known(port).await {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{port} did not become a replica of the master:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether every sentinel lists the node at `port` as a healthy
    /// replica of the master.
    async fn replica_known(&self, port: u16) -> bool {
        for sentinel in self.sentinel_ports() {
            let Ok(mut conn) = connect(sentinel).await else {
                return false;
            };
            let Ok(replicas) = query::<Vec<Vec<String>>>(
                redis::cmd("SENTINEL").arg("REPLICAS").arg(&self.name),
                &mut conn,
            )
            .await
            else {
                return false;
            };
            let healthy = replicas.iter().any(|fields| {
                let get = |name: &str| {
                    fields
                        .chunks(2)
                        .find(|kv| kv[0] == name)
                        .and_then(|kv| kv.get(1))
                        .map(String::as_str)
                };
                get("port") == Some(&port.to_string())
                    && get("flags") == Some("slave")
                    && get("master-link-status") == Some("ok")
            });
            if !healthy {
                return false;
            }
        }
        true
    }

    /// Waits until every sentinel knows the two others, agrees that the
    /// master is at `master`, and lists the replica in sync.
    async fn wait_watched(&self, master: u16, replica: u16) {
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        loop {
            if self.agreed_master().await == Some(master)
                && self.peers_known().await
                && self.replica_known(replica).await
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels never watched {master} and {replica}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether every sentinel knows the other sentinels.
    async fn peers_known(&self) -> bool {
        for port in self.sentinel_ports() {
            let Ok(mut conn) = connect(port).await else {
                return false;
            };
            let peers: redis::RedisResult<Vec<redis::Value>> = query(
                redis::cmd("SENTINEL").arg("SENTINELS").arg(&self.name),
                &mut conn,
            )
            .await;
            if peers.map_or(true, |p| p.len() != SENTINELS - 1) {
                return false;
            }
        }
        true
    }

    /// The last lines of every node's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut report = String::new();
        for node in self.data.iter().chain(&self.sentinels) {
            let kind = if node.sentinel { "sentinel" } else { "redis" };
            report.push_str(&format!("--- {kind} :{}\n", node.port));
            report.push_str(&tail(&node.log(), 12));
            report.push('\n');
        }
        report
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for node in self.sentinels.iter_mut().chain(&mut self.data) {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A data node's config: no persistence, a replica in sync at once.
fn data_conf(port: u16, replica_of: Option<u16>) -> String {
    let mut conf = format!(
        "port {port}\nbind 127.0.0.1\ndaemonize no\nsave \"\"\nappendonly no\n\
         dir ./\nlogfile redis.log\nrepl-diskless-sync-delay 0\n"
    );
    if let Some(master) = replica_of {
        conf.push_str(&format!("replicaof 127.0.0.1 {master}\n"));
    }
    conf
}

/// A sentinel's config, watching `name` at `master_port` with quorum 2.
fn sentinel_conf(port: u16, name: &str, master_port: u16) -> String {
    format!(
        "port {port}\nbind 127.0.0.1\ndaemonize no\ndir ./\nlogfile redis.log\n\
         sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
         sentinel down-after-milliseconds {name} {DOWN_AFTER_MS}\n\
         sentinel failover-timeout {name} {FAILOVER_TIMEOUT_MS}\n\
         sentinel parallel-syncs {name} 1\n"
    )
}

/// A connection to the node at `port`, or why not (within 2 s).
pub async fn connect(port: u16) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let connecting = client.get_multiplexed_async_connection();
    tokio::time::timeout(Duration::from_secs(2), connecting)
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "connect timed out")))?
}

/// One command, answered within 2 s.
async fn query<T: redis::FromRedisValue>(
    cmd: &redis::Cmd,
    conn: &mut MultiplexedConnection,
) -> redis::RedisResult<T> {
    tokio::time::timeout(Duration::from_secs(2), cmd.query_async(conn))
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "no answer")))?
}

/// The last `lines` lines of the file at `path`.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Removes the directories of fixtures whose test binary has gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("aether-sentinel-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
