//! The load tool runs its scenarios and reports consistent numbers on a
//! tiny load. Figures themselves are benchmarks (docs/benchmarks/), never
//! asserted here.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use support::{load_tool, tokens, TestHub};

fn last_json(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let last = text.lines().last().expect("some output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
}

#[tokio::test]
async fn connect_opens_holds_and_reports() {
    let hub = TestHub::start().await;
    let args = format!(
        "connect --url ws://{} --sockets 60 --parallel 8 --groups 3 --sources 2 \
         --hold 0.2 --settle 0.1 --server-pid {}",
        hub.addr,
        std::process::id()
    );
    let report = run_load(words(&args)).await;
    assert_eq!(report["scenario"], "connect");
    assert_eq!(report["established"], 60);
    assert_eq!(report["failed"], 0);
    assert!(report["connects_per_sec"].as_f64().unwrap() > 0.0);
    assert!(report["hub_rss_after_kib"].as_u64().unwrap() > 0);
    assert!(report["hub_idle_cpu_percent"].as_f64().unwrap() >= 0.0);
    // The tool closed its sockets when done: the hub sees every client go.
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    loop {
        let members = hub.get("/v3/groups/load-g0/presence").await.json();
        if members["members"] == serde_json::json!([]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still present: {members}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[test]
fn the_load_tool_refuses_targets_off_loopback() {
    let out = Command::new(load_tool::path())
        .args(["connect", "--url", "ws://10.1.2.3:8080", "--sockets", "1"])
        .output()
        .expect("run aether-load");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

async fn run_load(args: Vec<String>) -> serde_json::Value {
    let out = run_tool(&args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    last_json(&out.stdout)
}

/// Runs the load tool to its end, killed if it takes longer than a minute.
async fn run_tool(args: &[String]) -> std::process::Output {
    let child = tokio::process::Command::new(load_tool::path())
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(60), child)
        .await
        .expect("aether-load finishes within a minute")
        .expect("run aether-load")
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

#[tokio::test]
async fn fanout_delivers_everything_in_order_and_counts_consistently() {
    let hub = TestHub::start().await;
    let args = format!(
        "fanout --url ws://{} --groups 2 --subscribers 5 --rate 50 --duration 1 --warmup 0.2",
        hub.addr
    );
    let report = run_load(words(&args)).await;
    assert_delivered_whole(&report, "fanout", 5);
    let latency = &report["latency"];
    assert!(latency["p50_ms"].as_f64().unwrap() <= latency["p99_ms"].as_f64().unwrap());
    assert!(latency["p99_ms"].as_f64().unwrap() <= latency["max_ms"].as_f64().unwrap());
}

/// A fan-out report (`fanout`, `nats-fanout`) of `scenario` that says
/// every message reached each of the `subscribers` of its group, in order.
fn assert_delivered_whole(report: &serde_json::Value, scenario: &str, subscribers: u64) {
    assert_eq!(report["scenario"], scenario);
    assert_eq!(report["loss"], 0);
    assert_eq!(report["order_violations"], 0);
    let expected = report["expected"].as_u64().unwrap();
    assert!(expected > 0);
    assert_eq!(report["delivered"].as_u64().unwrap(), expected);
    assert_eq!(expected % subscribers, 0);
}

/// `nats-server` (Debian's package, which scripts/test installs; root's
/// PATH has /usr/sbin, another user's may not).
fn nats_server() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|bin| bin.is_file())
}

/// A nats-server on free loopback ports with its WebSocket listener on
/// (no TLS), killed when dropped.
struct NatsServer {
    child: std::process::Child,
    ws_port: u16,
    dir: PathBuf,
}

impl NatsServer {
    fn start(bin: &std::path::Path) -> NatsServer {
        let (port, ws_port) = (support::private_port(), support::private_port());
        let dir = std::env::temp_dir().join(format!("aether-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "host: 127.0.0.1\nport: {port}\n\
                 websocket {{\n  host: 127.0.0.1\n  port: {ws_port}\n  no_tls: true\n}}\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("nats.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        let server = NatsServer {
            child,
            ws_port,
            dir,
        };
        let deadline = std::time::Instant::now() + support::TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", ws_port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen: {}",
                std::fs::read_to_string(server.dir.join("nats.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        server
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn nats_fanout_delivers_everything_from_a_real_nats_server() {
    let Some(bin) = nats_server() else {
        println!("skipped: nats-server is not installed (scripts/test installs it)");
        return;
    };
    let nats = NatsServer::start(&bin);
    let args = format!(
        "nats-fanout --url ws://127.0.0.1:{} --groups 2 --subscribers 5 --rate 50 \
         --duration 1 --warmup 0.2",
        nats.ws_port
    );
    let report = run_load(words(&args)).await;
    assert_delivered_whole(&report, "nats-fanout", 5);
    assert!(report["latency"]["samples"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn rtt_reports_round_trips_and_their_times() {
    let hub = TestHub::start().await;
    let args = format!(
        "rtt --url ws://{} --pairs 3 --duration 0.5 --warmup 0.2",
        hub.addr
    );
    let report = run_load(words(&args)).await;
    assert_eq!(report["scenario"], "rtt");
    let trips = report["round_trips"].as_u64().unwrap();
    assert!(trips > 0);
    assert!(report["rtt"]["samples"].as_u64().unwrap() <= trips + 3);
    assert!(report["rtt"]["p50_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn churn_keeps_the_stable_set_whole() {
    let hub = TestHub::start().await;
    let args = format!(
        "churn --url ws://{} --groups 2 --stable 6 --churners 6 --rate 40 --duration 1",
        hub.addr
    );
    let report = run_load(words(&args)).await;
    assert_eq!(report["scenario"], "churn");
    assert!(report["reconnects_per_sec"].as_f64().unwrap() > 0.0);
    let expected = report["stable_expected"].as_u64().unwrap();
    assert!(expected > 0);
    assert_eq!(report["stable_loss"], 0);
    assert_eq!(report["stable_delivered"].as_u64().unwrap(), expected);
    assert_eq!(report["order_violations"], 0);
}

#[tokio::test]
async fn recover_reports_every_socket_recovered_whole() {
    let hub = TestHub::start().await;
    let args = format!("recover --url ws://{} --sockets 30 --missed 7", hub.addr);
    let report = run_load(words(&args)).await;
    assert_eq!(report["scenario"], "recover");
    assert_eq!(report["recovered_whole"], 30);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["time_to_summary"]["samples"], 30);

    // With history off nothing can be recovered, and the tool says why.
    let off = TestHub::with(|c| c.history_size = 0).await;
    let out = run_tool(&words(&format!(
        "recover --url ws://{} --sockets 3",
        off.addr
    )))
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("AETHER_HISTORY_SIZE=0"));
}

/// `connect` with 20 sockets and `extra` options against `url`, bounded.
fn connect_args(url: &str, extra: &str) -> Vec<String> {
    words(&format!(
        "connect --url {url} --sockets 20 --parallel 5 --groups 4 --sources 2 \
         --hold 0.1 --settle 0.1 --timeout 30 {extra}"
    ))
}

/// Runs the load tool, checks that it succeeded and printed none of
/// `secrets`, and returns its report.
async fn run_load_quiet(args: Vec<String>, secrets: &[&str]) -> (serde_json::Value, String) {
    let out = run_tool(&args).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    for secret in secrets {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "the tool printed a secret"
        );
    }
    (last_json(&out.stdout), stderr.into_owned())
}

#[tokio::test]
async fn connect_with_hs256_tokens_opens_every_socket() {
    let secret = tokens::secret();
    let hub = TestHub::with(|c| c.token_secrets = vec![secret.clone()]).await;
    let args = connect_args(
        &format!("ws://{}", hub.addr),
        &format!("--token-secret {secret}"),
    );
    let (report, _) = run_load_quiet(args, &[&secret]).await;
    assert_eq!(report["established"], 20);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["token"], "hs256");
    assert_eq!(report["tls"], false);
}

#[tokio::test]
async fn connect_with_the_wrong_secret_opens_nothing() {
    let (secret, wrong) = (tokens::secret(), tokens::secret());
    let hub = TestHub::with(|c| c.token_secrets = vec![secret.clone()]).await;
    let args = connect_args(
        &format!("ws://{}", hub.addr),
        &format!("--token-secret {wrong}"),
    );
    let (report, stderr) = run_load_quiet(args, &[&secret, &wrong]).await;
    assert_eq!(report["established"], 0);
    assert_eq!(report["failed"], 20);
    assert!(stderr.contains("401"), "{stderr}");
}

#[tokio::test]
async fn keys_make_an_es256_pair_the_hub_accepts() {
    let dir = std::env::temp_dir().join(format!(
        "aether-load-keys-{}-{}",
        std::process::id(),
        tokens::secret()
    ));
    let (report, _) = run_load_quiet(words(&format!("keys --dir {}", dir.display())), &[]).await;
    assert_eq!(report["kid"], "load");
    let key = dir.join("es256.pem");
    let jwks_path = dir.join("jwks.json");
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&jwks_path).unwrap()).unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    for (field, value) in [
        ("kty", "EC"),
        ("crv", "P-256"),
        ("kid", "load"),
        ("alg", "ES256"),
    ] {
        assert_eq!(jwk[field], value, "{jwk}");
    }
    assert!(
        jwk.get("d").is_none(),
        "the JWKS holds the public half only"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let hub = TestHub::with(|c| c.token_jwks_file = Some(jwks_path.clone())).await;
    let url = format!("ws://{}", hub.addr);
    let args = connect_args(&url, &format!("--token-key {}", key.display()));
    let (report, _) = run_load_quiet(args, &[]).await;
    assert_eq!(report["established"], 20);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["token"], "es256");
    // A kid the JWKS does not have: every upgrade refused.
    let args = connect_args(
        &url,
        &format!("--token-key {} --token-kid other", key.display()),
    );
    let (report, _) = run_load_quiet(args, &[]).await;
    assert_eq!(report["established"], 0);
    assert_eq!(report["failed"], 20);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn tokens_ride_where_token_via_says() {
    let secret = tokens::secret();
    let hub = TestHub::with(|c| c.token_secrets = vec![secret.clone()]).await;
    // Through a front that records each upgrade request's head.
    let front = Front::start(hub.addr).await;
    for via in ["subprotocol", "bearer", "query"] {
        front.heads.lock().unwrap().clear();
        let args = connect_args(
            &format!("ws://127.0.0.1:{}", front.port),
            &format!("--token-secret {secret} --token-via {via}"),
        );
        let (report, _) = run_load_quiet(args, &[&secret]).await;
        assert_eq!(report["established"], 20, "--token-via {via}");
        assert_eq!(report["failed"], 0, "--token-via {via}");
        let heads = front.heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 20, "--token-via {via}");
        for head in heads.iter().map(|h| h.to_ascii_lowercase()) {
            let (line, headers) = head.split_once("\r\n").unwrap();
            let found = [
                headers.contains("sec-websocket-protocol: aether.v3, aether.token.ey"),
                headers.contains("authorization: bearer ey"),
                line.contains("?token=ey"),
            ];
            let expected = match via {
                "subprotocol" => [true, false, false],
                "bearer" => [false, true, false],
                _ => [false, false, true],
            };
            assert_eq!(found, expected, "--token-via {via}: {head}");
        }
    }
}

/// A plain front for a hub on an ephemeral loopback port that records the
/// head of every upgrade request it relays.
struct Front {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Front {
    async fn start(hub: SocketAddr) -> Front {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(relay(tcp, hub, recorded.clone()));
            }
        });
        Front { port, heads }
    }
}

/// Records the request head `client` sends, then relays both ways between
/// it and the hub.
async fn relay(mut client: tokio::net::TcpStream, hub: SocketAddr, heads: Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    heads
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&head).into_owned());
    let Ok(mut upstream) = tokio::net::TcpStream::connect(hub).await else {
        return;
    };
    if upstream.write_all(&head).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1: (certificate
/// PEM file, key PEM file). The certificate is its own CA.
fn self_signed() -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    (
        tokens::write_temp("cert.pem", &made.cert.pem()),
        tokens::write_temp("key.pem", &made.signing_key.serialize_pem()),
    )
}

#[tokio::test]
async fn wss_with_tokens_connects_and_carries_traffic() {
    let secret = tokens::secret();
    let (cert, key) = self_signed();
    let hub = TestHub::with(|c| {
        c.token_secrets = vec![secret.clone()];
        c.tls_cert_file = Some(cert.clone());
        c.tls_key_file = Some(key.clone());
    })
    .await;
    let port = hub.addr.port();
    let tls = format!("--tls-ca {} --token-secret {secret}", cert.display());
    // The host as written is the name checked: localhost ...
    let args = connect_args(&format!("wss://localhost:{port}"), &tls);
    let (report, _) = run_load_quiet(args, &[&secret]).await;
    assert_eq!(report["established"], 20);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["tls"], true);
    // ... or an IP address; rtt signs its tokens as it connects.
    let args = words(&format!(
        "rtt --url wss://127.0.0.1:{port} {tls} --pairs 2 --duration 0.3 --warmup 0.1"
    ));
    let (report, _) = run_load_quiet(args, &[&secret]).await;
    assert!(report["round_trips"].as_u64().unwrap() > 0);
    // A CA that did not sign the hub's certificate: no socket.
    let (other_ca, other_key) = self_signed();
    let args = connect_args(
        &format!("wss://localhost:{port}"),
        &format!("--tls-ca {} --token-secret {secret}", other_ca.display()),
    );
    let (report, stderr) = run_load_quiet(args, &[&secret]).await;
    assert_eq!(report["established"], 0);
    assert_eq!(report["failed"], 20);
    assert!(stderr.contains("TLS handshake"), "{stderr}");
    for file in [cert, key, other_ca, other_key] {
        let _ = std::fs::remove_file(file);
    }
}

#[test]
fn wss_needs_a_ca_and_a_loopback_host() {
    for (url, expected) in [
        ("wss://localhost:8443", "--tls-ca"),
        ("wss://10.1.2.3:8443", "loopback"),
        ("wss://example.com:8443", "expected"),
    ] {
        let out = Command::new(load_tool::path())
            .args(["connect", "--url", url, "--sockets", "1"])
            .output()
            .expect("run aether-load");
        assert!(!out.status.success(), "{url}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{url}: {stderr}");
    }
}
