//! What a fleet process counts and measures, and how it writes it down:
//! the counters every socket bumps ([`C`], [`COLUMNS`]), the latency
//! histograms of live group messages (all sockets, and the "others":
//! sockets that were never dropped), the broadcast probes' arrivals and
//! the reconnect times, the CSV row a second and the histogram lines
//! (`--hist`) that let `benches/fleet.sh` merge several processes exactly.
//!
//! Latencies are kept in microseconds. Per-second histograms have two
//! significant digits (a few hundred buckets at most, one line each); the
//! probes' and reconnects' three.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Anomalies printed on stderr (all are counted).
const NOTES_MAX: u64 = 100;

/// What is counted: the CSV's columns, in order.
#[derive(Clone, Copy)]
pub(super) enum C {
    Deliveries,
    Replayed,
    Sent,
    Acked,
    AcksNotOk,
    Drops,
    Reconnects,
    RecoveredTrue,
    RecoveredFalse,
    ReplayMismatch,
    Gaps,
    Duplicates,
    EpochChanges,
    ConnectFailures,
    Refused503,
    RefusedOther,
    SummaryTimeouts,
    ProbeArrivals,
    ProbeReplayed,
    TailLoss,
}

pub(super) const COLUMNS: [(C, &str); 20] = [
    (C::Deliveries, "deliveries"),
    (C::Replayed, "replayed"),
    (C::Sent, "sent"),
    (C::Acked, "acked"),
    (C::AcksNotOk, "acks_not_ok"),
    (C::Drops, "drops"),
    (C::Reconnects, "reconnects"),
    (C::RecoveredTrue, "recovered_true"),
    (C::RecoveredFalse, "recovered_false"),
    (C::ReplayMismatch, "replay_mismatch"),
    (C::Gaps, "gaps"),
    (C::Duplicates, "duplicates"),
    (C::EpochChanges, "epoch_changes"),
    (C::ConnectFailures, "connect_failures"),
    (C::Refused503, "refused_503"),
    (C::RefusedOther, "refused_other"),
    (C::SummaryTimeouts, "summary_timeouts"),
    (C::ProbeArrivals, "probe_arrivals"),
    (C::ProbeReplayed, "probe_replayed"),
    (C::TailLoss, "tail_loss"),
];

/// A histogram of microseconds from 1 µs to 10 minutes.
pub(super) fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, sigfig)
        .unwrap_or_else(|_| Histogram::new(sigfig).unwrap_or_else(|_| unreachable!("valid")))
}

/// One probe's arrivals in this process.
pub(super) struct ProbeSeen {
    pub(super) live: u64,
    pub(super) replayed: u64,
    pub(super) arrival: Histogram<u64>,
}

/// Counters, gauges and histograms every task feeds.
pub(super) struct Tally {
    counts: [AtomicU64; COLUMNS.len()],
    /// Sockets connected with their recovery summary read.
    pub(super) up: AtomicI64,
    /// Sockets that got their first summary at least once.
    pub(super) ever_up: AtomicU64,
    /// Unix ms of the first drop and of the last return after one (0: none).
    pub(super) first_drop_ms: AtomicU64,
    pub(super) last_back_ms: AtomicU64,
    second_all: Mutex<Histogram<u64>>,
    second_others: Mutex<Histogram<u64>>,
    reconnect: Mutex<Histogram<u64>>,
    probes: Mutex<BTreeMap<u64, ProbeSeen>>,
    notes: AtomicU64,
}

impl Tally {
    pub(super) fn new() -> Tally {
        Tally {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            up: AtomicI64::new(0),
            ever_up: AtomicU64::new(0),
            first_drop_ms: AtomicU64::new(0),
            last_back_ms: AtomicU64::new(0),
            second_all: Mutex::new(histogram(2)),
            second_others: Mutex::new(histogram(2)),
            reconnect: Mutex::new(histogram(3)),
            probes: Mutex::new(BTreeMap::new()),
            notes: AtomicU64::new(0),
        }
    }

    pub(super) fn add(&self, c: C, n: u64) {
        self.counts[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn read(&self) -> [u64; COLUMNS.len()] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }

    pub(super) fn get(&self, c: C) -> u64 {
        self.counts[c as usize].load(Ordering::Relaxed)
    }

    /// One live group message's latency; `other` when its socket was
    /// never dropped.
    pub(super) fn latency(&self, us: u64, other: bool) {
        record(&self.second_all, us);
        if other {
            record(&self.second_others, us);
        }
    }

    /// A socket that lost its hub.
    pub(super) fn dropped(&self, unix_ms: u64) {
        self.add(C::Drops, 1);
        let _ = self.first_drop_ms.compare_exchange(
            0,
            unix_ms.max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A dropped socket back with its summary, `us` after its drop.
    pub(super) fn back(&self, us: u64, unix_ms: u64) {
        self.add(C::Reconnects, 1);
        record(&self.reconnect, us);
        self.last_back_ms.fetch_max(unix_ms, Ordering::Relaxed);
    }

    /// Probe `id` reached a socket: live after `us`, or replayed.
    pub(super) fn probe(&self, id: u64, us: Option<u64>) {
        let Ok(mut probes) = self.probes.lock() else {
            return;
        };
        let seen = probes.entry(id).or_insert_with(|| ProbeSeen {
            live: 0,
            replayed: 0,
            arrival: histogram(3),
        });
        match us {
            Some(us) => {
                self.add(C::ProbeArrivals, 1);
                seen.live += 1;
                let _ = seen.arrival.record(us.max(1));
            }
            None => {
                self.add(C::ProbeReplayed, 1);
                seen.replayed += 1;
            }
        }
    }

    /// The last second's histograms (all, others), and fresh ones.
    pub(super) fn take_second(&self) -> (Histogram<u64>, Histogram<u64>) {
        (take(&self.second_all), take(&self.second_others))
    }

    pub(super) fn reconnects(&self) -> Histogram<u64> {
        self.reconnect
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| histogram(3))
    }

    /// Every probe seen: id, live arrivals, replays, arrival histogram.
    pub(super) fn probes(&self) -> Vec<(u64, u64, u64, Histogram<u64>)> {
        self.probes
            .lock()
            .map(|p| {
                p.iter()
                    .map(|(id, s)| (*id, s.live, s.replayed, s.arrival.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Prints an anomaly on stderr, the first `NOTES_MAX` only.
    pub(super) fn note(&self, what: impl FnOnce() -> String) {
        if self.notes.fetch_add(1, Ordering::Relaxed) < NOTES_MAX {
            eprintln!("fleet: {}", what());
        }
    }
}

fn record(h: &Mutex<Histogram<u64>>, us: u64) {
    if let Ok(mut h) = h.lock() {
        let _ = h.record(us.max(1));
    }
}

fn take(h: &Mutex<Histogram<u64>>) -> Histogram<u64> {
    match h.lock() {
        Ok(mut h) => {
            let taken = h.clone();
            h.reset();
            taken
        }
        Err(_) => histogram(2),
    }
}

/// Milliseconds at quantile `q` (0 for an empty histogram).
pub(super) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1e3
    }
}

/// `{p50, p90, p99, p999, max, samples}` in milliseconds, of microseconds.
pub(super) fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "p50_ms": ms(h, 0.50),
        "p90_ms": ms(h, 0.90),
        "p99_ms": ms(h, 0.99),
        "p999_ms": ms(h, 0.999),
        "max_ms": if h.is_empty() { 0.0 } else { h.max() as f64 / 1e3 },
        "samples": h.len(),
    })
}

/// The CSV header (`unix_s` first: rows of several processes are joined
/// on it).
pub(super) fn header() -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|(_, n)| *n).collect();
    format!(
        "unix_s,elapsed_s,phase,sockets,up,{},p50_ms,p99_ms,max_ms,samples,others_p99_ms,others_samples",
        names.join(",")
    )
}

/// Where rows and histogram lines go, if anywhere.
pub(super) struct Sink {
    csv: Option<std::io::BufWriter<std::fs::File>>,
    hist: Option<std::io::BufWriter<std::fs::File>>,
}

impl Sink {
    pub(super) fn open(
        csv: Option<&std::path::Path>,
        hist: Option<&std::path::Path>,
    ) -> Result<Sink, String> {
        let create = |p: &std::path::Path| {
            std::fs::File::create(p)
                .map(std::io::BufWriter::new)
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        let mut sink = Sink {
            csv: csv.map(create).transpose()?,
            hist: hist.map(create).transpose()?,
        };
        let head = header();
        sink.line_csv(&head);
        Ok(sink)
    }

    pub(super) fn line_csv(&mut self, line: &str) {
        if let Some(w) = &mut self.csv {
            let _ = writeln!(w, "{line}");
            let _ = w.flush();
        }
    }

    /// One line per non-empty bucket: `unix_s,kind,value_us,count`.
    pub(super) fn hist(&mut self, unix_s: u64, kind: &str, h: &Histogram<u64>) {
        let Some(w) = &mut self.hist else { return };
        for v in h.iter_recorded() {
            let (value, count) = (v.value_iterated_to(), v.count_at_value());
            let _ = writeln!(w, "{unix_s},{kind},{value},{count}");
        }
        let _ = w.flush();
    }
}
