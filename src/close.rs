//! Why a session ended, and the close code each reason becomes
//! (docs/protocol.md section 6). The only place close codes are decided.

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::protocol::FrameError;

/// The longest close reason the WebSocket protocol admits.
pub const MAX_REASON_BYTES: usize = 123;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Disconnect {
    /// The client sent a close frame (its code, if any).
    #[error("closed by the client")]
    ByClient(Option<u16>),
    /// The connection broke without a close handshake.
    #[error("connection lost")]
    Lost,
    #[error("the hub is shutting down")]
    Shutdown,
    #[error("frame larger than {0} bytes")]
    TooBig(usize),
    #[error("{0}")]
    Frame(FrameError),
    #[error("outbound queue overflowed")]
    SlowConsumer,
    /// A write to the socket (a batch, a ping) did not finish within the
    /// idle timeout: the client stopped reading while its queue still had
    /// room (a slow consumer all the same).
    #[error("outbound writes stalled")]
    Stalled,
    #[error("rate limit exceeded")]
    RateLimited,
    /// Pings over the socket's ping limit (`AETHER_PING_LIMIT`).
    #[error("too many pings")]
    TooManyPings,
    #[error("idle timeout")]
    Idle,
    #[error("token expired")]
    TokenExpired,
    /// The socket's token was revoked (docs/protocol.md section 11): a
    /// fresh token gets it back, as after an expiry.
    #[error("token revoked")]
    TokenRevoked,
    /// An operator closed the socket (`POST /v3/disconnect`); the reason
    /// is theirs, or a default.
    #[error("{reason}")]
    ByService { reconnect: bool, reason: Box<str> },
}

/// The close reason of a disconnect that gave none.
pub fn service_reason(reconnect: bool) -> &'static str {
    match reconnect {
        false => "disconnected by the service",
        true => "asked to reconnect by the service",
    }
}

impl Disconnect {
    /// The code this ending is counted under; 1006 when no close frame was
    /// exchanged.
    pub fn code(&self) -> u16 {
        match self {
            Disconnect::ByClient(code) => code.unwrap_or(1005),
            Disconnect::Lost => 1006,
            Disconnect::Shutdown => 1001,
            Disconnect::TooBig(_) => 1009,
            Disconnect::Frame(FrameError::Schema(_)) => 4000,
            Disconnect::Frame(FrameError::Policy(_)) => 4003,
            Disconnect::SlowConsumer | Disconnect::Stalled => 4008,
            Disconnect::RateLimited | Disconnect::TooManyPings => 4029,
            Disconnect::Idle => 4408,
            Disconnect::TokenExpired | Disconnect::TokenRevoked => 4001,
            Disconnect::ByService {
                reconnect: false, ..
            } => 4010,
            Disconnect::ByService {
                reconnect: true, ..
            } => 4011,
        }
    }

    /// The close frame the hub sends, or `None` when it sends none (the
    /// client closed first, so the WebSocket library echoes its frame; or
    /// the connection is gone).
    pub fn close_frame(&self) -> Option<CloseFrame> {
        if matches!(self, Disconnect::ByClient(_) | Disconnect::Lost) {
            return None;
        }
        Some(CloseFrame {
            code: CloseCode::from(self.code()),
            reason: truncate(&self.to_string(), MAX_REASON_BYTES).into(),
        })
    }
}

impl From<FrameError> for Disconnect {
    fn from(e: FrameError) -> Self {
        Disconnect::Frame(e)
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_code() {
        let cases = [
            (Disconnect::Shutdown, 1001),
            (Disconnect::TooBig(10), 1009),
            (Disconnect::Frame(FrameError::Schema("x".into())), 4000),
            (Disconnect::Frame(FrameError::Policy("x".into())), 4003),
            (Disconnect::SlowConsumer, 4008),
            (Disconnect::Stalled, 4008),
            (Disconnect::RateLimited, 4029),
            (Disconnect::TooManyPings, 4029),
            (Disconnect::Idle, 4408),
            (Disconnect::TokenExpired, 4001),
            (Disconnect::TokenRevoked, 4001),
            (
                Disconnect::ByService {
                    reconnect: false,
                    reason: "gone".into(),
                },
                4010,
            ),
            (
                Disconnect::ByService {
                    reconnect: true,
                    reason: "moved".into(),
                },
                4011,
            ),
        ];
        for (reason, code) in cases {
            let frame = reason.close_frame().unwrap();
            assert_eq!(u16::from(frame.code), code, "{reason:?}");
        }
        assert!(Disconnect::ByClient(Some(1000)).close_frame().is_none());
        assert_eq!(Disconnect::Lost.code(), 1006);
    }

    #[test]
    fn reasons_fit_in_a_close_frame() {
        let long = Disconnect::Frame(FrameError::Schema("é".repeat(200)));
        let frame = long.close_frame().unwrap();
        assert!(frame.reason.len() <= MAX_REASON_BYTES);
        assert!(frame.reason.as_str().starts_with('é'));
    }
}
