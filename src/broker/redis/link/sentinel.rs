//! Redis Sentinel: which server is the master now, and news of a new one.
//!
//! The link asks [`Sentinels::master`] before every connection to the
//! master (the command connection and the pub/sub connection alike), and
//! checks the answer with `ROLE` on the master itself ([`check_master`]):
//! a sentinel's view may be a moment old, and a demoted master that comes
//! back still calls itself master until the sentinels reconfigure it.
//! [`watch`] listens for `+switch-master` on one sentinel at a time, so a
//! failover moves the hub's connections at once rather than at the next
//! failed probe.

use std::sync::Arc;

use futures_util::StreamExt;
use redis::aio::ConnectionLike;
use redis::{ProtocolVersion, Value};

use super::{config, timed, Access, Backoff, LinkError, NodeAddr, RedisLink, TIMEOUT};

/// The sentinels, and the name they know the master by.
pub struct Sentinels {
    pub list: Vec<NodeAddr>,
    pub access: Access,
    pub name: String,
}

impl Sentinels {
    /// The master's address, from the first sentinel that knows it.
    pub async fn master(&self) -> Result<NodeAddr, LinkError> {
        let mut why = Vec::new();
        for sentinel in &self.list {
            match self.ask(sentinel).await {
                Ok(Some(addr)) => return Ok(addr),
                Ok(None) => why.push(format!("{sentinel} does not know {:?}", self.name)),
                Err(e) => why.push(format!("{sentinel}: {e}")),
            }
        }
        Err(LinkError::NoMaster(why.join("; ")))
    }

    async fn ask(&self, sentinel: &NodeAddr) -> Result<Option<NodeAddr>, LinkError> {
        let client = self.access.client(sentinel, ProtocolVersion::RESP2)?;
        let mut conn =
            timed(client.get_multiplexed_async_connection_with_config(&config(TIMEOUT))).await?;
        let answer: Option<(String, u16)> = timed(
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&self.name)
                .query_async(&mut conn),
        )
        .await?;
        Ok(answer.map(|(host, port)| NodeAddr { host, port }))
    }
}

/// `ROLE` must say master: the sentinels may name a server a moment
/// after it stopped being one.
pub async fn check_master(conn: &mut impl ConnectionLike) -> Result<(), LinkError> {
    let role: Value = timed(redis::cmd("ROLE").query_async(conn)).await?;
    let name = match &role {
        Value::Array(items) => items.first().and_then(|v| match v {
            Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_owned),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }),
        _ => None,
    };
    match name.as_deref() {
        Some("master") => Ok(()),
        Some(other) => Err(LinkError::NotMaster(other.to_owned())),
        None => Err(LinkError::NotMaster(format!("{role:?}"))),
    }
}

/// The master's replication ID (`INFO replication`: `master_replid`): a
/// promoted replica takes a new one, so it tells one master's numbering
/// from the next (`history.rs`, `NUMBER`).
pub async fn lineage(conn: &mut impl ConnectionLike) -> Result<String, LinkError> {
    let info: String = timed(redis::cmd("INFO").arg("replication").query_async(conn)).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("master_replid:"))
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| LinkError::Refused("INFO replication has no master_replid".to_owned()))
}

/// Listens for `+switch-master` of our master on the sentinels, one at a
/// time, for as long as the link lives; each event moves the link
/// ([`RedisLink::master_switched`]).
pub async fn watch(link: Arc<RedisLink>) {
    let Some(sentinels) = link.sentinels() else {
        return;
    };
    let mut backoff = Backoff::default();
    for sentinel in sentinels.list.iter().cycle() {
        match listen(&link, sentinels, sentinel).await {
            Ok(()) => backoff.reset(),
            Err(e) => tracing::debug!(%sentinel, "sentinel events unavailable ({e})"),
        }
        if Arc::strong_count(&link) == 1 {
            return; // the hub stopped
        }
        backoff.wait().await;
    }
}

/// Follows one sentinel's events until its connection ends.
async fn listen(
    link: &RedisLink,
    sentinels: &Sentinels,
    sentinel: &NodeAddr,
) -> Result<(), LinkError> {
    let client = sentinels.access.client(sentinel, ProtocolVersion::RESP2)?;
    let mut pubsub = timed(client.get_async_pubsub()).await?;
    timed(pubsub.subscribe("+switch-master")).await?;
    let mut events = pubsub.on_message();
    while let Some(msg) = events.next().await {
        let Ok(text) = msg.get_payload::<String>() else {
            continue;
        };
        // "<name> <old host> <old port> <new host> <new port>"
        let mut words = text.split_whitespace();
        if words.next() == Some(sentinels.name.as_str()) {
            tracing::info!(%sentinel, "sentinel: +switch-master {text}");
            link.master_switched();
        }
    }
    Ok(())
}
