//! Text frames written straight to the socket.
//!
//! Outgoing messages are already-encoded JSON shared by every recipient; a
//! server's frame around one is a 2 to 10 byte header (no mask). A batch of
//! queued messages becomes one buffer and as few `write` calls as the
//! kernel allows, and the buffer is freed once written: a socket that once
//! received a burst keeps nothing of it (tungstenite's own write buffer
//! keeps its largest size for the life of the socket).
//!
//! tungstenite still reads every frame and writes the control frames
//! (pings, pongs, close); the session makes sure the two never interleave
//! inside a frame.

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Queued messages, framed, and how much of them the socket has taken.
#[derive(Debug, Default)]
pub struct Batch {
    buf: Vec<u8>,
    written: usize,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends one text frame holding `text`.
    pub fn push(&mut self, text: &str) {
        let len = text.len();
        self.buf.reserve(len + 10);
        self.buf.push(0x81); // FIN, text
        match len {
            0..=125 => self.buf.push(len as u8),
            126..=0xffff => {
                self.buf.push(126);
                self.buf.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                self.buf.push(127);
                self.buf.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        self.buf.extend_from_slice(text.as_bytes());
    }

    /// Writes what is left. Cancel-safe: progress is recorded after every
    /// `write`, so an interrupted batch resumes where it stopped.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> std::io::Result<()> {
        while self.written < self.buf.len() {
            let n = io.write(&self.buf[self.written..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.written += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_rfc_6455() {
        for (len, header) in [
            (0usize, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65535, vec![0x81, 126, 0xff, 0xff]),
            (65536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut batch = Batch::default();
            batch.push(&"x".repeat(len));
            assert_eq!(batch.buf[..header.len()], header[..], "length {len}");
            assert_eq!(batch.buf.len(), header.len() + len);
        }
    }

    #[tokio::test]
    async fn a_batch_reads_back_as_the_same_messages() {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::protocol::Role;
        use tokio_tungstenite::WebSocketStream;

        let texts = ["{}", &"a".repeat(300), &"b".repeat(70_000), "é"];
        let mut batch = Batch::default();
        for t in texts {
            batch.push(t);
        }
        let (mut server, client) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move { batch.write_to(&mut server).await });
        let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        for t in texts {
            let got = ws.next().await.unwrap().unwrap();
            assert_eq!(got.into_text().unwrap().as_str(), t);
        }
        writer.await.unwrap().unwrap();
    }
}
