//! Presence for a single instance: socket counts per client per group.

use std::collections::HashMap;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::{Presence, PresenceError};
use crate::broker::BoxFuture;
use crate::protocol::VisionId;

#[derive(Default)]
pub struct MemoryPresence {
    groups: DashMap<VisionId, HashMap<VisionId, usize>>,
}

impl MemoryPresence {
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&self, group: &VisionId, client: &VisionId) -> bool {
        let mut clients = self.groups.entry(group.clone()).or_default();
        let sockets = clients.entry(client.clone()).or_insert(0);
        *sockets += 1;
        *sockets == 1
    }

    fn remove(&self, group: &VisionId, client: &VisionId) -> bool {
        let Entry::Occupied(mut clients) = self.groups.entry(group.clone()) else {
            return false;
        };
        let Some(sockets) = clients.get_mut().get_mut(client) else {
            return false;
        };
        *sockets -= 1;
        if *sockets > 0 {
            return false;
        }
        clients.get_mut().remove(client);
        if clients.get().is_empty() {
            clients.remove();
        }
        true
    }

    fn list(&self, group: &VisionId) -> Vec<String> {
        let mut members: Vec<String> = self
            .groups
            .get(group)
            .map(|clients| clients.keys().map(|c| c.to_string()).collect())
            .unwrap_or_default();
        members.sort_unstable();
        members
    }
}

impl Presence for MemoryPresence {
    fn join<'a>(
        &'a self,
        group: &'a VisionId,
        client: &'a VisionId,
    ) -> BoxFuture<'a, Result<bool, PresenceError>> {
        Box::pin(std::future::ready(Ok(self.add(group, client))))
    }

    fn leave<'a>(
        &'a self,
        group: &'a VisionId,
        client: &'a VisionId,
    ) -> BoxFuture<'a, Result<bool, PresenceError>> {
        Box::pin(std::future::ready(Ok(self.remove(group, client))))
    }

    fn members<'a>(
        &'a self,
        group: &'a VisionId,
    ) -> BoxFuture<'a, Result<Vec<String>, PresenceError>> {
        Box::pin(std::future::ready(Ok(self.list(group))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::id;

    #[test]
    fn a_client_is_online_while_any_of_its_sockets_is() {
        let p = MemoryPresence::new();
        let (g, a, b) = (id("g"), id("a"), id("b"));
        assert!(p.add(&g, &b));
        assert!(p.add(&g, &a));
        assert!(!p.add(&g, &a));
        assert_eq!(p.list(&g), vec!["a", "b"]);
        assert!(!p.remove(&g, &a));
        assert_eq!(p.list(&g), vec!["a", "b"]);
        assert!(p.remove(&g, &a));
        assert!(p.remove(&g, &b));
        assert!(p.list(&g).is_empty());
        assert!(!p.remove(&g, &b));
    }
}
