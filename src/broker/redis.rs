//! The Redis broker: many instances, one Redis, one pub/sub connection per
//! instance.
//!
//! - Publishing goes through one task ([`publish`]) that pipelines
//!   `PUBLISH` commands, and with history on the numbering script for kept
//!   messages, on the shared command connection, in order (per-sender
//!   order holds).
//! - Subscriptions are level-triggered: the router's transitions only mark
//!   routes dirty; the supervisor compares each dirty route's "wanted" (the
//!   router has local sockets on it) with "confirmed" (Redis said so) and
//!   sends the difference in batches. Unsubscribes wait a little, so a
//!   client that reconnects at once does not make the channel flap. After a
//!   reconnect every wanted route is dirty: resubscribing is the same code.
//! - The reader task ([`reader`]) hands each incoming message to the
//!   router, which never waits, so the pub/sub connection is always
//!   drained; with history on it also repairs gaps in a route's numbered
//!   messages from history, across reconnects.
//! - Recovery ([`Broker::recover`]) reads history with one script per
//!   batch on the command connection (`history/redis.rs`).
//! - A probe (PING on both connections) runs every second; a silent
//!   connection (half-open TCP, a failover) fails it and is rebuilt.
//!
//! On a Redis Cluster the same broker runs with the cluster supervisor of
//! `broker/cluster/` in place of this file's: the publisher, the reader,
//! the wanted-vs-confirmed bookkeeping ([`Subscriptions`]) and the
//! [`Broker`] side are shared.

pub(super) mod publish;
pub(super) mod reader;
mod subscriptions;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};

use super::{BoxFuture, Broker, BrokerError, Keep, Receipt};
use crate::channels::{Names, Route};
use crate::history::redis::{self as history, Keys};
use crate::history::{Recovery, Retention, Since};
use crate::metrics;
use crate::protocol::Encoded;
use crate::redis_link::{Commands, RedisLink, TIMEOUT};
use crate::router::Router;
use publish::Outgoing;
use reader::{Event, Reader};
pub(super) use subscriptions::Subscriptions;

/// How often the connections are probed.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long an unwanted channel stays subscribed before UNSUBSCRIBE.
pub(super) const UNSUBSCRIBE_AFTER: Duration = Duration::from_millis(750);
/// How often deferred unsubscribes are looked at.
pub(super) const RECONCILE_EVERY: Duration = Duration::from_millis(250);
/// Channels per SUBSCRIBE or UNSUBSCRIBE command.
pub(super) const BATCH: usize = 1000;
/// Messages waiting to be published before publishing fails fast.
const PUBLISH_QUEUE: usize = 64 * 1024;
/// How long a join waits for Redis to confirm its subscriptions.
const LIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping reader may take to hand its state back.
const READER_STOP: Duration = Duration::from_secs(1);
/// Reconnect backoff bounds (with jitter).
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);

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
        if link.is_cluster() {
            let map = Arc::new(super::cluster::SlotMap::new());
            tokio::spawn(publish::run(
                Arc::clone(&link),
                queue,
                retention,
                Some(Arc::clone(&map)),
            ));
            let reader = Reader::new(Arc::clone(&router), names.clone(), retention);
            let supervisor = super::cluster::Supervisor::new(
                Arc::clone(&link),
                router,
                names.clone(),
                retention,
                Arc::clone(&subs),
                map,
            );
            tokio::spawn(supervisor.run(reader));
            return Arc::new(RedisBroker {
                link,
                names,
                retention,
                outgoing,
                subs,
            });
        }
        tokio::spawn(publish::run(Arc::clone(&link), queue, retention, None));
        let supervisor = Supervisor {
            link: Arc::clone(&link),
            reader: Some(Reader::new(Arc::clone(&router), names.clone(), retention)),
            router,
            names: names.clone(),
            retention,
            subs: Arc::clone(&subs),
            pending_unsubscribe: HashMap::new(),
            events: None,
        };
        tokio::spawn(supervisor.run());
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

    /// What numbering needs for a kept message, and its receipt.
    fn kept(&self, route: &Route, sender: &str, keep: Keep) -> (publish::Kept, Option<Receipt>) {
        let (tx, rx) = match keep {
            Keep::WithReceipt => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            Keep::Yes | Keep::No => (None, None),
        };
        let kept = publish::Kept {
            keys: self.keys(route),
            sender: sender.to_owned(),
            receipt: tx,
        };
        (kept, rx)
    }

    fn mark_dirty(&self, routes: &[Route]) {
        if routes.is_empty() {
            return;
        }
        if let Ok(mut dirty) = self.subs.dirty.lock() {
            dirty.extend(routes.iter().cloned());
        }
        self.subs.wake.notify_one();
    }

    fn all_confirmed(&self, routes: &[Route]) -> bool {
        self.subs
            .confirmed
            .lock()
            .is_ok_and(|c| routes.iter().all(|r| c.contains(r)))
    }
}

impl Broker for RedisBroker {
    fn publish(
        &self,
        route: &Route,
        msg: Encoded,
        sender: &str,
        keep: Keep,
    ) -> Result<Option<Receipt>, BrokerError> {
        if !self.link.is_up() {
            return Err(BrokerError::Unavailable);
        }
        let (kept, receipt) = match keep {
            Keep::Yes | Keep::WithReceipt if self.retention.is_on() => {
                let (kept, receipt) = self.kept(route, sender, keep);
                (Some(kept), receipt)
            }
            _ => (None, None),
        };
        let item = Outgoing {
            channel: self.names.channel(route),
            msg,
            kept,
        };
        self.outgoing
            .try_send(item)
            .map_err(|_| BrokerError::Unavailable)?;
        Ok(receipt)
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
        self.mark_dirty(routes);
    }

    fn unsubscribe(&self, routes: &[Route]) {
        self.mark_dirty(routes);
    }

    fn live<'a>(&'a self, routes: &'a [Route]) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut confirmations = self.subs.confirmations.subscribe();
            let deadline = tokio::time::Instant::now() + LIVE_TIMEOUT;
            loop {
                if !self.link.is_up() {
                    return Err(BrokerError::Unavailable);
                }
                if self.all_confirmed(routes) {
                    return Ok(());
                }
                match tokio::time::timeout_at(deadline, confirmations.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return Err(BrokerError::Unavailable),
                }
            }
        })
    }

    fn is_ready(&self) -> bool {
        self.link.is_up() && !self.subs.impaired.load(Ordering::Acquire)
    }
}

/// Owns the pub/sub connection: connects, resubscribes, reconciles,
/// probes, and reconnects with backoff.
struct Supervisor {
    link: Arc<RedisLink>,
    router: Arc<Router>,
    names: Names,
    retention: Retention,
    subs: Arc<Subscriptions>,
    /// Unwanted but still subscribed routes, with the time they became so.
    pending_unsubscribe: HashMap<Route, Instant>,
    /// The reader between two connections (it runs as a task meanwhile):
    /// what it knows of each route outlives a connection.
    reader: Option<Reader>,
    /// Tells the running reader what was (un)subscribed.
    events: Option<mpsc::UnboundedSender<Event>>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {TIMEOUT:?}")]
    Timeout,
    #[error("the pub/sub connection closed")]
    StreamEnded,
}

impl Supervisor {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut outages = 0u64;
        loop {
            match self.connect().await {
                Ok((sink, stream, command)) => {
                    backoff = BACKOFF_MIN;
                    if outages > 0 {
                        tracing::info!("Redis reachable again");
                    }
                    let lost = self.serve(sink, stream, command).await;
                    self.link.set_down();
                    metrics::redis_reconnect();
                    tracing::warn!("Redis connection lost ({lost}); reconnecting");
                    outages += 1;
                }
                Err(e) => {
                    if outages == 0 || backoff == BACKOFF_MAX {
                        tracing::warn!("Redis unreachable ({e}); retrying");
                    }
                    outages += 1;
                }
            }
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn connect(&self) -> Result<(PubSubSink, PubSubStream, Commands), LinkError> {
        let Some(client) = self.link.client() else {
            return Err(LinkError::StreamEnded);
        };
        let pubsub = tokio::time::timeout(TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| LinkError::Timeout)??;
        let mut command = self.link.open_command().await?;
        if self.retention.is_on() {
            // Before the link is up: no kept message goes out unloaded.
            timed(history::load(&mut command)).await?;
        }
        let (sink, stream) = pubsub.split();
        Ok((sink, stream, command))
    }

    /// Serves one connection until it fails; returns why.
    async fn serve(
        &mut self,
        mut sink: PubSubSink,
        stream: PubSubStream,
        mut command: Commands,
    ) -> LinkError {
        let reader = self.reader.take().unwrap_or_else(|| {
            Reader::new(Arc::clone(&self.router), self.names.clone(), self.retention)
        });
        let (events, events_rx) = mpsc::unbounded_channel();
        self.events = Some(events);
        let mut reader = tokio::spawn(reader.run(stream, events_rx, command.clone()));
        let lost = self.serve_with(&mut sink, &mut command, &reader).await;
        // Closing the events ends the reader, which hands its state back.
        self.events = None;
        self.reader = match tokio::time::timeout(READER_STOP, &mut reader).await {
            Ok(Ok(state)) => Some(state),
            _ => {
                reader.abort();
                tracing::warn!("the pub/sub reader did not stop; gap repair starts afresh");
                None
            }
        };
        if let Ok(mut confirmed) = self.subs.confirmed.lock() {
            confirmed.clear();
        }
        self.pending_unsubscribe.clear();
        metrics::redis_channels(0);
        lost
    }

    async fn serve_with(
        &mut self,
        sink: &mut PubSubSink,
        command: &mut Commands,
        reader: &tokio::task::JoinHandle<Reader>,
    ) -> LinkError {
        // Everything the router holds must be (re)subscribed.
        self.subs.mark_all(self.router.routes());
        if let Err(e) = self.reconcile(sink).await {
            return e;
        }
        self.tell(Event::Settled);
        self.link.set_up(command.clone());
        let mut probe = tokio::time::interval(PROBE_EVERY);
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        loop {
            let step = tokio::select! {
                _ = self.subs.wake.notified() => self.reconcile(sink).await,
                _ = tick.tick() => self.reconcile(sink).await,
                _ = probe.tick() => probe_both(sink, command).await,
            };
            if let Err(e) = step {
                return e;
            }
            if reader.is_finished() {
                return LinkError::StreamEnded;
            }
        }
    }

    /// Brings Redis's subscriptions in line with the router for every dirty
    /// route, and sends the unsubscribes that are due.
    async fn reconcile(&mut self, sink: &mut PubSubSink) -> Result<(), LinkError> {
        let dirty = self.subs.take_dirty();
        let now = Instant::now();
        let mut subscribe = Vec::new();
        for route in dirty {
            let wanted = self.router.wants(&route);
            let confirmed = self.is_confirmed(&route);
            if wanted {
                self.pending_unsubscribe.remove(&route);
                if !confirmed {
                    subscribe.push(route);
                }
            } else if confirmed {
                self.pending_unsubscribe.entry(route).or_insert(now);
            }
        }
        for chunk in subscribe.chunks(BATCH) {
            let channels: Vec<String> = chunk.iter().map(|r| self.names.channel(r)).collect();
            timed(sink.subscribe(channels)).await?;
            self.confirm(chunk, true);
            self.tell(Event::Subscribed(chunk.to_vec()));
        }
        let due: Vec<Route> = self
            .pending_unsubscribe
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= UNSUBSCRIBE_AFTER)
            .map(|(route, _)| route.clone())
            .collect();
        let mut unsubscribe = Vec::new();
        for route in due {
            self.pending_unsubscribe.remove(&route);
            if !self.router.wants(&route) {
                unsubscribe.push(route);
            }
        }
        for chunk in unsubscribe.chunks(BATCH) {
            let channels: Vec<String> = chunk.iter().map(|r| self.names.channel(r)).collect();
            timed(sink.unsubscribe(channels)).await?;
            self.confirm(chunk, false);
            self.tell(Event::Unsubscribed(chunk.to_vec()));
        }
        Ok(())
    }

    /// Tells the reader, which tracks routes only with history on.
    fn tell(&self, event: Event) {
        if let (true, Some(events)) = (self.retention.is_on(), &self.events) {
            let _ = events.send(event);
        }
    }

    fn is_confirmed(&self, route: &Route) -> bool {
        self.subs.is_confirmed(route)
    }

    fn confirm(&self, routes: &[Route], subscribed: bool) {
        self.subs.confirm(routes, subscribed);
    }
}

/// Both connections must answer a PING in time.
async fn probe_both(sink: &mut PubSubSink, command: &mut Commands) -> Result<(), LinkError> {
    timed(sink.ping::<redis::Value>()).await?;
    timed(redis::cmd("PING").query_async::<redis::Value>(command)).await?;
    Ok(())
}

pub(super) async fn timed<T>(
    op: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(TIMEOUT, op).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(LinkError::Timeout),
    }
}

/// `base` ± 50 %, so instances that lost Redis together do not come back
/// in lockstep.
pub(super) fn jitter(base: Duration) -> Duration {
    base.mul_f64(rand::random_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::reader::sender_of;
    use super::*;

    #[test]
    fn the_sender_is_read_from_any_json_object() {
        assert_eq!(
            sender_of(r#"{"a":1,"from_id":"svc","b":[2]}"#).as_deref(),
            Some("svc")
        );
        assert_eq!(sender_of(r#"{"from_id":"\u0061"}"#).as_deref(), Some("a"));
        assert_eq!(sender_of(r#"{"no":"sender"}"#), None);
        assert_eq!(sender_of("not json"), None);
    }

    #[test]
    fn jitter_stays_within_half_either_way() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(150));
        }
    }
}
