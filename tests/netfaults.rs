//! Real network faults between hosts: Redis, two hubs and the clients each
//! on a host of their own (Linux network namespaces and veth links, see
//! `support/netns.rs`), with packets dropped or delayed in the network
//! between them rather than processes paused or connections killed.
//!
//! - A hub cut off from Redis (packets silently dropped) notices within its
//!   probe deadline, answers `/readyz` 503, keeps every socket, and after
//!   the heal resubscribes, rebuilds presence and repairs the gap from
//!   history; the other hub keeps working throughout.
//! - A slow, lossy link between the hubs and Redis: fan-out rate and p99
//!   (printed; `--nocapture`), and nothing kept is lost or reordered.
//! - Clients cut off from a hub: pings and the idle timeout close the dead
//!   sockets, and presence follows on the other hub.
//! - A hub cut off from Redis for longer than the presence TTL is swept
//!   out by the other hub (the group hears them leave); once back, its
//!   clients are present again and the group hears them join.
//!
//! Needs root (namespaces, iptables); elsewhere each test prints
//! `skipped: <why>` and passes. Durations are printed, never asserted:
//! every wait is bounded by the hub's own deadlines with a margin.

mod support;

use std::time::{Duration, Instant};

use aether_hub::broker::REDIS_TIMEOUT;
use futures_util::future::join_all;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use support::history::{cmd, next_message, offset};
use support::netns::{Host, Lab, RedisHost};
use support::process::Running;
use support::redis::smembers;
use support::{msg, Client, Event, TIMEOUT};

/// The hub PINGs Redis every second on both connections and gives each
/// PING `REDIS_TIMEOUT` (`PROBE_EVERY` in src/broker/redis/link/mod.rs,
/// `probe_both` in src/broker/redis/single.rs, private there).
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// The reconnect backoff's ceiling, before its ±50 % jitter
/// (`BACKOFF_MAX` in src/broker/redis/link/backoff.rs).
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a session waits for the close handshake before it drops the
/// TCP connection (`CLOSE_TIMEOUT` in src/session.rs).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Every bound below is the hub's own deadline times this, plus
/// [`SLACK`]: the machines running the tests are small and busy.
const MARGIN: u32 = 2;
const SLACK: Duration = Duration::from_secs(1);

const GROUP: &str = "line";
const QUIET: Duration = Duration::from_millis(300);

/// The longest a hub may take to notice that Redis went silent: a probe
/// that started just before the cut, the next one a period later, and
/// its PING's timeout.
fn notice_bound() -> Duration {
    (PROBE_EVERY + REDIS_TIMEOUT) * MARGIN + SLACK
}

/// The longest a hub may take to be back after the heal: a backoff sleep
/// at its ceiling with jitter, then an attempt (pub/sub connect, command
/// connect, script load, subscribe, each within the Redis timeout).
fn reconnect_bound() -> Duration {
    (BACKOFF_MAX.mul_f64(1.5) + REDIS_TIMEOUT * 4) * MARGIN + SLACK
}

/// The lab, or `None` after printing why this machine cannot have one.
fn lab(test: &str) -> Option<Lab> {
    match Lab::new() {
        Ok(lab) => Some(lab),
        Err(why) => {
            println!("{test}: skipped: {why}");
            None
        }
    }
}

/// Hub A and hub B against `redis`, with `env`.
async fn hubs(lab: &Lab, redis: &RedisHost, env: &[(&str, &str)]) -> (Running, Running) {
    let a = lab.start_hub(Host::HubA, redis, "hub-a", env).await;
    let b = lab.start_hub(Host::HubB, redis, "hub-b", env).await;
    (a, b)
}

async fn connect(hub: &Running, group: &str, client: &str) -> Client {
    Client::connect(&hub.ws_url(group, client), &[])
        .await
        .unwrap_or_else(|e| panic!("connect {group}/{client} to {}: {e}", hub.addr))
}

async fn readyz(hub: &Running) -> u16 {
    hub.get("/readyz").await.status
}

/// Polls `hub`'s `/readyz` until it answers `status`, for at most
/// `within`, checking on every round that `other` stays ready; returns
/// how long it took.
async fn until_readyz(hub: &Running, status: u16, within: Duration, other: &Running) -> Duration {
    let start = Instant::now();
    loop {
        if readyz(hub).await == status {
            return start.elapsed();
        }
        assert_eq!(readyz(other).await, 200, "the other hub stays ready");
        assert!(
            start.elapsed() < within,
            "/readyz of {} did not answer {status} within {within:?}",
            hub.addr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next presence event's payload on `c` (other messages skipped),
/// within `within`.
async fn presence_event(c: &mut Client, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_event(left).await {
            Some(Event::Text(m)) if m["msg_type"] == "presence" => return m["payload"].clone(),
            Some(Event::Text(_)) => continue,
            Some(Event::Closed(code, why)) => panic!("socket closed {code} ({why})"),
            None => panic!("no presence event within {within:?}"),
        }
    }
}

fn presence(event: &str, client: &str) -> Value {
    json!({"event": event, "client_id": client})
}

/// The members `hub` reports for the group over HTTP.
async fn members(hub: &Running) -> Value {
    let answer = hub.get(&format!("/v3/groups/{GROUP}/presence")).await;
    assert_eq!(answer.status, 200, "presence: {}", answer.body);
    serde_json::from_str::<Value>(&answer.body).expect("presence JSON")["members"].clone()
}

/// Waits (bounded) until `hub` reports exactly `expected` as the group.
async fn until_members(hub: &Running, expected: &[&str], within: Duration) {
    let start = Instant::now();
    while members(hub).await != json!(expected) {
        assert!(
            start.elapsed() < within,
            "presence never became {expected:?}: {}",
            members(hub).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whatever reached `c` within `wait`: a close frame fails the test.
async fn assert_open(c: &mut Client, who: &str, wait: Duration) {
    let deadline = Instant::now() + wait;
    while let Some(event) = c
        .next_event(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        if let Event::Closed(code, why) = event {
            panic!("{who} was closed during the partition: {code} ({why})");
        }
    }
}

/// Reads `c` until offset `last`, asserting that every kept message
/// from `first` on comes once, in order, in `epoch`.
async fn consecutive(c: &mut Client, first: u64, last: u64, epoch: &Value) {
    for expected in first..=last {
        let m = next_message(c).await;
        assert_eq!(offset(&m), expected, "every kept message once, in order");
        assert_eq!(&m["epoch"], epoch, "one epoch");
        assert_eq!(m["cmd"], format!("step-{expected}"));
    }
}

#[tokio::test]
async fn a_hub_cut_off_from_redis_keeps_its_sockets_and_repairs_the_gap_after_the_heal() {
    let Some(lab) = lab("redis partition") else {
        return;
    };
    let redis = lab.start_redis();
    let (a, b) = hubs(&lab, &redis, &[("AETHER_HISTORY_SIZE", "10000")]).await;
    let mut planner = connect(&b, GROUP, "planner").await;
    let mut watcher = connect(&b, GROUP, "watcher").await;
    let mut w1 = connect(&a, GROUP, "w1").await;
    let mut w2 = connect(&a, GROUP, "w2").await;
    let leaver = connect(&a, GROUP, "leaver").await;
    // A kept message on A's routes before the cut: the repair starts
    // from the last offset A delivered.
    planner.send(cmd(1)).await;
    let epoch = next_message(&mut w1).await["epoch"].clone();
    for c in [&mut w2, &mut watcher] {
        assert_eq!(offset(&next_message(c).await), 1);
    }

    let cut = lab.cut(Host::HubA, Host::Redis);
    let noticed = until_readyz(&a, 503, notice_bound(), &b).await;
    let refused = upgrade_status(&a, "late").await;
    assert_eq!(refused, 503, "a hub without Redis takes no new sockets");
    // One of A's clients leaves while A cannot tell Redis; another sends
    // (dropped, counted) and is not disconnected for it.
    assert_eq!(leaver.close().await, 1000);
    w1.send(msg("group", json!({"msg": "sent into the partition"})))
        .await;
    // B keeps working: the planner's commands reach the watcher live.
    let last = 41;
    for n in 2..=last {
        planner.send(cmd(n)).await;
        let m = next_message(&mut watcher).await;
        assert_eq!((offset(&m), &m["epoch"]), (n, &epoch));
    }
    assert_eq!(readyz(&b).await, 200);
    assert_open(&mut w1, "w1", QUIET).await;
    assert_open(&mut w2, "w2", Duration::from_millis(50)).await;

    let healed = Instant::now();
    cut.heal();
    let back = until_readyz(&a, 200, reconnect_bound(), &b).await;
    // What B numbered while A was away, in order, before anything newer.
    consecutive(&mut w1, 2, last, &epoch).await;
    let repaired = healed.elapsed();
    consecutive(&mut w2, 2, last, &epoch).await;
    planner.send(cmd(last + 1)).await;
    consecutive(&mut w1, last + 1, last + 1, &epoch).await;

    // Presence rebuilt: the leave A could not announce is announced now.
    let left = presence_event(&mut watcher, reconnect_bound()).await;
    assert_eq!(left, presence("leave", "leaver"));
    until_members(&b, &["planner", "w1", "w2", "watcher"], TIMEOUT).await;
    assert_eq!(members(&a).await, json!(["planner", "w1", "w2", "watcher"]));
    // A publishes again.
    w1.send(msg("group", json!({"msg": "back"}))).await;
    loop {
        let m = next_message(&mut watcher).await;
        if m["msg"] == "back" {
            break;
        }
        assert_eq!(
            m["cmd"],
            format!("step-{}", last + 1),
            "only the newest command"
        );
    }
    assert_eq!(
        a.metric("aether_connections_open").await,
        2.0,
        "no socket dropped"
    );
    assert!(a.metric("aether_redis_reconnects_total").await >= 1.0);
    assert!(a.metric("aether_gap_repairs_total").await >= 1.0);
    assert_eq!(b.metric("aether_redis_reconnects_total").await, 0.0);
    println!(
        "redis partition: /readyz 503 after {noticed:?} (probe deadline {:?}); \
         after the heal ready in {back:?}, gap of {} messages repaired in {repaired:?}",
        PROBE_EVERY + REDIS_TIMEOUT,
        last - 1
    );
}

/// The HTTP status of an upgrade attempt of `client` to `hub` (101 when
/// accepted).
async fn upgrade_status(hub: &Running, client: &str) -> u16 {
    match Client::connect(&hub.ws_url(GROUP, client), &[]).await {
        Ok(c) => {
            c.close().await;
            101
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("upgrade of {client}: {e}"),
    }
}

#[tokio::test]
async fn clients_cut_off_from_a_hub_are_closed_by_the_idle_timeout_and_leave_presence() {
    let Some(lab) = lab("client partition") else {
        return;
    };
    let redis = lab.start_redis();
    let idle = Duration::from_secs(3);
    let ping = Duration::from_secs(1);
    let env = [
        ("AETHER_IDLE_TIMEOUT_SECS", "3"),
        ("AETHER_PING_INTERVAL_SECS", "1"),
    ];
    // Only A's sockets are under test: B keeps the default idle timeout,
    // so its sockets stay however long the test leaves them unread.
    let a = lab.start_hub(Host::HubA, &redis, "hub-a", &env).await;
    let b = lab.start_hub(Host::HubB, &redis, "hub-b", &[]).await;
    let mut watcher = connect(&b, GROUP, "watcher").await;
    let _shared_b = connect(&b, GROUP, "shared").await;
    assert_eq!(
        presence_event(&mut watcher, TIMEOUT).await,
        presence("join", "shared")
    );
    let w1 = heartbeating(connect(&a, GROUP, "w1").await);
    assert_eq!(
        presence_event(&mut watcher, TIMEOUT).await,
        presence("join", "w1")
    );
    let shared_a = heartbeating(connect(&a, GROUP, "shared").await);
    assert_eq!(members(&b).await, json!(["shared", "w1", "watcher"]));
    // Clients that answer pings stay, past the idle timeout.
    watcher.expect_silence(idle + idle / 2).await;

    let cut = lab.cut(Host::Clients, Host::HubA);
    let start = Instant::now();
    // Idle for the timeout (checked on a tick of a quarter of it), then
    // the close handshake's wait, then the leave through Redis.
    let bound = (idle + idle / 4 + ping + CLOSE_TIMEOUT) * MARGIN + SLACK;
    let left = presence_event(&mut watcher, bound).await;
    let closed_after = start.elapsed();
    assert_eq!(left, presence("leave", "w1"), "shared is still held by B");
    assert_eq!(members(&b).await, json!(["shared", "watcher"]));
    watcher.expect_silence(QUIET).await;

    cut.heal();
    // The clients' ends learn it with their next heartbeat: the hub's
    // close frame, still being retransmitted, or a reset.
    let mut codes = Vec::new();
    for client in [w1, shared_a] {
        let ended = tokio::time::timeout(TIMEOUT, client).await;
        codes.push(
            ended
                .expect("a cut-off socket ends after the heal")
                .expect("client task"),
        );
    }
    let mut w1 = connect(&a, GROUP, "w1").await;
    assert_eq!(
        presence_event(&mut watcher, TIMEOUT).await,
        presence("join", "w1")
    );
    w1.send(msg("group", json!({"msg": "back"}))).await;
    assert_eq!(next_message(&mut watcher).await["msg"], "back");
    assert_eq!(members(&a).await, json!(["shared", "w1", "watcher"]));
    let closed_idle = a
        .metric(r#"aether_connections_closed_total{code="4408"}"#)
        .await;
    assert_eq!(closed_idle, 2.0, "both cut-off sockets closed as idle");
    assert_eq!(a.metric("aether_connections_open").await, 1.0);
    println!(
        "client partition: leave seen on the other hub {closed_after:?} after the cut \
         (idle timeout {idle:?}, pings every {ping:?}); the clients' ends closed with {codes:?} after the heal"
    );
}

/// A client as a real one behaves: it keeps reading (so it answers the
/// hub's pings) and sends a heartbeat every half second. The task ends
/// with the socket, returning its close code (1006 for a reset).
fn heartbeating(mut c: Client) -> tokio::task::JoinHandle<u16> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let heartbeat = json!({"msg_type": "heartbeat", "target": "echo"}).to_string();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                frame = c.ws.next() => match frame {
                    Some(Ok(Message::Close(frame))) => {
                        return frame.map_or(1005, |f| u16::from(f.code));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return 1006,
                },
                // An error here (reset) shows on the next read.
                _ = tick.tick() => {
                    let _ = c.ws.send(Message::text(heartbeat.clone())).await;
                }
            }
        }
    })
}

#[tokio::test]
async fn a_hub_cut_off_longer_than_the_presence_ttl_is_swept_and_comes_back() {
    let Some(lab) = lab("long redis partition") else {
        return;
    };
    let redis = lab.start_redis();
    let ttl = Duration::from_secs(2);
    let (a, b) = hubs(&lab, &redis, &[("AETHER_PRESENCE_TTL_SECS", "2")]).await;
    let mut watcher = connect(&b, GROUP, "watcher").await;
    let mut w1 = connect(&a, GROUP, "w1").await;
    assert_eq!(
        presence_event(&mut watcher, TIMEOUT).await,
        presence("join", "w1")
    );

    let cut = lab.cut(Host::HubA, Host::Redis);
    let start = Instant::now();
    // B sweeps A once A's liveness record expires: within the TTL and a
    // third (docs/redis.md, "How the hub uses Redis").
    let left = presence_event(&mut watcher, (ttl + ttl / 3) * MARGIN + SLACK).await;
    let swept_after = start.elapsed();
    assert_eq!(left, presence("leave", "w1"));
    assert_eq!(members(&b).await, json!(["watcher"]));
    until_readyz(&a, 503, notice_bound(), &b).await;
    assert_open(&mut w1, "w1", QUIET).await;

    cut.heal();
    until_readyz(&a, 200, reconnect_bound(), &b).await;
    let mut conn = redis.client().await;
    let key = format!("ws:presence:group:{GROUP}");
    let start = Instant::now();
    while smembers(&mut conn, &key).await != ["w1", "watcher"] {
        assert!(start.elapsed() < TIMEOUT, "A's clients never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w1.send(msg("group", json!({"msg": "back"}))).await;
    assert_eq!(next_message(&mut watcher).await["msg"], "back");
    println!(
        "long redis partition: B swept A's clients {swept_after:?} after the cut (TTL {ttl:?})"
    );
}

/// The group was told `w1` left when B swept A; when A brings `w1` back,
/// the group must be told it joined, or its members keep believing `w1`
/// is gone while the presence SET says otherwise.
#[tokio::test]
async fn a_client_swept_during_a_long_partition_is_announced_again_after_the_heal() {
    let Some(lab) = lab("rejoin after a sweep") else {
        return;
    };
    let redis = lab.start_redis();
    let ttl = Duration::from_secs(2);
    let (a, b) = hubs(&lab, &redis, &[("AETHER_PRESENCE_TTL_SECS", "2")]).await;
    let mut watcher = connect(&b, GROUP, "watcher").await;
    let _w1 = connect(&a, GROUP, "w1").await;
    assert_eq!(
        presence_event(&mut watcher, TIMEOUT).await,
        presence("join", "w1")
    );

    let cut = lab.cut(Host::HubA, Host::Redis);
    let left = presence_event(&mut watcher, (ttl + ttl / 3) * MARGIN + SLACK).await;
    assert_eq!(left, presence("leave", "w1"));
    cut.heal();
    until_readyz(&a, 200, reconnect_bound(), &b).await;
    until_members(&b, &["w1", "watcher"], TIMEOUT).await;
    let back = presence_event(&mut watcher, TIMEOUT).await;
    assert_eq!(back, presence("join", "w1"));
}

/// One way of the impaired link (a round trip crosses it twice).
const ONE_WAY_DELAY: Duration = Duration::from_millis(50);
/// Loss on each way of the impaired link.
const LOSS: f64 = 0.01;

#[tokio::test]
async fn a_slow_lossy_link_to_redis_delays_but_loses_nothing() {
    let Some(lab) = lab("slow lossy link") else {
        return;
    };
    let redis = lab.start_redis();
    let (a, b) = hubs(&lab, &redis, &[("AETHER_HISTORY_SIZE", "10000")]).await;
    let clean = Run::measure(&a, &b, "clean").await;
    let rtt_clean = redis_rtt(&redis).await;
    let impairment = match lab.impair(Host::Redis, ONE_WAY_DELAY, LOSS) {
        Ok(impairment) => impairment,
        Err(why) => {
            println!("slow lossy link: skipped: {why}");
            return;
        }
    };
    let rtt = redis_rtt(&redis).await;
    assert!(rtt >= ONE_WAY_DELAY * 2, "the delay is in place: {rtt:?}");
    let slow = Run::measure(&a, &b, "slow").await;
    drop(impairment);
    assert_eq!(readyz(&a).await, 200);
    println!(
        "slow lossy link: Redis round trip {rtt_clean:?} clean, {rtt:?} impaired \
         ({ONE_WAY_DELAY:?} each way, {:.1} % loss each way)",
        LOSS * 100.0
    );
    clean.print("clean link");
    slow.print("impaired link");
    println!(
        "slow lossy link: Redis reconnects over the test: hub A {}, hub B {}",
        a.metric("aether_redis_reconnects_total").await,
        b.metric("aether_redis_reconnects_total").await
    );
}

/// The median of ten PINGs from the clients' host to Redis.
async fn redis_rtt(redis: &RedisHost) -> Duration {
    let mut conn = redis.client().await;
    let mut rtts = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let ping = redis::cmd("PING");
        tokio::time::timeout(TIMEOUT, ping.query_async::<String>(&mut conn))
            .await
            .expect("PING answered in time")
            .expect("PING");
        rtts.push(start.elapsed());
    }
    rtts.sort();
    rtts[rtts.len() / 2]
}

/// Groups and subscribers of the paced phase (each group's subscribers
/// alternate between the hubs, and so do the publishers).
const PACED_GROUPS: usize = 4;
const PACED_SUBSCRIBERS: usize = 10;
const PACED_MESSAGES: u64 = 100;
const PACED_EVERY: Duration = Duration::from_millis(40);
/// The burst phase: one group, a publisher on A sending as fast as it can.
const BURST_SUBSCRIBERS: usize = 20;
const BURST_MESSAGES: u64 = 2000;

/// What one run measured.
struct Run {
    /// Publish-to-delivery latency of the paced phase, µs.
    latency: Histogram<u64>,
    /// Deliveries per second of the burst phase.
    fanout: f64,
    burst_took: Duration,
}

impl Run {
    async fn measure(a: &Running, b: &Running, tag: &str) -> Run {
        let latency = paced(a, b, tag).await;
        let (fanout, burst_took) = burst(a, b, tag).await;
        Run {
            latency,
            fanout,
            burst_took,
        }
    }

    fn print(&self, what: &str) {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "slow lossy link: {what}: {PACED_GROUPS} groups x {PACED_SUBSCRIBERS} subscribers x \
             {PACED_MESSAGES} messages every {PACED_EVERY:?}: latency p50 {:.1} ms, p99 {:.1} ms, \
             max {:.1} ms ({} deliveries); burst of {BURST_MESSAGES} to {BURST_SUBSCRIBERS}: \
             {:.0} deliveries/s ({:?})",
            ms(0.5),
            ms(0.99),
            ms(1.0),
            self.latency.len(),
            self.fanout,
            self.burst_took
        );
    }
}

/// Microseconds since the first call: the clock publishers stamp and
/// subscribers read (one process).
fn now_us() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// `n` subscribers of `group`, alternating between the hubs.
async fn subscribers(hubs: [&Running; 2], group: &str, n: usize) -> Vec<Client> {
    join_all((0..n).map(|i| async move {
        let name = format!("s{i}");
        connect(hubs[i % 2], group, &name).await
    }))
    .await
}

/// Reads `m` kept messages on `c`, each once and in order; returns the
/// latency of each (from the stamp in its payload) and when the last came.
fn receive(mut c: Client, m: u64) -> tokio::task::JoinHandle<(Histogram<u64>, Instant)> {
    tokio::spawn(async move {
        let mut latency = Histogram::new(3).expect("histogram");
        let mut epoch = None;
        for expected in 1..=m {
            let got = next_message(&mut c).await;
            assert_eq!(offset(&got), expected, "every kept message once, in order");
            assert_eq!(
                epoch.get_or_insert_with(|| got["epoch"].clone()),
                &got["epoch"]
            );
            let sent = got["payload"]["t"].as_u64().expect("stamp");
            latency
                .record(now_us().saturating_sub(sent))
                .expect("record");
        }
        (latency, Instant::now())
    })
}

fn stamped(n: u64) -> Value {
    msg(
        "group",
        json!({"cmd": format!("step-{n}"), "payload": {"t": now_us()}}),
    )
}

/// Paced group commands: every subscriber gets every one, in order.
async fn paced(a: &Running, b: &Running, tag: &str) -> Histogram<u64> {
    let mut receivers = Vec::new();
    let mut publishers = Vec::new();
    for g in 0..PACED_GROUPS {
        let group = format!("{tag}-paced-{g}");
        let hubs = if g % 2 == 0 { [a, b] } else { [b, a] };
        for c in subscribers(hubs, &group, PACED_SUBSCRIBERS).await {
            receivers.push(receive(c, PACED_MESSAGES));
        }
        let publisher = connect(hubs[0], &group, "publisher").await;
        publishers.push(tokio::spawn(publish_every(publisher, PACED_EVERY)));
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    let mut latency = Histogram::new(3).expect("histogram");
    for r in receivers {
        latency.add(r.await.expect("subscriber").0).expect("merge");
    }
    latency
}

async fn publish_every(mut publisher: Client, every: Duration) {
    let mut tick = tokio::time::interval(every);
    for n in 1..=PACED_MESSAGES {
        tick.tick().await;
        publisher.send(stamped(n)).await;
    }
}

/// A burst as fast as one publisher sends it; deliveries per second from
/// the first send to the last delivery.
async fn burst(a: &Running, b: &Running, tag: &str) -> (f64, Duration) {
    let group = format!("{tag}-burst");
    let subs = subscribers([a, b], &group, BURST_SUBSCRIBERS).await;
    let mut publisher = connect(a, &group, "publisher").await;
    let start = Instant::now();
    let receivers: Vec<_> = subs
        .into_iter()
        .map(|c| receive(c, BURST_MESSAGES))
        .collect();
    for n in 1..=BURST_MESSAGES {
        publisher.send(stamped(n)).await;
    }
    let mut last = start;
    for r in receivers {
        last = last.max(r.await.expect("subscriber").1);
    }
    let took = last - start;
    let deliveries = BURST_MESSAGES as f64 * BURST_SUBSCRIBERS as f64;
    (deliveries / took.as_secs_f64(), took)
}
