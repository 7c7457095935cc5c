//! The Redis broker on a Redis Cluster (docs/protocol.md section 7): sharded
//! pub/sub, one pub/sub connection per shard master this instance needs.
//!
//! Everything but the pub/sub connections is shared with the single-Redis
//! broker (`broker/redis/`): the router marks routes dirty, the plan
//! decides what to (un)subscribe, the publisher pipelines publishes (here
//! split by master, `SPUBLISH`), one reader dispatches every shard's
//! messages and repairs gaps from history, and joins wait for
//! confirmation. This module's [`Supervisor`] stands beside the
//! single-Redis one (`single.rs`):
//!
//! - The slot map ([`SlotMap`], from `CLUSTER SHARDS`) is refreshed on a
//!   timer, when a publish or subscribe is answered `MOVED`/`ASK`, when a
//!   node unsubscribes one of our channels itself (its slot moved), and
//!   after a shard connection is lost; after each refresh, a shard whose
//!   channels now belong to another master is rebuilt.
//! - Reconciliation is the shared plan (`plan.rs`), per shard: a dirty route's
//!   channel goes to the master of its slot; each `SSUBSCRIBE` names one
//!   channel (a multi-slot `SSUBSCRIBE` is refused with CROSSSLOT, and
//!   [`shard`] says why not even several of one slot), pipelined per
//!   master, a batch per round trip. A shard connection is
//!   opened when a route first needs its master and closed when its last
//!   channel is unsubscribed.
//! - A shard connection is lost when its probe (PING every second) fails,
//!   when it drops, or when the server unsubscribes one of its channels on
//!   its own (a slot migration, a demoted master): its routes are handed
//!   to the reader as lost (they catch up from history once subscribed
//!   again), and resubscribed on whichever master owns them now. No socket
//!   notices but for the repaired gap.
//! - Readiness: `/readyz` is 503 while any wanted route cannot be
//!   subscribed (its master unreachable, its slot without a master) or the
//!   slot map is unknown.
//!
//! Broadcast is one sharded channel too, not classic pub/sub. Every
//! instance listens to it, so classic `PUBLISH` would cost nothing in
//! subscriptions, but on a cluster it is forwarded to every node over the
//! cluster bus, the traffic sharded pub/sub exists to avoid; and the
//! history script must run on the master of the broadcast route's slot
//! anyway (its keys live there), where an `SPUBLISH` is local. So all
//! three routes take one code path. The price: broadcast traffic loads one
//! shard, and every instance holds a connection to that shard's master.
//! Measured on a local 3-master, 3-replica Redis 7.0 cluster (`CLUSTER
//! INFO` bus counters): 1,000 classic `PUBLISH`es made 5,000 cluster-bus
//! messages (one to every other node), 1,000 `SPUBLISH`es made 1,000 (to
//! the shard's replica only); the gap grows with the cluster.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Msg;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use super::history;
use super::link::{reason, timed, Backoff, Commands, Connection, LinkError, NodeAddr, PROBE_EVERY};
use super::listener::{Alarm, Answer, Inbox, Listener, ListenerId};
use super::plan::{Unsubscribes, BATCH, RECONCILE_EVERY};
use super::reader::{Event, Reader, Tell};
use super::slots::{Slot, SlotMap};
use super::supervisor::Base;
use crate::channels::Route;
use crate::metrics;

/// How often the slot map is read again without a reason.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// Owns the shard connections: connects, reconciles, probes, follows the
/// cluster's changes.
pub struct Supervisor {
    base: Base,
    map: Arc<SlotMap>,
    /// Whether the last refresh of the slot map worked.
    mapped: bool,
    shards: HashMap<NodeAddr, Listener>,
    next_shard: u64,
    /// Where each confirmed route is subscribed.
    placed: HashMap<Route, NodeAddr>,
    unsubscribes: Unsubscribes,
    /// Wanted routes not subscribed because their master is out of reach.
    failing: HashSet<Route>,
    /// The last failure to read the map or open a shard: why the
    /// instance is not ready (`/readyz`).
    trouble: String,
    messages: UnboundedSender<Msg>,
    alarms: UnboundedSender<Alarm>,
    /// Tells the reader what was (un)subscribed or lost.
    tell: Tell,
    /// Taken by [`Supervisor::run`].
    inboxes: Option<Inboxes>,
}

struct Inboxes {
    messages: UnboundedReceiver<Msg>,
    alarms: UnboundedReceiver<Alarm>,
    events: UnboundedReceiver<Event>,
}

impl Supervisor {
    pub fn new(base: Base, map: Arc<SlotMap>) -> Supervisor {
        let (messages, messages_rx) = mpsc::unbounded_channel();
        let (alarms, alarms_rx) = mpsc::unbounded_channel();
        let (tell, events_rx) = Tell::channel(base.retention);
        Supervisor {
            base,
            map,
            mapped: false,
            shards: HashMap::new(),
            next_shard: 0,
            placed: HashMap::new(),
            unsubscribes: Unsubscribes::default(),
            failing: HashSet::new(),
            trouble: String::new(),
            messages,
            alarms,
            tell,
            inboxes: Some(Inboxes {
                messages: messages_rx,
                alarms: alarms_rx,
                events: events_rx,
            }),
        }
    }

    pub async fn run(mut self, reader: Reader) {
        let Some(inboxes) = self.inboxes.take() else {
            return;
        };
        let command = self.connect().await;
        let mut messages = inboxes.messages;
        let stream = futures_util::stream::poll_fn(move |cx| messages.poll_recv(cx));
        self.base.link.set_up(command);
        tokio::spawn(reader.run(stream, inboxes.events, Arc::clone(&self.base.link)));
        let mut alarms = inboxes.alarms;
        let mut probe = tokio::time::interval(PROBE_EVERY);
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        let mut refresh = tokio::time::interval(REFRESH_EVERY);
        let map = Arc::clone(&self.map);
        loop {
            tokio::select! {
                _ = self.base.subs.wake.notified() => self.reconcile().await,
                _ = tick.tick() => self.reconcile().await,
                _ = probe.tick() => self.probe().await,
                _ = refresh.tick() => self.refresh_quietly().await,
                _ = map.stale() => self.refresh_quietly().await,
                Some(alarm) = alarms.recv() => self.on_alarm(alarm).await,
            }
            // Not ready while a wanted route cannot be subscribed.
            if !self.mapped {
                let why = format!("no slot map ({})", self.trouble);
                self.base.link.set_deaf(&LinkError::Refused(why));
            } else if !self.failing.is_empty() {
                let why = format!(
                    "{} wanted channels not subscribed ({})",
                    self.failing.len(),
                    self.trouble
                );
                self.base.link.set_deaf(&LinkError::Refused(why));
            } else {
                self.base.link.set_listening();
            }
        }
    }

    /// The command connection (scripts loaded) and a first slot map; tries
    /// until both work.
    async fn connect(&mut self) -> Commands {
        let mut backoff = Backoff::default();
        let mut attempts = 0u64;
        loop {
            match self.try_connect().await {
                Ok(command) => {
                    if attempts > 0 {
                        tracing::info!("Redis Cluster reachable again");
                    }
                    return command;
                }
                Err(e) => {
                    if self.base.link.is_new_failure(Connection::Commands, &e) || backoff.at_max() {
                        let why = reason(&e);
                        tracing::warn!("Redis Cluster unreachable ({why}); retrying");
                    }
                    self.base.link.set_down(&e);
                }
            }
            attempts += 1;
            backoff.wait().await;
        }
    }

    async fn try_connect(&mut self) -> Result<Commands, LinkError> {
        self.refresh().await?;
        let mut command = self.base.link.open_command().await?;
        if self.base.retention.is_on() {
            // SCRIPT LOAD goes to every master.
            timed(history::load(&mut command)).await?;
        }
        Ok(command)
    }

    /// [`Supervisor::refresh`], whose failure shows in `/readyz` (and the
    /// next refresh tries again).
    async fn refresh_quietly(&mut self) {
        let _ = self.refresh().await;
    }

    /// Reads the slot map again; rebuilds the shards whose channels moved.
    async fn refresh(&mut self) -> Result<(), LinkError> {
        let current = self.map.get();
        match current.fetch(&self.base.link).await {
            Ok(topology) => {
                self.mapped = true;
                if !topology.is_complete() {
                    tracing::debug!("some slots have no healthy master (a failover under way?)");
                }
                if topology != *current {
                    tracing::info!(
                        masters = topology.masters().len(),
                        "cluster slot map changed"
                    );
                    self.map.set(topology);
                    self.lose_moved();
                }
            }
            Err(e) => {
                if self.mapped {
                    tracing::warn!("cluster slot map unreadable: {e}");
                }
                self.mapped = false;
                let e = LinkError::Refused(e.to_string());
                self.trouble = reason(&e);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Loses every shard holding a channel whose slot another master owns.
    fn lose_moved(&mut self) {
        let topology = self.map.get();
        let moved: Vec<NodeAddr> = self
            .shards
            .iter()
            .filter(|(addr, shard)| {
                shard.routes.iter().any(|route| {
                    let slot = Slot::of(&self.base.names.channel(route));
                    topology.master_of(slot) != Some(*addr)
                })
            })
            .map(|(addr, _)| addr.clone())
            .collect();
        for addr in moved {
            self.lose(&addr, "its slots moved");
        }
    }

    async fn on_alarm(&mut self, alarm: Alarm) {
        let (id, unsolicited) = match alarm {
            Alarm::Disconnected { id } => (id, None),
            Alarm::Unsubscribed { id, channel } => (id, Some(channel)),
        };
        let Some(addr) = self.addr_of(id) else {
            return; // a connection replaced already
        };
        let why = match unsolicited {
            None => "disconnected",
            Some(channel) => {
                // Ours to unsubscribe only if still placed there: what we
                // unsubscribed ourselves is no longer.
                let ours = self
                    .base
                    .names
                    .route(&channel)
                    .is_some_and(|r| self.placed.get(&r) == Some(&addr));
                if !ours {
                    return;
                }
                "the server unsubscribed a channel (slot moved)"
            }
        };
        self.lose(&addr, why);
        self.refresh_quietly().await;
        self.reconcile().await;
    }

    fn addr_of(&self, id: ListenerId) -> Option<NodeAddr> {
        self.shards
            .iter()
            .find(|(_, s)| s.id == id)
            .map(|(addr, _)| addr.clone())
    }

    /// Every shard must answer a PING in time.
    async fn probe(&mut self) {
        let addrs: Vec<NodeAddr> = self.shards.keys().cloned().collect();
        let link = Arc::clone(&self.base.link);
        let mut lost = false;
        for addr in addrs {
            let Some(shard) = self.shards.get_mut(&addr) else {
                continue;
            };
            if let Err(e) = shard.probe(&link).await {
                self.lose(&addr, &format!("probe failed: {e}"));
                lost = true;
            }
        }
        if lost || !self.failing.is_empty() || !self.mapped {
            self.refresh_quietly().await;
        }
    }

    /// Drops a shard's connection; its wanted routes are subscribed again
    /// (wherever their slot is now) and catch up from history.
    fn lose(&mut self, addr: &NodeAddr, why: &str) {
        let Some(shard) = self.shards.remove(addr) else {
            return;
        };
        let label = addr.to_string();
        tracing::warn!(shard = %label, "shard pub/sub connection lost ({why}); resubscribing");
        metrics::redis_shard_reconnect(&label);
        metrics::redis_reconnect();
        metrics::redis_shard(&label, false, 0);
        let routes: Vec<Route> = shard.routes.into_iter().collect();
        for route in &routes {
            self.placed.remove(route);
            self.unsubscribes.forget(route);
        }
        self.base.subs.confirm(&routes, false);
        let (wanted, unwanted): (Vec<Route>, Vec<Route>) =
            routes.into_iter().partition(|r| self.base.router.wants(r));
        self.failing.extend(wanted.iter().cloned());
        self.base.subs.mark_all(wanted.iter().cloned());
        self.tell(Event::Unsubscribed(unwanted));
        self.tell(Event::Lost(wanted));
    }

    /// Carries out the plan for every dirty route (and every route that
    /// failed before), shard by shard.
    async fn reconcile(&mut self) {
        let mut dirty = self.base.subs.take_dirty();
        dirty.extend(self.failing.iter().cloned());
        let router = &self.base.router;
        self.failing.retain(|r| router.wants(r));
        let placed = &self.placed;
        let plan = self.unsubscribes.plan(
            dirty,
            |r| router.wants(r),
            |r| placed.contains_key(r),
            Instant::now(),
        );
        self.subscribe(plan.subscribe).await;
        self.unsubscribe(plan.unsubscribe).await;
        self.close_idle();
    }

    async fn subscribe(&mut self, routes: Vec<Route>) {
        let topology = self.map.get();
        let mut groups: BTreeMap<NodeAddr, Vec<Route>> = BTreeMap::new();
        for route in routes {
            let slot = Slot::of(&self.base.names.channel(&route));
            match topology.master_of(slot) {
                Some(master) => groups.entry(master.clone()).or_default().push(route),
                None => {
                    self.failing.insert(route);
                }
            }
        }
        for (master, routes) in groups {
            for chunk in routes.chunks(BATCH) {
                self.subscribe_on(&master, chunk).await;
            }
        }
    }

    /// `SSUBSCRIBE`s routes on their master: one pipeline of one-channel
    /// commands (each within one slot, so never CROSSSLOT; the master owns
    /// all their slots, so one round trip for the lot).
    async fn subscribe_on(&mut self, master: &NodeAddr, routes: &[Route]) {
        let label = master.to_string();
        if !self.shards.contains_key(master) {
            if let Err(e) = self.open(master).await {
                tracing::debug!(shard = %label, "cannot open a shard connection: {e}");
                metrics::redis_shard_failure(&label);
                self.failing.extend(routes.iter().cloned());
                return;
            }
        }
        let Some(shard) = self.shards.get_mut(master) else {
            return;
        };
        let channels = self.base.channels(routes);
        let answers = match timed(shard.subscribe(&channels)).await {
            Ok(answers) if answers.len() == routes.len() => answers,
            other => {
                let why = other
                    .err()
                    .map_or("short answer".to_owned(), |e| e.to_string());
                metrics::redis_shard_failure(&label);
                self.lose(master, &format!("SSUBSCRIBE failed: {why}"));
                self.failing.extend(routes.iter().cloned());
                return;
            }
        };
        let mut confirmed = Vec::new();
        let mut moved = false;
        for (route, answer) in routes.iter().zip(answers) {
            match answer {
                Answer::Confirmed => {
                    confirmed.push(route.clone());
                    continue;
                }
                Answer::Moved => moved = true,
                Answer::Refused(e) => tracing::warn!(?route, "SSUBSCRIBE refused: {e}"),
            }
            self.failing.insert(route.clone());
        }
        for route in &confirmed {
            shard.routes.insert(route.clone());
            self.placed.insert(route.clone(), master.clone());
            self.failing.remove(route);
        }
        metrics::redis_shard(&label, true, shard.routes.len());
        self.base.subs.confirm(&confirmed, true);
        self.tell(Event::Subscribed(confirmed));
        if moved {
            self.map.moved();
        }
    }

    async fn open(&mut self, master: &NodeAddr) -> Result<(), String> {
        self.next_shard += 1;
        let id = ListenerId(self.next_shard);
        let inbox = Inbox {
            messages: self.messages.clone(),
            alarms: self.alarms.clone(),
        };
        let opening = Listener::open(&self.base.link, id, Some(master), inbox);
        let shard = opening.await.map_err(|e| {
            self.trouble = format!("shard {master}: {}", reason(&e));
            e.to_string()
        })?;
        tracing::info!(shard = %master, "shard pub/sub connection open");
        metrics::redis_shard_opened(&master.to_string());
        self.shards.insert(master.clone(), shard);
        Ok(())
    }

    async fn unsubscribe(&mut self, routes: Vec<Route>) {
        let mut by_shard: HashMap<NodeAddr, Vec<Route>> = HashMap::new();
        for route in routes {
            if let Some(addr) = self.placed.get(&route) {
                by_shard.entry(addr.clone()).or_default().push(route);
            }
        }
        for (addr, routes) in by_shard {
            for chunk in routes.chunks(BATCH) {
                self.unsubscribe_on(&addr, chunk).await;
            }
        }
    }

    async fn unsubscribe_on(&mut self, addr: &NodeAddr, routes: &[Route]) {
        let Some(shard) = self.shards.get_mut(addr) else {
            return;
        };
        let channels = self.base.channels(routes);
        if let Err(e) = timed(shard.unsubscribe(&channels)).await {
            self.lose(addr, &format!("SUNSUBSCRIBE failed: {e}"));
            return;
        }
        for route in routes {
            shard.routes.remove(route);
            self.placed.remove(route);
        }
        metrics::redis_shard(&addr.to_string(), true, shard.routes.len());
        self.base.subs.confirm(routes, false);
        self.tell(Event::Unsubscribed(routes.to_vec()));
    }

    /// A master no local route needs gets no connection.
    fn close_idle(&mut self) {
        self.shards.retain(|addr, shard| {
            let keep = !shard.routes.is_empty();
            if !keep {
                tracing::debug!(shard = %addr, "shard pub/sub connection closed (no channel left)");
                metrics::redis_shard(&addr.to_string(), false, 0);
            }
            keep
        });
    }

    fn tell(&self, event: Event) {
        self.tell.send(event);
    }
}
