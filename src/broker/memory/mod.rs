//! The in-memory broker: one instance, where publishing is dispatching,
//! and history is a ring per route in this process (`history.rs`).

mod history;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{BoxFuture, Broker, BrokerError, Confirm, Keep};
use crate::channels::Route;
use crate::delivery::Delivery;
use crate::history::{Position, Recovery, Retention, Since};
use crate::protocol::Encoded;
use crate::router::Router;
use history::MemoryHistory;

pub struct MemoryBroker {
    router: Arc<Router>,
    /// `None` with history off.
    history: Option<MemoryHistory>,
    /// Kept messages since the last sweep of expired history.
    since_sweep: AtomicU64,
}

/// Kept messages between two sweeps of expired history.
const SWEEP_EVERY: u64 = 64 * 1024;

impl MemoryBroker {
    pub fn new(router: Arc<Router>, retention: Retention) -> Self {
        MemoryBroker {
            router,
            history: retention.is_on().then(|| MemoryHistory::new(retention)),
            since_sweep: AtomicU64::new(0),
        }
    }

    /// Numbers, keeps and dispatches a message; sweeps now and then, so
    /// history stays bounded without a task of its own.
    fn keep(
        &self,
        history: &MemoryHistory,
        route: &Route,
        msg: &Encoded,
        sender: &str,
    ) -> Position {
        if self.since_sweep.fetch_add(1, Ordering::Relaxed) >= SWEEP_EVERY {
            self.since_sweep.store(0, Ordering::Relaxed);
            history.sweep();
        }
        history.append(route, msg.as_str(), sender, |delivery| {
            self.router.dispatch(route, delivery, sender);
        })
    }
}

impl Broker for MemoryBroker {
    fn publish(
        &self,
        route: &Route,
        msg: Encoded,
        sender: &str,
        keep: Keep,
        confirm: Option<Confirm>,
    ) -> Result<(), BrokerError> {
        let position = match (&self.history, keep) {
            (Some(history), Keep::Yes) if route.is_kept() => {
                Some(self.keep(history, route, &msg, sender))
            }
            _ => {
                self.router
                    .dispatch(route, &Delivery::plain(msg.as_str()), sender);
                None
            }
        };
        if let Some(confirm) = confirm {
            confirm.tell(Ok(position));
        }
        Ok(())
    }

    fn recover<'a>(
        &'a self,
        route: &'a Route,
        since: &'a Since,
    ) -> BoxFuture<'a, Result<Recovery, BrokerError>> {
        let recovery = match &self.history {
            Some(history) => history.recover(route, since),
            None => Recovery::off(),
        };
        Box::pin(std::future::ready(Ok(recovery)))
    }

    // The router's own table is the subscription: nothing else to tell.
    fn subscribe(&self, _routes: &[Route]) {}

    fn unsubscribe(&self, _routes: &[Route]) {}

    fn live<'a>(&'a self, _routes: &'a [Route]) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn unready(&self) -> Option<String> {
        None
    }
}
