//! The cluster as its nodes describe it (`CLUSTER NODES`), and key slots
//! computed as Redis computes them.

/// Every slot of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// One node as the cluster describes it (`CLUSTER NODES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub port: u16,
    pub id: String,
    pub master: bool,
    /// Flagged `fail` (or `fail?`) by the node that was asked.
    pub failed: bool,
    /// The id of the master a replica follows.
    pub master_id: Option<String>,
    /// Owned slot ranges, inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl NodeView {
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// Slot ranges with their master's port; replicas' ports with their
/// master's id.
pub type Layout = (Vec<(u16, u16, u16)>, Vec<(u16, String)>);

/// Which master serves each slot range, and which master each replica
/// follows: what every node must agree on (a master ignores a manual
/// failover from a replica it does not know yet).
pub fn layout(nodes: &[NodeView]) -> Layout {
    let mut ranges: Vec<(u16, u16, u16)> = nodes
        .iter()
        .filter(|n| n.master && !n.failed)
        .flat_map(|n| n.slots.iter().map(move |&(a, b)| (a, b, n.port)))
        .collect();
    ranges.sort_unstable();
    let mut replicas: Vec<(u16, String)> = nodes
        .iter()
        .filter(|n| !n.master && !n.failed)
        .filter_map(|n| Some((n.port, n.master_id.clone()?)))
        .collect();
    replicas.sort_unstable();
    (ranges, replicas)
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <master> <ping>
/// <pong> <epoch> <link> <slot>…`; import/migrate markers (`[…]`) skipped.
pub fn parse_nodes(text: &str) -> Vec<NodeView> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let address = fields[1].split(['@', ',']).next()?;
            let port = address.rsplit_once(':')?.1.parse().ok()?;
            let flags: Vec<&str> = fields[2].split(',').collect();
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(NodeView {
                port,
                id: fields[0].to_owned(),
                master: flags.contains(&"master"),
                failed: flags.iter().any(|f| *f == "fail" || *f == "fail?"),
                master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
            })
        })
        .collect()
}

/// The slot of a key or channel, as the hub computes it
/// (`tests/cluster.rs` checks that against `CLUSTER KEYSLOT`).
pub fn key_slot(key: &str) -> u16 {
    aether_hub::broker::Slot::of(key).get()
}
