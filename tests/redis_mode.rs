//! Many instances through one Redis (docs/protocol.md sections 3, 4 and 7):
//! real redis-server processes, at least two hubs, senders and receivers on
//! different instances. Redis itself is asked what the hubs did.

mod support;

use std::time::Duration;

use serde_json::json;
use support::redis::{numsub, pubsub_connections, smembers, RedisServer};
use support::{eventually, msg, TestHub};

const QUIET: Duration = Duration::from_millis(300);

async fn pair(redis: &RedisServer) -> (TestHub, TestHub) {
    (
        TestHub::on_redis(redis, |_| {}).await,
        TestHub::on_redis(redis, |_| {}).await,
    )
}

#[tokio::test]
async fn every_target_crosses_instances() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let mut alice = a.connect("g1", "alice").await;
    let mut alice_on_b = b.connect("g1", "alice").await;
    let mut bob = b.connect("g1", "bob").await;
    let mut carol = b.connect("g2", "carol").await;
    // alice sees bob join, across instances.
    assert_eq!(alice.recv().await["payload"]["client_id"], "bob");
    assert_eq!(alice_on_b.recv().await["payload"]["client_id"], "bob");

    alice
        .send(msg("direct", json!({"to_id": "carol", "msg": "d"})))
        .await;
    assert_eq!(carol.recv().await["msg"], "d");

    alice.send(msg("group", json!({"msg": "g"}))).await;
    let got = bob.recv().await;
    assert_eq!(
        (got["msg"].as_str(), got["group_id"].as_str()),
        (Some("g"), Some("g1"))
    );

    alice.send(msg("broadcast", json!({"msg": "b"}))).await;
    assert_eq!(bob.recv().await["msg"], "b");
    assert_eq!(carol.recv().await["msg"], "b");

    // The sender's own client never hears its group or broadcast messages,
    // on any instance; echo stays on the socket.
    alice.send(msg("echo", json!({"msg": "e"}))).await;
    assert_eq!(alice.recv().await["msg"], "e");
    alice_on_b.expect_silence(QUIET).await;
    bob.expect_silence(QUIET).await;

    // A service publishing through instance B reaches a socket on A.
    let body = json!({"msg_type": "cmd", "target": "direct", "from_id": "svc", "to_id": "alice", "cmd": "go"});
    assert_eq!(
        b.post("/v3/publish", &[], &body.to_string()).await.status,
        202
    );
    assert_eq!(alice.recv().await["cmd"], "go");
    assert_eq!(alice_on_b.recv().await["cmd"], "go");
}

#[tokio::test]
async fn order_holds_across_instances() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let mut sender = a.connect("g1", "alice").await;
    let mut receiver = b.connect("g1", "bob").await;
    let _ = sender.recv().await; // bob joined
    for i in 0..1000 {
        sender
            .send(msg("group", json!({"payload": {"seq": i}})))
            .await;
    }
    for i in 0..1000 {
        assert_eq!(receiver.recv().await["payload"]["seq"], i);
    }
}

#[tokio::test]
async fn a_message_published_right_after_the_upgrade_is_not_lost() {
    let redis = RedisServer::start();
    let hub = TestHub::on_redis(&redis, |_| {}).await;
    let mut conn = redis.client().await;
    for i in 0..20 {
        let group = format!("fresh{i}");
        let mut client = hub.connect(&group, "c").await;
        let text = json!({"version": "3", "msg_type": "msg", "target": "group", "from_id": "svc",
                          "group_id": group, "payload": {"i": i}});
        support::redis::publish(&mut conn, &format!("ws:group:{group}"), &text.to_string()).await;
        assert_eq!(client.recv().await["payload"]["i"], i);
    }
}

#[tokio::test]
async fn messages_published_straight_to_redis_arrive_unchanged_under_the_prefix() {
    let redis = RedisServer::start();
    let hub = TestHub::on_redis(&redis, |c| c.redis_prefix = "staging:".into()).await;
    let mut client = hub.connect("g1", "w1").await;
    let mut conn = redis.client().await;
    assert_eq!(numsub(&mut conn, "staging:ws:group:g1").await, 1);
    assert_eq!(numsub(&mut conn, "ws:group:g1").await, 0);
    // Exactly as written, extra spaces and field order included.
    let text =
        r#"{ "msg_type":"cmd", "target":"group", "from_id":"backend", "cmd":"x", "extra":true }"#;
    support::redis::publish(&mut conn, "staging:ws:group:g1", text).await;
    match client.ws_next_text().await {
        Some(got) => assert_eq!(got, text),
        None => panic!("nothing delivered"),
    }
    let members = smembers(&mut conn, "staging:ws:presence:group:g1").await;
    assert_eq!(members, vec!["w1"]);
}

#[tokio::test]
async fn one_pubsub_connection_per_instance_whatever_the_sockets() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let mut sockets = Vec::new();
    for i in 0..200 {
        sockets.push(a.connect(&format!("g{}", i % 40), &format!("a{i}")).await);
        sockets.push(
            b.connect(&format!("g{}", i % 40 + 20), &format!("b{i}"))
                .await,
        );
    }
    let mut conn = redis.client().await;
    assert_eq!(pubsub_connections(&mut conn).await, 2);
    // Groups 0..20 only on A, 40..60 only on B, 20..40 on both.
    assert_eq!(numsub(&mut conn, "ws:group:g5").await, 1);
    assert_eq!(numsub(&mut conn, "ws:group:g25").await, 2);
    assert_eq!(numsub(&mut conn, "ws:group:g45").await, 1);
    assert_eq!(numsub(&mut conn, "ws:broadcast").await, 2);
    // Every connection the hubs hold: one pub/sub and one command each.
    let all: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ours = all.lines().count() - 1; // minus this test's own
    assert_eq!(ours, 4, "{all}");
}

#[tokio::test]
async fn an_instance_is_subscribed_exactly_while_it_holds_a_socket() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let mut conn = redis.client().await;
    let on_a = a.connect("only-a", "x").await;
    let _on_b = b.connect("only-b", "y").await;
    assert_eq!(numsub(&mut conn, "ws:group:only-a").await, 1);
    assert_eq!(numsub(&mut conn, "ws:client:x").await, 1);
    assert_eq!(on_a.close().await, 1000);
    let mut c = redis.client().await;
    eventually("only-a unsubscribed", || {
        let mut c = c.clone();
        async move { numsub(&mut c, "ws:group:only-a").await == 0 }
    })
    .await;
    assert_eq!(numsub(&mut c, "ws:client:x").await, 0);
    assert_eq!(numsub(&mut c, "ws:group:only-b").await, 1);
}

#[tokio::test]
async fn subscriptions_settle_right_after_a_storm_of_joins_and_leaves() {
    let redis = RedisServer::start();
    let hub = TestHub::on_redis(&redis, |_| {}).await;
    const GROUPS: usize = 12;
    const WORKERS: usize = 4;
    const OPS: usize = 250; // per worker: 1,000 joins and leaves in all
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let url = format!("ws://{}", hub.addr);
        tasks.push(tokio::spawn(async move {
            let mut held: Vec<(usize, support::Client)> = Vec::new();
            let mut seed = 0x9e37_79b9_u64 ^ (w as u64 * 7919);
            for op in 0..OPS {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let leave = !held.is_empty() && seed.is_multiple_of(3);
                if leave {
                    let (_, client) = held.swap_remove((seed as usize / 3) % held.len());
                    drop(client); // abrupt: no close handshake
                } else {
                    let group = (seed as usize >> 8) % GROUPS;
                    let path = format!("{url}/v3/ws/group/s{group}/client/w{w}o{op}");
                    let client = support::Client::connect(&path, &[]).await.expect("connect");
                    held.push((group, client));
                }
            }
            held
        }));
    }
    let mut still_held = Vec::new();
    for t in tasks {
        still_held.extend(t.await.unwrap());
    }
    let wanted: std::collections::HashSet<usize> = still_held.iter().map(|(g, _)| *g).collect();
    let conn = redis.client().await;
    eventually("NUMSUB matches the sockets held", || {
        let mut conn = conn.clone();
        let wanted = wanted.clone();
        async move {
            for g in 0..GROUPS {
                let expected = i64::from(wanted.contains(&g));
                if numsub(&mut conn, &format!("ws:group:s{g}")).await != expected {
                    return false;
                }
            }
            true
        }
    })
    .await;
    // Now everyone leaves: nothing stays subscribed but nothing else.
    drop(still_held);
    eventually("every storm channel unsubscribed", || {
        let mut conn = conn.clone();
        async move {
            for g in 0..GROUPS {
                if numsub(&mut conn, &format!("ws:group:s{g}")).await != 0 {
                    return false;
                }
            }
            numsub(&mut conn, "ws:broadcast").await == 0
        }
    })
    .await;
}

#[tokio::test]
async fn presence_is_shared_and_counts_sockets_on_every_instance() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let mut watcher = a.connect("g1", "watcher").await;
    let amy_a = a.connect("g1", "amy").await;
    assert_eq!(
        watcher.recv().await["payload"],
        json!({"event": "join", "client_id": "amy"})
    );
    let amy_b = b.connect("g1", "amy").await;
    watcher.expect_silence(QUIET).await; // already online

    let mut conn = redis.client().await;
    assert_eq!(
        smembers(&mut conn, "ws:presence:group:g1").await,
        vec!["amy", "watcher"]
    );
    let over_http = b.get("/v3/groups/g1/presence").await.json();
    assert_eq!(over_http["members"], json!(["amy", "watcher"]));

    assert_eq!(amy_a.close().await, 1000);
    watcher.expect_silence(QUIET).await; // still online on B
    assert_eq!(
        smembers(&mut conn, "ws:presence:group:g1").await,
        vec!["amy", "watcher"]
    );
    assert_eq!(amy_b.close().await, 1000);
    assert_eq!(
        watcher.recv().await["payload"],
        json!({"event": "leave", "client_id": "amy"})
    );
    assert_eq!(
        smembers(&mut conn, "ws:presence:group:g1").await,
        vec!["watcher"]
    );
}

/// Redis restarts empty: every instance records its clients again, and
/// nobody is told they left or joined, since nobody was ever told they
/// were gone. (A hub the others swept out during a long partition does
/// announce its clients' joins on its return: `tests/netfaults.rs`.)
#[tokio::test]
async fn a_redis_restart_rebuilds_presence_without_telling_anyone() {
    let mut redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let mut watcher = b.connect("g1", "watcher").await;
    let _amy = a.connect("g1", "amy").await;
    assert_eq!(
        watcher.recv().await["payload"],
        json!({"event": "join", "client_id": "amy"})
    );

    redis.kill();
    a.wait_ready(503).await;
    redis.restart();
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    let conn = redis.client().await;
    eventually("presence rebuilt", || {
        let mut conn = conn.clone();
        async move { smembers(&mut conn, "ws:presence:group:g1").await == ["amy", "watcher"] }
    })
    .await;
    watcher.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_redis_restart_mid_traffic_keeps_every_socket_and_traffic_resumes() {
    let mut redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let alice = a.connect("g1", "alice").await;
    let mut bob = b.connect("g1", "bob").await;

    // alice sends every 10 ms throughout, from before the crash until
    // after the restart; her socket must survive all of it.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let sender = tokio::spawn(async move {
        let mut alice = alice;
        loop {
            let seq = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            alice
                .send(msg("group", json!({"payload": {"seq": seq}})))
                .await;
            tokio::select! {
                _ = &mut stopped => return alice,
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    });
    let first = bob.recv().await; // traffic flows before the crash
    assert!(first["payload"]["seq"].is_u64() || first["msg_type"] == "presence");

    redis.kill();
    a.wait_ready(503).await;
    b.wait_ready(503).await;
    // During the outage: publishing fails fast, upgrades and presence
    // queries are refused, and nobody is disconnected.
    let refused = b
        .post(
            "/v3/publish",
            &[],
            &json!({"msg_type": "msg", "target": "broadcast", "from_id": "svc"}).to_string(),
        )
        .await;
    assert_eq!(refused.status, 503);
    let (status, _) = a.upgrade_status("/v3/ws/group/g1/client/late", &[]).await;
    assert_eq!(status, 503);
    assert_eq!(b.get("/v3/groups/g1/presence").await.status, 503);
    eventually("a dropped publish is counted", || async {
        a.metric(r#"aether_messages_dropped_total{reason="broker_unavailable"}"#)
            .await
            >= 1.0
    })
    .await;

    redis.restart();
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    // Messages sent after the restart reach bob: same sockets both ends.
    let mark = sent.load(std::sync::atomic::Ordering::SeqCst);
    loop {
        let got = bob.recv().await;
        if got["payload"]["seq"].as_u64().is_some_and(|seq| seq > mark) {
            break;
        }
    }
    let _ = stop.send(());
    let mut alice = sender.await.unwrap();
    alice.send(msg("echo", json!({"msg": "still open"}))).await;
    while alice.recv().await["msg"] != "still open" {} // past bob's join event

    let conn = redis.client().await;
    eventually("presence rebuilt", || {
        let mut conn = conn.clone();
        async move { smembers(&mut conn, "ws:presence:group:g1").await == ["alice", "bob"] }
    })
    .await;
    assert!(a.metric("aether_redis_reconnects_total").await >= 1.0);
}

#[tokio::test]
async fn a_silent_redis_is_detected_by_the_probe_and_the_hub_recovers() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let mut alice = a.connect("g1", "alice").await;
    let mut bob = b.connect("g1", "bob").await;
    let _ = alice.recv().await;

    redis.pause(); // TCP stays up, nothing answers
    a.wait_ready(503).await;
    redis.resume();
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    alice.send(msg("group", json!({"msg": "back"}))).await;
    assert_eq!(bob.recv().await["msg"], "back");
}

#[tokio::test]
async fn a_hub_starts_without_redis_and_becomes_ready_when_it_appears() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let hub = TestHub::with(|c| c.redis_url = Some(url)).await;
    assert_eq!(hub.get("/healthz").await.status, 200);
    assert_eq!(hub.get("/readyz").await.status, 503);
    assert_eq!(
        hub.upgrade_status("/v3/ws/group/g/client/c", &[]).await.0,
        503
    );
    redis.restart();
    hub.wait_ready(200).await;
    let mut c = hub.connect("g", "c").await;
    c.send(msg("echo", json!({"msg": "up"}))).await;
    assert_eq!(c.recv().await["msg"], "up");
}

/// The real binary, for kills and signals.
mod processes {
    use super::*;
    use support::process::{signal, spawn_hub, wait_exit};
    use support::Client;

    #[tokio::test]
    async fn a_killed_instance_leaves_presence_within_the_ttl_and_the_others_stay() {
        let redis = RedisServer::start();
        let url = redis.url();
        let env = [
            ("AETHER_REDIS_URL", url.as_str()),
            ("AETHER_PRESENCE_TTL_SECS", "2"),
        ];
        let doomed = spawn_hub(&env).await;
        let survivor = spawn_hub(&env).await;
        let mut watcher = Client::connect(&survivor.ws_url("g1", "watcher"), &[])
            .await
            .unwrap();
        let _shared_s = Client::connect(&survivor.ws_url("g1", "shared"), &[])
            .await
            .unwrap();
        let _victim = Client::connect(&doomed.ws_url("g1", "victim"), &[])
            .await
            .unwrap();
        let _shared_d = Client::connect(&doomed.ws_url("g1", "shared"), &[])
            .await
            .unwrap();
        let mut conn = redis.client().await;
        assert_eq!(
            smembers(&mut conn, "ws:presence:group:g1").await,
            vec!["shared", "victim", "watcher"]
        );
        let _ = (watcher.recv().await, watcher.recv().await); // shared, victim joined

        signal(&doomed.child, libc::SIGKILL);
        // The survivor sweeps the dead instance once its record expires.
        let leave = watcher.recv().await;
        assert_eq!(
            leave["payload"],
            json!({"event": "leave", "client_id": "victim"})
        );
        assert_eq!(
            smembers(&mut conn, "ws:presence:group:g1").await,
            vec!["shared", "watcher"],
            "the survivor's clients stay, including one the dead instance also held"
        );
        watcher.expect_silence(QUIET).await;
    }

    #[tokio::test]
    async fn graceful_shutdown_removes_the_instance_from_presence() {
        let redis = RedisServer::start();
        let url = redis.url();
        let mut hub = spawn_hub(&[("AETHER_REDIS_URL", url.as_str())]).await;
        let mut a = Client::connect(&hub.ws_url("g1", "a"), &[]).await.unwrap();
        let mut b = Client::connect(&hub.ws_url("g2", "b"), &[]).await.unwrap();
        let mut conn = redis.client().await;
        assert_eq!(smembers(&mut conn, "ws:presence:group:g1").await, vec!["a"]);

        signal(&hub.child, libc::SIGTERM);
        assert_eq!(a.recv_close().await.0, 1001);
        assert_eq!(b.recv_close().await.0, 1001);
        let status = wait_exit(&mut hub.child, Duration::from_secs(10));
        assert_eq!(status.code(), Some(0));
        assert!(smembers(&mut conn, "ws:presence:group:g1").await.is_empty());
        assert!(smembers(&mut conn, "ws:presence:group:g2").await.is_empty());
        assert!(smembers(&mut conn, "ws:presence:instances")
            .await
            .is_empty());
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(keys.is_empty(), "left behind: {keys:?}");
    }
}
