//! `churn`: subscribers continually leaving and rejoining while publishers
//! send, beside a stable set that never churns and must lose nothing.
//! Reports reconnects/s, loss among the stable subscribers and their
//! latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::client::Hubs;
use crate::fanout::{self, GroupState, Outcome, Pace, Totals};
use crate::stats::{self, Counters, Progress};

#[derive(clap::Args, Clone)]
pub struct Args {
    #[command(flatten)]
    hubs: Hubs,
    #[arg(long, default_value_t = 10)]
    groups: usize,
    /// Subscribers that stay connected the whole run.
    #[arg(long, default_value_t = 1000)]
    stable: usize,
    /// Subscribers that keep leaving and rejoining.
    #[arg(long, default_value_t = 2000)]
    churners: usize,
    /// Shortest and longest stay of a churner, in milliseconds.
    #[arg(long, default_value_t = 10)]
    min_stay_ms: u64,
    #[arg(long, default_value_t = 200)]
    max_stay_ms: u64,
    /// Messages per second per group publisher.
    #[arg(long, default_value_t = 20)]
    rate: u64,
    #[arg(long, default_value_t = 200)]
    payload: usize,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 100)]
    parallel: usize,
}

pub async fn run(args: Args) -> Result<(), String> {
    args.hubs.check()?;
    let counters = Arc::new(Counters::default());
    let totals = Totals::new();
    let groups: Vec<Arc<GroupState>> = (0..args.groups).map(|_| GroupState::new()).collect();
    let measure_from = Arc::new(AtomicU64::new(0));

    // The stable set joins before anything is published: it must get all.
    let mut tasks = Vec::new();
    for i in 0..args.stable {
        let g = i % args.groups;
        let (group, client) = (format!("churn-g{g}"), format!("stable-{i}"));
        // A group's stable subscribers alternate over the hubs.
        let ws = args
            .hubs
            .connect(g + i / args.groups, &group, &client)
            .await?;
        tasks.push(tokio::spawn(fanout::subscribe(
            ws,
            false,
            groups[g].clone(),
            totals.clone(),
            counters.clone(),
            measure_from.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let _progress = Progress::start("churn (stable receipts)", counters.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let pace = Pace {
        rate: args.rate,
        window: 0,
        payload: args.payload,
        phase: 0.0,
        acks: false,
    };
    let publishers =
        fanout::start_publishers(&args.hubs, "churn-g", &groups, pace, &counters, &stop).await?;

    let reconnects = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(args.parallel.max(1)));
    let mut churners = Vec::new();
    for i in 0..args.churners {
        let (args, stop, reconnects, failures, permits) = (
            args.clone(),
            stop.clone(),
            reconnects.clone(),
            failures.clone(),
            permits.clone(),
        );
        churners.push(tokio::spawn(async move {
            let mut seed = 0x2545_f491_u64 ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut round = 0u64;
            while !stop.is_cancelled() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let g = (seed as usize) % args.groups;
                let span = args.max_stay_ms.saturating_sub(args.min_stay_ms).max(1);
                let stay = Duration::from_millis(args.min_stay_ms + (seed >> 16) % span);
                let (group, client) = (format!("churn-g{g}"), format!("churn-{i}"));
                let connected = {
                    let _permit = permits.acquire().await;
                    args.hubs.connect(i + round as usize, &group, &client).await
                };
                round += 1;
                let Ok(mut ws) = connected else {
                    failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                reconnects.fetch_add(1, Ordering::Relaxed);
                let deadline = tokio::time::Instant::now() + stay;
                while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, ws.next()).await {}
                if seed.is_multiple_of(2) {
                    let _ = ws.close(None).await;
                } // else: dropped without a close handshake
            }
        }));
    }

    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let seconds = started.elapsed().as_secs_f64();
    let churned = reconnects.load(Ordering::SeqCst);
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent: u64 = groups.iter().map(|g| g.sent.load(Ordering::SeqCst)).sum();
    let per_group = (args.stable / args.groups) as u64;
    let extra = (args.stable % args.groups) as u64;
    let expected: u64 = groups
        .iter()
        .enumerate()
        .map(|(g, s)| s.sent.load(Ordering::SeqCst) * (per_group + u64::from((g as u64) < extra)))
        .sum();
    let others: Vec<_> = publishers.into_iter().chain(churners).collect();
    let Outcome {
        delivered,
        loss,
        order_violations: violations,
        latency,
    } = totals.settle(expected, tasks, &others).await;
    println!(
        "churn: {} churners over {} groups: {:.0} reconnects/s ({} failed); {} published",
        args.churners,
        args.groups,
        churned as f64 / seconds,
        failures.load(Ordering::SeqCst),
        sent
    );
    println!("stable subscribers: lost {loss} of {expected}, order violations {violations}");
    println!("stable latency: {}", stats::describe(&latency));
    let summary = serde_json::json!({
        "scenario": "churn",
        "groups": args.groups,
        "stable": args.stable,
        "churners": args.churners,
        "seconds": seconds,
        "reconnects_per_sec": churned as f64 / seconds,
        "connect_failures": failures.load(Ordering::SeqCst),
        "published": sent,
        "stable_expected": expected,
        "stable_delivered": delivered,
        "stable_loss": loss,
        "order_violations": violations,
        "latency": stats::percentiles(&latency),
    });
    println!("{summary}");
    Ok(())
}
