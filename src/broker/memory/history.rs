//! History of one in-memory hub: a bounded ring per route, numbered under
//! the route's own lock so that numbering and dispatch happen in one order.
//! The ring keeps each message as it was delivered (its [`Delivery`]), so
//! a message is made once and freed by the ring once every socket had it.
//!
//! A route's ring exists from its first kept message (or the first socket
//! that asks for its position) until [`POSITION_TTL`] after its last kept
//! message; [`MemoryHistory::sweep`], run once a minute, drops messages
//! older than the TTL and rings past that.

use crate::protocol::Encoded;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::channels::Route;
use crate::delivery::Delivery;
use crate::history::{
    decide, number, Epoch, Kept, Position, Recovery, Retention, RouteKind, Since, POSITION_TTL,
};

pub struct MemoryHistory {
    retention: Retention,
    routes: DashMap<Route, Arc<Mutex<Ring>>, foldhash::fast::RandomState>,
}

struct Ring {
    epoch: Epoch,
    /// The last offset given out (0: none yet).
    offset: u64,
    kept: VecDeque<Stored>,
    touched: Instant,
}

/// One kept message: when it was kept, as it was delivered, and its sender.
struct Stored {
    at: Instant,
    delivery: Delivery,
    sender: Arc<str>,
}

impl Stored {
    fn kept(&self) -> Option<Kept> {
        Some(Kept {
            offset: self.delivery.place()?.offset,
            text: Encoded::from_text(self.delivery.text()),
            sender: Arc::clone(&self.sender),
        })
    }
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
            .is_some_and(|stored| now.duration_since(stored.at) >= ttl)
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
    /// the numbered delivery to `deliver` while the route is still locked,
    /// so that every socket sees the route's messages in offset order.
    pub fn append(
        &self,
        route: &Route,
        text: &str,
        sender: &str,
        deliver: impl FnOnce(&Delivery),
    ) -> Position {
        let ring = self.ring(route);
        let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        ring.offset += 1;
        let numbered = number(text, ring.offset, &ring.epoch);
        let delivery = match RouteKind::of(route) {
            Some(kind) => Delivery::kept(&numbered, kind, ring.offset, &ring.epoch),
            None => Delivery::plain(&numbered),
        };
        deliver(&delivery);
        ring.kept.push_back(Stored {
            at: now,
            delivery,
            sender: sender.into(),
        });
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
        let kept = ring.kept.iter().filter_map(Stored::kept).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{position_of, Outcome};
    use crate::protocol::id;

    fn at(epoch: &str, offset: u64) -> Since {
        Since::At(Position {
            epoch: Epoch::parse(epoch).unwrap(),
            offset,
        })
    }

    fn ring(size: usize, ttl: Duration) -> MemoryHistory {
        MemoryHistory::new(Retention { size, ttl })
    }

    #[test]
    fn memory_history_numbers_keeps_the_last_n_and_recovers() {
        let history = ring(3, Duration::from_secs(60));
        let route = Route::Group(id("g"));
        let mut delivered = Vec::new();
        for n in 1..=5 {
            let text = format!(r#"{{"target":"group","n":{n}}}"#);
            let pos = history.append(&route, &text, "a", |m| delivered.push(m.clone()));
            assert_eq!(pos.offset, n);
        }
        let offsets: Vec<u64> = delivered
            .iter()
            .map(|m| {
                let place = m.place().expect("numbered");
                let epoch = m.epoch().expect("numbered");
                assert_eq!(position_of(m.text()), Some((place.offset, epoch)));
                assert_eq!(place.kind, RouteKind::Group);
                place.offset
            })
            .collect();
        assert_eq!(offsets, [1, 2, 3, 4, 5]);
        let epoch = history.recover(&route, &Since::New).position.unwrap().epoch;

        let recovery = history.recover(&route, &at(epoch.as_str(), 2));
        match recovery.outcome {
            Outcome::Recovered(k) => {
                assert_eq!(k.iter().map(|k| k.offset).collect::<Vec<_>>(), [3, 4, 5])
            }
            Outcome::Lost => panic!("3 to 5 are kept"),
        }
        assert_eq!(
            history.recover(&route, &at(epoch.as_str(), 1)).outcome,
            Outcome::Lost
        );
        // Another route has its own numbering, from its first request on.
        let other = history.recover(&Route::Broadcast, &Since::New);
        assert_eq!(other.position.unwrap().offset, 0);
    }

    #[test]
    fn memory_history_forgets_messages_past_the_ttl_but_not_the_position() {
        let history = ring(10, Duration::from_millis(30));
        let route = Route::Client(id("c"));
        history.append(&route, "{}", "a", |_| {});
        let pos = history.append(&route, "{}", "a", |_| {});
        std::thread::sleep(Duration::from_millis(60));
        history.sweep();
        assert_eq!(
            history.recover(&route, &at(pos.epoch.as_str(), 1)).outcome,
            Outcome::Lost
        );
        let quiet = history.recover(&route, &at(pos.epoch.as_str(), 2));
        assert_eq!(quiet.outcome, Outcome::Recovered(vec![]));
        assert_eq!(quiet.position, Some(pos));
    }
}
