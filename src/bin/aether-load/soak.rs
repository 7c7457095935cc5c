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
//! (`track`: losses, order violations, recoveries), and records the
//! latency of live messages (send time in the payload, this process's
//! clock). Output: a CSV header, a row every `--report-every` seconds (row
//! 0 once every socket is up, before traffic; counts are per row, but
//! `loss_total`), anomalies on stderr, and a JSON summary as the last line.

mod slow;
mod track;

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_hub::history::position_of;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Hubs};
use crate::stats;
use track::{Kind, Position, Step, Verdict};

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
/// How long a recovery summary may take after the upgrade.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect attempts for one (re)connect, `RETRY` apart.
const CONNECT_ATTEMPTS: usize = 240;
const RETRY: Duration = Duration::from_millis(500);
/// Anomalies printed on stderr (all are counted).
const NOTES_MAX: u64 = 200;
/// How long sockets and traffic stay up after the last row, so that a
/// sampler reading the processes as the row comes (benches/soak.sh) sees
/// them under load.
const LINGER: Duration = Duration::from_secs(5);

/// What is counted: the CSV's columns, in order.
#[derive(Clone, Copy)]
enum C {
    Deliveries,
    Replayed,
    SentGroup,
    SentDirect,
    Replies,
    LossGroup,
    LossClient,
    OrderViolations,
    EpochChanges,
    Reconnects,
    ConnectFailures,
    Recovered,
    RecoveryNewEpoch,
    RecoveryFailed,
    UnexpectedCloses,
    SlowStarted,
    SlowDropped,
    Slow4008,
}

const COLUMNS: [(C, &str); 18] = [
    (C::Deliveries, "deliveries"),
    (C::Replayed, "replayed"),
    (C::SentGroup, "sent_group"),
    (C::SentDirect, "sent_direct"),
    (C::Replies, "replies"),
    (C::LossGroup, "loss_group"),
    (C::LossClient, "loss_client"),
    (C::OrderViolations, "order_violations"),
    (C::EpochChanges, "epoch_changes"),
    (C::Reconnects, "reconnects"),
    (C::ConnectFailures, "connect_failures"),
    (C::Recovered, "recovered"),
    (C::RecoveryNewEpoch, "recovery_new_epoch"),
    (C::RecoveryFailed, "recovery_failed"),
    (C::UnexpectedCloses, "unexpected_closes"),
    (C::SlowStarted, "slow_started"),
    (C::SlowDropped, "slow_dropped"),
    (C::Slow4008, "slow_4008"),
];

/// Counters every task bumps, and the anomaly log.
struct Tally {
    counts: [AtomicU64; COLUMNS.len()],
    connected: AtomicI64,
    notes: AtomicU64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            connected: AtomicI64::new(0),
            notes: AtomicU64::new(0),
        }
    }

    fn add(&self, c: C, n: u64) {
        self.counts[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    fn read(&self) -> [u64; COLUMNS.len()] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Prints an anomaly on stderr, the first `NOTES_MAX` only.
    fn note(&self, what: impl FnOnce() -> String) {
        if self.notes.fetch_add(1, Ordering::Relaxed) < NOTES_MAX {
            eprintln!("soak: {}", what());
        }
    }
}

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

/// One socket of the load: member `n` of group `group` (0: controller).
#[derive(Clone, Copy)]
struct Member {
    group: usize,
    n: usize,
}

impl Member {
    fn is_controller(self) -> bool {
        self.n == 0
    }

    fn group_id(self) -> String {
        format!("soak-g{}", self.group)
    }

    fn client_id(self) -> String {
        match self.n {
            0 => format!("soak-g{}-c", self.group),
            n => format!("soak-g{}-w{n}", self.group),
        }
    }

    /// Its hub on its `round`-th connect: a group's sockets alternate over
    /// the hubs, and a worker moves to the next hub each time it returns.
    fn hub(self, round: usize) -> usize {
        let moves = if self.is_controller() { 0 } else { round };
        self.group + self.n + moves
    }

    /// The routes it resumes: a controller receives nothing on its group
    /// route (it is the only sender there), so only its client route.
    fn routes(self) -> &'static [Kind] {
        if self.is_controller() {
            &[Kind::Client]
        } else {
            &Kind::ALL
        }
    }

    fn query(self, positions: &[Position; 2]) -> String {
        self.routes()
            .iter()
            .map(|k| format!("since_{}={}", k.name(), positions[*k as usize].since()))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Why a session ended.
enum End {
    Stop,
    Churn,
    Lost(String),
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
    finish(members).await;
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

/// Lets the members close their sockets (bounded), then aborts the rest.
async fn finish(members: Vec<tokio::task::JoinHandle<()>>) {
    let aborts: Vec<_> = members.iter().map(|m| m.abort_handle()).collect();
    let all = futures_util::future::join_all(members);
    if tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .is_err()
    {
        aborts.iter().for_each(|a| a.abort());
    }
}

/// One member's life: connect, run, and come back after a churn or a
/// lost connection, resuming from its positions, until the run ends.
async fn member(shared: Arc<Shared>, me: Member) {
    let mut positions = [Position::default(), Position::default()];
    let mut traffic = Traffic::new(&shared.args, me);
    let mut churn = Churn::new(&shared, me);
    let mut ready = false;
    let mut round = 0;
    while !shared.stop.is_cancelled() {
        let Some(ws) = connect(&shared, me, &positions, round).await else {
            break;
        };
        if round > 0 {
            shared.tally.add(C::Reconnects, 1);
        }
        round += 1;
        shared.tally.connected.fetch_add(1, Ordering::Relaxed);
        let session = Session::new(&shared, me, &mut positions, &mut ready);
        let end = session.run(ws, &mut traffic, &mut churn).await;
        shared.tally.connected.fetch_sub(1, Ordering::Relaxed);
        let pause = match end {
            End::Stop => break,
            End::Churn => Duration::from_millis(rand::random_range(200..3000)),
            End::Lost(why) => {
                shared.tally.add(C::UnexpectedCloses, 1);
                shared.tally.note(|| format!("{}: {why}", me.client_id()));
                RETRY
            }
        };
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Opens `me`'s socket with its positions, retrying (bounded) while the
/// hub refuses (503 while Redis is down).
async fn connect(
    shared: &Shared,
    me: Member,
    positions: &[Position; 2],
    round: usize,
) -> Option<client::Ws> {
    let (group, client, query) = (me.group_id(), me.client_id(), me.query(positions));
    for attempt in 0..CONNECT_ATTEMPTS {
        let opened = {
            let _permit = shared.gate.acquire().await.ok()?;
            if shared.stop.is_cancelled() {
                return None;
            }
            shared
                .args
                .hubs
                .connect_with(me.hub(round + attempt), &group, &client, &query)
                .await
        };
        match opened {
            Ok(ws) => return Some(ws),
            Err(e) => {
                shared.tally.add(C::ConnectFailures, 1);
                shared.tally.note(|| format!("{client}: connect: {e}"));
            }
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return None,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
    shared
        .tally
        .note(|| format!("{client}: gave up after {CONNECT_ATTEMPTS} connect attempts"));
    None
}

/// A controller's two paces (unused by workers).
struct Traffic {
    group: Option<Interval>,
    direct: Option<Interval>,
    next_worker: usize,
    pad: String,
}

impl Traffic {
    fn new(args: &Args, me: Member) -> Traffic {
        // Controllers start at phases spread over the period, as
        // independent ones would.
        let phase = me.group as f64 / args.groups as f64;
        let pace = |rate: f64| {
            (me.is_controller() && rate > 0.0).then(|| {
                let period = Duration::from_secs_f64(1.0 / rate);
                let mut every =
                    tokio::time::interval_at(Instant::now() + period.mul_f64(phase), period);
                every.set_missed_tick_behavior(MissedTickBehavior::Delay);
                every
            })
        };
        Traffic {
            group: pace(args.rate),
            direct: pace(args.direct_rate),
            next_worker: 0,
            pad: "x".repeat(args.payload),
        }
    }

    fn group_message(&self) -> String {
        format!(
            r#"{{"msg_type":"msg","target":"group","payload":{{"t":{},"pad":"{}"}}}}"#,
            stats::now_ns(),
            self.pad
        )
    }

    /// A command to the controller's next worker.
    fn command(&mut self, me: Member, per_group: usize) -> String {
        self.next_worker = self.next_worker % (per_group - 1) + 1;
        let to = Member {
            n: self.next_worker,
            ..me
        };
        format!(
            r#"{{"msg_type":"cmd","target":"direct","to_id":"{}","cmd":"work","payload":{{"t":{}}}}}"#,
            to.client_id(),
            stats::now_ns()
        )
    }
}

/// When a worker next leaves (controllers stay).
struct Churn {
    /// Mean time between one worker's reconnects; None: never.
    mean: Option<Duration>,
    next: Option<Instant>,
}

impl Churn {
    fn new(shared: &Shared, me: Member) -> Churn {
        let rate = shared.args.churn;
        let mean = (!me.is_controller() && rate > 0.0)
            .then(|| Duration::from_secs_f64(shared.workers() as f64 / rate));
        Churn { mean, next: None }
    }

    /// Draws the next departure, if none is set: exponential stays, so
    /// that reconnects come at `--churn` a second from the first minute
    /// on, each independent of the others.
    fn arm(&mut self) {
        if let (None, Some(mean)) = (self.next, self.mean) {
            let stay = -(1.0 - rand::random::<f64>()).ln();
            self.next = Some(Instant::now() + mean.mul_f64(stay.min(50.0)));
        }
    }
}

/// Until its recovery summary: where a connection resumed from, and what
/// each route replayed.
struct Pending {
    /// Per route: the epoch resumed from (None: asked `new`).
    asked: [Option<String>; 2],
    replayed: [u64; 2],
    deadline: Instant,
}

/// One connection of a member.
struct Session<'a> {
    shared: &'a Shared,
    me: Member,
    positions: &'a mut [Position; 2],
    ready: &'a mut bool,
    pending: Option<Pending>,
}

/// A future that never completes, for a timer that is not set.
async fn at(when: Option<Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn tick(every: &mut Option<Interval>) {
    match every {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl<'a> Session<'a> {
    fn new(
        shared: &'a Shared,
        me: Member,
        positions: &'a mut [Position; 2],
        ready: &'a mut bool,
    ) -> Session<'a> {
        let asked = [Kind::Group, Kind::Client].map(|k| {
            me.routes()
                .contains(&k)
                .then(|| positions[k as usize].epoch().map(str::to_owned))
                .flatten()
        });
        let pending = Some(Pending {
            asked,
            replayed: [0, 0],
            deadline: Instant::now() + SUMMARY_TIMEOUT,
        });
        Session {
            shared,
            me,
            positions,
            ready,
            pending,
        }
    }

    async fn run(mut self, mut ws: client::Ws, traffic: &mut Traffic, churn: &mut Churn) -> End {
        let (go, stop) = (&self.shared.go, &self.shared.stop);
        loop {
            let going = go.is_cancelled();
            if going {
                churn.arm();
            }
            // A worker leaves only once it has its positions.
            let leave = churn.next.filter(|_| self.pending.is_none());
            let summary_due = self.pending.as_ref().map(|p| p.deadline);
            let out = tokio::select! {
                _ = stop.cancelled() => {
                    close(&mut ws).await;
                    return End::Stop;
                }
                _ = go.cancelled(), if !going => None,
                _ = at(leave) => {
                    churn.next = None;
                    if rand::random::<bool>() {
                        close(&mut ws).await;
                    } // else: dropped without a close handshake
                    return End::Churn;
                }
                _ = at(summary_due) => {
                    self.shared.tally.add(C::RecoveryFailed, 1);
                    return End::Lost(format!("no recovery summary within {SUMMARY_TIMEOUT:?}"));
                }
                _ = tick(&mut traffic.group), if going => {
                    self.shared.tally.add(C::SentGroup, 1);
                    Some(traffic.group_message())
                }
                _ = tick(&mut traffic.direct), if going => {
                    self.shared.tally.add(C::SentDirect, 1);
                    Some(traffic.command(self.me, self.shared.args.per_group))
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => self.on_text(&text),
                    Some(Ok(Message::Close(frame))) => {
                        return End::Lost(match frame {
                            Some(f) => format!("closed by the hub: {} {}", u16::from(f.code), f.reason),
                            None => "closed by the hub without a code".into(),
                        });
                    }
                    Some(Ok(_)) => None,
                    Some(Err(e)) => return End::Lost(e.to_string()),
                    None => return End::Lost("connection ended".into()),
                },
            };
            if let Some(text) = out {
                if let Err(e) = ws.send(Message::text(text)).await {
                    return End::Lost(format!("send: {e}"));
                }
            }
        }
    }

    /// Judges one text frame; a worker's answer to a command, if any.
    fn on_text(&mut self, text: &str) -> Option<String> {
        if text.contains(r#""msg_type":"recovery""#) {
            self.on_summary(text);
            return None;
        }
        let (offset, epoch) = position_of(text)?; // presence events carry none
        let kind = Kind::of(text);
        let tally = &self.shared.tally;
        tally.add(C::Deliveries, 1);
        match &mut self.pending {
            Some(p) => {
                p.replayed[kind as usize] += 1;
                tally.add(C::Replayed, 1);
            }
            None => {
                if let Some(sent) = stats::field_u64(text, "\"t\"") {
                    self.shared.record_latency(sent);
                }
            }
        }
        self.judge(kind, epoch, offset);
        let command = kind == Kind::Client && text.contains(r#""msg_type":"cmd""#);
        (command && !self.me.is_controller()).then(|| {
            tally.add(C::Replies, 1);
            let controller = Member { n: 0, ..self.me };
            format!(
                r#"{{"msg_type":"msg","target":"direct","to_id":"{}","payload":{{"t":{}}}}}"#,
                controller.client_id(),
                stats::now_ns()
            )
        })
    }

    fn judge(&mut self, kind: Kind, epoch: &str, offset: u64) {
        let tally = &self.shared.tally;
        let loss = match kind {
            Kind::Group => C::LossGroup,
            Kind::Client => C::LossClient,
        };
        let who = self.me.client_id();
        match self.positions[kind as usize].see(epoch, offset) {
            Step::Next => {}
            Step::Skipped(n) => {
                tally.add(loss, n);
                tally.note(|| {
                    format!(
                        "{who}: {} route: {n} missing before {epoch}:{offset}",
                        kind.name()
                    )
                });
            }
            Step::Behind => {
                tally.add(C::OrderViolations, 1);
                tally.note(|| {
                    format!(
                        "{who}: {} route: {epoch}:{offset} out of order",
                        kind.name()
                    )
                });
            }
            Step::NewEpoch { before } => {
                tally.add(C::EpochChanges, 1);
                if before > 0 {
                    tally.add(loss, before);
                    tally.note(|| {
                        format!(
                            "{who}: {} route: new epoch, first seen {epoch}:{offset} ({before} missing)",
                            kind.name()
                        )
                    });
                }
            }
        }
    }

    fn on_summary(&mut self, text: &str) {
        let tally = &self.shared.tally;
        let who = self.me.client_id();
        let Some(pending) = self.pending.take() else {
            tally.add(C::RecoveryFailed, 1);
            tally.note(|| format!("{who}: a second recovery summary: {text}"));
            return;
        };
        let summary: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                tally.add(C::RecoveryFailed, 1);
                tally.note(|| format!("{who}: unreadable recovery summary: {e}"));
                return;
            }
        };
        for &kind in self.me.routes() {
            let Some(entry) = track::entry(&summary, kind) else {
                tally.add(C::RecoveryFailed, 1);
                tally.note(|| format!("{who}: no {} entry in {text}", kind.name()));
                continue;
            };
            let k = kind as usize;
            let Some(asked) = &pending.asked[k] else {
                // The first connect (`new`): the position to start from.
                self.positions[k].set(&entry.epoch, entry.offset);
                continue;
            };
            match track::verdict(Some(asked), &entry, pending.replayed[k]) {
                Verdict::Recovered => tally.add(C::Recovered, 1),
                Verdict::NewEpoch => tally.add(C::RecoveryNewEpoch, 1),
                Verdict::Failed(why) => {
                    tally.add(C::RecoveryFailed, 1);
                    tally.note(|| format!("{who}: {} route: {why}", kind.name()));
                }
            }
            // Nothing was replayed: carry on from the route's position (a
            // replay announced whole but short shows as a gap instead).
            if !entry.recovered {
                self.positions[k].set(&entry.epoch, entry.offset);
            }
        }
        if !*self.ready {
            *self.ready = true;
            self.shared.ready.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A close handshake started, bounded: the hub finishes it.
async fn close(ws: &mut client::Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
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
