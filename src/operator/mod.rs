//! Operators act on the live fleet (docs/protocol.md section 11):
//! disconnect a client's sockets, revoke tokens, see the live instances,
//! read a route's history. `http/admin.rs` checks the request and calls
//! [`Operator`]; this module makes the action reach every instance.
//!
//! An action travels as one [`Control`] message on the control route
//! (`control.rs`), which every instance's listener reads, this one's
//! included: in memory the router hands it straight back. A revocation is
//! first kept (`store.rs`: in Redis, until its end) and applied here, then
//! sent; every instance holds the revocations in memory ([`Revocations`],
//! which `auth` asks about every token) and loads them from Redis at start,
//! after every reconnect and every [`RELOAD`], so one that missed the
//! message (its pub/sub connection was down) catches up.

mod control;
mod store;

use std::sync::Arc;
use std::time::Duration;

use crate::auth::unix_now;
use crate::broker::redis::link::RedisLink;
use crate::broker::{BrokerError, Confirm};
use crate::channels::{Names, Route};
use crate::history::{Recovery, Since};
use crate::hub::Hub;
use crate::metrics;
use crate::outbox::Kick;
use crate::presence::PresenceError;
use crate::revocation::{Revocation, Revocations};
pub use control::{Control, Disconnect};
use store::RevocationStore;

/// How often an instance reloads the revocations from Redis, whatever
/// the control route brought: the bound on how late one that missed a
/// control message closes a revoked token's sockets.
pub const RELOAD: Duration = Duration::from_secs(10);

/// How soon a failed first load is tried again (Redis not up yet).
const FIRST_LOAD_RETRY: Duration = Duration::from_millis(100);

/// How long an action waits for Redis to take its control message.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Presence(#[from] PresenceError),
    #[error("revocations cannot be kept: Redis is unavailable")]
    Store,
}

/// `GET /v3/info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    pub instance: String,
    pub version: &'static str,
    pub mode: &'static str,
    pub sockets: u64,
    pub instances: Vec<Instance>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    pub id: String,
    pub sockets: u64,
}

/// Where revocations are kept beyond this process.
struct Kept {
    link: Arc<RedisLink>,
    store: RevocationStore,
}

pub struct Operator {
    hub: Arc<Hub>,
    revocations: Arc<Revocations>,
    kept: Option<Kept>,
    instance: String,
    mode: &'static str,
}

impl Operator {
    /// Starts listening on the control route (and, with Redis, loading
    /// the revocations kept there) for as long as the hub serves.
    pub fn start(
        hub: Arc<Hub>,
        revocations: Arc<Revocations>,
        redis: Option<(Arc<RedisLink>, &Names)>,
        instance: String,
        mode: &'static str,
    ) -> Arc<Operator> {
        let kept = redis.map(|(link, names)| Kept {
            link,
            store: RevocationStore::new(names),
        });
        if kept.is_none() {
            // Nothing is kept beyond this process: nothing to wait for.
            revocations.set_loaded();
        }
        let operator = Arc::new(Operator {
            hub,
            revocations,
            kept,
            instance,
            mode,
        });
        tokio::spawn(Arc::clone(&operator).listen());
        tokio::spawn(Arc::clone(&operator).reload());
        operator
    }

    /// Applies every control message, until the hub shuts down.
    async fn listen(self: Arc<Self>) {
        let mut messages = self.hub.listen_control();
        let shutdown = self.hub.shutdown_token().clone();
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                msg = messages.recv() => msg,
            };
            let Some(msg) = msg else { return };
            match Control::decode(msg.text()) {
                Some(control) => self.apply(control),
                None => tracing::debug!("ignored a control message this version does not know"),
            }
        }
    }

    fn apply(&self, control: Control) {
        match control {
            Control::Disconnect(d) => self.close(&d),
            revoking => {
                if let Some(revocation) = Option::<Revocation>::from(revoking) {
                    self.hold(&revocation);
                }
            }
        }
    }

    /// Closes this instance's sockets of a disconnect.
    fn close(&self, d: &Disconnect) {
        let why = match d.reconnect {
            false => Kick::Disconnected,
            true => Kick::Reconnect,
        };
        let group = d.group_id.as_ref();
        let closed = self
            .hub
            .kick_client(&d.client_id, group, why, d.reason.as_deref());
        if closed > 0 {
            tracing::info!(client = %d.client_id, group = ?group.map(|g| g.as_str()), reconnect = d.reconnect, closed, "sockets disconnected by an operator");
        }
    }

    /// Holds a revocation and closes the sockets it covers here.
    fn hold(&self, revocation: &Revocation) {
        self.revocations.insert(revocation, unix_now());
        let closed = self.hub.kick_revoked(revocation);
        if closed > 0 {
            tracing::info!(?revocation, closed, "sockets of a revoked token closed");
        }
    }

    /// Loads the kept revocations at start (tokens wait for it: see
    /// [`Revocations::is_loaded`]), after every reconnect and every
    /// [`RELOAD`]; keeps the revocations gauge.
    async fn reload(self: Arc<Self>) {
        let mut connections = self.kept.as_ref().map(|k| k.link.connections());
        let shutdown = self.hub.shutdown_token().clone();
        loop {
            if self.load().await {
                self.revocations.set_loaded();
            }
            metrics::revocations(self.revocations.len(unix_now()));
            // Until the first load, try again soon.
            let wait = match self.revocations.is_loaded() {
                true => RELOAD,
                false => FIRST_LOAD_RETRY,
            };
            let reconnected = async {
                match connections.as_mut() {
                    Some(c) => c.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                true = reconnected => {}
            }
        }
    }

    /// Whether every kept revocation is now held here.
    async fn load(&self) -> bool {
        let Some(kept) = &self.kept else { return true };
        match kept.store.load(&kept.link, unix_now()).await {
            Ok(list) => {
                list.iter().for_each(|r| self.hold(r));
                true
            }
            Err(e) => {
                tracing::debug!("revocations not loaded: {e}");
                false
            }
        }
    }

    /// `POST /v3/disconnect`: every instance closes the client's sockets.
    pub async fn disconnect(&self, d: Disconnect) -> Result<(), OperatorError> {
        tracing::info!(client = %d.client_id, group = ?d.group_id.as_ref().map(|g| g.as_str()), reconnect = d.reconnect, "disconnect requested");
        self.send(&Control::Disconnect(d)).await
    }

    /// `POST /v3/revoke`: kept, held here, then sent to every instance.
    pub async fn revoke(&self, revocation: Revocation) -> Result<(), OperatorError> {
        tracing::info!(?revocation, "revocation requested");
        if let Some(kept) = &self.kept {
            let saved = kept.store.save(&kept.link, &revocation, unix_now()).await;
            saved.map_err(|e| {
                tracing::warn!("revocation not kept: {e}");
                OperatorError::Store
            })?;
        }
        self.hold(&revocation);
        self.send(&Control::revoke(&revocation)).await
    }

    /// Publishes a control message and waits until Redis took it.
    async fn send(&self, control: &Control) -> Result<(), OperatorError> {
        let text = control.encode().ok_or(BrokerError::Unavailable)?;
        let (confirm, confirmed) = Confirm::channel();
        self.hub.publish_control(text, confirm)?;
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirmed).await {
            Ok(Ok(published)) => published.map(|_| ()).map_err(Into::into),
            Ok(Err(_dropped)) => Err(BrokerError::Unavailable.into()),
            Err(_late) => Err(BrokerError::Unconfirmed.into()),
        }
    }

    /// `GET /v3/info`: this instance's count is exact; the others' are
    /// what their liveness records last said.
    pub async fn info(&self) -> Result<Info, OperatorError> {
        let sockets = self.hub.sockets() as u64;
        let mut instances: Vec<Instance> = self
            .hub
            .instances()
            .await?
            .into_iter()
            .filter(|(id, _)| *id != self.instance)
            .map(|(id, sockets)| Instance { id, sockets })
            .collect();
        instances.push(Instance {
            id: self.instance.clone(),
            sockets,
        });
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Info {
            instance: self.instance.clone(),
            version: env!("CARGO_PKG_VERSION"),
            mode: self.mode,
            sockets,
            instances,
        })
    }

    /// `GET /v3/history/…`: the recovery of section 9, read the same way.
    pub async fn history(&self, route: &Route, since: &Since) -> Result<Recovery, OperatorError> {
        Ok(self.hub.history(route, since).await?)
    }
}
