//! The real `aether-hub` binary as a child process, for what only a
//! process can show: signals, exit codes, being killed.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_aether-hub");

pub struct Running {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Running {
    pub fn ws_url(&self, group: &str, client: &str) -> String {
        format!("ws://{}/v3/ws/group/{group}/client/{client}", self.addr)
    }

    pub async fn get(&self, path: &str) -> super::HttpResponse {
        super::http_request(self.addr, "GET", path, &[], "").await
    }

    /// The value of one sample of /metrics (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        super::metric_sample(&self.get("/metrics").await.body, sample)
    }
}

impl Running {
    /// Kills the hub and returns everything it logged (its stderr piped:
    /// [`spawn_hub_with_logs`]).
    pub fn kill_for_logs(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.read_stderr()
    }

    /// What the (ended) hub wrote to its piped stderr.
    pub fn read_stderr(&mut self) -> String {
        use std::io::Read;
        let mut logs = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut logs);
        }
        logs
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the hub with `env` on a free port; returns once it is ready.
pub async fn spawn_hub(env: &[(&str, &str)]) -> Running {
    spawn(env, Stdio::null()).await
}

/// Like [`spawn_hub`], with the hub's stderr (its logs) piped to the test.
pub async fn spawn_hub_with_logs(env: &[(&str, &str)]) -> Running {
    spawn(env, Stdio::piped()).await
}

async fn spawn(env: &[(&str, &str)], stderr: Stdio) -> Running {
    let running = launch(env, stderr);
    let deadline = Instant::now() + super::TIMEOUT;
    loop {
        if tokio::net::TcpStream::connect(running.addr).await.is_ok()
            && running.get("/readyz").await.status == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "hub did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running
}

/// Starts the hub with `env` on a free port, without waiting for it.
pub fn launch(env: &[(&str, &str)], stderr: Stdio) -> Running {
    let addr = SocketAddr::from(([127, 0, 0, 1], super::private_port()));
    let child = Command::new(BIN)
        .env("AETHER_BIND", addr.to_string())
        .env("AETHER_SHUTDOWN_GRACE_SECS", "5")
        .env("AETHER_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start aether-hub");
    Running { child, addr }
}

pub fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: sending a signal to our own child process.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(sent, 0, "signal delivered");
}

pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "hub did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `command` from one thread that lives as long as the test binary,
/// with `PR_SET_PDEATHSIG`: the kernel kills the child when that thread,
/// hence the binary, ends, even when no destructor runs (a Redis node a
/// fixture shares across a test binary). Not from the calling thread: a
/// runtime's worker may end before the fixture does.
pub fn spawn_kept(mut command: Command) -> Child {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            for (mut command, reply) in incoming {
                let _ = reply.send(command.spawn());
            }
            // Never returns while the binary runs: the sender is static.
        });
        Mutex::new(requests)
    });
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply))
        .expect("the spawner thread runs");
    answer
        .recv()
        .expect("the spawner answers")
        .expect("start redis-server/redis-cli (scripts/test installs Debian's redis-server)")
}
