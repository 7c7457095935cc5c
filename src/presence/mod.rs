//! Presence: which client_ids are online in each group (docs/protocol.md
//! section 4).
//!
//! A client is online in a group while at least one of its sockets in that
//! group is connected. `join` and `leave` say whether the call changed that,
//! so the hub knows when to announce a join or a leave to the group.

mod memory;
mod redis;

pub use memory::MemoryPresence;
pub use redis::RedisPresence;

use crate::broker::BoxFuture;
use crate::protocol::VisionId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("the presence store is unavailable")]
    Unavailable,
}

pub trait Presence: Send + Sync + 'static {
    /// Counts one more socket of `client` in `group`; true when the client
    /// has just come online there.
    fn join<'a>(
        &'a self,
        group: &'a VisionId,
        client: &'a VisionId,
    ) -> BoxFuture<'a, Result<bool, PresenceError>>;

    /// Counts one socket less; true when the client has just gone offline.
    fn leave<'a>(
        &'a self,
        group: &'a VisionId,
        client: &'a VisionId,
    ) -> BoxFuture<'a, Result<bool, PresenceError>>;

    /// The client_ids online in `group`, sorted.
    fn members<'a>(
        &'a self,
        group: &'a VisionId,
    ) -> BoxFuture<'a, Result<Vec<String>, PresenceError>>;

    /// Every live instance that shares this presence, with the socket
    /// count it last recorded; empty when presence is this process's own.
    fn instances(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, PresenceError>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// Called once at shutdown, after every socket has left: removes
    /// whatever of this instance a shared store still holds.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}
