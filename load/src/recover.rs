//! `recover`: how long a reconnect storm takes to recover. S sockets (each
//! in a group of its own, so no presence storm) learn their broadcast
//! position (`since_broadcast=new`) and leave; a publisher then broadcasts
//! M messages; all S come back at once with their positions. Reports the
//! time from the storm's start to each socket's recovery summary, and
//! checks that every socket got exactly the M messages it missed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Hubs};
use crate::stats;

#[derive(clap::Args, Clone)]
pub struct Args {
    #[command(flatten)]
    hubs: Hubs,
    /// Sockets that reconnect at once.
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Messages each socket missed (at most the hub's AETHER_HISTORY_SIZE).
    #[arg(long, default_value_t = 100)]
    missed: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
}

pub async fn run(args: Args) -> Result<(), String> {
    args.hubs.check()?;
    let deadline = Duration::from_secs_f64(args.timeout);
    tokio::time::timeout(deadline, measure(args))
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn measure(args: Args) -> Result<(), String> {
    let hubs = Arc::new(args.hubs.clone());
    // The position every socket resumes from: the broadcast route's now.
    let mut probe = hubs
        .connect_with(0, "rec-probe", "rec-probe", "since_broadcast=new")
        .await?;
    let since = position(&mut probe).await?;
    let mut publisher = hubs.connect(1, "rec-pub", "rec-pub").await?;
    for n in 0..args.missed {
        let frame = format!(r#"{{"msg_type":"msg","target":"broadcast","msg":"m{n}"}}"#);
        publisher
            .send(Message::text(frame))
            .await
            .map_err(|e| e.to_string())?;
    }
    // Once the probe has them all, history holds them all.
    for _ in 0..args.missed {
        next_text(&mut probe).await?;
    }

    let query = format!("since_broadcast={since}");
    let started = Instant::now();
    // Every socket at once, but no more upgrades in flight than the
    // listener's backlog takes without dropping SYNs.
    let gate = Arc::new(Semaphore::new(512));
    let sockets = (0..args.sockets).map(|i| {
        let (hubs, query, gate) = (hubs.clone(), query.clone(), gate.clone());
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            let group = format!("rec-g{i}");
            let mut ws = hubs
                .connect_with(i, &group, &format!("rec-c{i}"), &query)
                .await?;
            drop(permit);
            let mut replayed = 0;
            loop {
                let text = next_text(&mut ws).await?;
                if text.contains(r#""msg_type":"recovery""#) {
                    let recovered = text.contains(r#""recovered":true"#);
                    let _ = ws.close(None).await;
                    return Ok::<_, String>((started.elapsed(), replayed, recovered));
                }
                if !text.contains(r#""msg_type":"presence""#) {
                    replayed += 1;
                }
            }
        })
    });
    let results = futures_util::future::join_all(sockets).await;
    let total = started.elapsed();

    let mut latency = stats::histogram();
    let (mut whole, mut failed) = (0usize, 0usize);
    for result in results {
        match result.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok((took, replayed, recovered)) => {
                let _ = latency.record(took.as_nanos() as u64);
                if recovered && replayed == args.missed {
                    whole += 1;
                }
            }
            Err(e) => {
                if failed < 3 {
                    eprintln!("socket failed: {e}");
                }
                failed += 1;
            }
        }
    }
    println!(
        "recover: {} sockets, {} missed each: {whole} recovered whole, {failed} failed, all done in {:.3} s",
        args.sockets,
        args.missed,
        total.as_secs_f64()
    );
    println!("time to recovery summary: {}", stats::describe(&latency));
    let summary = serde_json::json!({
        "scenario": "recover",
        "sockets": args.sockets,
        "missed": args.missed,
        "recovered_whole": whole,
        "failed": failed,
        "seconds": total.as_secs_f64(),
        "messages_replayed_per_sec": (whole * args.missed) as f64 / total.as_secs_f64(),
        "time_to_summary": stats::percentiles(&latency),
    });
    println!("{summary}");
    Ok(())
}

/// Reads up to the recovery summary; its broadcast position as EPOCH:OFFSET.
async fn position(ws: &mut client::Ws) -> Result<String, String> {
    loop {
        let text = next_text(ws).await?;
        if !text.contains(r#""msg_type":"recovery""#) {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let b = &v["payload"]["broadcast"];
        let epoch = b["epoch"].as_str().unwrap_or_default();
        if epoch.is_empty() {
            return Err("the hub keeps no history (AETHER_HISTORY_SIZE=0)".into());
        }
        return Ok(format!("{epoch}:{}", b["offset"]));
    }
}

async fn next_text(ws: &mut client::Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(f))) => return Err(format!("closed: {f:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("connection ended".into()),
        }
    }
}
