//! The Redis broker's reader: hands every message of the pub/sub connection
//! to the router and, with history on, keeps each route's kept messages
//! whole across the connection's blips (docs/protocol.md section 9: "while a
//! socket stays connected, it receives every kept message of its routes,
//! in order").
//!
//! Per route that the supervisor subscribed, the reader remembers the last
//! numbered message it dispatched (epoch and offset) or, before the first,
//! where the route's numbering stood once its channel was subscribed (its
//! floor, read from Redis then: what was kept before the subscription is
//! not owed to its sockets, everything after is). That memory outlives
//! one pub/sub connection: the supervisor hands the [`Reader`] from one
//! connection to the next, and tells it which routes it subscribed and
//! unsubscribed ([`Event`]), in order.
//!
//! - A numbered message at or below the last offset of its epoch was
//!   dispatched already: dropped.
//! - One past the last (or the floor) is dispatched.
//! - Further on, a gap: the route's messages are held while the missing
//!   range is read from the route's history stream (on the command
//!   connection), dispatched in order, then the held ones (which may
//!   reveal the next gap).
//! - After a reconnect, every route the reader knew is held until its
//!   channel is subscribed again, then read from history after its last
//!   offset or its floor ("catch-up") before its newer live messages.
//! - A new epoch (Redis lost the route's keys) starts the route over: what
//!   is held of the old numbering first, then what the new numbering has
//!   kept so far, then live messages.
//!
//! One window stays open: a route whose floor is not read yet (the first
//! round trip after its channel is subscribed) has nothing to catch up
//! from if the connection drops then; it starts over like a new route.
//! Likewise a message published between the subscription and the floor
//! read, if the connection drops in the instant it is still on its way.
//! - Messages without a position (presence events, a service's raw
//!   `PUBLISH`) are dispatched byte for byte as they come, unless their
//!   route is being repaired: then they wait their turn with the rest.
//!
//! The reader never waits on Redis while it reads: history reads run
//! beside it (at most [`FETCHES_IN_FLIGHT`], each one bounded batch on the
//! multiplexed command connection, so they travel pipelined), and only the
//! repaired route's messages wait for them. One slow route holds back
//! itself, never the connection: Redis drops a pub/sub reader that falls
//! 32 MB behind. A route that would hold more than [`HELD_MAX`] messages
//! gives its repair up and delivers what it has.
//!
//! With history off the reader dispatches every message as it comes and
//! remembers nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::Stream;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::link::RedisLink;
use crate::broker::BoxFuture;
use crate::channels::{Names, Route};
use crate::history::{Epoch, Retention};
use crate::metrics;
use crate::router::Router;
use decode::Decoded;
use repair::{End, Fetched, Repair};

mod decode;
mod repair;

/// History reads in flight at once.
pub const FETCHES_IN_FLIGHT: usize = 32;
/// Messages a route holds while it is repaired, at most.
pub const HELD_MAX: usize = 10_000;

/// What the supervisor did on the pub/sub connection, in order.
#[derive(Debug)]
pub enum Event {
    /// Redis confirmed these subscriptions.
    Subscribed(Vec<Route>),
    /// Redis confirmed these unsubscriptions: the routes are forgotten.
    Unsubscribed(Vec<Route>),
    /// The first reconciliation after a (re)connect is done: routes known
    /// from before that were not subscribed again are no longer wanted.
    Settled,
    /// These routes' subscriptions were lost (one shard connection of a
    /// cluster): they catch up from history once subscribed again.
    Lost(Vec<Route>),
}

impl Event {
    fn is_empty(&self) -> bool {
        match self {
            Event::Subscribed(r) | Event::Unsubscribed(r) | Event::Lost(r) => r.is_empty(),
            Event::Settled => false,
        }
    }
}

/// A supervisor's end of the reader's events. Dropping it ends the
/// reader's run, which hands the reader back.
pub struct Tell {
    tx: mpsc::UnboundedSender<Event>,
    /// The reader tracks routes only with history on.
    tracking: bool,
}

impl Tell {
    /// A new pair of ends, for one run of the reader.
    pub fn channel(retention: Retention) -> (Tell, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let tracking = retention.is_on();
        (Tell { tx, tracking }, rx)
    }

    pub fn send(&self, event: Event) {
        if self.tracking && !event.is_empty() {
            let _ = self.tx.send(event);
        }
    }
}

pub struct Reader {
    router: Arc<Router>,
    names: Names,
    /// `None` with history off.
    retention: Option<Retention>,
    routes: HashMap<Route, Track>,
    generations: u64,
    /// Repairs waiting for a read slot, with how long to wait first.
    pending: VecDeque<(Route, Duration)>,
}

/// History reads in flight; they live and die with one connection.
type Fetches = FuturesUnordered<BoxFuture<'static, Fetched>>;

/// What the reader knows of one subscribed route.
enum Track {
    /// Nothing numbered dispatched yet since the channel was subscribed.
    Fresh(Floor),
    /// The last numbered message dispatched.
    Live { epoch: Epoch, last: u64 },
    /// Holding the route's messages until history has filled a gap.
    Repairing(Box<Repair>),
}

/// Where a route's numbering stood once its channel was subscribed.
enum Floor {
    /// Being read (a read of the position only, queued or in flight).
    Reading { generation: u64, failures: u32 },
    /// The read failed for good: the first message starts the route.
    Unknown,
    /// The route had no numbering: all of its next epoch is owed.
    Unnumbered,
    /// Its epoch and last offset: the offsets after it are owed.
    At(Epoch, u64),
}

/// What to do with one numbered message of a route that is not repairing.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Dispatch,
    /// Dispatched already.
    Drop,
    /// A gap: repair the route from this offset of the message's epoch.
    Repair {
        after: u64,
    },
}

impl Reader {
    pub fn new(router: Arc<Router>, names: Names, retention: Retention) -> Reader {
        Reader {
            router,
            names,
            retention: retention.is_on().then_some(retention),
            routes: HashMap::new(),
            generations: 0,
            pending: VecDeque::new(),
        }
    }

    /// Reads `stream` until it ends or the supervisor stops sending
    /// events; returns itself, with what it knows, for the next connection.
    /// History is read on the link's command connection of the moment (it
    /// lives apart from the pub/sub connections). On a cluster, `stream`
    /// merges every shard connection's messages and lives as long as the
    /// supervisor.
    pub async fn run(
        mut self,
        mut stream: impl Stream<Item = redis::Msg> + Unpin,
        mut events: mpsc::UnboundedReceiver<Event>,
        link: Arc<RedisLink>,
    ) -> Reader {
        self.reconnected();
        let mut fetches = Fetches::new();
        loop {
            // Events and finished reads are rare and short: they go first,
            // so a busy stream never starves a repair.
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                Some(done) = fetches.next(), if !fetches.is_empty() => self.apply(done),
                msg = stream.next() => match msg {
                    Some(msg) => self.on_message(&msg),
                    None => break,
                },
            }
            if !self.pending.is_empty() {
                self.pump(&mut fetches, &link);
            }
        }
        // Reads of this connection die with it (dropped here); the repairs
        // they served start over on the next one.
        self.pending.clear();
        self
    }

    fn next_generation(&mut self) -> u64 {
        self.generations += 1;
        self.generations
    }

    /// A new connection: every route known from the last one waits for
    /// its channel to be subscribed again, then catches up from history.
    fn reconnected(&mut self) {
        let known: Vec<Route> = self.routes.keys().cloned().collect();
        self.lose(&known);
    }

    /// These routes' subscriptions are gone (their connection was lost):
    /// each waits for its channel to be subscribed again, then catches up
    /// from history after its last offset or its floor. A route whose
    /// floor is not known has nothing to catch up from: it is forgotten,
    /// and starts over as new once subscribed again.
    fn lose(&mut self, routes: &[Route]) {
        for route in routes {
            let Some(track) = self.routes.get_mut(route) else {
                continue;
            };
            let mut repair = match std::mem::replace(track, Track::Fresh(Floor::Unknown)) {
                Track::Live { epoch, last } => Repair::from(Some(epoch), last),
                Track::Fresh(Floor::At(epoch, last)) => Repair::from(Some(epoch), last),
                Track::Fresh(Floor::Unnumbered) => Repair::from(None, 0),
                Track::Repairing(mut repair) => {
                    // After an outage a floor is only a place to catch up
                    // from, like a live route's last offset; held messages
                    // up to it are owed, not duplicates.
                    if let Some(Track::Fresh(Floor::At(epoch, floor))) = &repair.prior {
                        let first = repair.first_held_of(epoch);
                        let last = first.map_or(*floor, |first| (*floor).min(first - 1));
                        let epoch = epoch.clone();
                        repair.prior = Some(Track::Live { epoch, last });
                    }
                    repair
                }
                Track::Fresh(Floor::Reading { .. } | Floor::Unknown) => {
                    self.routes.remove(route);
                    continue;
                }
            };
            // Whatever range it was reading, it now reads to the end.
            repair.cursor = repair.last;
            repair.upto = 0;
            repair.generation = self.next_generation();
            repair.subscribed = false;
            repair.failures = 0;
            self.routes.insert(route.clone(), Track::Repairing(repair));
        }
    }

    fn on_event(&mut self, event: Event) {
        if self.retention.is_none() {
            return;
        }
        match event {
            Event::Subscribed(routes) => {
                // History never keeps the control route: nothing to repair.
                for route in routes.into_iter().filter(Route::is_kept) {
                    match self.routes.get_mut(&route) {
                        Some(Track::Repairing(repair)) if !repair.subscribed => {
                            repair.subscribed = true;
                            self.pending.push_back((route, Duration::ZERO));
                        }
                        Some(_) => {}
                        None => {
                            let generation = self.next_generation();
                            let floor = Floor::Reading {
                                generation,
                                failures: 0,
                            };
                            self.routes.insert(route.clone(), Track::Fresh(floor));
                            self.pending.push_back((route, Duration::ZERO));
                        }
                    }
                }
            }
            Event::Unsubscribed(routes) => {
                for route in &routes {
                    self.routes.remove(route);
                }
            }
            Event::Lost(mut routes) => {
                routes.retain(Route::is_kept);
                self.lose(&routes)
            }
            Event::Settled => self
                .routes
                .retain(|_, t| !matches!(t, Track::Repairing(r) if !r.subscribed)),
        }
    }

    fn on_message(&mut self, msg: &redis::Msg) {
        metrics::redis_received();
        let Some((route, msg)) = Decoded::read(&self.names, msg, self.retention.is_some()) else {
            return;
        };
        if self.retention.is_none() {
            msg.dispatch(&self.router, &route);
            return;
        }
        self.deliver(&route, msg, true);
    }

    /// Dispatches `msg` in its route's order: drops a duplicate, holds it
    /// during a repair, and (with `may_repair`) starts one on a gap.
    fn deliver(&mut self, route: &Route, msg: Decoded, may_repair: bool) {
        let Some(track) = self.routes.get_mut(route) else {
            msg.dispatch(&self.router, route);
            return;
        };
        if let Track::Repairing(repair) = track {
            repair.held.push(msg);
            if repair.held.len() > HELD_MAX {
                tracing::warn!(?route, "history repair too slow; delivering what is held");
                self.finish(route, End::GaveUp);
            }
            return;
        }
        let (Some(place), Some(epoch)) = (msg.delivery.place(), msg.epoch()) else {
            msg.dispatch(&self.router, route);
            return;
        };
        let offset = place.offset;
        match next(track, &epoch, offset, may_repair) {
            Next::Dispatch => {
                *track = Track::Live {
                    epoch,
                    last: offset,
                };
                msg.dispatch(&self.router, route);
            }
            Next::Drop => {
                tracing::debug!(?route, offset, "dropped a message dispatched already");
            }
            Next::Repair { after } => {
                let prior = match track {
                    Track::Live { epoch: seen, .. } | Track::Fresh(Floor::At(seen, _))
                        if *seen != epoch =>
                    {
                        Some(std::mem::replace(track, Track::Fresh(Floor::Unknown)))
                    }
                    _ => None,
                };
                self.start_repair(route, (epoch, after, offset - 1), prior, msg)
            }
        }
    }
}

/// What to do with message `offset` of `epoch` on a route in `track`
/// (not repairing); `may_repair`: whether a gap is worth a repair.
fn next(track: &Track, epoch: &Epoch, offset: u64, may_repair: bool) -> Next {
    // The offset the route is owed messages after, and whether the reader
    // dispatched it itself (then anything up to it is a duplicate; up to a
    // floor, it is a message published after the subscription that the
    // floor read saw first).
    let (after, dispatched) = match track {
        Track::Live { epoch: e, last } if e == epoch => (*last, true),
        Track::Fresh(Floor::At(e, floor)) if e == epoch => (*floor, false),
        // Another numbering than the route's: a new one (Redis lost the
        // route's keys), or a late message of an older one. Only Redis
        // knows which: the repair asks it.
        Track::Live { .. } | Track::Fresh(Floor::At(..)) if may_repair => {
            return Next::Repair { after: 0 }
        }
        // A numbering that began since the floor: all of it is owed.
        Track::Live { .. } | Track::Fresh(Floor::At(..) | Floor::Unnumbered) => (0, false),
        // Nothing known to measure a gap from.
        Track::Fresh(Floor::Reading { .. } | Floor::Unknown) | Track::Repairing(_) => {
            return Next::Dispatch
        }
    };
    if offset <= after && dispatched {
        Next::Drop
    } else if offset <= after + 1 || !may_repair {
        Next::Dispatch
    } else {
        Next::Repair { after }
    }
}

impl Track {
    /// The numbering the route is known to be in.
    fn epoch(&self) -> Option<&Epoch> {
        match self {
            Track::Live { epoch, .. } | Track::Fresh(Floor::At(epoch, _)) => Some(epoch),
            Track::Repairing(repair) => repair.epoch.as_ref(),
            Track::Fresh(_) => None,
        }
    }
}

#[cfg(test)]
mod properties;
