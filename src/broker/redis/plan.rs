//! The subscription plan: which channels to subscribe and unsubscribe now,
//! decided in one place for every topology.
//!
//! Subscriptions are level-triggered. The router's refcount transitions
//! (first local socket on a route, last one gone) only mark the route
//! dirty (`subscriptions.rs`); a supervisor then asks [`Unsubscribes::plan`]
//! what to do with the dirty routes, comparing what the router wants now
//! with what Redis confirmed. Join, leave, join of one route in quick
//! succession therefore ends subscribed, and leave, join, leave ends
//! unsubscribed, whatever order the marks arrived in; after a reconnect
//! every wanted route is dirty, and resubscribing is the same code.
//!
//! An unwanted route stays subscribed for [`UNSUBSCRIBE_AFTER`], so that a
//! client that reconnects at once does not make its channel flap. Pure:
//! no Redis, no clock of its own (the caller says what time it is).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::channels::Route;

/// How long an unwanted channel stays subscribed before UNSUBSCRIBE.
pub const UNSUBSCRIBE_AFTER: Duration = Duration::from_millis(750);
/// How often a supervisor looks at deferred unsubscribes.
pub const RECONCILE_EVERY: Duration = Duration::from_millis(250);
/// Channels per SUBSCRIBE or UNSUBSCRIBE command (or pipeline, on a
/// cluster).
pub const BATCH: usize = 1000;

/// What to send now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub subscribe: Vec<Route>,
    pub unsubscribe: Vec<Route>,
}

/// Unwanted routes still subscribed, with the time they became unwanted.
#[derive(Debug, Default)]
pub struct Unsubscribes {
    since: HashMap<Route, Instant>,
}

impl Unsubscribes {
    /// Decides, at `now`, what to do with the `dirty` routes and with the
    /// deferred unsubscribes: subscribe what is wanted and not confirmed;
    /// defer the unsubscribe of what is confirmed and no longer wanted;
    /// unsubscribe what has been unwanted for [`UNSUBSCRIBE_AFTER`] and
    /// still is.
    pub fn plan(
        &mut self,
        dirty: impl IntoIterator<Item = Route>,
        wanted: impl Fn(&Route) -> bool,
        confirmed: impl Fn(&Route) -> bool,
        now: Instant,
    ) -> Plan {
        let mut plan = Plan::default();
        for route in dirty {
            if wanted(&route) {
                self.since.remove(&route);
                if !confirmed(&route) {
                    plan.subscribe.push(route);
                }
            } else if confirmed(&route) {
                self.since.entry(route).or_insert(now);
            }
        }
        let due: Vec<Route> = self
            .since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= UNSUBSCRIBE_AFTER)
            .map(|(route, _)| route.clone())
            .collect();
        for route in due {
            self.since.remove(&route);
            if !wanted(&route) {
                plan.unsubscribe.push(route);
            }
        }
        plan
    }

    /// The route's subscription is gone (its connection was lost).
    pub fn forget(&mut self, route: &Route) {
        self.since.remove(route);
    }

    /// Every subscription is gone.
    pub fn clear(&mut self) {
        self.since.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::protocol::id;

    /// The router's wants and Redis's confirmations, as a supervisor
    /// would keep them after carrying out each plan.
    #[derive(Default)]
    struct World {
        wanted: HashSet<Route>,
        confirmed: HashSet<Route>,
        unsubscribes: Unsubscribes,
    }

    impl World {
        fn step(&mut self, dirty: &[Route], now: Instant) -> Plan {
            let plan = self.unsubscribes.plan(
                dirty.iter().cloned(),
                |r| self.wanted.contains(r),
                |r| self.confirmed.contains(r),
                now,
            );
            self.confirmed.extend(plan.subscribe.iter().cloned());
            for route in &plan.unsubscribe {
                self.confirmed.remove(route);
            }
            plan
        }
    }

    fn g(name: &str) -> Route {
        Route::Group(id(name))
    }

    /// Route `a` subscribed, then its last socket gone at `t`.
    fn left_at(t: Instant) -> World {
        let mut w = World::default();
        w.wanted.insert(g("a"));
        w.step(&[g("a")], t);
        w.wanted.remove(&g("a"));
        assert_eq!(w.step(&[g("a")], t), Plan::default(), "nothing at once");
        w
    }

    #[test]
    fn a_wanted_route_is_subscribed_once() {
        let mut w = World::default();
        let t = Instant::now();
        w.wanted.insert(g("a"));
        assert_eq!(w.step(&[g("a")], t).subscribe, vec![g("a")]);
        // Marked again while confirmed: nothing to send.
        assert_eq!(w.step(&[g("a")], t), Plan::default());
    }

    #[test]
    fn an_unwanted_route_is_unsubscribed_only_after_the_delay() {
        let t = Instant::now();
        let mut w = left_at(t);
        let early = t + UNSUBSCRIBE_AFTER - Duration::from_millis(1);
        assert_eq!(w.step(&[], early), Plan::default());
        let due = w.step(&[], t + UNSUBSCRIBE_AFTER);
        assert_eq!(due.unsubscribe, vec![g("a")]);
        assert!(w.confirmed.is_empty());
        // Nothing is left pending.
        assert_eq!(w.step(&[], t + UNSUBSCRIBE_AFTER * 4), Plan::default());
    }

    #[test]
    fn join_leave_join_ends_subscribed_without_a_flap() {
        let t = Instant::now();
        let mut w = left_at(t);
        w.wanted.insert(g("a"));
        assert_eq!(w.step(&[g("a")], t), Plan::default());
        // The deferred unsubscribe was called off.
        assert_eq!(w.step(&[], t + UNSUBSCRIBE_AFTER * 2), Plan::default());
        assert!(w.confirmed.contains(&g("a")));
    }

    #[test]
    fn leave_join_leave_ends_unsubscribed() {
        let mut w = World::default();
        let t = Instant::now();
        w.wanted.insert(g("a"));
        w.step(&[g("a")], t);
        // Leave, join and leave again before the supervisor looks: the
        // marks are one dirty route, judged by what is wanted now.
        w.wanted.remove(&g("a"));
        let later = t + Duration::from_millis(100);
        assert_eq!(w.step(&[g("a"), g("a")], later), Plan::default());
        let due = w.step(&[], later + UNSUBSCRIBE_AFTER);
        assert_eq!(due.unsubscribe, vec![g("a")]);
    }

    #[test]
    fn a_due_route_wanted_again_is_kept() {
        let t = Instant::now();
        let mut w = left_at(t);
        // Wanted again, but its mark not seen yet when the delay is up.
        w.wanted.insert(g("a"));
        assert_eq!(w.step(&[], t + UNSUBSCRIBE_AFTER), Plan::default());
        assert!(w.confirmed.contains(&g("a")));
    }

    #[test]
    fn a_forgotten_route_is_not_unsubscribed() {
        let t = Instant::now();
        let mut w = left_at(t);
        // Its connection was lost: Redis holds it no more.
        w.unsubscribes.forget(&g("a"));
        w.confirmed.clear();
        assert_eq!(w.step(&[], t + UNSUBSCRIBE_AFTER), Plan::default());
    }
}
