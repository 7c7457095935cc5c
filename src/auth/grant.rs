//! What a verified identity token allows (docs/protocol.md section 8): one
//! client, some groups, some capabilities, until a deadline.
//!
//! A [`Grant`] is decided once, at the upgrade. What the session keeps of
//! it per frame is its [`Caps`], a bit set: the check on every frame is two
//! bit tests, with the reason worked out only for a frame that is refused.

use crate::protocol::{FrameError, MsgType, Target, VisionId};
use crate::revocation::TokenId;

/// The groups a token admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Groups {
    /// `"grp": "*"`.
    Any,
    /// `"grp": "g"` or `"grp": ["g", …]`.
    Listed(Vec<VisionId>),
}

impl Groups {
    pub fn admits(&self, group: &str) -> bool {
        match self {
            Groups::Any => true,
            Groups::Listed(groups) => groups.iter().any(|g| g.as_str() == group),
        }
    }
}

/// One entry of a token's `cap` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Msg,
    Cmd,
    Direct,
    Group,
    Broadcast,
}

impl Capability {
    fn as_str(self) -> &'static str {
        match self {
            Self::Msg => "msg",
            Self::Cmd => "cmd",
            Self::Direct => "direct",
            Self::Group => "group",
            Self::Broadcast => "broadcast",
        }
    }

    /// The two capabilities a frame needs; `None` for frames that are
    /// always allowed: heartbeats and presence queries (never routed) and
    /// echoes (they only go back to the sender).
    fn needed(msg_type: MsgType, target: Target) -> Option<[Capability; 2]> {
        let kind = match msg_type {
            MsgType::Msg => Self::Msg,
            MsgType::Cmd => Self::Cmd,
            MsgType::Heartbeat | MsgType::Presence => return None,
        };
        let route = match target {
            Target::Direct => Self::Direct,
            Target::Group => Self::Group,
            Target::Broadcast => Self::Broadcast,
            Target::Echo => return None,
        };
        Some([kind, route])
    }
}

/// A set of capabilities (absent `cap`: all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps(u8);

impl Caps {
    pub const ALL: Caps = Caps(0b1_1111);

    pub fn of(list: &[Capability]) -> Caps {
        Caps(list.iter().fold(0, |bits, c| bits | 1 << *c as u8))
    }

    fn has(self, cap: Capability) -> bool {
        self.0 & (1 << cap as u8) != 0
    }

    /// The capability a frame needs and this set lacks, if any.
    fn missing(self, msg_type: MsgType, target: Target) -> Option<Capability> {
        Capability::needed(msg_type, target)?
            .into_iter()
            .find(|c| !self.has(*c))
    }

    /// Checks a message against the set: a policy error naming the
    /// missing capability.
    pub fn check(self, msg_type: MsgType, target: Target) -> Result<(), FrameError> {
        match self.missing(msg_type, target) {
            None => Ok(()),
            Some(cap) => Err(denied(cap)),
        }
    }
}

fn denied(cap: Capability) -> FrameError {
    FrameError::Policy(format!("token does not allow {}", cap.as_str()))
}

/// A verified token, as the hub keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub client: VisionId,
    pub groups: Groups,
    pub caps: Caps,
    /// Unix seconds after which the token no longer counts (its `exp`
    /// plus the leeway).
    pub expires_at: u64,
    /// Its `jti` claim, which a revocation may name.
    pub jti: Option<Box<str>>,
    /// Its `iat` claim, which a revocation of its client compares.
    pub issued_at: Option<u64>,
}

impl Grant {
    /// What a revocation is checked against.
    pub fn token_id(&self) -> TokenId {
        TokenId {
            client: self.client.clone(),
            jti: self.jti.clone(),
            issued_at: self.issued_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MsgType::*;
    use Target::*;

    #[test]
    fn a_frame_needs_both_its_type_and_its_target() {
        let worker = Caps::of(&[Capability::Msg, Capability::Group]);
        assert!(worker.check(Msg, Group).is_ok());
        assert!(worker.check(Msg, Echo).is_ok());
        assert!(worker.check(Heartbeat, Broadcast).is_ok());
        assert!(worker.check(Presence, Direct).is_ok());
        let refused = |m, t| match worker.check(m, t) {
            Err(FrameError::Policy(reason)) => reason,
            other => panic!("{m:?}/{t:?}: {other:?}"),
        };
        assert_eq!(refused(Cmd, Group), "token does not allow cmd");
        assert_eq!(refused(Msg, Direct), "token does not allow direct");
        assert_eq!(refused(Cmd, Broadcast), "token does not allow cmd");
        assert!(worker.check(Cmd, Echo).is_ok());
    }

    #[test]
    fn all_allows_every_pair_and_none_only_the_free_ones() {
        let none = Caps::of(&[]);
        for m in MsgType::ALL {
            for t in Target::ALL {
                assert!(Caps::ALL.check(m, t).is_ok(), "{m:?} {t:?}");
                let free = matches!(m, Heartbeat | Presence) || t == Echo;
                assert_eq!(none.check(m, t).is_ok(), free, "{m:?} {t:?}");
            }
        }
    }

    #[test]
    fn groups_admit_what_they_list() {
        let g = |s: &str| VisionId::parse(s).unwrap();
        assert!(Groups::Any.admits("anything"));
        let listed = Groups::Listed(vec![g("a"), g("b")]);
        assert!(listed.admits("b"));
        assert!(!listed.admits("c"));
        assert!(!Groups::Listed(vec![]).admits("a"));
    }
}
