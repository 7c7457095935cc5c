//! The soak's slow consumer: a socket that stops reading while another
//! floods it with direct messages, until the hub drops it (4008, "the
//! socket could not keep up"), without slowing anyone else.
//!
//! The slow socket connects with a small receive buffer, stops reading,
//! and a flooder on the other hub sends it direct messages of 1 KiB, about
//! 2,000 a second, until its hub counts the overflow
//! (`aether_messages_dropped_total{reason="slow_consumer"}` on `/metrics`,
//! read every 100 ms; with a `wss://` hub, or none read, the whole `flood`
//! is sent). What the overflow takes depends on the kernel: the hub's
//! autotuned send buffer (up to `net.ipv4.tcp_wmem`'s maximum) holds a few
//! thousand such messages before its queue fills. Then the slow socket
//! reads again: what the TCP buffers held, then the close frame. The hub
//! gives a close frame 2 s to go out to a socket that does not read, so the
//! flood must stop soon after the overflow for the close code to be seen,
//! and not only the connection's end.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Hubs};

const GROUP: &str = "soak-slow";
const SLOW: &str = "soak-slow";
const FLOODER: &str = "soak-flood";
/// The slow socket's SO_RCVBUF (the kernel doubles it).
const RECV_BUFFER: u32 = 4096;
/// Messages per burst, one burst every 10 ms; the hub's counter is read
/// every `PROBE_EVERY` bursts.
const BURST: u64 = 20;
const PROBE_EVERY: u64 = 10;
/// How long the slow socket reads after the flood before giving up.
const READ_AFTER: Duration = Duration::from_secs(20);
const DROPPED: &str = r#"aether_messages_dropped_total{reason="slow_consumer"} "#;

/// How one slow consumer ended, and what it took.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub end: End,
    /// Messages sent to it, and read by it before the end.
    pub sent: u64,
    pub read: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The hub closed it with this code.
    Closed(u16),
    /// The connection ended without a close frame.
    Ended(String),
    /// Still open after the flood and `READ_AFTER`: never dropped.
    NotDropped,
}

/// Runs round `k`: the slow socket on hub `k`, the flooder on the next;
/// at most `flood` messages.
pub async fn round(hubs: &Hubs, k: usize, flood: u64) -> Result<Outcome, String> {
    let mut flooder = hubs.connect(k + 1, GROUP, FLOODER).await?;
    let mut slow = hubs.connect_thin(k, GROUP, SLOW, RECV_BUFFER).await?;
    let probe = hubs.plain_addr(k);
    let sent = send_flood(&mut flooder, flood, probe).await;
    let (end, read) = read_to_end(&mut slow).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), flooder.close(None)).await;
    let sent = sent?;
    if end == End::NotDropped {
        let _ = tokio::time::timeout(Duration::from_secs(1), slow.close(None)).await;
    }
    Ok(Outcome { end, sent, read })
}

/// Sends direct messages to the slow socket in bursts, until its hub
/// (at `probe`) counts an overflow or `count` are sent; how many were.
async fn send_flood(
    ws: &mut client::Ws,
    count: u64,
    probe: Option<SocketAddr>,
) -> Result<u64, String> {
    let pad = "x".repeat(1024);
    let text = format!(
        r#"{{"msg_type":"msg","target":"direct","to_id":"{SLOW}","payload":{{"pad":"{pad}"}}}}"#
    );
    let before = match probe {
        Some(addr) => dropped_slow(addr).await,
        None => None,
    };
    let mut every = tokio::time::interval(Duration::from_millis(10));
    let (mut sent, mut bursts) = (0, 0);
    while sent < count {
        every.tick().await;
        for _ in 0..BURST.min(count - sent) {
            ws.feed(Message::text(text.clone()))
                .await
                .map_err(|e| format!("flooder: {e}"))?;
            sent += 1;
        }
        ws.flush().await.map_err(|e| format!("flooder: {e}"))?;
        bursts += 1;
        if let (Some(addr), Some(before), 0) = (probe, before, bursts % PROBE_EVERY) {
            if dropped_slow(addr).await.is_some_and(|now| now > before) {
                break;
            }
        }
    }
    Ok(sent)
}

/// Reads until the hub closes or drops the socket, at most `READ_AFTER`;
/// how it ended and the messages read.
async fn read_to_end(ws: &mut client::Ws) -> (End, u64) {
    let deadline = tokio::time::Instant::now() + READ_AFTER;
    let mut read = 0;
    let end = loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => break End::NotDropped,
            Ok(Some(Ok(Message::Close(frame)))) => {
                break match frame {
                    Some(f) => End::Closed(u16::from(f.code)),
                    None => End::Ended("close frame without a code".into()),
                }
            }
            Ok(Some(Ok(Message::Text(_)))) => read += 1,
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => break End::Ended(e.to_string()),
            Ok(None) => break End::Ended("connection ended".into()),
        }
    };
    (end, read)
}

/// The hub's count of messages dropped for slow consumers, from its
/// `/metrics` (one HTTP/1.0 GET, bounded to 2 s).
async fn dropped_slow(addr: SocketAddr) -> Option<u64> {
    let get = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .ok()??;
    counter(&body)
}

fn counter(metrics: &str) -> Option<u64> {
    let line = metrics.lines().find(|l| l.starts_with(DROPPED))?;
    line[DROPPED.len()..]
        .trim()
        .parse::<f64>()
        .ok()
        .map(|v| v as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_overflow_counter_is_read_from_metrics() {
        let text = "# TYPE aether_messages_dropped_total counter\n\
            aether_messages_dropped_total{reason=\"rate_limited\"} 4\n\
            aether_messages_dropped_total{reason=\"slow_consumer\"} 1025\n";
        assert_eq!(super::counter(text), Some(1025));
        assert_eq!(super::counter("nothing"), None);
    }
}
