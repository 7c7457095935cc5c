//! What one fleet socket has seen of each route it is on (its group, the
//! broadcast channel), and how it judges every kept message and recovery
//! summary (docs/protocol.md section 9).
//!
//! Per route the socket keeps the epoch and the highest offset it saw. In
//! this load every kept message of a route is meant for every socket on it
//! (a group's workers never send, the broadcast sender is not one of the
//! fleet's sockets), so the offsets a socket sees are 1, 2, 3, … with
//! nothing skipped, across reconnects too: a skipped offset is a gap (a
//! loss), an offset at or below the last one a duplicate, another epoch an
//! anomaly of its own (nothing in the fleet bench restarts Redis).
//!
//! A reconnect's summary is judged route by route: `recovered: true` must
//! come in the epoch resumed from with exactly `missed` messages replayed
//! before it (that they continue the offsets is checked as they arrive);
//! `recovered: false` means history did not cover the absence, and the
//! socket carries on from the summary's position.

use serde_json::Value;

/// The routes a fleet socket resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Group = 0,
    Broadcast = 1,
}

impl Kind {
    /// Its name in `since_*` parameters and recovery summaries.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Group => "group",
            Kind::Broadcast => "broadcast",
        }
    }

    /// The route of a delivered kept message, from its `target` (only
    /// group and broadcast messages are kept on a fleet socket's routes).
    pub fn of(text: &str) -> Kind {
        if text.contains(r#""target":"broadcast""#) {
            Kind::Broadcast
        } else {
            Kind::Group
        }
    }
}

/// What one kept message means for its route.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Next,
    /// Offsets skipped within the epoch: lost.
    Gap(u64),
    /// At or below the last offset seen: delivered twice or out of order.
    Duplicate,
    /// Another epoch than the one the socket was in.
    NewEpoch,
}

/// One route's numbering as one socket has seen it.
#[derive(Debug, Default)]
pub struct Track {
    at: Option<(String, u64)>,
}

impl Track {
    /// The `since_*` value to resume from: `EPOCH:OFFSET`, or `new`.
    pub fn since(&self) -> String {
        match &self.at {
            Some((epoch, offset)) => format!("{epoch}:{offset}"),
            None => "new".into(),
        }
    }

    pub fn epoch(&self) -> Option<&str> {
        self.at.as_ref().map(|(e, _)| e.as_str())
    }

    /// The highest offset seen, in whatever epoch.
    pub fn offset(&self) -> u64 {
        self.at.as_ref().map_or(0, |(_, o)| *o)
    }

    /// Carries on from `epoch`/`offset` (a summary's position).
    pub fn set(&mut self, epoch: &str, offset: u64) {
        match &mut self.at {
            Some((e, o)) if e == epoch => *o = offset,
            _ => self.at = Some((epoch.to_owned(), offset)),
        }
    }

    /// Judges kept message `offset` of `epoch` and moves on past it.
    pub fn see(&mut self, epoch: &str, offset: u64) -> Step {
        match &mut self.at {
            Some((e, last)) if e == epoch => {
                let step = match offset.cmp(&(*last + 1)) {
                    std::cmp::Ordering::Equal => Step::Next,
                    std::cmp::Ordering::Greater => Step::Gap(offset - *last - 1),
                    std::cmp::Ordering::Less => Step::Duplicate,
                };
                *last = (*last).max(offset);
                step
            }
            Some(_) => {
                self.set(epoch, offset);
                Step::NewEpoch
            }
            None => {
                // No position yet: a message before the first summary,
                // which the hub never sends; judged from here on.
                self.set(epoch, offset);
                Step::Next
            }
        }
    }
}

/// One route's entry of a recovery summary.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub recovered: bool,
    pub missed: u64,
    pub epoch: String,
    pub offset: u64,
}

/// The entry for `kind` in a recovery summary.
pub fn entry(summary: &Value, kind: Kind) -> Option<Entry> {
    let e = &summary["payload"][kind.name()];
    Some(Entry {
        recovered: e["recovered"].as_bool()?,
        missed: e["missed"].as_u64()?,
        epoch: e["epoch"].as_str()?.to_owned(),
        offset: e["offset"].as_u64()?,
    })
}

/// What a summary entry means for a socket that resumed.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing lost, the replay as announced.
    Recovered,
    /// `recovered: false`: history did not cover the absence.
    NotRecovered,
    /// `recovered: true` but not as announced: what was wrong.
    Mismatch(String),
}

/// Judges `entry` for a socket that resumed from epoch `asked` and got
/// `replayed` messages of the route before the summary.
pub fn verdict(asked: &str, entry: &Entry, replayed: u64) -> Verdict {
    if !entry.recovered {
        return Verdict::NotRecovered;
    }
    if asked == entry.epoch && replayed == entry.missed {
        Verdict::Recovered
    } else {
        Verdict::Mismatch(format!(
            "recovered: true, missed {} in epoch {}, but {replayed} replayed (resumed in epoch {asked})",
            entry.missed, entry.epoch
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_in_order_gaps_and_duplicates() {
        let mut t = Track::default();
        assert_eq!(t.since(), "new");
        t.set("e1", 4);
        assert_eq!(t.since(), "e1:4");
        assert_eq!(t.see("e1", 5), Step::Next);
        assert_eq!(t.see("e1", 8), Step::Gap(2));
        assert_eq!(t.see("e1", 8), Step::Duplicate);
        assert_eq!(t.see("e1", 7), Step::Duplicate);
        assert_eq!(t.see("e1", 9), Step::Next);
        assert_eq!(t.see("e2", 1), Step::NewEpoch);
        assert_eq!((t.epoch(), t.offset()), (Some("e2"), 1));
    }

    #[test]
    fn summaries_are_judged_per_route() {
        let v: Value = serde_json::from_str(
            r#"{"msg_type":"recovery","payload":{"group":{"recovered":true,"missed":3,"epoch":"ab","offset":45}}}"#,
        )
        .unwrap();
        let e = entry(&v, Kind::Group).unwrap();
        assert_eq!(verdict("ab", &e, 3), Verdict::Recovered);
        assert!(matches!(verdict("ab", &e, 2), Verdict::Mismatch(_)));
        assert!(matches!(verdict("zz", &e, 3), Verdict::Mismatch(_)));
        assert!(entry(&v, Kind::Broadcast).is_none());
        let lost = Entry {
            recovered: false,
            missed: 0,
            epoch: "ab".into(),
            offset: 300,
        };
        assert_eq!(verdict("ab", &lost, 0), Verdict::NotRecovered);
        assert_eq!(Kind::of(r#"{"target":"broadcast"}"#), Kind::Broadcast);
        assert_eq!(Kind::of(r#"{"target":"group"}"#), Kind::Group);
    }
}
