//! Server-side scripts: how one is loaded (`SCRIPT LOAD`) and called
//! (`EVALSHA`, or `EVAL` with its source after `NOSCRIPT`), the keys a
//! route's scripts work on, and reading their answers. The scripts
//! themselves are `numbering.rs` (`NUMBER`) and `history.rs` (`READ`).

use std::sync::OnceLock;
use std::time::Duration;

use redis::{Cmd, RedisResult, Value};

use super::link::Commands;
use crate::history::{Retention, POSITION_TTL};

/// A script's source and, once Redis has loaded it, its SHA1.
pub struct Script {
    source: &'static str,
    sha: OnceLock<String>,
}

impl Script {
    pub const fn new(source: &'static str) -> Script {
        Script {
            source,
            sha: OnceLock::new(),
        }
    }

    /// `EVALSHA` once loaded (else, and when asked, `EVAL` with the
    /// source: `history::load` runs before the link is declared up).
    pub fn invoke(&self, invoke: Invoke) -> Cmd {
        match self.sha.get().filter(|_| invoke == Invoke::Sha) {
            Some(sha) => {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(sha.as_str());
                cmd
            }
            None => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(self.source);
                cmd
            }
        }
    }

    pub async fn load(&self, conn: &mut Commands) -> RedisResult<()> {
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(self.source)
            .query_async(conn)
            .await?;
        // The SHA1 of a fixed text never changes: the first answer stands.
        let _ = self.sha.set(sha);
        Ok(())
    }
}

/// Whether `value` is Redis's `NOSCRIPT` answer.
pub fn is_noscript(value: &Value) -> bool {
    matches!(value, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

/// A route's two keys, as [`crate::channels::Names`] builds them.
#[derive(Debug, Clone)]
pub struct Keys {
    pub position: String,
    pub history: String,
}

/// How a script is called. `NOSCRIPT` means the node that answered lacks
/// the script (a `SCRIPT FLUSH`, a restart, on a cluster a replica promoted
/// since: `SCRIPT LOAD` is not replicated); `EVAL` with the source then
/// runs it and leaves it cached on that node, whichever it is, where a
/// `SCRIPT LOAD` would have to know the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invoke {
    Sha,
    Source,
}

/// A script argument in milliseconds (at least 1: 0 means "no expiry" to
/// some commands).
pub fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// Epoch and counter outlive the messages (docs/protocol.md section 9).
pub fn position_ttl(retention: Retention) -> Duration {
    POSITION_TTL.max(retention.ttl)
}

pub fn int(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

pub fn string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
