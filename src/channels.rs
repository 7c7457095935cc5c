//! Routes and the Redis names they map to (docs/protocol.md sections 3 and 4).
//!
//! A [`Route`] is what a socket listens on and what a message is sent to.
//! [`Names`] turns routes into channel names and back, and builds presence
//! keys, all under the configured prefix: Redis pub/sub ignores database
//! numbers, so the prefix is the only isolation between environments.
//!
//! History keys (docs/protocol.md section 9), one pair per route, hash-tagged by
//! the route's full channel name so that both live in the channel's Redis
//! Cluster slot and one script can touch them (other services may read
//! them; they are part of the hub's documented surface):
//!
//! - `{<channel>}:history`: a stream of the route's kept messages, capped
//!   near `AETHER_HISTORY_SIZE` entries (`MAXLEN ~`: the last
//!   `AETHER_HISTORY_SIZE` and possibly a few older ones, which the hub
//!   never reads), expiring at least `AETHER_HISTORY_TTL_SECS` after the
//!   last one (at most 30 s more). Entry ID `<offset>-1`; fields `t` (the
//!   delivered text, `offset` and `epoch` included), `s` (the sender's
//!   `from_id`), `at` (Redis time in ms when it was kept).
//! - `{<channel>}:position`: a hash, `e` the route's epoch, `n` the last
//!   offset given out, `l` the master's lineage (Sentinel and cluster),
//!   `x` when the expiries were last refreshed; expires at least 24 hours
//!   after the last kept message.
//!
//! For prefix `p:` and group `g1`: `{p:ws:group:g1}:history` and
//! `{p:ws:group:g1}:position`.
//!
//! Operators' fleet-wide actions (docs/protocol.md section 11) travel on
//! one more channel, `{prefix}ws:control`, which only hubs listen on; and
//! revocations are kept in the sorted set `{prefix}ws:revoked` (see
//! `operator/store.rs`).

use crate::protocol::VisionId;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// Every socket of one client, whatever its group.
    Client(VisionId),
    /// Every socket of one group.
    Group(VisionId),
    /// Every socket.
    Broadcast,
    /// The hubs themselves: operators' actions (docs/protocol.md section
    /// 11). No socket joins it; the operator module's listener does.
    Control,
}

impl Route {
    /// The three routes every socket joins on connect.
    pub fn for_socket(group: &VisionId, client: &VisionId) -> [Route; 3] {
        [
            Route::Client(client.clone()),
            Route::Group(group.clone()),
            Route::Broadcast,
        ]
    }

    /// Whether history may keep this route's messages (all but control's).
    pub fn is_kept(&self) -> bool {
        !matches!(self, Route::Control)
    }

    /// Group and broadcast messages skip the sender's own client_id; a
    /// direct message reaches every socket of its recipient, sender or not.
    pub fn skips_sender(&self) -> bool {
        matches!(self, Route::Group(_) | Route::Broadcast)
    }
}

/// Channel and key names under one prefix.
#[derive(Debug, Clone, Default)]
pub struct Names {
    prefix: String,
}

const CLIENT: &str = "ws:client:";
const GROUP: &str = "ws:group:";
const BROADCAST: &str = "ws:broadcast";
const CONTROL: &str = "ws:control";
const REVOKED: &str = "ws:revoked";
const PRESENCE: &str = "ws:presence:group:";

impl Names {
    pub fn new(prefix: impl Into<String>) -> Self {
        Names {
            prefix: prefix.into(),
        }
    }

    pub fn channel(&self, route: &Route) -> String {
        let p = &self.prefix;
        match route {
            Route::Client(id) => format!("{p}{CLIENT}{id}"),
            Route::Group(id) => format!("{p}{GROUP}{id}"),
            Route::Broadcast => format!("{p}{BROADCAST}"),
            Route::Control => format!("{p}{CONTROL}"),
        }
    }

    /// The route of a channel name, or `None` for a name this hub does not
    /// use (another prefix, a malformed id).
    pub fn route(&self, channel: &str) -> Option<Route> {
        let rest = channel.strip_prefix(self.prefix.as_str())?;
        if rest == BROADCAST {
            return Some(Route::Broadcast);
        }
        if rest == CONTROL {
            return Some(Route::Control);
        }
        if let Some(id) = rest.strip_prefix(CLIENT) {
            return VisionId::parse(id).ok().map(Route::Client);
        }
        let id = rest.strip_prefix(GROUP)?;
        VisionId::parse(id).ok().map(Route::Group)
    }

    /// The Redis SET of the client_ids online in a group.
    pub fn presence_key(&self, group: &VisionId) -> String {
        format!("{}{PRESENCE}{group}", self.prefix)
    }

    /// The SET of instances holding `client` in `group` (presence/redis.rs),
    /// hash-tagged with the group's public key so that both live in one
    /// Redis Cluster slot and one script updates them: the public key has
    /// no tag of its own (its name is public), so it hashes as its whole
    /// name, which is this key's tag. (On a cluster the prefix has no
    /// braces: `config.rs` refuses them there.)
    pub fn holders_key(&self, group: &VisionId, client: &VisionId) -> String {
        format!(
            "{}{HOLDERS}{{{}}}:{client}",
            self.prefix,
            self.presence_key(group)
        )
    }

    /// An instance's liveness record: exists while the instance lives.
    pub fn instance_key(&self, instance: &str) -> String {
        format!("{}{INSTANCE}{instance}", self.prefix)
    }

    /// The SET of `"group client"` entries an instance holds.
    pub fn instance_members_key(&self, instance: &str) -> String {
        format!("{}{INSTANCE}{instance}:members", self.prefix)
    }

    /// Set when others swept an instance's entries (and announced its
    /// clients' leaves): if it comes back, it announces them again.
    pub fn instance_swept_key(&self, instance: &str) -> String {
        format!("{}{INSTANCE}{instance}:swept", self.prefix)
    }

    /// The SET of every instance that has recorded presence.
    pub fn instances_key(&self) -> String {
        format!("{}{INSTANCES}", self.prefix)
    }

    /// The stream of `route`'s kept messages (see the module docs).
    pub fn history_key(&self, route: &Route) -> String {
        format!("{{{}}}{HISTORY}", self.channel(route))
    }

    /// The hash of `route`'s epoch and last offset (see the module docs).
    pub fn position_key(&self, route: &Route) -> String {
        format!("{{{}}}{POSITION}", self.channel(route))
    }

    /// The sorted set of revocations, scored by when each ends.
    pub fn revoked_key(&self) -> String {
        format!("{}{REVOKED}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

const HOLDERS: &str = "ws:presence:holders:";
const INSTANCE: &str = "ws:presence:instance:";
const INSTANCES: &str = "ws:presence:instances";
const HISTORY: &str = ":history";
const POSITION: &str = ":position";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::id;

    #[test]
    fn names_follow_the_contract() {
        let plain = Names::default();
        assert_eq!(plain.channel(&Route::Client(id("c1"))), "ws:client:c1");
        assert_eq!(plain.channel(&Route::Group(id("g1"))), "ws:group:g1");
        assert_eq!(plain.channel(&Route::Broadcast), "ws:broadcast");
        assert_eq!(plain.presence_key(&id("g1")), "ws:presence:group:g1");

        let staged = Names::new("staging:");
        assert_eq!(
            staged.channel(&Route::Group(id("g1"))),
            "staging:ws:group:g1"
        );
        assert_eq!(
            staged.presence_key(&id("g1")),
            "staging:ws:presence:group:g1"
        );
    }

    /// What Redis Cluster hashes: the first non-empty `{…}`, or the name.
    fn hashed(key: &str) -> &str {
        key.split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(tag, _)| tag)
            .filter(|tag| !tag.is_empty())
            .unwrap_or(key)
    }

    #[test]
    fn holders_keys_share_their_presence_slot() {
        let plain = Names::new("p:");
        assert_eq!(
            plain.holders_key(&id("g1"), &id("c1")),
            "p:ws:presence:holders:{p:ws:presence:group:g1}:c1"
        );
        for prefix in ["", "p:", "{tenant}:", "a{b}c:"] {
            let names = Names::new(prefix);
            let holders = names.holders_key(&id("g1"), &id("c1"));
            let public = names.presence_key(&id("g1"));
            assert_eq!(hashed(&holders), hashed(&public), "prefix {prefix:?}");
        }
    }

    #[test]
    fn history_keys_share_their_channel_slot() {
        let names = Names::new("p:");
        let group = Route::Group(id("g1"));
        assert_eq!(names.history_key(&group), "{p:ws:group:g1}:history");
        assert_eq!(names.position_key(&group), "{p:ws:group:g1}:position");
        assert_eq!(
            Names::default().position_key(&Route::Broadcast),
            "{ws:broadcast}:position"
        );
    }

    #[test]
    fn channel_names_round_trip_and_foreign_names_are_refused() {
        let names = Names::new("p:");
        for route in [
            Route::Client(id("a")),
            Route::Group(id("b")),
            Route::Broadcast,
            Route::Control,
        ] {
            assert_eq!(names.route(&names.channel(&route)), Some(route));
        }
        assert_eq!(names.route("ws:broadcast"), None);
        assert_eq!(names.route("p:ws:group:bad id"), None);
        assert_eq!(names.route("p:ws:other:x"), None);
    }
}
