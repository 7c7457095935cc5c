//! One connection of a fleet member: it waits for the recovery summary
//! (judging the replay before it and the summary itself, `crate::track`),
//! sends the controller's paced group messages, counts the controller's
//! acknowledgements (the group's last acknowledged offset, for the tail
//! check), and judges every kept message a worker receives, recording the
//! latency of live ones and the arrival of broadcast probes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use aether_hub::history::position_of;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::member::{Member, State};
use super::tally::C;
use super::{unix_ms, wall_us, Shared};
use crate::client;
use crate::stats;
use crate::track::{self, Kind, Resume, Step, Verdict};
use crate::wait::{at, tick};

/// How long a recovery summary may take after the upgrade.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session ended.
pub(super) enum End {
    /// The run is over.
    Stop,
    /// The connection went (`was_up`: after its summary): come back.
    Lost { why: String, was_up: bool },
}

/// Until its recovery summary: where each route resumed from and what it
/// replayed, and since when it waits.
pub(super) struct Pending {
    resume: Resume,
    deadline: Instant,
}

/// One connection of a member.
pub(super) struct Session<'a> {
    pub(super) shared: &'a Shared,
    pub(super) me: Member,
    pub(super) state: &'a mut State,
    pub(super) pending: Option<Pending>,
}

impl Session<'_> {
    pub(super) async fn run(mut self, mut ws: client::Ws) -> End {
        self.pending = Some(Pending {
            resume: Resume::new(&self.state.positions, self.me.routes()),
            deadline: Instant::now() + SUMMARY_TIMEOUT,
        });
        let shared = self.shared;
        let end = loop {
            let going = shared.go.is_cancelled() && !shared.quiet.is_cancelled();
            if self.me.is_controller() && going && self.state.pace.is_none() {
                self.state.pace = shared.pace(self.me.group);
            }
            if !going {
                self.state.pace = None;
            }
            let up = self.pending.is_none();
            let summary_due = self.pending.as_ref().map(|p| p.deadline);
            let out = tokio::select! {
                _ = shared.stop.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    break Ok(());
                }
                _ = shared.go.cancelled(), if !shared.go.is_cancelled() => None,
                _ = shared.quiet.cancelled(), if going => None,
                _ = at(summary_due) => {
                    shared.tally.add(C::SummaryTimeouts, 1);
                    break Err(format!("no recovery summary within {SUMMARY_TIMEOUT:?}"));
                }
                _ = tick(&mut self.state.pace), if going && up => {
                    shared.tally.add(C::Sent, 1);
                    self.state.seq += 1;
                    Some(shared.group_message(self.state.seq))
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        self.on_text(&text);
                        None
                    }
                    Some(Ok(Message::Close(frame))) => break Err(client::closed(frame)),
                    Some(Ok(_)) => None,
                    Some(Err(e)) => break Err(e.to_string()),
                    None => break Err("connection ended".into()),
                },
            };
            if let Some(text) = out {
                if let Err(e) = ws.send(Message::text(text)).await {
                    break Err(format!("send: {e}"));
                }
            }
        };
        let was_up = self.pending.is_none();
        if was_up {
            shared.tally.up.fetch_sub(1, Ordering::Relaxed);
        }
        match end {
            Ok(()) => End::Stop,
            Err(why) => End::Lost { why, was_up },
        }
    }

    fn on_text(&mut self, text: &str) {
        let tally = &self.shared.tally;
        if text.contains(r#""msg_type":"recovery""#) {
            self.on_summary(text);
            return;
        }
        if text.contains(r#""msg_type":"ack""#) {
            if text.contains(r#""status":"ok""#) {
                tally.add(C::Acked, 1);
                if let (Some(offset), Some(acked)) = (
                    stats::field_u64(text, "\"offset\""),
                    self.shared.acked.get(self.me.group),
                ) {
                    acked.fetch_max(offset, Ordering::SeqCst);
                }
            } else {
                tally.add(C::AcksNotOk, 1);
                tally.note(|| format!("{}: {text}", self.me.client_id(self.shared.args.id)));
            }
            return;
        }
        let Some((offset, epoch)) = position_of(text) else {
            return; // presence events carry no position
        };
        let kind = Kind::of(text);
        tally.add(C::Deliveries, 1);
        let probe = match kind {
            Kind::Broadcast => stats::field_u64(text, "\"probe_id\""),
            Kind::Group | Kind::Client => None,
        };
        match &mut self.pending {
            Some(p) => {
                p.resume.replayed(kind);
                tally.add(C::Replayed, 1);
                if let Some(id) = probe {
                    tally.probe(id, None);
                }
            }
            None => {
                let delay = stats::field_u64(text, "\"t\"").map(|t| wall_us().saturating_sub(t));
                match (probe, delay) {
                    (Some(id), Some(us)) => tally.probe(id, Some(us)),
                    (None, Some(us)) => tally.latency(us, !self.state.affected),
                    _ => {}
                }
            }
        }
        let who = || self.me.client_id(self.shared.args.id);
        match self.state.positions[kind].see(epoch, offset) {
            Step::Next => {}
            Step::Skipped(n) => {
                tally.add(C::Gaps, n);
                tally.note(|| {
                    format!(
                        "{}: {} route: {n} missing before {epoch}:{offset}",
                        who(),
                        kind.name()
                    )
                });
            }
            Step::Behind => {
                tally.add(C::Duplicates, 1);
                tally.note(|| format!("{}: {} route: {epoch}:{offset} again", who(), kind.name()));
            }
            // Nothing in the fleet bench restarts Redis: an anomaly of its
            // own, however many of its offsets came before.
            Step::NewEpoch { .. } => {
                tally.add(C::EpochChanges, 1);
                tally.note(|| format!("{}: {} route: new epoch {epoch}", who(), kind.name()));
            }
        }
    }

    fn on_summary(&mut self, text: &str) {
        let shared = self.shared;
        let tally = &shared.tally;
        let who = self.me.client_id(shared.args.id);
        let Some(pending) = self.pending.take() else {
            tally.add(C::ReplayMismatch, 1);
            tally.note(|| format!("{who}: a second recovery summary: {text}"));
            return;
        };
        let summary: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                tally.add(C::ReplayMismatch, 1);
                tally.note(|| format!("{who}: unreadable recovery summary: {e}"));
                serde_json::Value::Null
            }
        };
        let mut whole = true;
        for &kind in self.me.routes() {
            let Some(entry) = track::entry(&summary, kind) else {
                tally.add(C::ReplayMismatch, 1);
                tally.note(|| format!("{who}: no {} entry in {text}", kind.name()));
                whole = false;
                continue;
            };
            // None: a first connect (`new`), the summary's position taken.
            let verdict = pending
                .resume
                .judge(kind, &entry, &mut self.state.positions);
            match verdict {
                None | Some(Verdict::Recovered) => {}
                // History did not cover the absence: the position moved
                // on to the summary's.
                Some(Verdict::NewEpoch | Verdict::NotCovered) => {
                    whole = false;
                    tally.note(|| format!("{who}: {} route: recovered: false", kind.name()));
                }
                Some(Verdict::Mismatch(why)) => {
                    whole = false;
                    tally.add(C::ReplayMismatch, 1);
                    tally.note(|| format!("{who}: {} route: {why}", kind.name()));
                }
            }
        }
        tally.up.fetch_add(1, Ordering::Relaxed);
        if !self.state.ever_up {
            self.state.ever_up = true;
            tally.ever_up.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(since) = self.state.dropped.take() {
            tally.add(
                if whole {
                    C::RecoveredTrue
                } else {
                    C::RecoveredFalse
                },
                1,
            );
            tally.back(since.elapsed().as_micros() as u64, unix_ms());
        }
    }
}
