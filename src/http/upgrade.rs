//! The WebSocket upgrade (docs/protocol.md sections 1 and 8): the checks, in
//! order, then the `101` once the socket's routes are live.
//!
//! Checks, cheapest and least revealing first: the accept rate (503 with
//! `Retry-After`, `admission.rs`), capacity (503), `Origin` (403),
//! credentials (401), Vision IDs (400), whether the credential covers this
//! client and group (403), the client's socket limit (429), the upgrade
//! headers (400).
//!
//! The upgrade is done here rather than with warp's `ws()` filter: warp's
//! filter leaves tungstenite's 128 KiB read buffer on every socket, while
//! hyper's upgrade plus our own `WebSocketConfig` costs a few KiB.

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::server;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use warp::reply::{Reply, Response};

use super::refusal::{Refusal, FULL};
use super::Api;
use crate::auth::{self, Access, Credentials, Surface};
use crate::history::Resume;
use crate::hub::Membership;
use crate::outbox::Kick;
use crate::protocol::VisionId;
use crate::revocation::TokenId;
use crate::session::{self, Rights};
use crate::socket::Socket;

/// The two ids of `/v3/ws/group/{group_id}/client/{client_id}`, as they
/// stand in the path (possibly empty: that is a 400, not a 404).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketPath {
    pub group: String,
    pub client: String,
}

impl SocketPath {
    pub fn parse(path: &str) -> Option<SocketPath> {
        let rest = path.strip_prefix("/v3/ws/group/")?;
        let (group, client) = rest.split_once("/client/")?;
        if group.contains('/') || client.contains('/') {
            return None;
        }
        Some(SocketPath {
            group: group.to_owned(),
            client: client.to_owned(),
        })
    }
}

impl Api {
    pub(super) async fn accept(
        &self,
        path: SocketPath,
        headers: HeaderMap,
        query: HashMap<String, String>,
        on_upgrade: Option<OnUpgrade>,
    ) -> Result<Response, Refusal> {
        // First: in a reconnect storm, an upgrade over the rate must cost
        // nothing beyond its refusal (no token check, no hub table, no Redis).
        if let Some(rate) = &self.connect_rate {
            rate.admit().map_err(Refusal::over_rate)?;
        }
        let slot = self
            .hub
            .reserve()
            .ok_or_else(|| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, FULL))?;
        self.check_origin(&headers)?;
        let access = self
            .auth
            .check(&Credentials::of(&headers, &query, Surface::Upgrade))?;
        let bad = |what, e| Refusal::bad_request(format!("{what} {e}"));
        let group = VisionId::parse(&path.group).map_err(|e| bad("group_id", e))?;
        let client = VisionId::parse(&path.client).map_err(|e| bad("client_id", e))?;
        let resume = Resume::from_query(&query).map_err(|e| Refusal::bad_request(e.to_string()))?;
        access.admits(group.as_str(), client.as_str())?;
        let key = websocket_key(&headers)?;
        let on_upgrade =
            on_upgrade.ok_or_else(|| Refusal::bad_request("connection cannot be upgraded"))?;

        let connected = self.hub.connect(group, client, slot, &resume).await?;
        let (mut member, rx) = (connected.member, connected.rx);
        if let Access::Token(grant) = &access {
            self.hold_token(&mut member, grant.token_id());
        }
        let resumed = connected.resumed;
        let rights = Rights::of(&access);
        let config = session::websocket_config(self.hub.limits());
        let hub = Arc::clone(&self.hub);
        let upgrade = async move {
            let mut member = member;
            match on_upgrade.await {
                Ok(upgraded) => {
                    tracing::debug!(group = %member.group, client = %member.client, "socket opened");
                    let ws = websocket(upgraded, config).await;
                    // The session gets a task of its own, built from owned
                    // parts: a future that also held this block's moved-from
                    // locals would cost every idle socket hundreds of bytes.
                    hub.spawn(session::Session::new(ws, member, rx, rights, resumed).run());
                }
                Err(e) => {
                    tracing::debug!("upgrade failed: {e}");
                    member.set_close_code(1006);
                }
            }
        };
        self.hub.spawn(upgrade);
        Ok(switching_protocols(&key, offers_v3(&headers)))
    }

    /// Lets a revocation find the socket. A revocation that came while
    /// the socket joined (after its token was checked) closes it now:
    /// held first and checked after, while a revocation is held first
    /// and looks for sockets after, so one of the two sees the other.
    fn hold_token(&self, member: &mut Membership, id: TokenId) {
        member.hold_token(id.clone());
        if self.auth.revocations().covers(&id, auth::unix_now()) {
            member.outbox().kick(Kick::Revoked);
        }
    }

    /// Browsers always send `Origin`; a request without one is not a
    /// browser's, so cross-site hijacking cannot apply to it.
    fn check_origin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if self.allowed_origins.is_empty() {
            return Ok(());
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let allowed = origin.to_str().is_ok_and(|o| {
            self.allowed_origins
                .iter()
                .any(|a| a.eq_ignore_ascii_case(o))
        });
        if allowed {
            Ok(())
        } else {
            Err(Refusal::new(StatusCode::FORBIDDEN, "origin not allowed"))
        }
    }
}

fn offers_v3(headers: &HeaderMap) -> bool {
    auth::subprotocols(headers).any(|p| p == auth::SUBPROTOCOL)
}

/// The upgraded connection as a WebSocket. Under the hub's own server it is
/// a plain TCP or TLS stream: unwrapped, it skips a layer of dynamic
/// dispatch on every read and write, and keeps `TCP_NODELAY` (messages are
/// small and already batched; Nagle's algorithm would only add delay).
async fn websocket(upgraded: Upgraded, config: WebSocketConfig) -> WebSocketStream<Socket> {
    let (socket, read) = match unwrap(upgraded) {
        Ok(parts) => parts,
        Err(upgraded) => {
            tracing::debug!("upgraded connection is neither TCP nor TLS over TCP");
            (Socket::Other(TokioIo::new(upgraded)), Vec::new())
        }
    };
    WebSocketStream::from_partially_read(socket, read, Role::Server, Some(config)).await
}

/// The stream under hyper's upgrade, with the bytes hyper read past the
/// request.
fn unwrap(upgraded: Upgraded) -> Result<(Socket, Vec<u8>), Upgraded> {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => return Ok((Socket::Tcp(parts.io.into_inner()), parts.read_buf.to_vec())),
        Err(upgraded) => upgraded,
    };
    let parts = upgraded.downcast::<TokioIo<server::TlsStream<TcpStream>>>()?;
    let tls = tokio_rustls::TlsStream::Server(parts.io.into_inner());
    Ok((Socket::Tls(Box::new(tls)), parts.read_buf.to_vec()))
}

/// The `Sec-WebSocket-Key` of a well-formed upgrade request.
fn websocket_key(headers: &HeaderMap) -> Result<HeaderValue, Refusal> {
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(Refusal::bad_request("expected a WebSocket upgrade request"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(Refusal::bad_request("Sec-WebSocket-Version must be 13"));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or_else(|| Refusal::bad_request("missing Sec-WebSocket-Key"))
}

/// The `101 Switching Protocols` answer to an upgrade request; with
/// `Sec-WebSocket-Protocol: aether.v3` when the client offered it.
pub fn switching_protocols(key: &HeaderValue, v3: bool) -> Response {
    let mut response = warp::reply().into_response();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if v3 {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(auth::SUBPROTOCOL),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_keep_empty_segments_for_a_400() {
        let p = |g: &str, c: &str| {
            Some(SocketPath {
                group: g.into(),
                client: c.into(),
            })
        };
        assert_eq!(SocketPath::parse("/v3/ws/group/g/client/c"), p("g", "c"));
        assert_eq!(SocketPath::parse("/v3/ws/group//client/c"), p("", "c"));
        assert_eq!(SocketPath::parse("/v3/ws/group/g/client/"), p("g", ""));
        assert_eq!(SocketPath::parse("/v3/ws/group/g"), None);
        assert_eq!(SocketPath::parse("/v3/ws/group/g/client/c/x"), None);
        assert_eq!(SocketPath::parse("/v3/ws/group/a/b/client/c"), None);
        assert_eq!(SocketPath::parse("/v2/ws/group/g/client/c"), None);
    }
}
