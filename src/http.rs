//! The HTTP surface (PROTOCOL.md sections 1 and 5) as warp routes: the
//! WebSocket upgrade, health, readiness, metrics, presence and publish.
//!
//! The upgrade is done here rather than with warp's `ws()` filter: warp's
//! filter leaves tungstenite's 128 KiB read buffer on every socket, while
//! hyper's upgrade plus our own `WebSocketConfig` costs a few KiB. The
//! upgrade response goes out only after the socket's routes are live.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use warp::reply::{Reply, Response};
use warp::Filter;

use crate::config::Config;
use crate::hub::Hub;
use crate::protocol::{self, Origin, VisionId};
use crate::session;
use crate::socket::Socket;

/// The header a client may carry its API key in.
pub const API_KEY_HEADER: &str = "x-aether-api-key";
/// The query parameter browsers carry their API key in.
pub const API_KEY_PARAM: &str = "api_key";

/// What the routes share.
pub struct Api {
    hub: Arc<Hub>,
    api_keys: Vec<String>,
    allowed_origins: Vec<String>,
    prometheus: PrometheusHandle,
}

/// Why a request was refused before it did anything.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    status: StatusCode,
    reason: String,
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
        }
    }

    /// Plain text, for WebSocket clients (PROTOCOL.md section 1).
    fn text(self) -> Response {
        self.log();
        warp::reply::with_status(self.reason, self.status).into_response()
    }

    /// A JSON error body, for the HTTP API.
    fn json(self) -> Response {
        self.log();
        let body = serde_json::json!({ "error": self.reason });
        warp::reply::with_status(warp::reply::json(&body), self.status).into_response()
    }

    /// A client's mistake is theirs to see (debug); the hub failing to
    /// serve is an operator's concern (warn). Reasons never quote a key.
    fn log(&self) {
        let status = self.status.as_u16();
        if self.status.is_server_error() {
            tracing::warn!(status, "request refused: {}", self.reason);
        } else {
            tracing::debug!(status, "request refused: {}", self.reason);
        }
    }
}

type Query = HashMap<String, String>;

impl Api {
    pub fn new(hub: Arc<Hub>, config: &Config, prometheus: PrometheusHandle) -> Arc<Api> {
        Arc::new(Api {
            hub,
            api_keys: config.api_keys.clone(),
            allowed_origins: config.allowed_origins.clone(),
            prometheus,
        })
    }

    /// Every route of the hub.
    pub fn routes(
        self: &Arc<Self>,
    ) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static
    {
        let api = warp::any().map({
            let api = Arc::clone(self);
            move || Arc::clone(&api)
        });
        let query = warp::query::<Query>()
            .or(warp::any().map(Query::new))
            .unify();

        let ws = warp::path!("v3" / "ws" / "group" / String / "client" / String)
            .and(warp::get())
            .and(warp::header::headers_cloned())
            .and(query)
            .and(warp::ext::optional::<OnUpgrade>())
            .and(api.clone())
            .then(
                |group, client, headers, query, on_upgrade, api: Arc<Api>| async move {
                    api.accept(group, client, headers, query, on_upgrade)
                        .await
                        .unwrap_or_else(Refusal::text)
                },
            );
        let healthz = warp::path!("healthz")
            .and(warp::get())
            .map(|| warp::reply::with_status("ok", StatusCode::OK).into_response());
        let readyz = warp::path!("readyz")
            .and(warp::get())
            .and(api.clone())
            .map(|api: Arc<Api>| api.readyz());
        let metrics = warp::path!("metrics")
            .and(warp::get())
            .and(api.clone())
            .map(|api: Arc<Api>| api.metrics());
        let presence = warp::path!("v3" / "groups" / String / "presence")
            .and(warp::get())
            .and(warp::header::headers_cloned())
            .and(query)
            .and(api.clone())
            .then(|group, headers, query, api: Arc<Api>| async move {
                api.presence(group, headers, query).await
            });
        let max = u64::from(self.hub.limits().max_message_bytes as u32);
        let publish = warp::path!("v3" / "publish")
            .and(warp::post())
            .and(warp::header::headers_cloned())
            .and(query)
            .and(warp::body::content_length_limit(max))
            .and(warp::body::bytes())
            .and(api)
            .map(|headers, query, body, api: Arc<Api>| api.publish(headers, query, body));

        ws.or(healthz)
            .unify()
            .or(readyz)
            .unify()
            .or(metrics)
            .unify()
            .or(presence)
            .unify()
            .or(publish)
            .unify()
    }

    /// Checks the API key, when keys are configured, in constant time.
    fn authorize(&self, headers: &HeaderMap, query: &Query) -> Result<(), Refusal> {
        if self.api_keys.is_empty() {
            return Ok(());
        }
        let given = headers
            .get(API_KEY_HEADER)
            .map(|v| v.as_bytes())
            .or_else(|| query.get(API_KEY_PARAM).map(|k| k.as_bytes()));
        let Some(given) = given else {
            return Err(Refusal::new(StatusCode::UNAUTHORIZED, "missing API key"));
        };
        // Compare with every key, without stopping at a match.
        let matched = self
            .api_keys
            .iter()
            .fold(subtle::Choice::from(0), |acc, key| {
                acc | key.as_bytes().ct_eq(given)
            });
        if bool::from(matched) {
            Ok(())
        } else {
            Err(Refusal::new(StatusCode::UNAUTHORIZED, "invalid API key"))
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

    async fn accept(
        &self,
        group: String,
        client: String,
        headers: HeaderMap,
        query: Query,
        on_upgrade: Option<OnUpgrade>,
    ) -> Result<Response, Refusal> {
        self.check_origin(&headers)?;
        self.authorize(&headers, &query)?;
        let bad = |what, e| Refusal::new(StatusCode::BAD_REQUEST, format!("{what} {e}"));
        let group = VisionId::parse(&group).map_err(|e| bad("group_id", e))?;
        let client = VisionId::parse(&client).map_err(|e| bad("client_id", e))?;
        let key = websocket_key(&headers)?;
        let on_upgrade = on_upgrade.ok_or_else(|| {
            Refusal::new(StatusCode::BAD_REQUEST, "connection cannot be upgraded")
        })?;

        let (member, rx) = self
            .hub
            .connect(group, client)
            .await
            .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
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
                    hub.spawn(session::Session::new(ws, member, rx).run());
                }
                Err(e) => {
                    tracing::debug!("upgrade failed: {e}");
                    member.set_close_code(1006);
                }
            }
        };
        self.hub.spawn(upgrade);
        Ok(switching_protocols(&key))
    }

    fn readyz(&self) -> Response {
        if self.hub.is_ready() {
            warp::reply::with_status("ready", StatusCode::OK).into_response()
        } else {
            warp::reply::with_status("not ready", StatusCode::SERVICE_UNAVAILABLE).into_response()
        }
    }

    fn metrics(&self) -> Response {
        let body = self.prometheus.render();
        warp::reply::with_header(body, header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .into_response()
    }

    async fn presence(&self, group: String, headers: HeaderMap, query: Query) -> Response {
        if let Err(refusal) = self.authorize(&headers, &query) {
            return refusal.json();
        }
        let group = match VisionId::parse(&group) {
            Ok(g) => g,
            Err(e) => return Refusal::new(StatusCode::BAD_REQUEST, format!("group_id {e}")).json(),
        };
        match self.hub.members(&group).await {
            Ok(members) => {
                warp::reply::json(&serde_json::json!({ "group_id": group, "members": members }))
                    .into_response()
            }
            Err(e) => Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).json(),
        }
    }

    fn publish(&self, headers: HeaderMap, query: Query, body: bytes::Bytes) -> Response {
        match self.try_publish(&headers, &query, &body) {
            Ok(()) => warp::reply::with_status(
                warp::reply::json(&serde_json::json!({ "status": "accepted" })),
                StatusCode::ACCEPTED,
            )
            .into_response(),
            Err(refusal) => refusal.json(),
        }
    }

    fn try_publish(&self, headers: &HeaderMap, query: &Query, body: &[u8]) -> Result<(), Refusal> {
        self.authorize(headers, query)?;
        let text = std::str::from_utf8(body)
            .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "body is not valid UTF-8"))?;
        let msg = protocol::parse(text, Origin::Service)
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        self.hub
            .publish(&msg)
            .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
    }
}

/// The upgraded connection as a WebSocket. Under the hub's own server it is
/// a plain TCP stream: unwrapped, it skips a layer of dynamic dispatch on
/// every read and write, and gets `TCP_NODELAY` (messages are small and
/// already batched; Nagle's algorithm would only add delay).
async fn websocket(upgraded: Upgraded, config: WebSocketConfig) -> WebSocketStream<Socket> {
    let socket = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let stream = parts.io.into_inner();
            let _ = stream.set_nodelay(true);
            return WebSocketStream::from_partially_read(
                Socket::Tcp(stream),
                parts.read_buf.to_vec(),
                Role::Server,
                Some(config),
            )
            .await;
        }
        Err(upgraded) => {
            tracing::debug!("upgraded connection is not a plain TCP stream");
            Socket::Other(TokioIo::new(upgraded))
        }
    };
    WebSocketStream::from_raw_socket(socket, Role::Server, Some(config)).await
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
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade request",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Version must be 13",
        ));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"))
}

/// The `101 Switching Protocols` answer to an upgrade request.
pub fn switching_protocols(key: &HeaderValue) -> Response {
    let mut response = warp::reply().into_response();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// Turns warp's own rejections (unknown path, wrong method, body too large)
/// into plain responses with their status.
pub async fn recover(rejection: warp::Rejection) -> Result<Response, Infallible> {
    let status = if rejection.is_not_found() {
        StatusCode::NOT_FOUND
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        StatusCode::METHOD_NOT_ALLOWED
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        StatusCode::PAYLOAD_TOO_LARGE
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        StatusCode::LENGTH_REQUIRED
    } else {
        StatusCode::BAD_REQUEST
    };
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    Ok(Refusal::new(status, reason).json())
}
