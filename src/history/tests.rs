use std::collections::HashMap;

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
    assert_eq!(
        RouteKind::of(&Route::Group(id("g"))),
        Some(RouteKind::Group)
    );
    assert_eq!(
        RouteKind::of(&Route::Client(id("c"))),
        Some(RouteKind::Client)
    );
    assert_eq!(RouteKind::of(&Route::Broadcast), Some(RouteKind::Broadcast));
    assert_eq!(RouteKind::of(&Route::Control), None);
    for kind in RouteKind::ALL {
        assert_eq!(RouteKind::of(&kind.route(&id("g"), &id("c"))), Some(kind));
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

#[test]
fn an_epoch_reads_back_as_it_was_given() {
    let longest = "z".repeat(64);
    for s in ["e", "ep_1-X", longest.as_str()] {
        assert_eq!(
            Epoch::parse(s).map(|e| e.as_str().to_owned()),
            Some(s.to_owned())
        );
    }
    assert!(Epoch::parse("").is_none());
    assert!(Epoch::parse(&"z".repeat(65)).is_none());
    assert!(Epoch::parse("a:b").is_none());
    assert_eq!(Epoch::parse("ab"), Epoch::parse("ab"));
    assert_ne!(Epoch::parse("ab"), Epoch::parse("abc"));
    assert_eq!(Epoch::random().as_str().len(), 16);
    assert_eq!(
        format!("{:?}", Epoch::parse("ab").unwrap()),
        r#"Epoch("ab")"#
    );
}

#[test]
fn a_position_is_read_only_from_the_numbered_end() {
    // Decoys in the payload never count; only the last two fields do.
    let text = r#"{"payload":{"offset":3,"epoch":"d"},"offset":12,"epoch":"e-1_Z"}"#;
    assert_eq!(position_of(text), Some((12, "e-1_Z")));
    for unnumbered in [
        r#"{"payload":{"offset":3,"epoch":"d"},"n":1}"#,
        r#"{"a":0,"offset":"12","epoch":"e"}"#,
        r#"{"a":0,"offset":+12,"epoch":"e"}"#,
        r#"{"a":0,"offset":,"epoch":"e"}"#,
        r#"{"a":0,"offset":1,"epoch":"a b"}"#,
        r#"{"offset":1,"epoch":"e"}"#,
        r#"{"x":1,"epoch":"e"}"#,
        r#""epoch":"e"}"#,
        "",
    ] {
        assert_eq!(position_of(unnumbered), None, "{unnumbered}");
    }
    // An empty epoch reads as empty; Epoch::parse refuses it.
    assert_eq!(
        position_of(r#"{"a":0,"offset":1,"epoch":""}"#),
        Some((1, ""))
    );
}
