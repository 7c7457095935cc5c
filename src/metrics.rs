//! Every metric the hub exports: names, labels and buckets in one place
//! (DESIGN.md, Observability). Prefix `aether_`.
//!
//! Hot-path metrics are registered once into [`Handles`] so that recording
//! is an atomic add, not a registry lookup. Until [`install`] runs (unit
//! tests), recording does nothing.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::{MsgType, Target};

pub const CONNECTIONS_OPEN: &str = "aether_connections_open";
pub const CONNECTIONS_OPENED: &str = "aether_connections_opened_total";
pub const CONNECTIONS_CLOSED: &str = "aether_connections_closed_total";
pub const FRAMES_RECEIVED: &str = "aether_frames_received_total";
pub const MESSAGES_DELIVERED: &str = "aether_messages_delivered_total";
pub const MESSAGES_DROPPED: &str = "aether_messages_dropped_total";
pub const DISPATCH_SECONDS: &str = "aether_dispatch_seconds";
pub const FANOUT_SIZE: &str = "aether_fanout_size";
pub const REDIS_PUBLISHES: &str = "aether_redis_publishes_total";
pub const REDIS_RECEIVED: &str = "aether_redis_messages_received_total";
pub const REDIS_CHANNELS: &str = "aether_redis_channels_subscribed";
pub const REDIS_RECONNECTS: &str = "aether_redis_reconnects_total";
pub const REDIS_UP: &str = "aether_redis_up";
/// The command and pub/sub connections apart (label `connection`):
/// `/readyz` says why one is down.
pub const REDIS_CONNECTION_UP: &str = "aether_redis_connection_up";
/// Master changes this instance followed (Sentinel).
pub const REDIS_FAILOVERS: &str = "aether_redis_failovers_total";
pub const PUBSUB_LAG_SECONDS: &str = "aether_pubsub_lag_seconds";
pub const UPGRADES_REFUSED: &str = "aether_upgrades_refused_total";
pub const CONNECTIONS_MAX: &str = "aether_connections_max";
pub const RECOVERIES: &str = "aether_recoveries_total";
pub const MESSAGES_REPLAYED: &str = "aether_messages_replayed_total";
pub const GAP_REPAIRS: &str = "aether_gap_repairs_total";
pub const MESSAGES_REPAIRED: &str = "aether_messages_repaired_total";
/// Redis Cluster, per shard master (label `shard`: the master's
/// `host:port`; a cluster has at most a few dozen masters, and a failover
/// adds one address, so the label set stays small).
pub const REDIS_SHARD_UP: &str = "aether_redis_shard_up";
pub const REDIS_SHARD_CHANNELS: &str = "aether_redis_shard_channels_subscribed";
pub const REDIS_SHARD_RECONNECTS: &str = "aether_redis_shard_reconnects_total";
pub const REDIS_SHARD_FAILURES: &str = "aether_redis_shard_failures_total";
/// Tasks alive in the hub's tokio runtime, read when `/metrics` renders.
pub const TOKIO_TASKS_ALIVE: &str = "aether_tokio_tasks_alive";
/// Acknowledgements sent (docs/protocol.md section 10), by `status`.
pub const ACKS: &str = "aether_acks_total";
/// Operators' actions (docs/protocol.md section 11), by `route` and
/// `outcome`; never a credential or an id in a label.
pub const ADMIN_ACTIONS: &str = "aether_admin_actions_total";
/// Revocations this instance holds in force.
pub const REVOCATIONS: &str = "aether_revocations";
/// The statuses an acknowledgement may carry.
const ACK_STATUSES: [&str; 3] = ["ok", "failed", "unconfirmed"];

/// Why an upgrade was refused (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The instance is at `AETHER_MAX_CONNECTIONS` (503).
    Capacity,
    /// The client is at `AETHER_MAX_SOCKETS_PER_CLIENT` (429).
    ClientLimit,
    /// No valid credential (401).
    Unauthorized,
    /// A credential that does not cover the client or group, or a foreign
    /// origin (403).
    Forbidden,
    /// A malformed request: ids, upgrade headers (400).
    BadRequest,
    /// The hub cannot serve: Redis down, shutting down (503).
    Unavailable,
    /// Over the instance's accept rate, `AETHER_MAX_CONNECTS_PER_SEC`
    /// (503 with `Retry-After`).
    Rate,
}

impl Refused {
    /// In declaration order: a reason's handle is `ALL[reason as usize]`.
    const ALL: [Refused; 7] = [
        Self::Capacity,
        Self::ClientLimit,
        Self::Unauthorized,
        Self::Forbidden,
        Self::BadRequest,
        Self::Unavailable,
        Self::Rate,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Capacity => "capacity",
            Self::ClientLimit => "client_limit",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::BadRequest => "bad_request",
            Self::Unavailable => "unavailable",
            Self::Rate => "rate",
        }
    }
}

/// Why a message did not reach a socket (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The recipient's outbound queue was full (it is closed with 4008).
    SlowConsumer,
    /// The sender went over its rate limit (it is closed with 4029).
    RateLimited,
    /// The broker could not take the message (Redis down).
    BrokerUnavailable,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            Self::SlowConsumer => "slow_consumer",
            Self::RateLimited => "rate_limited",
            Self::BrokerUnavailable => "broker_unavailable",
        }
    }
}

struct Handles {
    open: Gauge,
    opened: Counter,
    delivered: Counter,
    slow_consumer: Counter,
    frames: [[Counter; 4]; 4],
    dispatch: Histogram,
    fanout: Histogram,
    redis_publishes: Counter,
    redis_received: Counter,
    rate_limited: Counter,
    broker_unavailable: Counter,
    pubsub_lag: Histogram,
    refused: [Counter; 7],
    /// Recoveries per route asked for: recovered, lost.
    recoveries: [Counter; 2],
    replayed: Counter,
    gap_repairs: Counter,
    repaired: Counter,
    /// By [`ACK_STATUSES`].
    acks: [Counter; 3],
}

static HANDLES: OnceLock<Handles> = OnceLock::new();
static EXPORTER: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1, 0.25, 0.5, 1.0,
];
/// Pub/sub lag crosses the network twice and includes clock skew between
/// hosts: it starts at tens of microseconds and may reach seconds.
const LAG_BUCKETS: &[f64] = &[
    2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
const FANOUT_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    25000.0, 100000.0,
];

/// Installs the process-wide recorder (once) and returns the handle that
/// renders `/metrics`.
pub fn install() -> PrometheusHandle {
    EXPORTER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(DISPATCH_SECONDS.into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(PUBSUB_LAG_SECONDS.into()), LAG_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(FANOUT_SIZE.into()), FANOUT_BUCKETS)
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Another recorder may already be set (an embedding program's):
            // then ours still renders, just empty.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            let _ = HANDLES.set(Handles::register());
            handle
        })
        .clone()
}

impl Handles {
    fn register() -> Self {
        let frames = MsgType::ALL.map(|m| {
            Target::ALL.map(
                |t| counter!(FRAMES_RECEIVED, "msg_type" => m.as_str(), "target" => t.as_str()),
            )
        });
        // Every drop reason is registered up front, so a dashboard shows a
        // zero rate rather than "no data" until the first drop.
        let dropped = |reason: DropReason| counter!(MESSAGES_DROPPED, "reason" => reason.label());
        Handles {
            open: gauge!(CONNECTIONS_OPEN),
            opened: counter!(CONNECTIONS_OPENED),
            delivered: counter!(MESSAGES_DELIVERED),
            slow_consumer: dropped(DropReason::SlowConsumer),
            rate_limited: dropped(DropReason::RateLimited),
            broker_unavailable: dropped(DropReason::BrokerUnavailable),
            frames,
            dispatch: histogram!(DISPATCH_SECONDS),
            fanout: histogram!(FANOUT_SIZE),
            redis_publishes: counter!(REDIS_PUBLISHES),
            redis_received: counter!(REDIS_RECEIVED),
            pubsub_lag: histogram!(PUBSUB_LAG_SECONDS),
            refused: Refused::ALL.map(|r| counter!(UPGRADES_REFUSED, "reason" => r.label())),
            recoveries: ["recovered", "lost"].map(|o| counter!(RECOVERIES, "outcome" => o)),
            replayed: counter!(MESSAGES_REPLAYED),
            gap_repairs: counter!(GAP_REPAIRS),
            repaired: counter!(MESSAGES_REPAIRED),
            acks: ACK_STATUSES.map(|s| counter!(ACKS, "status" => s)),
        }
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(CONNECTIONS_OPEN, "WebSocket connections open now");
    describe_counter!(CONNECTIONS_OPENED, "WebSocket connections accepted");
    describe_counter!(
        CONNECTIONS_CLOSED,
        "WebSocket connections closed, by close code"
    );
    describe_counter!(FRAMES_RECEIVED, "Valid frames received from clients");
    describe_counter!(MESSAGES_DELIVERED, "Messages queued to local sockets");
    describe_counter!(
        MESSAGES_DROPPED,
        "Messages that reached no socket, by reason"
    );
    describe_histogram!(
        DISPATCH_SECONDS,
        Unit::Seconds,
        "Time to fan one message out locally"
    );
    describe_histogram!(FANOUT_SIZE, "Local recipients of one message");
    describe_counter!(REDIS_PUBLISHES, "Messages published to Redis");
    describe_counter!(REDIS_RECEIVED, "Messages received from Redis pub/sub");
    describe_gauge!(
        REDIS_CHANNELS,
        "Redis channels this instance is subscribed to"
    );
    describe_counter!(
        REDIS_RECONNECTS,
        "Times the Redis connection was lost and rebuilt"
    );
    describe_gauge!(REDIS_UP, "1 while Redis is connected and answering probes");
    describe_counter!(
        UPGRADES_REFUSED,
        "WebSocket upgrades refused before the upgrade, by reason"
    );
    describe_gauge!(
        CONNECTIONS_MAX,
        "Sockets this instance admits at most (AETHER_MAX_CONNECTIONS)"
    );
    describe_counter!(
        RECOVERIES,
        "Routes a reconnecting socket asked to resume, by outcome (recovered or lost)"
    );
    describe_counter!(
        MESSAGES_REPLAYED,
        "Kept messages replayed to resuming sockets"
    );
    describe_counter!(
        GAP_REPAIRS,
        "Times this instance read missed messages from history after a pub/sub gap"
    );
    describe_counter!(
        MESSAGES_REPAIRED,
        "Messages delivered from history to fill a pub/sub gap"
    );
    describe_gauge!(
        REDIS_CONNECTION_UP,
        "1 while this instance's Redis command (connection=commands) or pub/sub (connection=pubsub) connection works; /readyz says why one is down"
    );
    describe_counter!(
        REDIS_FAILOVERS,
        "Times this instance moved its connections to a new Redis master (Sentinel failover)"
    );
    describe_gauge!(
        REDIS_SHARD_UP,
        "1 while this instance's pub/sub connection to a cluster shard master is open"
    );
    describe_gauge!(
        REDIS_SHARD_CHANNELS,
        "Sharded channels this instance has subscribed on a cluster shard master"
    );
    describe_counter!(
        REDIS_SHARD_RECONNECTS,
        "Times a shard's pub/sub connection was lost (probe, disconnect, slot moved) and rebuilt"
    );
    describe_counter!(
        REDIS_SHARD_FAILURES,
        "Attempts to connect or subscribe on a cluster shard master that failed"
    );
    describe_gauge!(
        TOKIO_TASKS_ALIVE,
        "Tasks alive in the hub's tokio runtime (one per socket's session, plus a few)"
    );
    describe_counter!(
        ACKS,
        "Acknowledgements sent to clients, by status (ok, failed, unconfirmed)"
    );
    describe_counter!(
        ADMIN_ACTIONS,
        "Operators' server API calls, by route (disconnect, revoke, info, history) and outcome (accepted, invalid, unauthorized, forbidden, unavailable)"
    );
    describe_gauge!(
        REVOCATIONS,
        "Token revocations this instance holds in force"
    );
    describe_histogram!(
        PUBSUB_LAG_SECONDS,
        Unit::Seconds,
        "Time from a message's sent_at to its arrival from Redis pub/sub"
    );
}

/// Sets the task gauge from the current runtime's count (a leak shows as
/// tasks growing while sockets do not); called as `/metrics` renders.
pub fn tokio_tasks() {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        gauge!(TOKIO_TASKS_ALIVE).set(runtime.metrics().num_alive_tasks() as f64);
    }
}

pub fn connection_opened() {
    if let Some(h) = HANDLES.get() {
        h.opened.increment(1);
        h.open.increment(1.0);
    }
}

/// `code` is the close code sent or received (1006 when the connection
/// dropped without one).
pub fn connection_closed(code: u16) {
    if let Some(h) = HANDLES.get() {
        h.open.decrement(1.0);
        counter!(CONNECTIONS_CLOSED, "code" => code.to_string()).increment(1);
    }
}

pub fn upgrade_refused(reason: Refused) {
    if let Some(h) = HANDLES.get() {
        h.refused[reason as usize].increment(1);
    }
}

pub fn connections_max(max: usize) {
    gauge!(CONNECTIONS_MAX).set(max as f64);
}

pub fn frame_received(msg_type: MsgType, target: Target) {
    if let Some(h) = HANDLES.get() {
        h.frames[msg_type as usize][target as usize].increment(1);
    }
}

pub fn dropped(reason: DropReason, count: u64) {
    if let Some(h) = HANDLES.get() {
        match reason {
            DropReason::SlowConsumer => h.slow_consumer.increment(count),
            DropReason::RateLimited => h.rate_limited.increment(count),
            DropReason::BrokerUnavailable => h.broker_unavailable.increment(count),
        }
    }
}

/// One dispatch: how many sockets got the message, how many overflowed
/// (they are being dropped as slow consumers), and how long it took.
pub fn dispatched(delivered: usize, overflowed: usize, took: Duration) {
    if let Some(h) = HANDLES.get() {
        h.delivered.increment(delivered as u64);
        if overflowed > 0 {
            h.slow_consumer.increment(overflowed as u64);
        }
        h.dispatch.record(took.as_secs_f64());
        h.fanout.record(delivered as f64);
    }
}

pub fn redis_published(count: u64) {
    if let Some(h) = HANDLES.get() {
        h.redis_publishes.increment(count);
    }
}

pub fn redis_received() {
    if let Some(h) = HANDLES.get() {
        h.redis_received.increment(1);
    }
}

/// A message sent at `sent` (its `sent_at`) arrived from Redis now; a
/// negative lag (clock skew) counts as zero.
pub fn pubsub_lag(sent: chrono::DateTime<chrono::FixedOffset>) {
    if let Some(h) = HANDLES.get() {
        let lag = chrono::Utc::now().fixed_offset() - sent;
        let seconds = lag.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
        h.pubsub_lag.record(seconds.max(0.0));
    }
}

/// One acknowledgement sent, with its status (one of "ok", "failed",
/// "unconfirmed").
pub fn acked(status: &str) {
    if let Some(h) = HANDLES.get() {
        if let Some(i) = ACK_STATUSES.iter().position(|s| *s == status) {
            h.acks[i].increment(1);
        }
    }
}

/// One route of a resuming socket: whether it recovered, and how many
/// messages its replay carried.
pub fn recovery(recovered: bool, replayed: usize) {
    if let Some(h) = HANDLES.get() {
        h.recoveries[usize::from(!recovered)].increment(1);
        h.replayed.increment(replayed as u64);
    }
}

/// A pub/sub gap filled from history with `messages` messages.
pub fn gap_repaired(messages: u64) {
    if let Some(h) = HANDLES.get() {
        h.gap_repairs.increment(1);
        h.repaired.increment(messages);
    }
}

/// The Redis series start at "down, nothing subscribed, no reconnects", so
/// a hub that never reaches Redis shows as down rather than as no data.
pub fn redis_link_created() {
    redis_up(false);
    redis_channels(0);
    counter!(REDIS_RECONNECTS).absolute(0);
    counter!(REDIS_FAILOVERS).increment(0);
    for connection in ["commands", "pubsub"] {
        redis_connection_up(connection, false);
    }
}

pub fn redis_connection_up(connection: &'static str, up: bool) {
    gauge!(REDIS_CONNECTION_UP, "connection" => connection).set(if up { 1.0 } else { 0.0 });
}

/// One call of an operators' route and how it ended (both labels are
/// from fixed sets).
pub fn admin_action(route: &'static str, outcome: &'static str) {
    counter!(ADMIN_ACTIONS, "route" => route, "outcome" => outcome).increment(1);
}

pub fn revocations(count: usize) {
    gauge!(REVOCATIONS).set(count as f64);
}

pub fn redis_failover() {
    counter!(REDIS_FAILOVERS).increment(1);
}

pub fn redis_channels(count: usize) {
    gauge!(REDIS_CHANNELS).set(count as f64);
}

pub fn redis_up(up: bool) {
    gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn redis_reconnect() {
    counter!(REDIS_RECONNECTS).increment(1);
}

/// One shard master's pub/sub connection opened (`up`) or closed, with
/// the channels it carries.
pub fn redis_shard(shard: &str, up: bool, channels: usize) {
    let label = [("shard", shard.to_owned())];
    gauge!(REDIS_SHARD_UP, &label).set(if up { 1.0 } else { 0.0 });
    gauge!(REDIS_SHARD_CHANNELS, &label).set(channels as f64);
}

/// A shard master's counters start at zero when the hub first connects to
/// it, so a healthy shard shows "0 reconnects" rather than no data.
pub fn redis_shard_opened(shard: &str) {
    counter!(REDIS_SHARD_RECONNECTS, "shard" => shard.to_owned()).increment(0);
    counter!(REDIS_SHARD_FAILURES, "shard" => shard.to_owned()).increment(0);
}

pub fn redis_shard_reconnect(shard: &str) {
    counter!(REDIS_SHARD_RECONNECTS, "shard" => shard.to_owned()).increment(1);
}

pub fn redis_shard_failure(shard: &str) {
    counter!(REDIS_SHARD_FAILURES, "shard" => shard.to_owned()).increment(1);
}
