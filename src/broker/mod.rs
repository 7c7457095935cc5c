//! The broker: how a message reaches every instance that has sockets on
//! its route, and how this instance comes to receive a route's messages.
//!
//! The router tells the broker about the routes whose local refcount went
//! 0 -> 1 ([`Broker::subscribe`]) or 1 -> 0 ([`Broker::unsubscribe`]); the
//! broker delivers incoming messages into the router. In memory the router
//! is the whole world; the Redis implementation publishes on Redis and
//! subscribes channels on one shared pub/sub connection (on a Redis
//! Cluster, one per shard master): `redis/`, whose module comment maps
//! its layers.

mod memory;
pub(crate) mod redis;

use std::future::Future;
use std::pin::Pin;

pub use memory::MemoryBroker;
pub use redis::link::TIMEOUT as REDIS_TIMEOUT;
pub use redis::slots::Slot;
pub use redis::RedisBroker;

use tokio::sync::oneshot;

use crate::channels::Route;
use crate::history::{Position, Recovery, Since};
use crate::protocol::Encoded;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The message was not published.
    #[error("the message broker is unavailable")]
    Unavailable,
    /// The message reached Redis, but no answer came back (the connection
    /// broke, or the answer took too long): it may have been published.
    #[error("the message broker did not confirm the message; it may have been published")]
    Unconfirmed,
}

/// Whether a published message is kept in history (docs/protocol.md section
/// 9): numbered, stored, and delivered with its `offset` and `epoch`.
/// With history off, `Yes` is `No`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    No,
    Yes,
}

/// What became of a published message: published (where history numbered
/// it, when it keeps it), or not.
pub type Published = Result<Option<Position>, BrokerError>;

/// Told once what became of one message, when it is known: Redis's answer
/// (in memory, at once). Whoever holds it last and has not told it (a
/// message dropped on its way, a queue that closed) tells it
/// [`BrokerError::Unavailable`] by dropping it, so a message that asked
/// is answered exactly once whatever happens to it (docs/protocol.md
/// section 10).
pub struct Confirm(Option<Box<dyn FnOnce(Published) + Send>>);

impl Confirm {
    pub fn new(tell: impl FnOnce(Published) + Send + 'static) -> Confirm {
        Confirm(Some(Box::new(tell)))
    }

    /// A confirmation read from a channel.
    pub fn channel() -> (Confirm, oneshot::Receiver<Published>) {
        let (tx, rx) = oneshot::channel();
        let confirm = Confirm::new(move |published| {
            let _ = tx.send(published);
        });
        (confirm, rx)
    }

    pub fn tell(mut self, published: Published) {
        if let Some(tell) = self.0.take() {
            tell(published);
        }
    }
}

impl Drop for Confirm {
    fn drop(&mut self) {
        if let Some(tell) = self.0.take() {
            tell(Err(BrokerError::Unavailable));
        }
    }
}

impl std::fmt::Debug for Confirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Confirm")
    }
}

pub trait Broker: Send + Sync + 'static {
    /// Sends `msg` to every socket on `route`, on every instance. Never
    /// waits: a message that cannot be sent now fails now. `confirm`, if
    /// any, is told its fate once known (also when it fails now).
    fn publish(
        &self,
        route: &Route,
        msg: Encoded,
        sender: &str,
        keep: Keep,
        confirm: Option<Confirm>,
    ) -> Result<(), BrokerError>;

    /// The kept messages of `route` after `since`, and its position.
    fn recover<'a>(
        &'a self,
        route: &'a Route,
        since: &'a Since,
    ) -> BoxFuture<'a, Result<Recovery, BrokerError>>;

    /// These routes now have a local subscriber.
    fn subscribe(&self, routes: &[Route]);

    /// These routes no longer have a local subscriber.
    fn unsubscribe(&self, routes: &[Route]);

    /// Resolves once messages published to `routes` reach this instance.
    fn live<'a>(&'a self, routes: &'a [Route]) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Why the hub cannot deliver now (`/readyz` shows it); `None` when
    /// it can.
    fn unready(&self) -> Option<String>;
}
