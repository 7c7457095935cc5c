//! The harness of `tests/hostile.rs`: a group of healthy sockets that
//! keeps talking through a hub while an attack runs, and a watch on the
//! hub process's resources (`/proc/<pid>`: memory, descriptors, threads;
//! `/metrics`: sockets open) before, during and after it. The attacks
//! assert through it that healthy traffic all arrived in order and that
//! the hub gave back what the attack cost; latency is printed, never
//! asserted as a time. Also the attackers' shared tools: a busy sender
//! that floods the attack group, and connections that dawdle before the
//! upgrade.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::process::{spawn_hub, Running};
use super::raw::{Frame, RawSocket};
use super::{msg, Client, Event, Ws, TIMEOUT};

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

// ---------------------------------------------------------------------------
// Harness: the hub's resources
// ---------------------------------------------------------------------------

/// What the hub process holds, from `/proc/<pid>/` (its tasks are not
/// visible there; sockets are, as descriptors).
#[derive(Debug, Clone, Copy, Default)]
pub struct Resources {
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
}

impl Resources {
    pub fn of(pid: u32) -> Resources {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("the hub is running (/proc/<pid>/status)");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("/proc/<pid>/fd")
            .count() as u64;
        Resources {
            rss_kib: field("VmRSS:"),
            fds,
            threads: field("Threads:"),
        }
    }

    pub fn max(self, other: Resources) -> Resources {
        Resources {
            rss_kib: self.rss_kib.max(other.rss_kib),
            fds: self.fds.max(other.fds),
            threads: self.threads.max(other.threads),
        }
    }
}

/// What an attack may cost the hub while it lasts, and leave behind.
pub struct Bounds {
    /// Sockets the attack opens at once (each is one descriptor).
    pub attackers: u64,
    /// RSS growth over the baseline at the peak of the attack.
    pub peak_rss_mib: u64,
    /// RSS growth over the baseline once the attack is over. The allocator
    /// keeps some freed memory mapped, so this is not zero after a clean
    /// attack; what it catches is memory kept per frame (tens of thousands
    /// of frames per attack) or the bulk of the peak kept. A few KiB kept
    /// per socket do not show in RSS: they show in the descriptors and in
    /// `aether_connections_open`, checked exactly.
    pub after_rss_mib: u64,
}

/// Descriptors the hub may hold over its baseline once the attack is over
/// (an HTTP request in flight, a socket still in its close handshake): a
/// leaked socket per attacker breaks it from the 21st on.
pub const FD_SLACK: u64 = 20;

/// Threads the hub may add over its baseline: tokio's blocking pool, whose
/// idle threads stay 10 s. A thread per socket or per frame breaks it.
pub const THREAD_SLACK: u64 = 16;

/// Tasks the hub may hold over its baseline once the attack is over (a
/// request in flight, a socket still closing): a task leaked per attacker
/// breaks it from the 21st on.
pub const TASK_SLACK: f64 = 20.0;

const TASKS: &str = "aether_tokio_tasks_alive";

/// Samples the hub's resources from before an attack to after it.
pub struct Watch {
    pub pid: u32,
    pub baseline: Resources,
    /// The hub's tasks alive (`aether_tokio_tasks_alive`, from `/metrics`).
    pub tasks: f64,
    pub stop: Arc<AtomicBool>,
    pub sampler: JoinHandle<Resources>,
}

impl Watch {
    pub async fn start(hub: &Running) -> Watch {
        let pid = hub.child.id();
        let baseline = Resources::of(pid);
        let tasks = hub.metric(TASKS).await;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let sampler = tokio::spawn(async move {
            let mut peak = baseline;
            // Bounded: at most a minute of samples, every 20 ms.
            for _ in 0..3_000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                peak = peak.max(Resources::of(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        });
        Watch {
            pid,
            baseline,
            tasks,
            stop,
            sampler,
        }
    }

    /// Ends the watch once the attack is over and every attacker is gone:
    /// waits (bounded) for the hub to be back to `healthy` sockets, then
    /// asserts `bounds` and prints the figures.
    pub async fn end(self, hub: &Running, name: &str, healthy: &HealthyReport, bounds: Bounds) {
        let healthy = healthy.clients.len();
        self.stop.store(true, Ordering::Relaxed);
        let peak = self.sampler.await.expect("sampler");
        let base = self.baseline;
        // A closing socket may take the hub's 2 s close handshake to go.
        let deadline = Instant::now() + TIMEOUT;
        let (after, open, tasks) = loop {
            let after = Resources::of(self.pid);
            let open = hub.metric("aether_connections_open").await;
            let tasks = hub.metric(TASKS).await;
            let settled = open == healthy as f64
                && after.fds <= base.fds + FD_SLACK
                && tasks <= self.tasks + TASK_SLACK;
            if settled || Instant::now() > deadline {
                break (after, open, tasks);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mib = |kib: u64| kib as f64 / 1024.0;
        eprintln!(
            "[{name}] hub resources: baseline rss {:.1} MiB, fds {}, threads {} | \
             peak rss {:.1} MiB, fds {}, threads {} | after rss {:.1} MiB, fds {}, threads {} | \
             sockets open after: {open}, tasks {} before, {tasks} after",
            mib(base.rss_kib),
            base.fds,
            base.threads,
            mib(peak.rss_kib),
            peak.fds,
            peak.threads,
            mib(after.rss_kib),
            after.fds,
            after.threads,
            self.tasks,
        );
        assert!(self.tasks > 0.0, "the hub exports {TASKS}");
        assert!(
            tasks <= self.tasks + TASK_SLACK,
            "tasks leaked: {} before, {tasks} after",
            self.tasks
        );
        assert_eq!(
            open, healthy as f64,
            "aether_connections_open is back to the healthy sockets"
        );
        assert!(
            after.fds <= base.fds + FD_SLACK,
            "descriptors leaked: {} before, {} after",
            base.fds,
            after.fds
        );
        assert!(
            peak.fds <= base.fds + bounds.attackers + FD_SLACK,
            "more than one descriptor per attacker: {} before, {} at peak",
            base.fds,
            peak.fds
        );
        assert!(
            peak.threads <= base.threads + THREAD_SLACK,
            "threads grew with the attack: {} before, {} at peak",
            base.threads,
            peak.threads
        );
        assert!(
            peak.rss_kib <= base.rss_kib + bounds.peak_rss_mib * 1024,
            "the attack cost more than {} MiB at its peak",
            bounds.peak_rss_mib
        );
        assert!(
            after.rss_kib <= base.rss_kib + bounds.after_rss_mib * 1024,
            "the hub kept more than {} MiB after the attack",
            bounds.after_rss_mib
        );
        let healthz = hub.get("/healthz").await;
        assert_eq!(healthz.status, 200, "the hub is still serving");
    }
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

// ---------------------------------------------------------------------------
// Attackers' tools
// ---------------------------------------------------------------------------

/// A sender in the attack group sending 2 KiB group messages as fast as
/// the hub takes them. It reads what it is sent (presence events, pings),
/// so it is never a slow consumer itself, and being closed fails the test.
pub struct Busy {
    tx: SplitSink<Ws, Message>,
    reader: JoinHandle<()>,
    pub sent: usize,
}

/// What a flood of [`Busy::flood_until_dropped`] took.
pub struct Flooded {
    pub sent: usize,
    /// Slow consumers the hub dropped meanwhile (counted once per socket).
    pub dropped: f64,
    pub took: Duration,
    pub first_drop: Option<Instant>,
}

/// The hub's count of sockets dropped for a full queue (one per socket).
pub const DROPPED_SLOW: &str = r#"aether_messages_dropped_total{reason="slow_consumer"}"#;
pub const CLOSED_4008: &str = r#"aether_connections_closed_total{code="4008"}"#;

impl Busy {
    pub async fn start(hub: &Running) -> Busy {
        let (tx, mut rx) = connect(hub, "attack", "busy").await.ws.split();
        let reader = tokio::spawn(async move {
            while let Some(Ok(frame)) = rx.next().await {
                if let Message::Close(_) = frame {
                    panic!("the busy sender was closed: {frame:?}");
                }
            }
        });
        Busy {
            tx,
            reader,
            sent: 0,
        }
    }

    /// Sends one 2 KiB group message.
    pub async fn send_one(&mut self) {
        let blob = "x".repeat(2048);
        let m = msg("group", json!({"msg": blob, "payload": {"seq": self.sent}}));
        self.tx
            .send(Message::text(m.to_string()))
            .await
            .expect("the busy sender is never slowed to a stop");
        self.sent += 1;
    }

    /// Sends as fast as it can until the hub has dropped `slow` slow
    /// consumers: at most 10,000 messages or 20 s.
    pub async fn flood_until_dropped(&mut self, hub: &Running, slow: usize) -> Flooded {
        let before = hub.metric(DROPPED_SLOW).await;
        let started = Instant::now();
        let (mut dropped, mut first_drop) = (0.0, None);
        let mut sent = 0;
        while sent < 10_000 && started.elapsed() < Duration::from_secs(20) {
            self.send_one().await;
            sent += 1;
            if sent % 32 == 0 {
                dropped = hub.metric(DROPPED_SLOW).await - before;
                if dropped > 0.0 && first_drop.is_none() {
                    first_drop = Some(Instant::now());
                }
                if dropped >= slow as f64 {
                    break;
                }
            }
        }
        Flooded {
            sent,
            dropped,
            took: started.elapsed(),
            first_drop,
        }
    }

    /// Hangs up; fails if the hub closed the busy sender meanwhile.
    pub async fn stop(mut self) {
        if self.reader.is_finished() {
            self.reader.await.expect("the busy sender's reader");
        } else {
            self.reader.abort();
        }
        let _ = self.tx.close().await;
    }
}

/// Waits (bounded) until the hub holds `sockets` open sockets: attackers
/// that never read cannot tell when their upgrade is done.
pub async fn wait_for_sockets(hub: &Running, sockets: usize) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let open = hub.metric("aether_connections_open").await;
        if open == sockets as f64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the hub holds {open} sockets, not {sockets}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Raises the test process's open-file limit to at least `needed`, for
/// attacks of thousands of connections (the hub raises its own at start).
pub fn raise_open_files(needed: u64) {
    let limit = aether_hub::fdlimit::raise().unwrap_or(0);
    assert!(
        limit >= needed,
        "the open-file limit is {limit}: this attack needs {needed}"
    );
}

/// The kernel's cap on a listener's accept queue (`net.core.somaxconn`):
/// a burst of connects larger than it is partly dropped and retried
/// seconds later, whatever the hub does.
pub fn accept_queue_cap() -> usize {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(4096)
}

/// How long the hub keeps a connection that sends `drip` one byte a second
/// from now on (nothing when empty), until it hangs up: `None` if it still
/// holds it after `give_up`. Whatever the hub answers before hanging up is
/// read and ignored.
pub async fn held_for(mut stream: TcpStream, drip: &[u8], give_up: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut drip = drip.iter();
    let mut second = tokio::time::interval(Duration::from_secs(1));
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {}
            },
            _ = second.tick() => {
                if started.elapsed() > give_up {
                    return None;
                }
                let Some(&byte) = drip.next() else { continue };
                if stream.write_all(&[byte]).await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
}

/// `count` connections to the hub at once, each sending `drip` a byte a
/// second from its connect on: how long the hub held each (see
/// [`held_for`]).
pub async fn dawdle(
    hub: &Running,
    count: usize,
    drip: &str,
    give_up: Duration,
) -> Vec<Option<Duration>> {
    let dawdlers: Vec<_> = (0..count)
        .map(|_| {
            let (addr, drip) = (hub.addr, drip.to_owned());
            tokio::spawn(async move {
                let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
                    .await
                    .expect("connected in time")
                    .expect("connect");
                held_for(stream, drip.as_bytes(), give_up).await
            })
        })
        .collect();
    let mut held = Vec::with_capacity(count);
    for dawdler in dawdlers {
        held.push(dawdler.await.expect("a dawdler failed"));
    }
    held
}

/// The fewest, the median and the most of `times`.
pub fn spread(mut times: Vec<Duration>) -> (Duration, Duration, Duration) {
    times.sort();
    let last = times.len() - 1;
    (times[0], times[last / 2], times[last])
}
