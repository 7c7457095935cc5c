use std::collections::HashMap;
use std::time::Duration;

use super::memory::MemoryHistory;
use super::*;
use crate::protocol::id;

fn at(epoch: &str, offset: u64) -> Since {
    Since::At(Position {
        epoch: Epoch::parse(epoch).unwrap(),
        offset,
    })
}

#[test]
fn since_values_parse_or_are_refused() {
    let query = |k: &str, v: &str| HashMap::from([(k.to_owned(), v.to_owned())]);
    let one = |v: &str| Resume::from_query(&query("since_group", v)).map(|r| r.0[0].1.clone());
    assert_eq!(one("new"), Ok(Since::New));
    assert_eq!(one("e1:0"), Ok(at("e1", 0)));
    assert_eq!(one("a-B_9:42"), Ok(at("a-B_9", 42)));
    for bad in [
        "",
        "e1",
        "e1:",
        ":5",
        "e1:-1",
        "e1:+1",
        "e1:x",
        "e 1:1",
        "e1:1.5",
        "NEW",
        "e1:99999999999999999999",
    ] {
        assert_eq!(
            one(bad),
            Err(SinceError::Malformed("since_group")),
            "{bad:?} must be refused"
        );
    }
    let long = format!("{}:1", "e".repeat(65));
    assert!(one(&long).is_err());
    assert!(Resume::from_query(&HashMap::new()).unwrap().is_empty());
}

#[test]
fn numbering_adds_offset_and_epoch_last_and_reads_them_back() {
    let epoch = Epoch::parse("ep_1").unwrap();
    let text =
        r#"{"version":"3","msg_type":"cmd","target":"group","payload":{"offset":1},"sent_at":"x"}"#;
    let numbered = number(text, 7, &epoch);
    let value: serde_json::Value = serde_json::from_str(numbered.as_str()).unwrap();
    assert_eq!(value["offset"], 7);
    assert_eq!(value["epoch"], "ep_1");
    assert_eq!(value["payload"]["offset"], 1);
    assert_eq!(position_of(numbered.as_str()), Some((7, "ep_1")));
    assert_eq!(position_of(text), None);
}

#[test]
fn a_route_names_its_kind() {
    assert_eq!(RouteKind::of(&Route::Group(id("g"))), RouteKind::Group);
    assert_eq!(RouteKind::of(&Route::Client(id("c"))), RouteKind::Client);
    assert_eq!(RouteKind::of(&Route::Broadcast), RouteKind::Broadcast);
    for kind in RouteKind::ALL {
        assert_eq!(RouteKind::of(&kind.route(&id("g"), &id("c"))), kind);
    }
}

fn kept(offsets: std::ops::RangeInclusive<u64>) -> Vec<Kept> {
    offsets
        .map(|offset| Kept {
            offset,
            text: Encoded::from_text(format!("m{offset}")),
            sender: "s".into(),
        })
        .collect()
}

#[test]
fn a_recovery_is_whole_or_lost() {
    let now = Position {
        epoch: Epoch::parse("e").unwrap(),
        offset: 10,
    };
    let offsets = |o: Outcome| match o {
        Outcome::Recovered(k) => Some(k.iter().map(|k| k.offset).collect::<Vec<_>>()),
        Outcome::Lost => None,
    };
    assert_eq!(
        offsets(decide(&at("e", 7), &now, kept(1..=10))),
        Some(vec![8, 9, 10])
    );
    assert_eq!(
        offsets(decide(&at("e", 10), &now, kept(1..=10))),
        Some(vec![])
    );
    assert_eq!(
        offsets(decide(&Since::New, &now, kept(1..=10))),
        Some(vec![])
    );
    // Message 5 is no longer kept: nothing at all is replayed.
    assert_eq!(offsets(decide(&at("e", 4), &now, kept(6..=10))), None);
    assert_eq!(
        offsets(decide(&at("e", 5), &now, kept(6..=10))),
        Some(vec![6, 7, 8, 9, 10])
    );
    // Another epoch, or a position from the future.
    assert_eq!(offsets(decide(&at("other", 7), &now, kept(1..=10))), None);
    assert_eq!(offsets(decide(&at("e", 11), &now, kept(1..=10))), None);
    // Quiet spell: every message expired, nothing missed.
    assert_eq!(offsets(decide(&at("e", 10), &now, vec![])), Some(vec![]));
    // Messages numbered after the position was read are not replayed.
    assert_eq!(
        offsets(decide(&at("e", 8), &now, kept(1..=12))),
        Some(vec![9, 10])
    );
}

fn ring(size: usize, ttl: Duration) -> MemoryHistory {
    MemoryHistory::new(Retention { size, ttl })
}

#[test]
fn memory_history_numbers_keeps_the_last_n_and_recovers() {
    let history = ring(3, Duration::from_secs(60));
    let route = Route::Group(id("g"));
    let mut delivered = Vec::new();
    for n in 1..=5 {
        let text = format!(r#"{{"target":"group","n":{n}}}"#);
        let pos = history.append(&route, &text, "a", |m, at| {
            assert_eq!(
                position_of(m.as_str()),
                Some((at.offset, at.epoch.as_str()))
            );
            delivered.push(m.clone())
        });
        assert_eq!(pos.offset, n);
    }
    let offsets: Vec<u64> = delivered
        .iter()
        .map(|m| position_of(m.as_str()).unwrap().0)
        .collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    let epoch = history.recover(&route, &Since::New).position.unwrap().epoch;

    let recovery = history.recover(&route, &at(epoch.as_str(), 2));
    match recovery.outcome {
        Outcome::Recovered(k) => {
            assert_eq!(k.iter().map(|k| k.offset).collect::<Vec<_>>(), [3, 4, 5])
        }
        Outcome::Lost => panic!("3 to 5 are kept"),
    }
    assert_eq!(
        history.recover(&route, &at(epoch.as_str(), 1)).outcome,
        Outcome::Lost
    );
    // Another route has its own numbering, from its first request on.
    let other = history.recover(&Route::Broadcast, &Since::New);
    assert_eq!(other.position.unwrap().offset, 0);
}

#[test]
fn memory_history_forgets_messages_past_the_ttl_but_not_the_position() {
    let history = ring(10, Duration::from_millis(30));
    let route = Route::Client(id("c"));
    history.append(&route, "{}", "a", |_, _| {});
    let pos = history.append(&route, "{}", "a", |_, _| {});
    std::thread::sleep(Duration::from_millis(60));
    history.sweep();
    assert_eq!(
        history.recover(&route, &at(pos.epoch.as_str(), 1)).outcome,
        Outcome::Lost
    );
    let quiet = history.recover(&route, &at(pos.epoch.as_str(), 2));
    assert_eq!(quiet.outcome, Outcome::Recovered(vec![]));
    assert_eq!(quiet.position, Some(pos));
}
