//! History and recovery on one in-memory hub (docs/protocol.md section 9), with
//! real WebSocket clients: offsets and epochs, resuming with `since_*`,
//! whole-or-nothing replays, sender exclusion, TTL and size limits, the
//! history-off answers, and a reconnect storm. Redis mode is in
//! `history_redis.rs`.

mod support;

use std::time::Duration;

use serde_json::json;
use support::history::{
    cmd, next_message, position, reconnect_storm, replay_skips_own_messages, resume, routed,
};
use support::{msg, Event, TestHub};

const QUIET: Duration = Duration::from_millis(300);

async fn hub_with(size: u32, ttl: Duration) -> TestHub {
    TestHub::with(|c| {
        c.history_size = size;
        c.history_ttl = ttl;
    })
    .await
}

#[tokio::test]
async fn kept_messages_carry_consecutive_offsets_and_publish_returns_them() {
    let hub = TestHub::start().await;
    let mut worker = hub.connect("g", "worker").await;
    let mut a = hub.connect("g", "a").await;
    let mut b = hub.connect("g", "b").await;
    let _ = worker.recv().await; // a joined
    let _ = worker.recv().await; // b joined
    for n in 0..500 {
        a.send(cmd(n)).await;
        b.send(cmd(n)).await;
    }
    let first = next_message(&mut worker).await;
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();
    assert_eq!(first["offset"], 1);
    for offset in 2..=1000u64 {
        let m = next_message(&mut worker).await;
        assert_eq!(m["offset"], offset);
        assert_eq!(m["epoch"], epoch.as_str());
    }

    let published = hub
        .post(
            "/v3/publish",
            &[],
            &json!({"msg_type": "cmd", "target": "group", "group_id": "g", "from_id": "svc", "cmd": "go"})
                .to_string(),
        )
        .await;
    assert_eq!(published.status, 202);
    let answer = published.json();
    assert_eq!(answer["status"], "accepted");
    assert_eq!(answer["offset"], 1001);
    assert_eq!(answer["epoch"], epoch.as_str());
    assert_eq!(next_message(&mut worker).await["offset"], 1001);

    // Direct messages are numbered on the recipient's own route.
    a.send(msg("direct", json!({"to_id": "worker"}))).await;
    let direct = next_message(&mut worker).await;
    assert_eq!(direct["offset"], 1);
    assert_ne!(direct["epoch"], epoch.as_str());
    // Not kept: echo, heartbeat answers, presence events.
    a.send(msg("echo", json!({}))).await;
    assert!(a.recv().await.get("offset").is_none());
}

#[tokio::test]
async fn a_worker_that_blips_gets_exactly_what_it_missed_then_live() {
    let hub = TestHub::start().await;
    let mut controller = hub.connect("line", "planner").await;
    let mut observer = hub.connect("line", "observer").await;
    let mut worker = hub.connect("line", "robot").await;
    let _ = controller.recv().await; // robot joined
    controller.send(cmd(0)).await;
    let seen = position(&next_message(&mut worker).await);
    worker.close().await;

    for n in 1..=5 {
        controller.send(cmd(n)).await;
    }
    routed(&mut observer, 6).await;
    let mut worker = resume(&hub, "line", "robot", &format!("since_group={seen}")).await;
    for n in 1..=5u64 {
        let m = next_message(&mut worker).await;
        assert_eq!(m["cmd"], format!("step-{n}"));
        assert_eq!(m["offset"], n + 1);
    }
    let summary = next_message(&mut worker).await;
    assert_eq!(summary["msg_type"], "recovery");
    assert_eq!(summary["target"], "echo");
    assert_eq!(summary["from_id"], "robot");
    assert_eq!(summary["group_id"], "line");
    let group = &summary["payload"]["group"];
    assert_eq!(group["recovered"], true);
    assert_eq!(group["missed"], 5);
    assert_eq!(group["offset"], 6);
    assert_eq!(summary["payload"].as_object().unwrap().len(), 1);

    controller.send(cmd(6)).await;
    let live = next_message(&mut worker).await;
    assert_eq!(live["offset"], 7, "no duplicate, no gap");
    worker.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_replay_skips_the_clients_own_group_messages_as_live_routing_does() {
    let hub = TestHub::start().await;
    replay_skips_own_messages(&hub, &hub).await;
}

#[tokio::test]
async fn direct_and_broadcast_routes_resume_too() {
    let hub = TestHub::start().await;
    let mut worker = hub.connect("g", "robot").await;
    let mut boss = hub.connect("h", "boss").await;
    boss.send(msg("direct", json!({"to_id": "robot", "cmd": "a"})))
        .await;
    boss.send(msg("broadcast", json!({"msg": "b"}))).await;
    let direct = position(&next_message(&mut worker).await);
    let broadcast = position(&next_message(&mut worker).await);
    worker.close().await;

    boss.send(msg("direct", json!({"to_id": "robot", "cmd": "c"})))
        .await;
    boss.send(msg("broadcast", json!({"msg": "d"}))).await;
    let query = format!("since_client={direct}&since_broadcast={broadcast}&since_group=new");
    let mut worker = resume(&hub, "g", "robot", &query).await;
    assert_eq!(next_message(&mut worker).await["cmd"], "c");
    assert_eq!(next_message(&mut worker).await["msg"], "d");
    let summary = next_message(&mut worker).await;
    let p = &summary["payload"];
    assert_eq!(p["client"]["missed"], 1);
    assert_eq!(p["broadcast"]["missed"], 1);
    assert_eq!(
        p["group"],
        json!({"recovered": true, "missed": 0, "epoch": p["group"]["epoch"], "offset": 0})
    );
    assert!(
        !p["group"]["epoch"].as_str().unwrap().is_empty(),
        "a route with no message has an epoch"
    );
}

#[tokio::test]
async fn what_history_no_longer_holds_is_not_replayed_at_all() {
    let hub = hub_with(3, Duration::from_secs(300)).await;
    let mut worker = hub.connect("g", "robot").await;
    let mut controller = hub.connect("g", "planner").await;
    let mut observer = hub.connect("g", "observer").await;
    controller.send(cmd(0)).await;
    let m = next_message(&mut worker).await;
    let (seen, epoch) = (position(&m), m["epoch"].as_str().unwrap().to_owned());
    worker.close().await;
    for n in 1..=5 {
        controller.send(cmd(n)).await;
    }
    routed(&mut observer, 6).await;

    for since in [seen.clone(), "other-epoch:1".to_owned()] {
        let mut worker = resume(&hub, "g", "robot", &format!("since_group={since}")).await;
        let summary = next_message(&mut worker).await;
        assert_eq!(
            summary["msg_type"], "recovery",
            "nothing replayed for {since}"
        );
        let group = &summary["payload"]["group"];
        assert_eq!(group["recovered"], false);
        assert_eq!(group["missed"], 0);
        assert_eq!(
            group["epoch"],
            epoch.as_str(),
            "the current position either way"
        );
        assert_eq!(group["offset"], 6);
        worker.close().await;
    }
}

#[tokio::test]
async fn messages_past_the_ttl_are_lost_but_a_quiet_spell_loses_nothing() {
    let hub = hub_with(100, Duration::from_millis(300)).await;
    let mut worker = hub.connect("g", "robot").await;
    let mut controller = hub.connect("g", "planner").await;
    let mut observer = hub.connect("g", "observer").await;
    controller.send(cmd(0)).await;
    let seen = position(&next_message(&mut worker).await);
    worker.close().await;
    controller.send(cmd(1)).await;
    routed(&mut observer, 2).await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    let mut late = resume(&hub, "g", "robot", &format!("since_group={seen}")).await;
    let summary = next_message(&mut late).await;
    assert_eq!(summary["payload"]["group"]["recovered"], false);
    let now = format!(
        "{}:{}",
        summary["payload"]["group"]["epoch"].as_str().unwrap(),
        summary["payload"]["group"]["offset"]
    );
    late.close().await;

    // Nothing sent for longer than the TTL: nothing was missed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut quiet = resume(&hub, "g", "robot", &format!("since_group={now}")).await;
    let summary = next_message(&mut quiet).await;
    assert_eq!(summary["payload"]["group"]["recovered"], true);
    assert_eq!(summary["payload"]["group"]["missed"], 0);
}

#[tokio::test]
async fn a_malformed_position_is_a_400() {
    let hub = TestHub::start().await;
    for query in [
        "since_group=",
        "since_group=e:x",
        "since_client=e",
        "since_broadcast=e:-1",
        "since_group=b%20d:1",
    ] {
        let path = format!("/v3/ws/group/g/client/c?{query}");
        let (status, body) = hub.upgrade_status(&path, &[]).await;
        assert_eq!(status, 400, "{query}");
        assert!(
            body.contains("must be EPOCH:OFFSET or new"),
            "{query}: {body}"
        );
    }
}

#[tokio::test]
async fn with_history_off_nothing_is_numbered_and_resuming_says_so() {
    let hub = hub_with(0, Duration::from_secs(300)).await;
    let mut worker = hub.connect("g", "robot").await;
    let mut controller = hub.connect("g", "planner").await;
    controller.send(cmd(0)).await;
    let m = next_message(&mut worker).await;
    assert!(m.get("offset").is_none() && m.get("epoch").is_none(), "{m}");
    let body = json!({"msg_type": "cmd", "target": "group", "group_id": "g", "from_id": "svc"});
    let answer = hub.post("/v3/publish", &[], &body.to_string()).await;
    assert_eq!(answer.json(), json!({"status": "accepted"}));
    worker.close().await;

    let mut worker = resume(&hub, "g", "robot", "since_group=e:1").await;
    let summary = next_message(&mut worker).await;
    assert_eq!(
        summary["payload"],
        json!({"group": {"recovered": false, "missed": 0, "epoch": "", "offset": 0}})
    );
}

#[tokio::test]
async fn clients_cannot_send_offsets_epochs_or_recovery_messages() {
    let hub = TestHub::start().await;
    for frame in [
        json!({"msg_type": "msg", "target": "group", "offset": 1}),
        json!({"msg_type": "msg", "target": "group", "epoch": "e"}),
        json!({"msg_type": "recovery", "target": "echo"}),
    ] {
        let mut c = hub.connect("g", "c").await;
        c.send(frame.clone()).await;
        assert_eq!(c.recv_close().await.0, 4000, "{frame}");
    }
}

/// A controller sends without pause while a worker reconnects again and
/// again with its last position: across every replay and live stretch, it
/// sees each offset exactly once, in order (live messages that arrive
/// while the replay is read are not sent twice). Two worker threads, so
/// the controller's messages are routed while the worker joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_under_traffic_has_no_duplicate_and_no_gap() {
    let hub = hub_with(1000, Duration::from_secs(300)).await;
    let mut controller = hub.connect("g", "planner").await;
    let sender = tokio::spawn(async move {
        for n in 0..3000 {
            controller.send(cmd(n)).await;
            if n % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        controller
    });
    let mut next = 1u64;
    let mut since = "new".to_owned();
    for _ in 0..40 {
        let mut worker = resume(&hub, "g", "robot", &format!("since_group={since}")).await;
        for _ in 0..60 {
            let m = match worker.next_event(Duration::from_secs(5)).await {
                Some(Event::Text(m)) => m,
                other => panic!("{other:?}"),
            };
            match m["msg_type"].as_str() {
                Some("presence") => continue,
                Some("recovery") => {
                    let group = &m["payload"]["group"];
                    assert_eq!(group["recovered"], true, "{m}");
                    if since == "new" {
                        next = group["offset"].as_u64().unwrap() + 1;
                    }
                    // The replay ended exactly at the route's position.
                    assert_eq!(group["offset"], next - 1, "{m}");
                    continue;
                }
                _ => {}
            }
            assert_eq!(m["offset"], next, "after {since}");
            since = position(&m);
            next += 1;
        }
        drop(worker);
    }
    let _ = sender.await;
}

#[tokio::test]
async fn a_reconnect_storm_recovers_every_socket() {
    // 1,000 sockets resume at once while others keep talking.
    let hub = TestHub::start().await;
    reconnect_storm(&hub, &hub).await;
}
