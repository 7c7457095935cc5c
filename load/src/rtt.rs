//! `rtt`: P pairs ping-ponging `direct` messages, one in flight per pair.
//! Reports round trips/s and round-trip time percentiles. With `--acks`
//! every ping asks for an acknowledgement (docs/protocol.md section 10):
//! the round trip still ends at the answer, and the time from each send
//! to its ack is reported beside it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Hubs};
use crate::stats::{self, Counters, Progress};

#[derive(clap::Args, Clone)]
pub struct Args {
    #[command(flatten)]
    hubs: Hubs,
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    #[command(flatten)]
    measure: stats::Measure,
    /// Every ping asks for an acknowledgement.
    #[arg(long)]
    acks: bool,
}

pub async fn run(args: Args) -> Result<(), String> {
    args.hubs.check()?;
    let counters = Arc::new(Counters::default());
    let latency = stats::Latencies::new();
    let ack_latency = stats::Latencies::new();
    let measure_from = Arc::new(AtomicU64::new(u64::MAX));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for p in 0..args.pairs {
        let group = format!("rtt-g{p}");
        // The two ends of a pair go to different hubs when there are two.
        let b = args
            .hubs
            .connect(2 * p + 1, &group, &format!("rtt-b{p}"))
            .await?;
        let a = args
            .hubs
            .connect(2 * p, &group, &format!("rtt-a{p}"))
            .await?;
        tasks.push(tokio::spawn(echo_back(b, format!("rtt-a{p}"))));
        tasks.push(tokio::spawn(ping(
            a,
            format!("rtt-b{p}"),
            "x".repeat(args.measure.payload),
            counters.clone(),
            Clocks {
                rtt: latency.recorder(),
                ack: args.acks.then(|| ack_latency.recorder()),
                from: measure_from.clone(),
            },
            stop.clone(),
        )));
    }
    let _progress = Progress::start("rtt", counters.clone());
    tokio::time::sleep(args.measure.warmup()).await;
    let start = counters.received.load(Ordering::SeqCst);
    measure_from.store(stats::now_ns(), Ordering::SeqCst);
    let started = std::time::Instant::now();
    tokio::time::sleep(args.measure.duration()).await;
    let seconds = started.elapsed().as_secs_f64();
    let trips = counters.received.load(Ordering::SeqCst) - start;
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(600)).await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let latency = latency.snapshot();
    println!(
        "rtt: {} pairs: {:.0} round trips/s",
        args.pairs,
        trips as f64 / seconds
    );
    println!("round-trip time: {}", stats::describe(&latency));
    let acked = ack_latency.snapshot();
    if args.acks {
        println!("send to ack: {}", stats::describe(&acked));
    }
    let summary = serde_json::json!({
        "scenario": "rtt",
        "pairs": args.pairs,
        "seconds": seconds,
        "round_trips": trips,
        "round_trips_per_sec": trips as f64 / seconds,
        "rtt": stats::percentiles(&latency),
        "acks": args.acks,
        "send_to_ack": args.acks.then(|| stats::percentiles(&acked)),
    });
    println!("{summary}");
    Ok(())
}

/// The far end: sends every message straight back to `to`.
async fn echo_back(mut ws: client::Ws, to: String) {
    while let Some(Ok(frame)) = ws.next().await {
        let Message::Text(text) = frame else { continue };
        let Some(t) = stats::field_u64(&text, "\"t\"") else {
            continue; // presence events
        };
        let reply = format!(
            r#"{{"msg_type":"msg","target":"direct","to_id":"{to}","payload":{{"t":{t}}}}}"#
        );
        if ws.send(Message::text(reply)).await.is_err() {
            return;
        }
    }
}

/// What a pinger times: round trips, and sends to acks (with `--acks`),
/// from the moment the measurement starts.
struct Clocks {
    rtt: stats::Recorder,
    ack: Option<stats::Recorder>,
    from: Arc<AtomicU64>,
}

async fn ping(
    mut ws: client::Ws,
    to: String,
    pad: String,
    counters: Arc<Counters>,
    mut clocks: Clocks,
    stop: tokio_util::sync::CancellationToken,
) {
    while !stop.is_cancelled() {
        let sent = stats::now_ns();
        let ask = match clocks.ack {
            Some(_) => format!(r#","ack_id":"p{sent}""#),
            None => String::new(),
        };
        let text = format!(
            r#"{{"msg_type":"msg","target":"direct","to_id":"{to}","payload":{{"t":{sent},"pad":"{pad}"}}{ask}}}"#
        );
        counters.sent.fetch_add(1, Ordering::Relaxed);
        if ws.send(Message::text(text)).await.is_err() {
            return;
        }
        // Wait for this ping's answer, skipping presence events.
        loop {
            let answer = tokio::select! {
                _ = stop.cancelled() => return,
                frame = ws.next() => frame,
            };
            let Some(Ok(Message::Text(text))) = answer else {
                return;
            };
            if let Some(acks) = &mut clocks.ack {
                // An ack may come after its ping's answer: its id says
                // when its ping was sent.
                if text.contains(r#""msg_type":"ack""#) {
                    let at = text
                        .split_once(r#""ack_id":"p"#)
                        .and_then(|(_, rest)| rest.split('"').next()?.parse::<u64>().ok());
                    if let Some(at) = at.filter(|at| *at >= clocks.from.load(Ordering::Relaxed)) {
                        acks.record(stats::now_ns().saturating_sub(at));
                    }
                    continue;
                }
            }
            if stats::field_u64(&text, "\"t\"") == Some(sent) {
                break;
            }
        }
        counters.received.fetch_add(1, Ordering::Relaxed);
        if sent >= clocks.from.load(Ordering::Relaxed) {
            clocks.rtt.record(stats::now_ns().saturating_sub(sent));
        }
    }
}
