//! Table-driven checks of every rule of docs/protocol.md section 2.

use super::*;

fn ids() -> (VisionId, VisionId) {
    (
        VisionId::parse("g1").unwrap(),
        VisionId::parse("alice").unwrap(),
    )
}

fn socket_parse(text: &str, allow_broadcast: bool) -> Result<serde_json::Value, FrameError> {
    let (group, client) = ids();
    let origin = Origin::Socket {
        group: &group,
        client: &client,
        allow_broadcast,
    };
    let m = parse(text, origin)?;
    Ok(serde_json::from_str(m.encode().as_str()).unwrap())
}

#[derive(Debug)]
enum Want {
    Ok,
    Schema(&'static str),
    Policy(&'static str),
}

#[test]
fn client_frames_accepted_and_rejected() {
    let cases: &[(&str, Want)] = &[
        (r#"{"msg_type":"msg","target":"echo"}"#, Want::Ok),
        (
            r#"{"version":"3","msg_type":"cmd","target":"group","cmd":"go","msg":null}"#,
            Want::Ok,
        ),
        (
            r#"{"msg_type":"msg","target":"direct","to_id":"bob","payload":{"a":[1,2]}}"#,
            Want::Ok,
        ),
        (r#"{"msg_type":"heartbeat","target":"broadcast"}"#, Want::Ok),
        (r#"{"msg_type":"presence","target":"echo"}"#, Want::Ok),
        (
            r#"{"msg_type":"msg","target":"group","from_id":"alice","group_id":"g1"}"#,
            Want::Ok,
        ),
        (
            r#"{"msg_type":"msg","target":"echo","sent_at":"2024-01-02T03:04:05+01:00"}"#,
            Want::Ok,
        ),
        (
            r#"{"msg_type":"msg","target":"echo","to_id":null,"group_id":null,"cmd":null}"#,
            Want::Ok,
        ),
        // not JSON, not an object
        ("not json", Want::Schema("expected")),
        ("[1,2]", Want::Schema("invalid type")),
        ("\"msg\"", Want::Schema("invalid type")),
        // required fields
        (
            r#"{"target":"echo"}"#,
            Want::Schema("missing field `msg_type`"),
        ),
        (
            r#"{"msg_type":"msg"}"#,
            Want::Schema("missing field `target`"),
        ),
        // unknown enum values and fields
        (
            r#"{"msg_type":"shout","target":"echo"}"#,
            Want::Schema("unknown variant `shout`"),
        ),
        (
            r#"{"msg_type":"msg","target":"everyone"}"#,
            Want::Schema("unknown variant `everyone`"),
        ),
        (
            r#"{"msg_type":"msg","target":"echo","extra":1}"#,
            Want::Schema("unknown field `extra`"),
        ),
        // version
        (
            r#"{"version":"2","msg_type":"msg","target":"echo"}"#,
            Want::Schema("version must be \"3\""),
        ),
        (
            r#"{"version":3,"msg_type":"msg","target":"echo"}"#,
            Want::Schema("invalid type"),
        ),
        (
            r#"{"version":null,"msg_type":"msg","target":"echo"}"#,
            Want::Schema("invalid type: null"),
        ),
        // wrong types
        (
            r#"{"msg_type":"msg","target":"echo","cmd":5}"#,
            Want::Schema("cmd must be a string or null"),
        ),
        (
            r#"{"msg_type":"msg","target":"echo","msg":{}}"#,
            Want::Schema("msg must be a string or null"),
        ),
        (
            r#"{"msg_type":"msg","target":"echo","from_id":null}"#,
            Want::Schema("invalid type: null"),
        ),
        (
            r#"{"msg_type":"msg","target":"echo","to_id":7}"#,
            Want::Schema("invalid type"),
        ),
        // payload
        (
            r#"{"msg_type":"msg","target":"echo","payload":null}"#,
            Want::Schema("payload must be a JSON object"),
        ),
        (
            r#"{"msg_type":"msg","target":"echo","payload":[1]}"#,
            Want::Schema("payload must be a JSON object"),
        ),
        (
            r#"{"msg_type":"msg","target":"echo","payload":"x"}"#,
            Want::Schema("payload must be a JSON object"),
        ),
        // sent_at
        (
            r#"{"msg_type":"msg","target":"echo","sent_at":"yesterday"}"#,
            Want::Schema("sent_at must be an RFC 3339 date-time"),
        ),
        (
            r#"{"msg_type":"msg","target":"echo","sent_at":null}"#,
            Want::Schema("invalid type: null"),
        ),
        // direct needs a valid to_id
        (
            r#"{"msg_type":"msg","target":"direct"}"#,
            Want::Schema("to_id is required"),
        ),
        (
            r#"{"msg_type":"msg","target":"direct","to_id":null}"#,
            Want::Schema("to_id is required"),
        ),
        (
            r#"{"msg_type":"msg","target":"direct","to_id":"bad id"}"#,
            Want::Schema("to_id has a character"),
        ),
        (
            r#"{"msg_type":"msg","target":"direct","to_id":""}"#,
            Want::Schema("to_id is empty"),
        ),
        // policy: identity and broadcast
        (
            r#"{"msg_type":"msg","target":"echo","from_id":"mallory"}"#,
            Want::Policy("from_id"),
        ),
        (
            r#"{"msg_type":"msg","target":"group","group_id":"g2"}"#,
            Want::Policy("group_id"),
        ),
    ];
    for (text, want) in cases {
        let got = socket_parse(text, true);
        match (want, &got) {
            (Want::Ok, Ok(_)) => {}
            (Want::Schema(part), Err(FrameError::Schema(m))) if m.contains(part) => {}
            (Want::Policy(part), Err(FrameError::Policy(m))) if m.contains(part) => {}
            _ => panic!("{text}: wanted {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn broadcast_can_be_disabled_for_clients() {
    let text = r#"{"msg_type":"msg","target":"broadcast"}"#;
    assert!(socket_parse(text, true).is_ok());
    assert!(matches!(
        socket_parse(text, false),
        Err(FrameError::Policy(m)) if m.contains("broadcast")
    ));
}

#[test]
fn normalisation_fills_version_from_id_sent_at_and_group() {
    let v = socket_parse(
        r#"{"msg_type":"cmd","target":"group","cmd":"st\"art","payload":{"k":"v"}}"#,
        true,
    )
    .unwrap();
    assert_eq!(v["version"], "3");
    assert_eq!(v["from_id"], "alice");
    assert_eq!(v["group_id"], "g1");
    assert_eq!(v["cmd"], "st\"art");
    assert_eq!(v["msg"], serde_json::Value::Null);
    assert_eq!(v["to_id"], serde_json::Value::Null);
    assert_eq!(v["payload"], serde_json::json!({"k": "v"}));
    let sent_at = v["sent_at"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(sent_at).is_ok());
    assert!(sent_at.ends_with('Z'));
}

#[test]
fn given_sent_at_is_passed_on_exactly_and_payload_defaults_to_object() {
    let v = socket_parse(
        r#"{"msg_type":"msg","target":"echo","sent_at":"2024-01-02T03:04:05.1+01:00"}"#,
        true,
    )
    .unwrap();
    assert_eq!(v["sent_at"], "2024-01-02T03:04:05.1+01:00");
    assert_eq!(v["payload"], serde_json::json!({}));
}

#[test]
fn escaped_ids_are_compared_by_value() {
    // "\u0061lice" is "alice" written with an escape.
    let v = socket_parse(
        r#"{"msg_type":"msg","target":"echo","from_id":"\u0061lice"}"#,
        true,
    )
    .unwrap();
    assert_eq!(v["from_id"], "alice");
}

#[test]
fn service_frames_accepted_and_rejected() {
    let cases: &[(&str, Option<&str>)] = &[
        (
            r#"{"msg_type":"msg","target":"group","from_id":"svc","group_id":"g1"}"#,
            None,
        ),
        (
            r#"{"msg_type":"cmd","target":"direct","from_id":"svc","to_id":"bob"}"#,
            None,
        ),
        (
            r#"{"msg_type":"msg","target":"broadcast","from_id":"svc"}"#,
            None,
        ),
        (
            r#"{"msg_type":"msg","target":"group","group_id":"g1"}"#,
            Some("from_id is required"),
        ),
        (
            r#"{"msg_type":"msg","target":"group","from_id":"a b","group_id":"g1"}"#,
            Some("from_id has a character"),
        ),
        (
            r#"{"msg_type":"msg","target":"group","from_id":"svc"}"#,
            Some("group_id is required"),
        ),
        (
            r#"{"msg_type":"msg","target":"group","from_id":"svc","group_id":"g:1"}"#,
            Some("group_id has a character"),
        ),
        (
            r#"{"msg_type":"msg","target":"echo","from_id":"svc"}"#,
            Some("echo cannot be published"),
        ),
        (
            r#"{"msg_type":"heartbeat","target":"broadcast","from_id":"svc"}"#,
            Some("only msg and cmd"),
        ),
    ];
    for (text, want) in cases {
        let got = parse(text, Origin::Service).map(|m| m.encode());
        match (want, &got) {
            (None, Ok(_)) => {}
            (Some(part), Err(FrameError::Schema(m))) if m.contains(part) => {}
            _ => panic!("{text}: wanted {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn hub_messages_have_the_contract_shape() {
    let (group, client) = ids();
    let hb: serde_json::Value = serde_json::from_str(heartbeat_reply(&client).as_str()).unwrap();
    assert_eq!(hb["msg_type"], "heartbeat");
    assert_eq!(hb["target"], "echo");
    assert_eq!(hb["from_id"], "alice");
    assert!(hb["payload"]["server_time"].is_string());

    let members = vec!["alice".to_owned(), "bob".to_owned()];
    let p: serde_json::Value =
        serde_json::from_str(presence_reply(&client, &group, &members).as_str()).unwrap();
    assert_eq!(p["payload"]["members"], serde_json::json!(["alice", "bob"]));

    let e: serde_json::Value =
        serde_json::from_str(presence_event(PresenceEvent::Leave, &group, &client).as_str())
            .unwrap();
    assert_eq!(e["target"], "group");
    assert_eq!(e["group_id"], "g1");
    assert_eq!(
        e["payload"],
        serde_json::json!({"event": "leave", "client_id": "alice"})
    );
}

#[test]
fn the_send_time_is_read_back_from_an_encoded_message() {
    // A payload that mentions sent_at itself must not be mistaken for it.
    let text = r#"{"msg_type":"msg","target":"group","group_id":"g1","payload":{"sent_at":"2001-01-01T00:00:00Z"},"sent_at":"2026-11-25T10:00:00.5+01:00"}"#;
    let (group, client) = ids();
    let origin = Origin::Socket {
        group: &group,
        client: &client,
        allow_broadcast: true,
    };
    let encoded = parse(text, origin).unwrap().encode();
    let sent = sent_at_of(encoded.as_str()).unwrap();
    assert_eq!(sent.to_rfc3339(), "2026-11-25T10:00:00.500+01:00");

    // The hub's own time, written when a client leaves it out.
    let hub_filled = parse(r#"{"msg_type":"msg","target":"echo"}"#, origin)
        .unwrap()
        .encode();
    let age = Utc::now().fixed_offset() - sent_at_of(hub_filled.as_str()).unwrap();
    assert!(age >= chrono::TimeDelta::zero() && age < chrono::TimeDelta::seconds(60));

    for not_ours in [
        r#"{"a":1}"#,
        r#"{"sent_at":"yesterday"}"#,
        r#"{"sent_at":"2026"#,
    ] {
        assert_eq!(sent_at_of(not_ours), None, "{not_ours}");
    }
}

/// A lone UTF-16 surrogate escape in a raw value (payload, cmd, msg) is
/// refused: passed on, it would reach recipients as text strict JSON
/// parsers reject. A proper pair, or an escaped backslash before `ud83d`,
/// is fine. (Found by the `client_frame` fuzz target.)
#[test]
fn lone_surrogate_escapes_are_refused() {
    let frame = |payload: &str| {
        format!(r#"{{"msg_type":"msg","target":"group","payload":{{"t":"{payload}"}}}}"#)
    };
    for lone in [r"\ud83dX", r"\ude00", r"x\uD83D", r"\udbff\u0041"] {
        let refused = socket_parse(&frame(lone), false);
        assert!(
            matches!(refused, Err(FrameError::Schema(_))),
            "{lone}: {refused:?}"
        );
    }
    let cmd = r#"{"msg_type":"cmd","target":"group","cmd":"\ud800","payload":{}}"#;
    assert!(matches!(
        socket_parse(cmd, false),
        Err(FrameError::Schema(_))
    ));
    for fine in [r"\ud83d\ude00", r"\\ud83d", r"\u00e9"] {
        let got = socket_parse(&frame(fine), false).expect(fine);
        assert!(got["payload"]["t"].is_string());
    }
}

/// Numbers beyond f64 and nesting past serde_json's limit are refused with
/// a reason (4000), never relayed; ordinary exponents, long decimals and
/// brackets inside strings pass. (Found by the `client_frame` fuzz target.)
#[test]
fn huge_numbers_and_deep_nesting_are_refused() {
    let frame = |payload: &str| {
        format!(r#"{{"msg_type":"msg","target":"group","payload":{{"v":{payload}}}}}"#)
    };
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let long = "9".repeat(400);
    for bad in ["1e999", "-4.4e22222", long.as_str(), deep.as_str()] {
        let refused = socket_parse(&frame(bad), false);
        assert!(
            matches!(&refused, Err(FrameError::Schema(r)) if !r.is_empty()),
            "{}: {refused:?}",
            &bad[..bad.len().min(20)]
        );
    }
    let nested = format!("{}1{}", "[".repeat(60), "]".repeat(60));
    let bracketed = format!("\"{}\"", "[".repeat(500));
    for fine in [
        "1.5e-7",
        "2E+10",
        "123456789012345678901234567890",
        &nested,
        &bracketed,
    ] {
        let got = socket_parse(&frame(fine), false).expect(fine);
        assert!(!got["payload"]["v"].is_null(), "{fine}");
    }
}
