//! Presence on a real Redis Cluster (docs/protocol.md sections 4 and 7): six
//! redis-server processes (three masters, three replicas), hub binaries
//! started with `AETHER_REDIS_CLUSTER`, and Redis itself asked who is
//! online. The first test proves the cluster harness the other cluster
//! tests stand on.

mod support;

use support::cluster::{key_slot, Cluster};

/// The harness: three masters with one replica each cover every slot; a
/// slot moves with its keys; a killed master's replica takes over and the
/// killed node comes back as a replica.
#[tokio::test]
async fn the_harness_builds_migrates_and_fails_over_a_real_cluster() {
    let cluster = Cluster::start();
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3, "three masters");
    let replicas = cluster.replicas().await;
    assert_eq!(replicas.len(), 3, "one replica each: {replicas:?}");
    for (_, master) in &replicas {
        assert!(masters.contains(master));
    }
    for key in ["ws:group:g1", "{p:ws:group:g1}:history", "a{}b", "x{y}z"] {
        assert_eq!(key_slot(key), cluster.slot_of(key).await, "slot of {key}");
    }

    // A slot with a key in it moves from its master to another.
    let key = "harness:moving";
    let slot = key_slot(key);
    let from = cluster.master_of_slot(slot).await;
    let to = *masters
        .iter()
        .find(|m| **m != from)
        .expect("another master");
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("kept")
        .query_async(&mut cluster.client(from).await)
        .await
        .expect("SET");
    cluster.migrate_slot(slot, from, to).await;
    assert_eq!(cluster.master_of_slot(slot).await, to);
    let value: Option<String> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut cluster.client(to).await)
        .await
        .expect("GET on the new owner");
    assert_eq!(value.as_deref(), Some("kept"));

    // kill -9 of master 0: its replica serves slot 0 within the timeout.
    let replica = replicas
        .iter()
        .find(|(_, m)| *m == masters[0])
        .map(|(r, _)| *r)
        .expect("master 0 has a replica");
    let dead = cluster.kill_master(0).await;
    assert_eq!(dead, masters[0]);
    assert_eq!(cluster.wait_for_failover(dead, 0).await, replica);
    cluster.restart_node(dead).await;
    assert!(cluster.replicas().await.contains(&(dead, replica)));

    // A graceful failover swaps them back.
    cluster.failover(dead).await;
    assert_eq!(cluster.master_of_slot(0).await, dead);
}

/// Hub binaries on the shared cluster, under a prefix of their own.
mod hubs {
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::support::cluster::Cluster;
    use super::support::process::{signal, spawn_hub, wait_exit, Running};
    use super::support::redis::smembers;
    use super::support::{eventually, Client};

    const QUIET: Duration = Duration::from_millis(300);

    async fn hub(cluster: &Cluster, prefix: &str, extra: &[(&str, &str)]) -> Running {
        let seeds = cluster.seeds();
        let mut env = vec![
            ("AETHER_REDIS_CLUSTER", seeds.as_str()),
            ("AETHER_REDIS_PREFIX", prefix),
        ];
        env.extend_from_slice(extra);
        spawn_hub(&env).await
    }

    async fn connect(hub: &Running, group: &str, client: &str) -> Client {
        Client::connect(&hub.ws_url(group, client), &[])
            .await
            .unwrap_or_else(|e| panic!("connect {group}/{client}: {e}"))
    }

    /// Three groups whose presence SETs live on the three masters.
    async fn groups_on_every_master(cluster: &Cluster, prefix: &str) -> Vec<String> {
        let mut groups = Vec::new();
        for index in 0..3 {
            let key = |g: &str| format!("{prefix}ws:presence:group:{g}");
            groups.push(cluster.id_on_master(index, "g", key).await);
        }
        groups
    }

    /// The group's public SET, read on the master that owns it.
    async fn members(cluster: &Cluster, prefix: &str, group: &str) -> Vec<String> {
        let key = format!("{prefix}ws:presence:group:{group}");
        let master = cluster.master_of_key(&key).await;
        smembers(&mut cluster.client(master).await, &key).await
    }

    /// The next presence event: (event, client_id).
    async fn presence(client: &mut Client) -> (String, String) {
        for _ in 0..100 {
            let m: Value = client.recv().await;
            if m["msg_type"] == "presence" {
                let p = &m["payload"];
                return (
                    p["event"].as_str().unwrap_or_default().to_owned(),
                    p["client_id"].as_str().unwrap_or_default().to_owned(),
                );
            }
        }
        panic!("no presence event among 100 messages");
    }

    fn ev(event: &str, client: &str) -> (String, String) {
        (event.to_owned(), client.to_owned())
    }

    #[tokio::test]
    async fn presence_crosses_instances_with_groups_on_every_master() {
        let cluster = Cluster::shared();
        let prefix = "cp-cross:";
        let (a, b) = (
            hub(cluster, prefix, &[]).await,
            hub(cluster, prefix, &[]).await,
        );
        let groups = groups_on_every_master(cluster, prefix).await;
        let masters = cluster.masters().await;
        for (index, group) in groups.iter().enumerate() {
            let key = format!("{prefix}ws:presence:group:{group}");
            assert_eq!(cluster.master_of_key(&key).await, masters[index]);

            let mut alice = connect(&a, group, "alice").await;
            let bob = connect(&b, group, "bob").await;
            assert_eq!(presence(&mut alice).await, ev("join", "bob"));
            assert_eq!(members(cluster, prefix, group).await, ["alice", "bob"]);
            let listed = b.get(&format!("/v3/groups/{group}/presence")).await;
            assert_eq!(
                listed.json(),
                json!({"group_id": group, "members": ["alice", "bob"]})
            );

            // A second socket of bob, on the other instance: no new join,
            // and bob stays online until his last socket goes.
            let bob_on_a = connect(&a, group, "bob").await;
            alice.expect_silence(QUIET).await;
            bob.close().await;
            alice.expect_silence(QUIET).await;
            assert_eq!(members(cluster, prefix, group).await, ["alice", "bob"]);
            bob_on_a.close().await;
            assert_eq!(presence(&mut alice).await, ev("leave", "bob"));
            assert_eq!(members(cluster, prefix, group).await, ["alice"]);
            alice.close().await;
            eventually("the group is empty", || async {
                members(cluster, prefix, group).await.is_empty()
            })
            .await;
        }
    }

    #[tokio::test]
    async fn a_killed_instance_leaves_presence_within_the_ttl_and_the_others_stay() {
        let cluster = Cluster::shared();
        let prefix = "cp-kill:";
        let ttl = [("AETHER_PRESENCE_TTL_SECS", "3")];
        let doomed = hub(cluster, prefix, &ttl).await;
        let survivor = hub(cluster, prefix, &ttl).await;
        let groups = groups_on_every_master(cluster, prefix).await;
        let mut watchers = Vec::new();
        let mut kept = Vec::new();
        for group in &groups {
            watchers.push(connect(&survivor, group, "watcher").await);
            kept.push(connect(&survivor, group, "shared").await);
            kept.push(connect(&doomed, group, "shared").await);
            kept.push(connect(&doomed, group, "victim").await);
        }
        for (group, watcher) in groups.iter().zip(&mut watchers) {
            assert_eq!(presence(watcher).await, ev("join", "shared"));
            assert_eq!(presence(watcher).await, ev("join", "victim"));
            assert_eq!(
                members(cluster, prefix, group).await,
                ["shared", "victim", "watcher"]
            );
        }

        signal(&doomed.child, libc::SIGKILL);
        // The survivor sweeps the dead instance once its record expires
        // (3 s), group by group, on whichever master holds each group.
        for (group, watcher) in groups.iter().zip(&mut watchers) {
            assert_eq!(presence(watcher).await, ev("leave", "victim"));
            assert_eq!(
                members(cluster, prefix, group).await,
                ["shared", "watcher"],
                "the survivor's clients stay, including one the dead instance also held"
            );
        }
        for watcher in &mut watchers {
            watcher.expect_silence(QUIET).await;
        }
    }

    #[tokio::test]
    async fn graceful_shutdown_leaves_nothing_behind_on_any_master() {
        let cluster = Cluster::shared();
        let prefix = "cp-stop:";
        let mut hub = hub(cluster, prefix, &[]).await;
        let groups = groups_on_every_master(cluster, prefix).await;
        let mut clients = Vec::new();
        for group in &groups {
            clients.push(connect(&hub, group, "a").await);
        }
        for group in &groups {
            assert_eq!(members(cluster, prefix, group).await, ["a"]);
        }
        signal(&hub.child, libc::SIGTERM);
        for client in &mut clients {
            assert_eq!(client.recv_close().await.0, 1001);
        }
        let status = wait_exit(&mut hub.child, Duration::from_secs(10));
        assert_eq!(status.code(), Some(0));
        for master in cluster.masters().await {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query_async(&mut cluster.client(master).await)
                .await
                .expect("KEYS");
            assert!(keys.is_empty(), "left behind on {master}: {keys:?}");
        }
    }

    /// kill -9 of the master that holds a group's presence: its replica
    /// takes over with the SET, the hubs come back to ready, and joins and
    /// leaves are announced and recorded as before.
    #[tokio::test]
    async fn presence_survives_the_failover_of_its_master() {
        let cluster = Cluster::start();
        let prefix = "cp-failover:";
        let (a, b) = (
            hub(&cluster, prefix, &[]).await,
            hub(&cluster, prefix, &[]).await,
        );
        let group = cluster
            .id_on_master(0, "g", |g| format!("{prefix}ws:presence:group:{g}"))
            .await;
        let mut alice = connect(&a, &group, "alice").await;
        let _bob = connect(&b, &group, "bob").await;
        assert_eq!(presence(&mut alice).await, ev("join", "bob"));
        // Replicated before the kill: the replica holds the SET. (A `WAIT`
        // on a connection of our own would prove nothing: it waits for
        // that connection's writes, and it made none.)
        let key = format!("{prefix}ws:presence:group:{group}");
        let master = cluster.master_of_key(&key).await;
        let replica = cluster
            .replicas()
            .await
            .into_iter()
            .find(|(_, m)| *m == master)
            .map(|(r, _)| r)
            .expect("the master has a replica");
        let mut on_replica = cluster.client(replica).await;
        let _: () = redis::cmd("READONLY")
            .query_async(&mut on_replica)
            .await
            .expect("READONLY");
        eventually("the replica holds the presence SET", || {
            let (mut conn, key) = (on_replica.clone(), key.clone());
            async move { smembers(&mut conn, &key).await == ["alice", "bob"] }
        })
        .await;

        let dead = cluster.kill_master(0).await;
        cluster.wait_for_failover(dead, 0).await;
        for hub in [&a, &b] {
            eventually("the hub is ready again", || async {
                hub.get("/readyz").await.status == 200
            })
            .await;
        }
        assert_eq!(members(&cluster, prefix, &group).await, ["alice", "bob"]);

        let carol = connect(&b, &group, "carol").await;
        assert_eq!(presence(&mut alice).await, ev("join", "carol"));
        carol.close().await;
        assert_eq!(presence(&mut alice).await, ev("leave", "carol"));
        assert_eq!(members(&cluster, prefix, &group).await, ["alice", "bob"]);
        let listed = a.get(&format!("/v3/groups/{group}/presence")).await;
        assert_eq!(listed.json()["members"], json!(["alice", "bob"]));
    }

    /// The slot of a group's presence SET moves to another master (keys and
    /// all) while clients come and go: joins and leaves are announced in
    /// order and never twice (but for the moment the channel moves, none
    /// is missed), and the SET on its new master holds exactly who is
    /// online.
    #[tokio::test]
    async fn presence_follows_its_slot_to_another_master() {
        let cluster = Cluster::start();
        let prefix = "cp-move:";
        let (a, b) = (
            hub(&cluster, prefix, &[]).await,
            hub(&cluster, prefix, &[]).await,
        );
        let group = cluster
            .id_on_master(1, "g", |g| format!("{prefix}ws:presence:group:{g}"))
            .await;
        let key = format!("{prefix}ws:presence:group:{group}");
        let (from, to) = {
            let masters = cluster.masters().await;
            (masters[1], masters[2])
        };
        let mut alice = connect(&a, &group, "alice").await;
        let _bob = connect(&b, &group, "bob").await;
        assert_eq!(presence(&mut alice).await, ev("join", "bob"));

        let churn = async {
            for i in 0..10 {
                let visitor = connect(&b, &group, &format!("visitor-{i}")).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
                visitor.close().await;
            }
        };
        let slot = cluster.slot_of(&key).await;
        tokio::join!(cluster.migrate_slot(slot, from, to), churn);
        // An event published in the moment the group's channel has no
        // subscriber on its new owner is missed (docs/redis.md, "Slot migration"):
        // what alice sees of each visitor is its join and its leave, or
        // part of them, in order, never twice.
        let visitors: Vec<String> = (0..10).map(|i| format!("visitor-{i}")).collect();
        let seen = collect(&mut alice, &visitors, Duration::from_secs(10)).await;
        for visitor in &visitors {
            let events: Vec<&str> = seen
                .get(visitor)
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
            assert!(
                [&["join", "leave"][..], &["join"], &["leave"], &[]].contains(&events.as_slice()),
                "{visitor}: {events:?}"
            );
        }
        let whole = visitors
            .iter()
            .filter(|v| seen.get(*v).is_some_and(|e| e.len() == 2))
            .count();
        assert!(
            whole >= 3,
            "the move misses a moment, not the churn: {seen:?}"
        );
        assert_eq!(cluster.master_of_key(&key).await, to);
        assert_eq!(members(&cluster, prefix, &group).await, ["alice", "bob"]);
        let late = connect(&b, &group, "late").await;
        assert_eq!(presence(&mut alice).await, ev("join", "late"));
        assert_eq!(
            members(&cluster, prefix, &group).await,
            ["alice", "bob", "late"]
        );
        late.close().await;
        assert_eq!(presence(&mut alice).await, ev("leave", "late"));
    }

    /// The events one observer saw, per client, in order.
    type Seen = std::collections::BTreeMap<String, Vec<String>>;

    /// Reads `observer`'s presence events until every client of `expected`
    /// has had a join and a leave (or `within` ran out), then listens
    /// `QUIET` more for a late duplicate.
    async fn collect(observer: &mut Client, expected: &[String], within: Duration) -> Seen {
        use super::support::Event;
        let mut seen = Seen::new();
        let done = |seen: &Seen| {
            expected
                .iter()
                .all(|c| seen.get(c).is_some_and(|events| events.len() >= 2))
        };
        let deadline = tokio::time::Instant::now() + within;
        let mut quiet_from: Option<tokio::time::Instant> = None;
        loop {
            let now = tokio::time::Instant::now();
            let until = match quiet_from {
                Some(from) => from + QUIET,
                None => deadline,
            };
            if now >= until {
                break;
            }
            match observer.next_event(until - now).await {
                Some(Event::Text(m)) if m["msg_type"] == "presence" => {
                    let p = &m["payload"];
                    let client = p["client_id"].as_str().unwrap_or_default().to_owned();
                    let event = p["event"].as_str().unwrap_or_default().to_owned();
                    seen.entry(client).or_default().push(event);
                }
                Some(Event::Text(_)) => {}
                Some(Event::Closed(code, why)) => panic!("observer closed: {code} {why}"),
                None => {}
            }
            if quiet_from.is_none() && done(&seen) {
                quiet_from = Some(tokio::time::Instant::now());
            }
        }
        seen
    }

    /// docs/protocol.md section 4 on a cluster, under churn: observers on both
    /// instances, in groups on every master, see exactly one join and one
    /// leave per client (join first, within a bounded time, never twice),
    /// whether the client's sockets are on one instance or on both.
    #[tokio::test]
    async fn every_observer_sees_exactly_one_join_and_one_leave_per_client() {
        let cluster = Cluster::shared();
        let prefix = "cp-exact:";
        let (a, b) = (
            hub(cluster, prefix, &[]).await,
            hub(cluster, prefix, &[]).await,
        );
        let mut groups = groups_on_every_master(cluster, prefix).await;
        // And groups whose *channel* lives on each master.
        for index in 0..3 {
            let channel = |g: &str| format!("{prefix}ws:group:{g}");
            let group = cluster.id_on_master(index, "h", channel).await;
            groups.push(group);
        }
        let hubs = [&a, &b];
        for round in 0..4 {
            // Observers first: their upgrade is complete before anyone of
            // this round joins, so they must see every event of the round.
            let mut observers = Vec::new();
            for group in &groups {
                let mut on_a = connect(&a, group, "watch-a").await;
                let on_b = connect(&b, group, "watch-b").await;
                assert_eq!(presence(&mut on_a).await, ev("join", "watch-b"));
                observers.push((group.clone(), on_a, on_b));
            }
            // Clients 0-1 on A, 2-3 on B, 4-5 with a socket on each.
            let clients: Vec<String> = (0..6).map(|i| format!("r{round}-c{i}")).collect();
            let churn = groups.iter().flat_map(|group| {
                clients
                    .iter()
                    .enumerate()
                    .map(move |(i, client)| async move {
                        let on: Vec<usize> = match i {
                            0 | 1 => vec![0],
                            2 | 3 => vec![1],
                            _ => vec![0, 1],
                        };
                        let mut sockets = Vec::new();
                        for (n, hub) in on.iter().enumerate() {
                            if n > 0 && i % 2 == 0 {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            sockets.push(connect(hubs[*hub], group, client).await);
                        }
                        tokio::time::sleep(Duration::from_millis(20 * (i as u64 % 3))).await;
                        for socket in sockets {
                            socket.close().await;
                        }
                    })
            });
            let expected: Vec<String> = clients.clone();
            let watch = observers.iter_mut().flat_map(|(group, on_a, on_b)| {
                let expected = &expected;
                [("A", on_a), ("B", on_b)].map(|(name, observer)| {
                    let group = group.clone();
                    async move {
                        let seen = collect(observer, expected, Duration::from_secs(10)).await;
                        (group, name, seen)
                    }
                })
            });
            let (_, seen) = tokio::join!(
                futures_util::future::join_all(churn),
                futures_util::future::join_all(watch)
            );
            let mut wrong = Vec::new();
            for (group, observer, seen) in &seen {
                for client in &expected {
                    let events = seen.get(client).cloned().unwrap_or_default();
                    if events != ["join", "leave"] {
                        wrong.push(format!("{group} on {observer}: {client} {events:?}"));
                    }
                }
                for (client, events) in seen {
                    // The other observer's join may be in flight while
                    // this one upgrades: seen or not, both are right.
                    let observer_join = client.starts_with("watch-") && events == &["join"];
                    if !expected.contains(client) && !observer_join {
                        wrong.push(format!(
                            "{group} on {observer}: unexpected {client} {events:?}"
                        ));
                    }
                }
            }
            assert!(wrong.is_empty(), "round {round}: {wrong:#?}");
            for (group, on_a, on_b) in observers {
                on_b.close().await;
                on_a.close().await;
                eventually("the group is empty", || async {
                    members(cluster, prefix, &group).await.is_empty()
                })
                .await;
            }
        }
    }

    /// The slot of a group's *channel* moves to another master while
    /// clients come and go on both instances: each instance's shard
    /// connection for that channel is rebuilt on the new owner. Presence
    /// events are not kept (docs/protocol.md section 9), so one published in the
    /// moment the channel has no subscriber on its new owner is missed, as
    /// during a single Redis's reconnect (docs/redis.md, "Slot migration"); but
    /// none is ever seen twice or out of order, the SET is exact, and once
    /// the slot has moved every join and leave is announced once again.
    #[tokio::test]
    async fn presence_is_announced_once_while_its_channel_s_slot_moves() {
        let cluster = Cluster::start();
        let prefix = "cp-chan:";
        let (a, b) = (
            hub(&cluster, prefix, &[]).await,
            hub(&cluster, prefix, &[]).await,
        );
        let channel = |g: &str| format!("{prefix}ws:group:{g}");
        let group = cluster.id_on_master(1, "g", channel).await;
        let (from, to) = {
            let masters = cluster.masters().await;
            (masters[1], masters[2])
        };
        let mut on_a = connect(&a, &group, "watch-a").await;
        let mut on_b = connect(&b, &group, "watch-b").await;
        assert_eq!(presence(&mut on_a).await, ev("join", "watch-b"));
        let clients: Vec<String> = (0..12).map(|i| format!("v{i}")).collect();
        let hubs = [&a, &b];
        let churn = async {
            for (i, client) in clients.iter().enumerate() {
                let mut sockets = vec![connect(hubs[i % 2], &group, client).await];
                if i % 3 == 0 {
                    sockets.push(connect(hubs[(i + 1) % 2], &group, client).await);
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
                for socket in sockets {
                    socket.close().await;
                }
            }
        };
        let slot = cluster.slot_of(&channel(&group)).await;
        let migrate = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cluster.migrate_slot(slot, from, to).await;
        };
        let within = Duration::from_secs(20);
        let (_, _, seen_a, seen_b) = tokio::join!(
            churn,
            migrate,
            collect(&mut on_a, &clients, within),
            collect(&mut on_b, &clients, within)
        );
        let mut wrong = Vec::new();
        for (observer, seen) in [("A", &seen_a), ("B", &seen_b)] {
            for client in &clients {
                let events = seen.get(client).cloned().unwrap_or_default();
                let in_order = [&[][..], &["join"], &["leave"], &["join", "leave"]]
                    .iter()
                    .any(|allowed| events == *allowed);
                if !in_order {
                    wrong.push(format!("on {observer}: {client} {events:?}"));
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        assert_eq!(cluster.master_of_slot(slot).await, to);
        eventually("only the watchers left in the SET", || async {
            members(&cluster, prefix, &group).await == ["watch-a", "watch-b"]
        })
        .await;
        let late = connect(&b, &group, "late").await;
        assert_eq!(presence(&mut on_a).await, ev("join", "late"));
        assert_eq!(presence(&mut on_b).await, ev("join", "late"));
        late.close().await;
        assert_eq!(presence(&mut on_a).await, ev("leave", "late"));
        assert_eq!(presence(&mut on_b).await, ev("leave", "late"));
    }
}
