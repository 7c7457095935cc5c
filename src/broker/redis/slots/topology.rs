//! The cluster's shape as the broker needs it: which master owns each
//! slot, read from `CLUSTER SHARDS` (Redis 7; `CLUSTER SLOTS` is
//! deprecated).
//!
//! [`Topology::fetch`] asks the nodes it knows (the last topology's nodes,
//! then the configured seeds), one at a time, each bounded in time, so a
//! dead master or seed costs one timeout. The cluster broker refreshes it
//! on a timer, when a publish is answered `MOVED`/`ASK`, when a node
//! unsubscribes a channel itself (its slot moved) and after a shard
//! connection is lost.

use std::time::Duration;

use redis::Value;

use super::slot::{Slot, SLOTS};
use crate::broker::redis::link::{reason, LinkError, NodeAddr, RedisLink, Role};

/// How long one node may take to answer `CLUSTER SHARDS`.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Which master serves each slot, and every node heard of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Per slot, an index into `masters` (`None`: no healthy master).
    owners: Vec<Option<u16>>,
    masters: Vec<NodeAddr>,
    /// Per master, its online replicas.
    replicas: Vec<usize>,
    /// Every node, replicas included: where to ask next time.
    nodes: Vec<NodeAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// With the last node's failure, in [`reason`]'s words.
    #[error("no cluster node answered CLUSTER SHARDS; last: {0}")]
    NoAnswer(String),
    #[error("unexpected CLUSTER SHARDS answer")]
    Malformed,
}

impl Topology {
    pub fn empty() -> Topology {
        Topology {
            owners: vec![None; usize::from(SLOTS)],
            masters: Vec::new(),
            replicas: Vec::new(),
            nodes: Vec::new(),
        }
    }

    /// The healthy master that owns `slot`.
    pub fn master_of(&self, slot: Slot) -> Option<&NodeAddr> {
        let index = self.owners[usize::from(slot.get())]?;
        self.masters.get(usize::from(index))
    }

    pub fn masters(&self) -> &[NodeAddr] {
        &self.masters
    }

    /// How many online replicas `master` has.
    pub fn replicas_of(&self, master: &NodeAddr) -> usize {
        self.masters
            .iter()
            .position(|m| m == master)
            .and_then(|i| self.replicas.get(i).copied())
            .unwrap_or(0)
    }

    /// Whether every slot has a healthy master.
    pub fn is_complete(&self) -> bool {
        self.owners.iter().all(Option::is_some)
    }

    /// Asks the known nodes, then the link's seeds, until one answers.
    pub async fn fetch(&self, link: &RedisLink) -> Result<Topology, TopologyError> {
        let mut candidates: Vec<&NodeAddr> = self.masters.iter().collect();
        candidates.extend(self.nodes.iter().chain(link.seeds()));
        let mut asked = std::collections::HashSet::new();
        let mut last = String::from("no node to ask");
        for addr in candidates {
            if !asked.insert(addr) {
                continue;
            }
            let answer = tokio::time::timeout(ASK_TIMEOUT * 2, ask(link, addr)).await;
            match answer {
                Ok(Ok(value)) => match Topology::parse(&value) {
                    Some(t) if !t.masters.is_empty() => return Ok(t),
                    _ => return Err(TopologyError::Malformed),
                },
                Ok(Err(e)) => {
                    tracing::debug!(node = %addr, "CLUSTER SHARDS failed: {e}");
                    last = format!("{addr}: {}", reason(&LinkError::Redis(e)));
                }
                Err(_) => {
                    tracing::debug!(node = %addr, "CLUSTER SHARDS timed out");
                    last = format!("{addr}: {}", LinkError::Timeout);
                }
            }
        }
        Err(TopologyError::NoAnswer(last))
    }

    /// Reads a `CLUSTER SHARDS` answer (RESP2 arrays or RESP3 maps).
    pub fn parse(value: &Value) -> Option<Topology> {
        let Value::Array(shards) = value else {
            return None;
        };
        let mut topology = Topology::empty();
        for shard in shards {
            let fields = fields(shard)?;
            let slots = ints(lookup(&fields, "slots")?)?;
            let Value::Array(nodes) = lookup(&fields, "nodes")? else {
                return None;
            };
            let mut master = None;
            let mut replicas = 0;
            for node in nodes {
                let node = fields_of_node(node)?;
                topology.nodes.push(node.addr.clone());
                match (node.master, node.online) {
                    (true, true) => master = Some(node.addr),
                    (false, true) => replicas += 1,
                    _ => {}
                }
            }
            let Some(master) = master else { continue };
            let index = u16::try_from(topology.masters.len()).ok()?;
            topology.masters.push(master);
            topology.replicas.push(replicas);
            for range in slots.chunks(2) {
                let &[start, end] = range else { return None };
                let (start, end) = (usize::try_from(start).ok()?, usize::try_from(end).ok()?);
                for owner in topology.owners.get_mut(start..=end)? {
                    *owner = Some(index);
                }
            }
        }
        Some(topology)
    }
}

async fn ask(link: &RedisLink, addr: &NodeAddr) -> redis::RedisResult<Value> {
    let mut conn = link.open_node(addr, ASK_TIMEOUT, Role::Topology).await?;
    redis::cmd("CLUSTER")
        .arg("SHARDS")
        .query_async(&mut conn)
        .await
}

struct NodeFields {
    addr: NodeAddr,
    master: bool,
    online: bool,
}

fn fields_of_node(node: &Value) -> Option<NodeFields> {
    let fields = fields(node)?;
    let port = lookup(&fields, "port")
        .or_else(|| lookup(&fields, "tls-port"))
        .and_then(int)?;
    let host = lookup(&fields, "endpoint")
        .and_then(text)
        .filter(|h| !h.is_empty() && h != "?")
        .or_else(|| lookup(&fields, "ip").and_then(text))?;
    Some(NodeFields {
        addr: NodeAddr {
            host,
            port: u16::try_from(port).ok()?,
        },
        master: lookup(&fields, "role").and_then(text).as_deref() == Some("master"),
        online: lookup(&fields, "health").and_then(text).as_deref() == Some("online"),
    })
}

/// A map's entries, from a RESP3 map or a RESP2 flat key/value array.
fn fields(value: &Value) -> Option<Vec<(String, &Value)>> {
    match value {
        Value::Map(entries) => entries.iter().map(|(k, v)| Some((text(k)?, v))).collect(),
        Value::Array(items) => items
            .chunks(2)
            .map(|kv| match kv {
                [k, v] => Some((text(k)?, v)),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn lookup<'a>(fields: &[(String, &'a Value)], key: &str) -> Option<&'a Value> {
    fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

fn ints(value: &Value) -> Option<Vec<i64>> {
    match value {
        Value::Array(items) => items.iter().map(int).collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn node(port: i64, role: &str, health: &str) -> Value {
        Value::Array(vec![
            bulk("id"),
            bulk("e0c4d7f1"),
            bulk("port"),
            Value::Int(port),
            bulk("ip"),
            bulk("127.0.0.1"),
            bulk("endpoint"),
            bulk("127.0.0.1"),
            bulk("role"),
            bulk(role),
            bulk("replication-offset"),
            Value::Int(1234),
            bulk("health"),
            bulk(health),
        ])
    }

    fn shard(slots: &[i64], nodes: Vec<Value>) -> Value {
        Value::Array(vec![
            bulk("slots"),
            Value::Array(slots.iter().map(|&s| Value::Int(s)).collect()),
            bulk("nodes"),
            Value::Array(nodes),
        ])
    }

    /// The shape of a `CLUSTER SHARDS` answer from Redis 7.0 (RESP2).
    fn captured() -> Value {
        Value::Array(vec![
            shard(
                &[0, 5460],
                vec![
                    node(7000, "master", "online"),
                    node(7004, "replica", "online"),
                ],
            ),
            shard(
                &[5461, 10922],
                vec![
                    node(7005, "replica", "online"),
                    node(7001, "master", "online"),
                ],
            ),
            shard(
                &[10923, 12000, 12002, 16383],
                vec![
                    node(7002, "master", "failed"),
                    node(7003, "replica", "online"),
                ],
            ),
        ])
    }

    #[test]
    fn masters_own_their_slot_ranges() {
        let t = Topology::parse(&captured()).expect("parsed");
        let port = |n: u16| t.master_of(Slot::new(n).expect("slot")).map(|a| a.port);
        assert_eq!(port(0), Some(7000));
        assert_eq!(port(5460), Some(7000));
        assert_eq!(port(5461), Some(7001));
        assert_eq!(port(10922), Some(7001));
        // A failed master owns nothing until its replica takes over.
        assert_eq!(port(10923), None);
        assert_eq!(port(12001), None);
        assert!(!t.is_complete());
        assert_eq!(t.masters().len(), 2);
        assert_eq!(t.replicas_of(&t.masters()[0]), 1);
        assert_eq!(t.nodes.len(), 6);
    }

    #[test]
    fn resp3_maps_read_the_same() {
        let map = |v: Value| match v {
            Value::Array(items) => Value::Map(
                items
                    .chunks(2)
                    .map(|kv| (kv[0].clone(), kv[1].clone()))
                    .collect(),
            ),
            other => other,
        };
        let resp3 = Value::Array(vec![map(Value::Array(vec![
            bulk("slots"),
            Value::Array(vec![Value::Int(0), Value::Int(16383)]),
            bulk("nodes"),
            Value::Array(vec![map(node(7000, "master", "online"))]),
        ]))]);
        let t = Topology::parse(&resp3).expect("parsed");
        assert!(t.is_complete());
        assert_eq!(t.masters()[0].to_string(), "127.0.0.1:7000");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Topology::parse(&Value::Int(3)).is_none());
        assert!(Topology::parse(&Value::Array(vec![bulk("slots")])).is_none());
    }
}
