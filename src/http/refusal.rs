//! Why a request was refused, as an HTTP status and a short reason: the one
//! place where errors become statuses (close codes are `close.rs`).
//!
//! Upgrades get the reason as plain text (docs/protocol.md section 1), the HTTP
//! API as a JSON `{"error": …}` body. Reasons never quote a credential.
//! A refusal that knows when to come back (the accept-rate limit,
//! `admission.rs`) says so in `Retry-After`.

use http::StatusCode;
use warp::reply::{Reply, Response};

use crate::auth::AuthError;
use crate::hub::ConnectError;
use crate::metrics::{self, Refused};

use super::admission;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
    /// Whole seconds, sent as `Retry-After`.
    pub retry_after: Option<u32>,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// An upgrade over the instance's accept rate: 503, like a full
    /// instance (a load balancer tries another), with when to come back.
    pub fn over_rate(refused: admission::Refused) -> Self {
        Refusal {
            retry_after: Some(refused.retry_after),
            ..Refusal::new(StatusCode::SERVICE_UNAVAILABLE, OVER_RATE)
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> Self {
        Refusal::new(StatusCode::BAD_REQUEST, reason)
    }

    /// Plain text, for WebSocket clients; counted by reason.
    pub fn upgrade(self) -> Response {
        metrics::upgrade_refused(self.counted_as());
        self.log();
        let retry_after = self.retry_after;
        let response = warp::reply::with_status(self.reason, self.status).into_response();
        with_retry_after(response, retry_after)
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
        with_retry_after(response, self.retry_after)
    }

    fn counted_as(&self) -> Refused {
        match self.status {
            StatusCode::UNAUTHORIZED => Refused::Unauthorized,
            StatusCode::FORBIDDEN => Refused::Forbidden,
            StatusCode::TOO_MANY_REQUESTS => Refused::ClientLimit,
            StatusCode::SERVICE_UNAVAILABLE if self.reason == FULL => Refused::Capacity,
            StatusCode::SERVICE_UNAVAILABLE if self.reason == OVER_RATE => Refused::Rate,
            s if s.is_server_error() => Refused::Unavailable,
            _ => Refused::BadRequest,
        }
    }

    /// A client's mistake is theirs to see (debug); the hub failing to
    /// serve is an operator's concern (warn). A full instance, or one
    /// pacing a reconnect storm, is not failing, and would flood the log:
    /// its refusals are counted instead.
    fn log(&self) {
        let status = self.status.as_u16();
        let by_design = self.reason == FULL || self.reason == OVER_RATE;
        if self.status.is_server_error() && !by_design {
            tracing::warn!(status, "request refused: {}", self.reason);
        } else {
            tracing::debug!(status, "request refused: {}", self.reason);
        }
    }
}

fn with_retry_after(mut response: Response, secs: Option<u32>) -> Response {
    if let Some(secs) = secs {
        let value = http::HeaderValue::from(secs);
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, value);
    }
    response
}

/// The reason an instance at its connection limit gives.
pub const FULL: &str = "this instance is at its connection limit";

/// The reason an upgrade over the accept rate gets.
pub const OVER_RATE: &str = "this instance is at its connect-rate limit: retry later";

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        let status = match e {
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
            AuthError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
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
