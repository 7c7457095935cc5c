//! Acknowledgements seen from a client (docs/protocol.md section 10):
//! frames that ask for one, and reading the answers among other messages.

use serde_json::{json, Value};

use super::{Client, Event, TIMEOUT};

/// A `cmd` to the sender's group, asking for an acknowledgement.
pub fn group_cmd(n: u64, ack_id: &str) -> Value {
    json!({"msg_type": "cmd", "target": "group", "cmd": format!("c{n}"), "ack_id": ack_id})
}

pub fn is_ack(m: &Value) -> bool {
    m["msg_type"] == "ack"
}

/// The next acknowledgement's payload; other messages are skipped.
pub async fn next_ack(client: &mut Client) -> Value {
    loop {
        let m = client.recv().await;
        if is_ack(&m) {
            assert_eq!(m["target"], "echo", "{m}");
            return m["payload"].clone();
        }
    }
}

/// Sends `frame` and returns its acknowledgement's payload.
pub async fn send_acked(client: &mut Client, frame: Value) -> Value {
    let id = frame["ack_id"].clone();
    client.send(frame).await;
    let ack = next_ack(client).await;
    assert_eq!(ack["ack_id"], id, "acks come in the order sent: {ack}");
    ack
}

/// The next `n` acknowledgements and the other messages read meanwhile.
pub async fn collect_acks(client: &mut Client, n: usize) -> (Vec<Value>, Vec<Value>) {
    let (mut acks, mut others) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + TIMEOUT * 3;
    while acks.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(left).await {
            Some(Event::Text(m)) if is_ack(&m) => acks.push(m["payload"].clone()),
            Some(Event::Text(m)) => others.push(m),
            other => panic!("{} of {n} acks, then {other:?}", acks.len()),
        }
    }
    (acks, others)
}
