//! One socket of the fleet, for the whole run: connects (during setup,
//! through the setup gate), and when its hub goes away, reconnects to
//! another hub chosen at random with its `since_*` positions after a
//! full-jitter backoff (`backoff.rs`; a 503 is one more failure to back
//! off from, or with `--retry-after` a wait as long as the hub said). Each
//! connection is a `session.rs`; what the member keeps across them is its
//! [`State`]: its positions, whether it was ever dropped, the controller's
//! pace and `ack_id` numbering. At the end each worker compares its last
//! group offset with the last one its controller had acknowledged:
//! whatever is missing at the tail is lost too.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::{Instant, Interval};

use super::session::{End, Session};
use super::tally::C;
use super::{unix_ms, Shared};
use crate::client::{self, OpenError};
use crate::track::{Ended, Kind, Positions};

/// Connect attempts for one (re)connect; the run's end stops them sooner.
const ATTEMPTS: u32 = 10_000;

/// Socket `i` of this process: member `n` of group `group` (0: the
/// group's controller).
#[derive(Clone, Copy)]
pub(super) struct Member {
    pub(super) i: usize,
    pub(super) group: usize,
    pub(super) n: usize,
}

impl Member {
    pub(super) fn is_controller(self) -> bool {
        self.n == 0
    }

    fn group_id(self, id: usize) -> String {
        format!("f{id}-g{}", self.group)
    }

    pub(super) fn client_id(self, id: usize) -> String {
        format!("f{id}-g{}-{}", self.group, self.n)
    }

    /// The routes it resumes: a controller is the only sender of its
    /// group, so nothing of its group route is meant for it.
    pub(super) fn routes(self) -> &'static [Kind] {
        if self.is_controller() {
            &[Kind::Broadcast]
        } else {
            &[Kind::Group, Kind::Broadcast]
        }
    }
}

/// What a member keeps across its connections.
pub(super) struct State {
    /// Its positions; an epoch left is forgotten (another is an anomaly
    /// of its own here: nothing in the fleet bench restarts Redis).
    pub(super) positions: Positions,
    /// Ever dropped: its latency no longer counts among the others'.
    pub(super) affected: bool,
    /// The controller's pace, from go to quiet.
    pub(super) pace: Option<Interval>,
    /// The controller's next `ack_id` number (unique for the whole run:
    /// the hub drops a resend of an `ack_id` it already published).
    pub(super) seq: u64,
    /// When it lost its hub, until its return's summary.
    pub(super) dropped: Option<Instant>,
    /// Its first summary was counted.
    pub(super) ever_up: bool,
}

/// One member's life until the run stops.
pub(super) async fn life(shared: Arc<Shared>, me: Member) {
    let mut state = State {
        positions: Positions::new(Ended::Forget),
        affected: false,
        pace: None,
        seq: 0,
        dropped: None,
        ever_up: false,
    };
    let hubs = shared.args.hubs.count().max(1);
    let mut hub = (me.i + shared.args.id) % hubs;
    let mut first = true;
    loop {
        let Some(ws) = connect(&shared, me, &state, &mut hub, first).await else {
            break;
        };
        first = false;
        let session = Session {
            shared: &shared,
            me,
            state: &mut state,
            pending: None,
        };
        match session.run(ws).await {
            End::Stop => break,
            End::Lost { why, was_up } => {
                if was_up {
                    shared.tally.dropped(unix_ms());
                    state.affected = true;
                    state.dropped = Some(Instant::now());
                } else {
                    // A return that failed before its summary: the same
                    // absence goes on.
                    shared.tally.add(C::ConnectFailures, 1);
                }
                // A dead hub's sockets end without a close frame: those
                // are the storm, counted, not anomalies.
                if !(why.contains("Connection reset") || why == "connection ended") {
                    shared
                        .tally
                        .note(|| format!("{}: {why}", me.client_id(shared.args.id)));
                }
                hub = other_hub(hub, hubs);
            }
        }
    }
    if !me.is_controller() {
        tail_check(&shared, me, &state);
    }
}

/// Whatever the controller had acknowledged beyond this worker's last
/// group offset never reached it.
fn tail_check(shared: &Shared, me: Member, state: &State) {
    let Some(acked) = shared.acked.get(me.group) else {
        return;
    };
    let acked = acked.load(Ordering::SeqCst);
    let seen = state.positions[Kind::Group].offset();
    if acked > seen {
        shared.tally.add(C::TailLoss, acked - seen);
        shared.tally.note(|| {
            format!(
                "{}: group offsets {}..={acked} acknowledged but never received",
                me.client_id(shared.args.id),
                seen + 1
            )
        });
    }
}

/// Another hub than `hub`, at random, as a load balancer would pick.
fn other_hub(hub: usize, hubs: usize) -> usize {
    if hubs < 2 {
        return 0;
    }
    (hub + rand::random_range(1..hubs)) % hubs
}

/// Opens `me`'s socket with its positions: its `first` attempt at once
/// (through the setup gate), any other after a backoff draw whose window
/// grows with each failure, moving to another hub after each. None when
/// the run stopped first.
async fn connect(
    shared: &Shared,
    me: Member,
    state: &State,
    hub: &mut usize,
    first: bool,
) -> Option<client::Ws> {
    let id = shared.args.id;
    let (group, client, query) = (
        me.group_id(id),
        me.client_id(id),
        state.positions.query(me.routes()),
    );
    let hubs = shared.args.hubs.count().max(1);
    let mut retry_after = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 || !first {
            let wait = shared.backoff.draw(attempt, retry_after);
            tokio::select! {
                _ = shared.stop.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let _permit = if first && attempt == 0 {
            tokio::select! {
                _ = shared.stop.cancelled() => return None,
                p = shared.gate.acquire() => Some(p.ok()?),
            }
        } else {
            None
        };
        let upgrade = match shared
            .args
            .hubs
            .upgrade_to(*hub, me.i, &group, &client, &query)
        {
            Ok(u) => u,
            Err(e) => {
                shared.tally.add(C::ConnectFailures, 1);
                shared.tally.note(|| format!("{client}: {e}"));
                return None;
            }
        };
        let opened = tokio::select! {
            _ = shared.stop.cancelled() => return None,
            o = shared.args.hubs.open_within(upgrade, shared.connect_timeout) => o,
        };
        retry_after = None;
        match opened {
            Ok(ws) => return Some(ws),
            Err(OpenError::Refused {
                status: 503,
                retry_after: after,
            }) => {
                shared.tally.add(C::Refused503, 1);
                retry_after = after;
            }
            Err(e @ OpenError::Refused { .. }) => {
                shared.tally.add(C::RefusedOther, 1);
                shared.tally.note(|| format!("{client}: refused: {e}"));
            }
            Err(OpenError::Failed(e)) => {
                shared.tally.add(C::ConnectFailures, 1);
                // A dead hub refuses every connect: those are expected in
                // a storm and would drown the other notes.
                if !e.contains("Connection refused") {
                    shared.tally.note(|| format!("{client}: connect: {e}"));
                }
            }
        }
        *hub = other_hub(*hub, hubs);
    }
    shared
        .tally
        .note(|| format!("{client}: gave up after {ATTEMPTS} connect attempts"));
    None
}
