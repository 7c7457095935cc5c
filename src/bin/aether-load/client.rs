//! The load tool's lean WebSocket client: small buffers, an explicit local
//! source address (so more than one port range of sockets fits), and
//! loopback-only targets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// A hub base URL, `ws://127.0.0.1:8080`, checked to be on loopback.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{s}: only ws:// URLs are supported"))?;
        let hostport = rest.trim_end_matches('/');
        let addr: SocketAddr = hostport
            .replace("localhost", "127.0.0.1")
            .parse()
            .map_err(|_| format!("{s}: expected ws://IP:PORT"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("{s}: aether-load only talks to loopback addresses"));
        }
        Ok(Target { addr })
    }
}

/// The hubs a scenario drives, and the loopback addresses it connects from.
#[derive(clap::Args, Clone)]
pub struct Hubs {
    /// Hub URL (repeatable; sockets are spread round-robin over them).
    #[arg(long = "url", required = true)]
    urls: Vec<Target>,
    /// Loopback source addresses to spread sockets over (127.0.0.1 ..), so
    /// more than one port range of sockets fits.
    #[arg(long, default_value_t = 4)]
    sources: usize,
}

impl Hubs {
    /// Connects socket number `i` to `path`: hubs and source addresses
    /// taken round-robin.
    pub async fn connect(&self, i: usize, path: &str) -> Result<Ws, String> {
        let target = &self.urls[i % self.urls.len()];
        connect(target, source(i, self.sources), path).await
    }
}

/// The `i`-th of `n` loopback source addresses: 127.0.0.1, 127.0.0.2, ...
fn source(i: usize, n: usize) -> IpAddr {
    let host = (i % n.max(1)) as u8 + 1;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, host))
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
}

/// Connects one socket from `from` to `path` on `target`.
async fn connect(target: &Target, from: IpAddr, path: &str) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(from, 0))
        .map_err(|e| format!("bind {from}: {e}"))?;
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", target.addr))?;
    let _ = stream.set_nodelay(true);
    let url = format!("ws://{}{path}", target.addr);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
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
