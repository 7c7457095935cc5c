//! A fleet in miniature (issue 22; the figures at scale are
//! `benches/fleet.sh`, docs/benchmarks/fleet.md): 3,000 sockets over three
//! hub processes on one real redis-server, driven by `aether-load fleet`
//! in groups of five with steady group traffic, then one hub killed with
//! SIGKILL under traffic. Asserted, from the load tool's report:
//! - every socket comes back on the other two within a bounded time;
//! - every returning socket (what it missed is well within history) gets
//!   `recovered: true`, then exactly the messages it missed, replayed
//!   before its summary, and live ones after with no gap and no duplicate
//!   (the tool checks every kept message's offset, and each worker's last
//!   group offset against the last one its controller had acknowledged);
//! - the sockets that were not dropped lose nothing either;
//! - a broadcast sent during the storm reaches every socket, live or in
//!   a replay.
//!
//! Correctness only: no figure is asserted. Loopback 127.0.0.1 only;
//! bounded well under a minute.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::load_tool;
use support::process::spawn_hub;
use support::redis::RedisServer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const SOCKETS: u64 = 3_000;
const HUBS: u64 = 3;
/// When hub 0 dies, after the traffic starts.
const KILL_AFTER: Duration = Duration::from_secs(3);
/// The whole test, hubs and Redis included.
const BOUND: Duration = Duration::from_secs(55);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_sockets_come_back_whole_on_the_others() {
    tokio::time::timeout(BOUND, storm())
        .await
        .expect("the fleet test ends in time");
}

async fn storm() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [("AETHER_REDIS_URL", url.as_str())];
    let mut hubs = Vec::new();
    for _ in 0..HUBS {
        hubs.push(spawn_hub(&env).await);
    }
    let mut args: Vec<String> = vec!["fleet".into()];
    for hub in &hubs {
        args.extend(["--url".into(), format!("ws://{}", hub.addr)]);
    }
    // Returns spread over up to 1.5 s while each group sends 2 messages a
    // second: most returning workers have something to be replayed. The
    // second probe goes out during the storm, so that it is replayed to
    // sockets still away.
    let figures = format!(
        "--sockets {SOCKETS} --group-size 5 --group-rate 2 --duration 12 --settle 2 \
         --probe-at 1,{:.1} --source-base 1 --sources 1 --parallel 100 \
         --backoff-base-ms 1500 --backoff-cap-ms 4000 --setup-timeout 25",
        KILL_AFTER.as_secs_f64() + 0.4
    );
    args.extend(figures.split_whitespace().map(str::to_owned));
    let mut tool = tokio::process::Command::new(load_tool::path())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run aether-load");
    let mut stdout = tool.stdout.take().expect("piped stdout");
    let stderr = tool.stderr.take().expect("piped stderr");
    let reading = tokio::spawn(async move {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out).await;
        out
    });
    // Its stderr, kept for a failure's message; "go" is when traffic runs.
    let (went, go) = tokio::sync::oneshot::channel();
    let logging = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut went = Some(went);
        let mut log = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.ends_with(": go") {
                if let Some(went) = went.take() {
                    let _ = went.send(());
                }
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let started = tokio::time::timeout(Duration::from_secs(30), go).await;
    if !matches!(started, Ok(Ok(()))) {
        let _ = tool.kill().await;
        panic!(
            "the load tool never started its traffic:\n{}",
            logging.await.unwrap_or_default()
        );
    }
    tokio::time::sleep(KILL_AFTER).await;
    let mut dead = hubs.remove(0);
    dead.child.kill().expect("SIGKILL hub 0");
    let _ = dead.child.wait();

    let status = tool.wait().await.expect("aether-load ends");
    let out = reading.await.unwrap_or_default();
    let log = logging.await.unwrap_or_default();
    assert!(status.success(), "aether-load failed:\n{log}");
    let report: Value = out
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report:\n{out}\n{log}"));
    check(&report, &log);
}

fn check(report: &Value, log: &str) {
    let total = |k: &str| report["totals"][k].as_u64().unwrap_or(u64::MAX);
    let context = || format!("report: {report}\nlog:\n{log}");
    assert_eq!(report["scenario"], "fleet");
    assert_eq!(report["never_up"], 0, "{}", context());
    // Every socket of hub 0 (socket i starts on hub i % 3) dropped once and
    // came back, and all are up at the end.
    assert_eq!(total("drops"), SOCKETS / HUBS, "{}", context());
    assert_eq!(total("reconnects"), SOCKETS / HUBS, "{}", context());
    assert_eq!(report["up_at_end"], SOCKETS, "{}", context());
    let (dropped, back) = (
        report["first_drop_unix_ms"].as_u64().unwrap_or(0),
        report["last_back_unix_ms"].as_u64().unwrap_or(0),
    );
    assert!(
        dropped > 0 && back >= dropped && back - dropped < 10_000,
        "every socket back within 10 s of the first drop\n{}",
        context()
    );
    // What they missed was within history: all whole, replayed as
    // announced, continuing their offsets.
    assert_eq!(total("recovered_true"), SOCKETS / HUBS, "{}", context());
    assert_eq!(total("recovered_false"), 0, "{}", context());
    assert!(
        total("replayed") > 0,
        "no socket missed anything: the replay went untested\n{}",
        context()
    );
    for k in [
        "replay_mismatch",
        "gaps",
        "duplicates",
        "tail_loss",
        "summary_timeouts",
        "epoch_changes",
        "acks_not_ok",
        "refused_other",
    ] {
        assert_eq!(total(k), 0, "{k}\n{}", context());
    }
    // The traffic ran, and the sockets never dropped kept receiving.
    assert!(total("sent") > 0 && total("acked") > 0, "{}", context());
    assert!(
        report["latency_others"]["samples"].as_u64().unwrap_or(0) > 0,
        "{}",
        context()
    );
    // Each broadcast reached every socket, live or replayed.
    let probes = report["probes"].as_array().cloned().unwrap_or_default();
    assert_eq!(probes.len(), 2, "{}", context());
    for probe in &probes {
        let reached = probe["live"].as_u64().unwrap_or(0) + probe["replayed"].as_u64().unwrap_or(0);
        assert_eq!(reached, SOCKETS, "probe {probe}\n{}", context());
    }
}
