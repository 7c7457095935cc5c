//! The publisher's connections to the cluster's masters: one multiplexed
//! connection per master, opened when a message first goes there and
//! forgotten when it fails.
//!
//! Publishing to a master over a connection of our own keeps a sender's
//! order exactly as on one Redis (one connection, pipelines in order), and
//! does not depend on the cluster client knowing the master yet: redis-rs
//! only routes to a node it already holds a connection to, and it learns
//! of a promoted replica only when one of its own commands is redirected.
//! Each connection knows its master's lineage, so that the numbering of
//! kept messages starts a new epoch on a promoted replica
//! (`history.rs`, `NUMBER`).

use std::collections::HashMap;

use crate::broker::redis::link::{Commands, NodeAddr, RedisLink, Role, TIMEOUT};

#[derive(Default)]
pub struct Masters {
    conns: HashMap<NodeAddr, Commands>,
}

impl Masters {
    /// The connection to `master`, opened if need be; `None` if it cannot
    /// be reached.
    pub async fn get(&mut self, link: &RedisLink, master: &NodeAddr) -> Option<Commands> {
        if let Some(conn) = self.conns.get(master) {
            return Some(conn.clone());
        }
        let opened = match link.open_node(master, TIMEOUT, Role::Publish).await {
            Ok(conn) => Commands::master(conn).await,
            Err(e) => Err(e.into()),
        };
        match opened {
            Ok(conn) => {
                self.conns.insert(master.clone(), conn.clone());
                Some(conn)
            }
            Err(e) => {
                tracing::debug!(%master, "cannot reach a master to publish: {e}");
                None
            }
        }
    }

    /// A round trip on `master`'s connection failed: the next message
    /// opens a new one (the master may be gone; the slot map is read again).
    pub fn forget(&mut self, master: &NodeAddr) {
        self.conns.remove(master);
    }
}
