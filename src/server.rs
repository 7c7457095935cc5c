//! Starting and stopping one hub instance: bind, serve the routes, and on
//! shutdown close every socket with 1001 within the grace period.
//!
//! `main.rs` and the tests use the same [`Server`], so what the tests start
//! is what production runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use warp::Filter;

use crate::broker::RedisBroker;
use crate::channels::Names;
use crate::config::Config;
use crate::http::{self, Api};
use crate::hub::Hub;
use crate::metrics;
use crate::presence::RedisPresence;
use crate::redis_link::RedisLink;
use crate::router::Router;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    RedisUrl(#[from] crate::redis_link::UrlError),
}

pub struct Server {
    addr: SocketAddr,
    hub: Arc<Hub>,
    http: JoinHandle<()>,
    upkeep: JoinHandle<()>,
}

/// In memory without a Redis URL; otherwise the Redis broker and presence.
fn build_hub(config: &Config) -> Result<Arc<Hub>, StartError> {
    let Some(url) = &config.redis_url else {
        return Ok(Hub::in_memory(config.limits()));
    };
    let link = Arc::new(RedisLink::new(url)?);
    let names = Names::new(config.redis_prefix.clone());
    let router = Arc::new(Router::new());
    let broker = RedisBroker::start(Arc::clone(&link), Arc::clone(&router), names.clone());
    let presence =
        RedisPresence::start(link, names, config.instance_id.clone(), config.presence_ttl);
    Ok(Hub::new(router, broker, presence, config.limits()))
}

impl Server {
    /// Binds and starts serving; returns once the listener is bound.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let prometheus = metrics::install();
        let hub = build_hub(&config)?;
        if config.api_keys.is_empty() {
            tracing::warn!("no API keys configured: every upgrade is accepted (development mode)");
        }
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.bind,
            source,
        })?;
        let routes = Api::new(Arc::clone(&hub), &config, prometheus.clone())
            .routes()
            .recover(http::recover)
            .unify();
        let stop = hub.shutdown_token().clone();
        let http = tokio::spawn(
            warp::serve(routes)
                .incoming(listener)
                .graceful(async move { stop.cancelled().await })
                .run(),
        );
        // Histograms are drained when rendered; keep them bounded between
        // scrapes.
        let upkeep = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                prometheus.run_upkeep();
            }
        });
        let mode = if config.redis_url.is_some() {
            "redis"
        } else {
            "in-memory"
        };
        tracing::info!(%addr, instance = %config.instance_id, mode, "aether-hub listening");
        Ok(Server {
            addr,
            hub,
            http,
            upkeep,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Stops accepting, closes every socket with 1001 and waits up to
    /// `grace` for the sessions and their clean-up. False if time ran out.
    pub async fn shut_down(self, grace: Duration) -> bool {
        self.hub.shut_down();
        let drained = tokio::time::timeout(grace, async {
            self.hub.drained().await;
            let _ = self.http.await;
        })
        .await
        .is_ok();
        self.upkeep.abort();
        drained
    }
}
