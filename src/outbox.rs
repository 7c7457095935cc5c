//! One socket's outbound queue, as the router sees it.
//!
//! The router hands messages to a socket with [`Outbox::offer`], which never
//! waits: a full queue means the socket cannot keep up, so the outbox is
//! kicked and the session (which owns the receiving end) closes the socket
//! with 4008. One slow consumer costs nobody else anything. The hub's
//! shutdown, and operators' disconnects and revocations, kick outboxes
//! the same way, so a session waits on one signal for all of them.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, Notify};

use crate::delivery::Delivery;

pub struct Outbox {
    tx: mpsc::Sender<Delivery>,
    kick: AtomicU8,
    kicked: Notify,
    /// An operator's close reason, set before the kick that carries it.
    reason: OnceLock<Box<str>>,
}

/// Why a socket must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    Overflowed = 1,
    ShuttingDown = 2,
    /// An operator's disconnect: the client must not come back on its own.
    Disconnected = 3,
    /// An operator's disconnect asking the client to reconnect at once.
    Reconnect = 4,
    /// The socket's token was revoked.
    Revoked = 5,
}

impl Kick {
    fn from_u8(n: u8) -> Option<Kick> {
        Some(match n {
            1 => Kick::Overflowed,
            2 => Kick::ShuttingDown,
            3 => Kick::Disconnected,
            4 => Kick::Reconnect,
            5 => Kick::Revoked,
            _ => return None,
        })
    }
}

const NOT_KICKED: u8 = 0;

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
    pub fn new(capacity: usize) -> (Arc<Outbox>, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let outbox = Outbox {
            tx,
            kick: AtomicU8::new(NOT_KICKED),
            kicked: Notify::new(),
            reason: OnceLock::new(),
        };
        (Arc::new(outbox), rx)
    }

    /// Queues a shared copy of `msg` without waiting.
    pub fn offer(&self, msg: &Delivery) -> Offer {
        if self.kick.load(Ordering::Relaxed) != NOT_KICKED {
            return Offer::Closed;
        }
        match self.tx.try_send(msg.clone()) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
            Err(mpsc::error::TrySendError::Full(_)) => match self.kick(Kick::Overflowed) {
                true => Offer::Overflowed,
                false => Offer::Closed,
            },
        }
    }

    /// Tells the session to go; the first kick wins. False if it was
    /// already kicked.
    pub fn kick(&self, why: Kick) -> bool {
        let first = self
            .kick
            .compare_exchange(NOT_KICKED, why as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.kicked.notify_one();
        }
        first
    }

    /// Kicks with a close reason to send (an operator's); the first kick
    /// wins, with its reason.
    pub fn kick_with_reason(&self, why: Kick, reason: &str) -> bool {
        if self.kick.load(Ordering::Acquire) != NOT_KICKED {
            return false;
        }
        let _ = self.reason.set(reason.into());
        self.kick(why)
    }

    /// The close reason given with the kick, if any.
    pub fn reason(&self) -> Option<&str> {
        self.reason.get().map(|r| &**r)
    }

    /// Resolves with the reason once the outbox is kicked.
    pub async fn kicked(&self) -> Kick {
        loop {
            match Kick::from_u8(self.kick.load(Ordering::Acquire)) {
                Some(why) => return why,
                None => self.kicked.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Delivery {
        Delivery::plain("{}")
    }

    #[tokio::test]
    async fn a_full_queue_overflows_once_and_wakes_the_owner() {
        let (outbox, mut rx) = Outbox::new(2);
        assert_eq!(outbox.offer(&msg()), Offer::Queued);
        assert_eq!(outbox.offer(&msg()), Offer::Queued);
        assert_eq!(outbox.offer(&msg()), Offer::Overflowed);
        assert_eq!(outbox.offer(&msg()), Offer::Closed);
        // The owner hears of it even though it started waiting afterwards.
        let why = tokio::time::timeout(std::time::Duration::from_secs(5), outbox.kicked())
            .await
            .unwrap();
        assert_eq!(why, Kick::Overflowed);
        // A later shutdown does not change the reason.
        assert!(!outbox.kick(Kick::ShuttingDown));
        assert!(rx.recv().await.is_some());
    }

    #[tokio::test]
    async fn an_operators_kick_carries_its_reason_and_the_first_wins() {
        let (outbox, _rx) = Outbox::new(2);
        assert!(outbox.kick_with_reason(Kick::Reconnect, "moved"));
        assert!(!outbox.kick_with_reason(Kick::Disconnected, "gone"));
        assert!(!outbox.kick(Kick::Revoked));
        assert_eq!(outbox.kicked().await, Kick::Reconnect);
        assert_eq!(outbox.reason(), Some("moved"));
    }

    #[tokio::test]
    async fn a_dropped_receiver_reads_as_closed() {
        let (outbox, rx) = Outbox::new(2);
        drop(rx);
        assert_eq!(outbox.offer(&msg()), Offer::Closed);
    }
}
