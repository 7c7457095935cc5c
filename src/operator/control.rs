//! What travels on the control route (`{prefix}ws:control`): one JSON
//! object per operator's action, read by every instance's listener.
//! Internal to the hubs, but versioned by its `op` names: an instance
//! ignores an `op` it does not know, so a newer hub's actions cannot
//! break an older one's listener during a rolling upgrade.

use serde::{Deserialize, Serialize};

use crate::protocol::VisionId;
use crate::revocation::Revocation;

/// Close every socket of a client (in one group, when given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    pub client_id: VisionId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<VisionId>,
    #[serde(default)]
    pub reconnect: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    Disconnect(Disconnect),
    RevokeToken {
        jti: String,
        until: u64,
    },
    RevokeClient {
        sub: VisionId,
        issued_before: u64,
        until: u64,
    },
}

impl Control {
    pub fn revoke(revocation: &Revocation) -> Control {
        match revocation.clone() {
            Revocation::Token { jti, until } => Control::RevokeToken { jti, until },
            Revocation::Client {
                sub,
                issued_before,
                until,
            } => Control::RevokeClient {
                sub,
                issued_before,
                until,
            },
        }
    }

    /// The message's text; `None` only if serde could not write it.
    pub fn encode(&self) -> Option<String> {
        serde_json::to_string(self).ok()
    }

    /// A control message; `None` for anything else (an `op` of a newer
    /// hub, a stray publish).
    pub fn decode(text: &str) -> Option<Control> {
        serde_json::from_str(text).ok()
    }
}

/// What a revoking control message revokes.
impl From<Control> for Option<Revocation> {
    fn from(control: Control) -> Self {
        match control {
            Control::Disconnect(_) => None,
            Control::RevokeToken { jti, until } => Some(Revocation::Token { jti, until }),
            Control::RevokeClient {
                sub,
                issued_before,
                until,
            } => Some(Revocation::Client {
                sub,
                issued_before,
                until,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::id;

    #[test]
    fn every_action_round_trips_and_strangers_are_ignored() {
        let actions = [
            Control::Disconnect(Disconnect {
                client_id: id("c"),
                group_id: Some(id("g")),
                reconnect: true,
                reason: Some("moved".into()),
            }),
            Control::revoke(&Revocation::Token {
                jti: "t".into(),
                until: 5,
            }),
            Control::revoke(&Revocation::Client {
                sub: id("c"),
                issued_before: 4,
                until: 5,
            }),
        ];
        for action in actions {
            let text = action.encode().unwrap();
            assert_eq!(Control::decode(&text), Some(action));
        }
        assert_eq!(Control::decode(r#"{"op":"reboot"}"#), None);
        assert_eq!(
            Control::decode(r#"{"op":"disconnect","client_id":"a b"}"#),
            None
        );
    }
}
