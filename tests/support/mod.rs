//! Test support: a hub on an ephemeral loopback port, real WebSocket
//! clients (tokio-tungstenite), a raw WebSocket client that can refuse to
//! read or to answer pings, and a minimal HTTP/1.1 client. Everything talks
//! to 127.0.0.1 and every wait is bounded by [`TIMEOUT`].

#![allow(dead_code)]

pub mod acks;
pub mod acl;
pub mod admin;
pub mod attack;
pub mod blip;
pub mod cluster;
pub mod history;
pub mod load_tool;
pub mod netns;
pub mod process;
pub mod prometheus;
pub mod raw;
pub mod redis;
pub mod sentinel;
pub mod tls;
pub mod tokens;

use std::net::SocketAddr;
use std::time::Duration;

use aether_hub::{Config, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest any single wait in a test may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestHub {
    pub server: Server,
    pub addr: SocketAddr,
}

impl TestHub {
    pub async fn start() -> TestHub {
        Self::with(|_| {}).await
    }

    pub async fn with(adjust: impl FnOnce(&mut Config)) -> TestHub {
        let mut config = Config::for_tests();
        adjust(&mut config);
        let server = Server::start(config.validate().expect("valid test config"))
            .await
            .expect("hub starts");
        let addr = server.local_addr();
        TestHub { server, addr }
    }

    /// A hub in Redis mode against `redis`, once it reports ready.
    pub async fn on_redis(redis: &redis::RedisServer, adjust: impl FnOnce(&mut Config)) -> TestHub {
        let url = redis.url();
        let hub = Self::with(|c| {
            c.redis_url = Some(url);
            adjust(c);
        })
        .await;
        hub.wait_ready(200).await;
        hub
    }

    /// Waits (bounded) until `/readyz` answers `status`.
    pub async fn wait_ready(&self, status: u16) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if self.get("/readyz").await.status == status {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never answered {status}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn ws_url(&self, group: &str, client: &str) -> String {
        format!("ws://{}/v3/ws/group/{group}/client/{client}", self.addr)
    }

    pub async fn connect(&self, group: &str, client: &str) -> Client {
        Client::connect(&self.ws_url(group, client), &[])
            .await
            .unwrap_or_else(|e| panic!("connect {group}/{client}: {e}"))
    }

    /// The HTTP status an upgrade attempt was refused with (101 if it was
    /// accepted), and the refusal's body.
    pub async fn upgrade_status(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let url = format!("ws://{}{path}", self.addr);
        match Client::connect(&url, headers).await {
            Ok(client) => {
                client.close().await;
                (101, String::new())
            }
            Err(tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                (response.status().as_u16(), body)
            }
            Err(e) => panic!("upgrade {path}: {e}"),
        }
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        http_request(self.addr, "GET", path, &[], "").await
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> HttpResponse {
        http_request(self.addr, "POST", path, headers, body).await
    }

    /// The value of one sample of /metrics (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_sample(&self.get("/metrics").await.body, sample)
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A well-behaved WebSocket client.
pub struct Client {
    pub ws: Ws,
}

impl Client {
    pub async fn connect(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tungstenite::Error> {
        Ok(Self::connect_answered(url, headers).await?.0)
    }

    /// Connects, and returns the hub's `101` answer beside the client.
    pub async fn connect_answered(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Client, tungstenite::handshake::client::Response), tungstenite::Error> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            let name = http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
            let value = http::HeaderValue::from_str(value).expect("header value");
            request.headers_mut().insert(name, value);
        }
        let connect = tokio_tungstenite::connect_async(request);
        let (ws, answer) = tokio::time::timeout(TIMEOUT, connect)
            .await
            .map_err(|_| tungstenite::Error::ConnectionClosed)??;
        Ok((Client { ws }, answer))
    }

    pub async fn send(&mut self, msg: Value) {
        self.send_text(msg.to_string()).await;
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send");
    }

    /// The next text message, as JSON.
    pub async fn recv(&mut self) -> Value {
        match self.next_event(TIMEOUT).await {
            Some(Event::Text(v)) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The close frame the hub ends this socket with: (code, reason).
    pub async fn recv_close(&mut self) -> (u16, String) {
        loop {
            match self.next_event(TIMEOUT).await {
                Some(Event::Text(_)) => continue,
                Some(Event::Closed(code, reason)) => return (code, reason),
                None => panic!("no close frame within {TIMEOUT:?}"),
            }
        }
    }

    /// The next text frame exactly as the hub sent it.
    pub async fn ws_next_text(&mut self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??
            {
                Ok(Message::Text(t)) => return Some(t.to_string()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Asserts that no message arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(event) = self.next_event(wait).await {
            panic!("expected silence, got {event:?}");
        }
    }

    /// The next message or close, skipping pings and pongs; `None` if
    /// nothing came within `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(t))) => {
                    let v = serde_json::from_str(t.as_str()).expect("hub sends JSON");
                    return Some(Event::Text(v));
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return Some(Event::Closed(code, reason));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(Event::Closed(1006, e.to_string())),
                None => return Some(Event::Closed(1006, "stream ended".into())),
            }
        }
    }

    /// Closes with 1000 and returns the code the hub answered with.
    pub async fn close(mut self) -> u16 {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        if self.ws.close(Some(frame)).await.is_err() {
            return 1006;
        }
        self.recv_close().await.0
    }
}

#[derive(Debug)]
pub enum Event {
    Text(Value),
    Closed(u16, String),
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on its own connection.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if method == "POST" {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .expect("HTTP response in time");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// A loopback port for a server a test starts as a separate process: below
/// the ephemeral range (32768 and up), so no listener bound to port 0
/// elsewhere in the test run can take it between our check and the
/// server's bind (or while a test restarts that server), and never the same
/// twice in one process.
pub fn private_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 500) as u16 * 20,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..1000 {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port < 32_000 && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free private port");
}

/// Polls `check` until it holds, for at most [`TIMEOUT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A message as a client would write it.
pub fn msg(target: &str, extra: Value) -> Value {
    let mut m = serde_json::json!({ "msg_type": "msg", "target": target });
    if let (Some(m), Value::Object(extra)) = (m.as_object_mut(), extra) {
        m.extend(extra);
    }
    m
}

/// One sample's value in a `/metrics` text (0 when absent).
pub fn metric_sample(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}
