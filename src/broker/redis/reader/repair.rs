//! Gap repair: the history reads of the [`Reader`] (a route's floor, or
//! the batches that fill a gap or catch a route up after an outage), and
//! how a repair ends. A repair holds its route's messages meanwhile; when
//! it ends, the route goes on from where the reads left it and its held
//! messages follow, in pub/sub order, which is also the order of the
//! numberings Redis had (every message of an older numbering was published
//! before the first of a newer one).

use std::sync::Arc;
use std::time::Duration;

use redis::RedisResult;

use super::{Decoded, Fetches, Floor, Reader, Track, FETCHES_IN_FLIGHT};
use crate::broker::redis::history::{self, Batch, Range, BATCH};
use crate::broker::redis::link::RedisLink;
use crate::broker::redis::scripts::Keys;
use crate::channels::Route;
use crate::delivery::Delivery;
use crate::history::{Epoch, Retention, RouteKind};
use crate::metrics;
use crate::router::Router;

/// Failed reads of one repair before it is given up.
const RETRIES: u32 = 5;
/// Wait before reading again after a failed read.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// How a repair ends.
pub(super) enum End {
    /// History was read through the gap: what it lacks is gone (older
    /// than the TTL, or trimmed). The held messages may reveal the next.
    Caught,
    /// Too slow, unreadable, or gone altogether: the held messages go
    /// out as they are (but for duplicates).
    GaveUp,
    /// It began on a late message of an older numbering, on a route still
    /// at its floor: the route goes back to it.
    Back(Track),
}

pub(super) struct Repair {
    /// `None`: the route had no numbering at its floor; the first read
    /// takes whichever began since.
    pub(super) epoch: Option<Epoch>,
    /// The last offset dispatched.
    pub(super) last: u64,
    /// The next read starts after this offset (past `last` when history
    /// skipped entries older than the TTL).
    pub(super) cursor: u64,
    /// Read up to this offset (the gap's end); 0: up to the route's last.
    pub(super) upto: u64,
    pub(super) held: Vec<Decoded>,
    /// Tells this repair's reads from those of an earlier one.
    pub(super) generation: u64,
    /// Whether the route's channel is subscribed on this connection;
    /// reads start only then, so nothing published meanwhile is missed.
    pub(super) subscribed: bool,
    pub(super) failures: u32,
    /// Messages dispatched from history so far.
    pub(super) repaired: u64,
    /// Where the route was (`Live`, or `Fresh` at a floor) when a message
    /// of another numbering started this repair: if Redis still has the
    /// route's numbering, that message was a late one of an older
    /// numbering, and the route goes back to where it was.
    pub(super) prior: Option<Track>,
}

/// A finished history read.
pub(super) struct Fetched {
    pub(super) route: Route,
    pub(super) generation: u64,
    pub(super) result: RedisResult<Batch>,
}

impl Reader {
    /// Repairs `route` in `epoch` from `last` up to `upto`, holding `msg`.
    pub(super) fn start_repair(
        &mut self,
        route: &Route,
        (epoch, last, upto): (Epoch, u64, u64),
        prior: Option<Track>,
        msg: Decoded,
    ) {
        let mut repair = Repair::from(Some(epoch), last);
        repair.upto = upto;
        repair.prior = prior;
        repair.held.push(msg);
        repair.generation = self.next_generation();
        repair.subscribed = true;
        self.routes.insert(route.clone(), Track::Repairing(repair));
        self.pending.push_back((route.clone(), Duration::ZERO));
    }

    /// Starts waiting reads while there is room.
    pub(super) fn pump(&mut self, fetches: &mut Fetches, link: &Arc<RedisLink>) {
        let Some(retention) = self.retention else {
            return;
        };
        while fetches.len() < FETCHES_IN_FLIGHT {
            let Some((read, delay)) = self.next_read() else {
                return;
            };
            fetches.push(Box::pin(read.run(Arc::clone(link), retention, delay)));
        }
    }

    /// The next waiting read, and how long to wait before it; skips the
    /// routes no longer reading or not subscribed yet. (Apart from
    /// [`Reader::pump`] so that tests can answer reads without Redis.)
    pub(super) fn next_read(&mut self) -> Option<(Read, Duration)> {
        while let Some((route, delay)) = self.pending.pop_front() {
            let (epoch, after, upto, count, generation) = match self.routes.get(&route) {
                Some(Track::Repairing(r)) if r.subscribed => {
                    (r.epoch.clone(), r.cursor, r.upto, BATCH, r.generation)
                }
                Some(Track::Fresh(Floor::Reading { generation, .. })) => {
                    (None, 0, 0, 0, *generation)
                }
                _ => continue,
            };
            let read = Read {
                keys: Keys {
                    position: self.names.position_key(&route),
                    history: self.names.history_key(&route),
                },
                epoch,
                after,
                upto,
                count,
                generation,
                route,
            };
            return Some((read, delay));
        }
        None
    }

    /// A finished read: a floor, or a repair's batch.
    pub(super) fn apply(&mut self, done: Fetched) {
        match self.routes.get(&done.route) {
            Some(Track::Fresh(Floor::Reading { generation, .. }))
                if *generation == done.generation =>
            {
                self.found_floor(done)
            }
            Some(Track::Repairing(repair)) if repair.generation == done.generation => {
                self.repaired(done)
            }
            // A read of an earlier repair, or of a route since forgotten.
            _ => {}
        }
    }

    pub(super) fn found_floor(&mut self, done: Fetched) {
        let route = done.route;
        let Some(Track::Fresh(floor)) = self.routes.get_mut(&route) else {
            return;
        };
        let Floor::Reading { failures, .. } = floor else {
            return;
        };
        match done.result {
            Ok(batch) => {
                *floor = match batch.position {
                    Some(position) => Floor::At(position.epoch, position.offset),
                    None => Floor::Unnumbered,
                }
            }
            Err(e) if *failures >= RETRIES => {
                tracing::warn!(?route, "history position unreadable ({e})");
                *floor = Floor::Unknown;
            }
            Err(_) => {
                *failures += 1;
                self.pending.push_back((route, RETRY_AFTER));
            }
        }
    }

    pub(super) fn repaired(&mut self, done: Fetched) {
        let route = done.route;
        let Some(Track::Repairing(repair)) = self.routes.get_mut(&route) else {
            return;
        };
        let batch = match done.result {
            Ok(batch) => batch,
            Err(e) => {
                repair.failures += 1;
                if repair.failures > RETRIES {
                    tracing::warn!(?route, "history unreadable ({e}); delivering what is held");
                    self.finish(&route, End::GaveUp);
                } else {
                    self.pending.push_back((route, RETRY_AFTER));
                }
                return;
            }
        };
        let Some(position) = batch.position else {
            // The route's history is gone altogether: its next numbering
            // will be owed from its start.
            self.finish(&route, End::GaveUp);
            return;
        };
        if repair.epoch.as_ref() != Some(&position.epoch) {
            // Another numbering than the one read: older ones' held
            // messages go out first, in order, then this one from its start.
            let switched = repair.epoch.is_some();
            if switched {
                repair.failures += 1;
                if repair.failures > RETRIES {
                    self.finish(&route, End::GaveUp);
                    return;
                }
            }
            repair.dispatch_held_before(&position.epoch, &self.router, &route);
            // The message that started the repair may have been a late one
            // of an older numbering: then the route goes back to where it
            // was in the one Redis has (reading on from there, if it was
            // live). Else that one is read from its start.
            let from = match repair.prior.take() {
                Some(Track::Live { epoch, last }) if epoch == position.epoch => last,
                Some(floor @ Track::Fresh(Floor::At(..)))
                    if floor.epoch() == Some(&position.epoch) =>
                {
                    self.finish(&route, End::Back(floor));
                    return;
                }
                _ => 0,
            };
            repair.epoch = Some(position.epoch.clone());
            if switched {
                (repair.last, repair.cursor, repair.upto) = (from, from, 0);
                // Reads of the old numbering still in flight are stale now.
                self.generations += 1;
                repair.generation = self.generations;
                self.pending.push_back((route, Duration::ZERO));
                return;
            }
            // No numbering at the floor: this batch is the new one's start.
        }
        for kept in batch.kept {
            let wanted = repair.upto == 0 || kept.offset <= repair.upto;
            if kept.offset > repair.last && wanted {
                repair.last = kept.offset;
                repair.repaired += 1;
                let delivery = match RouteKind::of(&route) {
                    Some(kind) => Delivery::numbered(kept.text.as_str(), kind),
                    None => Delivery::plain(kept.text.as_str()),
                };
                self.router.dispatch(&route, &delivery, &kept.sender);
            }
        }
        repair.cursor = batch.scanned.max(repair.last);
        if batch.more {
            self.pending.push_back((route, Duration::ZERO));
            return;
        }
        // Read through the gap (as the script bounds it): what history did
        // not have is gone, and is not asked for again.
        let upto = match repair.upto {
            0 => position.offset,
            upto => upto.min(position.offset),
        };
        repair.last = repair.last.max(upto);
        self.finish(&route, End::Caught);
    }

    /// Ends a repair: the route goes on from where the repair left it and
    /// its held messages follow. Held
    /// messages of a numbering older than the one the route goes on in go
    /// out first and must not take the route back to it: pub/sub's order
    /// tells which numberings are older, since every message of an older
    /// one was published before the first of a newer one.
    pub(super) fn finish(&mut self, route: &Route, end: End) {
        let Some(track) = self.routes.get_mut(route) else {
            return;
        };
        let Track::Repairing(mut repair) =
            std::mem::replace(track, Track::Fresh(Floor::Unnumbered))
        else {
            return;
        };
        if repair.repaired > 0 {
            metrics::gap_repaired(repair.repaired);
        }
        let may_repair = !matches!(end, End::GaveUp);
        let reached = match repair.epoch.clone() {
            Some(epoch) => Track::Live {
                epoch,
                last: repair.last,
            },
            None => Track::Fresh(Floor::Unnumbered),
        };
        let (next, newest) = match end {
            End::Back(floor) => (floor, None),
            // History was read in the route's current numbering; a held
            // message of another one after it asks Redis again (`next`).
            End::Caught => {
                let current = reached.epoch().filter(|e| repair.holds(e)).cloned();
                (reached, current)
            }
            // No more reads: the newest numbering held is the route's.
            End::GaveUp => match repair.newest_held() {
                None => (repair.prior.take().unwrap_or(reached), None),
                Some(newest) => {
                    let next = match repair.prior.take() {
                        Some(prior) if prior.epoch() == Some(&newest) => prior,
                        _ if reached.epoch() == Some(&newest) => reached,
                        // Nothing of it was dispatched: nothing to dedup.
                        _ => Track::Fresh(Floor::Unnumbered),
                    };
                    (next, Some(newest))
                }
            },
        };
        if let Some(newest) = newest {
            repair.dispatch_held_before(&newest, &self.router, route);
        }
        *track = next;
        for msg in repair.held {
            self.deliver(route, msg, may_repair);
        }
    }
}

impl Repair {
    /// A repair of `epoch` after `last`, not subscribed, holding nothing.
    pub(super) fn from(epoch: Option<Epoch>, last: u64) -> Box<Repair> {
        Box::new(Repair {
            epoch,
            last,
            cursor: last,
            upto: 0,
            held: Vec::new(),
            generation: 0,
            subscribed: false,
            failures: 0,
            repaired: 0,
            prior: None,
        })
    }

    /// The offset of the first held message of `epoch`.
    pub(super) fn first_held_of(&self, epoch: &Epoch) -> Option<u64> {
        self.held
            .iter()
            .find(|msg| msg.delivery.is_of(epoch))
            .and_then(|msg| msg.delivery.place())
            .map(|place| place.offset)
    }

    /// Whether a held message is of `epoch`.
    pub(super) fn holds(&self, epoch: &Epoch) -> bool {
        self.held.iter().any(|msg| msg.delivery.is_of(epoch))
    }

    /// The numbering of the last numbered message held.
    pub(super) fn newest_held(&self) -> Option<Epoch> {
        self.held.iter().rev().find_map(Decoded::epoch)
    }

    /// Redis lost the route's keys (its numbering and all) once or more,
    /// and `found` is the numbering it has now: the held messages of older
    /// ones go out first, in order and with their gaps as they are, before
    /// the repair reads `found`. (A late one of those may follow messages
    /// of `found` already dispatched: a lost numbering's order ends with
    /// it.)
    pub(super) fn dispatch_held_before(&mut self, found: &Epoch, router: &Router, route: &Route) {
        let end = self
            .held
            .iter()
            .position(|msg| msg.delivery.is_of(found))
            .unwrap_or(self.held.len());
        // The last offset dispatched, per numbering: the repair's and the
        // one the route was in before it.
        let mut last: Vec<(Epoch, u64)> = self
            .epoch
            .clone()
            .map(|e| (e, self.last))
            .into_iter()
            .collect();
        if let Some(Track::Live { epoch, last: at }) = &self.prior {
            last.push((epoch.clone(), *at));
        }
        for msg in self.held.drain(..end) {
            if let (Some(place), Some(epoch)) = (msg.delivery.place(), msg.epoch()) {
                match last.iter_mut().find(|(seen, _)| *seen == epoch) {
                    Some((_, at)) if place.offset <= *at => continue,
                    Some((_, at)) => *at = place.offset,
                    None => last.push((epoch, place.offset)),
                }
            }
            msg.dispatch(router, route);
        }
    }
}

/// One history read: a repair's batch, or a floor (the position only).
pub(super) struct Read {
    pub(super) route: Route,
    pub(super) keys: Keys,
    /// The numbering read; `None`: whichever the route has.
    pub(super) epoch: Option<Epoch>,
    pub(super) after: u64,
    pub(super) upto: u64,
    /// Entries to scan at most; 0 for the position only.
    pub(super) count: u64,
    pub(super) generation: u64,
}

impl Read {
    pub(super) async fn run(
        self,
        link: Arc<RedisLink>,
        retention: Retention,
        delay: Duration,
    ) -> Fetched {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // Taken now: the command connection may have been replaced since
        // the read was queued. Without one, the read fails and is retried.
        let Some(mut conn) = link.command() else {
            let down = (redis::ErrorKind::IoError, "Redis is down");
            return Fetched {
                route: self.route,
                generation: self.generation,
                result: Err(redis::RedisError::from(down)),
            };
        };
        let range = Range {
            after: self.after,
            upto: self.upto,
            count: self.count,
            want: self.epoch.as_ref(),
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
