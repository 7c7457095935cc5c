//! `soak`: a long run at a moderate, mixed load, for flatness and zero
//! loss (issue 13; `benches/soak.sh` runs it beside two hubs and the Redis
//! it restarts, and samples the processes).
//!
//! `--groups` groups of `--per-group` sockets, a group's sockets
//! alternating over the `--url`s: one controller and its workers. Each
//! controller sends `--rate` group messages a second and `--direct-rate`
//! direct commands, each to its next worker, which answers with a direct
//! message. Workers reconnect now and then (`--churn` a second over all of
//! them, away 0.2 to 3 s, half with a close handshake, half dropped),
//! resuming with `since_group`/`since_client`; every `--slow-every`
//! seconds one more socket stops reading while it is flooded and must be
//! dropped with 4008 (`slow`).
//!
//! Every socket asks for its positions on its first connect
//! (`since_*=new`), judges every kept message and recovery summary it gets
//! (`crate::track`: losses, order violations, recoveries), and records the
//! latency of live messages (send time in the payload, this process's
//! clock). Output: a CSV header, a row every `--report-every` seconds (row
//! 0 once every socket is up, before traffic; counts are per row, but
//! `loss_total`), anomalies on stderr, and a JSON summary as the last line.
//!
//! The run is here: it starts the members, prints the rows, schedules the
//! slow consumers and sums up. [`member`] holds a socket's life (connect,
//! churn, resume), [`session`] one connection's traffic and judging,
//! [`tally`] the counters and columns, [`crate::track`] the judging of
//! routes (shared with `fleet`), and [`slow`] one slow-consumer round.

mod life;
mod member;
mod session;
mod slow;
mod tally;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::Hubs;
use crate::stats;
use crate::wait;
use life::member;
use member::Member;
use tally::{Tally, C, COLUMNS};

#[derive(clap::Args, Clone)]
pub struct Args {
    #[command(flatten)]
    hubs: Hubs,
    /// Groups: one controller and `--per-group` − 1 workers each.
    #[arg(long, default_value_t = 100)]
    groups: usize,
    /// Sockets per group, its controller included (at least 2).
    #[arg(long, default_value_t = 50)]
    per_group: usize,
    /// Minutes of traffic, counted once every socket is up.
    #[arg(long, default_value_t = 60.0)]
    minutes: f64,
    /// Group messages per second per controller.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Direct commands per second per controller (each answered).
    #[arg(long, default_value_t = 1.0)]
    direct_rate: f64,
    /// Worker reconnects per second, over all workers (0: none).
    #[arg(long, default_value_t = 5.0)]
    churn: f64,
    /// Seconds between slow consumers, the first half of it in (0: none).
    #[arg(long, default_value_t = 60)]
    slow_every: u64,
    /// Most messages (1 KiB each) flooding a slow consumer; the flood
    /// stops once its hub counts the overflow.
    #[arg(long, default_value_t = 20_000)]
    slow_flood: u64,
    /// Seconds between report rows.
    #[arg(long, default_value_t = 60)]
    report_every: u64,
    /// Bytes of padding in each group message.
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 100)]
    parallel: usize,
}

/// How long all sockets may take to come up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long sockets and traffic stay up after the last row, so that a
/// sampler reading the processes as the row comes (benches/soak.sh) sees
/// them under load.
const LINGER: Duration = Duration::from_secs(5);

/// What every task shares.
struct Shared {
    args: Args,
    tally: Tally,
    /// Live messages' latency since the last row.
    latency: Mutex<Histogram<u64>>,
    gate: Semaphore,
    /// Traffic (and churn) starts; the run ends.
    go: CancellationToken,
    stop: CancellationToken,
    /// Sockets that have their first positions.
    ready: AtomicUsize,
}

impl Shared {
    fn record_latency(&self, sent_ns: u64) {
        if let Ok(mut h) = self.latency.lock() {
            let _ = h.record(stats::now_ns().saturating_sub(sent_ns).max(1));
        }
    }

    /// The latency since the last call, and a fresh start.
    fn take_latency(&self) -> Histogram<u64> {
        match self.latency.lock() {
            Ok(mut h) => {
                let taken = h.clone();
                h.reset();
                taken
            }
            Err(_) => stats::histogram(),
        }
    }

    fn workers(&self) -> usize {
        self.args.groups * (self.args.per_group - 1)
    }
}

pub async fn run(args: Args) -> Result<(), String> {
    args.hubs.check()?;
    if args.per_group < 2 || args.groups == 0 || args.minutes <= 0.0 {
        return Err("need --groups ≥ 1, --per-group ≥ 2 and --minutes > 0".into());
    }
    let shared = Arc::new(Shared {
        gate: Semaphore::new(args.parallel.max(1)),
        args,
        tally: Tally::new(),
        latency: Mutex::new(stats::histogram()),
        go: CancellationToken::new(),
        stop: CancellationToken::new(),
        ready: AtomicUsize::new(0),
    });
    let (groups, per_group) = (shared.args.groups, shared.args.per_group);
    eprintln!("soak: connecting {} sockets", groups * per_group);
    let setup = Instant::now();
    let members: Vec<_> = (0..groups * per_group)
        .map(|i| Member {
            group: i % groups,
            n: i / groups,
        })
        .map(|m| tokio::spawn(member(shared.clone(), m)))
        .collect();
    wait_ready(&shared, members.len()).await;
    let setup_seconds = setup.elapsed().as_secs_f64();
    eprintln!(
        "soak: {} of {} sockets up in {setup_seconds:.1} s",
        shared.ready.load(Ordering::SeqCst),
        members.len()
    );

    let total = Duration::from_secs_f64(shared.args.minutes * 60.0);
    let started = Instant::now();
    let slow = tokio::spawn(slow_consumers(shared.clone(), started + total));
    let progress = tokio::spawn(progress(shared.clone(), started));
    let mut latency = report(&shared, started, total).await;
    let connected = shared.tally.connected.load(Ordering::SeqCst);
    tokio::time::sleep(LINGER).await;
    let _ = latency.add(shared.take_latency());
    let seconds = started.elapsed().as_secs_f64();
    shared.stop.cancel();
    slow.abort();
    progress.abort();
    wait::finish(members).await;
    print_summary(&shared, setup_seconds, seconds, connected, &latency);
    Ok(())
}

/// Waits until every socket has its first positions (bounded).
async fn wait_ready(shared: &Shared, sockets: usize) {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while shared.ready.load(Ordering::SeqCst) < sockets && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A slow consumer every `--slow-every` seconds, half a period in, until
/// `end`.
async fn slow_consumers(shared: Arc<Shared>, end: Instant) {
    let every = Duration::from_secs(shared.args.slow_every);
    if every.is_zero() {
        return;
    }
    let start = Instant::now() + every / 2;
    let tally = &shared.tally;
    for k in 0.. {
        let when = start + every * k;
        if when >= end {
            return;
        }
        tokio::time::sleep_until(when).await;
        tally.add(C::SlowStarted, 1);
        let outcome = slow::round(&shared.args.hubs, k as usize, shared.args.slow_flood).await;
        match &outcome {
            Ok(slow::Outcome {
                end: slow::End::Closed(code),
                ..
            }) => {
                tally.add(C::SlowDropped, 1);
                if *code == 4008 {
                    tally.add(C::Slow4008, 1);
                }
            }
            Ok(slow::Outcome {
                end: slow::End::Ended(_),
                ..
            }) => tally.add(C::SlowDropped, 1),
            Ok(slow::Outcome {
                end: slow::End::NotDropped,
                ..
            })
            | Err(_) => {}
        }
        // One line a round, whatever the outcome.
        match outcome {
            Ok(o) => eprintln!(
                "soak: slow consumer {k}: {:?}, sent {}, read {} before",
                o.end, o.sent, o.read
            ),
            Err(e) => eprintln!("soak: slow consumer {k}: {e}"),
        }
    }
}

/// A line on stderr every 10 s.
async fn progress(shared: Arc<Shared>, started: Instant) {
    let mut every = tokio::time::interval(Duration::from_secs(10));
    every.tick().await;
    let mut last = shared.tally.read();
    loop {
        every.tick().await;
        let now = shared.tally.read();
        let d = |c: C| now[c as usize] - last[c as usize];
        eprintln!(
            "[{:7.1}s] soak: {} sockets, {} deliveries, {} reconnects, loss {}",
            started.elapsed().as_secs_f64(),
            shared.tally.connected.load(Ordering::Relaxed),
            d(C::Deliveries),
            d(C::Reconnects),
            now[C::LossGroup as usize] + now[C::LossClient as usize]
        );
        last = now;
    }
}

/// Prints the header, row 0 now, starts the traffic, then prints a row
/// every `--report-every` seconds until `total`; the latency of the whole
/// run.
async fn report(shared: &Shared, started: Instant, total: Duration) -> Histogram<u64> {
    let names: Vec<&str> = COLUMNS.iter().map(|(_, n)| *n).collect();
    println!(
        "row,elapsed_s,sockets,{},loss_total,p50_ms,p99_ms,max_ms,latency_samples",
        names.join(",")
    );
    let every = Duration::from_secs(shared.args.report_every.max(1));
    let mut last = shared.tally.read();
    let mut all = stats::histogram();
    for row in 0u32.. {
        let due = (every * row).min(total);
        tokio::time::sleep_until(started + due).await;
        let now = shared.tally.read();
        let interval = shared.take_latency();
        let _ = all.add(&interval);
        let counts: Vec<String> = (0..COLUMNS.len())
            .map(|i| (now[i] - last[i]).to_string())
            .collect();
        let ms = |ns: u64| ns as f64 / 1e6;
        println!(
            "{row},{:.1},{},{},{},{:.3},{:.3},{:.3},{}",
            started.elapsed().as_secs_f64(),
            shared.tally.connected.load(Ordering::Relaxed),
            counts.join(","),
            now[C::LossGroup as usize] + now[C::LossClient as usize],
            ms(interval.value_at_quantile(0.5)),
            ms(interval.value_at_quantile(0.99)),
            ms(interval.max()),
            interval.len()
        );
        last = now;
        // Row 0 is the load at rest: traffic and churn start after it.
        shared.go.cancel();
        if due >= total {
            break;
        }
    }
    all
}

fn print_summary(
    shared: &Shared,
    setup_seconds: f64,
    seconds: f64,
    connected: i64,
    latency: &Histogram<u64>,
) {
    let now = shared.tally.read();
    let args = &shared.args;
    let totals: serde_json::Map<String, serde_json::Value> = COLUMNS
        .iter()
        .map(|(c, name)| ((*name).to_owned(), now[*c as usize].into()))
        .collect();
    let loss = now[C::LossGroup as usize] + now[C::LossClient as usize];
    println!(
        "soak: {} sockets for {seconds:.0} s: loss {loss}, order violations {}, recoveries {} whole, {} new epoch, {} failed; slow consumers {} of {} dropped with 4008",
        args.groups * args.per_group,
        now[C::OrderViolations as usize],
        now[C::Recovered as usize],
        now[C::RecoveryNewEpoch as usize],
        now[C::RecoveryFailed as usize],
        now[C::Slow4008 as usize],
        now[C::SlowStarted as usize],
    );
    println!("latency: {}", stats::describe(latency));
    let summary = serde_json::json!({
        "scenario": "soak",
        "groups": args.groups,
        "per_group": args.per_group,
        "sockets": args.groups * args.per_group,
        "rate": args.rate,
        "direct_rate": args.direct_rate,
        "churn": args.churn,
        "setup_seconds": setup_seconds,
        "seconds": seconds,
        "connected_at_end": connected,
        "totals": totals,
        "loss": loss,
        "latency": stats::percentiles(latency),
    });
    println!("{summary}");
}
