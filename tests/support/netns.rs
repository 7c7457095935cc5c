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
//! would show them: a [`Cut`] drops every packet between two hosts (no
//! reset, no error to either side); an [`Impairment`] delays and drops
//! packets on one host's link. The kernels of our machines are built
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

    /// Drops every packet between `a` and `b`, both ways, in the router:
    /// neither side is told (no reset, no ICMP). Healed when the [`Cut`]
    /// is healed or dropped.
    pub fn cut(&self, a: Host, b: Host) -> Cut<'_> {
        let (a, b) = (self.ip(a).to_string(), self.ip(b).to_string());
        let rules = vec![
            svec(&["FORWARD", "-s", &a, "-d", &b, "-j", "DROP"]),
            svec(&["FORWARD", "-s", &b, "-d", &a, "-j", "DROP"]),
        ];
        for rule in &rules {
            self.iptables("-I", rule).expect("cut");
        }
        Cut { lab: self, rules }
    }

    /// Every packet crossing `host`'s link, either way, is lost with
    /// probability `loss` (0 to 1) and otherwise held for `delay` (so a
    /// round trip through the link takes 2 × `delay` more). Undone when
    /// the [`Impairment`] is dropped. An error says why it cannot be done
    /// here (the test then skips).
    pub fn impair(&self, host: Host, delay: Duration, loss: f64) -> Result<Impairment<'_>, String> {
        let queue = u16::from(host.index());
        let delayer = delay::Delayer::start(&self.router(), queue, delay)?;
        let dev = format!("h{}", host.index());
        let (probability, queue) = (format!("{loss}"), queue.to_string());
        let mut impairment = Impairment {
            lab: self,
            rules: Vec::new(),
            delayer: Some(delayer),
        };
        for way in ["-i", "-o"] {
            let drop = ["FORWARD", way, &dev, "-m", "statistic", "--mode", "random"];
            let rule = svec(&[&drop[..], &["--probability", &probability, "-j", "DROP"]].concat());
            impairment.add(rule)?;
        }
        for way in ["-i", "-o"] {
            impairment.add(svec(&[
                "FORWARD",
                way,
                &dev,
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue,
            ]))?;
        }
        Ok(impairment)
    }

    fn iptables(&self, action: &str, rule: &[String]) -> Result<(), String> {
        let router = self.router();
        let mut args = vec![
            "ip", "netns", "exec", &router, "iptables", "-w", "5", action,
        ];
        args.extend(rule.iter().map(String::as_str));
        run(&args)
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

/// Two hosts that cannot reach each other, until healed.
pub struct Cut<'a> {
    lab: &'a Lab,
    rules: Vec<Vec<String>>,
}

impl Cut<'_> {
    pub fn heal(mut self) {
        for rule in std::mem::take(&mut self.rules) {
            self.lab.iptables("-D", &rule).expect("heal");
        }
    }
}

impl Drop for Cut<'_> {
    fn drop(&mut self) {
        for rule in std::mem::take(&mut self.rules) {
            let _ = self.lab.iptables("-D", &rule);
        }
    }
}

/// A slow, lossy link, until dropped.
pub struct Impairment<'a> {
    lab: &'a Lab,
    rules: Vec<Vec<String>>,
    delayer: Option<delay::Delayer>,
}

impl Impairment<'_> {
    fn add(&mut self, rule: Vec<String>) -> Result<(), String> {
        self.lab.iptables("-A", &rule)?;
        self.rules.push(rule);
        Ok(())
    }
}

impl Drop for Impairment<'_> {
    fn drop(&mut self) {
        // Rules first, so nothing is queued after the delayer lets go.
        for rule in std::mem::take(&mut self.rules) {
            let _ = self.lab.iptables("-D", &rule);
        }
        self.delayer.take();
    }
}

fn svec(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
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

/// Delay without `sch_netem`: a thread in the router's namespace binds an
/// nfnetlink queue (iptables `-j NFQUEUE`), notes when each packet came,
/// and accepts the packets in order once each has waited the delay. A
/// batch verdict accepts every packet up to an id, so packets whose
/// notice the socket missed are not stranded.
mod delay {
    use std::collections::VecDeque;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    // linux/netfilter/nfnetlink.h, nfnetlink_queue.h
    const NFNL_SUBSYS_QUEUE: u16 = 3;
    const NFQNL_MSG_PACKET: u16 = 0;
    const NFQNL_MSG_CONFIG: u16 = 2;
    const NFQNL_MSG_VERDICT_BATCH: u16 = 3;
    const NFQA_PACKET_HDR: u16 = 1;
    const NFQA_VERDICT_HDR: u16 = 2;
    const NFQA_CFG_CMD: u16 = 1;
    const NFQA_CFG_PARAMS: u16 = 2;
    const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
    const NFQNL_CFG_CMD_BIND: u8 = 1;
    const NFQNL_COPY_META: u8 = 1;
    const NF_ACCEPT: u32 = 1;
    const NLMSG_ERROR: u16 = 2;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const NLA_TYPE_MASK: u16 = 0x3fff;
    const NETLINK_NETFILTER: i32 = 12;
    const NETLINK_NO_ENOBUFS: i32 = 5;
    /// Packets the kernel holds for us at most (its default is 1024).
    const QUEUE_MAX: u32 = 1 << 16;
    /// How often the thread looks at its stop flag when nothing is held.
    const IDLE_POLL_MS: i32 = 20;

    pub struct Delayer {
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Delayer {
        /// Binds queue `queue` in namespace `netns`; returns once bound,
        /// so rules sending packets to it can go in.
        pub fn start(netns: &str, queue: u16, delay: Duration) -> Result<Delayer, String> {
            let path = format!("/run/netns/{netns}");
            let stop = Arc::new(AtomicBool::new(false));
            let (bound, bound_rx) = std::sync::mpsc::channel();
            let stopping = Arc::clone(&stop);
            let thread = std::thread::Builder::new()
                .name(format!("delay-{netns}-{queue}"))
                .spawn(move || match Queue::bind(&path, queue) {
                    Ok(q) => {
                        let _ = bound.send(Ok(()));
                        q.run(delay, &stopping);
                    }
                    Err(e) => {
                        let _ = bound.send(Err(e));
                    }
                })
                .map_err(|e| format!("delay thread: {e}"))?;
            let delayer = Delayer {
                stop,
                thread: Some(thread),
            };
            match bound_rx.recv_timeout(super::super::TIMEOUT) {
                Ok(Ok(())) => Ok(delayer),
                Ok(Err(e)) => Err(format!("NFQUEUE: {e}")),
                Err(_) => Err("NFQUEUE: the delay thread did not start".into()),
            }
        }
    }

    impl Drop for Delayer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    struct Queue {
        fd: OwnedFd,
        queue: u16,
    }

    impl Queue {
        /// Enters `netns` (this thread only) and binds the queue there.
        fn bind(netns: &str, queue: u16) -> Result<Queue, String> {
            let ns = std::fs::File::open(netns).map_err(|e| format!("{netns}: {e}"))?;
            // SAFETY: a valid namespace descriptor; CLONE_NEWNET moves only
            // the calling thread, which does nothing else.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: plain socket creation; the descriptor is owned below.
            let raw = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    NETLINK_NETFILTER,
                )
            };
            if raw < 0 {
                return Err(format!("socket: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: `raw` is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // A big buffer (root may force it): notices pile up when the
            // test's threads are busy.
            set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20);
            set_int(&fd, libc::SOL_NETLINK, NETLINK_NO_ENOBUFS, 1);
            // SAFETY: sockaddr_nl is plain data; zero is "kernel assigns".
            let mut local: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            local.nl_family = libc::AF_NETLINK as u16;
            // SAFETY: `local` is a valid sockaddr_nl of the size given.
            let bound = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&local as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                )
            };
            if bound != 0 {
                return Err(format!("bind: {}", std::io::Error::last_os_error()));
            }
            let q = Queue { fd, queue };
            q.configure()?;
            Ok(q)
        }

        /// Bind the queue, metadata only (we never look at payloads), and
        /// room for many packets; waits for the kernel's answer.
        fn configure(&self) -> Result<(), String> {
            let mut params = 0u32.to_be_bytes().to_vec(); // copy_range
            params.push(NFQNL_COPY_META);
            let attrs = [
                (NFQA_CFG_CMD, vec![NFQNL_CFG_CMD_BIND, 0, 0, 0]),
                (NFQA_CFG_PARAMS, params),
                (NFQA_CFG_QUEUE_MAXLEN, QUEUE_MAX.to_be_bytes().to_vec()),
            ];
            self.send(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, &attrs)?;
            let mut buf = vec![0u8; 8192];
            let n = self.recv(&mut buf, 0).map_err(|e| format!("recv: {e}"))?;
            for (kind, body) in messages(&buf[..n]) {
                if kind == NLMSG_ERROR && body.len() >= 4 {
                    let code = i32::from_ne_bytes(body[..4].try_into().expect("4 bytes"));
                    if code != 0 {
                        let e = std::io::Error::from_raw_os_error(-code);
                        return Err(format!("binding queue {}: {e}", self.queue));
                    }
                    return Ok(());
                }
            }
            Err("no answer to the queue's configuration".into())
        }

        fn run(self, delay: Duration, stop: &AtomicBool) {
            let mut held: VecDeque<(Instant, u32)> = VecDeque::new();
            let mut last = None;
            let mut buf = vec![0u8; 256 * 1024];
            while !stop.load(Ordering::SeqCst) {
                let wait = held.front().map_or(IDLE_POLL_MS, |(due, _)| {
                    let left = due.saturating_duration_since(Instant::now());
                    (left.as_micros().div_ceil(1000) as i32).min(IDLE_POLL_MS)
                });
                self.poll(wait);
                // Everything readable now, without blocking.
                while let Ok(n) = self.recv(&mut buf, libc::MSG_DONTWAIT) {
                    let came = Instant::now();
                    for id in packet_ids(&buf[..n]) {
                        held.push_back((came + delay, id));
                        last = Some(id);
                    }
                }
                let now = Instant::now();
                let mut due = None;
                while held.front().is_some_and(|(at, _)| *at <= now) {
                    due = held.pop_front().map(|(_, id)| id);
                }
                if let Some(id) = due {
                    self.accept_up_to(id);
                }
            }
            // Stopping (the rules are gone): let everything held go.
            if let Some(id) = last {
                self.accept_up_to(id);
            }
        }

        fn accept_up_to(&self, id: u32) {
            let mut verdict = NF_ACCEPT.to_be_bytes().to_vec();
            verdict.extend(id.to_be_bytes());
            if let Err(e) = self.send(
                NFQNL_MSG_VERDICT_BATCH,
                NLM_F_REQUEST,
                &[(NFQA_VERDICT_HDR, verdict)],
            ) {
                eprintln!("delay queue {}: verdict: {e}", self.queue);
            }
        }

        /// One nfnetlink message of the queue subsystem for our queue.
        fn send(&self, kind: u16, flags: u16, attrs: &[(u16, Vec<u8>)]) -> Result<(), String> {
            let mut body = vec![libc::AF_UNSPEC as u8, 0]; // nfgenmsg: family, version
            body.extend(self.queue.to_be_bytes()); // res_id
            for (kind, value) in attrs {
                body.extend((4 + value.len() as u16).to_ne_bytes());
                body.extend(kind.to_ne_bytes());
                body.extend(value);
                body.resize(body.len().next_multiple_of(4), 0);
            }
            let mut msg = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
            msg.extend(((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
            msg.extend(flags.to_ne_bytes());
            msg.extend(0u32.to_ne_bytes()); // sequence
            msg.extend(0u32.to_ne_bytes()); // port id: the kernel
            msg.extend(body);
            // SAFETY: sends `msg.len()` bytes from a live buffer.
            let sent =
                unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
            if sent < 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
            Ok(())
        }

        fn recv(&self, buf: &mut [u8], flags: i32) -> std::io::Result<usize> {
            // SAFETY: receives into a live buffer of the length given.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(n as usize)
        }

        fn poll(&self, timeout_ms: i32) {
            let mut fds = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut fds, 1, timeout_ms) };
        }
    }

    fn set_int(fd: &OwnedFd, level: i32, name: i32, value: i32) {
        // SAFETY: an int option of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as u32,
            )
        };
    }

    /// The netlink messages in `buf`: (type, body after the header).
    fn messages(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        while buf.len() >= 16 {
            let len = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
            if len < 16 || len > buf.len() {
                break;
            }
            let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
            out.push((kind, &buf[16..len]));
            buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        }
        out
    }

    /// The ids of the queued packets announced in `buf`.
    fn packet_ids(buf: &[u8]) -> Vec<u32> {
        let packet = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;
        let mut ids = Vec::new();
        for (kind, body) in messages(buf) {
            if kind != packet || body.len() < 4 {
                continue;
            }
            let mut attrs = &body[4..]; // past nfgenmsg
            while attrs.len() >= 4 {
                let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
                if len < 4 || len > attrs.len() {
                    break;
                }
                if kind == NFQA_PACKET_HDR && len >= 8 {
                    ids.push(u32::from_be_bytes(attrs[4..8].try_into().expect("4 bytes")));
                    break;
                }
                attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
            }
        }
        ids
    }
}
