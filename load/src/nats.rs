//! `nats-fanout`: the `fanout` scenario against a `nats-server`'s WebSocket
//! listener, as a baseline for the hub measured the same way (issue 22).
//!
//! G subjects (`fan-g0` ..) × N subscribers, one publisher per subject at a
//! fixed rate or at full speed behind the same in-flight window, each
//! message the very text `fanout`'s publishers send (seq, send time, pad),
//! so order, loss and latency are read exactly as there: the counters,
//! pacing and measuring window are `fanout`'s own.
//!
//! The NATS client protocol is text over WebSocket: the server greets with
//! `INFO`, the client answers `CONNECT`, `SUB`s and `PUB`s, the server
//! delivers `MSG`s and now and then a `PING` that must get a `PONG`. The
//! server packs as many protocol messages into a frame as it has, and may
//! cut one over two frames, so frames are read as one byte stream.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::client::{self, Target};
use crate::fanout::{self, GroupState, Pace, Pacer, Seen, Shape, Totals};
use crate::stats::{self, Counters, Progress};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// The nats-server's WebSocket listener, ws://IP:PORT on loopback
    /// (`websocket { no_tls: true }` in its configuration).
    #[arg(long)]
    url: Target,
    /// Loopback source addresses to spread sockets over (127.0.0.1 ..), as
    /// the other scenarios do.
    #[arg(long, default_value_t = 4)]
    sources: usize,
    /// Subjects, each with its own publisher.
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// Subscribers per subject.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Messages per second per publisher; 0 = as fast as the window allows.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// With --rate 0: messages a publisher may have ahead of its tracked
    /// subscriber.
    #[arg(long, default_value_t = 64)]
    window: u64,
    #[command(flatten)]
    measure: stats::Measure,
    /// Connects in flight while setting up.
    #[arg(long, default_value_t = 100)]
    parallel: usize,
}

type Ws = WebSocketStream<TcpStream>;

/// The longest one socket's connect, upgrade and NATS greeting may take
/// together: a stalled server fails the run rather than holding it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// A protocol line the parser would still wait on past this is not NATS
/// (a `MSG`'s payload is counted apart from its line).
const MAX_LINE: usize = 64 * 1024;

/// Past this much buffered and unparsed, the stream is not NATS (the
/// server's default `max_payload` is 1 MiB).
const MAX_PENDING: usize = 8 * 1024 * 1024;

pub async fn run(args: Args) -> Result<(), String> {
    if !args.url.to_string().starts_with("ws://") {
        return Err(format!(
            "{}: nats-fanout speaks plain ws:// only (websocket {{ no_tls: true }})",
            args.url
        ));
    }
    let counters = Arc::new(Counters::default());
    let totals = Totals::new();
    let groups: Vec<Arc<GroupState>> = (0..args.groups).map(|_| GroupState::new()).collect();

    // Subscribers first, each subscription confirmed (a PONG after its
    // SUB) before anyone publishes.
    eprintln!("connecting {} subscribers", args.groups * args.subscribers);
    let permits = Arc::new(tokio::sync::Semaphore::new(args.parallel.max(1)));
    let mut connecting = Vec::with_capacity(args.groups * args.subscribers);
    for i in 0..args.groups * args.subscribers {
        let (g, n) = (i % args.groups, i / args.groups);
        let (url, sources, permits) = (args.url.clone(), args.sources, permits.clone());
        connecting.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let subject = subject(g);
            Nats::connect(&url, source(i, sources), Some(&subject))
                .await
                .map(|nats| (g, n, nats))
        }));
    }
    let mut sockets = Vec::with_capacity(connecting.len());
    for c in connecting {
        sockets.push(c.await.map_err(|e| e.to_string())??);
    }

    let measure_from = Arc::new(AtomicU64::new(u64::MAX));
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|(g, n, nats)| {
            let seen = Seen::new(
                n == 0,
                groups[g].clone(),
                totals.clone(),
                counters.clone(),
                measure_from.clone(),
            );
            tokio::spawn(subscribe(nats, seen))
        })
        .collect();

    let _progress = Progress::start("nats-fanout", counters.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut publishers = Vec::with_capacity(groups.len());
    for (g, group) in groups.iter().enumerate() {
        let nats = Nats::connect(&args.url, source(g, args.sources), None).await?;
        // As fanout's publishers: paced ones start at phases spread over
        // the period.
        let pace = Pace {
            rate: args.rate,
            window: args.window,
            payload: args.measure.payload,
            phase: g as f64 / groups.len() as f64,
            acks: false,
        };
        publishers.push(tokio::spawn(publish(
            nats,
            subject(g),
            pace,
            group.clone(),
            counters.clone(),
            stop.clone(),
        )));
    }

    let measured = fanout::measure(
        &args.measure,
        &groups,
        args.subscribers,
        &totals,
        &measure_from,
        readers,
        &publishers,
        &stop,
    )
    .await;
    let shape = Shape {
        scenario: "nats-fanout",
        groups_are: "subjects",
        groups: args.groups,
        subscribers: args.subscribers,
        rate: args.rate,
        payload: args.measure.payload,
    };
    fanout::report(&shape, &measured, None);
    Ok(())
}

/// Group `g`'s subject, named as fanout names its groups.
fn subject(g: usize) -> String {
    format!("fan-g{g}")
}

/// The `i`-th of `n` loopback source addresses: 127.0.0.1, 127.0.0.2, ...
/// (as the hub scenarios spread theirs).
fn source(i: usize, n: usize) -> IpAddr {
    let host = (i % n.max(1)) as u8 + 1;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, host))
}

/// One NATS connection over WebSocket, past its greeting.
struct Nats {
    ws: Ws,
    parser: Parser,
}

impl Nats {
    /// Connects from `from`, waits for the server's INFO, sends CONNECT
    /// (and a SUB to `subject`, sid 1, if given) and waits for the PONG to
    /// a PING sent after them: the server handles a connection's protocol
    /// in order, so by then the subscription is in place.
    async fn connect(target: &Target, from: IpAddr, subject: Option<&str>) -> Result<Nats, String> {
        let greet = async {
            let mut nats = Nats {
                ws: open(target.addr, from).await?,
                parser: Parser::default(),
            };
            nats.wait_for(|op| matches!(op, Op::Info)).await?;
            let mut hello =
                String::from("CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\n");
            if let Some(subject) = subject {
                hello.push_str(&format!("SUB {subject} 1\r\n"));
            }
            hello.push_str("PING\r\n");
            nats.ws
                .send(Message::binary(hello.into_bytes()))
                .await
                .map_err(|e| format!("{target}: {e}"))?;
            nats.wait_for(|op| matches!(op, Op::Pong)).await?;
            Ok(nats)
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, greet)
            .await
            .map_err(|_| format!("{target}: no NATS greeting within {HANDSHAKE_TIMEOUT:?}"))?
    }

    /// Reads until an operation `wanted` accepts, answering PINGs meanwhile.
    async fn wait_for(&mut self, wanted: impl Fn(&Op<'_>) -> bool) -> Result<(), String> {
        loop {
            let frame = match self.ws.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the server closed the connection".into()),
            };
            let (mut found, mut pings) = (false, 0);
            self.parser.feed(bytes_of(&frame), &mut |op| {
                found |= wanted(&op);
                pings += usize::from(matches!(op, Op::Ping));
            })?;
            self.pong(pings).await?;
            if found {
                return Ok(());
            }
        }
    }

    async fn pong(&mut self, pings: usize) -> Result<(), String> {
        if pings > 0 {
            self.ws
                .send(Message::binary(b"PONG\r\n".repeat(pings)))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A frame's bytes: the server sends binary frames, but text ones carry
/// the same protocol.
fn bytes_of(frame: &Message) -> &[u8] {
    match frame {
        Message::Binary(b) => b,
        Message::Text(t) => t.as_bytes(),
        _ => &[],
    }
}

/// TCP from `from` to `to` with Nagle off, then the upgrade, with the same
/// socket and lean buffers as the hub scenarios' client (`client.rs`), so
/// both sides of a comparison pay the same per socket.
async fn open(to: SocketAddr, from: IpAddr) -> Result<Ws, String> {
    let stream = client::tcp(to, from, None).await?;
    let config = Some(client::config());
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(format!("ws://{to}/"), stream, config)
            .await
            .map_err(|e| format!("ws://{to}/: {e}"))?;
    Ok(ws)
}

/// Reads one subscriber's deliveries into `seen` until the run aborts it
/// or the server drops it (then the run counts the rest as lost).
async fn subscribe(mut nats: Nats, mut seen: Seen) {
    while let Some(Ok(frame)) = nats.ws.next().await {
        let mut pings = 0;
        let parsed = nats.parser.feed(bytes_of(&frame), &mut |op| match op {
            Op::Msg(payload) => {
                if let Ok(text) = std::str::from_utf8(payload) {
                    seen.message(text);
                }
            }
            Op::Ping => pings += 1,
            _ => {}
        });
        if let Err(e) = parsed {
            eprintln!("nats-fanout: subscriber: {e}");
            return;
        }
        if nats.pong(pings).await.is_err() {
            return;
        }
    }
}

/// Publishes `fanout`'s messages on `subject` at `pace` until `stop`; then
/// keeps the connection open until the run aborts it, so the tail is
/// delivered.
async fn publish(
    nats: Nats,
    subject: String,
    pace: Pace,
    group: Arc<GroupState>,
    counters: Arc<Counters>,
    stop: tokio_util::sync::CancellationToken,
) {
    let Nats { ws, mut parser } = nats;
    let (mut sink, mut incoming) = ws.split();
    // The server may PING a publisher too; its reader cannot write, so it
    // hands the PONGs owed to the publishing loop, which sends them with
    // its next message.
    let (pings_tx, mut pings_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let _reading = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(Ok(frame)) = incoming.next().await {
            let mut pings = 0;
            let parsed = parser.feed(bytes_of(&frame), &mut |op| {
                pings += usize::from(matches!(op, Op::Ping));
            });
            if let Err(e) = parsed {
                eprintln!("nats-fanout: publisher: {e}");
                return;
            }
            if pings > 0 && pings_tx.send(pings).is_err() {
                return;
            }
        }
    }));
    let pad = "x".repeat(pace.payload);
    let mut pacer = Pacer::new(&pace);
    let mut seq = 0u64;
    while !stop.is_cancelled() {
        if !pacer.ready(seq, &group, &stop).await {
            return;
        }
        let payload = fanout::message_text(seq, &pad, false);
        let mut frame = Vec::with_capacity(payload.len() + subject.len() + 32);
        frame.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
        frame.extend_from_slice(payload.as_bytes());
        frame.extend_from_slice(b"\r\n");
        while let Ok(pings) = pings_rx.try_recv() {
            frame.extend_from_slice(&b"PONG\r\n".repeat(pings));
        }
        if sink.send(Message::binary(frame)).await.is_err() {
            return;
        }
        seq += 1;
        group.sent.store(seq, Ordering::SeqCst);
        counters.sent.fetch_add(1, Ordering::Relaxed);
    }
    let _ = sink.flush().await;
    std::future::pending::<()>().await;
}

/// One protocol message from the server.
#[derive(Debug, PartialEq)]
enum Op<'a> {
    /// A delivery's payload.
    Msg(&'a [u8]),
    Ping,
    Pong,
    Info,
    /// `+OK`, or a verb this client has no use for.
    Other,
}

/// The server's byte stream cut into protocol messages, whatever the
/// frames' boundaries; what is left of a frame waits for the next.
#[derive(Default)]
struct Parser {
    pending: Vec<u8>,
}

impl Parser {
    /// Hands every complete protocol message in what has arrived so far,
    /// `bytes` last, to `on`; an `-ERR` from the server is an error.
    fn feed(&mut self, bytes: &[u8], on: &mut dyn FnMut(Op<'_>)) -> Result<(), String> {
        // Most frames hold whole messages: parse them in place and copy
        // only a cut tail.
        if self.pending.is_empty() {
            let used = parse(bytes, on)?;
            self.pending.extend_from_slice(&bytes[used..]);
        } else {
            self.pending.extend_from_slice(bytes);
            let used = parse(&self.pending, on)?;
            self.pending.drain(..used);
        }
        if self.pending.len() > MAX_PENDING {
            return Err(format!(
                "{} bytes without a whole NATS message",
                self.pending.len()
            ));
        }
        Ok(())
    }
}

/// Parses the complete protocol messages at the start of `buf`; returns
/// how many bytes they took.
fn parse(buf: &[u8], on: &mut dyn FnMut(Op<'_>)) -> Result<usize, String> {
    let mut at = 0;
    while let Some(eol) = buf[at..].iter().position(|&b| b == b'\n') {
        let line = &buf[at..at + eol];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let next = at + eol + 1;
        if let Some(args) = line.strip_prefix(b"MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>: the size is last.
            let size = std::str::from_utf8(args)
                .ok()
                .and_then(|a| a.split_ascii_whitespace().last())
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| format!("bad MSG line: {}", String::from_utf8_lossy(line)))?;
            let end = next + size;
            if buf.len() < end + 2 {
                return Ok(at);
            }
            on(Op::Msg(&buf[next..end]));
            at = end + 2;
            continue;
        }
        if let Some(err) = line.strip_prefix(b"-ERR") {
            return Err(format!(
                "nats-server: -ERR{}",
                String::from_utf8_lossy(err).trim_end()
            ));
        }
        on(match line {
            b"PING" => Op::Ping,
            b"PONG" => Op::Pong,
            _ if line.starts_with(b"INFO ") => Op::Info,
            _ => Op::Other,
        });
        at = next;
    }
    if buf.len() - at > MAX_LINE {
        return Err(format!("a NATS protocol line over {MAX_LINE} bytes"));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::{Op, Parser};

    /// Everything `stream` yields when cut into frames at `cuts`.
    fn ops(stream: &[u8], cuts: &[usize]) -> Vec<String> {
        let mut parser = Parser::default();
        let mut seen = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain([&stream.len()]) {
            parser
                .feed(&stream[from..to], &mut |op| {
                    seen.push(match op {
                        Op::Msg(p) => format!("msg {}", String::from_utf8_lossy(p)),
                        other => format!("{other:?}"),
                    })
                })
                .unwrap();
            from = to;
        }
        seen
    }

    #[test]
    fn messages_are_read_across_and_within_frames() {
        let stream = b"INFO {\"server_id\":\"x\"}\r\nPING\r\nMSG fan-g0 1 5\r\nhe\r\no\r\n+OK\r\nMSG fan-g0 1 reply 0\r\n\r\nPONG\r\n";
        let whole = ops(stream, &[]);
        assert_eq!(
            whole,
            ["Info", "Ping", "msg he\r\no", "Other", "msg ", "Pong"]
        );
        // Cut anywhere, even inside CRLFs and payloads: the same messages.
        for cut in 1..stream.len() {
            assert_eq!(ops(stream, &[cut]), whole, "cut at {cut}");
        }
        let every_byte: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(ops(stream, &every_byte), whole);
    }

    #[test]
    fn errors_and_garbage_end_the_stream() {
        let mut parser = Parser::default();
        let err = parser
            .feed(b"-ERR 'Slow Consumer Detected'\r\n", &mut |_| {})
            .unwrap_err();
        assert!(err.contains("Slow Consumer"), "{err}");
        let mut parser = Parser::default();
        assert!(parser.feed(b"MSG a 1 x\r\n", &mut |_| {}).is_err());
        let mut parser = Parser::default();
        assert!(parser.feed(&vec![b'a'; 100_000], &mut |_| {}).is_err());
    }
}
