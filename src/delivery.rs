//! What reaches a socket: a message's shared text, and what a socket must
//! know of it besides, read once where the message enters this instance
//! and never read from the text again.
//!
//! The Redis reader decodes each pub/sub message once (its route, its
//! sender where the route skips the sender, its place in history); the
//! in-memory broker numbers its messages itself. The router then hands
//! the same [`Delivery`] to every local socket on the route, and a
//! resuming socket's replay check (`replay.rs`) asks its [`Place`] rather
//! than scanning the text.
//!
//! The place and the text share one allocation, behind a pointer as wide
//! as the text's alone: every socket's outbound queue preallocates a block
//! of slots (an idle socket should not pay for fat ones), and a socket
//! writing a message should find its text where its reference count is,
//! not behind a second pointer. Cloning it for a recipient is one
//! reference count.

use std::fmt;

use triomphe::{Arc, HeaderSlice};

use crate::history::{position_of, Epoch, RouteKind};

/// A message on its way to local sockets; clones share everything.
#[derive(Clone)]
pub struct Delivery(Arc<HeaderSlice<Option<Place>, str>>);

// As wide as the text's own pointer (`Arc<str>`): a queue slot each.
const _: () = assert!(std::mem::size_of::<Delivery>() == 2 * std::mem::size_of::<usize>());

/// Where a kept message stands in its route's history. Its epoch is the
/// end of the text, where the numbering wrote it ([`Delivery::epoch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The kind of route it travelled on (as a socket's `since_*` names it).
    pub kind: RouteKind,
    pub offset: u64,
    epoch_len: u8,
}

impl Delivery {
    /// A message on a route of `kind` that history may have numbered: its
    /// place is read from the end of its text, where the numbering wrote
    /// `offset` and `epoch`. Without them it is delivered as it is.
    pub fn numbered(text: &str, kind: RouteKind) -> Delivery {
        let place = position_of(text).and_then(|(offset, epoch)| {
            Epoch::parse(epoch)?;
            let epoch_len = u8::try_from(epoch.len()).ok()?;
            Some(Place {
                kind,
                offset,
                epoch_len,
            })
        });
        Delivery(Arc::from_header_and_str(place, text))
    }

    /// A message this instance numbered itself ([`crate::history::number`]
    /// wrote `offset` and `epoch` at the end of `text`).
    pub fn kept(text: &str, kind: RouteKind, offset: u64, epoch: &Epoch) -> Delivery {
        let epoch_len = u8::try_from(epoch.as_str().len()).ok();
        let place = epoch_len.map(|epoch_len| Place {
            kind,
            offset,
            epoch_len,
        });
        debug_assert!(text.ends_with(&format!("\"{}\"}}", epoch.as_str())));
        Delivery(Arc::from_header_and_str(place, text))
    }

    /// A message history does not keep: a reply, a presence event, a
    /// service's own publish, or any message with history off.
    pub fn plain(text: &str) -> Delivery {
        Delivery(Arc::from_header_and_str(None, text))
    }

    pub fn text(&self) -> &str {
        &self.0.slice
    }

    pub fn place(&self) -> Option<&Place> {
        self.0.header.as_ref()
    }

    /// The epoch of a kept message (the end of its text: `…"epoch":"E"}`).
    pub fn epoch(&self) -> Option<&str> {
        let len = usize::from(self.place()?.epoch_len);
        let text = self.text();
        let end = text.len().checked_sub(2)?;
        text.get(end.checked_sub(len)?..end)
    }

    /// Whether this is a kept message of `epoch`.
    pub fn is_of(&self, epoch: &Epoch) -> bool {
        self.epoch() == Some(epoch.as_str())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::number;

    #[test]
    fn a_numbered_text_carries_its_place_and_epoch() {
        let epoch = Epoch::parse("ep_1").expect("epoch");
        let text = number(r#"{"target":"group","payload":{"epoch":"x"}}"#, 7, &epoch);
        let d = Delivery::numbered(text.as_str(), RouteKind::Group);
        assert_eq!(d.text(), text.as_str());
        let place = d.place().expect("numbered");
        assert_eq!((place.kind, place.offset), (RouteKind::Group, 7));
        assert_eq!(d.epoch(), Some("ep_1"));
        assert!(d.is_of(&epoch));
        assert!(!d.is_of(&Epoch::parse("ep_2").expect("epoch")));
    }

    #[test]
    fn a_text_without_a_valid_place_is_plain() {
        for text in [
            r#"{"target":"group"}"#,
            r#"{"offset":1,"epoch":"not valid!"}"#,
            "",
        ] {
            let d = Delivery::numbered(text, RouteKind::Client);
            assert!(d.place().is_none() && d.epoch().is_none(), "{text}");
            assert_eq!(d.text(), text);
        }
        assert!(Delivery::plain(r#"{"a":1,"offset":2,"epoch":"e"}"#)
            .place()
            .is_none());
    }
}
