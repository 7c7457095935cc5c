//! What one socket has seen of each route it is on, and how it judges
//! every kept message and recovery summary (docs/protocol.md section 9):
//! the route kinds, a socket's per-route positions and `since_*` query, the
//! step judgement of each kept message and the judgement of each summary
//! entry. Used by the long scenarios that resume with `since_*`: `soak`
//! (group and client routes) and `fleet` (group and broadcast routes);
//! each gives the shared [`Step`]s and [`Verdict`]s its own meaning.
//!
//! Per route the socket keeps the epoch and the highest offset it saw:
//! - the next offset of that epoch is in order;
//! - a later one skipped the offsets between: each is a loss;
//! - an earlier one is behind (a duplicate or a message out of order), and
//!   so is a message of an epoch that already ended if the position
//!   remembers ended epochs ([`Ended::Remember`], the soak);
//! - another epoch is a new epoch, with how many of its offsets came
//!   before the one seen. The soak (where Redis restarts) counts those as
//!   losses, since the new epoch began after the socket's last message and
//!   all of it is owed; what the old epoch numbered after the last message
//!   seen died with Redis's keys (no history holds it) and is not counted.
//!   The fleet (where nothing restarts Redis) counts a new epoch as an
//!   anomaly of its own.
//!
//! A recovery summary is judged route by route: `recovered: true` must
//! come in the epoch resumed from with exactly `missed` messages replayed
//! before it (that they continue the offsets is checked as they arrive);
//! `recovered: false` means history did not cover the absence, in a new
//! epoch (Redis lost the route's numbering while the socket was away) or
//! in the same one. Either way the socket then carries on from the
//! summary's position.

use serde_json::Value;

/// A route a socket resumes, as named in `since_*` parameters and in
/// recovery summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Group = 0,
    Client = 1,
    Broadcast = 2,
}

impl Kind {
    /// Its name in `since_*` parameters and recovery summaries.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Group => "group",
            Kind::Client => "client",
            Kind::Broadcast => "broadcast",
        }
    }

    /// The route of a delivered kept message: its `target` (a direct
    /// message is kept on the client route).
    pub fn of(text: &str) -> Kind {
        if text.contains(r#""target":"broadcast""#) {
            Kind::Broadcast
        } else if text.contains(r#""target":"direct""#) {
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
    /// Offsets skipped within the epoch: lost.
    Skipped(u64),
    /// At or below the last offset seen, or of an epoch remembered as
    /// ended: delivered twice or out of order.
    Behind,
    /// Another epoch than the one the socket was in; `before`: its offsets
    /// before this one.
    NewEpoch {
        before: u64,
    },
}

/// Whether a position remembers the epochs it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// No: a message of an epoch left is one more new epoch (fleet).
    Forget,
    /// The last [`ENDED_KEPT`]: a late message of one is behind (soak).
    Remember,
}

/// Epochs remembered as ended, per route.
const ENDED_KEPT: usize = 8;

/// One route's numbering as one socket has seen it.
#[derive(Debug)]
pub struct Position {
    at: Option<(String, u64)>,
    ended: Vec<String>,
    remember: Ended,
}

impl Position {
    pub fn new(remember: Ended) -> Position {
        Position {
            at: None,
            ended: Vec::new(),
            remember,
        }
    }

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
        if let Some((old, _)) = &self.at {
            if old != epoch {
                let old = old.clone();
                self.end(old);
            }
        }
        self.at = Some((epoch.to_owned(), offset));
    }

    fn end(&mut self, epoch: String) {
        if self.remember == Ended::Forget {
            return;
        }
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
                // No position yet: a message before the first summary,
                // which the hub never sends; judged from here on.
                self.set(epoch, offset);
                Step::Next
            }
        }
    }
}

/// One socket's positions, one per route kind.
#[derive(Debug)]
pub struct Positions([Position; 3]);

impl Positions {
    pub fn new(remember: Ended) -> Positions {
        Positions([(); 3].map(|_| Position::new(remember)))
    }

    /// The upgrade's query resuming `routes`: `since_group=…&since_…`.
    pub fn query(&self, routes: &[Kind]) -> String {
        routes
            .iter()
            .map(|&k| format!("since_{}={}", k.name(), self[k].since()))
            .collect::<Vec<_>>()
            .join("&")
    }
}

impl std::ops::Index<Kind> for Positions {
    type Output = Position;

    fn index(&self, kind: Kind) -> &Position {
        &self.0[kind as usize]
    }
}

impl std::ops::IndexMut<Kind> for Positions {
    fn index_mut(&mut self, kind: Kind) -> &mut Position {
        &mut self.0[kind as usize]
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
    /// `recovered: true` but not as announced: what was wrong.
    Mismatch(String),
    /// `recovered: false` in another epoch than the one resumed from:
    /// Redis lost the route's numbering while the socket was away.
    NewEpoch,
    /// `recovered: false` in the epoch resumed from: history did not
    /// cover the absence.
    NotCovered,
}

/// Judges `entry` for a socket that resumed from epoch `asked` and got
/// `replayed` messages of the route before the summary.
pub fn verdict(asked: &str, entry: &Entry, replayed: u64) -> Verdict {
    match entry.recovered {
        true if asked == entry.epoch && replayed == entry.missed => Verdict::Recovered,
        true => Verdict::Mismatch(format!(
            "recovered: true, missed {} in epoch {}, but {replayed} replayed (resumed in epoch {asked})",
            entry.missed, entry.epoch
        )),
        false if asked != entry.epoch => Verdict::NewEpoch,
        false => Verdict::NotCovered,
    }
}

/// A connection until its recovery summary: the epoch each route resumed
/// from (None: it asked `new`) and the messages each replayed.
#[derive(Debug)]
pub struct Resume {
    asked: [Option<String>; 3],
    replayed: [u64; 3],
}

impl Resume {
    /// Resuming `routes` from `positions`.
    pub fn new(positions: &Positions, routes: &[Kind]) -> Resume {
        let mut asked = [None, None, None];
        for &k in routes {
            asked[k as usize] = positions[k].epoch().map(str::to_owned);
        }
        Resume {
            asked,
            replayed: [0; 3],
        }
    }

    /// One more message of `kind` replayed before the summary.
    pub fn replayed(&mut self, kind: Kind) {
        self.replayed[kind as usize] += 1;
    }

    /// Judges the summary's `entry` for `kind`, and carries the route's
    /// position on from the summary where nothing was replayed: on a first
    /// connect (None: nothing to judge) and after `recovered: false` (a
    /// replay announced whole but short shows as a gap instead).
    pub fn judge(&self, kind: Kind, entry: &Entry, positions: &mut Positions) -> Option<Verdict> {
        let Some(asked) = &self.asked[kind as usize] else {
            positions[kind].set(&entry.epoch, entry.offset);
            return None;
        };
        let verdict = verdict(asked, entry, self.replayed[kind as usize]);
        if !entry.recovered {
            positions[kind].set(&entry.epoch, entry.offset);
        }
        Some(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn offsets_in_order_skipped_and_behind() {
        for remember in [Ended::Forget, Ended::Remember] {
            let mut p = Position::new(remember);
            assert_eq!(p.since(), "new");
            p.set("e1", 4);
            assert_eq!(p.since(), "e1:4");
            assert_eq!(p.see("e1", 5), Step::Next);
            assert_eq!(p.see("e1", 8), Step::Skipped(2));
            assert_eq!(p.see("e1", 8), Step::Behind);
            assert_eq!(p.see("e1", 7), Step::Behind);
            assert_eq!(p.see("e1", 9), Step::Next);
            assert_eq!(p.see("e2", 1), Step::NewEpoch { before: 0 });
            assert_eq!((p.epoch(), p.offset()), (Some("e2"), 1));
        }
    }

    #[test]
    fn a_new_epoch_is_owed_from_its_first_offset() {
        // The soak: ended epochs are remembered.
        let mut p = Position::new(Ended::Remember);
        p.set("e1", 10);
        assert_eq!(p.see("e2", 1), Step::NewEpoch { before: 0 });
        assert_eq!(p.see("e2", 2), Step::Next);
        assert_eq!(p.see("e3", 4), Step::NewEpoch { before: 3 });
        // A late message of an ended epoch is out of order.
        assert_eq!(p.see("e1", 11), Step::Behind);
        assert_eq!(p.since(), "e3:4");
    }

    #[test]
    fn a_forgotten_epoch_is_new_again() {
        // The fleet: every change of epoch is one, back and forth.
        let mut p = Position::new(Ended::Forget);
        p.set("e1", 10);
        assert_eq!(p.see("e2", 1), Step::NewEpoch { before: 0 });
        assert_eq!(p.see("e1", 11), Step::NewEpoch { before: 10 });
        assert_eq!(p.since(), "e1:11");
    }

    #[test]
    fn summaries_are_judged_per_route() {
        let v = summary(
            r#"{"msg_type":"recovery","payload":{"group":{"recovered":true,"missed":3,"epoch":"ab","offset":45}}}"#,
        );
        let e = entry(&v, Kind::Group).unwrap();
        assert_eq!((e.recovered, e.missed, e.offset), (true, 3, 45));
        assert_eq!(verdict("ab", &e, 3), Verdict::Recovered);
        assert!(matches!(verdict("ab", &e, 2), Verdict::Mismatch(_)));
        assert!(matches!(verdict("zz", &e, 3), Verdict::Mismatch(_)));
        assert!(entry(&v, Kind::Broadcast).is_none());
        assert!(entry(&v, Kind::Client).is_none());
        let lost = Entry {
            recovered: false,
            missed: 0,
            epoch: "e2".into(),
            offset: 3,
        };
        assert_eq!(verdict("e1", &lost, 0), Verdict::NewEpoch);
        assert_eq!(verdict("e2", &lost, 0), Verdict::NotCovered);
    }

    #[test]
    fn kinds_are_read_from_the_target() {
        assert_eq!(Kind::of(r#"{"target":"broadcast"}"#), Kind::Broadcast);
        assert_eq!(Kind::of(r#"{"target":"direct"}"#), Kind::Client);
        assert_eq!(Kind::of(r#"{"target":"group"}"#), Kind::Group);
    }

    #[test]
    fn a_resume_asks_and_moves_on_per_route() {
        let mut positions = Positions::new(Ended::Forget);
        let routes = [Kind::Group, Kind::Broadcast];
        assert_eq!(
            positions.query(&routes),
            "since_group=new&since_broadcast=new"
        );
        // A first connect: the summary gives the positions.
        let first = Resume::new(&positions, &routes);
        let at = |epoch: &str, offset| Entry {
            recovered: true,
            missed: 0,
            epoch: epoch.into(),
            offset,
        };
        assert_eq!(first.judge(Kind::Group, &at("g", 5), &mut positions), None);
        assert_eq!(
            first.judge(Kind::Broadcast, &at("b", 2), &mut positions),
            None
        );
        assert_eq!(
            positions.query(&routes),
            "since_group=g:5&since_broadcast=b:2"
        );
        // A return: judged against what each route replayed.
        let mut back = Resume::new(&positions, &routes);
        back.replayed(Kind::Group);
        positions[Kind::Group].see("g", 6);
        let whole = Entry {
            missed: 1,
            ..at("g", 6)
        };
        assert_eq!(
            back.judge(Kind::Group, &whole, &mut positions),
            Some(Verdict::Recovered)
        );
        let short = Entry {
            missed: 1,
            ..at("b", 3)
        };
        assert!(matches!(
            back.judge(Kind::Broadcast, &short, &mut positions),
            Some(Verdict::Mismatch(_))
        ));
        // A mismatch leaves the position as the messages left it.
        assert_eq!(positions[Kind::Broadcast].since(), "b:2");
        let lost = Entry {
            recovered: false,
            ..at("b2", 7)
        };
        assert_eq!(
            back.judge(Kind::Broadcast, &lost, &mut positions),
            Some(Verdict::NewEpoch)
        );
        assert_eq!(positions[Kind::Broadcast].since(), "b2:7");
        assert_eq!(positions[Kind::Group].offset(), 6);
    }
}
