//! History and recovery (docs/protocol.md section 9): what a route's kept
//! messages are called and how a reconnecting socket names where it left
//! off.
//!
//! A kept message (`msg` or `cmd` routed through the hub) gets an `offset`
//! (1, 2, 3, … per route) and the route's `epoch`, spliced onto the end of
//! its encoded text by [`number`], so numbering never re-encodes the
//! message. The broker decides the numbers: in memory under the route's own
//! lock (`broker/memory/history.rs`), in Redis in one server-side script, so
//! every instance sees one order.
//!
//! A socket asks to resume with `since_client`, `since_group` and
//! `since_broadcast` ([`Resume`]); the broker answers each with a
//! [`Recovery`]: the kept messages after that position, or word that some
//! are gone. The session then writes the replay and the summary before any
//! live message of those routes, dropping live messages the replay already
//! carried (`replay.rs`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::channels::Route;
use crate::protocol::{Encoded, VisionId};

/// How much history each route keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Kept messages per route; 0 turns history off.
    pub size: usize,
    /// No kept message is older than this.
    pub ttl: Duration,
}

impl Retention {
    pub fn is_on(&self) -> bool {
        self.size > 0
    }
}

/// How long a route's epoch and counter outlive its last kept message.
pub const POSITION_TTL: Duration = Duration::from_secs(24 * 3600);

/// One lifetime of a route's numbering: 1 to 64 of `[A-Za-z0-9_-]`.
///
/// Held inline, not behind a pointer: every kept message on its way to the
/// sockets carries its epoch, and a copy of 65 bytes costs neither an
/// allocation (the reader reads one per message) nor a reference count
/// shared by every message of a route across threads.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch {
    len: u8,
    /// The epoch's bytes, then zeros (so that derived equality holds).
    bytes: [u8; EPOCH_MAX],
}

const EPOCH_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinceError {
    #[error("{0} must be EPOCH:OFFSET or new")]
    Malformed(&'static str),
}

impl Epoch {
    pub fn parse(s: &str) -> Option<Epoch> {
        let valid = (1..=EPOCH_MAX).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return None;
        }
        let mut bytes = [0; EPOCH_MAX];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        let len = u8::try_from(s.len()).ok()?;
        Some(Epoch { len, bytes })
    }

    /// A fresh epoch: 16 random hex digits.
    pub fn random() -> Epoch {
        let hex = format!("{:016x}", rand::random::<u64>());
        Epoch::parse(&hex).unwrap_or_else(|| unreachable!("16 hex digits are an epoch"))
    }

    pub fn as_str(&self) -> &str {
        // ASCII by construction: never the empty fallback.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({:?})", self.as_str())
    }
}

/// A place in a route's history: the last offset seen in one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Epoch,
    pub offset: u64,
}

/// Where a socket asks to resume one route from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// No position yet: learn the current one, replay nothing.
    New,
    /// The last position seen.
    At(Position),
    /// Everything history still keeps, whatever came before it (the HTTP
    /// history of docs/protocol.md section 11 without `since`).
    Oldest,
}

impl Since {
    pub fn parse(value: &str, name: &'static str) -> Result<Since, SinceError> {
        if value == "new" {
            return Ok(Since::New);
        }
        let bad = SinceError::Malformed(name);
        let (epoch, offset) = value.rsplit_once(':').ok_or(bad.clone())?;
        let epoch = Epoch::parse(epoch).ok_or(bad.clone())?;
        if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad);
        }
        let offset = offset.parse().map_err(|_| bad)?;
        Ok(Since::At(Position { epoch, offset }))
    }
}

/// The three routes of a socket, as named in `since_*` and in the
/// recovery summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    Client,
    Group,
    Broadcast,
}

impl RouteKind {
    pub const ALL: [RouteKind; 3] = [RouteKind::Client, RouteKind::Group, RouteKind::Broadcast];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Client => "client",
            RouteKind::Group => "group",
            RouteKind::Broadcast => "broadcast",
        }
    }

    fn param(self) -> &'static str {
        match self {
            RouteKind::Client => "since_client",
            RouteKind::Group => "since_group",
            RouteKind::Broadcast => "since_broadcast",
        }
    }

    /// This kind's route for a socket of `client` in `group`.
    pub fn route(self, group: &VisionId, client: &VisionId) -> Route {
        match self {
            RouteKind::Client => Route::Client(client.clone()),
            RouteKind::Group => Route::Group(group.clone()),
            RouteKind::Broadcast => Route::Broadcast,
        }
    }

    /// The kind of `route`; `None` for the control route, which history
    /// never keeps.
    pub fn of(route: &Route) -> Option<RouteKind> {
        match route {
            Route::Client(_) => Some(RouteKind::Client),
            Route::Group(_) => Some(RouteKind::Group),
            Route::Broadcast => Some(RouteKind::Broadcast),
            Route::Control => None,
        }
    }
}

/// What an upgrade asked to resume, by route kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume(Vec<(RouteKind, Since)>);

impl Resume {
    /// The `since_*` query parameters; a malformed one is a 400.
    pub fn from_query(query: &HashMap<String, String>) -> Result<Resume, SinceError> {
        let mut asked = Vec::new();
        for kind in RouteKind::ALL {
            if let Some(value) = query.get(kind.param()) {
                asked.push((kind, Since::parse(value, kind.param())?));
            }
        }
        Ok(Resume(asked))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(RouteKind, Since)> {
        self.0.iter()
    }
}

/// One kept message as history holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub offset: u64,
    /// The delivered text, offset and epoch included.
    pub text: Encoded,
    /// Its `from_id`, for the sender exclusion of group and broadcast.
    pub sender: Arc<str>,
}

/// The answer to one route's [`Since`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Everything after the position is here (possibly nothing).
    Recovered(Vec<Kept>),
    /// Some of it is gone, or the epoch differs: nothing is replayed.
    Lost,
}

/// One route's recovery: what to replay, and where the route stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub outcome: Outcome,
    /// The route's current position (`None` with history off).
    pub position: Option<Position>,
}

impl Recovery {
    /// The answer with history off.
    pub fn off() -> Recovery {
        Recovery {
            outcome: Outcome::Lost,
            position: None,
        }
    }
}

/// Decides a recovery from what history holds: `since` against the route's
/// position and its kept messages (oldest first, all of this epoch).
pub fn decide(since: &Since, position: &Position, kept: Vec<Kept>) -> Outcome {
    let from = match since {
        Since::New => return Outcome::Recovered(Vec::new()),
        Since::Oldest => {
            let kept = kept.into_iter().filter(|k| k.offset <= position.offset);
            return Outcome::Recovered(kept.collect());
        }
        Since::At(at) if at.epoch != position.epoch || at.offset > position.offset => {
            return Outcome::Lost
        }
        Since::At(at) => at.offset,
    };
    let wanted: Vec<Kept> = kept
        .into_iter()
        .filter(|k| k.offset > from && k.offset <= position.offset)
        .collect();
    let missing = position.offset - from;
    // Never a partial replay: every offset after `from` must be kept.
    if wanted.len() as u64 != missing || wanted.first().is_some_and(|k| k.offset != from + 1) {
        return Outcome::Lost;
    }
    Outcome::Recovered(wanted)
}

/// `text` (a JSON object the hub encoded) with `offset` and `epoch` added
/// as its last fields.
pub fn number(text: &str, offset: u64, epoch: &Epoch) -> String {
    let body = text.strip_suffix('}').unwrap_or(text);
    let mut out = String::with_capacity(text.len() + 48 + epoch.as_str().len());
    out.push_str(body);
    out.push_str(",\"offset\":");
    out.push_str(&offset.to_string());
    out.push_str(",\"epoch\":\"");
    out.push_str(epoch.as_str());
    out.push_str("\"}");
    out
}

/// The offset and epoch [`number`] wrote at the end of `text`, if any.
///
/// Read backwards over exactly what [`number`] writes (the epoch's
/// characters, its key, the offset's digits, its key) rather than searched
/// for: it runs on every message a hub receives from Redis, and a
/// substring search costs more to set up than the whole read.
pub fn position_of(text: &str) -> Option<(u64, &str)> {
    const OFFSET: &str = ",\"offset\":";
    const EPOCH: &str = ",\"epoch\":\"";
    let body = text.strip_suffix("\"}")?;
    let is_epoch = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let e = body.rfind(|c| !is_epoch(c)).map_or(0, |i| i + 1);
    let epoch = &body[e..];
    let head = body[..e].strip_suffix(EPOCH)?;
    let o = head
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let offset = head[o..].parse().ok()?;
    head[..o].strip_suffix(OFFSET)?;
    Some((offset, epoch))
}

#[cfg(test)]
mod tests;
