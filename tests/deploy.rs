//! deploy/: the local topology of `deploy/local/run` (redis-server, or a
//! six-node Redis Cluster with `--cluster`, two hub processes, nginx
//! balancing round robin) carries group and direct messages between hubs
//! through the balancer; `deploy/validate` passes;
//! the image's health check script (`deploy/healthcheck`) tells a serving
//! hub from a missing one. Everything on 127.0.0.1, every wait bounded.

mod support;

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{eventually, http_request, private_port, Client, Event, TIMEOUT};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const KEY: &str = "deploy-test-key";
const GROUP: &str = "deploy-g";

/// `deploy/local/run` in a process group of its own; dropping it stops the
/// whole group (SIGTERM, then SIGKILL) and removes its directory.
struct Topology {
    child: Child,
    /// Set once the script has been waited for: its process group may be
    /// gone then, and is not signalled any more.
    exited: Option<ExitStatus>,
    dir: PathBuf,
    nginx: SocketAddr,
    hubs: [SocketAddr; 2],
}

impl Topology {
    /// `deploy/local/run`, with `args` (`--cluster`).
    fn start(args: &[&str]) -> Topology {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "aether-deploy-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test directory");
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let nginx = loopback(private_port());
        let hubs = [loopback(private_port()), loopback(private_port())];
        let redis = consecutive_ports(if args.contains(&"--cluster") { 6 } else { 1 });
        let mut run = script("deploy/local/run");
        run.args(args)
            .env("AETHER_HUB_BIN", support::process::BIN)
            .env("AETHER_LOCAL_NGINX_PORT", nginx.port().to_string())
            .env("AETHER_LOCAL_HUB1_PORT", hubs[0].port().to_string())
            .env("AETHER_LOCAL_HUB2_PORT", hubs[1].port().to_string())
            .env("AETHER_LOCAL_REDIS_PORT", redis.to_string())
            .env("AETHER_LOCAL_DIR", dir.join("run"))
            .env("AETHER_LOCAL_WAIT_SECS", "20")
            .env("AETHER_API_KEYS", KEY)
            .env("AETHER_SHUTDOWN_GRACE_SECS", "3")
            .env("AETHER_LOG", "warn");
        let child = spawn_logged(run, &dir.join("run.log"));
        Topology {
            child,
            exited: None,
            dir,
            nginx,
            hubs,
        }
    }

    /// What the script and its servers wrote, for failure messages.
    fn logs(&self) -> String {
        let mut text = String::new();
        for name in [
            "run.log",
            "run/redis.log",
            "run/redis-cluster-create.log",
            "run/hub1.log",
            "run/hub2.log",
            "run/nginx.log",
        ] {
            let body = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            text.push_str(&format!("--- {name}\n{body}"));
        }
        text
    }

    /// Waits until nginx answers /healthz with 200, through to a hub.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::TcpStream::connect(self.nginx).await.is_ok()
                && http_request(self.nginx, "GET", "/healthz", &[], "")
                    .await
                    .status
                    == 200
            {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                panic!("deploy/local/run exited ({status}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "nginx never answered /healthz:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM to the whole process group (as a terminal's Ctrl-C would
    /// reach it); SIGKILL if it is still there after `within`.
    fn stop(&mut self, within: Duration) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return self.exited;
        }
        // The script is not reaped yet, so its process group still exists.
        let group = -(self.child.id() as libc::pid_t);
        // SAFETY: signalling the process group this test started.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above (the script is still not reaped).
        unsafe { libc::kill(group, libc::SIGKILL) };
        self.exited = self.child.wait().ok();
        None
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(15));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The sum of every `aether_connections_open` sample of one hub's /metrics.
async fn open_sockets(hub: SocketAddr) -> f64 {
    let text = http_request(hub, "GET", "/metrics", &[], "").await.body;
    text.lines()
        .filter(|line| {
            line.strip_prefix("aether_connections_open")
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn open_on_each(hubs: &[SocketAddr; 2]) -> [f64; 2] {
    [open_sockets(hubs[0]).await, open_sockets(hubs[1]).await]
}

/// The next message that is not a presence announcement.
async fn recv_skipping_presence(client: &mut Client) -> Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    for _ in 0..100 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(left).await {
            Some(Event::Text(v)) if v["msg_type"] == "presence" => continue,
            Some(Event::Text(v)) => return v,
            other => panic!("expected a message, got {other:?}"),
        }
    }
    panic!("only presence messages arrived");
}

/// The first of `n` consecutive free ports for Redis nodes. A cluster
/// node also listens on its port + 10000 (the cluster bus, as
/// `deploy/local/run` leaves it): those must be free too, and below the
/// kernel's ephemeral range (32768 up), where any outgoing connection
/// could take one.
fn consecutive_ports(n: u16) -> u16 {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let start = 12_000 + (std::process::id() % 1000) as u16 * 6;
    (0..1000u16)
        .map(|i| 12_000 + (start - 12_000 + i * 7) % 10_000)
        .find(|&first| (0..n).all(|i| free(first + i) && (n == 1 || free(first + i + 10_000))))
        .unwrap_or_else(|| panic!("no {n} consecutive free ports"))
}

#[tokio::test]
async fn local_topology_routes_across_hubs_through_nginx() {
    routes_across_hubs_through_nginx(Topology::start(&[])).await;
}

#[tokio::test]
async fn local_cluster_topology_routes_across_hubs_through_nginx() {
    routes_across_hubs_through_nginx(Topology::start(&["--cluster"])).await;
}

async fn routes_across_hubs_through_nginx(mut topology: Topology) {
    topology.wait_ready().await;
    let (nginx, hubs) = (topology.nginx, topology.hubs);
    let url = |client: &str| format!("ws://{nginx}/v3/ws/group/{GROUP}/client/{client}");
    let key = [("X-Aether-API-Key", KEY)];

    // Through the balancer: the key header reaches the hubs (without it,
    // 401), and /metrics is not served there (each hub is scraped directly).
    match Client::connect(&url("nokey"), &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        other => panic!("upgrade without a key: {:?}", other.map(|_| ())),
    }
    assert_eq!(
        http_request(nginx, "GET", "/metrics", &[], "").await.status,
        404
    );

    // The controller lands on one hub; workers are connected until one
    // lands on the other (round robin alternates, so within two).
    let mut controller = Client::connect(&url("controller"), &key)
        .await
        .expect("controller connects through nginx");
    eventually("the controller counted on a hub", || async {
        open_on_each(&hubs).await.iter().sum::<f64>() == 1.0
    })
    .await;
    let controller_hub = usize::from(open_on_each(&hubs).await[1] == 1.0);
    let other = 1 - controller_hub;
    let mut same_hub_workers = Vec::new();
    let mut worker = None;
    for i in 0..6 {
        let id = format!("worker-{i}");
        let client = Client::connect(&url(&id), &key)
            .await
            .unwrap_or_else(|e| panic!("{id} connects through nginx: {e}"));
        let expected = (i + 2) as f64;
        eventually("the worker counted on a hub", || async {
            open_on_each(&hubs).await.iter().sum::<f64>() == expected
        })
        .await;
        if open_on_each(&hubs).await[other] >= 1.0 {
            worker = Some((id, client));
            break;
        }
        same_hub_workers.push(client);
    }
    let (worker_id, mut worker) =
        worker.unwrap_or_else(|| panic!("nginx never sent a socket to hub {}", other + 1));
    assert!(
        same_hub_workers.len() <= 1,
        "round robin should alternate: {} sockets in a row on one hub",
        same_hub_workers.len() + 1
    );

    // A group command crosses from one hub to the other through Redis.
    controller
        .send(json!({"msg_type": "cmd", "target": "group", "cmd": "start", "payload": {"job": 7}}))
        .await;
    let got = recv_skipping_presence(&mut worker).await;
    assert_eq!(got["cmd"], "start", "{got}");
    assert_eq!(got["from_id"], "controller", "{got}");
    assert_eq!(got["group_id"], GROUP, "{got}");
    assert_eq!(got["payload"], json!({"job": 7}), "{got}");

    // And a direct message back.
    worker
        .send(json!({"msg_type": "msg", "target": "direct", "to_id": "controller", "msg": "done"}))
        .await;
    let got = recv_skipping_presence(&mut controller).await;
    assert_eq!(got["msg"], "done", "{got}");
    assert_eq!(got["from_id"], worker_id.as_str(), "{got}");

    for client in same_hub_workers {
        client.close().await;
    }
    assert_eq!(worker.close().await, 1000);
    assert_eq!(controller.close().await, 1000);

    // SIGTERM stops the script and everything it started.
    let status = topology.stop(Duration::from_secs(20));
    assert!(
        status.is_some(),
        "deploy/local/run did not stop within 20 s:\n{}",
        topology.logs()
    );
    for addr in [nginx, hubs[0], hubs[1]] {
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} still listening after the script stopped"
        );
    }
}

/// `bash` running one of the repository's scripts.
fn script(path: &str) -> Command {
    let mut command = Command::new("bash");
    command.arg(Path::new(REPO).join(path));
    command
}

/// Starts `command` in a process group of its own (so that stopping it
/// stops everything it started), its output going to `log`.
fn spawn_logged(mut command: Command, log: &Path) -> Child {
    let file = File::create(log).expect("log file");
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log handle"))
        .stderr(file)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {command:?}: {e}"))
}

#[test]
fn deploy_validate_passes() {
    let dir = std::env::temp_dir().join(format!("aether-deploy-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("test directory");
    let log_path = dir.join("validate.log");
    let mut child = spawn_logged(script("deploy/validate"), &log_path);
    // The first run installs its Python packages; later runs take seconds.
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            // SAFETY: the process group this test started.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        status.is_some_and(|s| s.success()),
        "deploy/validate: {status:?}\n{output}"
    );
    assert!(output.contains("all deploy checks passed"), "{output}");
}

/// Runs deploy/healthcheck with `AETHER_BIND=bind`: whether it passed.
async fn healthcheck(bind: &str) -> bool {
    let run = tokio::process::Command::new("bash")
        .arg(Path::new(REPO).join("deploy/healthcheck"))
        .env("AETHER_BIND", bind)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    tokio::time::timeout(TIMEOUT, run)
        .await
        .expect("health check finished in time")
        .expect("bash runs deploy/healthcheck")
        .success()
}

#[tokio::test]
async fn image_health_check_script_tells_a_serving_hub() {
    let hub = support::process::spawn_hub(&[]).await;
    let port = hub.addr.port();
    assert!(healthcheck(&hub.addr.to_string()).await);
    // The image's AETHER_BIND=0.0.0.0:8080 form: checked on 127.0.0.1.
    assert!(healthcheck(&format!("0.0.0.0:{port}")).await);
    drop(hub);
    assert!(!healthcheck(&format!("127.0.0.1:{port}")).await);
    assert!(!healthcheck(&format!("127.0.0.1:{}", private_port())).await);
}
