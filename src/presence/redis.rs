//! Presence across instances, in Redis or Redis Cluster, safe against
//! instances that die without cleaning up.
//!
//! Public view (docs/protocol.md section 4): `{prefix}ws:presence:group:{g}` is
//! the SET of client_ids online in group g. Behind it:
//! - `…holders:{<public key>}:{client}`: the SET of instances holding that
//!   client, in the public SET's slot; the client leaves the public SET
//!   when the last holder goes;
//! - `…instance:{id}`: a liveness record with a TTL that the live instance
//!   refreshes every third of the TTL;
//! - `…instance:{id}:members`: the `"g client"` entries the instance holds;
//! - `…instances`: every instance that has recorded presence.
//!
//! Every live instance sweeps: an instance whose liveness record expired
//! is removed from every holders SET (and its clients from the public SETs
//! when it was their last holder), and their groups hear a `leave`.
//! [`store`] owns the commands and the order that makes this crash-safe.
//!
//! One worker task applies joins and leaves in order, in rounds sent
//! together. It keeps the local socket counts, so Redis is only asked on a
//! client's first and last local socket, and it rebuilds this instance's
//! entries whenever Redis comes back.

mod store;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Presence, PresenceError};
use crate::broker::redis::link::RedisLink;
use crate::broker::BoxFuture;
use crate::channels::Names;
use crate::protocol::{PresenceEvent, VisionId};
use store::{Entry, Store};

type Reply = oneshot::Sender<Result<bool, PresenceError>>;

enum Op {
    Join(Entry, Reply),
    Leave(Entry, Reply),
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
        let publish = link.publish();
        let worker = Worker {
            link: Arc::clone(&link),
            store: Store::new(names.clone(), instance, ttl, publish),
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

fn entry(group: &VisionId, client: &VisionId) -> Entry {
    Entry {
        group: group.clone(),
        client: client.clone(),
    }
}

impl Presence for RedisPresence {
    fn join<'a>(
        &'a self,
        group: &'a VisionId,
        client: &'a VisionId,
    ) -> BoxFuture<'a, Result<bool, PresenceError>> {
        self.ask(|reply| Op::Join(entry(group, client), reply))
    }

    fn leave<'a>(
        &'a self,
        group: &'a VisionId,
        client: &'a VisionId,
    ) -> BoxFuture<'a, Result<bool, PresenceError>> {
        self.ask(|reply| Op::Leave(entry(group, client), reply))
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

    fn instances(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, PresenceError>> {
        Box::pin(async move {
            let conn = self.link.command().ok_or(PresenceError::Unavailable)?;
            Store::live_instances(&self.names, &conn)
                .await
                .map_err(|_| PresenceError::Unavailable)
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
    store: Store,
    ttl: Duration,
    /// Local sockets per entry.
    local: HashMap<Entry, usize>,
}

/// A join or leave that must reach Redis.
struct Step {
    join: bool,
    entry: Entry,
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
        let mut round: Vec<Step> = Vec::new();
        let mut in_round = HashSet::new();
        let mut closed = None;
        for op in batch.drain(..) {
            let step = match op {
                Op::Join(entry, reply) => self.count_join(entry, reply),
                Op::Leave(entry, reply) => self.count_leave(entry, reply),
                Op::Close(done) => {
                    closed = Some(done);
                    None
                }
            };
            let Some(step) = step else { continue };
            // Steps of one round run together: an entry that comes twice
            // waits for the next round, so its join and leave keep order.
            if !in_round.insert(step.entry.clone()) {
                self.send(std::mem::take(&mut round)).await;
                in_round.clear();
                in_round.insert(step.entry.clone());
            }
            round.push(step);
        }
        self.send(round).await;
        match closed {
            Some(done) => {
                self.withdraw().await;
                let _ = done.send(());
                true
            }
            None => false,
        }
    }

    /// This instance's sockets that are in presence.
    fn sockets(&self) -> usize {
        self.local.values().sum()
    }

    /// One more local socket; a step when it is the entry's first.
    fn count_join(&mut self, entry: Entry, reply: Reply) -> Option<Step> {
        let sockets = self.local.entry(entry.clone()).or_insert(0);
        *sockets += 1;
        if *sockets > 1 {
            let _ = reply.send(Ok(false));
            return None;
        }
        Some(Step {
            join: true,
            entry,
            reply,
        })
    }

    /// One local socket less; a step when it was the entry's last.
    fn count_leave(&mut self, entry: Entry, reply: Reply) -> Option<Step> {
        match self.local.get_mut(&entry) {
            Some(sockets) if *sockets > 1 => {
                *sockets -= 1;
                let _ = reply.send(Ok(false));
                None
            }
            Some(_) => {
                self.local.remove(&entry);
                Some(Step {
                    join: false,
                    entry,
                    reply,
                })
            }
            None => {
                let _ = reply.send(Ok(false));
                None
            }
        }
    }

    /// Sends one round (no entry twice) and answers its steps.
    async fn send(&mut self, round: Vec<Step>) {
        if round.is_empty() {
            return;
        }
        let (joins, leaves): (Vec<Step>, Vec<Step>) = round.into_iter().partition(|s| s.join);
        let Some(conn) = self.link.command() else {
            self.answer(joins, None);
            self.answer(leaves, None);
            return;
        };
        let join_entries: Vec<Entry> = joins.iter().map(|s| s.entry.clone()).collect();
        let leave_entries: Vec<Entry> = leaves.iter().map(|s| s.entry.clone()).collect();
        let (joined, left) = tokio::join!(
            self.store.join(&conn, &join_entries),
            self.store.leave(&conn, &leave_entries),
        );
        self.answer(joins, Some(joined));
        self.answer(leaves, Some(left));
    }

    fn answer(&mut self, steps: Vec<Step>, results: Option<Vec<redis::RedisResult<bool>>>) {
        let mut results = results.map(Vec::into_iter);
        for step in steps {
            match results.as_mut().and_then(Iterator::next) {
                Some(Ok(changed)) => {
                    let _ = step.reply.send(Ok(changed));
                }
                _ => {
                    // A join that did not reach Redis did not happen; a
                    // leave is redone by the rebuild once Redis is back.
                    if step.join {
                        self.forget(&step.entry);
                    }
                    let _ = step.reply.send(Err(PresenceError::Unavailable));
                }
            }
        }
    }

    fn forget(&mut self, entry: &Entry) {
        if let Some(sockets) = self.local.get_mut(entry) {
            *sockets -= 1;
            if *sockets == 0 {
                self.local.remove(entry);
            }
        }
    }

    /// Keeps this instance's liveness record alive, rebuilding if it had
    /// expired (another instance may have swept us), then sweeps the dead.
    async fn refresh_and_sweep(&mut self) {
        let Some(conn) = self.link.command() else {
            return;
        };
        if matches!(self.store.refresh(&conn, self.sockets()).await, Ok(false)) {
            self.rebuild().await;
        }
        let Ok(dead) = self.store.dead_instances(&conn).await else {
            return;
        };
        for other in dead {
            match self.store.sweep(&conn, &other).await {
                Ok(gone) => {
                    tracing::info!(instance = %other, clients = gone.len(), "swept a dead instance's presence");
                    self.store
                        .announce(&conn, &gone, PresenceEvent::Leave)
                        .await;
                }
                Err(e) => tracing::warn!(instance = %other, "presence sweep failed: {e}"),
            }
        }
    }

    /// Makes Redis hold exactly this instance's local entries: after a
    /// reconnect (Redis may have restarted empty) or a sweep by others.
    async fn rebuild(&mut self) {
        let Some(conn) = self.link.command() else {
            return;
        };
        let Ok(recorded) = self.store.register(&conn, self.sockets()).await else {
            return;
        };
        // Clients held here all along were never offline to their groups
        // (Redis restarted empty, say): re-adding them is silent, unless
        // others swept this instance meanwhile and announced them gone.
        // Clients that left while Redis was away could not be announced
        // then, so their leave is announced now.
        let swept = self.store.take_swept_mark(&conn).await.unwrap_or(false);
        let missing: Vec<Entry> = self
            .local
            .keys()
            .filter(|e| !recorded.contains(*e))
            .cloned()
            .collect();
        let stale: Vec<Entry> = recorded
            .into_iter()
            .filter(|e| !self.local.contains_key(e))
            .collect();
        if missing.is_empty() && stale.is_empty() {
            return;
        }
        let (joined, left) = tokio::join!(
            self.store.join(&conn, &missing),
            self.store.leave(&conn, &stale),
        );
        tracing::info!(
            entries = missing.len() + stale.len(),
            swept,
            "presence rebuilt in Redis"
        );
        let back: Vec<Entry> = match swept {
            true => came_or_went(missing, joined),
            false => Vec::new(),
        };
        let gone = came_or_went(stale, left);
        tokio::join!(
            self.store.announce(&conn, &back, PresenceEvent::Join),
            self.store.announce(&conn, &gone, PresenceEvent::Leave),
        );
    }

    /// Clean shutdown: nothing of this instance stays behind.
    async fn withdraw(&mut self) {
        let Some(conn) = self.link.command() else {
            return;
        };
        let instance = self.store.instance().to_owned();
        let gone = self.store.sweep(&conn, &instance).await.unwrap_or_default();
        self.store
            .announce(&conn, &gone, PresenceEvent::Leave)
            .await;
        let _ = self.store.retire(&conn).await;
    }
}

/// The entries whose join or leave script answered that the client came
/// online or went offline in its group.
fn came_or_went(entries: Vec<Entry>, answers: Vec<redis::RedisResult<bool>>) -> Vec<Entry> {
    entries
        .into_iter()
        .zip(answers)
        .filter_map(|(e, answer)| matches!(answer, Ok(true)).then_some(e))
        .collect()
}
