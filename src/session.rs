//! One socket's life after the upgrade: the read loop, the write loop,
//! pings, the idle timeout, the rate and ping limits and the close
//! handshake.
//!
//! One task per socket. It waits on whichever comes first: a frame from the
//! client, messages in its outbound queue, its tick (pings, the idle check,
//! and the token's expiry: one timer, set to the earliest), an overflow of
//! its queue, or the hub's shutdown. Writes drain everything queued into one
//! batch (`wire.rs`), so a burst costs few syscalls; reads handle every
//! frame that arrived together before going back to the queue, so what
//! they queue for this socket (acknowledgements) is written in one batch
//! too. A write the client does not take within the idle timeout ends the
//! socket (the tick cannot run while a write waits). Every ending is a [`Disconnect`], turned into
//! a close code in `close.rs`.

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

use crate::ack::{self, Asker};
use crate::auth::{Access, Caps};
use crate::close::{self, Disconnect};
use crate::config::Limits;
use crate::delivery::Delivery;
use crate::hub::Membership;
use crate::metrics::{self, DropReason};
use crate::outbox::Kick;
use crate::protocol::{self, Encoded, FrameError, MsgType, Origin, Target};
use crate::rate_limit::RateLimit;
use crate::replay::Resumed;
use crate::wire::Batch;

/// How long the hub waits for the close handshake before dropping the TCP
/// connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The most queued messages written before one flush.
const MAX_BATCH: usize = 256;

/// The WebSocket settings of every socket: small buffers, so an idle socket
/// costs a few KiB (DESIGN.md).
pub fn websocket_config(limits: &Limits) -> tungstenite::protocol::WebSocketConfig {
    let max = limits.max_message_bytes;
    tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // tungstenite only writes control frames (see `wire.rs`): at once.
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// Allocated up front for every socket, so kept small: client frames are
/// mostly a few hundred bytes, and a larger frame grows the buffer for the
/// time it takes to read it.
const READ_BUFFER: usize = 512;

/// What the socket's credential allows it, decided at the upgrade.
#[derive(Debug, Clone, Copy)]
pub struct Rights {
    caps: Caps,
    /// When the token runs out (closed with 4001).
    expires: Option<Instant>,
}

impl Rights {
    pub fn of(access: &Access) -> Rights {
        let expires = access.expires_at().map(|at| {
            let at = std::time::UNIX_EPOCH + Duration::from_secs(at);
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            Instant::now() + left
        });
        Rights {
            caps: access.caps(),
            expires,
        }
    }
}

pub struct Session<S> {
    ws: WebSocketStream<S>,
    rx: mpsc::Receiver<Delivery>,
    member: Membership,
    rights: Rights,
    rate: RateLimit,
    /// The client's pings: each costs a pong, so a flood is cut (4029).
    /// Made at the first ping: most clients (browsers) never send one, and
    /// an idle socket should not carry it.
    pings: Option<Box<RateLimit>>,
    opened: Instant,
    last_seen: Instant,
    last_ping: Instant,
    /// A batch the socket has not taken whole yet (only ever set while a
    /// write waits, or after a kick interrupted one).
    unsent: Option<Batch>,
    /// After a recovery: the replay and summary, written before anything
    /// else, then the live messages the replay already carried, dropped
    /// until each route moves past them (then `None`: no cost per message,
    /// and one pointer on every socket).
    resumed: Option<Box<Resumed>>,
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(
        ws: WebSocketStream<S>,
        member: Membership,
        rx: mpsc::Receiver<Delivery>,
        rights: Rights,
        resumed: Option<Resumed>,
    ) -> Self {
        let now = Instant::now();
        Session {
            ws,
            rx,
            rights,
            rate: RateLimit::new(member.hub().limits().rate_limit, now),
            pings: None,
            opened: now,
            last_seen: now,
            last_ping: now,
            member,
            unsent: None,
            resumed: resumed.map(Box::new),
        }
    }

    /// Serves the socket until it ends, then closes it.
    ///
    /// Not an `async fn`: those keep their arguments twice in the future
    /// (rust-lang/rust#62958), and this future lives as long as the socket.
    #[allow(clippy::manual_async_fn)]
    pub fn run(mut self) -> impl Future<Output = ()> {
        async move {
            let end = self.serve().await;
            // Boxed: closing happens once, so an idle socket should not
            // carry its state (a timer among it).
            Box::pin(self.finish(end)).await;
        }
    }

    async fn finish(&mut self, end: Disconnect) {
        tracing::debug!(
            group = %self.member.group,
            client = %self.member.client,
            code = end.code(),
            seconds = self.opened.elapsed().as_secs_f64(),
            "socket closed: {end}"
        );
        self.member.set_close_code(end.code());
        self.close(&end).await;
    }

    fn limits(&self) -> &Limits {
        self.member.hub().limits()
    }

    async fn serve(&mut self) -> Disconnect {
        if let Some(resumed) = &mut self.resumed {
            let first = std::mem::take(&mut resumed.batch);
            if resumed.dedup.is_done() {
                self.resumed = None;
            }
            if let Err(end) = Box::pin(self.write_first(first)).await {
                return end;
            }
        }
        let every = tick_period(self.limits());
        let mut tick = Box::pin(tokio::time::sleep_until(self.next_tick(every)));
        loop {
            let step = tokio::select! {
                biased;
                why = self.member.outbox().kicked() => {
                    Err(kicked(why, self.member.outbox().reason()))
                }
                queued = self.rx.recv() => match queued {
                    Some(msg) => self.write(msg).await,
                    None => Err(Disconnect::Lost),
                },
                frame = self.ws.next() => match frame {
                    // Boxed: the frame handler's state is large and only
                    // alive while a frame is handled, so an idle socket
                    // should not carry it.
                    Some(Ok(frame)) => Box::pin(self.on_frames(frame)).await,
                    Some(Err(e)) => Err(self.read_error(e)),
                    None => Err(Disconnect::Lost),
                },
                _ = tick.as_mut() => {
                    let ticked = Box::pin(self.on_tick()).await;
                    tick.as_mut().reset(self.next_tick(every));
                    ticked
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Handles `first`, then the frames that arrived with it (at most
    /// [`MAX_BATCH`]), before anything is written: what they queue for
    /// this socket (their acknowledgements) then goes out in one batch,
    /// rather than one write each.
    async fn on_frames(&mut self, first: WsMessage) -> Result<(), Disconnect> {
        self.on_frame(first).await?;
        for _ in 0..MAX_BATCH {
            match self.ws.next().now_or_never() {
                Some(Some(Ok(frame))) => self.on_frame(frame).await?,
                Some(Some(Err(e))) => return Err(self.read_error(e)),
                Some(None) => return Err(Disconnect::Lost),
                None => break,
            }
        }
        Ok(())
    }

    async fn on_frame(&mut self, frame: WsMessage) -> Result<(), Disconnect> {
        self.last_seen = Instant::now();
        match frame {
            WsMessage::Text(text) => {
                self.check_rate()?;
                self.on_text(text.as_str()).await
            }
            WsMessage::Binary(_) => {
                self.check_rate()?;
                Err(
                    FrameError::Schema("binary frames are not accepted: send JSON text".into())
                        .into(),
                )
            }
            WsMessage::Close(frame) => Err(Disconnect::ByClient(frame.map(|f| f.code.into()))),
            // The WebSocket library has queued the pong already; the ping
            // limit keeps a flood of them from costing the hub a pong each
            // for ever. Any frame counts as a sign of life.
            WsMessage::Ping(_) => self.check_pings(),
            WsMessage::Pong(_) | WsMessage::Frame(_) => Ok(()),
        }
    }

    fn check_rate(&mut self) -> Result<(), Disconnect> {
        if self.rate.allow(self.last_seen) {
            return Ok(());
        }
        metrics::dropped(DropReason::RateLimited, 1);
        Err(Disconnect::RateLimited)
    }

    /// Not a message, so not counted as a dropped one.
    fn check_pings(&mut self) -> Result<(), Disconnect> {
        let (limit, now) = (self.limits().ping_limit, self.last_seen);
        let pings = self
            .pings
            .get_or_insert_with(|| Box::new(RateLimit::new(limit, now)));
        match pings.allow(now) {
            true => Ok(()),
            false => Err(Disconnect::TooManyPings),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Disconnect> {
        let member = &self.member;
        let origin = Origin::Socket {
            group: &member.group,
            client: &member.client,
            allow_broadcast: self.limits().allow_client_broadcast,
        };
        let mut msg = protocol::parse(text, origin)?;
        self.rights.caps.check(msg.msg_type, msg.target)?;
        metrics::frame_received(msg.msg_type, msg.target);
        let asker = msg.ack_id.take().map(|ack_id| Asker {
            client: member.client.clone(),
            group: member.group.clone(),
            ack_id: ack_id.into_owned(),
        });
        let reply = match (msg.msg_type, msg.target) {
            (MsgType::Heartbeat, _) => protocol::heartbeat_reply(&member.client),
            (MsgType::Presence, _) => {
                // A store outage answers with no members rather than
                // dropping the socket.
                let members = member
                    .hub()
                    .members(&member.group)
                    .await
                    .unwrap_or_default();
                protocol::presence_reply(&member.client, &member.group, &members)
            }
            (_, Target::Echo) => msg.encode(),
            _ => {
                // A broker outage costs this message (counted, and told to
                // its sender if it asked), not the socket.
                let confirm = asker.map(|asker| asker.confirm(member.outbox()));
                let _ = member.hub().publish(&msg, confirm);
                return Ok(());
            }
        };
        self.write(Delivery::plain(reply.as_str())).await?;
        match asker {
            Some(asker) => {
                let ack = asker.answer(&ack::Status::Ok(None));
                self.write(Delivery::plain(&ack)).await
            }
            None => Ok(()),
        }
    }

    /// The next tick: one period from now, or the token's expiry if that
    /// comes first.
    fn next_tick(&self, every: Duration) -> tokio::time::Instant {
        let next = Instant::now() + every;
        let at = self
            .rights
            .expires
            .map_or(next, |expires| expires.min(next));
        at.into()
    }

    async fn on_tick(&mut self) -> Result<(), Disconnect> {
        let now = Instant::now();
        if self.rights.expires.is_some_and(|at| now >= at) {
            return Err(Disconnect::TokenExpired);
        }
        if now.duration_since(self.last_seen) >= self.limits().idle_timeout {
            return Err(Disconnect::Idle);
        }
        if now.duration_since(self.last_ping) >= self.limits().ping_interval {
            self.last_ping = now;
            return self.send_control(WsMessage::Ping(Default::default())).await;
        }
        Ok(())
    }

    /// Writes `first` and whatever else is queued, as one batch.
    async fn write(&mut self, first: Delivery) -> Result<(), Disconnect> {
        let mut batch = Batch::default();
        self.push(&mut batch, &first);
        for _ in 0..MAX_BATCH {
            match self.rx.try_recv() {
                Ok(msg) => self.push(&mut batch, &msg),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.unsent = Some(batch);
        self.drain_unsent().await
    }

    /// Adds a live message to `batch`, unless a replay already carried it.
    fn push(&mut self, batch: &mut Batch, msg: &Delivery) {
        if let Some(resumed) = &mut self.resumed {
            let replayed = resumed.dedup.replayed(msg);
            if resumed.dedup.is_done() {
                self.resumed = None;
            }
            if replayed {
                return;
            }
        }
        batch.push(msg.text());
    }

    /// Writes a recovery's replay and summary, before any live message.
    async fn write_first(&mut self, first: Vec<Encoded>) -> Result<(), Disconnect> {
        let mut batch = Batch::default();
        for msg in &first {
            batch.push(msg.as_str());
        }
        self.unsent = Some(batch);
        self.drain_unsent().await
    }

    /// Writes the unsent batch. A client that stops reading blocks the
    /// write; its queue then overflows, the hub shuts down, or the idle
    /// timeout passes, and each ends the wait (the batch stays, for
    /// `close`). Without the last, a client that stopped reading after its
    /// group went quiet would hold its socket for ever: nothing overflows,
    /// and the idle check waits behind the write.
    async fn drain_unsent(&mut self) -> Result<(), Disconnect> {
        // Nearly every write is taken at once: no waiter, no timer for it.
        let first = {
            let mut drain = std::pin::pin!(drain(&mut self.ws, &mut self.unsent));
            std::future::poll_fn(|cx| Poll::Ready(drain.as_mut().poll(cx))).await
        };
        match first {
            Poll::Ready(written) => written,
            // Boxed: an idle socket should not carry the state of a write
            // that waits. It resumes where the first attempt stopped.
            Poll::Pending => Box::pin(self.drain_or_give_up()).await,
        }
    }

    async fn drain_or_give_up(&mut self) -> Result<(), Disconnect> {
        let stall = self.limits().idle_timeout;
        let Session {
            ws, member, unsent, ..
        } = self;
        tokio::select! {
            written = drain(ws, unsent) => written,
            why = member.outbox().kicked() => Err(kicked(why, member.outbox().reason())),
            () = tokio::time::sleep(stall) => Err(Disconnect::Stalled),
        }
    }

    /// Sends a control frame through tungstenite (no batch is unsent here),
    /// bounded like [`Session::drain_unsent`]. Only ever called from the
    /// tick, whose state is boxed.
    async fn send_control(&mut self, frame: WsMessage) -> Result<(), Disconnect> {
        let stall = self.limits().idle_timeout;
        let Session { ws, member, .. } = self;
        tokio::select! {
            sent = ws.send(frame) => sent.map_err(|_| Disconnect::Lost),
            why = member.outbox().kicked() => Err(kicked(why, member.outbox().reason())),
            () = tokio::time::sleep(stall) => Err(Disconnect::Stalled),
        }
    }

    fn read_error(&self, e: tungstenite::Error) -> Disconnect {
        match e {
            tungstenite::Error::Capacity(_) => Disconnect::TooBig(self.limits().max_message_bytes),
            tungstenite::Error::Utf8(_) => {
                FrameError::Schema("text frame is not valid UTF-8".into()).into()
            }
            _ => Disconnect::Lost,
        }
    }

    /// Sends the close frame (or finishes the client's close handshake) and
    /// reads until the client closes, so that the client reads the close
    /// frame before the TCP connection goes.
    async fn close(&mut self, end: &Disconnect) {
        if *end == Disconnect::Lost {
            return;
        }
        let Session { ws, unsent, .. } = self;
        let handshake = async {
            // Whatever was half-sent goes first, so the close frame starts
            // on a frame boundary.
            if write_unsent(ws, unsent).await.is_err() {
                return;
            }
            let sent = match end.close_frame() {
                Some(frame) => ws.close(Some(frame)).await,
                None => ws.flush().await,
            };
            if sent.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, handshake).await;
    }
}

/// Ends what tungstenite has part-written (a pong), then writes the
/// unsent batch. Cancel-safe, as both are: dropped midway, it resumes
/// where it stopped.
async fn drain<S>(ws: &mut WebSocketStream<S>, unsent: &mut Option<Batch>) -> Result<(), Disconnect>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A pong tungstenite has part-written must end before our frames.
    ws.flush().await.map_err(|_| Disconnect::Lost)?;
    write_unsent(ws, unsent).await.map_err(|_| Disconnect::Lost)
}

/// Writes the unsent batch, if any, straight to the socket.
async fn write_unsent<S>(
    ws: &mut WebSocketStream<S>,
    unsent: &mut Option<Batch>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(batch) = unsent {
        batch.write_to(ws.get_mut()).await?;
        *unsent = None;
    }
    Ok(())
}

fn kicked(why: Kick, reason: Option<&str>) -> Disconnect {
    let by_service = |reconnect| Disconnect::ByService {
        reconnect,
        reason: reason.unwrap_or(close::service_reason(reconnect)).into(),
    };
    match why {
        Kick::Overflowed => Disconnect::SlowConsumer,
        Kick::ShuttingDown => Disconnect::Shutdown,
        Kick::Disconnected => by_service(false),
        Kick::Reconnect => by_service(true),
        Kick::Revoked => Disconnect::TokenRevoked,
    }
}

/// Pings and the idle check share one coarse tick: often enough to close
/// an idle socket within a quarter of the timeout past it.
fn tick_period(limits: &Limits) -> Duration {
    limits
        .ping_interval
        .min(limits.idle_timeout / 4)
        .max(Duration::from_millis(10))
}
