//! A Redis node's address: a cluster seed as configured, or a node as the
//! cluster announces it. The link (`link/mod.rs`) turns one into a client.

use std::fmt;

/// A node's `host:port`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl NodeAddr {
    /// `host:port` (a seed from `AETHER_REDIS_CLUSTER`).
    pub fn parse(text: &str) -> Option<NodeAddr> {
        let (host, port) = text.trim().rsplit_once(':')?;
        let port = port.parse().ok()?;
        (!host.is_empty()).then(|| NodeAddr {
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
        })
    }

    pub fn url(&self) -> String {
        format!("redis://{self}/")
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse() {
        let a = NodeAddr::parse("10.0.0.1:7000").expect("addr");
        assert_eq!((a.host.as_str(), a.port), ("10.0.0.1", 7000));
        assert_eq!(
            NodeAddr::parse("[::1]:7000").map(|a| a.to_string()),
            Some("[::1]:7000".into())
        );
        assert!(NodeAddr::parse("nowhere").is_none());
        assert!(NodeAddr::parse(":7000").is_none());
    }
}
