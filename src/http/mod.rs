//! The HTTP surface (docs/protocol.md sections 1, 5 and 8) as warp routes: the
//! WebSocket upgrade (`upgrade.rs`), health, readiness, metrics, presence
//! and publish, plus the web console's routes ([`crate::console`]). Every
//! refusal is a [`Refusal`] (`refusal.rs`); the accept-rate limit that
//! upgrades pass first is `admission.rs`; the operators' routes are
//! `admin.rs`.

mod admin;
mod admission;
mod refusal;
mod upgrade;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use futures_util::{Stream, TryStreamExt};
use http::header::{self, HeaderMap};
use http::StatusCode;
use hyper::upgrade::OnUpgrade;
use metrics_exporter_prometheus::PrometheusHandle;
use warp::reply::{Reply, Response};
use warp::Filter;

use crate::auth::{Access, Auth, Credentials, Surface};
pub use crate::auth::{API_KEY_HEADER, API_KEY_PARAM};
use crate::broker::{BrokerError, Confirm};
use crate::config::Config;
use crate::hub::Hub;
use crate::operator::Operator;
use crate::protocol::{self, Origin, VisionId};
pub use refusal::Refusal;
pub use upgrade::{switching_protocols, SocketPath};

/// What the routes share.
pub struct Api {
    hub: Arc<Hub>,
    auth: Auth,
    allowed_origins: Vec<String>,
    prometheus: PrometheusHandle,
    console: bool,
    /// `None` when `AETHER_MAX_CONNECTS_PER_SEC` is 0: then an upgrade
    /// touches nothing of it.
    connect_rate: Option<admission::ConnectRate>,
    operator: Arc<Operator>,
}

type Query = HashMap<String, String>;

/// How long `POST /v3/publish` waits for Redis to confirm a message.
const RECEIPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Api {
    pub fn new(
        hub: Arc<Hub>,
        auth: Auth,
        config: &Config,
        prometheus: PrometheusHandle,
        operator: Arc<Operator>,
    ) -> Arc<Api> {
        let connect_rate = admission::ConnectRate::new(hub.limits().max_connects_per_sec);
        Arc::new(Api {
            connect_rate,
            operator,
            hub,
            auth,
            allowed_origins: config.allowed_origins.clone(),
            prometheus,
            console: config.console,
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

        // Matched by hand rather than with `path!`, which would turn an
        // empty id segment into a 404 instead of the contract's 400.
        let socket_path = warp::path::full().and_then(|full: warp::path::FullPath| async move {
            SocketPath::parse(full.as_str()).ok_or_else(warp::reject::not_found)
        });
        let ws = socket_path
            .and(warp::get())
            .and(warp::header::headers_cloned())
            .and(query)
            .and(warp::ext::optional::<OnUpgrade>())
            .and(api.clone())
            .then(
                |path, headers, query, on_upgrade, api: Arc<Api>| async move {
                    api.accept(path, headers, query, on_upgrade)
                        .await
                        .unwrap_or_else(Refusal::upgrade)
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
                api.presence(group, headers, query)
                    .await
                    .unwrap_or_else(Refusal::json)
            });
        let max = u64::from(self.hub.limits().max_message_bytes as u32);
        let publish = warp::path!("v3" / "publish")
            .and(warp::post())
            .and(warp::header::headers_cloned())
            .and(query)
            .and(warp::body::content_length_limit(max))
            .and(warp::body::stream())
            .and(api.clone())
            .then(|headers, query, body, api: Arc<Api>| async move {
                api.publish(headers, query, body)
                    .await
                    .unwrap_or_else(Refusal::json)
            });

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
            .or(admin::routes(Arc::clone(self)))
            .unify()
            .or(crate::console::routes(self.console))
            .unify()
    }

    /// The credentials of an HTTP API request (a key, or a Bearer token).
    fn access(&self, headers: &HeaderMap, query: &Query) -> Result<Access, Refusal> {
        Ok(self
            .auth
            .check(&Credentials::of(headers, query, Surface::Http))?)
    }

    /// 200 `ready`, or 503 `not ready` and a line for each connection
    /// that is down and why (never a credential: docs/redis-production.md).
    fn readyz(&self) -> Response {
        let revocations = self.auth.has_tokens() && !self.auth.revocations().is_loaded();
        let unready = self
            .hub
            .unready()
            .or_else(|| revocations.then(|| "revocations: not loaded from Redis yet".to_owned()));
        match unready {
            None => warp::reply::with_status("ready".to_owned(), StatusCode::OK).into_response(),
            Some(why) => {
                let body = format!("not ready\n{why}").trim_end().to_owned();
                warp::reply::with_status(body, StatusCode::SERVICE_UNAVAILABLE).into_response()
            }
        }
    }

    fn metrics(&self) -> Response {
        crate::metrics::tokio_tasks();
        let body = self.prometheus.render();
        warp::reply::with_header(body, header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .into_response()
    }

    /// `GET /v3/groups/{group_id}/presence`: a key, or a token whose `grp`
    /// covers the group.
    async fn presence(
        &self,
        group: String,
        headers: HeaderMap,
        query: Query,
    ) -> Result<Response, Refusal> {
        let access = self.access(&headers, &query)?;
        let group =
            VisionId::parse(&group).map_err(|e| Refusal::bad_request(format!("group_id {e}")))?;
        access.admits_group(group.as_str())?;
        let members = self
            .hub
            .members(&group)
            .await
            .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let body = serde_json::json!({ "group_id": group, "members": members });
        Ok(warp::reply::json(&body).into_response())
    }

    /// `POST /v3/publish`: a key, or a token that could send the message
    /// from a socket of its `from_id`.
    async fn publish(
        &self,
        headers: HeaderMap,
        query: Query,
        body: impl Stream<Item = Result<impl Buf, warp::Error>>,
    ) -> Result<Response, Refusal> {
        // Credentials first: nobody else gets to hold a connection while
        // a body trickles in.
        let access = self.access(&headers, &query)?;
        let body = read_body(body).await?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| Refusal::bad_request("body is not valid UTF-8"))?;
        let msg = protocol::parse(text, Origin::Service)
            .map_err(|e| Refusal::bad_request(e.to_string()))?;
        access.admits_publish(&msg)?;
        let unavailable =
            |e: BrokerError| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        let (confirm, confirmed) = Confirm::channel();
        self.hub.publish(&msg, Some(confirm)).map_err(unavailable)?;
        // Answered by Redis within a command's timeout, or not at all; a
        // message still queued then may yet go out.
        let position = match tokio::time::timeout(RECEIPT_TIMEOUT, confirmed).await {
            Ok(Ok(published)) => published,
            Ok(Err(_dropped)) => Err(BrokerError::Unavailable),
            Err(_late) => Err(BrokerError::Unconfirmed),
        }
        .map_err(unavailable)?;
        let mut body = serde_json::json!({ "status": "accepted" });
        if let Some(position) = position {
            body["offset"] = position.offset.into();
            body["epoch"] = position.epoch.as_str().into();
        }
        Ok(
            warp::reply::with_status(warp::reply::json(&body), StatusCode::ACCEPTED)
                .into_response(),
        )
    }
}

/// How long a client may take to send its request headers, from the
/// connection's first read: one that sends nothing, or its headers a byte
/// at a time (slow loris), is hung up then whatever it sent meanwhile.
/// Idle keep-alive connections between requests get the same, and a
/// request body as long again ([`read_body`]).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request body, given as long after the headers as they were given
/// ([`HEADER_READ_TIMEOUT`]): a body sent a byte at a time (slow
/// loris) gets 408 and the connection is closed. Its length was checked
/// against the limit already (`Content-Length`).
async fn read_body(
    body: impl Stream<Item = Result<impl Buf, warp::Error>>,
) -> Result<Vec<u8>, Refusal> {
    let deadline = HEADER_READ_TIMEOUT;
    let read = body.try_fold(Vec::new(), |mut all, mut chunk| async move {
        while chunk.has_remaining() {
            let part = chunk.chunk();
            all.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
        Ok(all)
    });
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) => Err(Refusal::bad_request(format!("body: {e}"))),
        Err(_) => Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("body not received within {} s", deadline.as_secs()),
        )),
    }
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
