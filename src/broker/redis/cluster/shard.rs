//! One shard master's pub/sub connection: the sharded channels this
//! instance receives from that master.
//!
//! redis-rs's `aio::PubSub` cannot read `smessage`, and its cluster client
//! resubscribes across slots in one command (CROSSSLOT) and ignores a
//! server's own `sunsubscribe`. So each shard gets a plain RESP3
//! `MultiplexedConnection` whose pushes are sorted here: messages go to the
//! one reader of every shard (`broker/redis/reader/`), and what tells the
//! supervisor something is wrong (a `sunsubscribe` the server sent on its
//! own because the slot moved, the connection dropping) goes to the
//! supervisor, tagged with the connection's [`ShardId`] so that news from a
//! connection already replaced is ignored.
//!
//! redis-rs counts every (un)subscribe confirmation as the answer to the
//! oldest command in flight, so each command names one channel: a
//! pipeline of single-channel `SSUBSCRIBE`s gets one confirmation each,
//! and the supervisor sends one command or pipeline at a time.

use std::collections::HashSet;

use redis::aio::MultiplexedConnection;
use redis::{Msg, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc::UnboundedSender;

use crate::broker::redis::link::{NodeAddr, RedisLink};
use crate::channels::Route;

/// One connection's identity; a replaced connection's news is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardId(pub u64);

/// What a shard connection tells the supervisor.
#[derive(Debug)]
pub enum Alarm {
    /// The server unsubscribed a channel (ours or not: the supervisor
    /// knows which it asked for).
    Unsubscribed { shard: ShardId, channel: String },
    /// The connection is gone.
    Disconnected { shard: ShardId },
}

/// How Redis answered one channel's `SSUBSCRIBE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Confirmed,
    /// `MOVED` or `ASK`: the slot is elsewhere now.
    Moved,
    Refused(String),
}

pub struct Shard {
    pub id: ShardId,
    pub addr: NodeAddr,
    conn: MultiplexedConnection,
    /// Routes confirmed on this connection.
    pub routes: HashSet<Route>,
}

impl Shard {
    pub async fn open(
        link: &RedisLink,
        id: ShardId,
        addr: NodeAddr,
        messages: UnboundedSender<Msg>,
        alarms: UnboundedSender<Alarm>,
    ) -> RedisResult<Shard> {
        let sort = move |push: PushInfo| -> Result<(), ()> {
            sort_push(id, push, &messages, &alarms);
            Ok(())
        };
        let conn = link.open_node_pushing(&addr, sort).await?;
        Ok(Shard {
            id,
            addr,
            conn,
            routes: HashSet::new(),
        })
    }

    /// `SSUBSCRIBE`s each channel (one per command, pipelined).
    pub async fn subscribe(&mut self, channels: &[String]) -> RedisResult<Vec<Answer>> {
        let replies = self.each("SSUBSCRIBE", channels).await?;
        Ok(replies.iter().map(answer).collect())
    }

    /// `SUNSUBSCRIBE`s each channel (one per command, pipelined).
    pub async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        self.each("SUNSUBSCRIBE", channels).await.map(drop)
    }

    pub async fn ping(&mut self) -> RedisResult<()> {
        redis::cmd("PING")
            .query_async::<Value>(&mut self.conn)
            .await?;
        Ok(())
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

fn sort_push(
    shard: ShardId,
    push: PushInfo,
    messages: &UnboundedSender<Msg>,
    alarms: &UnboundedSender<Alarm>,
) {
    match push.kind {
        PushKind::SMessage | PushKind::Message => {
            if let Some(msg) = Msg::from_push_info(push) {
                let _ = messages.send(msg);
            }
        }
        PushKind::SUnsubscribe => {
            let channel = push.data.first().and_then(|v| match v {
                Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
                Value::SimpleString(s) => Some(s.clone()),
                _ => None,
            });
            if let Some(channel) = channel {
                let _ = alarms.send(Alarm::Unsubscribed { shard, channel });
            }
        }
        PushKind::Disconnection => {
            let _ = alarms.send(Alarm::Disconnected { shard });
        }
        _ => {}
    }
}
