//! Acknowledgements (docs/protocol.md section 10): how a frame that carries
//! an `ack_id` learns its fate, and how the answer reaches its sender.
//!
//! A published frame hands the broker a [`Confirm`] made here; the broker
//! tells it once, when Redis answered (or at once in memory, or when the
//! message was dropped), and the answer becomes one more message in the
//! sender's own queue. So an acknowledgement never waits behind other
//! sockets' work, costs nothing to frames that do not ask for one, and
//! is written in the queue's order like any other message: a sender that
//! stopped reading overflows its queue (4008) on acknowledgements too.

use std::sync::Arc;

use crate::broker::{BrokerError, Confirm, Published};
use crate::delivery::Delivery;
use crate::history::Position;
use crate::metrics;
use crate::outbox::Outbox;
use crate::protocol::{self, VisionId};

/// A frame's fate, as its acknowledgement says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Published (Redis confirmed it, or the in-memory router routed it);
    /// a kept message's place in its route's history.
    Ok(Option<Position>),
    /// Not published: it reached nobody, and may be sent again.
    Failed,
    /// Handed to Redis, whose answer never came: it may have been
    /// published, so sending it again may deliver it twice.
    Unconfirmed,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Ok(_) => "ok",
            Status::Failed => "failed",
            Status::Unconfirmed => "unconfirmed",
        }
    }
}

impl From<Published> for Status {
    fn from(published: Published) -> Status {
        match published {
            Ok(position) => Status::Ok(position),
            Err(BrokerError::Unavailable) => Status::Failed,
            Err(BrokerError::Unconfirmed) => Status::Unconfirmed,
        }
    }
}

/// Who an acknowledgement goes to, and which frame it answers.
pub struct Asker {
    pub client: VisionId,
    pub group: VisionId,
    pub ack_id: String,
}

impl Asker {
    /// The acknowledgement of this frame, counted by status.
    pub fn answer(&self, status: &Status) -> String {
        metrics::acked(status.as_str());
        // `ack_id` is a checked Vision ID and the epoch hex: nothing to
        // escape.
        let (id, name) = (&self.ack_id, status.as_str());
        let payload = match status {
            Status::Ok(Some(at)) => format!(
                r#"{{"ack_id":"{id}","status":"{name}","offset":{},"epoch":"{}"}}"#,
                at.offset,
                at.epoch.as_str()
            ),
            Status::Failed => {
                format!(r#"{{"ack_id":"{id}","status":"{name}","reason":"unavailable"}}"#)
            }
            Status::Ok(None) | Status::Unconfirmed => {
                format!(r#"{{"ack_id":"{id}","status":"{name}"}}"#)
            }
        };
        protocol::ack(&self.client, &self.group, &payload)
    }

    /// A confirmation that queues the acknowledgement on `outbox` (the
    /// sender's own) when the broker tells it.
    pub fn confirm(self, outbox: &Arc<Outbox>) -> Confirm {
        let outbox = Arc::clone(outbox);
        Confirm::new(move |published| {
            let answer = self.answer(&Status::from(published));
            // A socket gone meanwhile has nobody to tell; a full queue
            // kicks the socket as any message would.
            outbox.offer(&Delivery::plain(&answer));
        })
    }
}
