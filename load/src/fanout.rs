//! `fanout`: G groups × N subscribers, one publisher per group sending at a
//! fixed rate (or as fast as a bounded in-flight window allows). Reports
//! deliveries/s, latency percentiles, loss and order violations.

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
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// Subscribers per group.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Messages per second per publisher; 0 = as fast as the window allows.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// With --rate 0: messages a publisher may have ahead of its slowest
    /// tracked subscriber.
    #[arg(long, default_value_t = 64)]
    window: u64,
    #[command(flatten)]
    measure: stats::Measure,
    /// Connects in flight while setting up.
    #[arg(long, default_value_t = 100)]
    parallel: usize,
    /// Every published frame asks for an acknowledgement (docs/protocol.md
    /// section 10); the publishers read and count them.
    #[arg(long)]
    acks: bool,
}

/// What one group's subscribers saw.
pub struct GroupState {
    /// Messages the publisher sent, and the highest seq each tracked
    /// subscriber has (subscriber 0 paces the publisher).
    pub sent: AtomicU64,
    pub paced: AtomicU64,
    /// Acknowledgements the publisher got: `ok`, and any other status.
    pub acked: AtomicU64,
    pub not_ok: AtomicU64,
}

impl GroupState {
    pub fn new() -> Arc<GroupState> {
        Arc::new(GroupState {
            sent: AtomicU64::new(0),
            paced: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            not_ok: AtomicU64::new(0),
        })
    }
}

/// What all subscribers saw together.
pub struct Totals {
    pub delivered: AtomicU64,
    pub order_violations: AtomicU64,
    pub latency: stats::Latencies,
}

impl Totals {
    pub fn new() -> Arc<Totals> {
        Arc::new(Totals {
            delivered: AtomicU64::new(0),
            order_violations: AtomicU64::new(0),
            latency: stats::Latencies::new(),
        })
    }
}

/// What the subscribers saw in the end.
pub struct Outcome {
    pub delivered: u64,
    pub loss: u64,
    pub order_violations: u64,
    pub latency: hdrhistogram::Histogram<u64>,
}

impl Totals {
    /// Waits (at most 10 s) for `expected` deliveries, stops the readers
    /// and every other task, and tells what arrived.
    pub async fn settle(
        &self,
        expected: u64,
        readers: Vec<tokio::task::JoinHandle<()>>,
        others: &[tokio::task::JoinHandle<()>],
    ) -> Outcome {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.delivered.load(Ordering::SeqCst) < expected
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for task in readers.iter().chain(others) {
            task.abort();
        }
        // Aborted readers flush their latency samples as they are dropped.
        for task in readers {
            let _ = task.await;
        }
        let delivered = self.delivered.load(Ordering::SeqCst);
        Outcome {
            delivered,
            loss: expected.saturating_sub(delivered),
            order_violations: self.order_violations.load(Ordering::SeqCst),
            latency: self.latency.snapshot(),
        }
    }
}

/// How a publisher paces itself.
#[derive(Clone, Copy)]
pub struct Pace {
    /// Messages per second; 0 = as fast as `window` allows.
    pub rate: u64,
    pub window: u64,
    pub payload: usize,
    /// Where in the first period this publisher starts (0 to 1). Spread
    /// evenly over the publishers: independent publishers at the same
    /// rate do not fire in lockstep, and a load that bursts every period
    /// measures the burst, not the hub's latency.
    pub phase: f64,
    /// Each frame asks for an acknowledgement.
    pub acks: bool,
}

pub async fn run(args: Args) -> Result<(), String> {
    args.hubs.check()?;
    let counters = Arc::new(Counters::default());
    let totals = Totals::new();
    let groups: Vec<Arc<GroupState>> = (0..args.groups).map(|_| GroupState::new()).collect();

    // Subscribers first, all connected before anyone publishes.
    eprintln!("connecting {} subscribers", args.groups * args.subscribers);
    let mut sockets = Vec::with_capacity(args.groups * args.subscribers);
    let permits = Arc::new(tokio::sync::Semaphore::new(args.parallel.max(1)));
    let mut connecting = Vec::new();
    let hubs = Arc::new(args.hubs.clone());
    for i in 0..args.groups * args.subscribers {
        let (g, n) = (i % args.groups, i / args.groups);
        let (hubs, permits) = (hubs.clone(), permits.clone());
        connecting.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let (group, client) = (format!("fan-g{g}"), format!("sub-{g}-{n}"));
            // A group's subscribers alternate over the hubs (not i, which
            // would put a whole group on one hub when the group count is
            // even): with two hubs every message crosses between them.
            hubs.connect(g + n, &group, &client)
                .await
                .map(|ws| (g, n, ws))
        }));
    }
    for c in connecting {
        sockets.push(c.await.map_err(|e| e.to_string())??);
    }

    let measure_from = Arc::new(AtomicU64::new(u64::MAX));
    let mut readers = Vec::new();
    for (g, n, ws) in sockets {
        let (group, totals, counters, from) = (
            groups[g].clone(),
            totals.clone(),
            counters.clone(),
            measure_from.clone(),
        );
        readers.push(tokio::spawn(subscribe(
            ws,
            n == 0,
            group,
            totals,
            counters,
            from,
        )));
    }

    // Let presence join storms drain before publishing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _progress = Progress::start("fanout", counters.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let pace = Pace {
        rate: args.rate,
        window: args.window,
        payload: args.measure.payload,
        phase: 0.0,
        acks: args.acks,
    };
    let publishers = start_publishers(&args.hubs, "fan-g", &groups, pace, &counters, &stop).await?;

    let measured = measure(
        &args.measure,
        &groups,
        args.subscribers,
        &totals,
        &measure_from,
        readers,
        &publishers,
        &stop,
    )
    .await;
    let shape = Shape {
        scenario: "fanout",
        groups_are: "groups",
        groups: args.groups,
        subscribers: args.subscribers,
        rate: args.rate,
        payload: args.measure.payload,
    };
    report(&shape, &measured, Some(Acks::count(args.acks, &groups)));
    Ok(())
}

/// What a fan-out shaped run (`fanout`, `nats-fanout`) was, for its report.
pub struct Shape {
    /// Its name: the summary line's first word and the JSON's `scenario`.
    pub scenario: &'static str,
    /// What the summary line calls its groups (`nats-fanout`: subjects).
    pub groups_are: &'static str,
    pub groups: usize,
    pub subscribers: usize,
    /// Messages per second per publisher; 0 = as fast as the window allows.
    pub rate: u64,
    pub payload: usize,
}

/// The acknowledgements of a run's publishers (`fanout` only).
pub struct Acks {
    /// `--acks`: the publishers asked for them.
    pub asked: bool,
    pub ok: u64,
    pub other: u64,
}

impl Acks {
    /// Sums what `groups`' publishers got.
    pub fn count(asked: bool, groups: &[Arc<GroupState>]) -> Acks {
        Acks {
            asked,
            ok: groups.iter().map(|g| g.acked.load(Ordering::SeqCst)).sum(),
            other: groups.iter().map(|g| g.not_ok.load(Ordering::SeqCst)).sum(),
        }
    }
}

/// Prints the end of a fan-out shaped run: the summary lines (with `acks`,
/// a line of them if the publishers asked for them), then as the last line
/// the JSON object (with `acks`, their fields after the others).
pub fn report(shape: &Shape, measured: &Measured, acks: Option<Acks>) {
    let Measured {
        seconds,
        deliveries,
        published,
        total_sent,
        expected,
        outcome:
            Outcome {
                delivered,
                loss,
                order_violations,
                latency,
            },
    } = measured;
    println!(
        "{}: {} {} x {} subscribers, rate {}: {:.0} deliveries/s, {:.0} published/s",
        shape.scenario,
        shape.groups,
        shape.groups_are,
        shape.subscribers,
        if shape.rate == 0 {
            "max".to_string()
        } else {
            shape.rate.to_string()
        },
        *deliveries as f64 / seconds,
        *published as f64 / seconds
    );
    println!("latency: {}", stats::describe(latency));
    println!("loss: {loss} of {expected}; order violations: {order_violations}");
    let mut summary = serde_json::json!({
        "scenario": shape.scenario,
        "groups": shape.groups,
        "subscribers": shape.subscribers,
        "rate": shape.rate,
        "payload_bytes": shape.payload,
        "seconds": seconds,
        "deliveries_per_sec": *deliveries as f64 / seconds,
        "published_per_sec": *published as f64 / seconds,
        "latency": stats::percentiles(latency),
        "expected": expected,
        "delivered": delivered,
        "loss": loss,
        "order_violations": order_violations,
    });
    if let Some(acks) = acks {
        if acks.asked {
            println!(
                "acks: {} ok, {} other, of {total_sent} sent",
                acks.ok, acks.other
            );
        }
        summary["acks"] = acks.asked.into();
        summary["acked_ok"] = acks.ok.into();
        summary["acked_other"] = acks.other.into();
    }
    println!("{summary}");
}

/// What a run measured, once its tail has been waited for.
pub struct Measured {
    pub seconds: f64,
    /// Deliveries and publications within the measured window.
    pub deliveries: u64,
    pub published: u64,
    /// Everything the publishers sent, and the deliveries that owes.
    pub total_sent: u64,
    pub expected: u64,
    pub outcome: Outcome,
}

/// Lets the started publishers run through the warm-up and the measured
/// window, stops them and waits (bounded) for the tail, so that every
/// scenario with this shape counts alike.
#[allow(clippy::too_many_arguments)] // the pieces of one run, lent by its owner
pub async fn measure(
    measure: &stats::Measure,
    groups: &[Arc<GroupState>],
    subscribers: usize,
    totals: &Totals,
    measure_from: &AtomicU64,
    readers: Vec<tokio::task::JoinHandle<()>>,
    publishers: &[tokio::task::JoinHandle<()>],
    stop: &tokio_util::sync::CancellationToken,
) -> Measured {
    tokio::time::sleep(measure.warmup()).await;
    let start_sent: u64 = groups.iter().map(|g| g.sent.load(Ordering::SeqCst)).sum();
    let start_delivered = totals.delivered.load(Ordering::SeqCst);
    measure_from.store(stats::now_ns(), Ordering::SeqCst);
    let started = std::time::Instant::now();
    tokio::time::sleep(measure.duration()).await;
    let seconds = started.elapsed().as_secs_f64();
    let end_delivered = totals.delivered.load(Ordering::SeqCst);
    let end_sent: u64 = groups.iter().map(|g| g.sent.load(Ordering::SeqCst)).sum();
    stop.cancel();
    // Publishers stop at their next message; their sockets stay open until
    // the tail is delivered.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Everything sent must arrive: wait for the tail, bounded.
    let total_sent: u64 = groups.iter().map(|g| g.sent.load(Ordering::SeqCst)).sum();
    let expected = total_sent * subscribers as u64;
    let outcome = totals.settle(expected, readers, publishers).await;
    Measured {
        seconds,
        deliveries: end_delivered - start_delivered,
        published: end_sent - start_sent,
        total_sent,
        expected,
        outcome,
    }
}

pub async fn subscribe(
    mut ws: client::Ws,
    paces: bool,
    group: Arc<GroupState>,
    totals: Arc<Totals>,
    counters: Arc<Counters>,
    measure_from: Arc<AtomicU64>,
) {
    let mut seen = Seen::new(paces, group, totals, counters, measure_from);
    while let Some(Ok(frame)) = ws.next().await {
        let Message::Text(text) = frame else { continue };
        seen.message(&text); // presence events carry no seq
    }
}

/// One subscriber's account of the messages it receives: order, counts,
/// the pace of its publisher if it is the tracked one, and latency once
/// the measured window has begun.
pub struct Seen {
    paces: bool,
    next_seq: u64,
    group: Arc<GroupState>,
    totals: Arc<Totals>,
    counters: Arc<Counters>,
    measure_from: Arc<AtomicU64>,
    // Flushes its samples when dropped, which an aborted reader is.
    latency: stats::Recorder,
}

impl Seen {
    pub fn new(
        paces: bool,
        group: Arc<GroupState>,
        totals: Arc<Totals>,
        counters: Arc<Counters>,
        measure_from: Arc<AtomicU64>,
    ) -> Seen {
        Seen {
            paces,
            next_seq: 0,
            latency: totals.latency.recorder(),
            group,
            totals,
            counters,
            measure_from,
        }
    }

    /// Counts one received text if it is one of [`message_text`]'s (it
    /// carries a seq and a send time); false if it is not.
    pub fn message(&mut self, text: &str) -> bool {
        let (Some(seq), Some(sent)) = (
            stats::field_u64(text, "\"seq\""),
            stats::field_u64(text, "\"t\""),
        ) else {
            return false;
        };
        if seq != self.next_seq {
            self.totals.order_violations.fetch_add(1, Ordering::Relaxed);
        }
        self.next_seq = seq + 1;
        self.totals.delivered.fetch_add(1, Ordering::Relaxed);
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if self.paces {
            self.group.paced.store(seq + 1, Ordering::Release);
        }
        if sent >= self.measure_from.load(Ordering::Relaxed) {
            self.latency.record(stats::now_ns().saturating_sub(sent));
        }
        true
    }
}

/// Connects one publisher per group (`{prefix}{g}`) and starts it at
/// `pace`, the phases of paced publishers spread evenly over the period.
pub async fn start_publishers(
    hubs: &Hubs,
    prefix: &str,
    groups: &[Arc<GroupState>],
    pace: Pace,
    counters: &Arc<Counters>,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let mut publishers = Vec::with_capacity(groups.len());
    for (g, group) in groups.iter().enumerate() {
        let (name, client) = (format!("{prefix}{g}"), format!("pub-{g}"));
        let ws = hubs.connect(g, &name, &client).await?;
        let pace = Pace {
            phase: g as f64 / groups.len() as f64,
            ..pace
        };
        publishers.push(tokio::spawn(publish(
            ws,
            pace,
            group.clone(),
            counters.clone(),
            stop.clone(),
        )));
    }
    Ok(publishers)
}

pub async fn publish(
    ws: client::Ws,
    args: Pace,
    group: Arc<GroupState>,
    counters: Arc<Counters>,
    stop: tokio_util::sync::CancellationToken,
) {
    let (mut ws, incoming) = ws.split();
    // Read what comes back (acknowledgements, presence events): a
    // publisher that never reads would overflow its queue on its acks.
    let _reading =
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(count_acks(incoming, group.clone())));
    let pad = "x".repeat(args.payload);
    let mut pacer = Pacer::new(&args);
    let mut seq = 0u64;
    while !stop.is_cancelled() {
        if !pacer.ready(seq, &group, &stop).await {
            return;
        }
        let text = message_text(seq, &pad, args.acks);
        if ws.send(Message::text(text)).await.is_err() {
            return;
        }
        seq += 1;
        group.sent.store(seq, Ordering::SeqCst);
        counters.sent.fetch_add(1, Ordering::Relaxed);
    }
    // Keep the socket open until the tail is delivered; the caller aborts.
    let _ = ws.flush().await;
    std::future::pending::<()>().await;
}

/// The text a publisher sends as message `seq`: the message with its seq
/// and send time, `pad` after them (the payload's size), asking for an
/// acknowledgement if `acks`.
pub fn message_text(seq: u64, pad: &str, acks: bool) -> String {
    let ask = if acks { r#","ack_id":"a"# } else { "" };
    format!(
        r#"{{"msg_type":"msg","target":"group","payload":{{"seq":{seq},"t":{},"pad":"{pad}"}}{ask}{}}}"#,
        stats::now_ns(),
        if acks {
            format!(r#"{seq}""#)
        } else {
            String::new()
        },
    )
}

/// When a publisher may send its next message: on the ticks of its rate,
/// or at full speed while it is less than a window ahead of its group's
/// tracked subscriber.
pub struct Pacer {
    ticker: Option<tokio::time::Interval>,
    window: u64,
}

impl Pacer {
    pub fn new(pace: &Pace) -> Pacer {
        let ticker = (pace.rate > 0).then(|| {
            let period = Duration::from_secs_f64(1.0 / pace.rate as f64);
            let first = tokio::time::Instant::now() + period.mul_f64(pace.phase);
            let mut t = tokio::time::interval_at(first, period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            t
        });
        Pacer {
            ticker,
            window: pace.window,
        }
    }

    /// Waits until message `seq` may go; false if `stop` came while
    /// waiting for the window.
    pub async fn ready(
        &mut self,
        seq: u64,
        group: &GroupState,
        stop: &tokio_util::sync::CancellationToken,
    ) -> bool {
        match &mut self.ticker {
            Some(t) => {
                t.tick().await;
            }
            None => {
                while seq >= group.paced.load(Ordering::Acquire) + self.window {
                    if stop.is_cancelled() {
                        return false;
                    }
                    tokio::task::yield_now().await;
                }
            }
        }
        true
    }
}

/// Counts a publisher's acknowledgements by status.
async fn count_acks(
    mut incoming: futures_util::stream::SplitStream<client::Ws>,
    group: Arc<GroupState>,
) {
    while let Some(Ok(frame)) = incoming.next().await {
        let Message::Text(text) = frame else { continue };
        if !text.contains(r#""msg_type":"ack""#) {
            continue;
        }
        if text.contains(r#""status":"ok""#) {
            group.acked.fetch_add(1, Ordering::Relaxed);
        } else {
            group.not_ok.fetch_add(1, Ordering::Relaxed);
        }
    }
}
