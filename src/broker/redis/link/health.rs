//! Which of the link's connections is down, and why, in words an operator
//! can act on: `TLS: …` (a certificate that does not verify, a client
//! certificate refused), `auth: …` (a wrong password, a disabled user),
//! `permission: …` (an ACL user without a command the hub needs),
//! `no master known (…)` (Sentinel), `unreachable: …`. `/readyz`, the
//! `aether_redis_connection_up` gauge and the supervisors' log lines all
//! read it from here.

use std::sync::Mutex;

use super::LinkError;
use crate::metrics;

/// The two connections that make an instance ready (on a cluster, the
/// pub/sub side stands for every shard's connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    Commands,
    PubSub,
}

impl Connection {
    pub fn as_str(self) -> &'static str {
        match self {
            Connection::Commands => "commands",
            Connection::PubSub => "pubsub",
        }
    }

    fn index(self) -> usize {
        match self {
            Connection::Commands => 0,
            Connection::PubSub => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Starting,
    Up,
    Down(String),
}

pub struct Health {
    states: Mutex<[State; 2]>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            states: Mutex::new([State::Starting, State::Starting]),
        }
    }
}

impl Health {
    pub fn up(&self, connection: Connection) {
        self.set(connection, State::Up);
    }

    pub fn down(&self, connection: Connection, why: &LinkError) {
        self.set(connection, State::Down(reason(why)));
    }

    /// Whether `why` differs from the failure last recorded.
    pub fn is_new(&self, connection: Connection, why: &LinkError) -> bool {
        let Ok(states) = self.states.lock() else {
            return true;
        };
        states[connection.index()] != State::Down(reason(why))
    }

    fn set(&self, connection: Connection, state: State) {
        metrics::redis_connection_up(connection.as_str(), state == State::Up);
        if let Ok(mut states) = self.states.lock() {
            states[connection.index()] = state;
        }
    }

    /// A line for each connection that is not up.
    pub fn describe(&self) -> String {
        let Ok(states) = self.states.lock() else {
            return String::new();
        };
        let mut lines = Vec::new();
        for connection in [Connection::Commands, Connection::PubSub] {
            let why = match &states[connection.index()] {
                State::Up => continue,
                State::Down(why) => why.as_str(),
                State::Starting if connection == Connection::PubSub => {
                    "waiting for the command connection"
                }
                State::Starting => "connecting",
            };
            lines.push(format!("redis {}: {why}", connection.as_str()));
        }
        lines.join("\n")
    }
}

/// `why` as an operator reads it: what kind of failure first.
pub fn reason(why: &LinkError) -> String {
    let LinkError::Redis(e) = why else {
        return why.to_string();
    };
    let text = e.to_string();
    let lower = text.to_lowercase();
    let auth = e.kind() == redis::ErrorKind::AuthenticationFailed
        || ["WRONGPASS", "NOAUTH"].contains(&e.code().unwrap_or(""));
    if e.code() == Some("NOPERM") || lower.contains("noperm") {
        format!("permission: {text} (see the ACL rule in docs/redis-production.md)")
    } else if auth || lower.contains("wrongpass") || lower.contains("noauth") {
        format!("auth: {text}")
    } else if ["certificate", "tls", "handshake", "alert"]
        .iter()
        .any(|w| lower.contains(w))
    {
        let hint = match lower.contains("unknownissuer") {
            true => " (is AETHER_REDIS_TLS_CA_FILE the CA that signed Redis's certificate?)",
            false => "",
        };
        format!("TLS: {text}{hint}")
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        format!("unreachable: {text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind, text: &str) -> LinkError {
        LinkError::Redis(std::io::Error::new(kind, text.to_owned()).into())
    }

    #[test]
    fn failures_are_named_by_kind() {
        let tls = io(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        );
        assert!(reason(&tls).starts_with("TLS: "), "{}", reason(&tls));
        let refused = io(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        assert!(reason(&refused).starts_with("unreachable: "));
        let auth = LinkError::Redis(redis::RedisError::from((
            redis::ErrorKind::AuthenticationFailed,
            "WRONGPASS",
            "invalid username-password pair".to_owned(),
        )));
        assert!(reason(&auth).starts_with("auth: "), "{}", reason(&auth));
    }

    #[test]
    fn describes_what_is_down() {
        let health = Health::default();
        assert_eq!(
            health.describe(),
            "redis commands: connecting\nredis pubsub: waiting for the command connection"
        );
        health.up(Connection::Commands);
        health.down(Connection::PubSub, &LinkError::Timeout);
        assert_eq!(health.describe(), "redis pubsub: no answer within 2s");
        assert!(!health.is_new(Connection::PubSub, &LinkError::Timeout));
        assert!(health.is_new(Connection::PubSub, &LinkError::Closed));
    }
}
