//! `fleet`: one load process's share of a fleet-scale run (issue 22;
//! `benches/fleet.sh` starts several beside several hubs on one Redis, and
//! `tests/fleet.rs` a small one).
//!
//! `--sockets` sockets in groups of `--group-size`, socket `i` first on hub
//! `(i + --id) % hubs` (a group's members spread over the hubs, as a load
//! balancer would spread them), from the `--sources` loopback addresses
//! starting at 127.0.0.`--source-base`. Each group's controller (its first
//! member) sends `--group-rate` group messages a second once the run says
//! go; the others receive them. Every socket asks for its positions on its
//! first connect (`since_*=new`) and, when its hub goes away, reconnects
//! to another hub at random with them, after a full-jitter backoff
//! (`member`, `backoff`: a 503 is one more failure, unless
//! `--retry-after`), and checks what comes back (`session`, `crate::track`).
//!
//! The run: connect everything (bounded by `--setup-timeout`), wait for
//! `--go-file` to exist if given (so that several processes start their
//! traffic together), then `--duration` seconds of traffic, the last
//! `--settle` of them quiet so that the tail can be checked; broadcast
//! probes at `--probe-at` seconds after go (`probe`). Send times ride in
//! the messages on the wall clock (microseconds since the Unix epoch), so
//! that processes on one machine can be compared.
//!
//! Output: a CSV row a second (`--csv`; row times on whole wall seconds,
//! for joining processes), histogram lines (`--hist`: per second the live
//! group latency of all sockets and of the sockets never dropped, at the
//! end each probe's arrivals and the reconnect times), a progress line on
//! stderr every 5 s, anomalies on stderr, a summary, and a JSON object as
//! the last line of stdout (`report`, from the counters of `tally`).

mod backoff;
mod member;
mod probe;
mod report;
mod session;
mod tally;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::client::Hubs;
use crate::wait;
use backoff::Backoff;
use member::Member;
use report::{Row, Summary};
use tally::{Sink, Tally};

#[derive(clap::Args, Clone)]
pub struct Args {
    #[command(flatten)]
    hubs: Hubs,
    /// Sockets this process holds (the probe socket aside).
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Sockets per group: a controller and its workers.
    #[arg(long, default_value_t = 5)]
    group_size: usize,
    /// Group messages a second per group (from its controller).
    #[arg(long, default_value_t = 0.5)]
    group_rate: f64,
    /// Bytes of padding in each group message.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// This process's number among the load processes of a run: its
    /// client and group names (`f{id}-g…`) and its first hubs.
    #[arg(long, default_value_t = 0)]
    id: usize,
    /// Seconds of traffic from go to the end.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// The last seconds of `--duration`, without traffic: the tail must
    /// arrive, then each worker's last offset is compared with the last
    /// one its controller had acknowledged.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Start the traffic once this file exists (bounded by
    /// `--setup-timeout`); without it, as soon as every socket is up.
    #[arg(long, value_name = "FILE")]
    go_file: Option<PathBuf>,
    /// Seconds to get every socket up, and again at most to wait for
    /// `--go-file`.
    #[arg(long, default_value_t = 300.0)]
    setup_timeout: f64,
    /// Broadcast probes at these seconds after go (comma list); only one
    /// process of a run should be given them.
    #[arg(long, value_delimiter = ',')]
    probe_at: Vec<f64>,
    /// Connects in flight at once during setup (returns after a drop are
    /// not gated: they are spread by their backoff, as real clients are).
    #[arg(long, default_value_t = 200)]
    parallel: usize,
    /// The longest one connect (TCP, upgrade) may take.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Backoff window of the first return after a drop; it doubles with
    /// each failed attempt (full jitter: a uniform draw in the window).
    #[arg(long, default_value_t = 200)]
    backoff_base_ms: u64,
    /// The widest backoff window.
    #[arg(long, default_value_t = 10_000)]
    backoff_cap_ms: u64,
    /// Honour a 503's Retry-After (wait it, plus a draw within a second),
    /// as a client that can read it would; by default a 503 is one more
    /// failure to back off from with full jitter, as browsers (which never
    /// see the status of a refused upgrade) do.
    #[arg(long)]
    retry_after: bool,
    /// Write a CSV row a second here.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Write histogram lines (`unix_s,kind,value_us,count`) here.
    #[arg(long, value_name = "FILE")]
    hist: Option<PathBuf>,
}

/// Microseconds since the Unix epoch: the send time messages carry, read
/// by processes other than the sender's.
pub(crate) fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(crate) fn unix_ms() -> u64 {
    wall_us() / 1000
}

/// What every task shares.
struct Shared {
    args: Args,
    tally: Tally,
    backoff: Backoff,
    connect_timeout: Duration,
    /// Connects of the setup in flight.
    gate: Semaphore,
    /// Traffic starts; traffic stops (the settle); the run ends.
    go: CancellationToken,
    quiet: CancellationToken,
    stop: CancellationToken,
    go_at: OnceLock<Instant>,
    /// Per group: the highest offset its controller had acknowledged.
    acked: Vec<AtomicU64>,
    groups: usize,
    probes_sent: AtomicU64,
    pad: String,
}

impl Shared {
    /// A controller's pace: `--group-rate` a second from go, the groups'
    /// first messages spread over one period as independent ones would be.
    fn pace(&self, group: usize) -> Option<Interval> {
        let rate = self.args.group_rate;
        let go = *self.go_at.get()?;
        if rate <= 0.0 || !rate.is_finite() {
            return None;
        }
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut first = go + period.mul_f64(group as f64 / self.groups.max(1) as f64);
        // A controller that comes back later joins its own phase, not a
        // burst of everything it missed.
        let now = Instant::now();
        while first < now {
            first += period;
        }
        let mut every = tokio::time::interval_at(first, period);
        every.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Some(every)
    }

    fn group_message(&self, seq: u64) -> String {
        format!(
            r#"{{"msg_type":"msg","target":"group","ack_id":"s{seq}","payload":{{"t":{},"pad":"{}"}}}}"#,
            wall_us(),
            self.pad
        )
    }
}

/// Where the run is, for the CSV's `phase` column.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Setup,
    Ready,
    Traffic,
    Quiet,
    End,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Ready => "ready",
            Phase::Traffic => "traffic",
            Phase::Quiet => "quiet",
            Phase::End => "end",
        }
    }
}

pub async fn run(args: Args) -> Result<(), String> {
    args.hubs.check()?;
    if args.sockets == 0 || args.group_size == 0 || args.duration <= 0.0 {
        return Err("need --sockets ≥ 1, --group-size ≥ 1 and --duration > 0".into());
    }
    if args.probe_at.iter().any(|t| t.is_nan() || *t < 0.0) {
        return Err("--probe-at takes seconds after go, ≥ 0".into());
    }
    let mut sink = Sink::open(args.csv.as_deref(), args.hist.as_deref())?;
    let groups = args.sockets.div_ceil(args.group_size);
    let shared = Arc::new(Shared {
        tally: Tally::new(),
        backoff: Backoff {
            base: Duration::from_millis(args.backoff_base_ms.max(1)),
            cap: Duration::from_millis(args.backoff_cap_ms.max(args.backoff_base_ms)),
            honour_retry_after: args.retry_after,
        },
        connect_timeout: Duration::from_secs_f64(args.connect_timeout.max(0.1)),
        gate: Semaphore::new(args.parallel.max(1)),
        go: CancellationToken::new(),
        quiet: CancellationToken::new(),
        stop: CancellationToken::new(),
        go_at: OnceLock::new(),
        acked: (0..groups).map(|_| AtomicU64::new(0)).collect(),
        groups,
        probes_sent: AtomicU64::new(0),
        pad: "x".repeat(args.payload),
        args,
    });
    let sockets = shared.args.sockets;
    let size = shared.args.group_size;
    eprintln!(
        "fleet {}: connecting {sockets} sockets in {groups} groups over {} hubs",
        shared.args.id,
        shared.args.hubs.count()
    );
    let started = Instant::now();
    let phase = Arc::new(std::sync::Mutex::new(Phase::Setup));
    let members: Vec<_> = (0..sockets)
        .map(|i| Member {
            i,
            group: i / size,
            n: i % size,
        })
        .map(|m| tokio::spawn(member::life(shared.clone(), m)))
        .collect();
    let prober = tokio::spawn(probe::run(shared.clone()));
    let (rows_tx, mut rows_rx) = tokio::sync::mpsc::unbounded_channel::<Row>();
    let reporter = tokio::spawn(report::report(
        shared.clone(),
        phase.clone(),
        started,
        rows_tx,
    ));
    let writer = tokio::spawn(async move {
        let mut totals = (tally::histogram(2), tally::histogram(2));
        while let Some(row) = rows_rx.recv().await {
            sink.line_csv(&row.line);
            sink.hist(row.unix_s, "all", &row.all);
            sink.hist(row.unix_s, "others", &row.others);
            if row.traffic {
                let _ = totals.0.add(&row.all);
                let _ = totals.1.add(&row.others);
            }
        }
        (sink, totals)
    });

    let setup_deadline = started + Duration::from_secs_f64(shared.args.setup_timeout);
    while (shared.tally.ever_up.load(Ordering::SeqCst) as usize) < sockets
        && Instant::now() < setup_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let setup_seconds = started.elapsed().as_secs_f64();
    let up_after_setup = shared.tally.ever_up.load(Ordering::SeqCst);
    set(&phase, Phase::Ready);
    eprintln!(
        "fleet {}: ready: {up_after_setup} of {sockets} sockets up in {setup_seconds:.1} s",
        shared.args.id
    );
    if let Some(file) = &shared.args.go_file {
        let deadline = Instant::now() + Duration::from_secs_f64(shared.args.setup_timeout);
        while !file.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let go = Instant::now();
    let go_unix_ms = unix_ms();
    let _ = shared.go_at.set(go);
    set(&phase, Phase::Traffic);
    shared.go.cancel();
    eprintln!("fleet {}: go", shared.args.id);

    let duration = Duration::from_secs_f64(shared.args.duration);
    let settle = Duration::from_secs_f64(shared.args.settle.clamp(0.0, shared.args.duration));
    tokio::time::sleep_until(go + duration - settle).await;
    set(&phase, Phase::Quiet);
    shared.quiet.cancel();
    tokio::time::sleep_until(go + duration).await;
    let up_at_end = shared.tally.up.load(Ordering::SeqCst);
    shared.stop.cancel();
    wait::finish(members).await;
    prober.abort();
    set(&phase, Phase::End);
    // One last row with what the end counted (the tail check), then the
    // writer ends with the channel.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    reporter.abort();
    let _ = reporter.await;
    let (mut sink, (all, others)) = writer.await.map_err(|e| e.to_string())?;
    let reconnects = shared.tally.reconnects();
    let probes = shared.tally.probes();
    let end_s = unix_ms() / 1000;
    sink.hist(end_s, "reconnect", &reconnects);
    for (id, _, _, arrival) in &probes {
        sink.hist(end_s, &format!("probe{id}"), arrival);
    }
    let summary = Summary {
        setup_seconds,
        up_after_setup,
        up_at_end,
        go_unix_ms,
        all,
        others,
        reconnects,
        probes,
    };
    summary.print(&shared);
    Ok(())
}

fn set(phase: &std::sync::Mutex<Phase>, to: Phase) {
    if let Ok(mut p) = phase.lock() {
        *p = to;
    }
}
