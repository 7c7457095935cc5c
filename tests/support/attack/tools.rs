//! The attackers' shared tools: a [`Busy`] sender that floods the attack
//! group until the hub drops its slow consumers, and connections that
//! dawdle before the upgrade ([`dawdle`], [`held_for`]), with what the
//! attacks on many connections need around them (open-file limits, the
//! accept queue, spreads of times).

use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::super::process::Running;
use super::super::{msg, Ws, TIMEOUT};
use super::connect;

/// A sender in the attack group sending 2 KiB group messages as fast as
/// the hub takes them. It reads what it is sent (presence events, pings),
/// so it is never a slow consumer itself, and being closed fails the test.
pub struct Busy {
    tx: SplitSink<Ws, Message>,
    reader: JoinHandle<()>,
    pub sent: usize,
}

/// What a flood of [`Busy::flood_until_dropped`] took.
pub struct Flooded {
    pub sent: usize,
    /// Slow consumers the hub dropped meanwhile (counted once per socket).
    pub dropped: f64,
    pub took: Duration,
    pub first_drop: Option<Instant>,
}

/// The hub's count of sockets dropped for a full queue (one per socket).
pub const DROPPED_SLOW: &str = r#"aether_messages_dropped_total{reason="slow_consumer"}"#;
pub const CLOSED_4008: &str = r#"aether_connections_closed_total{code="4008"}"#;

impl Busy {
    pub async fn start(hub: &Running) -> Busy {
        let (tx, mut rx) = connect(hub, "attack", "busy").await.ws.split();
        let reader = tokio::spawn(async move {
            while let Some(Ok(frame)) = rx.next().await {
                if let Message::Close(_) = frame {
                    panic!("the busy sender was closed: {frame:?}");
                }
            }
        });
        Busy {
            tx,
            reader,
            sent: 0,
        }
    }

    /// Sends one 2 KiB group message.
    pub async fn send_one(&mut self) {
        let blob = "x".repeat(2048);
        let m = msg("group", json!({"msg": blob, "payload": {"seq": self.sent}}));
        self.tx
            .send(Message::text(m.to_string()))
            .await
            .expect("the busy sender is never slowed to a stop");
        self.sent += 1;
    }

    /// Sends as fast as it can until the hub has dropped `slow` slow
    /// consumers: at most 10,000 messages or 20 s.
    pub async fn flood_until_dropped(&mut self, hub: &Running, slow: usize) -> Flooded {
        let before = hub.metric(DROPPED_SLOW).await;
        let started = Instant::now();
        let (mut dropped, mut first_drop) = (0.0, None);
        let mut sent = 0;
        while sent < 10_000 && started.elapsed() < Duration::from_secs(20) {
            self.send_one().await;
            sent += 1;
            if sent % 32 == 0 {
                dropped = hub.metric(DROPPED_SLOW).await - before;
                if dropped > 0.0 && first_drop.is_none() {
                    first_drop = Some(Instant::now());
                }
                if dropped >= slow as f64 {
                    break;
                }
            }
        }
        Flooded {
            sent,
            dropped,
            took: started.elapsed(),
            first_drop,
        }
    }

    /// Hangs up; fails if the hub closed the busy sender meanwhile.
    pub async fn stop(mut self) {
        if self.reader.is_finished() {
            self.reader.await.expect("the busy sender's reader");
        } else {
            self.reader.abort();
        }
        let _ = self.tx.close().await;
    }
}

/// Waits (bounded) until the hub holds `sockets` open sockets: attackers
/// that never read cannot tell when their upgrade is done.
pub async fn wait_for_sockets(hub: &Running, sockets: usize) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let open = hub.metric("aether_connections_open").await;
        if open == sockets as f64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the hub holds {open} sockets, not {sockets}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Raises the test process's open-file limit to at least `needed`, for
/// attacks of thousands of connections (the hub raises its own at start).
pub fn raise_open_files(needed: u64) {
    let limit = aether_hub::fdlimit::raise().unwrap_or(0);
    assert!(
        limit >= needed,
        "the open-file limit is {limit}: this attack needs {needed}"
    );
}

/// The kernel's cap on a listener's accept queue (`net.core.somaxconn`):
/// a burst of connects larger than it is partly dropped and retried
/// seconds later, whatever the hub does.
pub fn accept_queue_cap() -> usize {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(4096)
}

/// How long the hub keeps a connection that sends `drip` one byte a second
/// from now on (nothing when empty), until it hangs up: `None` if it still
/// holds it after `give_up`. Whatever the hub answers before hanging up is
/// read and ignored.
pub async fn held_for(mut stream: TcpStream, drip: &[u8], give_up: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut drip = drip.iter();
    let mut second = tokio::time::interval(Duration::from_secs(1));
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {}
            },
            _ = second.tick() => {
                if started.elapsed() > give_up {
                    return None;
                }
                let Some(&byte) = drip.next() else { continue };
                if stream.write_all(&[byte]).await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
}

/// `count` connections to the hub at once, each sending `drip` a byte a
/// second from its connect on: how long the hub held each (see
/// [`held_for`]).
pub async fn dawdle(
    hub: &Running,
    count: usize,
    drip: &str,
    give_up: Duration,
) -> Vec<Option<Duration>> {
    let dawdlers: Vec<_> = (0..count)
        .map(|_| {
            let (addr, drip) = (hub.addr, drip.to_owned());
            tokio::spawn(async move {
                let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
                    .await
                    .expect("connected in time")
                    .expect("connect");
                held_for(stream, drip.as_bytes(), give_up).await
            })
        })
        .collect();
    let mut held = Vec::with_capacity(count);
    for dawdler in dawdlers {
        held.push(dawdler.await.expect("a dawdler failed"));
    }
    held
}

/// The fewest, the median and the most of `times`.
pub fn spread(mut times: Vec<Duration>) -> (Duration, Duration, Duration) {
    times.sort();
    let last = times.len() - 1;
    (times[0], times[last / 2], times[last])
}
