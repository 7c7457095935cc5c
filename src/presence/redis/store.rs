//! Presence's Redis commands, each within one Redis Cluster slot, so the
//! same code runs on one Redis and on a cluster (docs/protocol.md section 7).
//!
//! A group's public SET and its clients' holders SETs share a slot (the
//! holders keys are hash-tagged with the public key's name, see
//! `channels.rs`), so joining or leaving is one atomic script. The
//! instance's own records (`instance:{id}`, its members SET, the
//! `instances` SET) live in other slots and are updated by separate
//! commands, ordered so that a crash between two of them never leaves a
//! client in a public SET that no sweep would remove:
//!
//! - join: the `"g client"` entry goes into the instance's members SET
//!   before the join script runs;
//! - leave: the entry leaves the members SET only after the leave script
//!   succeeded;
//! - sweep of a dead instance: one leave script per entry of its members
//!   SET (with the dead instance as the holder), then the SET goes. Each
//!   step can be redone, so a sweep cut short is finished by the next one,
//!   and two instances sweeping at once announce each leave once (only one
//!   script removes the client from the public SET). A mark (`…:swept`,
//!   kept a day) tells the instance, if it was only cut off and comes
//!   back, that its clients' leaves were announced: it announces their
//!   joins as it records them again.
//!
//! Independent commands are sent together on the multiplexed connection
//! (it pipelines them), never as one multi-key pipeline, which a cluster
//! would have to split across masters.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::ConnectionLike;
use redis::RedisResult;

use crate::broker::redis::link::Publish;
use crate::channels::{Names, Route};
use crate::metrics;
use crate::protocol::{self, PresenceEvent, VisionId};

/// KEYS: public SET, holders SET. ARGV: client, instance. 1 when the
/// client has just come online in the group.
const JOIN: &str = r"
redis.call('SADD', KEYS[2], ARGV[2])
return redis.call('SADD', KEYS[1], ARGV[1])
";

/// KEYS: public SET, holders SET. ARGV: client, instance. 1 when that
/// instance was the client's last holder and the client went offline.
const LEAVE: &str = r"
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('SCARD', KEYS[2]) == 0 then
  return redis.call('SREM', KEYS[1], ARGV[1])
end
return 0
";

/// How long a swept instance's mark stays (it may come back from a long
/// partition).
const SWEPT_MARK_SECS: u64 = 24 * 3600;

/// A client in a group, as this instance holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub group: VisionId,
    pub client: VisionId,
}

impl Entry {
    /// The `"group client"` form of an instance's members SET.
    fn recorded(&self) -> String {
        format!("{} {}", self.group, self.client)
    }

    fn parse(recorded: &str) -> Option<Entry> {
        let (group, client) = recorded.split_once(' ')?;
        Some(Entry {
            group: VisionId::parse(group).ok()?,
            client: VisionId::parse(client).ok()?,
        })
    }
}

/// One instance's view of the presence keys.
pub struct Store {
    names: Names,
    instance: String,
    ttl: Duration,
    publish: Publish,
}

impl Store {
    pub fn new(names: Names, instance: String, ttl: Duration, publish: Publish) -> Store {
        Store {
            names,
            instance,
            ttl,
            publish,
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Records `entries` as this instance's, then joins them; per entry,
    /// whether the client came online (an error: the join did not happen).
    pub async fn join<C>(&self, conn: &C, entries: &[Entry]) -> Vec<RedisResult<bool>>
    where
        C: ConnectionLike + Clone + Send,
    {
        if let Err(e) = self.record(conn, entries).await {
            let failed = || redis::RedisError::from((e.kind(), "not recorded"));
            return entries.iter().map(|_| Err(failed())).collect();
        }
        self.scripts(conn, JOIN, entries, &self.instance).await
    }

    /// Leaves `entries`; those that left are no longer recorded. Per entry,
    /// whether the client went offline.
    pub async fn leave<C>(&self, conn: &C, entries: &[Entry]) -> Vec<RedisResult<bool>>
    where
        C: ConnectionLike + Clone + Send,
    {
        let results = self.scripts(conn, LEAVE, entries, &self.instance).await;
        let left: Vec<&Entry> = entries
            .iter()
            .zip(&results)
            .filter_map(|(e, r)| r.is_ok().then_some(e))
            .collect();
        // Failing here leaves a stale entry, which a sweep or a rebuild
        // treats as a no-op leave: never a client kept online.
        let _ = self.unrecord(conn, &self.instance, &left).await;
        results
    }

    async fn record<C>(&self, conn: &C, entries: &[Entry]) -> RedisResult<()>
    where
        C: ConnectionLike + Clone + Send,
    {
        if entries.is_empty() {
            return Ok(());
        }
        redis::cmd("SADD")
            .arg(self.names.instance_members_key(&self.instance))
            .arg(entries.iter().map(Entry::recorded).collect::<Vec<_>>())
            .query_async(&mut conn.clone())
            .await
    }

    async fn unrecord<C>(&self, conn: &C, instance: &str, entries: &[&Entry]) -> RedisResult<()>
    where
        C: ConnectionLike + Clone + Send,
    {
        if entries.is_empty() {
            return Ok(());
        }
        redis::cmd("SREM")
            .arg(self.names.instance_members_key(instance))
            .arg(entries.iter().map(|e| e.recorded()).collect::<Vec<_>>())
            .query_async(&mut conn.clone())
            .await
    }

    /// One script per entry, sent together; each touches one slot.
    async fn scripts<C>(
        &self,
        conn: &C,
        body: &str,
        entries: &[Entry],
        holder: &str,
    ) -> Vec<RedisResult<bool>>
    where
        C: ConnectionLike + Clone + Send,
    {
        join_all(entries.iter().map(|entry| {
            let mut conn = conn.clone();
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(body)
                .arg(2)
                .arg(self.names.presence_key(&entry.group))
                .arg(self.names.holders_key(&entry.group, &entry.client))
                .arg(entry.client.as_str())
                .arg(holder);
            async move { cmd.query_async::<i64>(&mut conn).await.map(|n| n == 1) }
        }))
        .await
    }

    /// Keeps this instance's liveness record, which holds its socket
    /// count (`GET /v3/info`); false when it had expired (another
    /// instance may have swept this one meanwhile).
    pub async fn refresh<C>(&self, conn: &C, sockets: usize) -> RedisResult<bool>
    where
        C: ConnectionLike + Clone + Send,
    {
        let previous: Option<String> = redis::cmd("SET")
            .arg(self.names.instance_key(&self.instance))
            .arg(sockets)
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .arg("GET")
            .query_async(&mut conn.clone())
            .await?;
        Ok(previous.is_some())
    }

    /// Every instance with a liveness record, and the socket count it
    /// last recorded.
    pub async fn live_instances<C>(names: &Names, conn: &C) -> RedisResult<Vec<(String, u64)>>
    where
        C: ConnectionLike + Clone + Send,
    {
        let instances: Vec<String> = redis::cmd("SMEMBERS")
            .arg(names.instances_key())
            .query_async(&mut conn.clone())
            .await?;
        let records = join_all(instances.iter().map(|instance| {
            let mut conn = conn.clone();
            let mut cmd = redis::cmd("GET");
            cmd.arg(names.instance_key(instance));
            async move { cmd.query_async::<Option<u64>>(&mut conn).await }
        }))
        .await;
        let mut live = Vec::with_capacity(instances.len());
        for (instance, record) in instances.into_iter().zip(records) {
            if let Some(sockets) = record? {
                live.push((instance, sockets));
            }
        }
        Ok(live)
    }

    /// Declares this instance (record and `instances` entry) and returns
    /// the entries Redis holds for it.
    pub async fn register<C>(&self, conn: &C, sockets: usize) -> RedisResult<HashSet<Entry>>
    where
        C: ConnectionLike + Clone + Send,
    {
        let mut list = redis::cmd("SADD");
        list.arg(self.names.instances_key()).arg(&self.instance);
        let mut read = redis::cmd("SMEMBERS");
        read.arg(self.names.instance_members_key(&self.instance));
        let (mut c1, mut c2) = (conn.clone(), conn.clone());
        let (alive, listed, recorded) = tokio::join!(
            self.refresh(conn, sockets),
            list.query_async::<()>(&mut c1),
            read.query_async::<Vec<String>>(&mut c2),
        );
        alive?;
        listed?;
        Ok(recorded?.iter().filter_map(|r| Entry::parse(r)).collect())
    }

    /// The instances whose liveness record has expired.
    pub async fn dead_instances<C>(&self, conn: &C) -> RedisResult<Vec<String>>
    where
        C: ConnectionLike + Clone + Send,
    {
        let instances: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.names.instances_key())
            .query_async(&mut conn.clone())
            .await?;
        let others: Vec<String> = instances
            .into_iter()
            .filter(|i| *i != self.instance)
            .collect();
        let alive = join_all(others.iter().map(|other| {
            let mut conn = conn.clone();
            let mut cmd = redis::cmd("EXISTS");
            cmd.arg(self.names.instance_key(other));
            async move { cmd.query_async::<bool>(&mut conn).await }
        }))
        .await;
        Ok(others
            .into_iter()
            .zip(alive)
            .filter_map(|(other, alive)| matches!(alive, Ok(false)).then_some(other))
            .collect())
    }

    /// Removes every entry of `instance` (dead, or this one at shutdown);
    /// returns the entries whose client went offline.
    pub async fn sweep<C>(&self, conn: &C, instance: &str) -> RedisResult<Vec<Entry>>
    where
        C: ConnectionLike + Clone + Send,
    {
        let members_key = self.names.instance_members_key(instance);
        let recorded: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&members_key)
            .query_async(&mut conn.clone())
            .await?;
        let entries: Vec<Entry> = recorded.iter().filter_map(|r| Entry::parse(r)).collect();
        let results = self.scripts(conn, LEAVE, &entries, instance).await;
        let mut gone = Vec::new();
        let mut done = Vec::new();
        let mut failed = None;
        for (entry, result) in entries.iter().zip(results) {
            match result {
                Ok(left) => {
                    done.push(entry);
                    if left {
                        gone.push(entry.clone());
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        self.unrecord(conn, instance, &done).await?;
        if let Some(e) = failed {
            // The rest is for the next sweep; what left is announced now.
            tracing::warn!(%instance, "presence sweep cut short: {e}");
            return Ok(gone);
        }
        if !gone.is_empty() {
            redis::cmd("SET")
                .arg(self.names.instance_swept_key(instance))
                .arg(1)
                .arg("EX")
                .arg(SWEPT_MARK_SECS)
                .query_async::<()>(&mut conn.clone())
                .await?;
        }
        redis::cmd("SREM")
            .arg(self.names.instances_key())
            .arg(instance)
            .query_async::<()>(&mut conn.clone())
            .await?;
        Ok(gone)
    }

    /// Whether others swept this instance's entries since it last looked
    /// (and announced its clients' leaves); clears the mark.
    pub async fn take_swept_mark<C>(&self, conn: &C) -> RedisResult<bool>
    where
        C: ConnectionLike + Clone + Send,
    {
        let mark: Option<String> = redis::cmd("GETDEL")
            .arg(self.names.instance_swept_key(&self.instance))
            .query_async(&mut conn.clone())
            .await?;
        Ok(mark.is_some())
    }

    /// Forgets this instance's liveness record (clean shutdown).
    pub async fn retire<C>(&self, conn: &C) -> RedisResult<()>
    where
        C: ConnectionLike + Clone + Send,
    {
        redis::cmd("DEL")
            .arg(self.names.instance_key(&self.instance))
            .query_async(&mut conn.clone())
            .await
    }

    /// Tells each entry's group that its client joined or left.
    pub async fn announce<C>(&self, conn: &C, entries: &[Entry], event: PresenceEvent)
    where
        C: ConnectionLike + Clone + Send,
    {
        let sent = join_all(entries.iter().map(|entry| {
            let mut conn = conn.clone();
            let msg = protocol::presence_event(event, &entry.group, &entry.client);
            let mut cmd = redis::cmd(self.publish.command());
            cmd.arg(self.names.channel(&Route::Group(entry.group.clone())))
                .arg(msg.as_str().as_bytes());
            async move { cmd.query_async::<()>(&mut conn).await }
        }))
        .await;
        let published = sent.iter().filter(|r| r.is_ok()).count();
        metrics::redis_published(published as u64);
    }
}
