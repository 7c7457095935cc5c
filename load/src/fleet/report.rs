//! What a fleet process writes down: a row a second on whole wall seconds
//! (with the second's latency histograms, for `--csv` and `--hist`), a
//! progress line every 5 s, and at the end the summary and the JSON line.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::{Instant, MissedTickBehavior};

use super::tally::{self, C, COLUMNS};
use super::{wall_us, Phase, Shared};

/// One second's row, for the writer.
pub(super) struct Row {
    pub(super) unix_s: u64,
    pub(super) line: String,
    pub(super) all: Histogram<u64>,
    pub(super) others: Histogram<u64>,
    /// Counted in the run's latency (traffic or quiet).
    pub(super) traffic: bool,
}

/// A row a second on whole wall seconds (rows of several processes join
/// on `unix_s`), and a progress line every 5 s.
pub(super) async fn report(
    shared: Arc<Shared>,
    phase: Arc<std::sync::Mutex<Phase>>,
    started: Instant,
    rows: tokio::sync::mpsc::UnboundedSender<Row>,
) {
    let wall = wall_us();
    let to_next_second = 1_000_000 - wall % 1_000_000;
    let first_unix_s = (wall + to_next_second) / 1_000_000;
    let first = Instant::now() + Duration::from_micros(to_next_second);
    let mut every = tokio::time::interval_at(first, Duration::from_secs(1));
    every.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last = shared.tally.read();
    for n in 0u64.. {
        let due = every.tick().await;
        let now = shared.tally.read();
        let (all, others) = shared.tally.take_second();
        let phase = phase.lock().map(|p| *p).unwrap_or(Phase::End);
        // The second the row was due at, not the one it was written in: a
        // process starved for a moment must not put two rows on one second
        // (and none on the one before).
        let unix_s = first_unix_s + (due - first).as_secs_f64().round() as u64;
        let counts: Vec<String> = (0..COLUMNS.len())
            .map(|i| (now[i] - last[i]).to_string())
            .collect();
        let up = shared.tally.up.load(Ordering::Relaxed);
        let line = format!(
            "{unix_s},{:.1},{},{},{up},{},{:.3},{:.3},{:.3},{},{:.3},{}",
            started.elapsed().as_secs_f64(),
            phase.name(),
            shared.args.sockets,
            counts.join(","),
            tally::ms(&all, 0.5),
            tally::ms(&all, 0.99),
            if all.is_empty() {
                0.0
            } else {
                all.max() as f64 / 1e3
            },
            all.len(),
            tally::ms(&others, 0.99),
            others.len(),
        );
        if n % 5 == 4 {
            eprintln!(
                "[{:6.1}s] fleet {} {}: {up} of {} up, {} deliveries/s, p99 {:.1} ms, reconnects {}, recovered {}/{}, gaps {}, dups {}, 503s {}",
                started.elapsed().as_secs_f64(),
                shared.args.id,
                phase.name(),
                shared.args.sockets,
                now[C::Deliveries as usize] - last[C::Deliveries as usize],
                tally::ms(&all, 0.99),
                now[C::Reconnects as usize],
                now[C::RecoveredTrue as usize],
                now[C::RecoveredFalse as usize],
                now[C::Gaps as usize],
                now[C::Duplicates as usize],
                now[C::Refused503 as usize],
            );
        }
        last = now;
        let traffic = matches!(phase, Phase::Traffic | Phase::Quiet);
        let row = Row {
            unix_s,
            line,
            all,
            others,
            traffic,
        };
        if rows.send(row).is_err() {
            return;
        }
    }
}

/// What the run measured, for the summary and the JSON line.
pub(super) struct Summary {
    pub(super) setup_seconds: f64,
    pub(super) up_after_setup: u64,
    pub(super) up_at_end: i64,
    pub(super) go_unix_ms: u64,
    pub(super) all: Histogram<u64>,
    pub(super) others: Histogram<u64>,
    pub(super) reconnects: Histogram<u64>,
    pub(super) probes: Vec<(u64, u64, u64, Histogram<u64>)>,
}

impl Summary {
    pub(super) fn print(&self, shared: &Shared) {
        let args = &shared.args;
        let t = &shared.tally;
        let totals: serde_json::Map<String, serde_json::Value> = COLUMNS
            .iter()
            .map(|(c, name)| ((*name).to_owned(), t.get(*c).into()))
            .collect();
        let never_up = (args.sockets as u64).saturating_sub(t.ever_up.load(Ordering::SeqCst));
        let ms_or_null = |v: u64| (v > 0).then_some(v);
        println!(
            "fleet {}: {} sockets ({} up after setup in {:.1} s, {} up at the end); {} deliveries, {} drops, {} back ({} recovered: true, {} false), gaps {}, duplicates {}, replay mismatches {}, tail loss {}",
            args.id,
            args.sockets,
            self.up_after_setup,
            self.setup_seconds,
            self.up_at_end,
            t.get(C::Deliveries),
            t.get(C::Drops),
            t.get(C::Reconnects),
            t.get(C::RecoveredTrue),
            t.get(C::RecoveredFalse),
            t.get(C::Gaps),
            t.get(C::Duplicates),
            t.get(C::ReplayMismatch),
            t.get(C::TailLoss),
        );
        println!(
            "group latency: p50 {:.2} ms, p99 {:.2} ms (never dropped: p99 {:.2} ms); back after a drop: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            tally::ms(&self.all, 0.5),
            tally::ms(&self.all, 0.99),
            tally::ms(&self.others, 0.99),
            tally::ms(&self.reconnects, 0.5),
            tally::ms(&self.reconnects, 0.99),
            tally::ms(&self.reconnects, 1.0),
        );
        let probes: Vec<serde_json::Value> = self
            .probes
            .iter()
            .map(|(id, live, replayed, arrival)| {
                println!(
                    "probe {id}: {live} live + {replayed} replayed of {} sockets; arrival p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    args.sockets,
                    tally::ms(arrival, 0.5),
                    tally::ms(arrival, 0.99),
                    tally::ms(arrival, 1.0),
                );
                serde_json::json!({
                    "probe_id": id,
                    "live": live,
                    "replayed": replayed,
                    "arrival": tally::percentiles(arrival),
                })
            })
            .collect();
        let summary = serde_json::json!({
            "scenario": "fleet",
            "id": args.id,
            "sockets": args.sockets,
            "groups": shared.groups,
            "group_size": args.group_size,
            "group_rate": args.group_rate,
            "hubs": args.hubs.count(),
            "setup_seconds": self.setup_seconds,
            "up_after_setup": self.up_after_setup,
            "never_up": never_up,
            "up_at_end": self.up_at_end,
            "go_unix_ms": self.go_unix_ms,
            "duration": args.duration,
            "totals": totals,
            "latency": tally::percentiles(&self.all),
            "latency_others": tally::percentiles(&self.others),
            "reconnect": tally::percentiles(&self.reconnects),
            "first_drop_unix_ms": ms_or_null(t.first_drop_ms.load(Ordering::SeqCst)),
            "last_back_unix_ms": ms_or_null(t.last_back_ms.load(Ordering::SeqCst)),
            "probes_sent": shared.probes_sent.load(Ordering::SeqCst),
            "probes": probes,
            "token": args.hubs.token_kind(),
            "tls": args.hubs.tls(),
        });
        println!("{summary}");
    }
}
