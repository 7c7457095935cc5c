//! Graceful shutdown of the real binary: on SIGTERM or SIGINT every socket
//! gets 1001 and the process exits 0 within the grace period. Also: bad
//! configuration stops start-up with a clear message.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::Client;

const BIN: &str = env!("CARGO_BIN_EXE_aether-hub");

struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

async fn spawn_hub() -> Running {
    let addr = free_port();
    let child = Command::new(BIN)
        .env("AETHER_BIND", addr.to_string())
        .env("AETHER_SHUTDOWN_GRACE_SECS", "5")
        .env("AETHER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start aether-hub");
    let running = Running { child, addr };
    let deadline = Instant::now() + support::TIMEOUT;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "hub did not start listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: sending a signal to our own child process.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(sent, 0, "signal delivered");
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "hub did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn shuts_down_on(sig: libc::c_int) {
    let mut hub = spawn_hub().await;
    let url = |g: &str, c: &str| format!("ws://{}/v3/ws/group/{g}/client/{c}", hub.addr);
    let mut clients = Vec::new();
    for (g, c) in [("g1", "a"), ("g1", "b"), ("g2", "c")] {
        clients.push(Client::connect(&url(g, c), &[]).await.expect("connect"));
    }
    let members = support::http_request(hub.addr, "GET", "/v3/groups/g1/presence", &[], "").await;
    assert_eq!(members.json()["members"], serde_json::json!(["a", "b"]));

    signal(&hub.child, sig);
    for client in &mut clients {
        let (code, _) = client.recv_close().await;
        assert_eq!(code, 1001);
    }
    let status = wait_exit(&mut hub.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[tokio::test]
async fn sigterm_closes_every_socket_with_1001_and_exits_0() {
    shuts_down_on(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_does_the_same() {
    shuts_down_on(libc::SIGINT).await;
}

#[test]
fn invalid_configuration_stops_start_up_with_a_message() {
    for (var, value, part) in [
        ("AETHER_BIND", "not-an-address", "AETHER_BIND"),
        ("AETHER_IDLE_TIMEOUT_SECS", "0", "more than 0"),
        (
            "AETHER_MAX_MESSAGE_BYTES",
            "lots",
            "AETHER_MAX_MESSAGE_BYTES",
        ),
        ("AETHER_LOG", "[[[", "AETHER_LOG"),
    ] {
        let out = Command::new(BIN)
            .env(var, value)
            .env(
                "AETHER_BIND",
                if var == "AETHER_BIND" {
                    value
                } else {
                    "127.0.0.1:0"
                },
            )
            .output()
            .expect("run");
        assert!(!out.status.success(), "{var}={value} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(part), "{var}={value}: {stderr}");
    }
}

#[test]
fn help_lists_every_setting() {
    let out = Command::new(BIN).arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "AETHER_BIND",
        "AETHER_REDIS_URL",
        "AETHER_REDIS_PREFIX",
        "AETHER_API_KEYS",
        "AETHER_ALLOWED_ORIGINS",
        "AETHER_ALLOW_CLIENT_BROADCAST",
        "AETHER_MAX_MESSAGE_BYTES",
        "AETHER_OUTBOUND_QUEUE",
        "AETHER_RATE_LIMIT",
        "AETHER_IDLE_TIMEOUT_SECS",
        "AETHER_PING_INTERVAL_SECS",
        "AETHER_PRESENCE_TTL_SECS",
        "AETHER_INSTANCE_ID",
        "AETHER_SHUTDOWN_GRACE_SECS",
        "AETHER_LOG",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
}
