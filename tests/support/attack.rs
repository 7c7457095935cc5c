//! The harness of the hostile tests (`tests/hostile_frames.rs`,
//! `tests/hostile_connections.rs`): a group of healthy sockets that
//! keeps talking through a hub while an attack runs, and a watch on the
//! hub process's resources (`/proc/<pid>`: memory, descriptors, threads;
//! `/metrics`: sockets open) before, during and after it. The attacks
//! assert through it that healthy traffic all arrived in order and that
//! the hub gave back what the attack cost; latency is printed, never
//! asserted as a time. Also the attackers' shared tools: a busy sender
//! that floods the attack group, and connections that dawdle before the
//! upgrade.
//!
//! Here: the healthy traffic, the [`Scene`] an attack runs in, and the
//! frame-level helpers; [`resources`] holds the watch on the hub process
//! and the [`Bounds`](resources::Bounds) an attack must stay within,
//! [`tools`] the busy sender and the connections that dawdle.

pub mod resources;
pub mod tools;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::process::{spawn_hub, Running};
use super::raw::{Frame, RawSocket};
use super::{msg, Client, Event, TIMEOUT};
use resources::{Bounds, Watch};

// ---------------------------------------------------------------------------
// Harness: healthy traffic
// ---------------------------------------------------------------------------

/// Healthy sockets in their group: one sender and the rest receivers.
pub const HEALTHY_SOCKETS: usize = 20;
pub const HEALTHY_SENDER: &str = "h-sender";
/// The sender's pace, and its bounds in count and in time.
pub const HEALTHY_EVERY: Duration = Duration::from_millis(10);
pub const HEALTHY_MAX_MESSAGES: usize = 2_000;
pub const HEALTHY_MAX_TIME: Duration = Duration::from_secs(30);
/// Sent whatever the attack's length, so every test has traffic to check.
pub const HEALTHY_MIN_MESSAGES: usize = 20;

/// The instant every latency is measured from (one process: one clock).
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// One group of [`HEALTHY_SOCKETS`] well-behaved sockets: a sender sends a
/// group message every [`HEALTHY_EVERY`] (its sequence number and send time
/// in the payload) until told to stop, and every receiver reads as it
/// comes.
pub struct Healthy {
    pub stop: Arc<AtomicBool>,
    pub total: watch::Sender<Option<usize>>,
    pub sender: JoinHandle<(Client, usize)>,
    pub receivers: Vec<JoinHandle<(Client, Vec<Duration>)>>,
}

pub struct HealthyReport {
    pub sent: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Kept open, so the hub's socket count can be checked against them.
    pub clients: Vec<Client>,
}

impl Healthy {
    pub async fn start(hub: &Running, group: &str) -> Healthy {
        epoch();
        let (total, total_rx) = watch::channel(None);
        let mut receivers = Vec::new();
        for i in 1..HEALTHY_SOCKETS {
            let client = connect(hub, group, &format!("h-recv-{i}")).await;
            receivers.push(tokio::spawn(receive(client, i, total_rx.clone())));
        }
        // Connected last: every receiver's routes are live before the first
        // message (the hub answers 101 only then).
        let client = connect(hub, group, HEALTHY_SENDER).await;
        // Else Nagle's algorithm holds a small message until the previous
        // one's ACK, which the hub's kernel may delay by 40 ms: the latency
        // measured would be the client's.
        if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = client.ws.get_ref() {
            tcp.set_nodelay(true).expect("TCP_NODELAY");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let sender = tokio::spawn(send(client, stop.clone()));
        Healthy {
            stop,
            total,
            sender,
            receivers,
        }
    }

    /// Stops the sender, then asserts that every receiver got every message
    /// in order; the latencies over all receivers.
    pub async fn finish(self) -> HealthyReport {
        self.stop.store(true, Ordering::Relaxed);
        let (sender, sent) = self.sender.await.expect("healthy sender");
        assert!(sent >= HEALTHY_MIN_MESSAGES, "healthy sender sent {sent}");
        self.total.send_replace(Some(sent));
        let mut clients = vec![sender];
        let mut latencies = Vec::new();
        for receiver in self.receivers {
            let (client, got) = receiver.await.expect("a healthy receiver failed");
            assert_eq!(got.len(), sent, "a healthy receiver lost messages");
            latencies.extend(got);
            clients.push(client);
        }
        latencies.sort();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        HealthyReport {
            sent,
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
            clients,
        }
    }
}

pub async fn send(mut client: Client, stop: Arc<AtomicBool>) -> (Client, usize) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(HEALTHY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    while seq < HEALTHY_MAX_MESSAGES && started.elapsed() < HEALTHY_MAX_TIME {
        if seq >= HEALTHY_MIN_MESSAGES && stop.load(Ordering::Relaxed) {
            break;
        }
        tick.tick().await;
        let payload = json!({"seq": seq, "t_us": now_us()});
        let send = client.send(msg("group", json!({"payload": payload})));
        tokio::time::timeout(TIMEOUT, send)
            .await
            .expect("the healthy sender is never held up for long");
        seq += 1;
    }
    (client, seq)
}

/// Reads the sender's messages, asserting their order, until it has all of
/// them once the total is known; each message's latency.
pub async fn receive(
    mut client: Client,
    index: usize,
    mut total: watch::Receiver<Option<usize>>,
) -> (Client, Vec<Duration>) {
    let mut latencies: Vec<Duration> = Vec::new();
    let deadline = tokio::time::Instant::now() + HEALTHY_MAX_TIME + TIMEOUT;
    loop {
        if let Some(total) = *total.borrow_and_update() {
            if latencies.len() >= total {
                return (client, latencies);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "healthy receiver {index} stalled after {} messages",
            latencies.len()
        );
        let event = tokio::select! {
            event = client.next_event(Duration::from_millis(200)) => event,
            _ = total.changed() => continue,
        };
        match event {
            Some(Event::Text(m)) if m["msg_type"] == "msg" && m["from_id"] == HEALTHY_SENDER => {
                let seq = m["payload"]["seq"].as_u64().expect("seq");
                assert_eq!(
                    seq as usize,
                    latencies.len(),
                    "healthy receiver {index}: out of order"
                );
                let sent = m["payload"]["t_us"].as_u64().expect("t_us");
                latencies.push(Duration::from_micros(now_us().saturating_sub(sent)));
            }
            // Presence events of the group.
            Some(Event::Text(_)) | None => {}
            Some(Event::Closed(code, reason)) => {
                panic!("healthy receiver {index} was closed: {code} {reason}")
            }
        }
    }
}

pub async fn connect(hub: &Running, group: &str, client: &str) -> Client {
    Client::connect(&hub.ws_url(group, client), &[])
        .await
        .unwrap_or_else(|e| panic!("connect {group}/{client}: {e}"))
}

pub fn report(name: &str, healthy: &HealthyReport) {
    eprintln!(
        "[{name}] healthy: {} messages to {} receivers, all in order; latency p50 {:?}, p99 {:?}, max {:?}",
        healthy.sent,
        HEALTHY_SOCKETS - 1,
        healthy.p50,
        healthy.p99,
        healthy.max
    );
}

/// The attacks run one at a time: two cores are shared by the tests, the
/// hub under attack and whatever else the machine runs, and two attacks at
/// once would blur each other's figures (and the 2 s the hub gives a
/// dropped socket to read its close frame).
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Reads the attacker's frames until its close frame, within [`TIMEOUT`]:
/// (texts before it, close code and reason), or `None` if the connection
/// ended without one.
pub async fn close_of(raw: &mut RawSocket) -> (usize, Option<(u16, String)>) {
    let read = async {
        let mut texts = 0;
        while let Some(frame) = raw.read_frame().await {
            match frame {
                Frame::Text(_) => texts += 1,
                Frame::Close(code, reason) => return (texts, Some((code, reason))),
                Frame::Ping | Frame::Other(_) => {}
            }
        }
        (texts, None)
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .expect("a close frame or the end within the timeout")
}

/// The next text frame the attacker receives (pings and pongs skipped).
pub async fn next_text(raw: &mut RawSocket) -> String {
    loop {
        match raw.read_frame().await {
            Some(Frame::Text(text)) => return text,
            Some(Frame::Close(code, reason)) => panic!("closed {code} {reason}"),
            Some(Frame::Ping | Frame::Other(_)) => {}
            None => panic!("connection ended"),
        }
    }
}

/// Asserts that `client` receives no `msg` within `wait` (presence events
/// of attackers joining and leaving are fine).
pub async fn expect_no_msg(client: &mut Client, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(event) =
        tokio::time::timeout_at(deadline, client.next_event(Duration::from_secs(60))).await
    {
        match event {
            Some(Event::Text(m)) if m["msg_type"] == "presence" => {}
            other => panic!("expected nothing but presence, got {other:?}"),
        }
    }
}

pub fn attack_path(client: &str) -> String {
    format!("/v3/ws/group/attack/client/{client}")
}

/// A V3 group message exactly `len` bytes long whose `msg` is `é`s (two
/// bytes each, so that fragments cut through characters) padded with `x`.
pub fn group_message_of_len(len: usize) -> String {
    let head = r#"{"msg_type":"msg","target":"group","msg":""#;
    let tail = r#""}"#;
    let room = len - head.len() - tail.len();
    let body = format!("{}{}", "é".repeat(room / 2), "x".repeat(room % 2));
    let text = format!("{head}{body}{tail}");
    assert_eq!(text.len(), len);
    text
}

/// One attack's stage: the hub (one attack at a time), its healthy group
/// talking, and the watch on its resources from before the attack.
pub struct Scene {
    _one: tokio::sync::MutexGuard<'static, ()>,
    pub hub: Running,
    healthy: Healthy,
    watch: Watch,
}

impl Scene {
    pub async fn start(env: &[(&str, &str)]) -> Scene {
        let one = one_at_a_time().await;
        let hub = spawn_hub(env).await;
        let healthy = Healthy::start(&hub, "healthy").await;
        let watch = Watch::start(&hub).await;
        Scene {
            _one: one,
            hub,
            healthy,
            watch,
        }
    }

    /// Checks that every healthy message arrived in order, prints its
    /// latency, and checks the hub gave back what the attack cost it;
    /// the hub stays up for what the test asks it after.
    pub async fn end(self, name: &str, bounds: Bounds) -> Running {
        let healthy = self.healthy.finish().await;
        report(name, &healthy);
        self.watch.end(&self.hub, name, &healthy, bounds).await;
        self.hub
    }
}
