//! The Redis broker: many instances, one Redis, one pub/sub connection per
//! instance.
//!
//! - Publishing goes through one task that pipelines `PUBLISH` commands on
//!   the shared command connection, in order (per-sender order holds).
//! - Subscriptions are level-triggered: the router's transitions only mark
//!   routes dirty; the supervisor compares each dirty route's "wanted" (the
//!   router has local sockets on it) with "confirmed" (Redis said so) and
//!   sends the difference in batches. Unsubscribes wait a little, so a
//!   client that reconnects at once does not make the channel flap. After a
//!   reconnect every wanted route is dirty: resubscribing is the same code.
//! - The reader task hands each incoming message to the router, which
//!   never waits, so the pub/sub connection is always drained.
//! - A probe (PING on both connections) runs every second; a silent
//!   connection (half-open TCP, a failover) fails it and is rebuilt.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use tokio::sync::{mpsc, watch, Notify};

use super::{BoxFuture, Broker, BrokerError, Keep, Receipt};
use crate::channels::{Names, Route};
use crate::history::{Recovery, Since};
use crate::metrics::{self, DropReason};
use crate::protocol::{self, Encoded};
use crate::redis_link::{RedisLink, TIMEOUT};
use crate::router::Router;

/// How often the connections are probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long an unwanted channel stays subscribed before UNSUBSCRIBE.
const UNSUBSCRIBE_AFTER: Duration = Duration::from_millis(750);
/// How often deferred unsubscribes are looked at.
const RECONCILE_EVERY: Duration = Duration::from_millis(250);
/// Channels per SUBSCRIBE or UNSUBSCRIBE command.
const BATCH: usize = 1000;
/// Messages waiting to be published before publishing fails fast.
const PUBLISH_QUEUE: usize = 64 * 1024;
/// How long a join waits for Redis to confirm its subscriptions.
const LIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect backoff bounds (with jitter).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct RedisBroker {
    link: Arc<RedisLink>,
    names: Names,
    outgoing: mpsc::Sender<(String, Encoded)>,
    subs: Arc<Subscriptions>,
}

/// What the router wants and what Redis confirmed, shared between the
/// broker's callers and the supervisor.
#[derive(Default)]
struct Subscriptions {
    dirty: Mutex<HashSet<Route>>,
    wake: Notify,
    confirmed: Mutex<HashSet<Route>>,
    confirmations: watch::Sender<u64>,
}

impl RedisBroker {
    /// Starts the supervisor and the publisher; returns at once (Redis may
    /// be down: the hub starts anyway and reports not ready).
    pub fn start(link: Arc<RedisLink>, router: Arc<Router>, names: Names) -> Arc<RedisBroker> {
        let (outgoing, queue) = mpsc::channel(PUBLISH_QUEUE);
        let subs = Arc::new(Subscriptions::default());
        tokio::spawn(publish_loop(Arc::clone(&link), queue));
        let supervisor = Supervisor {
            link: Arc::clone(&link),
            router,
            names: names.clone(),
            subs: Arc::clone(&subs),
            pending_unsubscribe: HashMap::new(),
        };
        tokio::spawn(supervisor.run());
        Arc::new(RedisBroker {
            link,
            names,
            outgoing,
            subs,
        })
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
        _sender: &str,
        _keep: Keep,
    ) -> Result<Option<Receipt>, BrokerError> {
        if !self.link.is_up() {
            return Err(BrokerError::Unavailable);
        }
        self.outgoing
            .try_send((self.names.channel(route), msg))
            .map_err(|_| BrokerError::Unavailable)?;
        Ok(None)
    }

    fn recover<'a>(
        &'a self,
        _route: &'a Route,
        _since: &'a Since,
    ) -> BoxFuture<'a, Result<Recovery, BrokerError>> {
        Box::pin(std::future::ready(Ok(Recovery::off())))
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
        self.link.is_up()
    }
}

/// Publishes queued messages in order, as few pipelines as possible, with
/// up to [`PIPELINES_IN_FLIGHT`] of them awaiting Redis's answer at once:
/// a message queued while a pipeline is on its way goes out at once rather
/// than a round trip later. Order holds because each pipeline is handed to
/// the one command connection before the next one is built.
async fn publish_loop(link: Arc<RedisLink>, mut queue: mpsc::Receiver<(String, Encoded)>) {
    let mut in_flight = FuturesOrdered::new();
    let mut batch = Vec::with_capacity(256);
    loop {
        tokio::select! {
            biased;
            Some((count, sent)) = in_flight.next(), if !in_flight.is_empty() => {
                count_published(count, sent);
            }
            taken = queue.recv_many(&mut batch, 256), if in_flight.len() < PIPELINES_IN_FLIGHT => {
                if taken == 0 {
                    break;
                }
                let count = batch.len() as u64;
                match link.command() {
                    Some(conn) => in_flight.push_back(send_pipeline(conn, &batch, count)),
                    None => count_published(count, false),
                }
                batch.clear();
            }
        }
    }
}

const PIPELINES_IN_FLIGHT: usize = 16;

fn send_pipeline(
    mut conn: MultiplexedConnection,
    batch: &[(String, Encoded)],
    count: u64,
) -> impl std::future::Future<Output = (u64, bool)> {
    let mut pipe = redis::pipe();
    for (channel, msg) in batch {
        pipe.cmd("PUBLISH")
            .arg(channel)
            .arg(msg.as_str().as_bytes())
            .ignore();
    }
    async move { (count, pipe.query_async::<()>(&mut conn).await.is_ok()) }
}

fn count_published(count: u64, sent: bool) {
    if sent {
        metrics::redis_published(count);
    } else {
        metrics::dropped(DropReason::BrokerUnavailable, count);
    }
}

/// Owns the pub/sub connection: connects, resubscribes, reconciles,
/// probes, and reconnects with backoff.
struct Supervisor {
    link: Arc<RedisLink>,
    router: Arc<Router>,
    names: Names,
    subs: Arc<Subscriptions>,
    /// Unwanted but still subscribed routes, with the time they became so.
    pending_unsubscribe: HashMap<Route, Instant>,
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
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

    async fn connect(
        &self,
    ) -> Result<(PubSubSink, PubSubStream, MultiplexedConnection), LinkError> {
        let pubsub = tokio::time::timeout(TIMEOUT, self.link.client().get_async_pubsub())
            .await
            .map_err(|_| LinkError::Timeout)??;
        let command = self.link.open_command().await?;
        let (sink, stream) = pubsub.split();
        Ok((sink, stream, command))
    }

    /// Serves one connection until it fails; returns why.
    async fn serve(
        &mut self,
        mut sink: PubSubSink,
        stream: PubSubStream,
        mut command: MultiplexedConnection,
    ) -> LinkError {
        let reader = tokio::spawn(read_loop(
            stream,
            Arc::clone(&self.router),
            self.names.clone(),
        ));
        let lost = self.serve_with(&mut sink, &mut command, &reader).await;
        reader.abort();
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
        command: &mut MultiplexedConnection,
        reader: &tokio::task::JoinHandle<()>,
    ) -> LinkError {
        // Everything the router holds must be (re)subscribed.
        if let Ok(mut dirty) = self.subs.dirty.lock() {
            dirty.extend(self.router.routes());
        }
        if let Err(e) = self.reconcile(sink).await {
            return e;
        }
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
        let dirty: Vec<Route> = self
            .subs
            .dirty
            .lock()
            .map(|mut d| d.drain().collect())
            .unwrap_or_default();
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
        }
        Ok(())
    }

    fn is_confirmed(&self, route: &Route) -> bool {
        self.subs.confirmed.lock().is_ok_and(|c| c.contains(route))
    }

    fn confirm(&self, routes: &[Route], subscribed: bool) {
        if let Ok(mut confirmed) = self.subs.confirmed.lock() {
            for route in routes {
                if subscribed {
                    confirmed.insert(route.clone());
                } else {
                    confirmed.remove(route);
                }
            }
            metrics::redis_channels(confirmed.len());
        }
        self.subs.confirmations.send_modify(|n| *n += 1);
    }
}

/// Both connections must answer a PING in time.
async fn probe_both(
    sink: &mut PubSubSink,
    command: &mut MultiplexedConnection,
) -> Result<(), LinkError> {
    timed(sink.ping::<redis::Value>()).await?;
    timed(redis::cmd("PING").query_async::<redis::Value>(command)).await?;
    Ok(())
}

async fn timed<T>(
    op: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(TIMEOUT, op).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(LinkError::Timeout),
    }
}

/// Hands every message of the pub/sub connection to the router.
async fn read_loop(mut stream: PubSubStream, router: Arc<Router>, names: Names) {
    while let Some(msg) = stream.next().await {
        metrics::redis_received();
        let Some(route) = names.route(msg.get_channel_name()) else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(msg.get_payload_bytes()) else {
            tracing::debug!(
                channel = msg.get_channel_name(),
                "dropped a non-UTF-8 message"
            );
            continue;
        };
        if let Some(sent) = protocol::sent_at_of(text) {
            metrics::pubsub_lag(sent);
        }
        let sender = if route.skips_sender() {
            sender_of(text)
        } else {
            None
        };
        let encoded = Encoded::from_text(text);
        router.dispatch(&route, &encoded, sender.as_deref().unwrap_or(""));
    }
}

/// The `from_id` of a message, read without building the whole message.
fn sender_of(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct From<'a> {
        #[serde(borrow, default)]
        from_id: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<From<'_>>(text)
        .ok()
        .and_then(|f| f.from_id)
        .map(Cow::into_owned)
}

/// `base` ± 50 %, so instances that lost Redis together do not come back
/// in lockstep.
fn jitter(base: Duration) -> Duration {
    base.mul_f64(rand::random_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
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
