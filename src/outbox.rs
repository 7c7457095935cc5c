//! One socket's outbound queue, as the router sees it.
//!
//! The router hands messages to a socket with [`Outbox::offer`], which never
//! waits: a full queue means the socket cannot keep up, so the outbox is
//! marked overflowed and the session (which owns the receiving end) closes
//! the socket with 4008. One slow consumer costs nobody else anything.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::protocol::Encoded;

pub struct Outbox {
    tx: mpsc::Sender<Encoded>,
    overflowed: AtomicBool,
    overflow: Notify,
}

/// What became of one offered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The queue was full: the socket is being dropped.
    Overflowed,
    /// The socket is already gone or going.
    Closed,
}

impl Outbox {
    /// A new outbox holding at most `capacity` messages, and its receiver.
    pub fn new(capacity: usize) -> (Arc<Outbox>, mpsc::Receiver<Encoded>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let outbox = Outbox {
            tx,
            overflowed: AtomicBool::new(false),
            overflow: Notify::new(),
        };
        (Arc::new(outbox), rx)
    }

    /// Queues a shared copy of `msg` without waiting.
    pub fn offer(&self, msg: &Encoded) -> Offer {
        if self.overflowed.load(Ordering::Relaxed) {
            return Offer::Closed;
        }
        match self.tx.try_send(msg.clone()) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.overflowed.swap(true, Ordering::Relaxed) {
                    Offer::Closed
                } else {
                    self.overflow.notify_one();
                    Offer::Overflowed
                }
            }
        }
    }

    /// Resolves once the queue has overflowed.
    pub async fn overflowed(&self) {
        if !self.overflowed.load(Ordering::Relaxed) {
            self.overflow.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Encoded {
        Encoded::from_text("{}".into())
    }

    #[tokio::test]
    async fn a_full_queue_overflows_once_and_wakes_the_owner() {
        let (outbox, mut rx) = Outbox::new(2);
        assert_eq!(outbox.offer(&msg()), Offer::Queued);
        assert_eq!(outbox.offer(&msg()), Offer::Queued);
        assert_eq!(outbox.offer(&msg()), Offer::Overflowed);
        assert_eq!(outbox.offer(&msg()), Offer::Closed);
        // The owner hears of it even though it started waiting afterwards.
        tokio::time::timeout(std::time::Duration::from_secs(5), outbox.overflowed())
            .await
            .unwrap();
        assert!(rx.recv().await.is_some());
    }

    #[tokio::test]
    async fn a_dropped_receiver_reads_as_closed() {
        let (outbox, rx) = Outbox::new(2);
        drop(rx);
        assert_eq!(outbox.offer(&msg()), Offer::Closed);
    }
}
