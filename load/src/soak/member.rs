//! A member of the soak: one socket of the load ([`Member`]: its group,
//! its role, its hub), and its life: connect with its positions, run a
//! [`Session`], and come back after a churn ([`Churn`]: when a worker
//! leaves) or a lost connection, resuming from where it was, until the run
//! ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::session::{Session, Traffic};
use super::tally::C;
use super::track::{Kind, Position};
use super::Shared;
use crate::client;

/// Connect attempts for one (re)connect, `RETRY` apart.
const CONNECT_ATTEMPTS: usize = 240;
const RETRY: Duration = Duration::from_millis(500);

/// One socket of the load: member `n` of group `group` (0: controller).
#[derive(Clone, Copy)]
pub(super) struct Member {
    pub(super) group: usize,
    pub(super) n: usize,
}

impl Member {
    pub(super) fn is_controller(self) -> bool {
        self.n == 0
    }

    fn group_id(self) -> String {
        format!("soak-g{}", self.group)
    }

    pub(super) fn client_id(self) -> String {
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
    pub(super) fn routes(self) -> &'static [Kind] {
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
pub(super) enum End {
    Stop,
    Churn,
    Lost(String),
}

/// One member's life: connect, run, and come back after a churn or a
/// lost connection, resuming from its positions, until the run ends.
pub(super) async fn member(shared: Arc<Shared>, me: Member) {
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

/// When a worker next leaves (controllers stay).
pub(super) struct Churn {
    /// Mean time between one worker's reconnects; None: never.
    mean: Option<Duration>,
    pub(super) next: Option<Instant>,
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
    pub(super) fn arm(&mut self) {
        if let (None, Some(mean)) = (self.next, self.mean) {
            let stay = -(1.0 - rand::random::<f64>()).ln();
            self.next = Some(Instant::now() + mean.mul_f64(stay.min(50.0)));
        }
    }
}
