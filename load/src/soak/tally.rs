//! What the soak counts: the CSV's columns ([`C`], [`COLUMNS`]), and the
//! [`Tally`] of counters every task bumps, with the anomaly log. The run
//! (`soak.rs`) prints the rows from it; members and sessions bump it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Anomalies printed on stderr (all are counted).
const NOTES_MAX: u64 = 200;

/// What is counted: the CSV's columns, in order.
#[derive(Clone, Copy)]
pub(super) enum C {
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

pub(super) const COLUMNS: [(C, &str); 18] = [
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
pub(super) struct Tally {
    counts: [AtomicU64; COLUMNS.len()],
    pub(super) connected: AtomicI64,
    notes: AtomicU64,
}

impl Tally {
    pub(super) fn new() -> Tally {
        Tally {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            connected: AtomicI64::new(0),
            notes: AtomicU64::new(0),
        }
    }

    pub(super) fn add(&self, c: C, n: u64) {
        self.counts[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn read(&self) -> [u64; COLUMNS.len()] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Prints an anomaly on stderr, the first `NOTES_MAX` only.
    pub(super) fn note(&self, what: impl FnOnce() -> String) {
        if self.notes.fetch_add(1, Ordering::Relaxed) < NOTES_MAX {
            eprintln!("soak: {}", what());
        }
    }
}
