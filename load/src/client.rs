//! The load tool's lean WebSocket client: small buffers, an explicit local
//! source address (so more than one port range of sockets fits),
//! loopback-only targets, `ws://` or `wss://`, and an identity token per
//! socket when asked for one.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use aether_hub::socket::Socket;
use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::{TlsConnector, TlsStream};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::tokens::Tokens;

pub type Ws = WebSocketStream<Socket>;

/// The longest one socket's TCP connect, TLS handshake and upgrade may take
/// together: a stalled handshake fails rather than holding the run.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// A hub base URL, `ws://127.0.0.1:8080` or `wss://localhost:8443`, checked
/// to be on loopback.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `ws://IP:PORT`, or `wss://` and the host as written: what the
    /// upgrade request's URL (and `Host`) starts with.
    base: String,
    /// For `wss://`: the name the hub's certificate must be valid for, the
    /// host as written (`localhost` a DNS name, an IP an IP address).
    tls: Option<ServerName<'static>>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.base)
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tls, rest) = if let Some(rest) = s.strip_prefix("wss://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("ws://") {
            (false, rest)
        } else {
            return Err(format!("{s}: only ws:// and wss:// URLs are supported"));
        };
        let hostport = rest.trim_end_matches('/');
        let expected =
            || format!("{s}: expected ws://IP:PORT or wss://HOST:PORT (HOST localhost or an IP)");
        let (addr, name) = match hostport.strip_prefix("localhost:") {
            Some(port) => {
                let port: u16 = port.parse().map_err(|_| expected())?;
                let name = ServerName::try_from("localhost").map_err(|_| expected())?;
                (SocketAddr::from(([127, 0, 0, 1], port)), name)
            }
            None => {
                let addr: SocketAddr = hostport.parse().map_err(|_| expected())?;
                (addr, ServerName::from(addr.ip()))
            }
        };
        if !addr.ip().is_loopback() {
            return Err(format!("{s}: aether-load only talks to loopback addresses"));
        }
        Ok(if tls {
            Target {
                addr,
                base: format!("wss://{hostport}"),
                tls: Some(name),
            }
        } else {
            Target {
                addr,
                base: format!("ws://{addr}"),
                tls: None,
            }
        })
    }
}

/// The hubs a scenario drives, the loopback addresses it connects from, and
/// the credentials it connects with.
#[derive(clap::Args, Clone)]
pub struct Hubs {
    /// Hub URL, ws://IP:PORT or wss://HOST:PORT with HOST localhost or a
    /// loopback IP (repeatable; sockets are spread round-robin over them).
    #[arg(long = "url", required = true)]
    urls: Vec<Target>,
    /// Loopback source addresses to spread sockets over (127.0.0.1 ..), so
    /// more than one port range of sockets fits.
    #[arg(long, default_value_t = 4)]
    sources: usize,
    /// The last byte of the first source address (127.0.0.N): several load
    /// processes on one machine each take their own addresses, so their
    /// ephemeral ports do not compete.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    source_base: u8,
    /// PEM file of the CA certificate(s) to trust for wss:// URLs (required
    /// with them). Every socket makes a full handshake (no resumption), as
    /// distinct clients would.
    #[arg(long, value_name = "FILE", value_parser = tls_connector)]
    tls_ca: Option<Tls>,
    #[command(flatten)]
    tokens: Tokens,
}

/// The TLS client side, its configuration built once.
#[derive(Clone)]
pub struct Tls(TlsConnector);

/// One socket's upgrade, its token (if any) already signed.
pub struct Upgrade {
    target: usize,
    from: IpAddr,
    url: String,
    token: Option<String>,
    /// SO_RCVBUF for the TCP socket, set before connecting (which turns
    /// the kernel's autotuning off): a reader that stops reading then
    /// holds little in flight, as a slow client behind a thin link would.
    recv_buffer: Option<u32>,
}

/// Why an upgrade did not give a socket.
#[derive(Debug)]
pub enum OpenError {
    /// The hub answered the upgrade with an HTTP status (503: full or over
    /// its accept rate; 429: too many sockets of that client), and
    /// possibly when to come back.
    Refused {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Anything else: no connection, a handshake that failed or took too
    /// long.
    Failed(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Refused {
                status,
                retry_after: Some(after),
            } => write!(f, "HTTP {status} (Retry-After {} s)", after.as_secs()),
            OpenError::Refused { status, .. } => write!(f, "HTTP {status}"),
            OpenError::Failed(e) => f.write_str(e),
        }
    }
}

impl Hubs {
    /// What the options cannot tell each on its own: a wss:// URL without
    /// `--tls-ca`, source addresses past 127.0.0.255.
    pub fn check(&self) -> Result<(), String> {
        if usize::from(self.source_base) + self.sources.max(1) - 1 > 255 {
            return Err(format!(
                "--source-base {} with --sources {} goes past 127.0.0.255",
                self.source_base, self.sources
            ));
        }
        if self.tls_ca.is_none() {
            if let Some(t) = self.urls.iter().find(|t| t.tls.is_some()) {
                return Err(format!("{t}: a wss:// URL needs --tls-ca FILE"));
            }
        }
        Ok(())
    }

    /// Whether sockets carry a token, and which kind (for reports).
    pub fn token_kind(&self) -> Option<&'static str> {
        self.tokens.kind()
    }

    /// The address of hub `i` (round-robin, as sockets are spread) if it
    /// is a plain `ws://` one, whose HTTP routes are plain too.
    pub fn plain_addr(&self, i: usize) -> Option<SocketAddr> {
        let target = self.urls.get(i % self.urls.len().max(1))?;
        target.tls.is_none().then_some(target.addr)
    }

    /// Whether any target is `wss://` (for reports).
    pub fn tls(&self) -> bool {
        self.urls.iter().any(|t| t.tls.is_some())
    }

    /// Prepares socket number `i`, client `client` in `group`: its hub and
    /// source address (round-robin) and its token, signed now.
    pub fn upgrade(&self, i: usize, group: &str, client: &str) -> Result<Upgrade, String> {
        let target = i % self.urls.len().max(1);
        let base = &self.urls.get(target).ok_or("no --url")?.base;
        Ok(Upgrade {
            target,
            from: source(i, self.sources, self.source_base),
            url: format!("{base}/v3/ws/group/{group}/client/{client}"),
            token: self.tokens.sign(client, group)?,
            recv_buffer: None,
        })
    }

    /// How many hubs (`--url`s) there are.
    pub fn count(&self) -> usize {
        self.urls.len()
    }

    /// Prepares socket number `i` (its source address) for hub `target`
    /// exactly (modulo the hub count), with `query` on the URL when not
    /// empty: for a socket that chooses its hub itself, as one moving to
    /// another instance after losing its own does.
    pub fn upgrade_to(
        &self,
        target: usize,
        i: usize,
        group: &str,
        client: &str,
        query: &str,
    ) -> Result<Upgrade, String> {
        let target = target % self.urls.len().max(1);
        let mut upgrade = self.upgrade(i, group, client)?;
        let base = &self.urls.get(target).ok_or("no --url")?.base;
        upgrade.target = target;
        upgrade.url = format!("{base}/v3/ws/group/{group}/client/{client}");
        if !query.is_empty() {
            upgrade.url.push('?');
            upgrade.url.push_str(query);
        }
        Ok(upgrade)
    }

    /// Opens a prepared socket: TCP connect from its source address, the
    /// TLS handshake for wss://, then the WebSocket upgrade.
    pub async fn open(&self, upgrade: Upgrade) -> Result<Ws, String> {
        self.open_within(upgrade, HANDSHAKE_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }

    /// Like [`Hubs::open`] within `limit`, telling an HTTP refusal (503 at
    /// capacity or over the accept rate, 429) and its `Retry-After` apart
    /// from other failures, so that a client can back off as told.
    pub async fn open_within(&self, upgrade: Upgrade, limit: Duration) -> Result<Ws, OpenError> {
        let target = self
            .urls
            .get(upgrade.target)
            .ok_or_else(|| OpenError::Failed("no --url".into()))?;
        let handshake = async {
            let request = self
                .tokens
                .request(upgrade.url, upgrade.token)
                .map_err(OpenError::Failed)?;
            let stream = tcp(target.addr, upgrade.from, upgrade.recv_buffer)
                .await
                .map_err(OpenError::Failed)?;
            let socket = match &target.tls {
                None => Socket::Tcp(stream),
                Some(name) => {
                    let Tls(tls) = self.tls_ca.as_ref().ok_or_else(|| {
                        OpenError::Failed(format!("{target}: a wss:// URL needs --tls-ca FILE"))
                    })?;
                    let stream = tls.connect(name.clone(), stream).await.map_err(|e| {
                        OpenError::Failed(format!("TLS handshake with {target}: {e}"))
                    })?;
                    Socket::Tls(Box::new(TlsStream::Client(stream)))
                }
            };
            match tokio_tungstenite::client_async_with_config(request, socket, Some(config())).await
            {
                Ok((ws, _)) => Ok(ws),
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    Err(OpenError::Refused {
                        status: response.status().as_u16(),
                        retry_after: response
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(Duration::from_secs),
                    })
                }
                Err(e) => Err(OpenError::Failed(e.to_string())),
            }
        };
        tokio::time::timeout(limit, handshake)
            .await
            .map_err(|_| OpenError::Failed(format!("{target}: no WebSocket within {limit:?}")))?
    }

    /// Connects socket number `i`, client `client` in `group`, signing its
    /// token now.
    pub async fn connect(&self, i: usize, group: &str, client: &str) -> Result<Ws, String> {
        let upgrade = self.upgrade(i, group, client)?;
        self.open(upgrade).await
    }

    /// Like [`Hubs::connect`], with a query string on the upgrade URL
    /// (`since_group=…`).
    pub async fn connect_with(
        &self,
        i: usize,
        group: &str,
        client: &str,
        query: &str,
    ) -> Result<Ws, String> {
        let mut upgrade = self.upgrade(i, group, client)?;
        upgrade.url.push('?');
        upgrade.url.push_str(query);
        self.open(upgrade).await
    }

    /// Like [`Hubs::connect`], with a receive buffer of `bytes` (the
    /// kernel doubles it) instead of an autotuned one.
    pub async fn connect_thin(
        &self,
        i: usize,
        group: &str,
        client: &str,
        bytes: u32,
    ) -> Result<Ws, String> {
        let mut upgrade = self.upgrade(i, group, client)?;
        upgrade.recv_buffer = Some(bytes);
        self.open(upgrade).await
    }
}

/// `--tls-ca FILE`: a client configuration trusting the certificates in
/// FILE, ALPN `http/1.1`, session resumption off.
fn tls_connector(path: &str) -> Result<Tls, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| e.to_string())? {
        let cert = cert.map_err(|e| e.to_string())?;
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CERTIFICATE in it".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Tls(TlsConnector::from(Arc::new(config))))
}

/// The `i`-th of `n` loopback source addresses from 127.0.0.`base` on
/// (`Hubs::check` keeps them below 127.0.0.255).
fn source(i: usize, n: usize, base: u8) -> IpAddr {
    let host = (i % n.max(1) + usize::from(base)).min(255) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, host))
}

/// The lean WebSocket buffers of every socket of the load tool (the
/// `nats-fanout` baseline's too, so both sides of a comparison pay the
/// same per socket).
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
}

/// A TCP connection from `from` to `to` with Nagle off, with a fixed
/// receive buffer if given.
pub async fn tcp(
    to: SocketAddr,
    from: IpAddr,
    recv_buffer: Option<u32>,
) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(bytes) = recv_buffer {
        socket
            .set_recv_buffer_size(bytes)
            .map_err(|e| format!("SO_RCVBUF {bytes}: {e}"))?;
    }
    socket
        .bind(SocketAddr::new(from, 0))
        .map_err(|e| format!("bind {from}: {e}"))?;
    let stream = socket
        .connect(to)
        .await
        .map_err(|e| format!("connect {to}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Why the hub closed a socket, from its close frame (for notes).
pub fn closed(frame: Option<CloseFrame>) -> String {
    match frame {
        Some(f) => format!("closed by the hub: {} {}", u16::from(f.code), f.reason),
        None => "closed by the hub without a code".into(),
    }
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time a process has used (user + system), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn sources_start_at_the_base() {
        let at = |i, n, base| super::source(i, n, base).to_string();
        assert_eq!(at(0, 4, 1), "127.0.0.1");
        assert_eq!(at(5, 4, 2), "127.0.0.3");
        assert_eq!(at(7, 1, 9), "127.0.0.9");
    }

    #[test]
    fn targets_are_loopback_ws_or_wss() {
        let t: Target = "ws://localhost:8080/".parse().unwrap();
        assert_eq!(t.to_string(), "ws://127.0.0.1:8080");
        assert!(t.tls.is_none());
        let t: Target = "wss://localhost:8443".parse().unwrap();
        assert_eq!(t.to_string(), "wss://localhost:8443");
        assert!(matches!(
            t.tls,
            Some(rustls_pki_types::ServerName::DnsName(_))
        ));
        let t: Target = "wss://127.0.0.2:8443".parse().unwrap();
        assert!(matches!(
            t.tls,
            Some(rustls_pki_types::ServerName::IpAddress(_))
        ));
        assert!("wss://10.0.0.1:8443".parse::<Target>().is_err());
        assert!("wss://example.com:8443".parse::<Target>().is_err());
        assert!("http://127.0.0.1:8080".parse::<Target>().is_err());
    }
}
