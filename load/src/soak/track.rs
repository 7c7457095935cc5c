//! What one soak socket has seen of its routes, and how it judges each
//! kept message and recovery summary (docs/protocol.md section 9).
//!
//! Per route the socket keeps the epoch and the highest offset it saw:
//! - the next offset of that epoch is in order;
//! - a later one skipped the offsets between: each is a loss;
//! - an earlier one, or a message of an epoch that already ended, is an
//!   order violation (a duplicate or a message out of order);
//! - another epoch seen live means Redis lost the route's numbering while
//!   the socket was connected: the new epoch began after the socket's last
//!   message, so all of it is owed and offsets 1 .. first − 1 are losses.
//!   What the old epoch numbered after the last message seen died with
//!   Redis's keys (no history holds it) and is not counted.
//!
//! A recovery summary is judged route by route: `recovered: true` must
//! come with exactly `missed` replayed messages of the socket's own epoch
//! (that they continue its offsets is checked as they arrive);
//! `recovered: false` is expected when the epoch changed (Redis restarted
//! while the socket was away) and a failure otherwise (history should have
//! covered the socket's short absence). Either way the socket carries on
//! from the summary's position.

use serde_json::Value;

/// The routes a soak socket is on. Broadcast is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Group = 0,
    Client = 1,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Group, Kind::Client];

    /// Its name in `since_*` parameters and recovery summaries.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Group => "group",
            Kind::Client => "client",
        }
    }

    /// The route of a delivered kept message: its `target`.
    pub fn of(text: &str) -> Kind {
        if text.contains(r#""target":"direct""#) {
            Kind::Client
        } else {
            Kind::Group
        }
    }
}

/// What one kept message means for its route.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Next,
    /// Offsets skipped within the epoch.
    Skipped(u64),
    /// At or below the last offset, or of an epoch that ended.
    Behind,
    /// A new epoch began while connected; offsets before this one in it.
    NewEpoch {
        before: u64,
    },
}

/// Epochs remembered as ended, per route.
const ENDED_KEPT: usize = 8;

/// One route's numbering as one socket has seen it.
#[derive(Debug, Default)]
pub struct Position {
    at: Option<(String, u64)>,
    ended: Vec<String>,
}

impl Position {
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

    /// Carries on from `epoch`/`offset` (a summary's position).
    pub fn set(&mut self, epoch: &str, offset: u64) {
        if let Some((old, _)) = &self.at {
            if old != epoch {
                let old = old.clone();
                self.end(old);
            }
        }
        self.at = Some((epoch.to_owned(), offset));
    }

    fn end(&mut self, epoch: String) {
        if !self.ended.contains(&epoch) {
            self.ended.push(epoch);
        }
        if self.ended.len() > ENDED_KEPT {
            self.ended.remove(0);
        }
    }

    /// Judges kept message `offset` of `epoch` and moves on past it.
    pub fn see(&mut self, epoch: &str, offset: u64) -> Step {
        if self.ended.iter().any(|e| e == epoch) {
            return Step::Behind;
        }
        match &mut self.at {
            Some((e, last)) if e == epoch => {
                let step = match offset.cmp(&(*last + 1)) {
                    std::cmp::Ordering::Equal => Step::Next,
                    std::cmp::Ordering::Greater => Step::Skipped(offset - *last - 1),
                    std::cmp::Ordering::Less => Step::Behind,
                };
                *last = (*last).max(offset);
                step
            }
            Some(_) => {
                self.set(epoch, offset);
                Step::NewEpoch {
                    before: offset.saturating_sub(1),
                }
            }
            None => {
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

/// What a summary entry means for a socket that asked to resume.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing lost, the replay as announced.
    Recovered,
    /// `recovered: false` with another epoch: Redis lost the route's
    /// numbering while the socket was away; the protocol's answer.
    NewEpoch,
    /// Anything else: a failure, with what was wrong.
    Failed(String),
}

/// Judges `entry` for a socket that resumed from `asked` and received
/// `replayed` messages of the route before the summary.
pub fn verdict(asked: Option<&str>, entry: &Entry, replayed: u64) -> Verdict {
    match (entry.recovered, asked) {
        (true, Some(epoch)) if epoch == entry.epoch && replayed == entry.missed => {
            Verdict::Recovered
        }
        (true, _) => Verdict::Failed(format!(
            "recovered: true, missed {} in epoch {}, but {replayed} replayed (resumed from epoch {asked:?})",
            entry.missed, entry.epoch
        )),
        (false, Some(epoch)) if epoch != entry.epoch => Verdict::NewEpoch,
        (false, _) => Verdict::Failed(format!(
            "recovered: false in the same epoch {} (at {}): history did not cover the absence",
            entry.epoch, entry.offset
        )),
    }
}

/// The entry for `kind` in a recovery summary's text.
pub fn entry(summary: &Value, kind: Kind) -> Option<Entry> {
    let e = &summary["payload"][kind.name()];
    Some(Entry {
        recovered: e["recovered"].as_bool()?,
        missed: e["missed"].as_u64()?,
        epoch: e["epoch"].as_str()?.to_owned(),
        offset: e["offset"].as_u64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_in_order_skipped_and_behind() {
        let mut p = Position::default();
        p.set("e1", 4);
        assert_eq!(p.since(), "e1:4");
        assert_eq!(p.see("e1", 5), Step::Next);
        assert_eq!(p.see("e1", 8), Step::Skipped(2));
        assert_eq!(p.see("e1", 8), Step::Behind);
        assert_eq!(p.see("e1", 7), Step::Behind);
        assert_eq!(p.see("e1", 9), Step::Next);
    }

    #[test]
    fn a_new_epoch_is_owed_from_its_first_offset() {
        let mut p = Position::default();
        p.set("e1", 10);
        assert_eq!(p.see("e2", 1), Step::NewEpoch { before: 0 });
        assert_eq!(p.see("e2", 2), Step::Next);
        assert_eq!(p.see("e3", 4), Step::NewEpoch { before: 3 });
        // A late message of an ended epoch is out of order.
        assert_eq!(p.see("e1", 11), Step::Behind);
        assert_eq!(p.since(), "e3:4");
    }

    #[test]
    fn summaries_are_judged_per_route() {
        let ok = Entry {
            recovered: true,
            missed: 2,
            epoch: "e1".into(),
            offset: 9,
        };
        assert_eq!(verdict(Some("e1"), &ok, 2), Verdict::Recovered);
        assert!(matches!(verdict(Some("e1"), &ok, 1), Verdict::Failed(_)));
        let lost = Entry {
            recovered: false,
            missed: 0,
            epoch: "e2".into(),
            offset: 3,
        };
        assert_eq!(verdict(Some("e1"), &lost, 0), Verdict::NewEpoch);
        assert!(matches!(verdict(Some("e2"), &lost, 0), Verdict::Failed(_)));
    }

    #[test]
    fn summary_entries_are_read() {
        let v: Value = serde_json::from_str(
            r#"{"msg_type":"recovery","payload":{"group":{"recovered":true,"missed":3,"epoch":"ab","offset":45}}}"#,
        )
        .unwrap();
        let e = entry(&v, Kind::Group).unwrap();
        assert_eq!((e.recovered, e.missed, e.offset), (true, 3, 45));
        assert!(entry(&v, Kind::Client).is_none());
        assert_eq!(Kind::of(r#"{"target":"direct"}"#), Kind::Client);
    }
}
