//! Why a request was refused, as an HTTP status and a short reason: the one
//! place where errors become statuses (close codes are `close.rs`).
//!
//! Upgrades get the reason as plain text (docs/protocol.md section 1), the HTTP
//! API as a JSON `{"error": …}` body. Reasons never quote a credential.

use http::StatusCode;
use warp::reply::{Reply, Response};

use crate::auth::AuthError;
use crate::hub::ConnectError;
use crate::metrics::{self, Refused};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> Self {
        Refusal::new(StatusCode::BAD_REQUEST, reason)
    }

    /// Plain text, for WebSocket clients; counted by reason.
    pub fn upgrade(self) -> Response {
        metrics::upgrade_refused(self.counted_as());
        self.log();
        warp::reply::with_status(self.reason, self.status).into_response()
    }

    /// A JSON error body, for the HTTP API. After a 408 the connection
    /// is closed: what is left of the request is not worth waiting for.
    pub fn json(self) -> Response {
        self.log();
        let body = serde_json::json!({ "error": self.reason });
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if self.status == StatusCode::REQUEST_TIMEOUT {
            let close = http::HeaderValue::from_static("close");
            response
                .headers_mut()
                .insert(http::header::CONNECTION, close);
        }
        response
    }

    fn counted_as(&self) -> Refused {
        match self.status {
            StatusCode::UNAUTHORIZED => Refused::Unauthorized,
            StatusCode::FORBIDDEN => Refused::Forbidden,
            StatusCode::TOO_MANY_REQUESTS => Refused::ClientLimit,
            StatusCode::SERVICE_UNAVAILABLE if self.reason == FULL => Refused::Capacity,
            s if s.is_server_error() => Refused::Unavailable,
            _ => Refused::BadRequest,
        }
    }

    /// A client's mistake is theirs to see (debug); the hub failing to
    /// serve is an operator's concern (warn). A full instance is not
    /// failing, and would flood the log: its refusals are counted instead.
    fn log(&self) {
        let status = self.status.as_u16();
        if self.status.is_server_error() && self.reason != FULL {
            tracing::warn!(status, "request refused: {}", self.reason);
        } else {
            tracing::debug!(status, "request refused: {}", self.reason);
        }
    }
}

/// The reason an instance at its connection limit gives.
pub const FULL: &str = "this instance is at its connection limit";

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        let status = if e.is_forbidden() {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        Refusal::new(status, e.to_string())
    }
}

impl From<ConnectError> for Refusal {
    fn from(e: ConnectError) -> Self {
        let status = match e {
            ConnectError::TooManySockets(_) => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refusal::new(status, e.to_string())
    }
}
