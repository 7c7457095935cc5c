//! A raw WebSocket client over a plain TCP socket: it answers nothing on
//! its own, so it can play a client that never reads (slow consumer, even
//! of the `101`) or never answers pings (idle timeout). Loopback only.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::TIMEOUT;

pub struct RawSocket {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One frame from the hub (server frames are never masked).
#[derive(Debug)]
pub enum Frame {
    Text(String),
    Ping,
    Close(u16, String),
    Other(u8),
}

impl RawSocket {
    /// Upgrades `path`; `recv_buffer` shrinks the kernel's receive buffer so
    /// a client that does not read fills up fast.
    pub async fn connect(addr: SocketAddr, path: &str, recv_buffer: Option<u32>) -> RawSocket {
        Self::connect_tuned(addr, path, recv_buffer, None).await
    }

    /// Like [`RawSocket::connect`], and `mss` caps the segment size the hub
    /// may send (TCP_MAXSEG before the handshake). The hub's kernel sizes
    /// a socket's send buffer by its segment size: over loopback's 64 KiB
    /// segments a client that stops reading leaves some 2.8 MB there, with
    /// Ethernet's 1,460 bytes about 100 KiB, so hundreds of stalled clients
    /// cost the machine little kernel memory and are quick to read back.
    pub async fn connect_tuned(
        addr: SocketAddr,
        path: &str,
        recv_buffer: Option<u32>,
        mss: Option<u32>,
    ) -> RawSocket {
        let mut raw = Self::request_upgrade(addr, path, recv_buffer, mss).await;
        let head = raw.read_upgrade().await;
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        raw
    }

    /// Sends the upgrade request for `path` and returns without reading a
    /// byte, not even the `101` (see [`RawSocket::connect_tuned`] for the
    /// buffer and segment sizes).
    pub async fn request_upgrade(
        addr: SocketAddr,
        path: &str,
        recv_buffer: Option<u32>,
        mss: Option<u32>,
    ) -> RawSocket {
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        if let Some(mss) = mss {
            set_option(
                &socket,
                libc::IPPROTO_TCP,
                libc::TCP_MAXSEG,
                mss,
                "TCP_MAXSEG",
            );
        }
        let mut stream = socket.connect(addr).await.expect("connect");
        let request = upgrade_request(addr, path);
        stream.write_all(request.as_bytes()).await.expect("write");
        RawSocket {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads the hub's answer to the upgrade request: its status line and
    /// headers.
    pub async fn read_upgrade(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                return head;
            }
            self.fill().await;
        }
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk))
            .await
            .expect("data in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..read]);
        read
    }

    /// The next frame, or `None` once the connection is closed.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// Reads until the hub's close frame: (texts read before it, code).
    pub async fn read_until_close(&mut self) -> (usize, Option<u16>) {
        let mut texts = 0;
        while let Some(frame) = self.read_frame().await {
            match frame {
                Frame::Text(_) => texts += 1,
                Frame::Close(code, _) => return (texts, Some(code)),
                Frame::Ping | Frame::Other(_) => {}
            }
        }
        (texts, None)
    }

    /// Like [`RawSocket::read_until_close`], cheaper for hundreds of
    /// sockets at once: frames are counted in place, never copied out.
    pub async fn skim_until_close(&mut self) -> (usize, Option<u16>) {
        let mut texts = 0;
        loop {
            let mut at = 0;
            while let Some((opcode, start, end)) = frame_bounds(&self.buf[at..]) {
                match opcode {
                    0x1 => texts += 1,
                    0x8 => {
                        let payload = &self.buf[at + start..at + end];
                        let code = payload
                            .get(..2)
                            .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                        return (texts, Some(code));
                    }
                    _ => {}
                }
                at += end;
            }
            self.buf.drain(..at);
            if self.fill().await == 0 {
                return (texts, None);
            }
        }
    }

    /// Sends a masked text frame.
    pub async fn send_text(&mut self, text: &str) {
        let mut frame = Vec::with_capacity(text.len() + 14);
        push_frame(&mut frame, true, 0x1, text.as_bytes());
        self.stream.write_all(&frame).await.expect("write");
    }
}

/// A WebSocket upgrade request for `path`, as a client writes it.
pub fn upgrade_request(addr: SocketAddr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// The first complete frame in `buf`: its opcode, where its payload
/// starts, and where the frame ends.
fn frame_bounds(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    if buf[1] & 0x80 != 0 {
        at += 4;
    }
    if buf.len() < at + len {
        return None;
    }
    Some((opcode, at, at + len))
}

fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    let (opcode, at, end) = frame_bounds(buf)?;
    let payload = &buf[at..end];
    let frame = match opcode {
        0x1 => Frame::Text(String::from_utf8_lossy(payload).into_owned()),
        0x9 => Frame::Ping,
        0x8 => {
            let code = payload
                .get(..2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .unwrap_or(1005);
            let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into_owned();
            Frame::Close(code, reason)
        }
        other => Frame::Other(other),
    };
    Some((frame, end))
}

/// A hostile client's tools: frames as it likes them (any opcode, FIN as
/// chosen, always masked, as a server must refuse unmasked client frames),
/// write errors returned rather than panicking since the hub may hang up
/// midway, and reads that never wait.
impl RawSocket {
    /// Sends one masked frame: `opcode` 0x0 continuation, 0x1 text,
    /// 0x2 binary, 0x8 close, 0x9 ping, 0xA pong.
    pub async fn send_frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        push_frame(&mut out, fin, opcode, payload);
        self.write_bytes(&out).await
    }

    /// Sends `payload` as one message of `fragments` frames: the first with
    /// `opcode` and FIN=0, then continuation frames, the last with FIN=1
    /// (pieces as even as the length allows; some are empty when there are
    /// more fragments than bytes). All of it in one write.
    pub async fn send_fragmented(
        &mut self,
        opcode: u8,
        payload: &[u8],
        fragments: usize,
    ) -> std::io::Result<()> {
        assert!(fragments >= 1, "at least one fragment");
        let mut out = Vec::with_capacity(payload.len() + fragments * 14);
        let len = payload.len();
        for i in 0..fragments {
            let piece = &payload[i * len / fragments..(i + 1) * len / fragments];
            let op = if i == 0 { opcode } else { 0x0 };
            push_frame(&mut out, i + 1 == fragments, op, piece);
        }
        self.write_bytes(&out).await
    }

    /// Writes bytes as they are (a frame header alone, say), within
    /// [`TIMEOUT`].
    pub async fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::time::timeout(TIMEOUT, self.stream.write_all(bytes))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
    }

    /// Grows the kernel's receive buffer of a client that read little so
    /// far, so that it can catch up fast (the window it can open is still
    /// bounded by the scale agreed at the handshake: 64 KiB after a small
    /// `recv_buffer`).
    pub fn set_recv_buffer(&self, size: u32) {
        set_option(
            &self.stream,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            size,
            "SO_RCVBUF",
        );
    }

    /// Every complete frame already received, without waiting; and whether
    /// the connection has ended (EOF or an error).
    pub fn take_ready(&mut self) -> (Vec<Frame>, bool) {
        let mut ended = false;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.try_read(&mut chunk) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    ended = true;
                    break;
                }
            }
        }
        let mut frames = Vec::new();
        while let Some((frame, used)) = parse_frame(&self.buf) {
            self.buf.drain(..used);
            frames.push(frame);
        }
        (frames, ended)
    }
}

/// One integer socket option.
fn set_option(fd: &impl std::os::fd::AsRawFd, level: i32, name: i32, value: u32, what: &str) {
    let value = value as libc::c_int;
    // SAFETY: setsockopt reads one c_int from a live local.
    let set = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "{what}");
}

/// Appends one masked client frame.
fn push_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
    let mask = [0x5a, 0xc3, 0x17, 0x88];
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}
