//! A pub/sub blip under traffic (docs/protocol.md section 7, last bullet):
//! a controller sends acknowledged group cmds at a steady rate while the
//! sending instance's pub/sub connection is killed a few times. Every
//! message must be acknowledged `ok` (publishing never stopped), and
//! reach every worker, on either instance, once and in order.

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::acks::{group_cmd, is_ack};
use super::{Client, TestHub};

/// Messages sent, at [`EVERY`] apart (about 150 a second).
pub const SENT: u64 = 300;
const EVERY: Duration = Duration::from_millis(7);
/// Kills, spread over the traffic.
pub const KILLS: u64 = 3;

/// What the run saw: the controller's acks, each worker's cmds.
pub struct Run {
    pub acks: Vec<Value>,
    pub workers: Vec<Vec<Value>>,
    /// Connections each kill closed.
    pub killed: Vec<usize>,
}

/// Runs the traffic from a controller on `front` in `group`, with one
/// worker on each hub; `kill` closes the front's pub/sub connection(s)
/// and says how many.
pub async fn run<F, Fut>(front: &TestHub, back: &TestHub, group: &str, mut kill: F) -> Run
where
    F: FnMut() -> Fut,
    Fut: Future<Output = usize>,
{
    let mut workers = Vec::new();
    for (i, hub) in [front, back].into_iter().enumerate() {
        let worker = hub.connect(group, &format!("w{i}")).await;
        workers.push(tokio::spawn(collect_cmds(worker)));
    }
    let ctl = front.connect(group, "ctl").await;
    let (mut tx, mut rx) = ctl.ws.split();
    let mut tick = tokio::time::interval(EVERY);
    let (mut sent, mut acks, mut killed) = (0u64, Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (acks.len() as u64) < SENT {
        tokio::select! {
            _ = tick.tick(), if sent < SENT => {
                sent += 1;
                let frame = group_cmd(sent, &format!("a{sent}"));
                tx.send(Message::text(frame.to_string())).await.expect("send");
                if sent % (SENT / (KILLS + 1)) == 0 && (killed.len() as u64) < KILLS {
                    killed.push(kill().await);
                }
            }
            frame = rx.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    let m: Value = serde_json::from_str(t.as_str()).expect("JSON");
                    if is_ack(&m) {
                        acks.push(m["payload"].clone());
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("the controller's socket ended: {other:?}"),
            },
            () = tokio::time::sleep_until(deadline) => {
                panic!("{} of {SENT} acks within 60 s", acks.len());
            }
        }
    }
    let mut got = Vec::new();
    for worker in workers {
        got.push(worker.await.expect("worker task"));
    }
    Run {
        acks,
        workers: got,
        killed,
    }
}

/// A worker's cmds, until it has [`SENT`] or none came for a while.
async fn collect_cmds(mut worker: Client) -> Vec<Value> {
    let mut cmds = Vec::new();
    while (cmds.len() as u64) < SENT {
        match worker.next_event(Duration::from_secs(15)).await {
            Some(super::Event::Text(m)) if m["msg_type"] == "cmd" => cmds.push(m),
            Some(super::Event::Text(_)) => {}
            _ => break,
        }
    }
    cmds
}

/// Asserts what the blip rule promises.
pub fn assert_nothing_lost(run: &Run) {
    assert!(
        run.killed.iter().all(|&n| n >= 1),
        "every kill found the pub/sub connection: {:?}",
        run.killed
    );
    assert_eq!(run.killed.len() as u64, KILLS);
    let statuses: Vec<&str> = run
        .acks
        .iter()
        .filter_map(|a| a["status"].as_str())
        .filter(|s| *s != "ok")
        .collect();
    assert!(statuses.is_empty(), "acks other than ok: {statuses:?}");
    let ids: Vec<String> = run.acks.iter().map(|a| a["ack_id"].to_string()).collect();
    let want: Vec<String> = (1..=SENT).map(|n| format!("\"a{n}\"")).collect();
    assert_eq!(ids, want, "each frame acked once, in order");
    let offsets: Vec<u64> = run
        .acks
        .iter()
        .filter_map(|a| a["offset"].as_u64())
        .collect();
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
    for (i, cmds) in run.workers.iter().enumerate() {
        let names: Vec<&str> = cmds.iter().filter_map(|m| m["cmd"].as_str()).collect();
        let want: Vec<String> = (1..=SENT).map(|n| format!("c{n}")).collect();
        assert_eq!(names, want, "worker {i}: every cmd once, in order");
        assert!(cmds.iter().all(|m| m.get("ack_id").is_none()));
    }
}
