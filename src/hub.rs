//! The hub: one instance's router, broker and presence, and the operations
//! that sessions and HTTP handlers perform on them.
//!
//! [`Hub::connect`] joins a new socket to its routes and to presence and
//! returns a [`Membership`]: dropping it (normal end, error or panic) takes
//! the socket out again, so nothing a session does can leak a route or a
//! presence entry. Each membership holds a [`Slot`] of the instance's
//! connection capacity, reserved before the upgrade does any work.
//!
//! What operators do to the live fleet (`operator/`) reaches this instance
//! through the few methods at the end: close a client's sockets, close the
//! sockets a revocation covers, publish on and listen to the control
//! route, count sockets, read history and the live instances.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, BrokerError, Confirm, Keep, MemoryBroker};
use crate::channels::Route;
use crate::config::Limits;
use crate::delivery::Delivery;
use crate::history::{Recovery, Resume, Since};
use crate::metrics::{self, DropReason};
use crate::outbox::{Kick, Outbox};
use crate::presence::{MemoryPresence, Presence, PresenceError};
use crate::protocol::{self, Encoded, Message, PresenceEvent, Target, VisionId};
use crate::replay::Resumed;
use crate::revocation::{Revocation, TokenId, TokenSockets};
use crate::router::{ClientFull, Router, SocketId};

pub struct Hub {
    router: Arc<Router>,
    broker: Arc<dyn Broker>,
    presence: Arc<dyn Presence>,
    limits: Limits,
    capacity: Arc<Capacity>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// The sockets opened with a token, for revocations to find.
    tokens: TokenSockets,
}

/// The most control messages waiting for the operator's listener: a
/// burst of operators' actions, far more than any operator sends at once.
const CONTROL_QUEUE: usize = 16 * 1024;

/// How many sockets the instance holds, against its limit.
struct Capacity {
    max: usize,
    taken: AtomicUsize,
}

/// One socket's share of the instance's capacity, given back on drop.
pub struct Slot(Arc<Capacity>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Presence(#[from] PresenceError),
    #[error("the hub is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    TooManySockets(#[from] ClientFull),
}

impl Hub {
    /// A single-instance hub: in-memory routing and presence.
    pub fn in_memory(limits: Limits) -> Arc<Hub> {
        let router = Arc::new(Router::new());
        let broker = Arc::new(MemoryBroker::new(Arc::clone(&router), limits.history));
        Hub::new(router, broker, Arc::new(MemoryPresence::new()), limits)
    }

    /// A hub over the given parts; `broker` must deliver into `router`.
    pub fn new(
        router: Arc<Router>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn Presence>,
        limits: Limits,
    ) -> Arc<Hub> {
        metrics::connections_max(limits.max_connections);
        let capacity = Arc::new(Capacity {
            max: limits.max_connections,
            taken: AtomicUsize::new(0),
        });
        Arc::new(Hub {
            router,
            broker,
            presence,
            limits,
            capacity,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            tokens: TokenSockets::default(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Why the hub cannot take sockets now (`/readyz`); `None` when it can.
    pub fn unready(&self) -> Option<String> {
        if self.shutdown.is_cancelled() {
            return Some("shutting down".to_owned());
        }
        self.broker.unready()
    }

    /// Cancelled when the hub starts shutting down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Runs `task` as part of the hub: shutdown waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Starts the shutdown: sessions close with 1001 and leave.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
        self.router.kick_all(Kick::ShuttingDown);
        self.tasks.close();
    }

    /// Resolves once every session and its clean-up has finished, and
    /// presence holds nothing of this instance.
    pub async fn drained(&self) {
        self.tasks.wait().await;
        self.presence.close().await;
    }

    /// A share of the instance's capacity for one more socket, or `None`
    /// when it holds `AETHER_MAX_CONNECTIONS` already.
    pub fn reserve(&self) -> Option<Slot> {
        let capacity = &self.capacity;
        capacity
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(capacity)))
    }

    /// Joins a new socket of `client` in `group` to its three routes and
    /// to presence. Resolves once the routes are live, so anything
    /// published after this returns reaches the socket; with `resume`, also
    /// what the socket must be sent before its live messages.
    pub async fn connect(
        self: &Arc<Self>,
        group: VisionId,
        client: VisionId,
        slot: Slot,
        resume: &Resume,
    ) -> Result<Connected, ConnectError> {
        if self.shutdown.is_cancelled() {
            return Err(ConnectError::ShuttingDown);
        }
        let (outbox, rx) = Outbox::new(self.limits.outbound_queue);
        let routes = Route::for_socket(&group, &client);
        let socket = SocketId::next();
        let per_client = self.limits.max_sockets_per_client;
        let added = self
            .router
            .join(socket, &client, &outbox, &routes, per_client)?;
        // A shutdown that began while this socket joined missed it.
        if self.shutdown.is_cancelled() {
            outbox.kick(Kick::ShuttingDown);
        }
        self.broker.subscribe(&added);
        metrics::connection_opened();
        let mut member = Membership {
            hub: Arc::clone(self),
            socket,
            group,
            client,
            outbox,
            present: false,
            tokened: false,
            close_code: 1011,
            _slot: slot,
        };
        self.broker.live(&routes).await?;
        // Read only now that the routes are live: whatever history does not
        // hold yet is in the socket's queue.
        let resumed = match resume.is_empty() {
            true => None,
            false => Some(self.recover(&member.group, &member.client, resume).await?),
        };
        if self.presence.join(&member.group, &member.client).await? {
            self.announce(PresenceEvent::Join, &member.group, &member.client);
        }
        member.present = true;
        Ok(Connected {
            member,
            rx,
            resumed,
        })
    }

    async fn recover(
        &self,
        group: &VisionId,
        client: &VisionId,
        resume: &Resume,
    ) -> Result<Resumed, BrokerError> {
        let mut answers = Vec::new();
        for (kind, since) in resume.iter() {
            let route = kind.route(group, client);
            answers.push((*kind, self.broker.recover(&route, since).await?));
        }
        Ok(Resumed::assemble(group, client, answers))
    }

    /// Sends a validated message along its route (kept in history);
    /// `confirm`, if any, is told its fate once known.
    pub fn publish(&self, msg: &Message<'_>, confirm: Option<Confirm>) -> Result<(), BrokerError> {
        let Some(route) = route_of(msg) else {
            // Stays on the sending socket: nothing to publish.
            if let Some(confirm) = confirm {
                confirm.tell(Ok(None));
            }
            return Ok(());
        };
        self.send(&route, msg.encode(), &msg.from_id, Keep::Yes, confirm)
    }

    pub async fn members(&self, group: &VisionId) -> Result<Vec<String>, PresenceError> {
        self.presence.members(group).await
    }

    fn send(
        &self,
        route: &Route,
        msg: Encoded,
        sender: &str,
        keep: Keep,
        confirm: Option<Confirm>,
    ) -> Result<(), BrokerError> {
        let sent = self.broker.publish(route, msg, sender, keep, confirm);
        if sent.is_err() {
            metrics::dropped(DropReason::BrokerUnavailable, 1);
        }
        sent
    }

    fn announce(&self, event: PresenceEvent, group: &VisionId, client: &VisionId) {
        let msg = protocol::presence_event(event, group, client);
        let group_route = Route::Group(group.clone());
        if let Err(e) = self.send(&group_route, msg, client.as_str(), Keep::No, None) {
            tracing::warn!(%group, %client, ?event, "presence event not sent: {e}");
        }
    }

    /// Closes this instance's sockets of `client` (only those in `group`
    /// when given) for `why`, with `reason` when given; how many.
    pub fn kick_client(
        &self,
        client: &VisionId,
        group: Option<&VisionId>,
        why: Kick,
        reason: Option<&str>,
    ) -> usize {
        let group = group.map(|g| Route::Group(g.clone()));
        let sockets = self.router.members(&Route::Client(client.clone()));
        let wanted = sockets
            .into_iter()
            .filter(|(socket, _)| group.as_ref().is_none_or(|g| self.router.holds(g, *socket)));
        wanted
            .filter(|(_, outbox)| match reason {
                Some(reason) => outbox.kick_with_reason(why, reason),
                None => outbox.kick(why),
            })
            .count()
    }

    /// Closes this instance's sockets whose token `revocation` covers;
    /// how many.
    pub fn kick_revoked(&self, revocation: &Revocation) -> usize {
        let covered = self.tokens.covered_by(revocation);
        covered.iter().filter(|o| o.kick(Kick::Revoked)).count()
    }

    /// This instance's sockets (every socket is on the broadcast route).
    pub fn sockets(&self) -> usize {
        self.router.count(&Route::Broadcast)
    }

    /// Sends an operator's action to every instance (this one included).
    pub fn publish_control(&self, text: String, confirm: Confirm) -> Result<(), BrokerError> {
        let msg = Encoded::from_text(text);
        self.broker
            .publish(&Route::Control, msg, "", Keep::No, Some(confirm))
    }

    /// The control route's messages, from now on, for as long as the hub
    /// lives: its first listener subscribes it (and keeps it subscribed
    /// across reconnects, like any route).
    pub fn listen_control(&self) -> mpsc::Receiver<Delivery> {
        let (outbox, rx) = Outbox::new(CONTROL_QUEUE);
        let listener = VisionId::parse("control").unwrap_or_else(|_| unreachable!());
        let routes = [Route::Control];
        if let Ok(added) = self
            .router
            .join(SocketId::next(), &listener, &outbox, &routes, 0)
        {
            self.broker.subscribe(&added);
        }
        rx
    }

    /// A route's kept messages after `since`, and its position.
    pub async fn history(&self, route: &Route, since: &Since) -> Result<Recovery, BrokerError> {
        self.broker.recover(route, since).await
    }

    /// Every live instance sharing this one's presence, with the socket
    /// count each last recorded (empty in memory).
    pub async fn instances(&self) -> Result<Vec<(String, u64)>, PresenceError> {
        self.presence.instances().await
    }
}

/// The route a message travels on; `None` for messages that stay on the
/// sending socket.
fn route_of(msg: &Message<'_>) -> Option<Route> {
    let id = |s: Option<&str>| s.and_then(|s| VisionId::parse(s).ok());
    match msg.target {
        Target::Direct => id(msg.to_id.as_deref()).map(Route::Client),
        Target::Group => id(msg.group_id.as_deref()).map(Route::Group),
        Target::Broadcast => Some(Route::Broadcast),
        Target::Echo => None,
    }
}

/// A socket that joined: its place, its queue, and what to send it first
/// when it resumed.
pub struct Connected {
    pub member: Membership,
    pub rx: mpsc::Receiver<Delivery>,
    pub resumed: Option<Resumed>,
}

/// One connected socket's place in the hub; dropping it leaves.
pub struct Membership {
    hub: Arc<Hub>,
    socket: SocketId,
    pub group: VisionId,
    pub client: VisionId,
    outbox: Arc<Outbox>,
    present: bool,
    /// Whether the socket is among the hub's token sockets.
    tokened: bool,
    close_code: u16,
    _slot: Slot,
}

impl Membership {
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Records the close code the socket ended with (for metrics).
    pub fn set_close_code(&mut self, code: u16) {
        self.close_code = code;
    }

    /// Records the token the socket was opened with, so that revoking
    /// it closes the socket.
    pub fn hold_token(&mut self, id: TokenId) {
        self.hub
            .tokens
            .hold(self.socket, id, Arc::clone(&self.outbox));
        self.tokened = true;
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let hub = &self.hub;
        let routes = Route::for_socket(&self.group, &self.client);
        let removed = hub.router.leave(self.socket, &routes);
        hub.broker.unsubscribe(&removed);
        if self.tokened {
            hub.tokens.release(self.socket);
        }
        metrics::connection_closed(self.close_code);
        if !self.present {
            return;
        }
        let (hub, group, client) = (Arc::clone(hub), self.group.clone(), self.client.clone());
        let leave = async move {
            match hub.presence.leave(&group, &client).await {
                Ok(true) => hub.announce(PresenceEvent::Leave, &group, &client),
                Ok(false) => {}
                Err(e) => tracing::warn!(%group, %client, "presence leave failed: {e}"),
            }
        };
        // Outside a runtime (a test tearing down) there is nobody to tell.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.hub.tasks.spawn(leave);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::broker::BoxFuture;
    use crate::config::Config;
    use crate::protocol::id;

    fn slot(hub: &Hub) -> Slot {
        hub.reserve().expect("capacity left")
    }

    /// A socket of `client` in `group`, resuming nothing.
    async fn join(hub: &Arc<Hub>, group: &str, client: &str) -> Connected {
        hub.connect(id(group), id(client), slot(hub), &Resume::default())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn capacity_is_reserved_per_socket_and_given_back() {
        let mut limits = Config::for_tests().limits();
        limits.max_connections = 2;
        let hub = Hub::in_memory(limits);
        let first = hub.reserve().unwrap();
        let member = join(&hub, "g", "a").await.member;
        assert!(hub.reserve().is_none(), "full with two taken");
        drop(first);
        let third = hub.reserve().expect("a slot came back");
        assert!(hub.reserve().is_none());
        drop(member);
        assert!(
            hub.reserve().is_some(),
            "a leaving socket gives its slot back"
        );
        drop(third);
    }

    /// The in-memory broker, recording what the router asked of it.
    struct Recording {
        inner: MemoryBroker,
        calls: Mutex<Vec<(&'static str, Route)>>,
    }

    impl Broker for Recording {
        fn publish(
            &self,
            route: &Route,
            msg: Encoded,
            sender: &str,
            keep: Keep,
            confirm: Option<Confirm>,
        ) -> Result<(), BrokerError> {
            self.inner.publish(route, msg, sender, keep, confirm)
        }
        fn recover<'a>(
            &'a self,
            route: &'a Route,
            since: &'a crate::history::Since,
        ) -> BoxFuture<'a, Result<crate::history::Recovery, BrokerError>> {
            self.inner.recover(route, since)
        }
        fn subscribe(&self, routes: &[Route]) {
            let mut calls = self.calls.lock().unwrap();
            calls.extend(routes.iter().map(|r| ("subscribe", r.clone())));
        }
        fn unsubscribe(&self, routes: &[Route]) {
            let mut calls = self.calls.lock().unwrap();
            calls.extend(routes.iter().map(|r| ("unsubscribe", r.clone())));
        }
        fn live<'a>(&'a self, routes: &'a [Route]) -> BoxFuture<'a, Result<(), BrokerError>> {
            self.inner.live(routes)
        }
        fn unready(&self) -> Option<String> {
            None
        }
    }

    #[tokio::test]
    async fn the_broker_hears_of_first_joins_and_last_leaves_only() {
        let router = Arc::new(Router::new());
        let broker = Arc::new(Recording {
            inner: MemoryBroker::new(Arc::clone(&router), Config::for_tests().limits().history),
            calls: Mutex::new(Vec::new()),
        });
        let presence = Arc::new(MemoryPresence::new());
        let hub = Hub::new(
            router,
            broker.clone(),
            presence,
            Config::for_tests().limits(),
        );

        let a = join(&hub, "g", "a").await.member;
        let b = join(&hub, "g", "b").await.member;
        let a2 = join(&hub, "g", "a").await.member;
        drop(a);
        drop(b);
        drop(a2);

        let calls = broker.calls.lock().unwrap().clone();
        let (g, ca, cb) = (
            Route::Group(id("g")),
            Route::Client(id("a")),
            Route::Client(id("b")),
        );
        assert_eq!(
            calls,
            vec![
                ("subscribe", ca.clone()),
                ("subscribe", g.clone()),
                ("subscribe", Route::Broadcast),
                ("subscribe", cb.clone()),
                ("unsubscribe", cb),
                ("unsubscribe", ca),
                ("unsubscribe", g),
                ("unsubscribe", Route::Broadcast),
            ]
        );
    }

    /// A bug that panics inside a session ends that session's task only:
    /// tokio catches the panic, the socket's membership leaves on unwind
    /// (routes and presence, with its leave announced), and the hub goes
    /// on serving everyone else.
    #[tokio::test]
    async fn a_panicking_session_leaves_and_the_hub_goes_on() {
        let hub = Hub::in_memory(Config::for_tests().limits());
        let alice = join(&hub, "g", "alice").await.member;
        let bob = join(&hub, "g", "bob").await;
        let (_bob, mut bob_rx) = (bob.member, bob.rx);
        let crashed = tokio::spawn(async move {
            let _alice = alice;
            panic!("a bug in a session");
        });
        assert!(crashed.await.unwrap_err().is_panic());

        let leave = tokio::time::timeout(Duration::from_secs(5), bob_rx.recv())
            .await
            .expect("bob hears of it")
            .expect("bob's queue is open");
        let payload = |m: Delivery| {
            serde_json::from_str::<serde_json::Value>(m.text()).unwrap()["payload"].clone()
        };
        assert_eq!(
            payload(leave),
            serde_json::json!({"event": "leave", "client_id": "alice"})
        );
        assert_eq!(hub.members(&id("g")).await.unwrap(), ["bob"]);

        let _carol = join(&hub, "g", "carol").await.member;
        let join = bob_rx.recv().await.expect("bob's queue is open");
        assert_eq!(
            payload(join),
            serde_json::json!({"event": "join", "client_id": "carol"})
        );
    }
}
