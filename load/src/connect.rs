//! `connect`: open C idle sockets with bounded parallelism, hold them, and
//! report the connect rate and the hub's RSS per socket.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Semaphore;

use crate::client::{self, Hubs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    hubs: Hubs,
    /// Sockets to open.
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 100)]
    parallel: usize,
    /// Groups the sockets are spread over.
    #[arg(long, default_value_t = 100)]
    groups: usize,
    /// Seconds to hold the sockets once all are open.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Seconds to wait after the last connect before reading the hub's RSS.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// The hub's PID, to report its RSS per socket.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Give up on the whole run after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
}

pub async fn run(args: Args) -> Result<(), String> {
    args.hubs.check()?;
    let hubs = Arc::new(args.hubs.clone());
    // Every socket's token is signed before the clock starts: signing is
    // the client's cost, not the hub's, and ES256 signing would otherwise
    // weigh on the measured rate.
    let signing = Instant::now();
    let mut upgrades = Vec::with_capacity(args.sockets);
    for i in 0..args.sockets {
        let group = format!("load-g{}", i % args.groups.max(1));
        upgrades.push(hubs.upgrade(i, &group, &format!("load-c{i}"))?);
    }
    if let Some(kind) = hubs.token_kind() {
        eprintln!(
            "signed {} {kind} tokens in {:.2} s (not counted)",
            args.sockets,
            signing.elapsed().as_secs_f64()
        );
    }

    let rss_before = args.server_pid.and_then(client::rss_kib);
    let established = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(args.parallel.max(1)));
    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.timeout);

    let mut holders = Vec::with_capacity(args.sockets);
    for (i, upgrade) in upgrades.into_iter().enumerate() {
        let permit = tokio::time::timeout_at(deadline.into(), permits.clone().acquire_owned())
            .await
            .map_err(|_| "timed out opening sockets".to_string())?
            .map_err(|e| e.to_string())?;
        let hubs = hubs.clone();
        let (ok, bad, stop) = (established.clone(), failed.clone(), stop.clone());
        holders.push(tokio::spawn(async move {
            let ws = hubs.open(upgrade).await;
            match ws {
                Ok(ws) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    hold(ws, stop).await;
                }
                Err(e) => {
                    if bad.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("connect failed: {e}");
                    }
                }
            }
        }));
        if i % 1000 == 999 {
            progress(&established, &failed, started);
        }
    }
    // Wait for the last connects in flight.
    let _ = tokio::time::timeout_at(
        deadline.into(),
        permits.acquire_many(args.parallel.max(1) as u32),
    )
    .await;
    let connect_secs = started.elapsed().as_secs_f64();
    let ok = established.load(Ordering::Relaxed);
    let bad = failed.load(Ordering::Relaxed);
    progress(&established, &failed, started);

    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_after = args.server_pid.and_then(client::rss_kib);
    let per_socket = match (rss_before, rss_after) {
        (Some(b), Some(a)) if ok > 0 => Some((a.saturating_sub(b) as f64 * 1024.0) / ok as f64),
        _ => None,
    };
    let cpu_before = args.server_pid.and_then(client::cpu_ticks);
    let held = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let cpu_after = args.server_pid.and_then(client::cpu_ticks);
    let idle_cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => {
            let busy = (a - b) as f64 / client::ticks_per_second();
            Some(100.0 * busy / held.elapsed().as_secs_f64())
        }
        _ => None,
    };
    stop.cancel();
    for h in holders {
        let _ = h.await;
    }

    let rate = ok as f64 / connect_secs;
    println!("connect: {ok} established, {bad} failed in {connect_secs:.2} s ({rate:.0}/s)");
    if let (Some(b), Some(a), Some(p)) = (rss_before, rss_after, per_socket) {
        println!(
            "hub RSS: {b} KiB before, {a} KiB with {ok} sockets: {:.2} KiB per socket",
            p / 1024.0
        );
    }
    if let Some(cpu) = idle_cpu {
        println!("hub CPU while the sockets sat idle: {cpu:.2} % of one core");
    }
    let summary = serde_json::json!({
        "scenario": "connect",
        "sockets": args.sockets,
        "established": ok,
        "failed": bad,
        "connect_seconds": connect_secs,
        "connects_per_sec": rate,
        "hub_rss_before_kib": rss_before,
        "hub_rss_after_kib": rss_after,
        "hub_rss_per_socket_bytes": per_socket,
        "hub_idle_cpu_percent": idle_cpu,
        "token": hubs.token_kind(),
        "tls": hubs.tls(),
    });
    println!("{summary}");
    Ok(())
}

/// Keeps a socket open, reading (so pings are answered) until told to stop.
async fn hold(mut ws: client::Ws, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            frame = ws.next() => if !matches!(frame, Some(Ok(_))) { return },
        }
    }
    let _ = ws.close(None).await;
}

fn progress(established: &AtomicUsize, failed: &AtomicUsize, started: Instant) {
    eprintln!(
        "[{:6.1}s] established {} failed {}",
        started.elapsed().as_secs_f64(),
        established.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
}
