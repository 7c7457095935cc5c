//! A member of the soak: one socket of the load ([`Member`]: its group,
//! its role, its hub), when it next leaves ([`Churn`]), and why one of its
//! sessions ended ([`End`]). Its life is `life.rs`; one connection's
//! traffic is `session.rs`.

use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use crate::track::Kind;

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

    pub(super) fn group_id(self) -> String {
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
    pub(super) fn hub(self, round: usize) -> usize {
        let moves = if self.is_controller() { 0 } else { round };
        self.group + self.n + moves
    }

    /// The routes it resumes: a controller receives nothing on its group
    /// route (it is the only sender there), so only its client route.
    pub(super) fn routes(self) -> &'static [Kind] {
        if self.is_controller() {
            &[Kind::Client]
        } else {
            &[Kind::Group, Kind::Client]
        }
    }
}

/// Why a session ended.
pub(super) enum End {
    Stop,
    Churn,
    Lost(String),
}

/// When a worker next leaves (controllers stay).
pub(super) struct Churn {
    /// Mean time between one worker's reconnects; None: never.
    mean: Option<Duration>,
    pub(super) next: Option<Instant>,
}

impl Churn {
    pub(super) fn new(shared: &Shared, me: Member) -> Churn {
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
