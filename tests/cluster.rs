//! Many instances through a real Redis Cluster (docs/protocol.md section 7):
//! six redis-server processes (three masters, three replicas) shared by
//! the tests of this binary, two or three hubs with `AETHER_REDIS_CLUSTER`,
//! and Redis itself asked what the hubs did: which connections each master
//! holds, which sharded channels it has, where messages went. Each test
//! uses group and client ids of its own, so they can share the cluster;
//! the tests that kill or move something put the cluster back (the
//! harness waits for it to settle).

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aether_hub::broker::Slot;
use rand::Rng;
use serde_json::json;
use support::acks::{collect_acks, group_cmd, next_ack, send_acked};
use support::blip::{self, assert_nothing_lost};
use support::cluster::{key_slot, Cluster};
use support::history::{next_message, offset, reconnect_storm, replay_skips_own_messages};
use support::redis::kill_named_when_open;
use support::{eventually, msg, Client, TestHub, TIMEOUT};

const QUIET: Duration = Duration::from_millis(300);

/// One cluster test at a time: they share the cluster, and some of them
/// count connections or move slots.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn hub(cluster: &Cluster) -> TestHub {
    named_hub(cluster, None).await
}

/// A hub whose connections are named after `instance` (`CLIENT LIST`).
async fn named_hub(cluster: &Cluster, instance: Option<&str>) -> TestHub {
    let seeds = cluster.seeds();
    let hub = TestHub::with(|c| {
        c.redis_cluster = seeds.split(',').map(str::to_owned).collect();
        c.redis_prefix = "t:".into();
        if let Some(instance) = instance {
            c.instance_id = instance.to_owned();
        }
    })
    .await;
    hub.wait_ready(200).await;
    hub
}

fn group_channel(group: &str) -> String {
    format!("t:ws:group:{group}")
}

fn client_channel(client: &str) -> String {
    format!("t:ws:client:{client}")
}

/// `CLIENT LIST TYPE pubsub` on one node: its pub/sub connections.
async fn pubsub_clients(cluster: &Cluster, port: u16) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut cluster.client(port).await)
        .await
        .expect("CLIENT LIST");
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

/// Asserts that nothing but presence events arrives within `wait`.
async fn no_message_within(client: &mut Client, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(left).await {
            None => return,
            Some(support::Event::Text(m)) if m["msg_type"] == "presence" => continue,
            Some(other) => panic!("expected no message, got {other:?}"),
        }
    }
}

/// The hub's slot of a name is `CLUSTER KEYSLOT`'s, hash tags included.
#[tokio::test]
async fn slots_are_those_redis_computes() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let mut rng = rand::rng();
    for n in 0..300 {
        let len = rng.random_range(0..24);
        let mut name: String = (0..len)
            .map(|_| char::from(rng.random_range(b' '..=b'~')))
            .collect();
        if n % 3 == 0 {
            name = format!("a{{{name}}}b");
        }
        assert_eq!(
            Slot::of(&name).get(),
            cluster.slot_of(&name).await,
            "slot of {name:?}"
        );
    }
}

#[tokio::test]
async fn every_target_crosses_instances_on_a_cluster() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let (a, b) = (hub(cluster).await, hub(cluster).await);
    let mut alice = a.connect("xg1", "xalice").await;
    let mut bob = b.connect("xg1", "xbob").await;
    let mut carol = b.connect("xg2", "xcarol").await;
    assert_eq!(alice.recv().await["payload"]["client_id"], "xbob");

    alice
        .send(msg("direct", json!({"to_id": "xcarol", "msg": "d"})))
        .await;
    assert_eq!(next_message(&mut carol).await["msg"], "d");
    alice.send(msg("group", json!({"msg": "g"}))).await;
    assert_eq!(next_message(&mut bob).await["msg"], "g");
    alice.send(msg("broadcast", json!({"msg": "b"}))).await;
    assert_eq!(next_message(&mut bob).await["msg"], "b");
    assert_eq!(next_message(&mut carol).await["msg"], "b");
    // The sender hears neither its group nor its broadcast message.
    no_message_within(&mut alice, QUIET).await;

    let body = json!({"msg_type": "cmd", "target": "direct", "from_id": "svc", "to_id": "xalice", "cmd": "go"});
    let answer = b.post("/v3/publish", &[], &body.to_string()).await;
    assert_eq!(answer.status, 202);
    assert_eq!(next_message(&mut alice).await["cmd"], "go");
}

#[tokio::test]
async fn order_holds_over_a_thousand_messages_on_a_cluster() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let (a, b) = (hub(cluster).await, hub(cluster).await);
    let mut sender = a.connect("og1", "oalice").await;
    let mut receiver = b.connect("og1", "obob").await;
    let mut direct = b.connect("og2", "ocarol").await;
    let _ = sender.recv().await; // obob joined
    for i in 0..1000 {
        sender
            .send(msg("group", json!({"payload": {"seq": i}})))
            .await;
        sender
            .send(msg(
                "direct",
                json!({"to_id": "ocarol", "payload": {"seq": i}}),
            ))
            .await;
    }
    for i in 0..1000 {
        let got = next_message(&mut receiver).await;
        assert_eq!(got["payload"]["seq"], i);
        assert_eq!(offset(&got), u64::try_from(i).unwrap_or(0) + 1);
        assert_eq!(next_message(&mut direct).await["payload"]["seq"], i);
    }
}

/// Waits until no master holds a pub/sub connection (earlier tests' hubs
/// are gone).
async fn no_pubsub_left(cluster: &Cluster) {
    let masters = cluster.masters().await;
    eventually("no pub/sub connection is left from earlier tests", || {
        let masters = masters.clone();
        async move {
            for m in masters {
                if pubsub_clients(cluster, m).await != 0 {
                    return false;
                }
            }
            true
        }
    })
    .await;
}

/// Each master's pub/sub connections, in [`Cluster::masters`] order.
async fn pubsub_per_master(cluster: &Cluster) -> Vec<usize> {
    let mut counts = Vec::new();
    for m in cluster.masters().await {
        counts.push(pubsub_clients(cluster, m).await);
    }
    counts
}

async fn expect_pubsub(cluster: &Cluster, want: &[usize]) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        seen = pubsub_per_master(cluster).await;
        if seen == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("pub/sub connections per master: {seen:?}, wanted {want:?}");
}

#[tokio::test]
async fn one_connection_per_needed_master_and_none_elsewhere() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    no_pubsub_left(cluster).await;
    let masters = cluster.masters().await;
    // Every socket needs the broadcast channel's master: "home".
    let broadcast = cluster.master_of_key("t:ws:broadcast").await;
    let home = masters
        .iter()
        .position(|&m| m == broadcast)
        .expect("a master owns the broadcast channel");
    let away = (home + 1) % masters.len();
    let g_home = cluster.id_on_master(home, "chg", group_channel).await;
    let g_away = cluster.id_on_master(away, "cag", group_channel).await;
    let c1 = cluster.id_on_master(home, "chc", client_channel).await;
    let c2 = cluster.id_on_master(home, "chd", client_channel).await;

    // Every hub also listens on the control channel (operators' actions,
    // docs/protocol.md section 11), on whichever master holds it.
    let control_master = cluster.master_of_key("t:ws:control").await;
    let control = masters
        .iter()
        .position(|&m| m == control_master)
        .expect("a master owns the control channel");
    // Connections per master when each hub needs the masters listed.
    let want_of = |hubs: &[&[usize]]| {
        let mut want = vec![0; masters.len()];
        for needs in hubs {
            let mut needs = needs.to_vec();
            needs.push(control);
            needs.sort_unstable();
            needs.dedup();
            for m in needs {
                want[m] += 1;
            }
        }
        want
    };

    let a = hub(cluster).await;
    // Many sockets, one master: one connection (and the control's).
    let mut sockets = Vec::new();
    for _ in 0..5 {
        sockets.push(a.connect(&g_home, &c1).await);
    }
    expect_pubsub(cluster, &want_of(&[&[home]])).await;

    let b = hub(cluster).await;
    let _on_b = b.connect(&g_home, &c2).await;
    expect_pubsub(cluster, &want_of(&[&[home], &[home]])).await;

    // A group on another master: one more connection, from `a` only.
    let away_socket = a.connect(&g_away, &c1).await;
    expect_pubsub(cluster, &want_of(&[&[home, away], &[home]])).await;
    assert_eq!(
        cluster
            .shard_numsub(masters[away], &group_channel(&g_away))
            .await,
        1
    );
    // Its last socket gone, the master is no longer needed (unless it
    // holds the control channel).
    away_socket.close().await;
    expect_pubsub(cluster, &want_of(&[&[home], &[home]])).await;
    assert_eq!(
        a.metric(&format!(
            "aether_redis_shard_up{{shard=\"127.0.0.1:{}\"}}",
            masters[home]
        ))
        .await,
        1.0
    );
}

/// Random joins and leaves over two hubs; then every sharded channel's
/// `PUBSUB SHARDNUMSUB`, on its master, is the number of hubs with a
/// socket on it.
#[tokio::test]
async fn shard_numsub_follows_the_refcount_after_a_storm() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let hubs = [hub(cluster).await, hub(cluster).await];
    let groups: Vec<String> = (0..12).map(|n| format!("sg{n}")).collect();
    // (hub, group, client) of each open socket.
    let mut open: Vec<(usize, usize, String, Client)> = Vec::new();
    let mut rng = rand::rng();
    for n in 0..1000 {
        let (h, g) = (rng.random_range(0..2), rng.random_range(0..groups.len()));
        if let Some(i) = open.iter().position(|s| s.0 == h && s.1 == g) {
            if rng.random_bool(0.6) {
                open.swap_remove(i).3.close().await;
                continue;
            }
        }
        let client = format!("sc{n}");
        let socket = hubs[h].connect(&groups[g], &client).await;
        open.push((h, g, client, socket));
    }
    let live: HashSet<String> = open.iter().map(|s| s.2.clone()).collect();
    for (g, group) in groups.iter().enumerate() {
        let holders = (0..2)
            .filter(|h| open.iter().any(|s| s.0 == *h && s.1 == g))
            .count() as i64;
        let channel = group_channel(group);
        let master = cluster.master_of_key(&channel).await;
        eventually(&format!("SHARDNUMSUB {channel} = {holders}"), || {
            let channel = channel.clone();
            async move { cluster.shard_numsub(master, &channel).await == holders }
        })
        .await;
    }
    for n in (0..1000).step_by(37) {
        let client = format!("sc{n}");
        let want = i64::from(live.contains(&client));
        let channel = client_channel(&client);
        let master = cluster.master_of_key(&channel).await;
        eventually(&format!("SHARDNUMSUB {channel} = {want}"), || {
            let channel = channel.clone();
            async move { cluster.shard_numsub(master, &channel).await == want }
        })
        .await;
    }
}

/// `CLUSTER INFO`'s counter of one cluster-bus message type on one node.
async fn bus(cluster: &Cluster, port: u16, field: &str) -> u64 {
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut cluster.client(port).await)
        .await
        .expect("CLUSTER INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:"))?.trim().parse().ok())
        .unwrap_or(0)
}

/// A group's messages go to its master and from there to its replica
/// only: no classic PUBLISH crosses the cluster bus, no other master
/// lists the channel or runs the script.
#[tokio::test]
async fn a_channel_s_messages_reach_only_its_shard() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let (a, b) = (hub(cluster).await, hub(cluster).await);
    let group = "onlyg";
    let channel = group_channel(group);
    let owner = cluster.master_of_key(&channel).await;
    let mut sender = a.connect(group, "onlya").await;
    let mut receiver = b.connect(group, "onlyb").await;
    let _ = sender.recv().await; // onlyb joined
    let ports = cluster.ports();
    let replica_of_owner = cluster
        .replicas()
        .await
        .into_iter()
        .find(|(_, m)| *m == owner)
        .map(|(r, _)| r);
    let mut before = Vec::new();
    for &p in &ports {
        before.push((
            bus(cluster, p, "cluster_stats_messages_publish_sent").await,
            bus(cluster, p, "cluster_stats_messages_publishshard_received").await,
        ));
    }
    for i in 0..50 {
        sender
            .send(msg("group", json!({"payload": {"seq": i}})))
            .await;
    }
    for i in 0..50 {
        assert_eq!(next_message(&mut receiver).await["payload"]["seq"], i);
    }
    for (i, &p) in ports.iter().enumerate() {
        let published = bus(cluster, p, "cluster_stats_messages_publish_sent").await;
        assert_eq!(
            published, before[i].0,
            "classic PUBLISH on the bus from {p}"
        );
        let sharded = bus(cluster, p, "cluster_stats_messages_publishshard_received").await;
        if Some(p) == replica_of_owner {
            assert!(sharded >= before[i].1 + 50, "the owner's replica got them");
        } else {
            assert_eq!(sharded, before[i].1, "node {p} got shard messages");
        }
    }
    for m in cluster.masters().await {
        let listed = cluster.shard_channels(m).await.contains(&channel);
        assert_eq!(listed, m == owner, "SHARDCHANNELS on {m}");
    }
    // Broadcast is a sharded channel too: nothing on the bus but to the
    // broadcast shard's replica.
    let mut before = Vec::new();
    for &p in &ports {
        before.push(bus(cluster, p, "cluster_stats_messages_publish_sent").await);
    }
    for i in 0..20 {
        sender
            .send(msg("broadcast", json!({"payload": {"seq": i}})))
            .await;
    }
    for i in 0..20 {
        assert_eq!(next_message(&mut receiver).await["payload"]["seq"], i);
    }
    for (i, &p) in ports.iter().enumerate() {
        let published = bus(cluster, p, "cluster_stats_messages_publish_sent").await;
        assert_eq!(published, before[i], "classic PUBLISH on the bus from {p}");
    }
}

/// `HGET {channel}:position n` on the master of the channel's slot: the
/// route's last offset.
async fn last_offset(cluster: &Cluster, channel: &str) -> u64 {
    let master = cluster.master_of_key(channel).await;
    let n: Option<u64> = redis::cmd("HGET")
        .arg(format!("{{{channel}}}:position"))
        .arg("n")
        .query_async(&mut cluster.client(master).await)
        .await
        .expect("HGET position");
    n.unwrap_or(0)
}

/// Receives group messages until the one numbered `last`; asserts that
/// offsets run 1, 2, 3, … with none missing or twice, and that the
/// senders' sequence numbers only go up.
async fn receive_all_kept(receiver: &mut Client, last: u64) {
    let mut expected = 1;
    let mut seq = -1;
    while expected <= last {
        let got = receiver.recv().await;
        if got["msg_type"] == "presence" {
            continue;
        }
        assert_eq!(
            offset(&got),
            expected,
            "kept messages in order, none lost: {got}"
        );
        let s = got["payload"]["seq"].as_i64().unwrap_or(-1);
        assert!(s > seq, "sender order: {s} after {seq}");
        seq = s;
        expected += 1;
    }
}

/// A live `SETSLOT … NODE` migration of a group's slot while its sender
/// keeps sending: the receiving socket stays open, gets every kept message
/// in order (gaps repaired from history), and the new owner has both hubs'
/// subscriptions.
#[tokio::test]
async fn a_group_follows_its_slot_to_another_master_under_traffic() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let (a, b) = (hub(cluster).await, hub(cluster).await);
    let group = "migrating";
    let channel = group_channel(group);
    let slot = key_slot(&channel);
    let from = cluster.master_of_slot(slot).await;
    let to = cluster.other_master(from).await;
    let mut sender = a.connect(group, "msender").await;
    let mut receiver = b.connect(group, "mreceiver").await;
    let _ = sender.recv().await; // mreceiver joined
    let traffic = tokio::spawn(async move {
        for i in 0..400 {
            sender
                .send(msg("group", json!({"payload": {"seq": i}})))
                .await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sender
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.migrate_slot(slot, from, to).await;
    let sender = traffic.await.expect("the sender ran");
    tokio::time::sleep(QUIET).await;
    let last = last_offset(cluster, &channel).await;
    assert!(last >= 300, "most messages were kept: {last}");
    receive_all_kept(&mut receiver, last).await;
    eventually("both hubs subscribed on the new owner", || async {
        cluster.shard_numsub(to, &channel).await == 2
            && cluster.shard_numsub(from, &channel).await == 0
    })
    .await;
    assert!(
        b.metric(&format!(
            "aether_redis_shard_reconnects_total{{shard=\"127.0.0.1:{from}\"}}"
        ))
        .await
            >= 1.0,
        "the old owner's connection was rebuilt"
    );
    // Nothing was dropped: both sockets still work.
    drop(sender);
    let mut again = a.connect(group, "mlate").await;
    let _ = receiver.recv().await; // mlate joined
    again
        .send(msg("group", json!({"payload": {"seq": 1000}})))
        .await;
    assert_eq!(next_message(&mut receiver).await["payload"]["seq"], 1000);
}

/// kill -9 of the master that owns a group while a service publishes to
/// it: the replica takes over, `/readyz` goes 503 and back to 200, the
/// receiving socket stays open, and every message the hub accepted (202
/// with an offset) arrives, in order, once. A message the dying master ran
/// but never answered for was answered 503 "may have been published", and
/// may arrive too, in its place.
#[tokio::test]
async fn a_killed_master_s_replica_takes_over_without_losing_kept_messages() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let (a, b) = (hub(cluster).await, hub(cluster).await);
    let group = "failing";
    let channel = group_channel(group);
    let slot = key_slot(&channel);
    let mut receiver = b.connect(group, "freceiver").await;
    let dead = cluster.master_of_slot(slot).await;
    let publisher = a.addr;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let tried = Arc::new(AtomicUsize::new(0));
    let tries = Arc::clone(&tried);
    let traffic = tokio::spawn(async move {
        // Answered 202, and answered 503 "may have been published" (the
        // master died with the message on its way: it may have run it).
        let (mut accepted, mut unconfirmed) = (Vec::new(), HashSet::new());
        for i in 0..3000 {
            if *stopped.borrow_and_update() {
                break;
            }
            tries.store(i, Ordering::SeqCst);
            let body = json!({"msg_type": "cmd", "target": "group", "group_id": group,
                "from_id": "fservice", "payload": {"seq": i}});
            let answer =
                support::http_request(publisher, "POST", "/v3/publish", &[], &body.to_string())
                    .await;
            match answer.status {
                202 => accepted.push(i),
                503 if answer.body.contains("may have been published") => {
                    unconfirmed.insert(i);
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (accepted, unconfirmed)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_kill = tried.load(Ordering::SeqCst);
    cluster.kill_node(dead);
    b.wait_ready(503).await;
    let promoted = cluster.wait_for_failover(dead, slot).await;
    b.wait_ready(200).await;
    // Publishing works again (the publisher's slot map follows too).
    let before = last_offset(cluster, &channel).await;
    eventually("publishing resumed on the new master", || async {
        last_offset(cluster, &channel).await >= before + 20
    })
    .await;
    let _ = stop.send(true);
    let (accepted, unconfirmed) = traffic.await.expect("the publisher ran");
    let after_kill = accepted.iter().filter(|&&i| i > at_kill).count();
    assert!(
        accepted.len() > after_kill && after_kill >= 20,
        "messages accepted before the kill and after the failover: {accepted:?}, killed at {at_kill}"
    );
    // Every accepted message, in order, once; besides them, only messages
    // whose publish was not confirmed.
    let mut seen = None;
    for want in &accepted {
        loop {
            let got = next_message(&mut receiver).await;
            let seq = got["payload"]["seq"].as_u64().expect("a seq") as usize;
            assert!(seen < Some(seq), "in order, once: {got} after {seen:?}");
            seen = Some(seq);
            if seq == *want {
                break;
            }
            assert!(
                unconfirmed.contains(&seq),
                "{want} next, or an unconfirmed message: {got}"
            );
        }
    }
    assert_eq!(cluster.master_of_slot(slot).await, promoted);
    assert_eq!(cluster.shard_numsub(promoted, &channel).await, 1);
    assert!(
        b.metric(&format!(
            "aether_redis_shard_reconnects_total{{shard=\"127.0.0.1:{dead}\"}}"
        ))
        .await
            >= 1.0
    );
    cluster.restart_node(dead).await;
}

/// `CLUSTER FAILOVER` on a replica: the old master is demoted while the
/// hub's connection to it stays open; the hub notices (the demoted node
/// unsubscribes the channels) and follows, with no message lost.
#[tokio::test]
async fn a_graceful_failover_is_followed() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let (a, b) = (hub(cluster).await, hub(cluster).await);
    let group = "handover";
    let channel = group_channel(group);
    let old = cluster.master_of_key(&channel).await;
    let replica = cluster
        .replicas()
        .await
        .into_iter()
        .find(|(_, m)| *m == old)
        .map(|(r, _)| r)
        .expect("the master has a replica");
    let mut sender = a.connect(group, "hsender").await;
    let mut receiver = b.connect(group, "hreceiver").await;
    let _ = sender.recv().await; // hreceiver joined
    for i in 0..20 {
        sender
            .send(msg("group", json!({"payload": {"seq": i}})))
            .await;
    }
    cluster.failover(replica).await;
    for i in 20..40 {
        sender
            .send(msg("group", json!({"payload": {"seq": i}})))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("both hubs subscribed on the promoted replica", || async {
        cluster.shard_numsub(replica, &channel).await == 2
    })
    .await;
    let last = last_offset(cluster, &channel).await;
    receive_all_kept(&mut receiver, last).await;
    assert!(last >= 30, "most were kept: {last}");
    sender
        .send(msg("group", json!({"payload": {"seq": 99}})))
        .await;
    assert_eq!(next_message(&mut receiver).await["payload"]["seq"], 99);
}

/// Recovery across instances, as on one Redis: the history read goes to
/// the master of the route's slot.
#[tokio::test]
async fn a_replay_across_instances_skips_the_clients_own_messages_on_a_cluster() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let (a, b) = (hub(cluster).await, hub(cluster).await);
    replay_skips_own_messages(&a, &b).await;
}

/// A thousand sockets, each in a group of its own (channels on every
/// master), resume at once on one instance.
#[tokio::test]
async fn a_reconnect_storm_across_instances_recovers_every_socket_on_a_cluster() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let (a, b) = (hub(cluster).await, hub(cluster).await);
    reconnect_storm(&a, &b).await;
}

/// Acknowledgements on a cluster (docs/protocol.md section 10): `ok` with
/// each message's place, `unconfirmed` when the route's master freezes
/// with the message on its way, `failed` while the master is gone and no
/// replica has taken over, `ok` again after the failover.
#[tokio::test]
async fn acks_tell_every_fate_on_a_cluster() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let (a, b) = (hub(cluster).await, hub(cluster).await);
    let group = "acked";
    let slot = key_slot(&group_channel(group));
    let mut ctl = a.connect(group, "actl").await;
    let mut worker = b.connect(group, "aworker").await;
    let n = 200u64;
    for i in 1..=n {
        ctl.send(group_cmd(i, &format!("k{i}"))).await;
    }
    let (acks, _) = collect_acks(&mut ctl, n as usize).await;
    let ids: Vec<String> = acks.iter().map(|a| a["ack_id"].to_string()).collect();
    let want: Vec<String> = (1..=n).map(|i| format!("\"k{i}\"")).collect();
    assert_eq!(ids, want, "each acked once, in order");
    assert!(acks.iter().all(|a| a["status"] == "ok"), "{acks:?}");
    let offsets: Vec<u64> = acks.iter().filter_map(|a| a["offset"].as_u64()).collect();
    assert_eq!(offsets.len() as u64, n);
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
    for i in 1..=n {
        let got = next_message(&mut worker).await;
        assert_eq!(got["cmd"], format!("c{i}"));
        assert_eq!(offset(&got), offsets[i as usize - 1]);
    }

    // Frozen: sent, never answered. (No failover meanwhile: the node
    // timeout is raised for the while.)
    let master = cluster.master_of_slot(slot).await;
    cluster.set_node_timeout(15_000).await;
    cluster.freeze_node(master, true);
    ctl.send(group_cmd(0, "frozen")).await;
    let frozen = next_ack(&mut ctl).await;
    cluster.freeze_node(master, false);
    cluster.set_node_timeout(1_000).await;
    assert_eq!(frozen, json!({"ack_id": "frozen", "status": "unconfirmed"}));

    // Gone: what cannot be handed to a master fails. The first frames
    // may still be written to the dead connection (unconfirmed).
    cluster.kill_node(master);
    let mut statuses = Vec::new();
    for i in 0..50 {
        let ack = send_acked(&mut ctl, group_cmd(0, &format!("gone{i}"))).await;
        statuses.push(ack["status"].as_str().unwrap_or("").to_owned());
        if ack["status"] == "failed" {
            assert_eq!(ack["reason"], "unavailable");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("failed"),
        "{statuses:?}"
    );
    assert!(statuses.iter().all(|s| s != "ok"), "{statuses:?}");
    cluster.wait_for_failover(master, slot).await;
    let mut back = false;
    for i in 0..100 {
        let ack = send_acked(&mut ctl, group_cmd(0, &format!("back{i}"))).await;
        if ack["status"] == "ok" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "acks ok again after the failover");
    cluster.restart_node(master).await;
}

/// One shard's pub/sub connection killed three times under acknowledged
/// traffic: publishing never stops (every ack `ok`), and every worker, on
/// either instance, gets every cmd once and in order.
#[tokio::test]
async fn a_shard_pubsub_blip_drops_nothing_and_every_ack_is_ok() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let front = named_hub(cluster, Some("cfront")).await;
    let back = named_hub(cluster, Some("cback")).await;
    let group = "cblip";
    let master = cluster
        .master_of_slot(key_slot(&group_channel(group)))
        .await;
    let conn = cluster.client(master).await;
    let dropped = "aether_messages_dropped_total{reason=\"broker_unavailable\"}";
    let before = front.metric(dropped).await;
    let pubsub = "aether:cfront:pubsub";
    let run = blip::run(&front, &back, group, || {
        kill_named_when_open(conn.clone(), pubsub)
    })
    .await;
    assert_nothing_lost(&run);
    assert_eq!(front.metric(dropped).await, before, "nothing dropped");
}
