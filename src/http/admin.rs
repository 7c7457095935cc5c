//! The operators' routes (docs/protocol.md section 11): `POST
//! /v3/disconnect`, `POST /v3/revoke`, `GET /v3/info` and `GET
//! /v3/history/…`. Each checks the admin credentials first
//! ([`Auth::check_admin`]), then its body or query, then asks the
//! [`Operator`]; every call is counted by route and outcome.
//!
//! [`Auth::check_admin`]: crate::auth::Auth::check_admin

use std::sync::Arc;

use http::header::HeaderMap;
use http::StatusCode;
use serde::Deserialize;
use warp::reply::{Reply, Response};
use warp::Filter;

use super::{read_body, Api, Query, Refusal};
use crate::auth::{unix_now, Credentials, Surface};
use crate::channels::Route;
use crate::history::{Outcome, Recovery, Since};
use crate::metrics;
use crate::operator::{Disconnect, Operator, OperatorError};
use crate::protocol::VisionId;
use crate::revocation::{Revocation, MAX_JTI_BYTES};

/// The longest close reason an operator may give (docs/protocol.md
/// section 11; a close frame holds 123 bytes).
pub const MAX_REASON_BYTES: usize = 100;
/// An admin body is a few ids: anything longer is not one.
const MAX_BODY: u64 = 4 * 1024;
/// Messages one history call returns by default, and at most.
const LIMIT_DEFAULT: usize = 100;
const LIMIT_MAX: usize = 1000;

/// The four routes, for [`Api::routes`].
pub fn routes(
    api: Arc<Api>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let api = warp::any().map(move || Arc::clone(&api));
    let query = warp::query::<Query>()
        .or(warp::any().map(Query::new))
        .unify();
    let body = warp::body::content_length_limit(MAX_BODY).and(warp::body::stream());
    let act = warp::path!("v3" / Action)
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(query)
        .and(body)
        .and(api.clone())
        .then(|action, headers, query, body, api: Arc<Api>| async move {
            let done = async {
                api.admin(&headers, &query)?;
                let body = read_body(body).await?;
                let operator = api.operator()?;
                match action {
                    Action::Disconnect => operator.disconnect(disconnect_body(&body)?).await,
                    Action::Revoke => operator.revoke(revoke_body(&body, unix_now())?).await,
                }
                .map_err(unavailable)?;
                Ok(accepted())
            };
            answer(action.name(), done.await)
        });
    let info = warp::path!("v3" / "info")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(query)
        .and(api.clone())
        .then(|headers, query, api: Arc<Api>| async move {
            let done = async {
                api.admin(&headers, &query)?;
                let info = api.operator()?.info().await.map_err(unavailable)?;
                Ok(warp::reply::json(&info).into_response())
            };
            answer("info", done.await)
        });
    let history = warp::path("v3")
        .and(warp::path("history"))
        .and(warp::path::tail())
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(query)
        .and(api)
        .then(
            |tail: warp::path::Tail, headers, query, api: Arc<Api>| async move {
                let done = async {
                    api.admin(&headers, &query)?;
                    let route = route_of(tail.as_str())?;
                    let (since, limit) = history_query(&query)?;
                    let op = api.operator()?;
                    let recovery = op.history(&route, &since).await.map_err(unavailable)?;
                    Ok(history_reply(recovery, limit))
                };
                answer("history", done.await)
            },
        );
    act.or(info).unify().or(history).unify()
}

/// The two actions, `POST /v3/{action}`.
#[derive(Debug, Clone, Copy)]
enum Action {
    Disconnect,
    Revoke,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Disconnect => "disconnect",
            Action::Revoke => "revoke",
        }
    }
}

/// Any other path segment is not ours (`POST /v3/publish` is).
impl std::str::FromStr for Action {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "disconnect" => Ok(Action::Disconnect),
            "revoke" => Ok(Action::Revoke),
            _ => Err(()),
        }
    }
}

impl Api {
    /// The admin credentials of a request (docs/protocol.md section 11).
    fn admin(&self, headers: &HeaderMap, query: &Query) -> Result<(), Refusal> {
        let given = Credentials::of(headers, query, Surface::Http);
        Ok(self.auth.check_admin(&given)?)
    }

    fn operator(&self) -> Result<&Operator, Refusal> {
        Ok(&self.operator)
    }
}

/// Counts the call and turns a refusal into its JSON answer.
fn answer(route: &'static str, done: Result<Response, Refusal>) -> Response {
    let outcome = match &done {
        Ok(_) => "accepted",
        Err(r) => match r.status {
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            s if s.is_server_error() => "unavailable",
            _ => "invalid",
        },
    };
    metrics::admin_action(route, outcome);
    done.unwrap_or_else(Refusal::json)
}

fn accepted() -> Response {
    let body = serde_json::json!({ "status": "accepted" });
    warp::reply::with_status(warp::reply::json(&body), StatusCode::ACCEPTED).into_response()
}

fn unavailable(e: OperatorError) -> Refusal {
    Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// A JSON body of type `T`; unknown fields are refused by `T`.
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| Refusal::bad_request(format!("invalid body: {e}")))
}

fn id(field: &str, value: &str) -> Result<VisionId, Refusal> {
    VisionId::parse(value).map_err(|e| Refusal::bad_request(format!("{field} {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    client_id: String,
    #[serde(default)]
    group_id: Option<String>,
    #[serde(default)]
    reconnect: bool,
    #[serde(default)]
    reason: Option<String>,
}

fn disconnect_body(body: &[u8]) -> Result<Disconnect, Refusal> {
    let b: DisconnectBody = parse(body)?;
    if b.reason
        .as_ref()
        .is_some_and(|r| r.len() > MAX_REASON_BYTES)
    {
        return Err(Refusal::bad_request(format!(
            "reason is longer than {MAX_REASON_BYTES} bytes"
        )));
    }
    Ok(Disconnect {
        client_id: id("client_id", &b.client_id)?,
        group_id: b.group_id.map(|g| id("group_id", &g)).transpose()?,
        reconnect: b.reconnect,
        reason: b.reason,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    issued_before: Option<u64>,
    until: u64,
}

fn revoke_body(body: &[u8], now: u64) -> Result<Revocation, Refusal> {
    let b: RevokeBody = parse(body)?;
    let bad = |reason: &str| Err(Refusal::bad_request(reason));
    if b.until <= now {
        return bad("until must be in the future");
    }
    match (b.jti, b.sub, b.issued_before) {
        (Some(jti), None, None) if jti.is_empty() || jti.len() > MAX_JTI_BYTES => {
            bad(&format!("jti must be 1 to {MAX_JTI_BYTES} bytes"))
        }
        (Some(jti), None, None) => Ok(Revocation::Token {
            jti,
            until: b.until,
        }),
        (None, Some(sub), Some(issued_before)) => Ok(Revocation::Client {
            sub: id("sub", &sub)?,
            issued_before,
            until: b.until,
        }),
        (None, Some(_), None) => bad("sub needs issued_before"),
        _ => bad("give either jti, or sub and issued_before"),
    }
}

/// The route of `/v3/history/{kind}/{id}` or `/v3/history/broadcast`.
fn route_of(tail: &str) -> Result<Route, Refusal> {
    let not_found = || Refusal::new(StatusCode::NOT_FOUND, "not found");
    match tail.split('/').collect::<Vec<_>>()[..] {
        ["broadcast"] => Ok(Route::Broadcast),
        ["group", g] => Ok(Route::Group(id("group_id", g)?)),
        ["client", c] => Ok(Route::Client(id("client_id", c)?)),
        _ => Err(not_found()),
    }
}

fn history_query(query: &Query) -> Result<(Since, usize), Refusal> {
    let malformed = || Refusal::bad_request("since must be EPOCH:OFFSET");
    let since = match query.get("since").map(String::as_str) {
        None => Since::Oldest,
        // A socket's "new" (learn the position) is no page of history.
        Some("new") => return Err(malformed()),
        Some(s) => Since::parse(s, "since").map_err(|_| malformed())?,
    };
    let limit = match query.get("limit") {
        None => LIMIT_DEFAULT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=LIMIT_MAX).contains(l))
            .ok_or_else(|| Refusal::bad_request(format!("limit must be 1 to {LIMIT_MAX}")))?,
    };
    Ok((since, limit))
}

/// The answer of a history call: the messages as delivered, spliced in
/// as they are (each is a JSON object the hub wrote).
fn history_reply(recovery: Recovery, limit: usize) -> Response {
    let (epoch, offset) = match &recovery.position {
        Some(p) => (p.epoch.as_str(), p.offset),
        None => ("", 0),
    };
    let (recovered, kept) = match (&recovery.position, recovery.outcome) {
        (Some(_), Outcome::Recovered(kept)) => (true, kept),
        _ => (false, Vec::new()),
    };
    let mut body = serde_json::json!({
        "epoch": epoch, "offset": offset, "recovered": recovered,
    })
    .to_string();
    body.pop();
    body.push_str(",\"messages\":[");
    for (i, k) in kept.iter().take(limit).enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(k.text.as_str());
    }
    body.push_str("]}");
    let json = http::HeaderValue::from_static("application/json");
    warp::reply::with_header(body, http::header::CONTENT_TYPE, json).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_bodies_are_one_of_two_shapes() {
        let now = 100;
        let ok = |s: &str| revoke_body(s.as_bytes(), now).map_err(|r| r.reason);
        assert_eq!(
            ok(r#"{"jti":"t","until":200}"#),
            Ok(Revocation::Token {
                jti: "t".into(),
                until: 200
            })
        );
        assert!(matches!(
            ok(r#"{"sub":"a","issued_before":90,"until":200}"#),
            Ok(Revocation::Client { .. })
        ));
        for bad in [
            r#"{"jti":"t","sub":"a","issued_before":1,"until":200}"#,
            r#"{"sub":"a","until":200}"#,
            r#"{"until":200}"#,
            r#"{"jti":"","until":200}"#,
            r#"{"jti":"t","until":100}"#,
            r#"{"jti":"t"}"#,
            r#"{"jti":"t","until":200,"extra":1}"#,
            r#"{"sub":"a b","issued_before":1,"until":200}"#,
            "not json",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn disconnect_bodies_are_checked() {
        let ok = |s: &str| disconnect_body(s.as_bytes()).map_err(|r| r.reason);
        let d = ok(r#"{"client_id":"c","group_id":"g","reconnect":true,"reason":"r"}"#).unwrap();
        assert_eq!(d.group_id.unwrap().as_str(), "g");
        assert!(d.reconnect);
        assert!(!ok(r#"{"client_id":"c"}"#).unwrap().reconnect);
        let long = format!(r#"{{"client_id":"c","reason":"{}"}}"#, "x".repeat(101));
        for bad in [
            r#"{}"#,
            r#"{"client_id":""}"#,
            r#"{"client_id":"c","group_id":"a b"}"#,
            r#"{"client_id":"c","other":1}"#,
            r#"{"client_id":"c","reconnect":"yes"}"#,
            long.as_str(),
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn history_paths_and_queries() {
        assert_eq!(route_of("broadcast").unwrap(), Route::Broadcast);
        assert!(matches!(route_of("group/g"), Ok(Route::Group(_))));
        assert!(matches!(route_of("client/c"), Ok(Route::Client(_))));
        assert_eq!(
            route_of("other/x").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route_of("group/a b").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let q = |pairs: &[(&str, &str)]| {
            let query: Query = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            history_query(&query).map_err(|r| r.status)
        };
        assert_eq!(q(&[]).unwrap(), (Since::Oldest, LIMIT_DEFAULT));
        assert_eq!(q(&[("limit", "1000")]).unwrap().1, 1000);
        for bad in [
            ("limit", "0"),
            ("limit", "1001"),
            ("limit", "x"),
            ("since", "nope"),
            ("since", "e:x"),
            ("since", "new"),
        ] {
            assert_eq!(q(&[bad]), Err(StatusCode::BAD_REQUEST), "{bad:?}");
        }
    }
}
