//! Presence across instances, in Redis, safe against instances that die
//! without cleaning up.
//!
//! Public view (PROTOCOL.md section 4): `{prefix}ws:presence:group:{g}` is
//! the SET of client_ids online in group g. Behind it:
//! - `…holders:{g}:{client}`: the SET of instances holding that client;
//!   the client leaves the public SET when the last holder goes;
//! - `…instance:{id}`: a liveness record with a TTL that the live instance
//!   refreshes every third of the TTL;
//! - `…instance:{id}:members`: the `"g client"` entries the instance holds;
//! - `…instances`: every instance that has recorded presence.
//!
//! Every live instance sweeps: an instance whose liveness record expired
//! is removed from every holders SET (and its clients from the public SETs
//! when it was their last holder), and their groups hear a `leave`.
//!
//! One worker task applies joins and leaves in order, pipelined, with
//! Lua scripts so each is atomic. It keeps the local socket counts, so
//! Redis is only asked on a client's first and last local socket, and it
//! rebuilds this instance's entries whenever Redis comes back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Presence, PresenceError};
use crate::broker::BoxFuture;
use crate::channels::{Names, Route};
use crate::metrics;
use crate::protocol::{self, PresenceEvent, VisionId};
use crate::redis_link::RedisLink;

const JOIN: &str = r"
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return redis.call('SADD', KEYS[1], ARGV[1])
";

const LEAVE: &str = r"
redis.call('SREM', KEYS[3], ARGV[3])
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('SCARD', KEYS[2]) == 0 then
  return redis.call('SREM', KEYS[1], ARGV[1])
end
return 0
";

/// Removes a dead instance's entries; returns the `"g client"` entries
/// that left their group's public SET. Key names are built here from the
/// prefix, as `channels.rs` builds them.
const SWEEP: &str = r"
local prefix, dead = ARGV[1], ARGV[2]
local members = prefix .. 'ws:presence:instance:' .. dead .. ':members'
local gone = {}
for _, entry in ipairs(redis.call('SMEMBERS', members)) do
  local sep = string.find(entry, ' ', 1, true)
  local g, c = string.sub(entry, 1, sep - 1), string.sub(entry, sep + 1)
  local holders = prefix .. 'ws:presence:holders:' .. g .. ':' .. c
  redis.call('SREM', holders, dead)
  if redis.call('SCARD', holders) == 0 then
    if redis.call('SREM', prefix .. 'ws:presence:group:' .. g, c) == 1 then
      table.insert(gone, entry)
    end
  end
end
redis.call('DEL', members)
redis.call('SREM', prefix .. 'ws:presence:instances', dead)
return gone
";

type Reply = oneshot::Sender<Result<bool, PresenceError>>;

enum Op {
    Join(VisionId, VisionId, Reply),
    Leave(VisionId, VisionId, Reply),
    Close(oneshot::Sender<()>),
}

pub struct RedisPresence {
    link: Arc<RedisLink>,
    names: Names,
    ops: mpsc::UnboundedSender<Op>,
}

impl RedisPresence {
    pub fn start(
        link: Arc<RedisLink>,
        names: Names,
        instance: String,
        ttl: Duration,
    ) -> Arc<RedisPresence> {
        let (ops, queue) = mpsc::unbounded_channel();
        // Subscribed before the link can come up, so no connect is missed.
        let connections = link.connections();
        let worker = Worker {
            link: Arc::clone(&link),
            names: names.clone(),
            instance,
            ttl,
            local: HashMap::new(),
        };
        tokio::spawn(worker.run(queue, connections));
        Arc::new(RedisPresence { link, names, ops })
    }

    fn ask<'a>(
        &'a self,
        op: impl FnOnce(Reply) -> Op,
    ) -> BoxFuture<'a, Result<bool, PresenceError>> {
        let (reply, answer) = oneshot::channel();
        let sent = self.ops.send(op(reply));
        Box::pin(async move {
            sent.map_err(|_| PresenceError::Unavailable)?;
            answer.await.unwrap_or(Err(PresenceError::Unavailable))
        })
    }
}

impl Presence for RedisPresence {
    fn join<'a>(
        &'a self,
        group: &'a VisionId,
        client: &'a VisionId,
    ) -> BoxFuture<'a, Result<bool, PresenceError>> {
        self.ask(|reply| Op::Join(group.clone(), client.clone(), reply))
    }

    fn leave<'a>(
        &'a self,
        group: &'a VisionId,
        client: &'a VisionId,
    ) -> BoxFuture<'a, Result<bool, PresenceError>> {
        self.ask(|reply| Op::Leave(group.clone(), client.clone(), reply))
    }

    fn members<'a>(
        &'a self,
        group: &'a VisionId,
    ) -> BoxFuture<'a, Result<Vec<String>, PresenceError>> {
        Box::pin(async move {
            let mut conn = self.link.command().ok_or(PresenceError::Unavailable)?;
            let mut members: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.names.presence_key(group))
                .query_async(&mut conn)
                .await
                .map_err(|_| PresenceError::Unavailable)?;
            members.sort_unstable();
            Ok(members)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        let (done, finished) = oneshot::channel();
        let sent = self.ops.send(Op::Close(done)).is_ok();
        Box::pin(async move {
            if sent {
                let _ = finished.await;
            }
        })
    }
}

struct Worker {
    link: Arc<RedisLink>,
    names: Names,
    instance: String,
    ttl: Duration,
    /// Local sockets per (group, client).
    local: HashMap<(VisionId, VisionId), usize>,
}

/// A join or leave that reached Redis, waiting for its answer.
struct Pending {
    join: bool,
    group: VisionId,
    client: VisionId,
    reply: Reply,
}

impl Worker {
    async fn run(
        mut self,
        mut queue: mpsc::UnboundedReceiver<Op>,
        mut connections: tokio::sync::watch::Receiver<u64>,
    ) {
        let mut refresh = tokio::time::interval(self.ttl / 3);
        let mut batch = Vec::with_capacity(256);
        loop {
            tokio::select! {
                received = queue.recv_many(&mut batch, 256) => {
                    if received == 0 {
                        return;
                    }
                    if self.apply(&mut batch).await {
                        return;
                    }
                }
                changed = connections.changed() => {
                    if changed.is_ok() {
                        self.rebuild().await;
                    }
                }
                _ = refresh.tick() => self.refresh_and_sweep().await,
            }
        }
    }

    /// Applies queued operations in order; true once closed.
    async fn apply(&mut self, batch: &mut Vec<Op>) -> bool {
        let mut pipe = redis::pipe();
        let mut pending = Vec::new();
        let mut closed = None;
        for op in batch.drain(..) {
            match op {
                Op::Join(group, client, reply) => {
                    let sockets = self
                        .local
                        .entry((group.clone(), client.clone()))
                        .or_insert(0);
                    *sockets += 1;
                    if *sockets > 1 {
                        let _ = reply.send(Ok(false));
                        continue;
                    }
                    self.script(&mut pipe, JOIN, &group, &client);
                    pending.push(Pending {
                        join: true,
                        group,
                        client,
                        reply,
                    });
                }
                Op::Leave(group, client, reply) => {
                    let key = (group.clone(), client.clone());
                    match self.local.get_mut(&key) {
                        Some(sockets) if *sockets > 1 => {
                            *sockets -= 1;
                            let _ = reply.send(Ok(false));
                            continue;
                        }
                        Some(_) => {
                            self.local.remove(&key);
                        }
                        None => {
                            let _ = reply.send(Ok(false));
                            continue;
                        }
                    }
                    self.script(&mut pipe, LEAVE, &group, &client);
                    pending.push(Pending {
                        join: false,
                        group,
                        client,
                        reply,
                    });
                }
                Op::Close(done) => closed = Some(done),
            }
        }
        if !pending.is_empty() {
            self.answer(pipe, pending).await;
        }
        match closed {
            Some(done) => {
                self.withdraw().await;
                let _ = done.send(());
                true
            }
            None => false,
        }
    }

    async fn answer(&mut self, pipe: redis::Pipeline, pending: Vec<Pending>) {
        let results: Option<Vec<i64>> = match self.link.command() {
            Some(mut conn) => pipe.query_async(&mut conn).await.ok(),
            None => None,
        };
        match results {
            Some(changed) => {
                for (p, changed) in pending.into_iter().zip(changed) {
                    let _ = p.reply.send(Ok(changed == 1));
                }
            }
            None => {
                for p in pending {
                    // A join that did not reach Redis did not happen; a
                    // leave is redone by the rebuild once Redis is back.
                    if p.join {
                        self.forget(&p.group, &p.client);
                    }
                    let _ = p.reply.send(Err(PresenceError::Unavailable));
                }
            }
        }
    }

    fn forget(&mut self, group: &VisionId, client: &VisionId) {
        let key = (group.clone(), client.clone());
        if let Some(sockets) = self.local.get_mut(&key) {
            *sockets -= 1;
            if *sockets == 0 {
                self.local.remove(&key);
            }
        }
    }

    fn script(&self, pipe: &mut redis::Pipeline, body: &str, group: &VisionId, client: &VisionId) {
        pipe.cmd("EVAL")
            .arg(body)
            .arg(3)
            .arg(self.names.presence_key(group))
            .arg(self.names.holders_key(group, client))
            .arg(self.names.instance_members_key(&self.instance))
            .arg(client.as_str())
            .arg(&self.instance)
            .arg(entry(group, client));
    }

    /// Keeps this instance's liveness record alive, rebuilding if it had
    /// expired (another instance may have swept us), then sweeps the dead.
    async fn refresh_and_sweep(&mut self) {
        let Some(mut conn) = self.link.command() else {
            return;
        };
        let previous: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(self.names.instance_key(&self.instance))
            .arg(1)
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .arg("GET")
            .query_async(&mut conn)
            .await;
        if matches!(previous, Ok(None)) {
            self.rebuild().await;
        }
        self.sweep(&mut conn).await;
    }

    async fn sweep(&self, conn: &mut redis::aio::MultiplexedConnection) {
        let Ok(instances) = redis::cmd("SMEMBERS")
            .arg(self.names.instances_key())
            .query_async::<Vec<String>>(conn)
            .await
        else {
            return;
        };
        for other in instances.iter().filter(|i| **i != self.instance) {
            let alive: redis::RedisResult<bool> = redis::cmd("EXISTS")
                .arg(self.names.instance_key(other))
                .query_async(conn)
                .await;
            if !matches!(alive, Ok(false)) {
                continue;
            }
            let gone: Vec<String> = match redis::cmd("EVAL")
                .arg(SWEEP)
                .arg(0)
                .arg(self.names.prefix())
                .arg(other)
                .query_async(conn)
                .await
            {
                Ok(gone) => gone,
                Err(e) => {
                    tracing::warn!(instance = %other, "presence sweep failed: {e}");
                    continue;
                }
            };
            tracing::info!(instance = %other, clients = gone.len(), "swept a dead instance's presence");
            self.announce_all(conn, &gone, PresenceEvent::Leave).await;
        }
    }

    /// Makes Redis hold exactly this instance's local entries: after a
    /// reconnect (Redis may have restarted empty) or a sweep by others.
    async fn rebuild(&mut self) {
        let Some(mut conn) = self.link.command() else {
            return;
        };
        let members_key = self.names.instance_members_key(&self.instance);
        let setup = redis::pipe()
            .cmd("SET")
            .arg(self.names.instance_key(&self.instance))
            .arg(1)
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .ignore()
            .cmd("SADD")
            .arg(self.names.instances_key())
            .arg(&self.instance)
            .ignore()
            .cmd("SMEMBERS")
            .arg(&members_key)
            .query_async::<(HashSet<String>,)>(&mut conn)
            .await;
        let Ok((recorded,)) = setup else {
            return;
        };
        let local: HashMap<String, (VisionId, VisionId)> = self
            .local
            .keys()
            .map(|(g, c)| (entry(g, c), (g.clone(), c.clone())))
            .collect();
        // Clients held here all along were never offline to their groups:
        // re-adding them is silent. Clients that left while Redis was away
        // could not be announced then, so their leave is announced now.
        let mut pipe = redis::pipe();
        let mut leaves = Vec::new();
        for (key, (group, client)) in &local {
            if !recorded.contains(key) {
                self.script(&mut pipe, JOIN, group, client);
                leaves.push(None);
            }
        }
        for key in recorded.iter().filter(|k| !local.contains_key(*k)) {
            if let Some((group, client)) = split_entry(key) {
                self.script(&mut pipe, LEAVE, &group, &client);
                leaves.push(Some(key.clone()));
            }
        }
        if leaves.is_empty() {
            return;
        }
        let Ok(results) = pipe.query_async::<Vec<i64>>(&mut conn).await else {
            return;
        };
        tracing::info!(entries = leaves.len(), "presence rebuilt in Redis");
        let gone: Vec<String> = leaves
            .into_iter()
            .zip(results)
            .filter_map(|(leave, changed)| leave.filter(|_| changed == 1))
            .collect();
        self.announce_all(&mut conn, &gone, PresenceEvent::Leave)
            .await;
    }

    /// Clean shutdown: nothing of this instance stays behind.
    async fn withdraw(&mut self) {
        let Some(mut conn) = self.link.command() else {
            return;
        };
        let gone: Vec<String> = redis::cmd("EVAL")
            .arg(SWEEP)
            .arg(0)
            .arg(self.names.prefix())
            .arg(&self.instance)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        self.announce_all(&mut conn, &gone, PresenceEvent::Leave)
            .await;
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(self.names.instance_key(&self.instance))
            .query_async(&mut conn)
            .await;
    }

    /// Tells each entry's group that its client joined or left.
    async fn announce_all(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        entries: &[String],
        event: PresenceEvent,
    ) {
        let mut pipe = redis::pipe();
        for (group, client) in entries.iter().filter_map(|e| split_entry(e)) {
            let msg = protocol::presence_event(event, &group, &client);
            pipe.cmd("PUBLISH")
                .arg(self.names.channel(&Route::Group(group)))
                .arg(msg.as_str().as_bytes())
                .ignore();
        }
        if pipe.query_async::<()>(conn).await.is_ok() {
            metrics::redis_published(entries.len() as u64);
        }
    }
}

/// The `"group client"` entry of an instance's members SET.
fn entry(group: &VisionId, client: &VisionId) -> String {
    format!("{group} {client}")
}

fn split_entry(entry: &str) -> Option<(VisionId, VisionId)> {
    let (group, client) = entry.split_once(' ')?;
    Some((VisionId::parse(group).ok()?, VisionId::parse(client).ok()?))
}
