//! The load tool runs its scenarios and reports consistent numbers on a
//! tiny load. Figures themselves are benchmarks (BENCHMARKS.md), never
//! asserted here.

mod support;

use std::process::Command;

use support::TestHub;

const LOAD: &str = env!("CARGO_BIN_EXE_aether-load");

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
    let out = Command::new(LOAD)
        .args(["connect", "--url", "ws://10.1.2.3:8080", "--sockets", "1"])
        .output()
        .expect("run aether-load");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

async fn run_load(args: Vec<String>) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(LOAD)
            .args(&args)
            .output()
            .expect("run aether-load")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    last_json(&out.stdout)
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
    assert_eq!(report["scenario"], "fanout");
    assert_eq!(report["loss"], 0);
    assert_eq!(report["order_violations"], 0);
    let expected = report["expected"].as_u64().unwrap();
    assert!(expected > 0);
    assert_eq!(report["delivered"].as_u64().unwrap(), expected);
    // Every message reaches each of the 5 subscribers of its group.
    assert_eq!(expected % 5, 0);
    let latency = &report["latency"];
    assert!(latency["p50_ms"].as_f64().unwrap() <= latency["p99_ms"].as_f64().unwrap());
    assert!(latency["p99_ms"].as_f64().unwrap() <= latency["max_ms"].as_f64().unwrap());
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
