//! One connection of a fleet member: it waits for the recovery summary
//! (judging the replay before it and the summary itself, `route.rs`), sends
//! the controller's paced group messages, counts the controller's
//! acknowledgements (the group's last acknowledged offset, for the tail
//! check), and judges every kept message a worker receives, recording the
//! latency of live ones and the arrival of broadcast probes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use aether_hub::history::position_of;
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, Interval};
use tokio_tungstenite::tungstenite::Message;

use super::member::{Member, State};
use super::route::{self, Kind, Step, Verdict};
use super::tally::C;
use super::{unix_ms, wall_us, Shared};
use crate::client;
use crate::stats;

/// How long a recovery summary may take after the upgrade.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session ended.
pub(super) enum End {
    /// The run is over.
    Stop,
    /// The connection went (`was_up`: after its summary): come back.
    Lost { why: String, was_up: bool },
}

/// Until its recovery summary: what each route replayed, and since when
/// it waits.
pub(super) struct Pending {
    asked: [Option<String>; 2],
    replayed: [u64; 2],
    deadline: Instant,
}

/// One connection of a member.
pub(super) struct Session<'a> {
    pub(super) shared: &'a Shared,
    pub(super) me: Member,
    pub(super) state: &'a mut State,
    pub(super) pending: Option<Pending>,
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

impl Session<'_> {
    pub(super) async fn run(mut self, mut ws: client::Ws) -> End {
        let asked = [Kind::Group, Kind::Broadcast].map(|k| {
            self.me
                .routes()
                .contains(&k)
                .then(|| self.state.tracks[k as usize].epoch().map(str::to_owned))
                .flatten()
        });
        self.pending = Some(Pending {
            asked,
            replayed: [0, 0],
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
                    Some(Ok(Message::Close(frame))) => {
                        break Err(match frame {
                            Some(f) => format!("closed by the hub: {} {}", u16::from(f.code), f.reason),
                            None => "closed by the hub without a code".into(),
                        });
                    }
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
            Kind::Group => None,
        };
        match &mut self.pending {
            Some(p) => {
                p.replayed[kind as usize] += 1;
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
        match self.state.tracks[kind as usize].see(epoch, offset) {
            Step::Next => {}
            Step::Gap(n) => {
                tally.add(C::Gaps, n);
                tally.note(|| {
                    format!(
                        "{}: {} route: {n} missing before {epoch}:{offset}",
                        who(),
                        kind.name()
                    )
                });
            }
            Step::Duplicate => {
                tally.add(C::Duplicates, 1);
                tally.note(|| format!("{}: {} route: {epoch}:{offset} again", who(), kind.name()));
            }
            Step::NewEpoch => {
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
            let k = kind as usize;
            let Some(entry) = route::entry(&summary, kind) else {
                tally.add(C::ReplayMismatch, 1);
                tally.note(|| format!("{who}: no {} entry in {text}", kind.name()));
                whole = false;
                continue;
            };
            let Some(asked) = &pending.asked[k] else {
                // A first connect (`new`): the position to start from.
                self.state.tracks[k].set(&entry.epoch, entry.offset);
                continue;
            };
            match route::verdict(asked, &entry, pending.replayed[k]) {
                Verdict::Recovered => {}
                Verdict::NotRecovered => {
                    whole = false;
                    tally.note(|| format!("{who}: {} route: recovered: false", kind.name()));
                    self.state.tracks[k].set(&entry.epoch, entry.offset);
                }
                Verdict::Mismatch(why) => {
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
