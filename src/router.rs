//! The routing table: route -> the local sockets that listen on it.
//!
//! Joins and leaves are refcounted per route; each returns the routes whose
//! count went 0 -> 1 or 1 -> 0, which are exactly the moments the broker
//! must subscribe or unsubscribe. [`Router::dispatch`] fans one shared
//! message out to the local subscribers with a non-waiting offer; it never
//! awaits, so it never holds a table guard across a wait.
//!
//! Knows nothing of WebSockets or Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use indexmap::IndexMap;

use crate::channels::Route;
use crate::delivery::Delivery;
use crate::metrics;
use crate::outbox::{Kick, Offer, Outbox};
use crate::protocol::VisionId;

/// A socket's identity within this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId(u64);

impl SocketId {
    pub fn next() -> SocketId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SocketId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

struct Subscriber {
    client: VisionId,
    outbox: Arc<Outbox>,
}

/// Keys come from clients, so the hasher is seeded per process (foldhash),
/// and fast: every dispatch hashes its route.
type Hasher = foldhash::fast::RandomState;
type Members = IndexMap<SocketId, Subscriber, Hasher>;

#[derive(Default)]
pub struct Router {
    routes: DashMap<Route, Members, Hasher>,
}

/// A client already holds its most sockets on this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this client already holds {0} sockets on this instance")]
pub struct ClientFull(pub usize);

/// The outcome of one dispatch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fanout {
    pub delivered: usize,
    pub overflowed: usize,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a socket to routes; returns the routes that had no local
    /// subscriber before. When the first of `routes` is a client route (as
    /// [`Route::for_socket`] puts it) that already has `max_per_client`
    /// local sockets (0: no limit), the join is refused before anything
    /// changes; the count is read under that route's own lock, so
    /// concurrent joins cannot pass the limit together.
    pub fn join(
        &self,
        socket: SocketId,
        client: &VisionId,
        outbox: &Arc<Outbox>,
        routes: &[Route],
        max_per_client: usize,
    ) -> Result<Vec<Route>, ClientFull> {
        let mut added = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let mut members = self.routes.entry(route.clone()).or_default();
            let limited = i == 0 && matches!(route, Route::Client(_)) && max_per_client > 0;
            if limited && members.len() >= max_per_client {
                return Err(ClientFull(max_per_client));
            }
            if members.is_empty() {
                added.push(route.clone());
            }
            let subscriber = Subscriber {
                client: client.clone(),
                outbox: Arc::clone(outbox),
            };
            members.insert(socket, subscriber);
        }
        Ok(added)
    }

    /// Removes a socket from routes; returns the routes left with no local
    /// subscriber.
    pub fn leave(&self, socket: SocketId, routes: &[Route]) -> Vec<Route> {
        let mut removed = Vec::new();
        for route in routes {
            if let Entry::Occupied(mut members) = self.routes.entry(route.clone()) {
                members.get_mut().swap_remove(&socket);
                if members.get().is_empty() {
                    members.remove();
                    removed.push(route.clone());
                }
            }
        }
        removed
    }

    /// Whether any local socket listens on `route`.
    pub fn wants(&self, route: &Route) -> bool {
        self.routes.contains_key(route)
    }

    /// Every route some local socket listens on.
    pub fn routes(&self) -> Vec<Route> {
        self.routes.iter().map(|e| e.key().clone()).collect()
    }

    /// The local sockets on `route`, and their queues.
    pub fn members(&self, route: &Route) -> Vec<(SocketId, Arc<Outbox>)> {
        self.routes.get(route).map_or_else(Vec::new, |members| {
            let each = members.iter();
            each.map(|(id, sub)| (*id, Arc::clone(&sub.outbox)))
                .collect()
        })
    }

    /// Whether `socket` listens on `route`.
    pub fn holds(&self, route: &Route, socket: SocketId) -> bool {
        self.routes
            .get(route)
            .is_some_and(|members| members.contains_key(&socket))
    }

    /// How many local sockets listen on `route`.
    pub fn count(&self, route: &Route) -> usize {
        self.routes.get(route).map_or(0, |members| members.len())
    }

    /// Kicks every local socket (shutdown). Every socket is on the
    /// broadcast route.
    pub fn kick_all(&self, why: Kick) {
        if let Some(members) = self.routes.get(&Route::Broadcast) {
            for sub in members.values() {
                sub.outbox.kick(why);
            }
        }
    }

    /// Hands `msg` to every local socket on `route`, skipping the sender's
    /// own client where the route says so.
    pub fn dispatch(&self, route: &Route, msg: &Delivery, sender: &str) -> Fanout {
        let started = Instant::now();
        let mut fanout = Fanout::default();
        if let Some(members) = self.routes.get(route) {
            let skip = route.skips_sender().then_some(sender);
            for sub in members.values() {
                if skip == Some(sub.client.as_str()) {
                    continue;
                }
                match sub.outbox.offer(msg) {
                    Offer::Queued => fanout.delivered += 1,
                    Offer::Overflowed => fanout.overflowed += 1,
                    Offer::Closed => {}
                }
            }
        }
        metrics::dispatched(fanout.delivered, fanout.overflowed, started.elapsed());
        fanout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::id;

    fn msg() -> Delivery {
        Delivery::plain("{}")
    }

    #[test]
    fn transitions_are_reported_exactly_on_first_join_and_last_leave() {
        let router = Router::new();
        let (outbox, _rx) = Outbox::new(8);
        let routes = Route::for_socket(&id("g"), &id("a"));
        let (s1, s2) = (SocketId::next(), SocketId::next());

        assert_eq!(
            router.join(s1, &id("a"), &outbox, &routes, 0),
            Ok(routes.to_vec())
        );
        assert_eq!(router.join(s2, &id("a"), &outbox, &routes, 0), Ok(vec![]));
        assert!(router.leave(s1, &routes).is_empty());
        assert!(router.wants(&Route::Broadcast));
        assert_eq!(router.leave(s2, &routes), routes.to_vec());
        assert!(!router.wants(&Route::Broadcast));
        assert!(router.routes().is_empty());
        // Leaving twice changes nothing.
        assert!(router.leave(s2, &routes).is_empty());
    }

    #[test]
    fn a_client_at_its_limit_is_refused_and_nothing_changes() {
        let router = Router::new();
        let (outbox, _rx) = Outbox::new(8);
        let routes = Route::for_socket(&id("g"), &id("a"));
        let (s1, s2, s3) = (SocketId::next(), SocketId::next(), SocketId::next());
        router.join(s1, &id("a"), &outbox, &routes, 2).unwrap();
        router.join(s2, &id("a"), &outbox, &routes, 2).unwrap();
        assert_eq!(
            router.join(s3, &id("a"), &outbox, &routes, 2),
            Err(ClientFull(2))
        );
        // The refused socket holds nothing: two leaves empty every route.
        assert!(router.leave(s1, &routes).is_empty());
        assert_eq!(router.leave(s2, &routes), routes.to_vec());
        // Other clients are not limited by it.
        router.join(s1, &id("a"), &outbox, &routes, 1).unwrap();
        let b = Route::for_socket(&id("g"), &id("b"));
        assert!(router.join(s2, &id("b"), &outbox, &b, 1).is_ok());
    }

    #[test]
    fn group_skips_the_sender_but_direct_does_not() {
        let router = Router::new();
        let (a, mut a_rx) = Outbox::new(8);
        let (b, mut b_rx) = Outbox::new(8);
        router
            .join(
                SocketId::next(),
                &id("a"),
                &a,
                &Route::for_socket(&id("g"), &id("a")),
                0,
            )
            .unwrap();
        router
            .join(
                SocketId::next(),
                &id("b"),
                &b,
                &Route::for_socket(&id("g"), &id("b")),
                0,
            )
            .unwrap();

        let fanout = router.dispatch(&Route::Group(id("g")), &msg(), "a");
        assert_eq!(fanout.delivered, 1);
        assert!(a_rx.try_recv().is_err());
        assert!(b_rx.try_recv().is_ok());

        let fanout = router.dispatch(&Route::Client(id("a")), &msg(), "a");
        assert_eq!(fanout.delivered, 1);
        assert!(a_rx.try_recv().is_ok());

        let fanout = router.dispatch(&Route::Broadcast, &msg(), "svc");
        assert_eq!(fanout.delivered, 2);
    }

    #[test]
    fn a_full_socket_overflows_without_stopping_the_others() {
        let router = Router::new();
        let (slow, _slow_rx) = Outbox::new(1);
        let (fast, mut fast_rx) = Outbox::new(64);
        let route = [Route::Group(id("g"))];
        router
            .join(SocketId::next(), &id("slow"), &slow, &route, 0)
            .unwrap();
        router
            .join(SocketId::next(), &id("fast"), &fast, &route, 0)
            .unwrap();

        let mut overflowed = 0;
        for _ in 0..10 {
            overflowed += router.dispatch(&route[0], &msg(), "svc").overflowed;
        }
        assert_eq!(overflowed, 1);
        let mut got = 0;
        while fast_rx.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 10);
    }
}
