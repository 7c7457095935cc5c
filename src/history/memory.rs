//! History of one in-memory hub: a bounded ring per route, numbered under
//! the route's own lock so that numbering and dispatch happen in one order.
//!
//! A route's ring exists from its first kept message (or the first socket
//! that asks for its position) until [`POSITION_TTL`] after its last kept
//! message; [`MemoryHistory::sweep`], run once a minute, drops messages
//! older than the TTL and rings past that.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::{decide, number, Epoch, Kept, Position, Recovery, Retention, Since, POSITION_TTL};
use crate::channels::Route;
use crate::protocol::Encoded;

pub struct MemoryHistory {
    retention: Retention,
    routes: DashMap<Route, Arc<Mutex<Ring>>, foldhash::fast::RandomState>,
}

struct Ring {
    epoch: Epoch,
    /// The last offset given out (0: none yet).
    offset: u64,
    kept: VecDeque<(Instant, Kept)>,
    touched: Instant,
}

impl Ring {
    fn new(now: Instant) -> Ring {
        Ring {
            epoch: Epoch::random(),
            offset: 0,
            kept: VecDeque::new(),
            touched: now,
        }
    }

    fn expire(&mut self, now: Instant, ttl: Duration) {
        while self
            .kept
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= ttl)
        {
            self.kept.pop_front();
        }
    }

    fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.offset,
        }
    }
}

impl MemoryHistory {
    pub fn new(retention: Retention) -> MemoryHistory {
        MemoryHistory {
            retention,
            routes: DashMap::default(),
        }
    }

    fn ring(&self, route: &Route) -> Arc<Mutex<Ring>> {
        if let Some(ring) = self.routes.get(route) {
            return Arc::clone(&ring);
        }
        let ring = self
            .routes
            .entry(route.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Ring::new(Instant::now()))));
        Arc::clone(&ring)
    }

    /// Numbers `text` as the route's next kept message, keeps it, and hands
    /// the numbered text and its position to `deliver` while the route is
    /// still locked, so that every socket sees the route's messages in
    /// offset order.
    pub fn append(
        &self,
        route: &Route,
        text: &str,
        sender: &str,
        deliver: impl FnOnce(&Encoded, Position),
    ) -> Position {
        let ring = self.ring(route);
        let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        ring.offset += 1;
        let numbered = number(text, ring.offset, &ring.epoch);
        deliver(&numbered, ring.position());
        let kept = Kept {
            offset: ring.offset,
            text: numbered,
            sender: sender.into(),
        };
        ring.kept.push_back((now, kept));
        while ring.kept.len() > self.retention.size {
            ring.kept.pop_front();
        }
        ring.touched = now;
        ring.position()
    }

    /// The kept messages of `route` after `since`, and its position.
    pub fn recover(&self, route: &Route, since: &Since) -> Recovery {
        let ring = self.ring(route);
        let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.expire(Instant::now(), self.retention.ttl);
        let position = ring.position();
        let kept = ring.kept.iter().map(|(_, k)| k.clone()).collect();
        Recovery {
            outcome: decide(since, &position, kept),
            position: Some(position),
        }
    }

    /// Drops messages past the TTL and routes idle past [`POSITION_TTL`].
    pub fn sweep(&self) {
        let now = Instant::now();
        let ttl = self.retention.ttl;
        self.routes.retain(|_, ring| {
            let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
            ring.expire(now, ttl);
            now.duration_since(ring.touched) < POSITION_TTL
        });
    }
}
