//! Starting and stopping one hub instance: bind, serve the routes, and on
//! shutdown close every socket with 1001 within the grace period.
//!
//! `main.rs` and the tests use the same [`Server`], so what the tests start
//! is what production runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warp::Filter;

use crate::auth::Auth;
use crate::broker::redis::link::{RedisLink, UrlError};
use crate::broker::RedisBroker;
use crate::channels::Names;
use crate::config::{Backend, Config};
use crate::http::{self, Api, HEADER_READ_TIMEOUT};
use crate::hub::Hub;
use crate::metrics;
use crate::operator::Operator;
use crate::presence::RedisPresence;
use crate::router::Router;
use crate::tls::{Tls, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    RedisUrl(#[from] UrlError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

pub struct Server {
    addr: SocketAddr,
    hub: Arc<Hub>,
    tls: Option<Arc<Tls>>,
    http: JoinHandle<()>,
    upkeep: JoinHandle<()>,
}

/// Accepts connections until `stop`, each served by hyper's HTTP/1.1 with
/// upgrades, over TLS when `tls` is set. Our own loop rather than
/// `warp::serve`: the upgraded connection is then the plain TCP (or TLS)
/// stream (see `http::upgrade`), every socket gets `TCP_NODELAY`, a client
/// that sends its handshake or headers too slowly is cut off, and a client
/// that hangs up mid-request is not logged as a server error.
async fn accept_loop<S>(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    service: S,
    stop: CancellationToken,
) where
    S: Service + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: let some close.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                return serve(stream, service).await;
            };
            // The handshake counts against the same deadline as the headers.
            match tls.handshake(stream, HEADER_READ_TIMEOUT).await {
                Ok(stream) => serve(stream, service).await,
                Err(e) => tracing::debug!("{e}"),
            }
        });
    }
}

/// What serves one HTTP connection: the hub's warp routes.
pub trait Service:
    hyper::service::Service<
    ::http::Request<hyper::body::Incoming>,
    Response = warp::reply::Response,
    Error = std::convert::Infallible,
>
{
}

impl<T> Service for T where
    T: hyper::service::Service<
        ::http::Request<hyper::body::Incoming>,
        Response = warp::reply::Response,
        Error = std::convert::Infallible,
    >
{
}

async fn serve<IO, S>(io: IO, service: S)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service + Send + 'static,
    S::Future: Send + 'static,
{
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!("HTTP connection ended: {e}");
    }
}

/// Binds `addr`, with an error that names it. Like tokio's
/// `TcpListener::bind` (address reuse, so a restart need not wait for the
/// old connections' TIME_WAIT), with a longer accept queue.
pub async fn listen(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let bind = || {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(ACCEPT_BACKLOG)
    };
    bind().map_err(|source| StartError::Bind { addr, source })
}

/// Connections the kernel holds for the hub to accept. tokio's 1,024 is
/// outrun by a burst of connects (a reconnect storm after a restart, or
/// an attack): the kernel then drops handshakes, and the clients retry
/// seconds later, so their connections come late and, when they never
/// send a byte, outlive the header deadline by as much. The kernel caps
/// it at `net.core.somaxconn` (4,096 by default since Linux 5.4).
const ACCEPT_BACKLOG: u32 = 4096;

/// The hub and, in Redis modes, how it reaches Redis.
type Built = (Arc<Hub>, Option<(Arc<RedisLink>, Names)>);

/// In memory without Redis; otherwise the Redis broker and presence, on
/// one server or on a cluster (the link tells them apart).
fn build_hub(config: &Config, backend: &Backend) -> Result<Built, StartError> {
    let servers = match backend {
        Backend::Memory => return Ok((Hub::in_memory(config.limits()), None)),
        Backend::Redis(servers) => servers,
    };
    let link = Arc::new(RedisLink::new(servers, &config.instance_id)?);
    let names = Names::new(config.redis_prefix.clone());
    let router = Arc::new(Router::new());
    let broker = RedisBroker::start(
        Arc::clone(&link),
        Arc::clone(&router),
        names.clone(),
        config.limits().history,
    );
    let presence = RedisPresence::start(
        Arc::clone(&link),
        names.clone(),
        config.instance_id.clone(),
        config.presence_ttl,
    );
    let hub = Hub::new(router, broker, presence, config.limits());
    Ok((hub, Some((link, names))))
}

impl Server {
    /// Binds and starts serving; returns once the listener is bound.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let prometheus = metrics::install();
        let auth = Auth::from_config(&config)?;
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(Arc::new(Tls::load(cert, key)?)),
            _ => None,
        };
        let backend = config.backend();
        let (hub, redis) = build_hub(&config, &backend)?;
        let operator = Operator::start(
            Arc::clone(&hub),
            Arc::clone(auth.revocations()),
            redis
                .as_ref()
                .map(|(link, names)| (Arc::clone(link), names)),
            config.instance_id.clone(),
            backend.name(),
        );
        if auth.is_open() {
            tracing::warn!(
                "no API keys configured and no token keys: every upgrade is accepted (development mode)"
            );
        }
        let listener = listen(config.bind).await?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.bind,
            source,
        })?;
        let routes = Api::new(
            Arc::clone(&hub),
            auth,
            &config,
            prometheus.clone(),
            operator,
        )
        .routes()
        .recover(http::recover)
        .unify();
        let service = TowerToHyperService::new(warp::service(routes));
        let http = tokio::spawn(accept_loop(
            listener,
            tls.clone(),
            service,
            hub.shutdown_token().clone(),
        ));
        // Histograms are drained when rendered; keep them bounded between
        // scrapes.
        let upkeep = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                prometheus.run_upkeep();
            }
        });
        let mode = backend.name();
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        tracing::info!(%addr, instance = %config.instance_id, mode, scheme, "aether-hub listening");
        Ok(Server {
            addr,
            hub,
            tls,
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

    /// Reads the TLS certificate and key again (SIGHUP): new connections
    /// get them, open ones keep theirs. `Ok(false)` without TLS.
    pub fn reload_tls(&self) -> Result<bool, TlsError> {
        match &self.tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
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
