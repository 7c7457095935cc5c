//! Redis behind Sentinel (docs/protocol.md section 7, "Redis as production
//! runs it"): a master, its replica and three sentinels as real
//! `redis-server` processes (`tests/support/sentinel.rs`), two hubs given
//! only the sentinels and the master's name. The hubs find the master,
//! share routing and presence through it, and follow it when it changes:
//! after a `kill -9` (the promoted replica; the old master, when it comes
//! back as a replica, gets no hub connection), after a `kill -9` whose
//! replica had fallen behind (a real loss, made on purpose), after a
//! manual `SENTINEL FAILOVER`, and after one they hear no event of (their
//! sentinel user may not `SUBSCRIBE`: they find the demoted master out by
//! probing `ROLE`). Under acknowledged traffic with resuming clients,
//! every message acknowledged `ok` once the hubs are ready again is
//! delivered, and a resuming client is told `recovered: true` only when
//! nothing is missing. What a failover loses (acknowledged by the old
//! master, never replicated) is counted and printed, not forbidden: Redis
//! replicates asynchronously. The tests run one at a time: the metrics
//! registry is one per process, shared by every hub in it.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_hub::Config;
use futures_util::{SinkExt, StreamExt};
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use support::acks::{group_cmd, is_ack, send_acked};
use support::acl::{self, Rule, DOC_USER};
use support::history::{next_message, resume};
use support::redis::{client_names, smembers};
use support::sentinel::{connect, Role, Sentinels, FAILOVER_TIMEOUT};
use support::{eventually, Client, Event, TestHub, TIMEOUT};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

const GROUP: &str = "line";
/// One acknowledged cmd every this, from the controller.
const EVERY: Duration = Duration::from_millis(10);
/// Kept messages per route: more than a test sends, so history never
/// trims what a resuming client or the loss count asks for.
const HISTORY: u32 = 10_000;
const FAILOVERS: &str = "aether_redis_failovers_total";

/// One test at a time: every hub of this binary counts into one metrics
/// registry, and the failover counts are compared before and after.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a test found broken, gathered so that one run reports all of it
/// (each is printed as found, and the test fails at the end).
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, holds: bool, what: impl FnOnce() -> String) {
        if !holds {
            let what = what();
            eprintln!("FAILED: {what}");
            self.0.push(what);
        }
    }

    fn assert_none(self) {
        assert!(self.0.is_empty(), "{}", self.0.join("\n"));
    }
}

/// A hub that knows only the sentinels and the master's name, once ready.
async fn hub(redis: &Sentinels, instance: &str) -> TestHub {
    hub_with(redis, instance, |_| {}).await
}

/// [`hub`], with `adjust` applied to its settings.
async fn hub_with(redis: &Sentinels, instance: &str, adjust: impl FnOnce(&mut Config)) -> TestHub {
    let (sentinels, master) = (redis.sentinel_addrs(), redis.master_name());
    let hub = TestHub::with(|c| {
        c.redis_sentinels = sentinels;
        c.redis_sentinel_master = Some(master);
        c.instance_id = instance.to_owned();
        c.history_size = HISTORY;
        adjust(c);
    })
    .await;
    hub.wait_ready(200).await;
    hub
}

/// The names of a hub's two connections (`CLIENT SETNAME`).
fn connection_names(instance: &str) -> [String; 2] {
    ["commands", "pubsub"].map(|role| format!("aether:{instance}:{role}"))
}

/// The hub connections (`aether:…`) open on the node at `port`; `None`
/// when it does not answer.
async fn hub_connections_on(port: u16) -> Option<HashSet<String>> {
    let mut conn = connect(port).await.ok()?;
    let names = tokio::time::timeout(Duration::from_secs(2), client_names(&mut conn))
        .await
        .ok()?;
    Some(
        names
            .into_iter()
            .filter(|n| n.starts_with("aether:"))
            .collect(),
    )
}

/// How many cmds sent in `[from, to)` were acknowledged `status`.
fn acked(sent: &[Sent], from: Instant, to: Instant, status: &str) -> usize {
    sent.iter()
        .filter(|s| s.at >= from && s.at < to && s.ack["status"] == status)
        .count()
}

/// The acknowledgements of the cmds sent in `[from, to)`, by status.
fn statuses(sent: &[Sent], from: Instant, to: Instant) -> String {
    format!(
        "{} ok, {} failed, {} unconfirmed",
        acked(sent, from, to, "ok"),
        acked(sent, from, to, "failed"),
        acked(sent, from, to, "unconfirmed")
    )
}

/// A watch for a wait on `old` (the fixture calls it every poll), and the
/// hub connections it saw there: the hubs must not go back to a master
/// the sentinels replaced.
#[allow(clippy::type_complexity)]
fn stray_watch(
    old: u16,
) -> (
    impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    Arc<Mutex<HashSet<String>>>,
) {
    let strays = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::clone(&strays);
    let watch = move || {
        let seen = Arc::clone(&seen);
        Box::pin(async move {
            if let Some(names) = hub_connections_on(old).await {
                seen.lock().unwrap().extend(names);
            }
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    };
    (watch, strays)
}

/// Two hubs through Sentinel: ready, a cmd from a controller on one hub
/// reaches a worker on the other and a direct reply comes back, presence
/// lists both clients on both hubs, and every hub connection is on the
/// master the sentinels name (none on the replica).
#[tokio::test]
async fn two_hubs_find_the_master_and_share_routing_and_presence() {
    let _serial = SERIAL.lock().await;
    let redis = Sentinels::start().await;
    let (a, b) = (hub(&redis, "sa").await, hub(&redis, "sb").await);
    let failovers = a.metric(FAILOVERS).await;
    let mut worker = b.connect("g1", "worker").await;
    let mut ctl = a.connect("g1", "ctl").await;
    assert_eq!(
        worker.recv().await["payload"],
        json!({"event": "join", "client_id": "ctl"})
    );
    let ack = send_acked(&mut ctl, group_cmd(1, "k1")).await;
    assert_eq!(ack["status"], "ok", "{ack}");
    let got = next_message(&mut worker).await;
    assert_eq!(
        (got["cmd"].as_str(), got["from_id"].as_str()),
        (Some("c1"), Some("ctl"))
    );
    worker
        .send(json!({"msg_type": "msg", "target": "direct", "to_id": "ctl", "msg": "done"}))
        .await;
    let reply = next_message(&mut ctl).await;
    assert_eq!(
        (reply["msg"].as_str(), reply["from_id"].as_str()),
        (Some("done"), Some("worker"))
    );

    for hub in [&a, &b] {
        let presence = hub.get("/v3/groups/g1/presence").await;
        assert_eq!(presence.status, 200, "{}", presence.body);
        assert_eq!(presence.json()["members"], json!(["ctl", "worker"]));
    }
    let master = redis.master_port().await;
    let mut conn = redis.client(master).await;
    assert_eq!(
        smembers(&mut conn, "ws:presence:group:g1").await,
        ["ctl", "worker"]
    );
    let on_master = hub_connections_on(master)
        .await
        .expect("the master answers");
    let want: HashSet<String> = connection_names("sa")
        .into_iter()
        .chain(connection_names("sb"))
        .collect();
    assert_eq!(on_master, want, "both hubs' connections on the master");
    let replica = redis.data_ports()[1];
    assert_eq!(
        hub_connections_on(replica).await,
        Some(HashSet::new()),
        "no hub connection on the replica"
    );
    for hub in [&a, &b] {
        assert_eq!(hub.metric("aether_redis_up").await, 1.0);
        for connection in ["commands", "pubsub"] {
            let sample = format!("aether_redis_connection_up{{connection=\"{connection}\"}}");
            assert_eq!(hub.metric(&sample).await, 1.0, "{sample}");
        }
        assert_eq!(
            hub.metric(FAILOVERS).await,
            failovers,
            "no failover counted"
        );
    }
}

/// One acknowledged cmd of the controller's traffic.
#[derive(Debug)]
struct Sent {
    n: u64,
    at: Instant,
    /// The acknowledgement's payload.
    ack: Value,
}

impl Sent {
    fn ok(&self) -> bool {
        self.ack["status"] == "ok"
    }
}

/// The controller's traffic: a cmd every [`EVERY`] until stopped, each
/// with an `ack_id`.
struct Traffic {
    stop: watch::Sender<bool>,
    task: JoinHandle<(Client, Vec<Sent>)>,
}

impl Traffic {
    fn start(ctl: Client) -> Traffic {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(send_until(ctl, stopped));
        Traffic { stop, task }
    }

    /// Stops sending and returns the controller (still open) and every
    /// frame sent, each with its one acknowledgement.
    async fn finish(self) -> (Client, Vec<Sent>) {
        let _ = self.stop.send(true);
        self.task.await.expect("the controller ran")
    }
}

async fn send_until(ctl: Client, mut stopped: watch::Receiver<bool>) -> (Client, Vec<Sent>) {
    let (mut tx, mut rx) = ctl.ws.split();
    let mut tick = tokio::time::interval(EVERY);
    let mut sent: Vec<(u64, Instant)> = Vec::new();
    let mut acks: HashMap<u64, Value> = HashMap::new();
    let mut stopping: Option<tokio::time::Instant> = None;
    loop {
        if let Some(deadline) = stopping {
            if acks.len() == sent.len() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {} frames acknowledged",
                acks.len(),
                sent.len()
            );
        }
        tokio::select! {
            _ = tick.tick(), if stopping.is_none() => {
                let n = sent.len() as u64 + 1;
                let frame = group_cmd(n, &format!("a{n}"));
                tx.send(Message::text(frame.to_string())).await.expect("send");
                sent.push((n, Instant::now()));
            }
            _ = stopped.changed(), if stopping.is_none() => {
                stopping = Some(tokio::time::Instant::now() + TIMEOUT);
            }
            frame = rx.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    let m: Value = serde_json::from_str(t.as_str()).expect("JSON");
                    if is_ack(&m) {
                        let id = m["payload"]["ack_id"].as_str().unwrap_or_default();
                        let n = id.strip_prefix('a').and_then(|n| n.parse().ok())
                            .unwrap_or_else(|| panic!("an ack for no frame: {m}"));
                        let again = acks.insert(n, m["payload"].clone());
                        assert!(again.is_none(), "frame {n} acknowledged twice: {m}");
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("the controller's socket ended: {other:?}"),
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let ws = tx.reunite(rx).expect("one socket");
    let sent = sent
        .into_iter()
        .map(|(n, at)| Sent {
            n,
            at,
            ack: acks.remove(&n).expect("acknowledged"),
        })
        .collect();
    (Client { ws }, sent)
}

/// What one worker socket received (every message but presence events),
/// each with when.
struct Heard {
    client: Option<Client>,
    messages: Vec<(Instant, Value)>,
    /// How the socket ended, if it did.
    closed: Option<(u16, String)>,
}

impl Heard {
    /// The cmd numbers, in the order received.
    fn cmds(&self) -> Vec<u64> {
        self.messages
            .iter()
            .filter_map(|(_, m)| cmd_number(m))
            .collect()
    }

    /// The recovery summary's group entry, and when it came.
    fn summary(&self) -> Option<(Instant, Value)> {
        self.messages
            .iter()
            .find(|(_, m)| m["msg_type"] == "recovery")
            .map(|(at, m)| (*at, m["payload"]["group"].clone()))
    }

    /// The last group position seen: the last cmd's, or the summary's.
    fn position(&self) -> String {
        let (epoch, offset) = self
            .messages
            .iter()
            .rev()
            .find_map(|(_, m)| {
                let at = if m["msg_type"] == "recovery" {
                    &m["payload"]["group"]
                } else {
                    m
                };
                Some((at["epoch"].as_str()?.to_owned(), at["offset"].as_u64()?))
            })
            .expect("a position seen");
        format!("{epoch}:{offset}")
    }
}

/// `c{n}` → n.
fn cmd_number(m: &Value) -> Option<u64> {
    m["cmd"].as_str()?.strip_prefix('c')?.parse().ok()
}

/// A worker's socket read in a task until `stop` says so.
struct Listener {
    stop: watch::Sender<bool>,
    task: JoinHandle<Heard>,
}

impl Listener {
    fn start(client: Client) -> Listener {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(listen(client, stopped));
        Listener { stop, task }
    }

    async fn finish(self) -> Heard {
        let _ = self.stop.send(true);
        self.task.await.expect("the listener ran")
    }
}

async fn listen(mut client: Client, mut stopped: watch::Receiver<bool>) -> Heard {
    let mut messages = Vec::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            event = client.next_event(Duration::from_secs(3600)) => match event {
                Some(Event::Text(m)) if m["msg_type"] == "presence" => {}
                Some(Event::Text(m)) => messages.push((Instant::now(), m)),
                Some(Event::Closed(code, reason)) => {
                    return Heard { client: None, messages, closed: Some((code, reason)) };
                }
                None => {}
            },
        }
    }
    Heard {
        client: Some(client),
        messages,
        closed: None,
    }
}

/// Waits until `hub` reports not ready (its master is gone), then ready
/// again; returns the time from `since` to ready again.
async fn ready_again(hub: &TestHub, since: Instant) -> Duration {
    let deadline = Instant::now() + TIMEOUT;
    while hub.get("/readyz").await.status == 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz stayed 200 with the master dead"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + FAILOVER_TIMEOUT;
    while hub.get("/readyz").await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz never 200 again after the failover: {}",
            hub.get("/readyz").await.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    since.elapsed()
}

/// The cmd numbers in the group's history on the node at `port`.
async fn kept_on(redis: &Sentinels, port: u16) -> HashSet<u64> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{{ws:group:{GROUP}}}:history"))
        .arg("-")
        .arg("+")
        .query_async(&mut redis.client(port).await)
        .await
        .expect("XRANGE history");
    entries
        .iter()
        .filter_map(|(_, fields)| {
            let (_, text) = fields.iter().find(|(k, _)| k == "t")?;
            cmd_number(&serde_json::from_str(text).ok()?)
        })
        .collect()
}

/// Within one socket's messages: no cmd twice, and offsets only go up
/// within an epoch (a number given out twice shows as a step back).
fn once_in_order(found: &mut Findings, who: &str, heard: &Heard) {
    let cmds = heard.cmds();
    let mut unique = HashSet::new();
    let twice: Vec<u64> = cmds
        .iter()
        .copied()
        .filter(|n| !unique.insert(*n))
        .collect();
    found.check(twice.is_empty(), || {
        format!("{who} got cmds twice: {twice:?}")
    });
    let mut last: Option<(&str, u64)> = None;
    for (_, m) in &heard.messages {
        let (Some(epoch), Some(offset)) = (m["epoch"].as_str(), m["offset"].as_u64()) else {
            continue;
        };
        if m["msg_type"] == "recovery" {
            continue;
        }
        if let Some((e, o)) = last {
            if e == epoch && offset <= o {
                found.check(false, || {
                    format!("{who}: {m} after offset {e}:{o}: a number given out twice")
                });
                return;
            }
        }
        last = Some((epoch, offset));
    }
}

/// The frames in `sent` acknowledged `ok` and sent within `[from, to)`
/// that are missing from `got`.
fn missing(sent: &[Sent], from: Instant, to: Instant, got: &HashSet<u64>) -> Vec<u64> {
    sent.iter()
        .filter(|s| s.ok() && s.at >= from && s.at < to && !got.contains(&s.n))
        .map(|s| s.n)
        .collect()
}

/// A worker that resumed with `since_group`: `before` is what it heard
/// until it dropped, `after` what it heard from its reconnect on. With
/// `recovered: true`, it has every cmd acknowledged `ok` after the last
/// one it saw (a message lost by the failover included: `true` says
/// nothing was lost), and the replay is after its position in the same
/// epoch; with `recovered: false`, nothing is replayed, and every cmd
/// acknowledged `ok` after the summary arrives. Returns the summary.
fn honest_recovery(
    found: &mut Findings,
    who: &str,
    before: &Heard,
    after: &Heard,
    sent: &[Sent],
) -> Value {
    once_in_order(found, who, after);
    let (summary_at, summary) = after
        .summary()
        .unwrap_or_else(|| panic!("{who}: no recovery summary"));
    let (seen_epoch, seen_offset) = {
        let p = before.position();
        let (e, o) = p.split_once(':').expect("epoch:offset");
        (e.to_owned(), o.parse::<u64>().expect("offset"))
    };
    let replayed: Vec<&Value> = after
        .messages
        .iter()
        .take_while(|(_, m)| m["msg_type"] != "recovery")
        .map(|(_, m)| m)
        .collect();
    found.check(
        summary["missed"].as_u64() == Some(replayed.len() as u64),
        || format!("{who}: missed does not count the replay: {summary}"),
    );
    let had: HashSet<u64> = before.cmds().into_iter().chain(after.cmds()).collect();
    if summary["recovered"] == true {
        for m in &replayed {
            found.check(
                m["epoch"] == seen_epoch.as_str() && m["offset"].as_u64() > Some(seen_offset),
                || format!("{who}: replayed {m} from {seen_epoch}:{seen_offset}"),
            );
        }
        // One sender: its numbers are the route's order. Everything
        // acknowledged ok after the last cmd the worker saw is owed.
        let last_seen = before.cmds().last().copied().unwrap_or(0);
        let gap: Vec<u64> = sent
            .iter()
            .filter(|s| s.ok() && s.n > last_seen && !had.contains(&s.n))
            .map(|s| s.n)
            .collect();
        found.check(gap.is_empty(), || {
            format!(
                "{who} was told recovered: true from {seen_epoch}:{seen_offset} (after c{last_seen}; {summary}) \
                 but never got cmds acknowledged ok after that: {gap:?}"
            )
        });
    } else {
        found.check(replayed.is_empty(), || {
            format!("{who}: recovered: false with a replay: {replayed:?}")
        });
        let lost = missing(sent, summary_at, Instant::now(), &had);
        found.check(lost.is_empty(), || {
            format!("{who}: cmds acknowledged ok after its summary never arrived: {lost:?}")
        });
    }
    summary
}

/// Finishes a test with a last acknowledged cmd from `ctl` that `worker`
/// must receive: the route still works after everything.
async fn still_routes(found: &mut Findings, ctl: &mut Client, worker: Option<Client>) {
    let ack = send_acked(ctl, group_cmd(0, "final")).await;
    found.check(ack["status"] == "ok", || format!("the last cmd: {ack}"));
    let Some(mut worker) = worker else { return };
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match worker.next_event(left).await {
            Some(Event::Text(m)) if m["cmd"] == "c0" => return,
            Some(Event::Text(_)) => {}
            _ => break,
        }
    }
    found.check(false, || "the last cmd never reached the worker".into());
}

/// `kill -9` of the master under acknowledged traffic from a controller on
/// hub A to workers on hub B: one stays connected, two drop just before the
/// kill and resume with `since_group` once the hubs are ready again (one
/// at once on B, one a second later on A). With `lag`, the replica is
/// frozen and the master's link to it cut 300 ms before the kill: what the
/// master acknowledges meanwhile never reaches the replica that takes
/// over, a real loss that resuming clients must be told of.
async fn kill_the_master_under_traffic(lag: bool) {
    let _serial = SERIAL.lock().await;
    let label = if lag {
        "failover (lagging replica)"
    } else {
        "failover"
    };
    let tag = if lag { "l" } else { "k" };
    let (ia, ib) = (format!("{tag}a"), format!("{tag}b"));
    let began = Instant::now();
    let mut redis = Sentinels::start().await;
    let (a, b) = (hub(&redis, &ia).await, hub(&redis, &ib).await);
    let failovers = a.metric(FAILOVERS).await;
    let live = Listener::start(b.connect(GROUP, "live").await);
    let r1 = Listener::start(resume(&b, GROUP, "r1", "since_group=new").await);
    let r2 = Listener::start(resume(&b, GROUP, "r2", "since_group=new").await);
    let traffic = Traffic::start(a.connect(GROUP, "ctl").await);

    tokio::time::sleep(Duration::from_millis(600)).await;
    let old = redis.master_port().await;
    let replica = redis
        .data_ports()
        .into_iter()
        .find(|&p| p != old)
        .expect("a replica");
    if lag {
        redis.freeze(replica, true);
        assert_eq!(redis.cut_replication(old).await, 1, "one replica link cut");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (mut r1_before, mut r2_before) = (r1.finish().await, r2.finish().await);
    drop((r1_before.client.take(), r2_before.client.take()));
    let killed_at = Instant::now();
    redis.kill(old);
    if lag {
        redis.freeze(replica, false);
    }
    let (took_a, took_b, (new, promoted_after)) = tokio::join!(
        ready_again(&a, killed_at),
        ready_again(&b, killed_at),
        async {
            let new = redis.wait_for_failover(old).await;
            (new, killed_at.elapsed())
        }
    );
    let ready_at = killed_at + took_a.max(took_b);
    assert_eq!(new, replica, "the replica was promoted");
    eprintln!(
        "{label}: sentinels agreed on the replica after {} ms; \
         failover: ready again after {} ms (hub A {} ms, hub B {} ms)",
        promoted_after.as_millis(),
        took_a.max(took_b).as_millis(),
        took_a.as_millis(),
        took_b.as_millis()
    );

    let since = |heard: &Heard| format!("since_group={}", heard.position());
    let r1 = Listener::start(resume(&b, GROUP, "r1", &since(&r1_before)).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r2 = Listener::start(resume(&a, GROUP, "r2", &since(&r2_before)).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut ctl, sent) = traffic.finish().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut live, r1_after, r2_after) =
        (live.finish().await, r1.finish().await, r2.finish().await);

    let mut found = Findings::default();
    for (who, heard) in [("live", &live), ("r1", &r1_after), ("r2", &r2_after)] {
        found.check(heard.closed.is_none(), || {
            format!("{who}'s socket closed: {:?}", heard.closed)
        });
    }
    once_in_order(&mut found, "the live worker", &live);
    let heard: HashSet<u64> = live.cmds().into_iter().collect();
    let kept = kept_on(&redis, new).await;
    let now = Instant::now();
    let lost_kept = missing(&sent, began, killed_at, &kept);
    let lost_live = missing(&sent, began, killed_at, &heard);
    let while_down = missing(&sent, killed_at, ready_at, &heard);
    let after_ready = missing(&sent, ready_at, now, &heard);
    let statuses = |from, to| statuses(&sent, from, to);
    eprintln!(
        "{label}: {} cmds; before the kill {}; until ready {}; after ready {}",
        sent.len(),
        statuses(began, killed_at),
        statuses(killed_at, ready_at),
        statuses(ready_at, now)
    );
    eprintln!(
        "{label}: acknowledged ok before the kill, not in the new master's history \
         (asynchronous replication): {} {lost_kept:?}; never delivered to the live worker: {} {lost_live:?}",
        lost_kept.len(),
        lost_live.len()
    );
    found.check(while_down.is_empty(), || {
        format!("acknowledged ok after the kill (so by the new master) but never delivered: {while_down:?}")
    });
    found.check(after_ready.is_empty(), || {
        format!(
            "acknowledged ok after the hubs were ready again but never delivered: {after_ready:?}"
        )
    });
    found.check(acked(&sent, ready_at, now, "ok") >= 50, || {
        format!(
            "little traffic after the failover: {}",
            statuses(ready_at, now)
        )
    });
    for (who, b4, after) in [("r1", &r1_before, &r1_after), ("r2", &r2_before, &r2_after)] {
        let summary = honest_recovery(&mut found, who, b4, after, &sent);
        eprintln!("{label}: {who} resumed from {}: {summary}", b4.position());
    }

    // The old master comes back, empty and claiming to be a master, until
    // the sentinels make it a replica: no hub connects to it meanwhile.
    let back_at = Instant::now();
    let (watch, strays) = stray_watch(old);
    redis.restart_as_replica(old, watch).await;
    eprintln!(
        "{label}: the old master was a replica {} ms after its restart",
        back_at.elapsed().as_millis()
    );
    let strays = strays.lock().unwrap().clone();
    found.check(strays.is_empty(), || {
        format!("hub connections on the old master after its restart: {strays:?}")
    });
    let on_old = hub_connections_on(old).await;
    found.check(on_old == Some(HashSet::new()), || {
        format!("hub connections on the old master, now a replica: {on_old:?}")
    });
    let want: HashSet<String> = connection_names(&ia)
        .into_iter()
        .chain(connection_names(&ib))
        .collect();
    let on_new = hub_connections_on(new).await;
    found.check(on_new.as_ref() == Some(&want), || {
        format!("hub connections on the new master: {on_new:?}, want {want:?}")
    });
    let counted = a.metric(FAILOVERS).await - failovers;
    eprintln!("{label}: {FAILOVERS} rose by {counted} (two hubs)");
    found.check(counted == 2.0, || {
        format!("{FAILOVERS} rose by {counted} for one master change seen by two hubs")
    });
    still_routes(&mut found, &mut ctl, live.client.take()).await;
    found.assert_none();
}

#[tokio::test]
async fn a_killed_master_is_followed_and_nothing_acknowledged_after_ready_is_lost() {
    kill_the_master_under_traffic(false).await;
}

#[tokio::test]
async fn a_lagging_replica_takes_over_and_resuming_clients_are_told_the_truth() {
    kill_the_master_under_traffic(true).await;
}

/// `SENTINEL FAILOVER` under acknowledged traffic: the old master is alive
/// (and stays a master until the sentinels convert it, some 15 s later),
/// the sentinels announce `+switch-master`. Both hubs move both
/// connections to the new master and never go back to the old one; every
/// cmd acknowledged `ok` once they have moved and are ready reaches the
/// workers on both hubs, once and in order. What the old master took
/// between the promotion and the announcement is counted and printed.
#[tokio::test]
async fn a_manual_failover_is_followed_with_nothing_lost_after_ready() {
    let _serial = SERIAL.lock().await;
    let began = Instant::now();
    let redis = Sentinels::start().await;
    let (a, b) = (hub(&redis, "ma").await, hub(&redis, "mb").await);
    let failovers = a.metric(FAILOVERS).await;
    let far = Listener::start(b.connect(GROUP, "far").await);
    let near = Listener::start(a.connect(GROUP, "near").await);
    let traffic = Traffic::start(a.connect(GROUP, "ctl").await);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let old = redis.master_port().await;
    let asked_at = Instant::now();
    let new = redis.failover().await;
    let switched = asked_at.elapsed();
    let want: HashSet<String> = connection_names("ma")
        .into_iter()
        .chain(connection_names("mb"))
        .collect();
    eventually("every hub connection moved to the new master", || async {
        hub_connections_on(new).await.as_ref() == Some(&want)
            && hub_connections_on(old).await == Some(HashSet::new())
    })
    .await;
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    let ready_at = Instant::now();
    eprintln!(
        "manual failover: sentinels agreed after {} ms; hubs moved and ready after {} ms",
        switched.as_millis(),
        ready_at.duration_since(asked_at).as_millis()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut ctl, sent) = traffic.finish().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut far, near) = (far.finish().await, near.finish().await);

    let mut found = Findings::default();
    let kept = kept_on(&redis, new).await;
    let now = Instant::now();
    let statuses: HashMap<&str, usize> = sent.iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.ack["status"].as_str().unwrap_or("?"))
            .or_default() += 1;
        m
    });
    let not_kept = missing(&sent, asked_at, ready_at, &kept);
    eprintln!(
        "manual failover: {} cmds, acknowledged {statuses:?}; acknowledged ok during the switch \
         but not in the new master's history: {} {not_kept:?}",
        sent.len(),
        not_kept.len()
    );
    for (who, heard) in [("far", &far), ("near", &near)] {
        found.check(heard.closed.is_none(), || {
            format!("{who}'s socket closed: {:?}", heard.closed)
        });
        once_in_order(&mut found, who, heard);
        let got: HashSet<u64> = heard.cmds().into_iter().collect();
        let switching = missing(&sent, asked_at, ready_at, &got);
        eprintln!(
            "manual failover: {who}: acknowledged ok during the switch but never delivered: {} {switching:?}",
            switching.len()
        );
        let earlier = missing(&sent, began, asked_at, &got);
        found.check(earlier.is_empty(), || {
            format!("{who}: acknowledged ok before the failover but never delivered: {earlier:?}")
        });
        let lost = missing(&sent, ready_at, now, &got);
        found.check(lost.is_empty(), || {
            format!("{who}: acknowledged ok after the hubs moved but never delivered: {lost:?}")
        });
    }
    found.check(
        sent.iter().filter(|s| s.at >= ready_at && s.ok()).count() >= 50,
        || "little traffic after the switch".into(),
    );
    // The demoted master stays a master until the sentinels convert it:
    // no hub goes back to it meanwhile.
    let demoted_at = Instant::now();
    let (watch, strays) = stray_watch(old);
    redis.wait_replica(old, watch).await;
    eprintln!(
        "manual failover: the old master was a replica {} ms after the hubs moved",
        demoted_at.elapsed().as_millis()
    );
    let strays = strays.lock().unwrap().clone();
    found.check(strays.is_empty(), || {
        format!("hub connections on the demoted master: {strays:?}")
    });
    let counted = a.metric(FAILOVERS).await - failovers;
    eprintln!("manual failover: {FAILOVERS} rose by {counted} (two hubs)");
    found.check(counted == 2.0, || {
        format!("{FAILOVERS} rose by {counted} for one master change seen by two hubs")
    });
    still_routes(&mut found, &mut ctl, far.client.take()).await;
    found.assert_none();
}

/// The hubs' password on the sentinels in the test of a failover they hear
/// no event of.
const DEAF_PASSWORD: &str = "deaf-sentinel-pw-7c31";
/// How long the hubs are left on the old master once the sentinels agree
/// on the new one: long after `+switch-master` would have moved them (a
/// few ms in the manual failover test), long before the sentinels would
/// demote it themselves (some 15 s).
const UNHEARD: Duration = Duration::from_secs(2);
/// The longest the hubs may take to leave a demoted master they heard
/// nothing of: they probe `ROLE` every second.
const PROBED_WITHIN: Duration = Duration::from_secs(3);

/// What the sentinels refused the hubs' user (`reason object` → times,
/// from `ACL LOG`), summed over the sentinels.
async fn refused_on_sentinels(conns: &mut [MultiplexedConnection]) -> HashMap<String, i64> {
    let mut refused = HashMap::new();
    for conn in conns {
        for denial in acl::denials(conn).await {
            if denial.username == DOC_USER {
                *refused
                    .entry(format!("{} {}", denial.reason, denial.object))
                    .or_default() += denial.count;
            }
        }
    }
    refused
}

/// The connections of `user` on a sentinel (`CLIENT LIST`): how many,
/// and how many are subscribed to a channel or a pattern.
async fn connections_of(conn: &mut MultiplexedConnection, user: &str) -> (usize, usize) {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .expect("CLIENT LIST");
    let field = |line: &str, name: &str| -> String {
        line.split(' ')
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_default()
            .to_owned()
    };
    let theirs: Vec<&str> = list.lines().filter(|l| field(l, "user") == user).collect();
    let subscribed = theirs
        .iter()
        .filter(|l| field(l, "sub") != "0" || field(l, "psub") != "0")
        .count();
    (theirs.len(), subscribed)
}

/// Polls (bounded) until every connection in `want` is on the node at
/// `new` and none is on `old`; returns when each was first seen on `new`.
async fn wait_moved(old: u16, new: u16, want: &HashSet<String>) -> HashMap<String, Instant> {
    let deadline = Instant::now() + TIMEOUT;
    let mut first = HashMap::new();
    loop {
        let (on_new, on_old) = (hub_connections_on(new).await, hub_connections_on(old).await);
        let now = Instant::now();
        for name in on_new.iter().flatten() {
            first.entry(name.clone()).or_insert(now);
        }
        if on_new.as_ref() == Some(want) && on_old == Some(HashSet::new()) {
            return first;
        }
        assert!(
            now < deadline,
            "the hub connections never all moved: on the new master {on_new:?}, on the old {on_old:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A failover the hubs hear no event of: their user on the sentinels (the
/// documented one without `+subscribe`) may ask for the master but not
/// `SUBSCRIBE`, so `+switch-master` never reaches them (the sentinels' `ACL
/// LOG` shows the refusal, and nothing else refused). After `SENTINEL
/// FAILOVER` the old master is alive and still a master: the hubs stay on
/// it (what it acknowledges meanwhile is delivered, and counted: the
/// sentinels send nobody there any more). Then it is demoted with
/// `REPLICAOF`, as the sentinels would, but without their `CLIENT KILL
/// TYPE normal`, which would close the hubs' connections and so tell them:
/// only `ROLE` (probed every second) and publishes answered `READONLY`
/// (probe at once) can. Both hubs move both connections to the new master
/// within [`PROBED_WITHIN`], none stays on the old one, each counts one
/// failover, and every cmd acknowledged `ok` (before the demotion, after
/// it, after the hubs are ready) reaches the worker, once and in order.
#[tokio::test]
async fn a_failover_no_event_announces_is_followed_by_probing_the_role() {
    let _serial = SERIAL.lock().await;
    let began = Instant::now();
    let redis = Sentinels::start().await;
    let documented = acl::rule(Rule::SentinelUser, "", DEAF_PASSWORD);
    let user = acl::without(&documented, "+subscribe");
    let mut watchers = Vec::new();
    for port in redis.sentinel_ports() {
        let mut conn = redis.client(port).await;
        acl::set_user(&mut conn, DOC_USER, &user).await;
        acl::reset_log(&mut conn).await;
        watchers.push(conn);
    }
    let deaf = |c: &mut Config| {
        c.redis_sentinel_username = Some(DOC_USER.into());
        c.redis_sentinel_password = Some(DEAF_PASSWORD.into());
    };
    let (a, b) = (
        hub_with(&redis, "qa", deaf).await,
        hub_with(&redis, "qb", deaf).await,
    );
    // Ready: they found the master through the sentinels. Their
    // subscription to the sentinels' events is refused, and only that.
    let deadline = Instant::now() + TIMEOUT;
    let refused = loop {
        let refused = refused_on_sentinels(&mut watchers).await;
        if refused.get("command subscribe").is_some_and(|&n| n >= 2) {
            break refused;
        }
        assert!(
            Instant::now() < deadline,
            "the sentinels never refused the hubs' SUBSCRIBE: {refused:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused.len(), 1, "refused more than SUBSCRIBE: {refused:?}");
    let (mut open, mut subscribed) = (0, 0);
    for conn in &mut watchers {
        let (n, listening) = connections_of(conn, DOC_USER).await;
        open += n;
        subscribed += listening;
    }
    assert_eq!(subscribed, 0, "a hub is subscribed on a sentinel");
    eprintln!(
        "no event: SUBSCRIBE refused {} times; hub connections open on the sentinels, \
         subscribed to nothing: {open}",
        refused["command subscribe"]
    );

    let failovers = a.metric(FAILOVERS).await;
    let worker = Listener::start(b.connect(GROUP, "worker").await);
    let traffic = Traffic::start(a.connect(GROUP, "ctl").await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let want: HashSet<String> = connection_names("qa")
        .into_iter()
        .chain(connection_names("qb"))
        .collect();
    let old = redis.master_port().await;
    let asked_at = Instant::now();
    let new = redis.failover().await;
    let agreed_at = Instant::now();
    tokio::time::sleep(UNHEARD).await;
    // Nothing told the hubs: all still on the old master, a master still.
    assert_eq!(
        redis.role(old).await,
        Some(Role::Master),
        "the sentinels demoted {old} already"
    );
    assert_eq!(
        hub_connections_on(old).await.as_ref(),
        Some(&want),
        "the hubs left the old master before its demotion: they heard of the failover"
    );
    assert_eq!(
        hub_connections_on(new).await,
        Some(HashSet::new()),
        "hub connections on the new master before the old one's demotion"
    );
    assert_eq!(
        a.metric(FAILOVERS).await,
        failovers,
        "a failover counted before the demotion"
    );

    redis.demote(old, new).await;
    let demoted_at = Instant::now();
    let role = redis.role(old).await;
    assert!(
        matches!(role, Some(Role::Replica { master_port, .. }) if master_port == new),
        "{old} after REPLICAOF {new}: {role:?}"
    );
    let first_seen = wait_moved(old, new, &want).await;
    let moved_at = Instant::now();
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    let ready_at = Instant::now();
    let since_demotion = |at: Instant| at.saturating_duration_since(demoted_at).as_millis();
    let mut each: Vec<String> = first_seen
        .iter()
        .map(|(name, at)| format!("{name} {} ms", since_demotion(*at)))
        .collect();
    each.sort();
    eprintln!(
        "no event: sentinels agreed {} ms after SENTINEL FAILOVER; the hubs stayed on the old \
         master {} ms more; after its demotion they moved in {} ms ({}), ready in {} ms",
        agreed_at.duration_since(asked_at).as_millis(),
        demoted_at.duration_since(agreed_at).as_millis(),
        since_demotion(moved_at),
        each.join(", "),
        since_demotion(ready_at)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut ctl, sent) = traffic.finish().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut worker = worker.finish().await;

    let mut found = Findings::default();
    found.check(worker.closed.is_none(), || {
        format!("the worker's socket closed: {:?}", worker.closed)
    });
    once_in_order(&mut found, "the worker", &worker);
    let got: HashSet<u64> = worker.cmds().into_iter().collect();
    let now = Instant::now();
    let statuses = |from, to| statuses(&sent, from, to);
    eprintln!(
        "no event: {} cmds; before the failover {}; until the demotion {}; \
         from the demotion until ready {}; after ready {}",
        sent.len(),
        statuses(began, asked_at),
        statuses(asked_at, demoted_at),
        statuses(demoted_at, ready_at),
        statuses(ready_at, now)
    );
    eprintln!(
        "no event: acknowledged ok by the old master after the sentinels had named the new \
         one (its data is replaced when it becomes a replica): {}",
        acked(&sent, agreed_at, demoted_at, "ok")
    );
    let before = missing(&sent, began, demoted_at, &got);
    found.check(before.is_empty(), || {
        format!("acknowledged ok before the demotion (both hubs on the old master) but never delivered: {before:?}")
    });
    let after_demotion = missing(&sent, demoted_at, now, &got);
    found.check(after_demotion.is_empty(), || {
        format!("acknowledged ok after the old master became a replica but never delivered: {after_demotion:?}")
    });
    let after_ready = missing(&sent, ready_at, now, &got);
    found.check(after_ready.is_empty(), || {
        format!("acknowledged ok after the hubs were ready on the new master but never delivered: {after_ready:?}")
    });
    found.check(acked(&sent, ready_at, now, "ok") >= 50, || {
        format!(
            "little traffic after the switch: {}",
            statuses(ready_at, now)
        )
    });
    found.check(moved_at.duration_since(demoted_at) <= PROBED_WITHIN, || {
        format!(
            "the hubs left the demoted master after {} ms (ROLE is probed every second)",
            since_demotion(moved_at)
        )
    });
    let (on_new, on_old) = (hub_connections_on(new).await, hub_connections_on(old).await);
    found.check(on_new.as_ref() == Some(&want), || {
        format!("hub connections on the new master: {on_new:?}, want {want:?}")
    });
    found.check(on_old == Some(HashSet::new()), || {
        format!("hub connections on the demoted master: {on_old:?}")
    });
    let refused = refused_on_sentinels(&mut watchers).await;
    eprintln!("no event: the sentinels refused the hubs' user, in all: {refused:?}");
    let counted = a.metric(FAILOVERS).await - failovers;
    eprintln!("no event: {FAILOVERS} rose by {counted} (two hubs)");
    found.check(counted == 2.0, || {
        format!("{FAILOVERS} rose by {counted} for one master change seen by two hubs")
    });
    still_routes(&mut found, &mut ctl, worker.client.take()).await;
    found.assert_none();
}
