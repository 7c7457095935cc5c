//! A resuming socket's replay (docs/protocol.md section 9): the kept
//! messages its routes' recoveries returned and the summary, assembled in
//! the order the session writes them before any live message, and
//! afterwards the live messages the replay already carried, dropped
//! ([`Dedup`]) by the place each delivery carries (`delivery.rs`).

use crate::delivery::Delivery;
use crate::history::{Epoch, Outcome, Recovery, RouteKind};
use crate::protocol::{Encoded, VisionId};

/// What a resuming socket is sent first: every replayed message and the
/// summary, in order; and what to drop from its live queue afterwards.
#[derive(Debug, Default)]
pub struct Resumed {
    pub batch: Vec<Encoded>,
    pub dedup: Dedup,
}

impl Resumed {
    /// Assembles a socket's replay from its routes' recoveries: the kept
    /// messages it would have received (a group or broadcast message skips
    /// its own sender, as live), then one summary for all routes.
    pub fn assemble(
        group: &VisionId,
        client: &VisionId,
        answers: Vec<(RouteKind, Recovery)>,
    ) -> Resumed {
        let mut resumed = Resumed::default();
        let mut summary = serde_json::Map::new();
        for (kind, recovery) in answers {
            let skips = kind.route(group, client).skips_sender();
            let (recovered, missed) = match recovery.outcome {
                Outcome::Recovered(kept) => {
                    let before = resumed.batch.len();
                    resumed.batch.extend(
                        kept.into_iter()
                            .filter(|k| !(skips && &*k.sender == client.as_str()))
                            .map(|k| k.text),
                    );
                    (true, resumed.batch.len() - before)
                }
                Outcome::Lost => (false, 0),
            };
            let (epoch, offset) = match &recovery.position {
                Some(p) => (p.epoch.as_str(), p.offset),
                None => ("", 0),
            };
            crate::metrics::recovery(recovered, missed);
            if let (true, Some(p)) = (recovered, &recovery.position) {
                resumed.dedup.watch(kind, p.epoch.clone(), p.offset);
            }
            summary.insert(
                kind.as_str().to_owned(),
                serde_json::json!({
                    "recovered": recovered, "missed": missed, "epoch": epoch, "offset": offset,
                }),
            );
        }
        resumed
            .batch
            .push(crate::protocol::recovery_summary(client, group, summary));
        resumed
    }
}

/// After a replay, the live messages of a route the replay already
/// carried: dropped until the route moves past its last replayed offset.
/// Costs nothing once every route has.
#[derive(Debug, Default)]
pub struct Dedup {
    /// Per route kind: the epoch and the last offset replayed.
    pending: Vec<(RouteKind, Epoch, u64)>,
}

impl Dedup {
    pub fn watch(&mut self, kind: RouteKind, epoch: Epoch, last: u64) {
        self.pending.push((kind, epoch, last));
    }

    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether `msg`, a live message, was already replayed.
    pub fn replayed(&mut self, msg: &Delivery) -> bool {
        let (Some(place), Some(epoch)) = (msg.place(), msg.epoch()) else {
            return false;
        };
        let Some(i) = self.pending.iter().position(|(k, _, _)| *k == place.kind) else {
            return false;
        };
        let (_, ref seen, last) = self.pending[i];
        if seen.as_str() == epoch && place.offset <= last {
            return true;
        }
        self.pending.swap_remove(i);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::number;

    #[test]
    fn dedup_drops_replayed_live_messages_then_gets_out_of_the_way() {
        let epoch = Epoch::parse("e").unwrap();
        let live = |kind: RouteKind, offset| {
            let text = format!(
                r#"{{"version":"3","msg_type":"cmd","target":"{}"}}"#,
                kind.as_str()
            );
            Delivery::numbered(&number(&text, offset, &epoch), kind)
        };
        let mut dedup = Dedup::default();
        dedup.watch(RouteKind::Group, epoch.clone(), 5);
        assert!(dedup.replayed(&live(RouteKind::Group, 4)));
        assert!(dedup.replayed(&live(RouteKind::Group, 5)));
        assert!(
            !dedup.replayed(&live(RouteKind::Client, 1)),
            "another route"
        );
        let raw = Delivery::numbered(r#"{"target":"group","raw":true}"#, RouteKind::Group);
        assert!(!dedup.replayed(&raw), "no offset");
        assert!(!dedup.is_done());
        assert!(!dedup.replayed(&live(RouteKind::Group, 6)));
        assert!(dedup.is_done());
        assert!(!dedup.replayed(&live(RouteKind::Group, 5)));
    }
}
