//! The V3 wire contract (docs/protocol.md section 2): message types, parsing,
//! validation and normalisation, in one place.
//!
//! A frame is parsed once, at the edge, into a [`Message`] that borrows from
//! the frame's text: `cmd`, `msg` and `payload` are carried as raw JSON and
//! never re-encoded. [`Message::encode`] then serialises the normalised form
//! once into an [`Encoded`] that every recipient shares.
//!
//! Knows nothing of sockets or Redis: the caller says who sent the frame
//! through [`Origin`].

mod strict;
mod vision_id;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

#[cfg(test)]
pub(crate) use vision_id::id;
pub use vision_id::{VisionId, VisionIdError};

/// The only protocol version this hub speaks.
pub const VERSION: &str = "3";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MsgType {
    Msg,
    Cmd,
    Heartbeat,
    Presence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Direct,
    Group,
    Broadcast,
    Echo,
}

impl MsgType {
    pub const ALL: [MsgType; 4] = [Self::Msg, Self::Cmd, Self::Heartbeat, Self::Presence];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Msg => "msg",
            Self::Cmd => "cmd",
            Self::Heartbeat => "heartbeat",
            Self::Presence => "presence",
        }
    }
}

impl Target {
    pub const ALL: [Target; 4] = [Self::Direct, Self::Group, Self::Broadcast, Self::Echo];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Group => "group",
            Self::Broadcast => "broadcast",
            Self::Echo => "echo",
        }
    }
}

/// Why a frame was refused. Each kind maps to one close code (see
/// `close.rs`) or, for `POST /v3/publish`, to HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame breaks the schema of section 2 (close code 4000).
    #[error("{0}")]
    Schema(String),
    /// The frame is well formed but claims an identity or a right the socket
    /// does not have (close code 4003).
    #[error("{0}")]
    Policy(String),
}

fn schema(msg: impl Into<String>) -> FrameError {
    FrameError::Schema(msg.into())
}

fn policy(msg: impl Into<String>) -> FrameError {
    FrameError::Policy(msg.into())
}

/// Who a frame comes from, which decides the rules it is checked against.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A WebSocket client: `from_id` and `group_id` must be its own.
    Socket {
        group: &'a VisionId,
        client: &'a VisionId,
        allow_broadcast: bool,
    },
    /// A backend service through `POST /v3/publish`: `from_id` is required
    /// and names the service; `group` messages name their group.
    Service,
}

/// A message as serialised once for delivery; clones share the bytes.
///
/// One pointer wide on purpose: every socket's outbound queue preallocates
/// a block of slots, and an idle socket should not pay for fat ones.
#[derive(Clone, PartialEq, Eq)]
pub struct Encoded(Arc<str>);

impl Encoded {
    /// Wraps text that arrived from elsewhere (a Redis channel) unchanged.
    pub fn from_text(text: impl Into<Arc<str>>) -> Self {
        Encoded(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Encoded({})", &*self.0)
    }
}

/// A validated, normalised message, borrowing from the frame it came from.
#[derive(Debug)]
pub struct Message<'a> {
    pub msg_type: MsgType,
    pub target: Target,
    pub from_id: Cow<'a, str>,
    pub to_id: Option<Cow<'a, str>>,
    pub group_id: Option<Cow<'a, str>>,
    cmd: Option<&'a RawValue>,
    msg: Option<&'a RawValue>,
    payload: Cow<'a, RawValue>,
    pub sent_at: Cow<'a, str>,
    /// Asks for an acknowledgement (docs/protocol.md section 10); never
    /// part of the delivered message.
    pub ack_id: Option<Cow<'a, str>>,
}

/// The frame as a client writes it: strict, unknown fields rejected.
/// `Option` fields marked `present` may be absent but not `null`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming<'a> {
    #[serde(default, deserialize_with = "present")]
    version: Option<Str<'a>>,
    msg_type: MsgType,
    target: Target,
    #[serde(default, deserialize_with = "present")]
    from_id: Option<Str<'a>>,
    #[serde(default)]
    to_id: Option<Str<'a>>,
    #[serde(default)]
    group_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    cmd: Option<&'a RawValue>,
    #[serde(default, borrow)]
    msg: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present", borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    sent_at: Option<Str<'a>>,
    #[serde(default, deserialize_with = "present")]
    ack_id: Option<Str<'a>>,
}

/// Parses, validates and normalises one frame (docs/protocol.md section 2).
pub fn parse<'a>(text: &'a str, origin: Origin<'a>) -> Result<Message<'a>, FrameError> {
    let raw: Incoming<'a> = serde_json::from_str(text).map_err(|e| schema(describe(&e)))?;
    for value in [raw.cmd, raw.msg, raw.payload].into_iter().flatten() {
        strict::check(value.get()).map_err(|e| schema(describe(&e)))?;
    }
    if let Some(v) = &raw.version {
        if v.0 != VERSION {
            return Err(schema(format!("version must be \"{VERSION}\"")));
        }
    }
    for (name, value) in [("cmd", raw.cmd), ("msg", raw.msg)] {
        if value.is_some_and(|v| !v.get().starts_with('"')) {
            return Err(schema(format!("{name} must be a string or null")));
        }
    }
    let payload = match raw.payload {
        Some(p) if p.get().starts_with('{') => Cow::Borrowed(p),
        Some(_) => return Err(schema("payload must be a JSON object")),
        None => Cow::Owned(empty_object()),
    };
    let sent_at = match raw.sent_at {
        Some(s) => {
            chrono::DateTime::parse_from_rfc3339(&s.0)
                .map_err(|_| schema("sent_at must be an RFC 3339 date-time"))?;
            s.0
        }
        None => Cow::Owned(now_rfc3339()),
    };
    let ack_id = raw.ack_id.map(|s| s.0);
    if let Some(ack_id) = &ack_id {
        vision_id::check(ack_id).map_err(|e| schema(format!("ack_id {e}")))?;
    }
    let to_id = raw.to_id.map(|s| s.0);
    if raw.target == Target::Direct {
        match &to_id {
            None => return Err(schema("to_id is required for direct messages")),
            Some(id) => vision_id::check(id).map_err(|e| schema(format!("to_id {e}")))?,
        }
    }
    let claims = Claims {
        msg_type: raw.msg_type,
        target: raw.target,
        from: raw.from_id.map(|s| s.0),
        group: raw.group_id.map(|s| s.0),
    };
    let (from_id, group_id) = identify(claims, origin)?;
    Ok(Message {
        msg_type: raw.msg_type,
        target: raw.target,
        from_id,
        to_id,
        group_id,
        cmd: raw.cmd,
        msg: raw.msg,
        payload,
        sent_at,
        ack_id,
    })
}

/// What a frame says about who sent it and where it goes.
struct Claims<'a> {
    msg_type: MsgType,
    target: Target,
    from: Option<Cow<'a, str>>,
    group: Option<Cow<'a, str>>,
}

/// Applies the identity rules of the origin: what `from_id` and `group_id`
/// become, and which claims are refused.
fn identify<'a>(
    claims: Claims<'a>,
    origin: Origin<'a>,
) -> Result<(Cow<'a, str>, Option<Cow<'a, str>>), FrameError> {
    let Claims {
        msg_type,
        target,
        from,
        group,
    } = claims;
    match origin {
        Origin::Socket {
            group: own_group,
            client,
            allow_broadcast,
        } => {
            if from.as_deref().is_some_and(|f| f != client.as_str()) {
                return Err(policy("from_id is not this socket's client_id"));
            }
            if group.as_deref().is_some_and(|g| g != own_group.as_str()) {
                return Err(policy("group_id is not this socket's group"));
            }
            if target == Target::Broadcast && !allow_broadcast {
                return Err(policy("broadcast from clients is disabled"));
            }
            let group = match target {
                Target::Group => Some(Cow::Borrowed(own_group.as_str())),
                _ => group,
            };
            Ok((Cow::Borrowed(client.as_str()), group))
        }
        Origin::Service => {
            let from = from.ok_or_else(|| schema("from_id is required"))?;
            vision_id::check(&from).map_err(|e| schema(format!("from_id {e}")))?;
            if let Some(g) = &group {
                vision_id::check(g).map_err(|e| schema(format!("group_id {e}")))?;
            }
            match (msg_type, target) {
                (MsgType::Heartbeat | MsgType::Presence, _) => {
                    Err(schema("only msg and cmd can be published"))
                }
                (_, Target::Echo) => Err(schema("echo cannot be published")),
                (_, Target::Group) if group.is_none() => {
                    Err(schema("group_id is required for group messages"))
                }
                _ => Ok((from, group)),
            }
        }
    }
}

impl Message<'_> {
    /// Serialises the normalised message, once, for every recipient.
    pub fn encode(&self) -> Encoded {
        encode(&Outgoing {
            version: VERSION,
            msg_type: self.msg_type.as_str(),
            target: self.target,
            from_id: &self.from_id,
            to_id: self.to_id.as_deref(),
            group_id: self.group_id.as_deref(),
            cmd: self.cmd,
            msg: self.msg,
            payload: &self.payload,
            sent_at: &self.sent_at,
        })
    }
}

/// The delivered form: every field present, in the order of the contract.
#[derive(Serialize)]
struct Outgoing<'a> {
    version: &'static str,
    msg_type: &'static str,
    target: Target,
    from_id: &'a str,
    to_id: Option<&'a str>,
    group_id: Option<&'a str>,
    cmd: Option<&'a RawValue>,
    msg: Option<&'a RawValue>,
    payload: &'a RawValue,
    sent_at: &'a str,
}

fn encode(out: &Outgoing<'_>) -> Encoded {
    // Serialising plain strings and raw JSON into a String cannot fail.
    let text = serde_json::to_string(out).unwrap_or_default();
    Encoded::from_text(text)
}

/// A message the hub itself writes (replies, presence events, recovery
/// summaries).
fn hub_message(
    msg_type: &'static str,
    target: Target,
    from_id: &str,
    group_id: Option<&str>,
    payload: serde_json::Value,
) -> Encoded {
    let payload = serde_json::value::to_raw_value(&payload).unwrap_or_else(|_| empty_object());
    let now = now_rfc3339();
    encode(&Outgoing {
        version: VERSION,
        msg_type,
        target,
        from_id,
        to_id: None,
        group_id,
        cmd: None,
        msg: None,
        payload: &payload,
        sent_at: &now,
    })
}

/// The answer to a client's `heartbeat`.
pub fn heartbeat_reply(client: &VisionId) -> Encoded {
    let payload = serde_json::json!({ "server_time": now_rfc3339() });
    hub_message(
        MsgType::Heartbeat.as_str(),
        Target::Echo,
        client.as_str(),
        None,
        payload,
    )
}

/// The answer to a client's `presence` query: the sorted members of its group.
pub fn presence_reply(client: &VisionId, group: &VisionId, members: &[String]) -> Encoded {
    let payload = serde_json::json!({ "members": members });
    hub_message(
        MsgType::Presence.as_str(),
        Target::Echo,
        client.as_str(),
        Some(group.as_str()),
        payload,
    )
}

/// The hub's acknowledgement of a frame (docs/protocol.md section 10),
/// written on the sending socket; `payload`, a JSON object, says which
/// frame and its fate. Written straight into one string (every part is
/// a Vision ID or the caller's JSON, nothing to escape): one is sent for
/// every acknowledged frame.
pub fn ack(client: &VisionId, group: &VisionId, payload: &str) -> String {
    format!(
        r#"{{"version":"{VERSION}","msg_type":"ack","target":"echo","from_id":"{client}","to_id":null,"group_id":"{group}","cmd":null,"msg":null,"payload":{payload},"sent_at":"{}"}}"#,
        now_rfc3339()
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceEvent {
    Join,
    Leave,
}

/// The group message announcing that a client joined or left.
pub fn presence_event(event: PresenceEvent, group: &VisionId, client: &VisionId) -> Encoded {
    let event = match event {
        PresenceEvent::Join => "join",
        PresenceEvent::Leave => "leave",
    };
    let payload = serde_json::json!({ "event": event, "client_id": client.as_str() });
    hub_message(
        MsgType::Presence.as_str(),
        Target::Group,
        client.as_str(),
        Some(group.as_str()),
        payload,
    )
}

/// The summary that ends a socket's recovery (docs/protocol.md section 9):
/// `routes` maps each route kind asked for to its outcome.
pub fn recovery_summary(
    client: &VisionId,
    group: &VisionId,
    routes: serde_json::Map<String, serde_json::Value>,
) -> Encoded {
    hub_message(
        "recovery",
        Target::Echo,
        client.as_str(),
        Some(group.as_str()),
        serde_json::Value::Object(routes),
    )
}

/// When an encoded message was sent, by its `sent_at`. The hub writes that
/// field last, so it is found from the end without parsing the payload.
pub fn sent_at_of(text: &str) -> Option<DateTime<FixedOffset>> {
    const FIELD: &str = "\"sent_at\":\"";
    let start = text.rfind(FIELD)? + FIELD.len();
    let len = text[start..].find('"')?;
    DateTime::parse_from_rfc3339(&text[start..start + len]).ok()
}

/// The current UTC time as the hub writes it in `sent_at` and `server_time`.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| unreachable!("{{}} is JSON"))
}

/// A short description of a serde error, without the position noise when
/// the frame is one line anyway.
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Deserialises an `Option` field that may be absent but not `null`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A JSON string that borrows from the frame unless it had escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visit)
    }
}

#[cfg(test)]
mod tests;
