//! Redis Cluster's slots: which slot a channel is in ([`Slot`]), which
//! master owns each slot ([`Topology`], from `CLUSTER SHARDS`), and the
//! [`SlotMap`] the cluster broker works from: the last topology read,
//! shared by the cluster supervisor (which refreshes it) and the
//! publisher (which reads it for every batch, and asks for a refresh when
//! a master answers `MOVED`/`ASK` or cannot be reached).

mod slot;
mod topology;

use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

use super::link::NodeAddr;
pub use slot::Slot;
pub use topology::Topology;

/// The current slot map, shared by the supervisor (which refreshes it) and
/// the publisher (which reads it, and asks for a refresh on `MOVED`).
pub struct SlotMap {
    current: RwLock<Arc<Topology>>,
    stale: Notify,
}

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap::new()
    }
}

impl SlotMap {
    pub fn new() -> SlotMap {
        SlotMap {
            current: RwLock::new(Arc::new(Topology::empty())),
            stale: Notify::new(),
        }
    }

    /// The master that owns `channel`'s slot, as last read.
    pub fn master_of(&self, channel: &str) -> Option<NodeAddr> {
        self.get().master_of(Slot::of(channel)).cloned()
    }

    /// How many online replicas `master` has, as last read.
    pub fn replicas_of(&self, master: &NodeAddr) -> usize {
        self.get().replicas_of(master)
    }

    /// A redirection was seen: the map is out of date.
    pub fn moved(&self) {
        self.stale.notify_one();
    }

    /// Resolves when someone saw the map is out of date.
    pub async fn stale(&self) {
        self.stale.notified().await
    }

    pub fn get(&self) -> Arc<Topology> {
        self.current
            .read()
            .map(|t| Arc::clone(&t))
            .unwrap_or_else(|_| Arc::new(Topology::empty()))
    }

    pub fn set(&self, topology: Topology) {
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(topology);
        }
    }
}
