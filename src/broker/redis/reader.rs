//! The Redis broker's reader: hands every message of the pub/sub connection
//! to the router and, with history on, keeps each route's kept messages
//! whole across the connection's blips (PROTOCOL.md section 9: "while a
//! socket stays connected, it receives every kept message of its routes,
//! in order").
//!
//! Per route that the supervisor subscribed, the reader remembers the last
//! numbered message it dispatched (epoch and offset). That memory outlives
//! one pub/sub connection: the supervisor hands the [`Reader`] from one
//! connection to the next, and tells it which routes it subscribed and
//! unsubscribed ([`Event`]), in order.
//!
//! - A numbered message at or below the last offset of its epoch was
//!   dispatched already: dropped.
//! - One past the last is dispatched.
//! - Further on, a gap: the route's messages are held while the missing
//!   range is read from the route's history stream (on the command
//!   connection), dispatched in order, then the held ones.
//! - After a reconnect, every route the reader knew is held until its
//!   channel is subscribed again, then read from history after its last
//!   offset ("catch-up") before its newer live messages.
//! - A new epoch (Redis lost the route's keys) starts the route over: what
//!   the new numbering has kept so far first, then live messages.
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

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::Stream;
use futures_util::StreamExt;
use redis::RedisResult;
use tokio::sync::mpsc;

use crate::broker::BoxFuture;
use crate::channels::{Names, Route};
use crate::history::redis::{self as history, Batch, Keys, Range, BATCH};
use crate::history::{position_of, Epoch, Retention};
use crate::metrics;
use crate::protocol::{self, Encoded};
use crate::redis_link::Commands;
use crate::router::Router;

/// History reads in flight at once.
pub const FETCHES_IN_FLIGHT: usize = 32;
/// Messages a route holds while it is repaired, at most.
pub const HELD_MAX: usize = 10_000;
/// Failed reads of one repair before it is given up.
const RETRIES: u32 = 5;
/// Wait before reading again after a failed read.
const RETRY_AFTER: Duration = Duration::from_millis(200);

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
    /// Nothing numbered dispatched yet.
    Fresh,
    /// The last numbered message dispatched.
    Live { epoch: Epoch, last: u64 },
    /// Holding the route's messages until history has filled a gap.
    Repairing(Box<Repair>),
}

struct Repair {
    epoch: Epoch,
    /// The last offset dispatched.
    last: u64,
    /// The next read starts after this offset (past `last` when history
    /// skipped entries older than the TTL).
    cursor: u64,
    /// Read up to this offset (the gap's end); 0: up to the route's last.
    upto: u64,
    held: Vec<Encoded>,
    /// Tells this repair's reads from those of an earlier one.
    generation: u64,
    /// Whether the route's channel is subscribed on this connection;
    /// reads start only then, so nothing published meanwhile is missed.
    subscribed: bool,
    failures: u32,
    /// Messages dispatched from history so far.
    repaired: u64,
}

/// A finished history read.
struct Fetched {
    route: Route,
    generation: u64,
    result: RedisResult<Batch>,
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
    /// `conn` is the command connection made with this pub/sub connection.
    /// On a cluster, `stream` merges every shard connection's messages and
    /// lives as long as the supervisor.
    pub async fn run(
        mut self,
        mut stream: impl Stream<Item = redis::Msg> + Unpin,
        mut events: mpsc::UnboundedReceiver<Event>,
        conn: Commands,
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
                self.pump(&mut fetches, &conn);
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
        self.routes.retain(|_, t| !matches!(t, Track::Fresh));
        let known: Vec<Route> = self.routes.keys().cloned().collect();
        self.lose(&known);
    }

    /// These routes' subscriptions are gone (their connection was lost):
    /// each waits for its channel to be subscribed again, then catches up
    /// from history after its last offset.
    fn lose(&mut self, routes: &[Route]) {
        for route in routes {
            let generation = self.next_generation();
            let Some(track) = self.routes.get_mut(route) else {
                continue;
            };
            let mut repair = match std::mem::replace(track, Track::Fresh) {
                Track::Live { epoch, last } => Box::new(Repair {
                    epoch,
                    last,
                    cursor: last,
                    upto: 0,
                    held: Vec::new(),
                    generation,
                    subscribed: false,
                    failures: 0,
                    repaired: 0,
                }),
                Track::Repairing(repair) => repair,
                // Nothing dispatched yet: nothing to catch up on.
                Track::Fresh => continue,
            };
            // Whatever range it was reading, it now reads to the end.
            repair.cursor = repair.last;
            repair.upto = 0;
            repair.generation = generation;
            repair.subscribed = false;
            repair.failures = 0;
            *track = Track::Repairing(repair);
        }
    }

    fn on_event(&mut self, event: Event) {
        if self.retention.is_none() {
            return;
        }
        match event {
            Event::Subscribed(routes) => {
                for route in routes {
                    match self.routes.get_mut(&route) {
                        Some(Track::Repairing(repair)) if !repair.subscribed => {
                            repair.subscribed = true;
                            self.pending.push_back((route, Duration::ZERO));
                        }
                        Some(_) => {}
                        None => {
                            self.routes.insert(route, Track::Fresh);
                        }
                    }
                }
            }
            Event::Unsubscribed(routes) => {
                for route in &routes {
                    self.routes.remove(route);
                }
            }
            Event::Lost(routes) => self.lose(&routes),
            Event::Settled => self
                .routes
                .retain(|_, t| !matches!(t, Track::Repairing(r) if !r.subscribed)),
        }
    }

    fn on_message(&mut self, msg: &redis::Msg) {
        metrics::redis_received();
        let Some(route) = self.names.route(msg.get_channel_name()) else {
            return;
        };
        let Ok(text) = std::str::from_utf8(msg.get_payload_bytes()) else {
            tracing::debug!(
                channel = msg.get_channel_name(),
                "dropped a non-UTF-8 message"
            );
            return;
        };
        if let Some(sent) = protocol::sent_at_of(text) {
            metrics::pubsub_lag(sent);
        }
        let encoded = Encoded::from_text(text);
        if self.retention.is_none() {
            self.dispatch(&route, &encoded, None);
            return;
        }
        self.deliver(&route, encoded, true);
    }

    /// Dispatches `msg` in its route's order: drops a duplicate, holds it
    /// during a repair, and (with `may_repair`) starts one on a gap.
    fn deliver(&mut self, route: &Route, msg: Encoded, may_repair: bool) {
        let Some(track) = self.routes.get_mut(route) else {
            self.dispatch(route, &msg, None);
            return;
        };
        if let Track::Repairing(repair) = track {
            repair.held.push(msg);
            if repair.held.len() > HELD_MAX {
                tracing::warn!(?route, "history repair too slow; delivering what is held");
                self.finish(route, false);
            }
            return;
        }
        let Some((offset, epoch)) = position_of(msg.as_str()) else {
            self.dispatch(route, &msg, None);
            return;
        };
        // Where the route resumes from if this message leaves a gap.
        let gap_from = match track {
            Track::Live { epoch: seen, last } if seen.as_str() == epoch => {
                if offset <= *last {
                    tracing::debug!(?route, offset, "dropped a message dispatched already");
                    return;
                }
                if offset == *last + 1 || !may_repair {
                    *last = offset;
                    self.dispatch(route, &msg, None);
                    return;
                }
                Some((seen.clone(), *last))
            }
            // A new numbering began: what it kept before this one first.
            Track::Live { .. } if offset > 1 && may_repair => Epoch::parse(epoch).map(|e| (e, 0)),
            _ => None,
        };
        match gap_from {
            Some((epoch, last)) => self.start_repair(route, epoch, last, offset - 1, msg),
            None => {
                if let Some(epoch) = Epoch::parse(epoch) {
                    *track = Track::Live {
                        epoch,
                        last: offset,
                    };
                }
                self.dispatch(route, &msg, None);
            }
        }
    }

    fn start_repair(&mut self, route: &Route, epoch: Epoch, last: u64, upto: u64, msg: Encoded) {
        let generation = self.next_generation();
        let repair = Repair {
            epoch,
            last,
            cursor: last,
            upto,
            held: vec![msg],
            generation,
            subscribed: true,
            failures: 0,
            repaired: 0,
        };
        self.routes
            .insert(route.clone(), Track::Repairing(Box::new(repair)));
        self.pending.push_back((route.clone(), Duration::ZERO));
    }

    /// Starts waiting reads while there is room.
    fn pump(&mut self, fetches: &mut Fetches, conn: &Commands) {
        let Some(retention) = self.retention else {
            return;
        };
        while fetches.len() < FETCHES_IN_FLIGHT {
            let Some((read, delay)) = self.next_read() else {
                return;
            };
            fetches.push(Box::pin(read.run(conn.clone(), retention, delay)));
        }
    }

    /// The next waiting read, and how long to wait before it; skips the
    /// routes no longer repairing or not subscribed yet. (Apart from
    /// [`Reader::pump`] so that tests can answer reads without Redis.)
    fn next_read(&mut self) -> Option<(Read, Duration)> {
        while let Some((route, delay)) = self.pending.pop_front() {
            let Some(Track::Repairing(repair)) = self.routes.get(&route) else {
                continue;
            };
            if !repair.subscribed {
                continue;
            }
            let read = Read {
                keys: Keys {
                    position: self.names.position_key(&route),
                    history: self.names.history_key(&route),
                },
                epoch: repair.epoch.clone(),
                after: repair.cursor,
                upto: repair.upto,
                generation: repair.generation,
                route,
            };
            return Some((read, delay));
        }
        None
    }

    fn apply(&mut self, done: Fetched) {
        let route = done.route;
        let Some(Track::Repairing(repair)) = self.routes.get_mut(&route) else {
            return;
        };
        if repair.generation != done.generation {
            return;
        }
        let batch = match done.result {
            Ok(batch) => batch,
            Err(e) => {
                repair.failures += 1;
                if repair.failures > RETRIES {
                    tracing::warn!(?route, "history unreadable ({e}); delivering what is held");
                    self.finish(&route, false);
                } else {
                    self.pending.push_back((route, RETRY_AFTER));
                }
                return;
            }
        };
        let Some(position) = batch.position else {
            // The route's history is gone altogether: start it over.
            self.finish(&route, true);
            return;
        };
        if position.epoch != repair.epoch {
            // A new numbering began: read it from its start.
            repair.failures += 1;
            if repair.failures > RETRIES {
                self.finish(&route, true);
                return;
            }
            repair.epoch = position.epoch;
            (repair.last, repair.cursor, repair.upto) = (0, 0, 0);
            // Reads of the old numbering still in flight are stale now.
            self.generations += 1;
            repair.generation = self.generations;
            self.pending.push_back((route, Duration::ZERO));
            return;
        }
        for kept in batch.kept {
            let wanted = repair.upto == 0 || kept.offset <= repair.upto;
            if kept.offset > repair.last && wanted {
                repair.last = kept.offset;
                repair.repaired += 1;
                let sender = Some(&*kept.sender);
                dispatch(&self.router, &route, &kept.text, sender);
            }
        }
        repair.cursor = batch.scanned.max(repair.last);
        if batch.more {
            self.pending.push_back((route, Duration::ZERO));
        } else {
            self.finish(&route, false);
        }
    }

    /// Ends a repair: the route goes live from its last offset (or from
    /// nothing, with `reset`) and its held messages follow, gaps left as
    /// they are (history does not have them).
    fn finish(&mut self, route: &Route, reset: bool) {
        let Some(track) = self.routes.get_mut(route) else {
            return;
        };
        let Track::Repairing(repair) = std::mem::replace(track, Track::Fresh) else {
            return;
        };
        if repair.repaired > 0 {
            metrics::gap_repaired(repair.repaired);
        }
        if !reset {
            *track = Track::Live {
                epoch: repair.epoch,
                last: repair.last,
            };
        }
        for msg in repair.held {
            self.deliver(route, msg, false);
        }
    }

    fn dispatch(&self, route: &Route, msg: &Encoded, sender: Option<&str>) {
        dispatch(&self.router, route, msg, sender);
    }
}

/// Hands `msg` to the router; `sender` is read from the text when the
/// route skips senders and it is not known.
fn dispatch(router: &Router, route: &Route, msg: &Encoded, sender: Option<&str>) {
    let read;
    let sender = match sender {
        Some(sender) => sender,
        None if route.skips_sender() => {
            read = sender_of(msg.as_str());
            read.as_deref().unwrap_or("")
        }
        None => "",
    };
    router.dispatch(route, msg, sender);
}

/// One history read of a repair.
struct Read {
    route: Route,
    keys: Keys,
    epoch: Epoch,
    after: u64,
    upto: u64,
    generation: u64,
}

impl Read {
    async fn run(self, mut conn: Commands, retention: Retention, delay: Duration) -> Fetched {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let range = Range {
            after: self.after,
            upto: self.upto,
            count: BATCH,
            want: Some(&self.epoch),
            create: false,
        };
        let result = history::read(&mut conn, &self.keys, &range, retention).await;
        Fetched {
            route: self.route,
            generation: self.generation,
            result,
        }
    }
}

/// The `from_id` of a message, read without building the whole message.
pub fn sender_of(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct From<'a> {
        #[serde(borrow, default)]
        from_id: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<From<'_>>(text)
        .ok()
        .and_then(|f| f.from_id)
        .map(Cow::into_owned)
}

#[cfg(test)]
mod properties;
