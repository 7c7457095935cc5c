//! `rtt`: P pairs ping-ponging `direct` messages, one in flight per pair.
//! Reports round trips/s and round-trip time percentiles.

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
}

pub async fn run(args: Args) -> Result<(), String> {
    args.hubs.check()?;
    let counters = Arc::new(Counters::default());
    let latency = stats::Latencies::new();
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
            latency.recorder(),
            measure_from.clone(),
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
    let summary = serde_json::json!({
        "scenario": "rtt",
        "pairs": args.pairs,
        "seconds": seconds,
        "round_trips": trips,
        "round_trips_per_sec": trips as f64 / seconds,
        "rtt": stats::percentiles(&latency),
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

async fn ping(
    mut ws: client::Ws,
    to: String,
    pad: String,
    counters: Arc<Counters>,
    mut latency: stats::Recorder,
    measure_from: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) {
    while !stop.is_cancelled() {
        let sent = stats::now_ns();
        let text = format!(
            r#"{{"msg_type":"msg","target":"direct","to_id":"{to}","payload":{{"t":{sent},"pad":"{pad}"}}}}"#
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
            if stats::field_u64(&text, "\"t\"") == Some(sent) {
                break;
            }
        }
        counters.received.fetch_add(1, Ordering::Relaxed);
        if sent >= measure_from.load(Ordering::Relaxed) {
            latency.record(stats::now_ns().saturating_sub(sent));
        }
    }
}
