//! The supervisor of one Redis server: its command connection and its one
//! pub/sub connection, each with a life of its own. On Sentinel the one
//! server is whichever the master is now (the link finds it): a
//! `+switch-master` event, a lost connection or a probe that finds the
//! server demoted (`ROLE`) makes both connections again, to the new
//! master, and resubscribing, presence and gap repair follow as after any
//! reconnect.
//!
//! The two fail independently (docs/protocol.md section 7): losing the
//! pub/sub connection only delays this instance's deliveries (gap repair
//! fills them in), so publishing goes on over the command connection
//! meanwhile; only a failed command connection makes publishing fail
//! ("broker unavailable"). So two loops run side by side:
//!
//! - [`keep_commands`]: connects the command connection (scripts loaded
//!   before anything is published), declares the link up, probes it every
//!   [`PROBE_EVERY`], and on a failure declares it down and reconnects
//!   with backoff.
//! - [`Supervisor::run`]: once the link is up, opens the pub/sub
//!   [`Listener`], runs the reader on its messages, resubscribes every
//!   route the router holds, declares the instance listening, then
//!   reconciles subscriptions with the plan (`plan.rs`) whenever routes
//!   are marked dirty and on a tick, and probes. When the probe fails or
//!   the connection drops, the instance stops listening (not ready: a
//!   socket joining now would not get its messages), the reader hands
//!   back what it knows of each route (gap repair goes on across the
//!   reconnect), and it reconnects with backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Msg;
use tokio::sync::mpsc::{self, UnboundedReceiver};

use super::history;
use super::link::{timed, Backoff, Commands, Connection, LinkError, RedisLink, PROBE_EVERY};
use super::listener::{Alarm, Inbox, Listener, ListenerId};
use super::plan::{Unsubscribes, BATCH, RECONCILE_EVERY};
use super::reader::{Event, Reader, Tell};
use super::supervisor::Base;
use crate::history::Retention;
use crate::metrics;

/// How long a stopping reader may take to hand its state back.
const READER_STOP: Duration = Duration::from_secs(1);

/// Keeps the command connection: connects, probes, reconnects with backoff.
pub async fn keep_commands(link: Arc<RedisLink>, retention: Retention) {
    let mut backoff = Backoff::default();
    let mut outages = 0u64;
    let mut switches = link.switches();
    loop {
        switches.mark_unchanged();
        match connect_commands(&link, retention).await {
            Ok(mut command) => {
                backoff.reset();
                if outages > 0 {
                    tracing::info!("Redis command connection up again");
                }
                link.set_up(command.clone());
                let lost = probe_until_lost(&link, &mut command, &mut switches).await;
                link.set_down(&lost);
                link.probed();
                metrics::redis_reconnect();
                tracing::warn!("Redis command connection lost ({lost}); reconnecting");
                outages += 1;
                if matches!(lost, LinkError::Switched) {
                    continue; // to the new master at once
                }
            }
            Err(e) => {
                if link.is_new_failure(Connection::Commands, &e) || backoff.at_max() {
                    let why = super::link::reason(&e);
                    tracing::warn!("Redis command connection failed ({why}); retrying");
                }
                link.set_down(&e);
                link.probed();
                outages += 1;
            }
        }
        // A new master named meanwhile is worth trying at once.
        tokio::select! {
            () = backoff.wait() => {}
            _ = switches.changed() => {}
        }
    }
}

async fn connect_commands(link: &RedisLink, retention: Retention) -> Result<Commands, LinkError> {
    let mut command = link.open_command().await?;
    if retention.is_on() {
        // Before the link is up: no kept message goes out unloaded.
        timed(history::load(&mut command)).await?;
    }
    Ok(command)
}

/// Probes until the connection fails: every [`PROBE_EVERY`], and at
/// once when a publish failed as a dropped connection does (so a message
/// published meanwhile fails as unavailable, rather than being written to
/// a dead connection and left unconfirmed).
async fn probe_until_lost(
    link: &RedisLink,
    command: &mut Commands,
    switches: &mut tokio::sync::watch::Receiver<u64>,
) -> LinkError {
    let mut probe = tokio::time::interval(PROBE_EVERY);
    loop {
        tokio::select! {
            _ = probe.tick() => {}
            () = link.suspected() => {}
            _ = switches.changed() => return LinkError::Switched,
        }
        if let Err(e) = link.probe(command).await {
            return e;
        }
        link.probed();
    }
}

/// Owns the pub/sub connection: connects, resubscribes, reconciles,
/// probes, and reconnects with backoff.
pub struct Supervisor {
    base: Base,
    unsubscribes: Unsubscribes,
    /// The reader between two connections (it runs as a task meanwhile):
    /// what it knows of each route outlives a connection.
    reader: Option<Reader>,
    /// Tells the running reader what was (un)subscribed.
    tell: Option<Tell>,
    /// Each connection's id, so a replaced one's alarms are ignored.
    next_id: u64,
}

impl Supervisor {
    pub fn new(base: Base, reader: Reader) -> Supervisor {
        Supervisor {
            base,
            reader: Some(reader),
            unsubscribes: Unsubscribes::default(),
            tell: None,
            next_id: 0,
        }
    }

    pub async fn run(mut self) {
        let link = Arc::clone(&self.base.link);
        tokio::spawn(keep_commands(Arc::clone(&link), self.base.retention));
        if link.checks_role() {
            tokio::spawn(super::link::watch_sentinels(Arc::clone(&link)));
        }
        let mut connections = link.connections();
        let mut backoff = Backoff::default();
        loop {
            // Gap repair reads history on the command connection: no
            // sense subscribing before it works.
            while !link.is_up() {
                if connections.changed().await.is_err() {
                    return;
                }
            }
            let (messages, mut alarms, id) = self.next_inbox();
            let mut switches = link.switches();
            match Listener::open(&link, id, None, messages.inbox).await {
                Ok(listener) => {
                    let lost = self
                        .serve(listener, messages.rx, &mut alarms, &mut switches)
                        .await;
                    // Redis itself may be gone: the command connection
                    // says so first, so that not ready means publishing
                    // fails too.
                    link.recheck().await;
                    // A connection that never carried every route (a
                    // refused SUBSCRIBE) is retried with backoff, not at once.
                    if link.is_listening() {
                        backoff.reset();
                    }
                    link.set_deaf(&lost);
                    metrics::redis_reconnect();
                    tracing::warn!("Redis pub/sub connection lost ({lost}); reconnecting");
                    if matches!(lost, LinkError::Switched) {
                        continue;
                    }
                }
                Err(e) => {
                    if link.is_new_failure(Connection::PubSub, &e) || backoff.at_max() {
                        let why = super::link::reason(&e);
                        tracing::warn!("Redis pub/sub connection failed ({why}); retrying");
                    }
                    link.set_deaf(&e);
                }
            }
            tokio::select! {
                () = backoff.wait() => {}
                _ = switches.changed() => {}
            }
        }
    }

    /// A fresh inbox for the next connection, and its id.
    fn next_inbox(&mut self) -> (Messages, UnboundedReceiver<Alarm>, ListenerId) {
        self.next_id += 1;
        let (messages, rx) = mpsc::unbounded_channel();
        let (alarms, alarms_rx) = mpsc::unbounded_channel();
        let inbox = Inbox { messages, alarms };
        (Messages { inbox, rx }, alarms_rx, ListenerId(self.next_id))
    }

    /// Serves one connection until it fails; returns why.
    async fn serve(
        &mut self,
        mut listener: Listener,
        messages: UnboundedReceiver<Msg>,
        alarms: &mut UnboundedReceiver<Alarm>,
        switches: &mut tokio::sync::watch::Receiver<u64>,
    ) -> LinkError {
        let reader = self.reader.take().unwrap_or_else(|| {
            Reader::new(
                Arc::clone(&self.base.router),
                self.base.names.clone(),
                self.base.retention,
            )
        });
        let (tell, events) = Tell::channel(self.base.retention);
        self.tell = Some(tell);
        let mut messages = messages;
        let stream = futures_util::stream::poll_fn(move |cx| messages.poll_recv(cx));
        let link = Arc::clone(&self.base.link);
        let mut reader = tokio::spawn(reader.run(stream, events, link));
        let lost = self
            .serve_with(&mut listener, alarms, switches, &reader)
            .await;
        // Closing the events ends the reader, which hands its state back.
        self.tell = None;
        self.reader = match tokio::time::timeout(READER_STOP, &mut reader).await {
            Ok(Ok(state)) => Some(state),
            _ => {
                reader.abort();
                tracing::warn!("the pub/sub reader did not stop; gap repair starts afresh");
                None
            }
        };
        self.base.subs.lose_all();
        self.unsubscribes.clear();
        lost
    }

    async fn serve_with(
        &mut self,
        listener: &mut Listener,
        alarms: &mut UnboundedReceiver<Alarm>,
        switches: &mut tokio::sync::watch::Receiver<u64>,
        reader: &tokio::task::JoinHandle<Reader>,
    ) -> LinkError {
        // Everything the router holds must be (re)subscribed.
        self.base.subs.mark_all(self.base.router.routes());
        if let Err(e) = self.reconcile(listener).await {
            return e;
        }
        self.tell(Event::Settled);
        self.base.link.set_listening();
        let mut probe = tokio::time::interval(PROBE_EVERY);
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        loop {
            let step = tokio::select! {
                _ = self.base.subs.wake.notified() => self.reconcile(listener).await,
                _ = tick.tick() => self.reconcile(listener).await,
                _ = probe.tick() => listener.probe(&self.base.link).await,
                _ = switches.changed() => Err(LinkError::Switched),
                alarm = alarms.recv() => match alarm {
                    // One server unsubscribes nobody on its own; our own
                    // unsubscribes are confirmed this way.
                    Some(Alarm::Unsubscribed { .. }) => Ok(()),
                    Some(Alarm::Disconnected { .. }) | None => Err(LinkError::Closed),
                },
            };
            if let Err(e) = step {
                return e;
            }
            if reader.is_finished() {
                return LinkError::Closed;
            }
        }
    }

    /// Carries out the plan for every dirty route, in batches.
    async fn reconcile(&mut self, listener: &mut Listener) -> Result<(), LinkError> {
        let plan = self.unsubscribes.plan(
            self.base.subs.take_dirty(),
            |r| self.base.router.wants(r),
            |r| self.base.subs.is_confirmed(r),
            Instant::now(),
        );
        for chunk in plan.subscribe.chunks(BATCH) {
            let answers = timed(listener.subscribe(&self.base.channels(chunk))).await?;
            if answers.len() != chunk.len() || answers.iter().any(|a| !a.is_confirmed()) {
                return Err(LinkError::Refused(format!(
                    "SUBSCRIBE answered {answers:?}"
                )));
            }
            self.base.subs.confirm(chunk, true);
            self.tell(Event::Subscribed(chunk.to_vec()));
        }
        for chunk in plan.unsubscribe.chunks(BATCH) {
            timed(listener.unsubscribe(&self.base.channels(chunk))).await?;
            self.base.subs.confirm(chunk, false);
            self.tell(Event::Unsubscribed(chunk.to_vec()));
        }
        Ok(())
    }

    fn tell(&self, event: Event) {
        if let Some(tell) = &self.tell {
            tell.send(event);
        }
    }
}

/// Where one connection's messages go, and where the reader reads them.
struct Messages {
    inbox: Inbox,
    rx: UnboundedReceiver<Msg>,
}
