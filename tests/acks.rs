//! Acknowledgements (docs/protocol.md section 10), in memory and through a
//! real redis-server: every status, the refusals, and what recipients see.
//! (On a Redis Cluster: `tests/cluster.rs`; across a pub/sub blip:
//! `tests/pubsub_blip.rs`.)

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use support::acks::{collect_acks, group_cmd, is_ack, next_ack, send_acked};
use support::redis::RedisServer;
use support::{msg, Client, TestHub};

const QUIET: Duration = Duration::from_millis(300);

/// A kept message's acknowledgement: ok, with its offset and epoch.
fn ok_at(ack: &Value) -> (u64, String) {
    assert_eq!(ack["status"], "ok", "{ack}");
    let offset = ack["offset"].as_u64().unwrap_or_else(|| panic!("{ack}"));
    let epoch = ack["epoch"].as_str().unwrap_or_else(|| panic!("{ack}"));
    (offset, epoch.to_owned())
}

/// What a recipient of a sender's group cmd sees, and what the sender's
/// ack says, agree; no recipient ever sees `ack_id`.
async fn group_cmds_are_acked_with_their_place(hub: &TestHub, other: &TestHub) {
    let mut ctl = hub.connect("g", "ctl").await;
    let mut worker = other.connect("g", "worker").await;
    for n in 1..=3u64 {
        let ack = send_acked(&mut ctl, group_cmd(n, &format!("a-{n}"))).await;
        let (offset, epoch) = ok_at(&ack);
        assert_eq!(offset, n);
        let got = routed(&mut worker).await;
        assert_eq!(got["cmd"], format!("c{n}"));
        assert_eq!(
            (got["offset"].as_u64(), got["epoch"].as_str()),
            (Some(offset), Some(&*epoch))
        );
        assert!(got.get("ack_id").is_none(), "a recipient saw ack_id: {got}");
    }
    // A frame that does not ask gets no answer.
    ctl.send(msg("group", json!({"msg": "quiet"}))).await;
    assert_eq!(routed(&mut worker).await["msg"], "quiet");
    ctl.expect_silence(QUIET).await;
}

/// The next message that is not a presence event.
async fn routed(client: &mut Client) -> Value {
    loop {
        let m = client.recv().await;
        if m["msg_type"] != "presence" {
            return m;
        }
    }
}

/// Every message that is not a presence event until `QUIET` passes.
async fn all_routed(client: &mut Client) -> Vec<Value> {
    let mut got = Vec::new();
    while let Some(support::Event::Text(m)) = client.next_event(QUIET).await {
        if m["msg_type"] != "presence" {
            got.push(m);
        }
    }
    got
}

/// 1,000 frames with ids: 1,000 acks, each id once, offsets one apart.
async fn a_thousand_acks(hub: &TestHub) {
    let mut ctl = hub.connect("many", "ctl").await;
    let n = 1000u64;
    for i in 0..n {
        ctl.send(group_cmd(i, &format!("k{i}"))).await;
    }
    let (acks, others) = collect_acks(&mut ctl, n as usize).await;
    let ids: HashSet<&str> = acks.iter().filter_map(|a| a["ack_id"].as_str()).collect();
    assert_eq!(ids.len(), n as usize, "every id acked once");
    let offsets: Vec<u64> = acks.iter().map(|a| ok_at(a).0).collect();
    assert_eq!(offsets, (1..=n).collect::<Vec<_>>(), "in order, one apart");
    // Each ack names the frame sent in that place.
    assert!(acks
        .iter()
        .enumerate()
        .all(|(i, a)| a["ack_id"] == format!("k{i}")));
    ctl.expect_silence(QUIET).await;
    assert!(others.iter().all(|m| m.get("ack_id").is_none()));
}

#[tokio::test]
async fn group_cmds_are_acked_with_their_offset_in_memory() {
    let hub = TestHub::start().await;
    group_cmds_are_acked_with_their_place(&hub, &hub).await;
    a_thousand_acks(&hub).await;
    // Other tests of this binary count too: at least ours.
    assert!(hub.metric("aether_acks_total{status=\"ok\"}").await >= 1003.0);
}

#[tokio::test]
async fn group_cmds_are_acked_with_their_offset_through_redis() {
    let redis = RedisServer::start();
    let a = TestHub::on_redis(&redis, |_| {}).await;
    let b = TestHub::on_redis(&redis, |_| {}).await;
    group_cmds_are_acked_with_their_place(&a, &b).await;
    a_thousand_acks(&a).await;
}

/// With history off there is no place to name: `ok` alone.
#[tokio::test]
async fn without_history_ok_has_no_offset() {
    let redis = RedisServer::start();
    let off = |c: &mut aether_hub::Config| c.history_size = 0;
    let on_redis = TestHub::on_redis(&redis, off).await;
    let in_memory = TestHub::with(off).await;
    for hub in [&on_redis, &in_memory] {
        let mut ctl = hub.connect("g", "ctl").await;
        for target in ["group", "broadcast"] {
            let frame = msg(target, json!({"msg": "hi", "ack_id": "x"}));
            let ack = send_acked(&mut ctl, frame).await;
            assert_eq!(ack, json!({"ack_id": "x", "status": "ok"}));
        }
        let direct = msg(
            "direct",
            json!({"to_id": "nobody", "msg": "hi", "ack_id": "d"}),
        );
        assert_eq!(send_acked(&mut ctl, direct).await["status"], "ok");
    }
}

/// `echo`, `heartbeat` and `presence` are acked `ok` after the answer.
#[tokio::test]
async fn echo_heartbeat_and_presence_are_acked_after_their_answer() {
    let hub = TestHub::start().await;
    let mut c = hub.connect("g", "me").await;
    let frames = [
        (msg("echo", json!({"msg": "back", "ack_id": "e"})), "msg"),
        (
            json!({"msg_type": "heartbeat", "target": "echo", "ack_id": "h"}),
            "heartbeat",
        ),
        (
            json!({"msg_type": "presence", "target": "echo", "ack_id": "p"}),
            "presence",
        ),
    ];
    for (frame, answer_type) in frames {
        let id = frame["ack_id"].clone();
        c.send(frame).await;
        let answer = c.recv().await;
        assert_eq!(
            answer["msg_type"], answer_type,
            "the answer first: {answer}"
        );
        assert!(answer.get("ack_id").is_none());
        let ack = c.recv().await;
        assert_eq!(ack["msg_type"], "ack", "{ack}");
        assert_eq!(ack["payload"], json!({"ack_id": id, "status": "ok"}));
        assert_eq!(
            (ack["from_id"].as_str(), ack["group_id"].as_str()),
            (Some("me"), Some("g"))
        );
    }
    c.expect_silence(QUIET).await;
}

/// A bad `ack_id`, or `msg_type: "ack"` from a client, is a schema error:
/// 4000, and no acknowledgement. So is a frame that breaks policy.
#[tokio::test]
async fn bad_ack_ids_and_client_acks_close_with_4000_unacked() {
    let hub = TestHub::start().await;
    let long = "a".repeat(65);
    let bad: Vec<Value> = vec![
        json!(""),
        json!(long),
        json!("a b"),
        json!("a.b"),
        json!("é"),
        json!(5),
        json!(null),
        json!(true),
        json!(["a"]),
        json!({"id": "a"}),
    ];
    for (i, ack_id) in bad.into_iter().enumerate() {
        let mut c = hub.connect("g", &format!("bad{i}")).await;
        c.send(msg("group", json!({"msg": "x", "ack_id": ack_id})))
            .await;
        let (code, reason) = c.recv_close().await;
        assert_eq!(code, 4000, "ack_id {ack_id}: {reason}");
    }
    let mut c = hub.connect("g", "forger").await;
    let forged = json!({"msg_type": "ack", "target": "echo", "ack_id": "a",
                        "payload": {"ack_id": "a", "status": "ok"}});
    c.send(forged).await;
    assert_eq!(c.recv_close().await.0, 4000);

    // 64 characters of the whole alphabet are fine.
    let mut c = hub.connect("g", "fine").await;
    let id = "azAZ09_-".repeat(8);
    let ack = send_acked(&mut c, msg("group", json!({"msg": "x", "ack_id": id}))).await;
    assert_eq!(ack["status"], "ok");

    // A frame the hub closes the socket for is not acknowledged.
    let mut c = hub.connect("g", "liar").await;
    c.send(msg(
        "group",
        json!({"from_id": "someone-else", "ack_id": "z"}),
    ))
    .await;
    match c.next_event(support::TIMEOUT).await {
        Some(support::Event::Closed(code, _)) => assert_eq!(code, 4003),
        other => panic!("expected the close, got {other:?}"),
    }
}

/// Redis down: a message that cannot be handed to it reached nobody and
/// says so, `failed`, with the reason; nothing is delivered later.
#[tokio::test]
async fn a_publish_with_redis_down_is_acked_failed() {
    let mut redis = RedisServer::start();
    let hub = TestHub::on_redis(&redis, |_| {}).await;
    let mut ctl = hub.connect("g", "ctl").await;
    assert_eq!(ok_at(&send_acked(&mut ctl, group_cmd(1, "up")).await).0, 1);
    redis.kill();
    hub.wait_ready(503).await;
    // Not ready once Redis is gone, and by then publishing fails.
    let ack = send_acked(&mut ctl, group_cmd(2, "down")).await;
    let want = json!({"ack_id": "down", "status": "failed", "reason": "unavailable"});
    assert_eq!(ack, want);
    // Other tests of this binary count too.
    assert!(hub.metric("aether_acks_total{status=\"failed\"}").await >= 1.0);
    // The socket stays; the message never comes.
    redis.restart();
    hub.wait_ready(200).await;
    let ack = send_acked(&mut ctl, group_cmd(3, "back")).await;
    assert_eq!(ack["status"], "ok", "{ack}");
    let mut watcher = hub.connect("g", "watcher").await;
    assert_eq!(
        send_acked(&mut ctl, group_cmd(4, "seen")).await["status"],
        "ok"
    );
    let cmds: Vec<Value> = all_routed(&mut watcher).await;
    let cmds: Vec<&str> = cmds.iter().filter_map(|m| m["cmd"].as_str()).collect();
    assert!(cmds.ends_with(&["c4"]) && !cmds.contains(&"c2"), "{cmds:?}");
}

/// Redis frozen mid-publish: the message was sent but never answered, so
/// it may have been published: `unconfirmed`. (It was: Redis runs it when
/// it wakes, and the group gets it.)
#[tokio::test]
async fn a_publish_redis_never_answered_is_acked_unconfirmed() {
    let redis = RedisServer::start();
    let a = TestHub::on_redis(&redis, |_| {}).await;
    let b = TestHub::on_redis(&redis, |_| {}).await;
    let mut ctl = a.connect("frozen", "ctl").await;
    let mut worker = b.connect("frozen", "worker").await;
    redis.pause();
    ctl.send(group_cmd(1, "late")).await;
    let ack = next_ack(&mut ctl).await;
    redis.resume();
    assert_eq!(ack, json!({"ack_id": "late", "status": "unconfirmed"}));
    assert!(a.metric("aether_acks_total{status=\"unconfirmed\"}").await >= 1.0);
    let got = routed(&mut worker).await;
    assert_eq!(
        (got["cmd"].as_str(), got["offset"].as_u64()),
        (Some("c1"), Some(1))
    );
}

/// Recipients of every target never see `ack_id`; only the sender is
/// answered, once per frame.
#[tokio::test]
async fn only_the_sender_is_answered() {
    let hub = TestHub::start().await;
    let mut ctl = hub.connect("g", "ctl").await;
    let mut w: Vec<Client> = Vec::new();
    for name in ["w1", "w2"] {
        w.push(hub.connect("g", name).await);
    }
    let frames = [
        msg("direct", json!({"to_id": "w1", "msg": "d", "ack_id": "d1"})),
        msg("group", json!({"msg": "g", "ack_id": "g1"})),
        msg("broadcast", json!({"msg": "b", "ack_id": "b1"})),
    ];
    for frame in frames {
        assert_eq!(send_acked(&mut ctl, frame).await["status"], "ok");
    }
    for (worker, want) in w.iter_mut().zip([vec!["d", "g", "b"], vec!["g", "b"]]) {
        let got = all_routed(worker).await;
        assert!(got.iter().all(|m| m.get("ack_id").is_none() && !is_ack(m)));
        let msgs: Vec<&str> = got.iter().filter_map(|m| m["msg"].as_str()).collect();
        assert_eq!(msgs, want);
    }
    let own = all_routed(&mut ctl).await;
    assert!(
        own.is_empty(),
        "no second ack, and senders skip their own: {own:?}"
    );
}
