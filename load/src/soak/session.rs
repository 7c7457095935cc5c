//! One connection of a member: a [`Session`] sends the controller's
//! traffic ([`Traffic`]: group messages and direct commands at their
//! paces), answers commands as a worker, judges every kept message and the
//! recovery summary (`crate::track`), records live latency, and ends on the
//! run's stop, its [`Churn`] departure, or a lost connection.

use std::sync::atomic::Ordering;
use std::time::Duration;

use aether_hub::history::position_of;
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::member::{Churn, End, Member};
use super::tally::C;
use super::{Args, Shared};
use crate::track::{self, Kind, Positions, Resume, Step, Verdict};
use crate::wait::{at, tick};
use crate::{client, stats};

/// How long a recovery summary may take after the upgrade.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(10);

/// A controller's two paces (unused by workers).
pub(super) struct Traffic {
    group: Option<Interval>,
    direct: Option<Interval>,
    next_worker: usize,
    pad: String,
}

impl Traffic {
    pub(super) fn new(args: &Args, me: Member) -> Traffic {
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

/// Until its recovery summary: where a connection resumed from, and what
/// each route replayed.
struct Pending {
    resume: Resume,
    deadline: Instant,
}

/// One connection of a member.
pub(super) struct Session<'a> {
    shared: &'a Shared,
    me: Member,
    positions: &'a mut Positions,
    ready: &'a mut bool,
    pending: Option<Pending>,
}

impl<'a> Session<'a> {
    pub(super) fn new(
        shared: &'a Shared,
        me: Member,
        positions: &'a mut Positions,
        ready: &'a mut bool,
    ) -> Session<'a> {
        let pending = Some(Pending {
            resume: Resume::new(positions, me.routes()),
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

    pub(super) async fn run(
        mut self,
        mut ws: client::Ws,
        traffic: &mut Traffic,
        churn: &mut Churn,
    ) -> End {
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
                    Some(Ok(Message::Close(frame))) => return End::Lost(client::closed(frame)),
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
                p.resume.replayed(kind);
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
            Kind::Client => C::LossClient,
            // (No broadcast in the soak.)
            Kind::Group | Kind::Broadcast => C::LossGroup,
        };
        let who = self.me.client_id();
        match self.positions[kind].see(epoch, offset) {
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
            // None: the first connect (`new`), the position to start from
            // taken. After `recovered: false` the position moves on to the
            // summary's too.
            let why = match pending.resume.judge(kind, &entry, self.positions) {
                None => continue,
                Some(Verdict::Recovered) => {
                    tally.add(C::Recovered, 1);
                    continue;
                }
                // Redis restarted while the socket was away: the
                // protocol's answer.
                Some(Verdict::NewEpoch) => {
                    tally.add(C::RecoveryNewEpoch, 1);
                    continue;
                }
                Some(Verdict::Mismatch(why)) => why,
                // History should have covered the socket's short absence.
                Some(Verdict::NotCovered) => format!(
                    "recovered: false in the same epoch {} (at {}): history did not cover the absence",
                    entry.epoch, entry.offset
                ),
            };
            tally.add(C::RecoveryFailed, 1);
            tally.note(|| format!("{who}: {} route: {why}", kind.name()));
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
