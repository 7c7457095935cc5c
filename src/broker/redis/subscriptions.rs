//! What the router wants subscribed and what Redis confirmed, shared by
//! the broker's callers (joins mark their routes dirty and wait on
//! confirmations) and the supervisor that reconciles the two with
//! `plan.rs`: the single-Redis one (`single.rs`) or the cluster one
//! (`cluster/`).

use std::collections::HashSet;
use std::sync::Mutex;

use tokio::sync::{watch, Notify};

use crate::channels::Route;
use crate::metrics;

/// What the router wants and what Redis confirmed, shared between the
/// broker's callers and the supervisor.
#[derive(Default)]
pub struct Subscriptions {
    pub dirty: Mutex<HashSet<Route>>,
    pub wake: Notify,
    pub confirmed: Mutex<HashSet<Route>>,
    pub confirmations: watch::Sender<u64>,
}

impl Subscriptions {
    /// These routes' local refcount changed: the supervisor looks at them.
    pub fn mark_dirty(&self, routes: &[Route]) {
        if routes.is_empty() {
            return;
        }
        if let Ok(mut dirty) = self.dirty.lock() {
            dirty.extend(routes.iter().cloned());
        }
        self.wake.notify_one();
    }

    /// Every wanted route must be looked at again (after a reconnect).
    pub fn mark_all(&self, routes: impl IntoIterator<Item = Route>) {
        if let Ok(mut dirty) = self.dirty.lock() {
            dirty.extend(routes);
        }
    }

    pub fn take_dirty(&self) -> Vec<Route> {
        self.dirty
            .lock()
            .map(|mut d| d.drain().collect())
            .unwrap_or_default()
    }

    pub fn is_confirmed(&self, route: &Route) -> bool {
        self.confirmed.lock().is_ok_and(|c| c.contains(route))
    }

    pub fn all_confirmed(&self, routes: &[Route]) -> bool {
        self.confirmed
            .lock()
            .is_ok_and(|c| routes.iter().all(|r| c.contains(r)))
    }

    /// Every subscription is gone (the connection was lost).
    pub fn lose_all(&self) {
        if let Ok(mut confirmed) = self.confirmed.lock() {
            confirmed.clear();
        }
        metrics::redis_channels(0);
    }

    /// Records what Redis confirmed and wakes joins waiting for it.
    pub fn confirm(&self, routes: &[Route], subscribed: bool) {
        if let Ok(mut confirmed) = self.confirmed.lock() {
            for route in routes {
                if subscribed {
                    confirmed.insert(route.clone());
                } else {
                    confirmed.remove(route);
                }
            }
            metrics::redis_channels(confirmed.len());
        }
        self.confirmations.send_modify(|n| *n += 1);
    }
}
