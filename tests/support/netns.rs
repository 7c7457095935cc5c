//! Hosts on real links, for network-fault tests (`tests/netfaults.rs`):
//! Linux network namespaces joined by veth pairs, made and removed by the
//! test itself (root only; otherwise [`Lab::new`] says why not).
//!
//! One [`Lab`] per test:
//!
//! ```text
//!   root namespace (the test's clients) ── h0 ┐
//!   <lab>-redis   (redis-server)        ── h1 ┤ <lab>-sw: a router
//!   <lab>-hub-a   (aether-hub)          ── h2 ┤ (ip_forward, iptables)
//!   <lab>-hub-b   (aether-hub)          ── h3 ┘
//! ```
//!
//! Each link is its own /29 of the lab's 10.213.B.0/24; the root namespace
//! reaches the hosts through the router. Faults are made in the router, in
//! the middle of the path, so both ends see only what a real network
//! would show them: a [`Cut`](faults::Cut) drops every packet between
//! two hosts (no reset, no error to either side); an
//! [`Impairment`](faults::Impairment) delays and drops packets on one
//! host's link. The kernels of our machines are built
//! without `sch_netem`, so the delay is made with iptables' `NFQUEUE`: a
//! thread of the test holds each packet for the delay before accepting it
//! ([`delay`]); loss is iptables' `statistic` match.
//!
//! Names carry the test process's pid and a counter, so tests run in
//! parallel; dropping the lab kills whatever runs in its namespaces and
//! deletes them (the veth pairs go with them), even when a test panics.
//! Processes started in the lab also die with the test's thread
//! (`PR_SET_PDEATHSIG`), and a later lab deletes the namespaces of test
//! processes that no longer exist.
//!
//! The lab (its topology, and the processes started in it) is here;
//! [`faults`] holds what a test does to its links ([`Lab::cut`],
//! [`Lab::impair`]), and [`delay`] the NFQUEUE packet delayer behind
//! an impairment.

pub mod delay;
pub mod faults;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::process::{Running, BIN};

/// The port every server listens on inside its own namespace.
pub const PORT: u16 = 8080;
const REDIS_PORT: u16 = 6379;

/// A machine of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// The root namespace, where the test and its WebSocket clients run.
    Clients,
    Redis,
    HubA,
    HubB,
}

impl Host {
    const IN_NAMESPACES: [Host; 3] = [Host::Redis, Host::HubA, Host::HubB];

    /// Its link's number: the router's side of the link is `h{index}`.
    fn index(self) -> u8 {
        match self {
            Host::Clients => 0,
            Host::Redis => 1,
            Host::HubA => 2,
            Host::HubB => 3,
        }
    }

    fn role(self) -> &'static str {
        match self {
            Host::Clients => "clients",
            Host::Redis => "redis",
            Host::HubA => "hub-a",
            Host::HubB => "hub-b",
        }
    }
}

/// A lab's namespaces and links; dropping it tears everything down.
pub struct Lab {
    /// `anf<pid>x<n>`: the prefix of the namespaces, and the name of the
    /// root namespace's end of the clients' link (at most 15 characters).
    name: String,
    /// The lab's addresses are 10.213.`block`.0/24.
    block: u8,
    /// Created namespaces, for the teardown.
    namespaces: Vec<String>,
    /// The servers' logs (kept when a test fails).
    logs: PathBuf,
}

impl Lab {
    /// Builds the lab, or says why it cannot be built here (the test then
    /// skips).
    pub fn new() -> Result<Lab, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root (ip netns needs CAP_SYS_ADMIN and CAP_NET_ADMIN)".into());
        }
        for tool in [["ip", "-V"], ["iptables", "--version"]] {
            run(&tool).map_err(|e| format!("{} is not usable: {e}", tool[0]))?;
        }
        sweep_stale_labs();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let name = format!("anf{pid}x{n}");
        let block = free_block(pid, n)?;
        let logs = std::env::temp_dir().join(format!("{name}-logs"));
        std::fs::create_dir_all(&logs).map_err(|e| format!("log directory: {e}"))?;
        let mut lab = Lab {
            name,
            block,
            namespaces: Vec::new(),
            logs,
        };
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), String> {
        let router = self.router();
        self.add_namespace(&router)?;
        run(&[
            "ip",
            "netns",
            "exec",
            &router,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        for host in Host::IN_NAMESPACES {
            let ns = self.ns(host);
            self.add_namespace(&ns)?;
            let peer = format!("h{}", host.index());
            run(&[
                "ip", "link", "add", "name", "eth0", "netns", &ns, "type", "veth", "peer", "name",
                &peer, "netns", &router,
            ])?;
            self.address(Some(&ns), "eth0", host, 2)?;
            self.address(Some(&router), &peer, host, 1)?;
            let gateway = self.link_ip(host, 1).to_string();
            run(&["ip", "-n", &ns, "route", "add", "default", "via", &gateway])?;
        }
        // The clients' link: the root namespace's end keeps the lab's name.
        let root_end = self.name.clone();
        run(&[
            "ip", "link", "add", "name", &root_end, "type", "veth", "peer", "name", "h0", "netns",
            &router,
        ])?;
        self.address(None, &root_end, Host::Clients, 2)?;
        self.address(Some(&router), "h0", Host::Clients, 1)?;
        let via = self.link_ip(Host::Clients, 1).to_string();
        let block = format!("10.213.{}.0/24", self.block);
        run(&["ip", "route", "add", &block, "via", &via, "dev", &root_end])
    }

    fn add_namespace(&mut self, ns: &str) -> Result<(), String> {
        run(&["ip", "netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])
    }

    /// Gives `dev` (in `ns`, or in the root namespace) its address on
    /// `host`'s link (`end` 1: the router's side, 2: the host's) and
    /// brings it up.
    fn address(&self, ns: Option<&str>, dev: &str, host: Host, end: u8) -> Result<(), String> {
        let mut ip = vec!["ip"];
        if let Some(ns) = ns {
            ip.extend(["-n", ns]);
        }
        let cidr = format!("{}/29", self.link_ip(host, end));
        run(&[&ip[..], &["addr", "add", &cidr, "dev", dev]].concat())?;
        run(&[&ip[..], &["link", "set", dev, "up"]].concat())
    }

    fn link_ip(&self, host: Host, end: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.block, host.index() * 8 + end)
    }

    /// `host`'s address (for [`Host::Clients`], the test's own).
    pub fn ip(&self, host: Host) -> Ipv4Addr {
        self.link_ip(host, 2)
    }

    fn ns(&self, host: Host) -> String {
        format!("{}-{}", self.name, host.role())
    }

    fn router(&self) -> String {
        format!("{}-sw", self.name)
    }

    /// `program` run inside `host`'s namespace, killed if the test's
    /// thread ends without stopping it.
    fn command_in(&self, host: Host, program: &str) -> Command {
        assert_ne!(host, Host::Clients, "clients run in the test itself");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns(host), program])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches only the child.
        // `ip netns exec` execs the program in place, and the setting
        // survives exec (neither binary is set-uid).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    fn log(&self, what: &str) -> Stdio {
        let path = self.logs.join(format!("{what}.log"));
        std::fs::File::create(&path)
            .map(Stdio::from)
            .unwrap_or_else(|e| panic!("log file {}: {e}", path.display()))
    }

    /// `redis-server` on the Redis host, once the test can reach it.
    pub fn start_redis(&self) -> RedisHost {
        let ip = self.ip(Host::Redis).to_string();
        let child = self
            .command_in(Host::Redis, "redis-server")
            .args(["--port", &REDIS_PORT.to_string(), "--bind", &ip])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .stderr(self.log("redis"))
            .spawn()
            .expect("redis-server (run scripts/test, which installs it)");
        let addr = SocketAddr::from((self.ip(Host::Redis), REDIS_PORT));
        let deadline = Instant::now() + super::TIMEOUT;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisHost { child, addr }
    }

    /// The hub binary on `host` (a hub), as instance `instance`, against
    /// `redis`; returns once `/readyz` answers 200 from the clients' host.
    pub async fn start_hub(
        &self,
        host: Host,
        redis: &RedisHost,
        instance: &str,
        env: &[(&str, &str)],
    ) -> Running {
        let addr = SocketAddr::from((self.ip(host), PORT));
        let child = self
            .command_in(host, BIN)
            .env("AETHER_BIND", addr.to_string())
            .env("AETHER_REDIS_URL", redis.url())
            .env("AETHER_INSTANCE_ID", instance)
            .env("AETHER_SHUTDOWN_GRACE_SECS", "5")
            .env("AETHER_LOG", "info")
            .envs(env.iter().copied())
            .stderr(self.log(instance))
            .spawn()
            .expect("start aether-hub");
        let hub = Running { child, addr };
        let deadline = Instant::now() + super::TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && hub.get("/readyz").await.status == 200
            {
                return hub;
            }
            assert!(
                Instant::now() < deadline,
                "hub {instance} did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Whatever still runs in the lab (the Running and RedisHost guards
        // normally stopped it already) is ours: it started in our
        // namespaces.
        for ns in &self.namespaces {
            if let Ok(pids) = output(&["ip", "netns", "pids", ns]) {
                let pids = pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok());
                for pid in pids.filter(|pid| *pid != std::process::id()) {
                    // SAFETY: a process of our own namespace, by its id.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = run(&["ip", "netns", "del", ns]) {
                eprintln!("netns lab {}: {e}", self.name);
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "netns lab {}: server logs kept in {}",
                self.name,
                self.logs.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

/// `redis-server` on the lab's Redis host.
pub struct RedisHost {
    child: Child,
    pub addr: SocketAddr,
}

impl RedisHost {
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// A connection from the clients' host (through the router).
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("url");
        tokio::time::timeout(super::TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .expect("connect to the lab's redis in time")
            .expect("connect to the lab's redis")
    }
}

impl Drop for RedisHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion; its stderr is the error.
fn run(args: &[&str]) -> Result<(), String> {
    output(args).map(drop)
}

fn output(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{}`: {e}", args.join(" ")))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(format!("`{}` failed: {}", args.join(" "), why.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A 10.213.B.0/24 that no address or route of the root namespace uses
/// (another lab, or anything else), and that no other lab of this
/// process has taken (its route may not be in yet).
fn free_block(pid: u32, n: u32) -> Result<u8, String> {
    static TAKEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    let used = output(&["ip", "-4", "-o", "addr"])? + &output(&["ip", "-4", "route"])?;
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let start = (pid.wrapping_mul(7).wrapping_add(n.wrapping_mul(31))) % 250;
    let block = (0..250)
        .map(|i| ((start + i) % 250 + 1) as u8)
        .find(|b| !taken.contains(b) && !used.contains(&format!("10.213.{b}.")))
        .ok_or_else(|| "no free 10.213.B.0/24 for the lab".to_owned())?;
    taken.push(block);
    Ok(block)
}

/// Deletes the namespaces of labs whose test process is gone (killed
/// before its labs were dropped). Their processes died with it.
fn sweep_stale_labs() {
    let Ok(list) = output(&["ip", "netns", "list"]) else {
        return;
    };
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = ns
            .strip_prefix("anf")
            .and_then(|rest| rest.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}
