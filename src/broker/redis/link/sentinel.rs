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

use redis::aio::ConnectionLike;
use redis::{ProtocolVersion, PushInfo, PushKind, Value};

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

/// Listens for `+switch-master` of our master on the sentinels, one at a
/// time, for as long as the link lives; each event moves the link
/// ([`RedisLink::master_switched`]). A sentinel that refuses the
/// subscription (an ACL user without `+subscribe`) is logged and the next
/// one tried: without events the hub would only find a new master when
/// the old one fails it.
pub async fn watch(link: Arc<RedisLink>) {
    let Some(sentinels) = link.sentinels() else {
        return;
    };
    let mut backoff = Backoff::default();
    let mut last_failure = String::new();
    for sentinel in sentinels.list.iter().cycle() {
        match listen(&link, sentinels, sentinel).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                let why = super::reason(&e);
                if why != last_failure {
                    tracing::warn!(%sentinel, "no failover events from this sentinel ({why})");
                    last_failure = why;
                }
            }
        }
        if Arc::strong_count(&link) == 1 {
            return; // the hub stopped
        }
        backoff.wait().await;
    }
}

/// How often the events connection to a sentinel is probed (a half-open
/// connection would otherwise wait for events forever).
const SENTINEL_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Follows one sentinel's events until its connection ends or fails.
async fn listen(
    link: &RedisLink,
    sentinels: &Sentinels,
    sentinel: &NodeAddr,
) -> Result<(), LinkError> {
    let (pushes, mut incoming) = tokio::sync::mpsc::unbounded_channel();
    let push = move |push: PushInfo| -> Result<(), ()> {
        let _ = pushes.send(push);
        Ok(())
    };
    let client = sentinels.access.client(sentinel, ProtocolVersion::RESP3)?;
    let settings = config(TIMEOUT).set_push_sender(push);
    let mut conn = timed(client.get_multiplexed_async_connection_with_config(&settings)).await?;
    let mut subscribe = redis::Pipeline::new();
    subscribe.cmd("SUBSCRIBE").arg(SWITCH_MASTER);
    // An error reply is an answer, not an error, to redis-rs.
    let replies = timed(conn.send_packed_commands(&subscribe, 0, 1)).await?;
    if let Some(Value::ServerError(e)) = replies.first() {
        let details = e.details().unwrap_or("");
        let why = format!("SUBSCRIBE {SWITCH_MASTER} refused: {} {details}", e.code());
        return Err(LinkError::Refused(why));
    }
    let mut probe = tokio::time::interval(SENTINEL_PROBE_EVERY);
    loop {
        tokio::select! {
            _ = probe.tick() => super::ping(&mut conn).await?,
            push = incoming.recv() => match push {
                Some(push) if push.kind == PushKind::Message => on_event(link, sentinels, sentinel, push),
                Some(push) if push.kind == PushKind::Disconnection => return Err(LinkError::Closed),
                Some(_) => {}
                None => return Err(LinkError::Closed),
            },
        }
    }
}

/// The channel on which sentinels announce a new master.
const SWITCH_MASTER: &str = "+switch-master";

fn on_event(link: &RedisLink, sentinels: &Sentinels, sentinel: &NodeAddr, push: PushInfo) {
    let Some(text) = redis::Msg::from_push_info(push).and_then(|m| m.get_payload::<String>().ok())
    else {
        return;
    };
    // "<name> <old host> <old port> <new host> <new port>"
    if text.split_whitespace().next() == Some(sentinels.name.as_str()) {
        tracing::info!(%sentinel, "sentinel: +switch-master {text}");
        link.master_switched();
    }
}
