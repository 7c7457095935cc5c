//! The Redis broker's publisher: one task that sends queued messages on
//! the shared command connection, in order, as few pipelines as possible.
//!
//! A plain message is a `PUBLISH`; a run of kept ones (history on) is one
//! call of the numbering script (`numbering.rs`, built in `batch.rs`),
//! which numbers, stores and publishes them in one step. Both go in the
//! same pipelines, in queue order, so a sender's order holds whichever
//! kind its messages are. The answer
//! (the script's: the message's position) tells the message's
//! confirmation, if it has one (docs/protocol.md section 10).
//!
//! On a cluster ([`Sharding`]) the messages are `SPUBLISH`es (and the
//! script publishes with `SPUBLISH`), and each batch is split by the master
//! that owns each channel's slot, in queue order: one pipeline per master,
//! sent on the publisher's own connection to that master ([`Masters`]), so
//! a sender's messages on one channel keep their order exactly as on a
//! single Redis. A message answered `MOVED`/`ASK` (its slot moved
//! since the slot map was read) asks for a fresh map and is sent again on
//! its own, where the cluster connection follows the redirection; and a
//! pipeline never leaves for one master while messages of one of its slots
//! are still on their way to another (the map changed in between), so a
//! retried message is not overtaken by a later one. A pipeline with kept
//! messages ends with `WAIT 1` (bounded) when the master has a replica:
//! Redis replicates asynchronously, and an acknowledgement (or `POST /v3/publish`'s
//! offset) should not name a message that a `kill -9` of the master
//! followed by its replica's promotion would lose. A message whose
//! pipeline was written but never answered (the connection broke, or the
//! answer came too late) may have been run: its confirmation says so
//! ([`BrokerError::Unconfirmed`]) rather than that it was not published.

mod batch;
mod masters;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use redis::aio::ConnectionLike;
use redis::Value;
use tokio::sync::mpsc;

use super::link::{Commands, NodeAddr, Publish, RedisLink};
use super::scripts::{is_noscript, Invoke, Keys};
use super::slots::{Slot, SlotMap};
use crate::broker::Confirm;
use crate::history::Retention;
use crate::metrics::{self, DropReason};
use crate::protocol::Encoded;
use batch::{pipeline, unconfirmed, Command};
use masters::Masters;

/// How often a refused publish is logged at most ([`refused`]).
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Pipelines awaiting Redis's answer at once.
const PIPELINES_IN_FLIGHT: usize = 16;
/// Messages per pipeline at most.
const PIPELINE_MAX: usize = 256;
/// How long a cluster pipeline with kept messages waits for a replica.
const REPLICA_WAIT_MS: u64 = 100;

/// One message on its way to Redis.
pub struct Outgoing {
    pub channel: String,
    pub msg: Encoded,
    /// `Some` when history keeps it.
    pub kept: Option<Kept>,
    /// Told Redis's answer (a kept message's position), or that it never
    /// came; dropped (not published) when the message could not be sent.
    pub confirm: Option<Confirm>,
}

/// What numbering a kept message needs beyond its channel and text.
pub struct Kept {
    pub keys: Keys,
    pub sender: String,
}

/// Publishes queued messages in order, with up to [`PIPELINES_IN_FLIGHT`]
/// pipelines awaiting Redis's answer at once: a message queued while a
/// pipeline is on its way goes out at once rather than a round trip later.
/// Order holds because each pipeline is handed to the one command
/// connection (first polled, in push order) before the next one is built.
pub async fn run(
    link: Arc<RedisLink>,
    mut queue: mpsc::Receiver<Outgoing>,
    retention: Retention,
    sharding: Option<Arc<SlotMap>>,
) {
    let mut in_flight = FuturesOrdered::new();
    let mut masters = Masters::default();
    // What each pipeline in flight carries, in the same order.
    let mut flights: VecDeque<Flight> = VecDeque::new();
    let mut batch = Vec::with_capacity(PIPELINE_MAX);
    loop {
        tokio::select! {
            biased;
            Some(sent) = in_flight.next(), if !in_flight.is_empty() => {
                flights.pop_front();
                finish(sent, &link, retention, &mut masters).await;
            }
            taken = queue.recv_many(&mut batch, PIPELINE_MAX), if in_flight.len() < PIPELINES_IN_FLIGHT => {
                if taken == 0 {
                    break;
                }
                let items = std::mem::replace(&mut batch, Vec::with_capacity(PIPELINE_MAX));
                match (link.command(), &sharding) {
                    (Some(conn), None) => {
                        flights.push_back(Flight::default());
                        in_flight.push_back(send(conn, items, retention, Way::Single));
                    }
                    (Some(conn), Some(map)) => {
                        for (master, items) in by_master(map, items) {
                            let flight = Flight::of(&master, &items);
                            // A slot's messages on their way to another
                            // master (the map changed meanwhile) land first.
                            while flights.iter().any(|f| f.crosses(&flight)) {
                                match in_flight.next().await {
                                    Some(sent) => {
                                        flights.pop_front();
                                        finish(sent, &link, retention, &mut masters).await;
                                    }
                                    None => break,
                                }
                            }
                            let direct = match &master {
                                Some(master) => match masters.get(&link, master).await {
                                    Some(direct) => Some(direct),
                                    None => {
                                        map.moved();
                                        count(Sent::failed(items.len()), &mut masters);
                                        continue;
                                    }
                                },
                                None => None,
                            };
                            flights.push_back(flight);
                            let way = Way::Sharded { master, direct, map: Arc::clone(map) };
                            in_flight.push_back(send(conn.clone(), items, retention, way));
                        }
                    }
                    (None, _) => count(Sent::failed(items.len()), &mut masters),
                }
            }
        }
    }
}

/// Where a pipeline goes.
#[derive(Clone)]
enum Way {
    /// The one Redis server.
    Single,
    /// One cluster master, over its own connection (`None`: the slot has
    /// no known master; the cluster connection routes by the first key).
    Sharded {
        master: Option<NodeAddr>,
        direct: Option<Commands>,
        map: Arc<SlotMap>,
    },
}

impl Way {
    /// Replicas a pipeline with kept messages waits for (`WAIT`) before
    /// its confirmations are told: on a cluster, one if the master has one.
    fn replicas_to_wait(&self, items: &[Outgoing]) -> usize {
        match self {
            Way::Sharded {
                master: Some(master),
                direct: Some(_),
                map,
            } if items.iter().any(|i| i.kept.is_some()) => map.replicas_of(master).min(1),
            _ => 0,
        }
    }

    fn publish(&self) -> Publish {
        match self {
            Way::Single => Publish::Classic,
            Way::Sharded { .. } => Publish::Sharded,
        }
    }
}

/// Where a pipeline in flight goes, and the slots of its messages.
#[derive(Default)]
struct Flight {
    master: Option<NodeAddr>,
    slots: HashSet<Slot>,
}

impl Flight {
    fn of(master: &Option<NodeAddr>, items: &[Outgoing]) -> Flight {
        Flight {
            master: master.clone(),
            slots: items.iter().map(|i| Slot::of(&i.channel)).collect(),
        }
    }

    /// Whether `next` could overtake this pipeline's messages of a slot:
    /// another connection, same slot. (On one connection, order holds.)
    fn crosses(&self, next: &Flight) -> bool {
        self.master != next.master && !self.slots.is_disjoint(&next.slots)
    }
}

/// Splits a batch by the master of each channel's slot, keeping queue
/// order within each master's part.
fn by_master(map: &SlotMap, items: Vec<Outgoing>) -> Vec<(Option<NodeAddr>, Vec<Outgoing>)> {
    let mut parts: Vec<(Option<NodeAddr>, Vec<Outgoing>)> = Vec::new();
    for item in items {
        let master = map.master_of(&item.channel);
        match parts.iter_mut().find(|(m, _)| *m == master) {
            Some((_, part)) => part.push(item),
            None => parts.push((master, vec![item])),
        }
    }
    for (_, part) in &mut parts {
        batch::by_slot(part);
    }
    parts
}

/// How many messages of a pipeline went out, and how many were dropped.
#[derive(Default)]
struct Sent {
    ok: u64,
    failed: u64,
    /// A master whose connection failed.
    broken: Option<NodeAddr>,
    /// Messages answered `MOVED`/`ASK`, to send again one by one.
    moved: Vec<Outgoing>,
    /// The connection failed as a dropped one does.
    suspect: bool,
}

impl Sent {
    fn failed(n: usize) -> Sent {
        Sent {
            failed: n as u64,
            ..Sent::default()
        }
    }
}

/// Settles a finished pipeline: sends its redirected messages again, one
/// at a time and in order (the cluster connection follows `MOVED`/`ASK`),
/// while nothing else is sent, then counts.
async fn finish(mut sent: Sent, link: &RedisLink, retention: Retention, masters: &mut Masters) {
    if sent.suspect {
        link.suspect();
    }
    let moved = std::mem::take(&mut sent.moved);
    for item in moved {
        let ok = match link.command() {
            Some(mut conn) => send_alone(&mut conn, item, retention).await,
            None => false,
        };
        if ok {
            sent.ok += 1;
        } else {
            sent.failed += 1;
        }
    }
    count(sent, masters);
}

fn count(sent: Sent, masters: &mut Masters) {
    if let Some(master) = &sent.broken {
        masters.forget(master);
    }
    if sent.ok > 0 {
        metrics::redis_published(sent.ok);
    }
    if sent.failed > 0 {
        metrics::dropped(DropReason::BrokerUnavailable, sent.failed);
    }
}

/// Sends one pipeline and settles every message's fate. A kept message
/// answered `NOSCRIPT` (the scripts were flushed, or a promoted replica
/// never had them) is sent once more with the script's source; the plain
/// messages of that pipeline went out, so only then may a kept message
/// come after a plain one queued behind it.
async fn send(mut conn: Commands, items: Vec<Outgoing>, retention: Retention, way: Way) -> Sent {
    let mut sent = Sent::default();
    let retry = send_once(&mut conn, items, retention, &way, Invoke::Sha, &mut sent).await;
    let (noscript, moved): (Vec<_>, Vec<_>) = retry.into_iter().partition(|r| r.noscript);
    if !moved.is_empty() {
        if let Way::Sharded { map, .. } = &way {
            map.moved();
        }
        // Sent again by the publisher's loop, in queue order, before any
        // later pipeline may overtake them.
        sent.moved = moved.into_iter().map(|r| r.item).collect();
    }
    if noscript.is_empty() {
        return sent;
    }
    let items = noscript.into_iter().map(|r| r.item).collect();
    let again = send_once(&mut conn, items, retention, &way, Invoke::Source, &mut sent).await;
    sent.failed += again.len() as u64;
    sent
}

/// A message to send again, and why.
struct Retry {
    item: Outgoing,
    /// `NOSCRIPT` (send the script's source); else `MOVED`/`ASK`.
    noscript: bool,
}

/// One round trip; returns the kept messages answered `NOSCRIPT` and, on
/// a cluster, the messages answered `MOVED`/`ASK`.
async fn send_once(
    conn: &mut Commands,
    items: Vec<Outgoing>,
    retention: Retention,
    way: &Way,
    invoke: Invoke,
    sent: &mut Sent,
) -> Vec<Retry> {
    let (mut pipe, commands) = pipeline(&items, retention, way.publish(), invoke, conn.lineage());
    let wait = way.replicas_to_wait(&items);
    if wait > 0 {
        pipe.cmd("WAIT").arg(wait).arg(REPLICA_WAIT_MS);
    }
    let count = commands.len() + usize::from(wait > 0);
    let replies = match round_trip(conn, &pipe, count, way).await {
        Ok(mut replies) if replies.len() == count => {
            // WAIT's answer (how many replicas caught up) changes nothing:
            // it only bounds how long the confirmations wait for them.
            replies.truncate(commands.len());
            replies
        }
        other => {
            sent.failed += items.len() as u64;
            // An answer of the wrong length: Redis ran something.
            if other.as_ref().map_or_else(unanswered, |_| true) {
                unconfirmed(items);
            }
            sent.suspect = other.is_err();
            if let Way::Sharded { map, master, .. } = way {
                // The master may be gone (a failover): read the map again.
                map.moved();
                sent.broken.clone_from(master);
            }
            return Vec::new();
        }
    };
    let redirected = matches!(
        way,
        Way::Sharded {
            master: Some(_),
            ..
        }
    );
    let mut retry = Vec::new();
    let mut items = items.into_iter();
    for (command, reply) in commands.into_iter().zip(replies) {
        let part: Vec<Outgoing> = items.by_ref().take(command.len).collect();
        // The server was demoted (a failover): probe now, so that nothing
        // more is written to it.
        sent.suspect |= is_readonly(&reply);
        let noscript = command.kept && is_noscript(&reply);
        if noscript || (redirected && is_moved(&reply)) {
            retry.extend(part.into_iter().map(|item| Retry { item, noscript }));
            continue;
        }
        let (ok, failed) = batch::settle(command, part, &reply);
        sent.ok += ok;
        sent.failed += failed;
    }
    retry
}

/// Sends one message as a command of its own, which the cluster
/// connection routes by its slot and follows through `MOVED`/`ASK`.
async fn send_alone(conn: &mut Commands, item: Outgoing, retention: Retention) -> bool {
    let mut reply = Err(redis::RedisError::from((
        redis::ErrorKind::ClientError,
        "unsent",
    )));
    for invoke in [Invoke::Sha, Invoke::Source] {
        let (pipe, _) = pipeline(
            std::slice::from_ref(&item),
            retention,
            Publish::Sharded,
            invoke,
            conn.lineage(),
        );
        let Some(cmd) = pipe.cmd_iter().next() else {
            return false;
        };
        reply = conn.req_packed_command(cmd).await;
        if !matches!(&reply, Err(e) if e.kind() == redis::ErrorKind::NoScriptError) {
            break;
        }
    }
    let command = Command {
        len: 1,
        kept: item.kept.is_some(),
    };
    match reply {
        Ok(reply) => batch::settle(command, vec![item], &reply).0 == 1,
        Err(e) => {
            tracing::debug!("a redirected publish failed: {e}");
            if unanswered(&e) {
                unconfirmed(vec![item]);
            }
            false
        }
    }
}

/// Whether `e` leaves it unknown if Redis ran the commands: they may have
/// been written before the connection broke, or run after the wait for
/// their answer ended.
fn unanswered(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout()
}

/// Says why Redis refused a publish (a `NOPERM` from an ACL that lacks a
/// command, `OOM`, …): at most once every [`REFUSAL_LOG_EVERY`], since a
/// refusal tends to come for every message.
pub(super) fn refused(code: &str, details: &str) {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let Ok(mut last) = LAST.lock() else {
        return;
    };
    if last.is_some_and(|at| at.elapsed() < REFUSAL_LOG_EVERY) {
        return;
    }
    *last = Some(std::time::Instant::now());
    tracing::warn!("Redis refused a publish: {code} {details}");
}

/// `READONLY`: the server is a replica now (a script's write refused
/// the same way says so in its details).
fn is_readonly(reply: &Value) -> bool {
    match reply {
        Value::ServerError(e) => {
            e.code() == "READONLY" || e.details().is_some_and(|d| d.contains("READONLY"))
        }
        _ => false,
    }
}

/// Sends a pipeline to its master (cluster) or to the one server.
async fn round_trip(
    conn: &mut Commands,
    pipe: &redis::Pipeline,
    count: usize,
    way: &Way,
) -> redis::RedisResult<Vec<Value>> {
    match way {
        Way::Sharded {
            direct: Some(direct),
            ..
        } => direct.clone().req_packed_commands(pipe, 0, count).await,
        _ => conn.req_packed_commands(pipe, 0, count).await,
    }
}

fn is_moved(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(e) if matches!(e.code(), "MOVED" | "ASK"))
}
