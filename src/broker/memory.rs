//! The in-memory broker: one instance, where publishing is dispatching.

use std::sync::Arc;

use super::{BoxFuture, Broker, BrokerError};
use crate::channels::Route;
use crate::protocol::Encoded;
use crate::router::Router;

pub struct MemoryBroker {
    router: Arc<Router>,
}

impl MemoryBroker {
    pub fn new(router: Arc<Router>) -> Self {
        MemoryBroker { router }
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, route: &Route, msg: Encoded, sender: &str) -> Result<(), BrokerError> {
        self.router.dispatch(route, &msg, sender);
        Ok(())
    }

    // The router's own table is the subscription: nothing else to tell.
    fn subscribe(&self, _routes: &[Route]) {}

    fn unsubscribe(&self, _routes: &[Route]) {}

    fn live<'a>(&'a self, _routes: &'a [Route]) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn is_ready(&self) -> bool {
        true
    }
}
