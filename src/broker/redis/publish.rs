//! The Redis broker's publisher: one task that sends queued messages on
//! the shared command connection, in order, as few pipelines as possible.
//!
//! A plain message is a `PUBLISH`; a kept one (history on) is an `EVALSHA`
//! of the numbering script (`history/redis.rs`), which numbers, stores and
//! publishes it in one step. Both go in the same pipelines, in queue order,
//! so a sender's order holds whichever kind its messages are. The script's
//! answer resolves the message's receipt, if it has one.

use std::sync::Arc;

use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use crate::history::redis::{self as history, Keys};
use crate::history::{Epoch, Position, Retention};
use crate::metrics::{self, DropReason};
use crate::protocol::Encoded;
use crate::redis_link::RedisLink;

/// Pipelines awaiting Redis's answer at once.
const PIPELINES_IN_FLIGHT: usize = 16;
/// Messages per pipeline at most.
const PIPELINE_MAX: usize = 256;

/// One message on its way to Redis.
pub struct Outgoing {
    pub channel: String,
    pub msg: Encoded,
    /// `Some` when history keeps it.
    pub kept: Option<Kept>,
}

/// What numbering a kept message needs beyond its channel and text.
pub struct Kept {
    pub keys: Keys,
    pub sender: String,
    /// Told the message's position; dropped (the receiver sees an error)
    /// when the message could not be numbered.
    pub receipt: Option<oneshot::Sender<Position>>,
}

/// Publishes queued messages in order, with up to [`PIPELINES_IN_FLIGHT`]
/// pipelines awaiting Redis's answer at once: a message queued while a
/// pipeline is on its way goes out at once rather than a round trip later.
/// Order holds because each pipeline is handed to the one command
/// connection (first polled, in push order) before the next one is built.
pub async fn run(link: Arc<RedisLink>, mut queue: mpsc::Receiver<Outgoing>, retention: Retention) {
    let mut in_flight = FuturesOrdered::new();
    let mut batch = Vec::with_capacity(PIPELINE_MAX);
    loop {
        tokio::select! {
            biased;
            Some(sent) = in_flight.next(), if !in_flight.is_empty() => count(sent),
            taken = queue.recv_many(&mut batch, PIPELINE_MAX), if in_flight.len() < PIPELINES_IN_FLIGHT => {
                if taken == 0 {
                    break;
                }
                let items = std::mem::replace(&mut batch, Vec::with_capacity(PIPELINE_MAX));
                match link.command() {
                    Some(conn) => in_flight.push_back(send(conn, items, retention)),
                    None => count(Sent { ok: 0, failed: items.len() as u64 }),
                }
            }
        }
    }
}

/// How many messages of a pipeline went out, and how many were dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sent {
    ok: u64,
    failed: u64,
}

fn count(sent: Sent) {
    if sent.ok > 0 {
        metrics::redis_published(sent.ok);
    }
    if sent.failed > 0 {
        metrics::dropped(DropReason::BrokerUnavailable, sent.failed);
    }
}

/// Sends one pipeline and settles every message's fate. A kept message
/// answered `NOSCRIPT` (the scripts were flushed) is sent once more after
/// reloading the scripts; the plain messages of that pipeline went out, so
/// only then may a kept message come after a plain one queued behind it.
async fn send(mut conn: MultiplexedConnection, items: Vec<Outgoing>, retention: Retention) -> Sent {
    let mut sent = Sent::default();
    let retry = send_once(&mut conn, items, retention, &mut sent).await;
    if retry.is_empty() {
        return sent;
    }
    if history::load(&mut conn).await.is_err() {
        sent.failed += retry.len() as u64;
        return sent;
    }
    let again = send_once(&mut conn, retry, retention, &mut sent).await;
    sent.failed += again.len() as u64;
    sent
}

/// One round trip; returns the kept messages answered `NOSCRIPT`.
async fn send_once(
    conn: &mut MultiplexedConnection,
    items: Vec<Outgoing>,
    retention: Retention,
    sent: &mut Sent,
) -> Vec<Outgoing> {
    let pipe = pipeline(&items, retention);
    let replies = match conn.send_packed_commands(&pipe, 0, items.len()).await {
        Ok(replies) if replies.len() == items.len() => replies,
        _ => {
            sent.failed += items.len() as u64;
            return Vec::new();
        }
    };
    let mut retry = Vec::new();
    for (item, reply) in items.into_iter().zip(replies) {
        if item.kept.is_some() && history::is_noscript(&reply) {
            retry.push(item);
        } else if settle(item, &reply) {
            sent.ok += 1;
        } else {
            sent.failed += 1;
        }
    }
    retry
}

/// Builds the pipeline: `PUBLISH` or the numbering script, in order.
fn pipeline(items: &[Outgoing], retention: Retention) -> redis::Pipeline {
    let mut pipe = redis::Pipeline::with_capacity(items.len());
    // Only used by a route that has no epoch yet; one per pipeline is
    // enough (an epoch must differ from the route's earlier ones, not from
    // other routes').
    let fresh = items.iter().any(|i| i.kept.is_some()).then(Epoch::random);
    for item in items {
        let text = item.msg.as_str();
        match (&item.kept, &fresh) {
            (Some(kept), Some(fresh)) => {
                pipe.add_command(history::number_cmd(
                    &kept.keys,
                    &item.channel,
                    text,
                    &kept.sender,
                    retention,
                    fresh,
                ));
            }
            _ => {
                pipe.cmd("PUBLISH").arg(&item.channel).arg(text.as_bytes());
            }
        }
    }
    pipe
}

/// Whether the message went out; resolves a kept message's receipt.
fn settle(item: Outgoing, reply: &Value) -> bool {
    if matches!(reply, Value::ServerError(_)) {
        return false;
    }
    let Some(kept) = item.kept else {
        return true;
    };
    let Some(position) = history::numbered(reply) else {
        return false;
    };
    if let Some(receipt) = kept.receipt {
        let _ = receipt.send(position);
    }
    true
}
