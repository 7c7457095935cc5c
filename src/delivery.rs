//! What reaches a socket: a message's shared text, and what a socket must
//! know of it besides, read once where the message enters this instance
//! and never read from the text again.
//!
//! The Redis reader decodes each pub/sub message once (its route, its
//! sender where the route skips the sender, its place in history); the
//! in-memory broker knows all of it already. The router then hands the
//! same [`Delivery`] to every local socket on the route, and a resuming
//! socket's replay check (`replay.rs`) asks its [`Place`] rather than
//! scanning the text.
//!
//! One pointer wide on purpose, like the text it carries: every socket's
//! outbound queue preallocates a block of slots, and an idle socket should
//! not pay for fat ones. Cloning it for a recipient is one reference count.

use std::fmt;
use std::sync::Arc;

use crate::history::{Epoch, RouteKind};
use crate::protocol::Encoded;

/// A message on its way to local sockets; clones share everything.
#[derive(Clone)]
pub struct Delivery(Arc<Parts>);

struct Parts {
    text: Encoded,
    place: Option<Place>,
}

/// Where a kept message stands in its route's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The kind of route it travelled on (as a socket's `since_*` names it).
    pub kind: RouteKind,
    pub offset: u64,
    pub epoch: Epoch,
}

impl Delivery {
    /// A kept message, numbered at `place`.
    pub fn kept(text: Encoded, place: Place) -> Delivery {
        Delivery(Arc::new(Parts {
            text,
            place: Some(place),
        }))
    }

    /// A message history does not keep: a reply, a presence event, a
    /// service's own publish, or any message with history off.
    pub fn plain(text: Encoded) -> Delivery {
        Delivery(Arc::new(Parts { text, place: None }))
    }

    pub fn text(&self) -> &str {
        self.0.text.as_str()
    }

    pub fn place(&self) -> Option<&Place> {
        self.0.place.as_ref()
    }

    /// Whether this is a kept message of `epoch`.
    pub fn is_of(&self, epoch: &Epoch) -> bool {
        self.place().is_some_and(|p| p.epoch == *epoch)
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("text", &self.text())
            .field("place", &self.place())
            .finish()
    }
}
