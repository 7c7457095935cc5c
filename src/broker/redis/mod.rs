//! The Redis broker: many instances, one Redis (or one Redis Cluster),
//! one pub/sub connection per instance (on a cluster, one per shard
//! master it needs). [`RedisBroker`] is the front door the hub talks to;
//! it picks the topology's supervisor from the configured servers.
//!
//! The layers, bottom up (no module imports one above it):
//!
//! - [`link`]: reaching Redis. Connections and their settings, timeouts,
//!   backoff with jitter, the probe, the errors; the shared command
//!   connection and whether Redis is up. Presence uses it too.
//! - The pieces every topology shares: [`plan`] (which channels to
//!   (un)subscribe, a pure function), [`subscriptions`] (what the router
//!   wants and what Redis confirmed), [`reader`] (the pub/sub stream,
//!   decoded once into deliveries, with gap repair from history),
//!   [`scripts`] (calling server-side scripts), [`numbering`] (numbering
//!   and keeping batches of messages), [`history`] (reading them back,
//!   recovery), [`slots`] (the
//!   cluster's slot map) and [`publish`] (ordered, pipelined publishing).
//! - The supervisors, side by side, each owning only what differs:
//!   [`single`] (one server: one pub/sub connection) and [`cluster`]
//!   (shards, masters, moved slots, failover).
//! - This file: publish, recover, subscribe, live, ready.
//!
//! Recovery ([`Broker::recover`]) reads history with one script per batch
//! on the command connection.

mod cluster;
pub(crate) mod history;
pub(crate) mod link;
mod listener;
pub(crate) mod numbering;
mod plan;
mod publish;
mod reader;
pub(crate) mod scripts;
mod single;
pub(crate) mod slots;
mod subscriptions;
mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{BoxFuture, Broker, BrokerError, Confirm, Keep};
use crate::channels::{Names, Route};
use crate::config::RedisServers;
use crate::history::{Recovery, Retention, Since};
use crate::protocol::Encoded;
use crate::router::Router;
use link::RedisLink;
use publish::Outgoing;
use reader::Reader;
use scripts::Keys;
use slots::SlotMap;
use subscriptions::Subscriptions;
use supervisor::Base;

/// Messages waiting to be published before publishing fails fast.
const PUBLISH_QUEUE: usize = 64 * 1024;
/// How long a join waits for Redis to confirm its subscriptions.
const LIVE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct RedisBroker {
    link: Arc<RedisLink>,
    names: Names,
    retention: Retention,
    outgoing: mpsc::Sender<Outgoing>,
    subs: Arc<Subscriptions>,
}

impl RedisBroker {
    /// Starts the supervisor and the publisher; returns at once (Redis may
    /// be down: the hub starts anyway and reports not ready).
    /// `retention` is `AETHER_HISTORY_*` (size 0: history off, and kept
    /// messages are plain `PUBLISH`es).
    pub fn start(
        link: Arc<RedisLink>,
        router: Arc<Router>,
        names: Names,
        retention: Retention,
    ) -> Arc<RedisBroker> {
        let (outgoing, queue) = mpsc::channel(PUBLISH_QUEUE);
        let subs = Arc::new(Subscriptions::default());
        let reader = Reader::new(Arc::clone(&router), names.clone(), retention);
        let base = Base {
            link: Arc::clone(&link),
            router,
            names: names.clone(),
            retention,
            subs: Arc::clone(&subs),
        };
        match link.servers() {
            RedisServers::Single { .. } | RedisServers::Sentinel { .. } => {
                tokio::spawn(publish::run(Arc::clone(&link), queue, retention, None));
                tokio::spawn(single::Supervisor::new(base, reader).run());
            }
            RedisServers::Cluster { .. } => {
                let map = Arc::new(SlotMap::new());
                let sharding = Some(Arc::clone(&map));
                tokio::spawn(publish::run(Arc::clone(&link), queue, retention, sharding));
                tokio::spawn(cluster::Supervisor::new(base, map).run(reader));
            }
        }
        Arc::new(RedisBroker {
            link,
            names,
            retention,
            outgoing,
            subs,
        })
    }

    fn keys(&self, route: &Route) -> Keys {
        Keys {
            position: self.names.position_key(route),
            history: self.names.history_key(route),
        }
    }
}

impl Broker for RedisBroker {
    fn publish(
        &self,
        route: &Route,
        msg: Encoded,
        sender: &str,
        keep: Keep,
        confirm: Option<Confirm>,
    ) -> Result<(), BrokerError> {
        // Returning drops `confirm` unsent: it tells of the failure.
        if !self.link.is_up() {
            return Err(BrokerError::Unavailable);
        }
        let kept = (keep == Keep::Yes && self.retention.is_on() && route.is_kept()).then(|| {
            publish::Kept {
                keys: self.keys(route),
                sender: sender.to_owned(),
            }
        });
        let item = Outgoing {
            channel: self.names.channel(route),
            msg,
            kept,
            confirm,
        };
        self.outgoing
            .try_send(item)
            .map_err(|_| BrokerError::Unavailable)
    }

    fn recover<'a>(
        &'a self,
        route: &'a Route,
        since: &'a Since,
    ) -> BoxFuture<'a, Result<Recovery, BrokerError>> {
        Box::pin(async move {
            if !self.retention.is_on() {
                return Ok(Recovery::off());
            }
            let mut conn = self.link.command().ok_or(BrokerError::Unavailable)?;
            history::recover(&mut conn, &self.keys(route), since, self.retention)
                .await
                .map_err(|e| {
                    tracing::debug!(?route, "history unreadable: {e}");
                    BrokerError::Unavailable
                })
        })
    }

    fn subscribe(&self, routes: &[Route]) {
        self.subs.mark_dirty(routes);
    }

    fn unsubscribe(&self, routes: &[Route]) {
        self.subs.mark_dirty(routes);
    }

    fn live<'a>(&'a self, routes: &'a [Route]) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut confirmations = self.subs.confirmations.subscribe();
            let deadline = tokio::time::Instant::now() + LIVE_TIMEOUT;
            loop {
                if !self.link.is_up() {
                    return Err(BrokerError::Unavailable);
                }
                if self.subs.all_confirmed(routes) {
                    return Ok(());
                }
                match tokio::time::timeout_at(deadline, confirmations.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return Err(BrokerError::Unavailable),
                }
            }
        })
    }

    fn unready(&self) -> Option<String> {
        self.link.unready()
    }
}
