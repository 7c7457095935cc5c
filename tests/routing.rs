//! Routing over real sockets (docs/protocol.md sections 2 to 4): every target,
//! sender exclusion, several sockets per client, ordering, heartbeats,
//! presence queries and events.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{msg, TestHub};

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn echo_comes_back_normalised_to_the_sender_only() {
    let hub = TestHub::start().await;
    let mut a = hub.connect("g1", "alice").await;
    let mut b = hub.connect("g1", "bob").await;
    assert_eq!(a.recv().await["payload"]["event"], "join"); // bob joined
    a.send(msg("echo", json!({"msg": "hi", "payload": {"n": 1}})))
        .await;
    let got = a.recv().await;
    assert_eq!(got["msg"], "hi");
    assert_eq!(got["version"], "3");
    assert_eq!(got["from_id"], "alice");
    assert_eq!(got["payload"], json!({"n": 1}));
    assert!(got["sent_at"].is_string());
    b.expect_silence(QUIET).await;
}

#[tokio::test]
async fn direct_reaches_every_socket_of_the_client_in_any_group() {
    let hub = TestHub::start().await;
    let mut sender = hub.connect("g1", "alice").await;
    let mut bob_1 = hub.connect("g2", "bob").await;
    let mut bob_2 = hub.connect("g3", "bob").await;
    let mut carol = hub.connect("g2", "carol").await;
    let _ = bob_1.recv().await; // carol joined g2

    sender
        .send(msg("direct", json!({"to_id": "bob", "cmd": "go"})))
        .await;
    for bob in [&mut bob_1, &mut bob_2] {
        let got = bob.recv().await;
        assert_eq!(got["target"], "direct");
        assert_eq!(got["to_id"], "bob");
        assert_eq!(got["cmd"], "go");
        assert_eq!(got["from_id"], "alice");
    }
    carol.expect_silence(QUIET).await;
    sender.expect_silence(QUIET).await;
}

#[tokio::test]
async fn direct_to_oneself_reaches_all_own_sockets_including_the_sender() {
    let hub = TestHub::start().await;
    let mut tab_1 = hub.connect("g1", "alice").await;
    let mut tab_2 = hub.connect("g1", "alice").await;
    tab_1.send(msg("direct", json!({"to_id": "alice"}))).await;
    assert_eq!(tab_1.recv().await["to_id"], "alice");
    assert_eq!(tab_2.recv().await["to_id"], "alice");
}

#[tokio::test]
async fn group_reaches_the_group_except_every_socket_of_the_sender() {
    let hub = TestHub::start().await;
    let mut alice_1 = hub.connect("g1", "alice").await;
    let mut alice_2 = hub.connect("g1", "alice").await;
    let mut bob = hub.connect("g1", "bob").await;
    let mut outsider = hub.connect("g2", "dave").await;
    assert_eq!(alice_1.recv().await["payload"]["client_id"], "bob");
    assert_eq!(alice_2.recv().await["payload"]["client_id"], "bob");

    alice_1
        .send(msg("group", json!({"msg": "hello group"})))
        .await;
    let got = bob.recv().await;
    assert_eq!(got["msg"], "hello group");
    assert_eq!(got["group_id"], "g1");
    assert_eq!(got["from_id"], "alice");
    alice_1.expect_silence(QUIET).await;
    alice_2.expect_silence(QUIET).await;
    outsider.expect_silence(QUIET).await;
}

#[tokio::test]
async fn broadcast_reaches_everyone_but_the_sender() {
    let hub = TestHub::start().await;
    let mut alice = hub.connect("g1", "alice").await;
    let mut bob = hub.connect("g2", "bob").await;
    let mut carol = hub.connect("g3", "carol").await;
    alice.send(msg("broadcast", json!({"msg": "all"}))).await;
    assert_eq!(bob.recv().await["msg"], "all");
    assert_eq!(carol.recv().await["msg"], "all");
    alice.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_thousand_messages_arrive_in_order() {
    let hub = TestHub::start().await;
    let mut sender = hub.connect("g1", "alice").await;
    let mut direct = hub.connect("g9", "bob").await;
    let mut group = hub.connect("g1", "carol").await;
    let _ = sender.recv().await; // carol joined
    for i in 0..1000 {
        sender
            .send(msg(
                "direct",
                json!({"to_id": "bob", "payload": {"seq": i}}),
            ))
            .await;
        sender
            .send(msg("group", json!({"payload": {"seq": i}})))
            .await;
    }
    for i in 0..1000 {
        assert_eq!(direct.recv().await["payload"]["seq"], i);
        assert_eq!(group.recv().await["payload"]["seq"], i);
    }
}

#[tokio::test]
async fn heartbeat_is_answered_on_the_socket_and_not_routed() {
    let hub = TestHub::start().await;
    let mut alice = hub.connect("g1", "alice").await;
    let mut bob = hub.connect("g1", "bob").await;
    let _ = alice.recv().await; // bob joined
    alice
        .send(json!({"msg_type": "heartbeat", "target": "group"}))
        .await;
    let reply = alice.recv().await;
    assert_eq!(reply["msg_type"], "heartbeat");
    assert_eq!(reply["target"], "echo");
    assert_eq!(reply["from_id"], "alice");
    let server_time = reply["payload"]["server_time"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(server_time).is_ok());
    bob.expect_silence(QUIET).await;
}

#[tokio::test]
async fn presence_query_lists_the_group_sorted() {
    let hub = TestHub::start().await;
    let mut zed = hub.connect("g1", "zed").await;
    let _a1 = hub.connect("g1", "amy").await;
    let _a2 = hub.connect("g1", "amy").await;
    let _other = hub.connect("g2", "bob").await;
    let _ = zed.recv().await; // amy joined (once, though she has two sockets)
    zed.send(json!({"msg_type": "presence", "target": "echo"}))
        .await;
    let reply = zed.recv().await;
    assert_eq!(reply["msg_type"], "presence");
    assert_eq!(reply["payload"]["members"], json!(["amy", "zed"]));
}

#[tokio::test]
async fn join_and_leave_are_announced_once_per_client() {
    let hub = TestHub::start().await;
    let mut watcher = hub.connect("g1", "watcher").await;
    let tab_1 = hub.connect("g1", "amy").await;
    let join = watcher.recv().await;
    assert_eq!(join["msg_type"], "presence");
    assert_eq!(join["target"], "group");
    assert_eq!(join["from_id"], "amy");
    assert_eq!(
        join["payload"],
        json!({"event": "join", "client_id": "amy"})
    );

    // A second socket of the same client is no news; nor is its leaving.
    let tab_2 = hub.connect("g1", "amy").await;
    watcher.expect_silence(QUIET).await;
    assert_eq!(tab_2.close().await, 1000);
    watcher.expect_silence(QUIET).await;

    assert_eq!(tab_1.close().await, 1000);
    let leave = watcher.recv().await;
    assert_eq!(
        leave["payload"],
        json!({"event": "leave", "client_id": "amy"})
    );
    let members = hub.get("/v3/groups/g1/presence").await.json();
    assert_eq!(members["members"], json!(["watcher"]));
}

#[tokio::test]
async fn the_given_sent_at_is_kept_exactly() {
    let hub = TestHub::start().await;
    let mut a = hub.connect("g1", "alice").await;
    let stamp = "2025-06-01T12:00:00.5+02:00";
    a.send(msg("echo", json!({"sent_at": stamp}))).await;
    assert_eq!(a.recv().await["sent_at"], stamp);
}
