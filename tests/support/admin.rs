//! The operators' server API (docs/protocol.md section 11) from a test:
//! admin HTTP calls with a credential, sockets opened with an API key or a
//! token, and bounded waits for a socket's close frame, a presence event
//! or a fleet view. Shared by `server_api.rs` (memory) and
//! `server_api_redis.rs` (Redis and Redis Cluster).

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::tokens::{claims, hs256, with};
use super::{http_request, msg, Client, Event, HttpResponse, TestHub, TIMEOUT};

/// The header every key travels in.
pub const KEY_HEADER: &str = "X-Aether-API-Key";

/// The operators' key the tests configure (`config.admin_api_keys`).
pub const ADMIN: &str = "admin-key-7f3a1c";
/// A client API key (`config.api_keys`, section 1).
pub const CLIENT_KEY: &str = "client-key-91c2e4";

/// How long a disconnect or a revocation may take to close a socket: the
/// contract's 1 s, plus 500 ms of scheduling slack on a loaded 2-core
/// test machine.
pub const PROPAGATION: Duration = Duration::from_millis(1500);

/// The credential a request carries.
#[derive(Clone, Copy, Debug)]
pub enum Cred<'a> {
    None,
    /// `X-Aether-API-Key`.
    Key(&'a str),
    /// `Authorization: Bearer`.
    Bearer(&'a str),
}

impl Cred<'_> {
    fn header(self) -> Option<(&'static str, String)> {
        match self {
            Cred::None => None,
            Cred::Key(key) => Some((KEY_HEADER, key.to_owned())),
            Cred::Bearer(token) => Some(("Authorization", format!("Bearer {token}"))),
        }
    }
}

/// One HTTP request to `hub` with `cred`.
pub async fn call(
    hub: &TestHub,
    method: &str,
    path: &str,
    cred: Cred<'_>,
    body: &str,
) -> HttpResponse {
    let owned = cred.header();
    let headers: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (*n, v.as_str())).collect();
    http_request(hub.addr, method, path, &headers, body).await
}

/// A GET with the admin key.
pub async fn admin_get(hub: &TestHub, path: &str) -> HttpResponse {
    call(hub, "GET", path, Cred::Key(ADMIN), "").await
}

/// A POST of `body` with the admin key.
pub async fn admin_post(hub: &TestHub, path: &str, body: &Value) -> HttpResponse {
    call(hub, "POST", path, Cred::Key(ADMIN), &body.to_string()).await
}

/// Asserts the `202 {"status": "accepted"}` of section 11.
pub fn assert_accepted(answer: &HttpResponse, what: &str) {
    assert_eq!(answer.status, 202, "{what}: {}", answer.body);
    assert_eq!(
        answer.json(),
        json!({"status": "accepted"}),
        "{what}: the 202 body"
    );
}

/// Asserts a refusal: `status` with a JSON `{"error": "…"}` body.
pub fn assert_refused(answer: &HttpResponse, status: u16, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
    let error = serde_json::from_str::<Value>(&answer.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned));
    assert!(
        error.is_some_and(|e| !e.is_empty()),
        "{what}: expected a JSON {{\"error\": …}} body, got {:?}",
        answer.body
    );
}

/// `POST /v3/disconnect` with the admin key; asserts 202. Returns when the
/// answer came, the instant the contract's 1 s counts from.
pub async fn disconnect(hub: &TestHub, body: Value) -> Instant {
    let answer = admin_post(hub, "/v3/disconnect", &body).await;
    assert_accepted(&answer, &format!("disconnect {body}"));
    Instant::now()
}

/// `POST /v3/revoke` with the admin key; asserts 202. Returns when the
/// answer came.
pub async fn revoke(hub: &TestHub, body: Value) -> Instant {
    let answer = admin_post(hub, "/v3/revoke", &body).await;
    assert_accepted(&answer, &format!("revoke {body}"));
    Instant::now()
}

/// `GET /v3/info` with the admin key; asserts 200.
pub async fn info(hub: &TestHub) -> Value {
    let answer = admin_get(hub, "/v3/info").await;
    assert_eq!(answer.status, 200, "GET /v3/info: {}", answer.body);
    answer.json()
}

/// `info`'s `instances`, as (id, sockets) sorted by id.
pub fn instances(info: &Value) -> Vec<(String, u64)> {
    let mut list: Vec<(String, u64)> = info["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("info without an instances array: {info}"))
        .iter()
        .map(|i| {
            let id = i["id"]
                .as_str()
                .unwrap_or_else(|| panic!("instance id: {i}"));
            let n = i["sockets"]
                .as_u64()
                .unwrap_or_else(|| panic!("sockets: {i}"));
            (id.to_owned(), n)
        })
        .collect();
    list.sort();
    list
}

/// Polls `GET /v3/info` on `hub` (bounded by [`TIMEOUT`]) until its
/// `instances` are `want` (any order), and returns that answer.
pub async fn info_until(hub: &TestHub, want: &[(&str, u64)], what: &str) -> Value {
    let mut want: Vec<(String, u64)> = want.iter().map(|(i, n)| (i.to_string(), *n)).collect();
    want.sort();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let seen = info(hub).await;
        if instances(&seen) == want {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: info never listed {want:?} within {TIMEOUT:?}; last answer {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /v3/history/…` with the admin key; asserts 200.
pub async fn history(hub: &TestHub, path: &str) -> Value {
    let answer = admin_get(hub, path).await;
    assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
    answer.json()
}

/// Every page of `path` read `limit` at a time, each next page asked
/// `since` the last message of the one before, until an empty page.
pub async fn history_paged(hub: &TestHub, path: &str, limit: usize) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    for _ in 0..1000 {
        let query = match all.last() {
            None => format!("{path}?limit={limit}"),
            Some(last) => format!(
                "{path}?limit={limit}&since={}:{}",
                last["epoch"].as_str().expect("a kept message has an epoch"),
                last["offset"]
            ),
        };
        let page = history(hub, &query).await;
        assert_eq!(page["recovered"], true, "{query}: {page}");
        let messages = page["messages"].as_array().expect("messages").clone();
        assert!(messages.len() <= limit, "{query}: more than {limit}");
        if messages.is_empty() {
            return all;
        }
        all.extend(messages);
    }
    panic!("{path}: paging never ended");
}

/// A socket of `client` in `group` with extra upgrade headers.
pub async fn connect_with(
    hub: &TestHub,
    group: &str,
    client: &str,
    headers: &[(&str, &str)],
) -> Client {
    Client::connect(&hub.ws_url(group, client), headers)
        .await
        .unwrap_or_else(|e| panic!("connect {group}/{client}: {e}"))
}

/// A socket opened with the client API key.
pub async fn connect_keyed(hub: &TestHub, group: &str, client: &str) -> Client {
    connect_with(hub, group, client, &[(KEY_HEADER, CLIENT_KEY)]).await
}

/// A socket opened with `token` (Bearer).
pub async fn connect_token(hub: &TestHub, group: &str, client: &str, token: &str) -> Client {
    let auth = format!("Bearer {token}");
    connect_with(hub, group, client, &[("Authorization", &auth)]).await
}

/// The status an upgrade with `token` gets (101 when accepted).
pub async fn upgrade_with(hub: &TestHub, group: &str, client: &str, token: &str) -> u16 {
    let path = format!("/v3/ws/group/{group}/client/{client}");
    let auth = format!("Bearer {token}");
    hub.upgrade_status(&path, &[("Authorization", &auth)])
        .await
        .0
}

/// An HS256 token for `sub` in every group, one hour long, with `changes`
/// merged into its claims (`null` removes one).
pub fn token(secret: &str, sub: &str, changes: Value) -> String {
    hs256(secret, &with(claims(sub, json!("*")), changes))
}

/// Asserts that `client` gets the close frame (`code`, `reason`) by
/// `deadline`; says when it came if later, and what came if different.
pub async fn assert_closed(
    client: &mut Client,
    deadline: Instant,
    (code, reason): (u16, &str),
    what: &str,
) {
    let give_up = Instant::now() + TIMEOUT;
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        match client.next_event(left).await {
            Some(Event::Text(_)) => continue,
            Some(Event::Closed(got, why)) => {
                assert_eq!(
                    (got, why.as_str()),
                    (code, reason),
                    "{what}: the close frame"
                );
                let at = Instant::now();
                assert!(at <= deadline, "{what}: closed {:?} late", at - deadline);
                return;
            }
            None => panic!("{what}: still open {TIMEOUT:?} later"),
        }
    }
}

/// The close of a socket whose token was revoked.
pub const REVOKED: (u16, &str) = (4001, "token revoked");

/// Asserts that `client` is open and served: an echo comes back (other
/// messages before it are skipped).
pub async fn assert_open(client: &mut Client, what: &str) {
    let marker = format!("still-here-{}", rand_marker());
    client
        .send(msg("echo", json!({ "msg": marker.clone() })))
        .await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_event(left).await {
            Some(Event::Text(m)) if m["msg"] == marker.as_str() => return,
            Some(Event::Text(_)) => continue,
            Some(Event::Closed(code, reason)) => {
                panic!("{what}: expected open, but closed ({code}, {reason:?})")
            }
            None => panic!("{what}: no echo within {TIMEOUT:?}"),
        }
    }
}

fn rand_marker() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// Waits for the presence `event` (`join`/`leave`) of `who`, skipping
/// anything else.
pub async fn presence_event(client: &mut Client, event: &str, who: &str, what: &str) {
    let want = json!({ "event": event, "client_id": who });
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_event(left).await {
            Some(Event::Text(m)) if m["msg_type"] == "presence" && m["payload"] == want => return,
            Some(Event::Text(_)) => continue,
            other => panic!("{what}: no {event} of {who}, got {other:?}"),
        }
    }
}

/// The next message that is not a presence event.
pub async fn next_message(client: &mut Client, what: &str) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_event(left).await {
            Some(Event::Text(m)) if m["msg_type"] == "presence" => continue,
            Some(Event::Text(m)) => return m,
            other => panic!("{what}: expected a message, got {other:?}"),
        }
    }
}

/// `GET /v3/groups/{group}/presence` with `cred`.
pub async fn presence(hub: &TestHub, group: &str, cred: Cred<'_>) -> HttpResponse {
    call(
        hub,
        "GET",
        &format!("/v3/groups/{group}/presence"),
        cred,
        "",
    )
    .await
}

/// Asserts the members of `group`, read with the client key.
pub async fn assert_members(hub: &TestHub, group: &str, want: &[&str], what: &str) {
    assert_eq!(
        members(hub, group).await,
        want,
        "{what}: members of {group}"
    );
}

/// The members of `group`, read with the client key.
pub async fn members(hub: &TestHub, group: &str) -> Vec<String> {
    let answer = presence(hub, group, Cred::Key(CLIENT_KEY)).await;
    assert_eq!(answer.status, 200, "presence of {group}: {}", answer.body);
    serde_json::from_value(answer.json()["members"].clone()).expect("members")
}

/// `POST /v3/publish` of `body` with `cred`.
pub async fn publish_with(hub: &TestHub, cred: Cred<'_>, body: &Value) -> HttpResponse {
    call(hub, "POST", "/v3/publish", cred, &body.to_string()).await
}

/// `POST /v3/publish` of `body` with the client key; asserts 202.
pub async fn publish(hub: &TestHub, body: Value) {
    let answer = publish_with(hub, Cred::Key(CLIENT_KEY), &body).await;
    assert_status(&answer, 202, &format!("publish {body}"));
}

/// Asserts `answer`'s status, showing its body when it differs.
pub fn assert_status(answer: &HttpResponse, status: u16, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
}

/// `aether_admin_actions_total{route, outcome}` in a `/metrics` text (0
/// when absent), whatever the order of the labels.
pub fn admin_actions(metrics: &str, route: &str, outcome: &str) -> f64 {
    let (route, outcome) = (
        format!("route=\"{route}\""),
        format!("outcome=\"{outcome}\""),
    );
    metrics
        .lines()
        .filter(|l| l.starts_with("aether_admin_actions_total{"))
        .filter(|l| l.contains(&route) && l.contains(&outcome))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
