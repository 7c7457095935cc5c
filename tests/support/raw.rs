//! A raw WebSocket client over a plain TCP socket: it answers nothing on
//! its own, so it can play a client that never reads (slow consumer) or
//! never answers pings (idle timeout). Loopback only.

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
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut stream = socket.connect(addr).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = RawSocket {
            stream,
            buf: Vec::new(),
        };
        let head = raw.read_head().await;
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        raw
    }

    async fn read_head(&mut self) -> String {
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

    /// Sends a masked text frame.
    pub async fn send_text(&mut self, text: &str) {
        let mask = [1u8, 2, 3, 4];
        let payload = text.as_bytes();
        let mut frame = vec![0x81];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.expect("write");
    }
}

fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
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
    let payload = buf.get(at..at + len)?;
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
    Some((frame, at + len))
}
