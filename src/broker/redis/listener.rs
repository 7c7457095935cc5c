//! One pub/sub connection to one Redis node: the one server's (classic
//! channels, `single.rs`), or a cluster shard master's (sharded channels,
//! `cluster/`).
//!
//! redis-rs's `aio::PubSub` cannot read `smessage`, cannot be named
//! (`CLIENT SETNAME`), and its cluster client resubscribes across slots in
//! one command (CROSSSLOT) and ignores a server's own `sunsubscribe`. So
//! each listener is a plain RESP3 `MultiplexedConnection` whose pushes are
//! sorted here: messages go to the one reader (`reader/`), and what tells
//! the supervisor something is wrong (an unsubscribe the server sent on
//! its own because a slot moved, the connection dropping) goes to the
//! supervisor, tagged with the connection's [`ListenerId`] so that news
//! from a connection already replaced is ignored.
//!
//! redis-rs counts every (un)subscribe confirmation as the answer to the
//! oldest command in flight, so each command names one channel: a
//! pipeline of single-channel `SUBSCRIBE`s gets one confirmation each,
//! and the supervisor sends one command or pipeline at a time.

use std::collections::HashSet;

use redis::aio::MultiplexedConnection;
use redis::{Msg, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc::UnboundedSender;

use super::link::{LinkError, NodeAddr, Publish, RedisLink};
use crate::channels::Route;

/// One connection's identity; a replaced connection's news is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(pub u64);

/// What a listener tells the supervisor.
#[derive(Debug)]
pub enum Alarm {
    /// The server unsubscribed a channel (ours or not: the supervisor
    /// knows which it asked for).
    Unsubscribed { id: ListenerId, channel: String },
    /// The connection is gone.
    Disconnected { id: ListenerId },
}

/// How Redis answered one channel's subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Confirmed,
    /// `MOVED` or `ASK`: the slot is elsewhere now.
    Moved,
    Refused(String),
}

impl Answer {
    pub fn is_confirmed(&self) -> bool {
        *self == Answer::Confirmed
    }
}

/// Where a listener's messages and alarms go.
#[derive(Clone)]
pub struct Inbox {
    pub messages: UnboundedSender<Msg>,
    pub alarms: UnboundedSender<Alarm>,
}

pub struct Listener {
    pub id: ListenerId,
    conn: MultiplexedConnection,
    publish: Publish,
    /// Routes confirmed on this connection.
    pub routes: HashSet<Route>,
}

impl Listener {
    /// Opens a listener on `node` (or the one server): classic channels
    /// or sharded ones, as the link publishes.
    pub async fn open(
        link: &RedisLink,
        id: ListenerId,
        node: Option<&NodeAddr>,
        inbox: Inbox,
    ) -> Result<Listener, LinkError> {
        let sort = move |push: PushInfo| -> Result<(), ()> {
            sort_push(id, push, &inbox);
            Ok(())
        };
        let conn = link.open_listener(node, sort).await?;
        Ok(Listener {
            id,
            conn,
            publish: link.publish(),
            routes: HashSet::new(),
        })
    }

    /// Subscribes each channel (one per command, pipelined).
    pub async fn subscribe(&mut self, channels: &[String]) -> RedisResult<Vec<Answer>> {
        let command = match self.publish {
            Publish::Classic => "SUBSCRIBE",
            Publish::Sharded => "SSUBSCRIBE",
        };
        let replies = self.each(command, channels).await?;
        Ok(replies.iter().map(answer).collect())
    }

    /// Unsubscribes each channel (one per command, pipelined).
    pub async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        let command = match self.publish {
            Publish::Classic => "UNSUBSCRIBE",
            Publish::Sharded => "SUNSUBSCRIBE",
        };
        self.each(command, channels).await.map(drop)
    }

    /// The link's probe, on this connection (a cluster shard: `PING`).
    pub async fn probe(&mut self, link: &RedisLink) -> Result<(), LinkError> {
        link.probe(&mut self.conn).await
    }

    async fn each(&mut self, command: &str, channels: &[String]) -> RedisResult<Vec<Value>> {
        let mut pipe = redis::Pipeline::with_capacity(channels.len());
        for channel in channels {
            pipe.cmd(command).arg(channel);
        }
        self.conn
            .send_packed_commands(&pipe, 0, channels.len())
            .await
    }
}

fn answer(reply: &Value) -> Answer {
    match reply {
        Value::ServerError(e) if matches!(e.code(), "MOVED" | "ASK") => Answer::Moved,
        Value::ServerError(e) => {
            Answer::Refused(format!("{} {}", e.code(), e.details().unwrap_or("")))
        }
        _ => Answer::Confirmed,
    }
}

fn sort_push(id: ListenerId, push: PushInfo, inbox: &Inbox) {
    match push.kind {
        PushKind::SMessage | PushKind::Message => {
            if let Some(msg) = Msg::from_push_info(push) {
                let _ = inbox.messages.send(msg);
            }
        }
        // Our own unsubscribes are confirmed as pushes too: the
        // supervisor tells them from the server's by what it asked for.
        PushKind::SUnsubscribe | PushKind::Unsubscribe => {
            let channel = push.data.first().and_then(|v| match v {
                Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
                Value::SimpleString(s) => Some(s.clone()),
                _ => None,
            });
            if let Some(channel) = channel {
                let _ = inbox.alarms.send(Alarm::Unsubscribed { id, channel });
            }
        }
        PushKind::Disconnection => {
            let _ = inbox.alarms.send(Alarm::Disconnected { id });
        }
        _ => {}
    }
}
