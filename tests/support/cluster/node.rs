//! One `redis-server` of the test cluster as a child process, and how the
//! harness starts processes: from one thread that lives as long as the
//! test binary, so the kernel kills them when the binary ends
//! (`PR_SET_PDEATHSIG`), even when no destructor runs.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::process::spawn_kept;
use super::{Secured, CLUSTER_TIMEOUT};

/// How long a node of the formed cluster waits before it calls a silent
/// peer failed: short, so that failovers take a second or two.
const NODE_TIMEOUT_MS: u64 = 1000;
/// The same while the cluster forms. A peer met (`CLUSTER MEET`) that does
/// not answer within it is forgotten, and `redis-cli --cluster create`
/// then waits for it for ever: on a busy machine 1 s is not enough.
const FORMING_NODE_TIMEOUT_MS: u64 = 10_000;

/// One `redis-server` of the cluster.
pub struct Node {
    pub port: u16,
    bus_port: u16,
    pub dir: PathBuf,
    pub child: Option<Child>,
    /// Whether the cluster has formed (it knows its peers from then on).
    formed: bool,
    /// TLS only and a password, for a secured cluster.
    secured: Option<Arc<Secured>>,
}

impl Node {
    pub fn new(secured: Option<Arc<Secured>>) -> Node {
        let port = super::super::private_port();
        let bus_port = super::super::private_port();
        let dir =
            std::env::temp_dir().join(format!("aether-cluster-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster node directory");
        Node {
            port,
            bus_port,
            dir,
            child: None,
            formed: false,
            secured,
        }
    }

    /// The cluster has formed: from now on a silent peer is failed after
    /// [`NODE_TIMEOUT_MS`].
    pub fn formed(&mut self) {
        let timeout = NODE_TIMEOUT_MS.to_string();
        let status = cli(self.secured.as_deref())
            .args(["-p", &self.port.to_string()])
            .args(["CONFIG", "SET", "cluster-node-timeout", &timeout])
            .stdout(Stdio::null())
            .status()
            .expect("run redis-cli");
        assert!(
            status.success(),
            "CONFIG SET cluster-node-timeout: {status}"
        );
        self.formed = true;
    }

    pub fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        match &self.secured {
            Some(secured) => {
                command
                    .args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                    .args(secured.tls.server_args(false))
                    .args(["--requirepass", &secured.password])
                    .args(["--masterauth", &secured.password]);
            }
            None => {
                command.args(["--port", &self.port.to_string()]);
            }
        }
        command
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args(["--cluster-config-file", "nodes.conf"])
            .args([
                "--cluster-node-timeout",
                &self.node_timeout_ms().to_string(),
            ])
            // A replica in sync at once (no 5 s wait for more replicas to
            // share a diskless transfer), and allowed to take over however
            // long its link was down: failovers in seconds, every time.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--dir", &self.dir.to_string_lossy()])
            .args(["--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(spawn_kept(command));
        wait_listening(self.port);
    }

    fn node_timeout_ms(&self) -> u64 {
        if self.formed {
            NODE_TIMEOUT_MS
        } else {
            FORMING_NODE_TIMEOUT_MS
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the directories of clusters whose test binary has gone (a
/// shared cluster is never dropped, so its binary cannot clean up).
pub fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("aether-cluster-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `redis-cli`, speaking TLS and authenticating on a secured cluster (the
/// password in the environment, `REDISCLI_AUTH`, not on the command line).
fn cli(secured: Option<&Secured>) -> Command {
    let mut command = Command::new("redis-cli");
    if let Some(secured) = secured {
        command
            .args(secured.tls.cli_args())
            .env("REDISCLI_AUTH", &secured.password);
    }
    command
}

/// `redis-cli --cluster create` over `ports`, one replica per master;
/// `dir` keeps its output, shown with the nodes' logs if it never finishes.
pub fn create(ports: &[u16], dirs: &[PathBuf], secured: Option<&Secured>) {
    let output_path = dirs[0].join("create.out");
    let output = std::fs::File::create(&output_path).expect("redis-cli output file");
    let mut command = cli(secured);
    command.arg("--cluster").arg("create");
    command.args(ports.iter().map(|p| format!("127.0.0.1:{p}")));
    command
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdin(Stdio::null())
        .stdout(output.try_clone().expect("redis-cli output file"))
        .stderr(output);
    let mut child = spawn_kept(command);
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                assert!(status.success(), "redis-cli --cluster create: {status}");
                return;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let mut report = tail(&output_path, 20);
                for dir in dirs {
                    report.push_str(&format!("\n--- {}\n", dir.display()));
                    report.push_str(&tail(&dir.join("redis.log"), 15));
                }
                panic!("redis-cli --cluster create did not finish:\n{report}");
            }
        }
    }
}

/// The last `lines` lines of the file at `path`, for a failure report.
fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + super::super::TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server :{port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
