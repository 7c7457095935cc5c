//! The supervisor of one Redis server: its one pub/sub connection and the
//! command connection made with it.
//!
//! It connects (scripts loaded before anything is published), runs the
//! reader on the pub/sub stream, resubscribes every route the router
//! holds, declares the link up, then reconciles subscriptions with the
//! plan (`plan.rs`) whenever routes are marked dirty and on a tick, and
//! probes both connections every [`PROBE_EVERY`]. When a probe or a
//! command fails or the stream ends, the link goes down, the reader hands
//! back what it knows of each route (gap repair goes on across the
//! reconnect), and it reconnects with backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{PubSubSink, PubSubStream};

use super::history;
use super::link::{self, timed, Backoff, Commands, LinkError, PROBE_EVERY};
use super::plan::{Unsubscribes, BATCH, RECONCILE_EVERY};
use super::reader::{Event, Reader, Tell};
use super::supervisor::Base;
use crate::metrics;

/// How long a stopping reader may take to hand its state back.
const READER_STOP: Duration = Duration::from_secs(1);

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
}

impl Supervisor {
    pub fn new(base: Base, reader: Reader) -> Supervisor {
        Supervisor {
            base,
            reader: Some(reader),
            unsubscribes: Unsubscribes::default(),
            tell: None,
        }
    }

    pub async fn run(mut self) {
        let mut backoff = Backoff::default();
        let mut outages = 0u64;
        loop {
            match self.connect().await {
                Ok((sink, stream, command)) => {
                    backoff.reset();
                    if outages > 0 {
                        tracing::info!("Redis reachable again");
                    }
                    let lost = self.serve(sink, stream, command).await;
                    self.base.link.set_down();
                    metrics::redis_reconnect();
                    tracing::warn!("Redis connection lost ({lost}); reconnecting");
                    outages += 1;
                }
                Err(e) => {
                    if outages == 0 || backoff.at_max() {
                        tracing::warn!("Redis unreachable ({e}); retrying");
                    }
                    outages += 1;
                }
            }
            backoff.wait().await;
        }
    }

    async fn connect(&self) -> Result<(PubSubSink, PubSubStream, Commands), LinkError> {
        let pubsub = self.base.link.open_pubsub().await?;
        let mut command = self.base.link.open_command().await?;
        if self.base.retention.is_on() {
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
            Reader::new(
                Arc::clone(&self.base.router),
                self.base.names.clone(),
                self.base.retention,
            )
        });
        let (tell, events) = Tell::channel(self.base.retention);
        self.tell = Some(tell);
        let mut reader = tokio::spawn(reader.run(stream, events, command.clone()));
        let lost = self.serve_with(&mut sink, &mut command, &reader).await;
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
        sink: &mut PubSubSink,
        command: &mut Commands,
        reader: &tokio::task::JoinHandle<Reader>,
    ) -> LinkError {
        // Everything the router holds must be (re)subscribed.
        self.base.subs.mark_all(self.base.router.routes());
        if let Err(e) = self.reconcile(sink).await {
            return e;
        }
        self.tell(Event::Settled);
        self.base.link.set_up(command.clone());
        let mut probe = tokio::time::interval(PROBE_EVERY);
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        loop {
            let step = tokio::select! {
                _ = self.base.subs.wake.notified() => self.reconcile(sink).await,
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

    /// Carries out the plan for every dirty route, in batches.
    async fn reconcile(&mut self, sink: &mut PubSubSink) -> Result<(), LinkError> {
        let plan = self.unsubscribes.plan(
            self.base.subs.take_dirty(),
            |r| self.base.router.wants(r),
            |r| self.base.subs.is_confirmed(r),
            Instant::now(),
        );
        for chunk in plan.subscribe.chunks(BATCH) {
            timed(sink.subscribe(self.base.channels(chunk))).await?;
            self.base.subs.confirm(chunk, true);
            self.tell(Event::Subscribed(chunk.to_vec()));
        }
        for chunk in plan.unsubscribe.chunks(BATCH) {
            timed(sink.unsubscribe(self.base.channels(chunk))).await?;
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

/// Both connections must answer a PING in time.
async fn probe_both(sink: &mut PubSubSink, command: &mut Commands) -> Result<(), LinkError> {
    timed(sink.ping::<redis::Value>()).await?;
    link::ping(command).await
}
