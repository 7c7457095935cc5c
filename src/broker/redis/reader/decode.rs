//! A pub/sub message, decoded once: everything the reader, the router and
//! the sockets need of it is read here, and nobody reads the text again.
//!
//! - the route, from the channel name;
//! - the delivered text, shared by every recipient;
//! - with history on, its place in the route's history (`offset` and
//!   `epoch`, which the numbering script wrote as its last fields), which
//!   gap repair orders it by and a resuming socket's replay check reads;
//! - on a route that skips its sender (group, broadcast), the sender's
//!   `from_id`, a full JSON read and so only where needed;
//! - its `sent_at`, for the pub/sub lag metric.
//!
//! A message history did not number (a presence event, a service's raw
//! `PUBLISH`) has no place and is delivered byte for byte as it came.

use std::borrow::Cow;

use crate::channels::{Names, Route};
use crate::delivery::Delivery;
use crate::history::{Epoch, RouteKind};
use crate::metrics;
use crate::protocol;
use crate::router::Router;

/// A message on its way to the router, and its sender.
pub struct Decoded {
    pub delivery: Delivery,
    /// The `from_id` where the route skips the sender; else empty.
    pub sender: Box<str>,
}

impl Decoded {
    /// Reads one pub/sub message; `None` for a channel or text that is not
    /// ours. `numbered`: whether history is on (and places are read).
    pub fn read(names: &Names, msg: &redis::Msg, numbered: bool) -> Option<(Route, Decoded)> {
        let route = names.route(msg.get_channel_name())?;
        let Ok(text) = std::str::from_utf8(msg.get_payload_bytes()) else {
            tracing::debug!(
                channel = msg.get_channel_name(),
                "dropped a non-UTF-8 message"
            );
            return None;
        };
        if let Some(sent) = protocol::sent_at_of(text) {
            metrics::pubsub_lag(sent);
        }
        let delivery = match (numbered, RouteKind::of(&route)) {
            (true, Some(kind)) => Delivery::numbered(text, kind),
            _ => Delivery::plain(text),
        };
        let sender = match route.skips_sender() {
            true => sender_of(text).map(Cow::into_owned).unwrap_or_default(),
            false => String::new(),
        };
        let sender = sender.into_boxed_str();
        Some((route, Decoded { delivery, sender }))
    }

    /// The numbering this message is in, if history numbered it.
    pub fn epoch(&self) -> Option<Epoch> {
        Epoch::parse(self.delivery.epoch()?)
    }

    pub fn dispatch(&self, router: &Router, route: &Route) {
        router.dispatch(route, &self.delivery, &self.sender);
    }
}

/// The `from_id` of a message, read without building the whole message.
fn sender_of(text: &str) -> Option<Cow<'_, str>> {
    #[derive(serde::Deserialize)]
    struct From<'a> {
        #[serde(borrow, default)]
        from_id: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<From<'_>>(text).ok()?.from_id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::number;
    use crate::protocol::id;

    fn message(channel: &str, text: &str) -> redis::Msg {
        let value = redis::Value::Array(vec![
            redis::Value::BulkString(b"message".to_vec()),
            redis::Value::BulkString(channel.as_bytes().to_vec()),
            redis::Value::BulkString(text.as_bytes().to_vec()),
        ]);
        redis::Msg::from_owned_value(value).expect("a pub/sub message")
    }

    #[test]
    fn the_sender_is_read_from_any_json_object() {
        let sender = |t| sender_of(t).map(Cow::into_owned);
        assert_eq!(
            sender(r#"{"a":1,"from_id":"svc","b":[2]}"#).as_deref(),
            Some("svc")
        );
        assert_eq!(sender(r#"{"from_id":"\u0061"}"#).as_deref(), Some("a"));
        assert_eq!(sender(r#"{"no":"sender"}"#), None);
        assert_eq!(sender("not json"), None);
    }

    #[test]
    fn a_numbered_group_message_is_read_whole_once() {
        let names = Names::new(String::new());
        let route = Route::Group(id("g"));
        let epoch = Epoch::parse("e1").expect("epoch");
        let text = number(r#"{"from_id":"ctl","target":"group"}"#, 7, &epoch);
        let msg = message(&names.channel(&route), &text);
        let (got, decoded) = Decoded::read(&names, &msg, true).expect("ours");
        assert_eq!(got, route);
        assert_eq!(&*decoded.sender, "ctl");
        assert_eq!(decoded.delivery.text(), text);
        let place = decoded.delivery.place().expect("numbered");
        assert_eq!((place.kind, place.offset), (RouteKind::Group, 7));
        assert_eq!(decoded.epoch(), Some(epoch));
        // With history off nothing is placed.
        let (_, off) = Decoded::read(&names, &msg, false).expect("ours");
        assert!(off.delivery.place().is_none());
    }

    #[test]
    fn a_direct_message_skips_no_sender_and_a_raw_one_has_no_place() {
        let names = Names::new(String::new());
        let route = Route::Client(id("c"));
        let msg = message(&names.channel(&route), r#"{"from_id":"x","raw":1}"#);
        let (_, decoded) = Decoded::read(&names, &msg, true).expect("ours");
        assert_eq!(&*decoded.sender, "");
        assert!(decoded.delivery.place().is_none());
        // Not one of our channels, or not text: nothing.
        assert!(Decoded::read(&names, &message("other", "{}"), true).is_none());
        let bytes = redis::Value::Array(vec![
            redis::Value::BulkString(b"message".to_vec()),
            redis::Value::BulkString(names.channel(&route).into_bytes()),
            redis::Value::BulkString(vec![0xff, 0xfe]),
        ]);
        let msg = redis::Msg::from_owned_value(bytes).expect("a pub/sub message");
        assert!(Decoded::read(&names, &msg, true).is_none());
    }
}
