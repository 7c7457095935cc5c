//! The hub's logs, read from the real binary's stderr: one line per connect
//! and per disconnect (with close code and duration) at debug, refusals,
//! text or JSON by setting, and never an API key.

mod support;

use std::io::Read;
use std::time::Duration;

use serde_json::{json, Value};
use support::process::{signal, spawn_hub_with_logs, wait_exit, Running};
use support::Client;

const KEY: &str = "key-never-logged-7f3a";
const WRONG_KEY: &str = "wrong-key-never-logged-91c2";

/// Connects with the key in the query string and in a header, is refused
/// once with a wrong key, closes normally; then stops the hub and returns
/// everything it logged.
async fn session_logs(format: &str) -> String {
    let mut hub = spawn_hub_with_logs(&[
        ("AETHER_LOG", "debug"),
        ("AETHER_LOG_FORMAT", format),
        ("AETHER_API_KEYS", KEY),
    ])
    .await;
    let url =
        |c: &str, key: &str| format!("ws://{}/v3/ws/group/g1/client/{c}?api_key={key}", hub.addr);
    let refused = Client::connect(&url("mallory", WRONG_KEY), &[]).await;
    assert!(refused.is_err(), "a wrong key is refused");

    let mut alice = Client::connect(&url("alice", KEY), &[])
        .await
        .expect("connect");
    let by_header = format!("ws://{}/v3/ws/group/g1/client/bob", hub.addr);
    let bob = Client::connect(&by_header, &[("X-Aether-API-Key", KEY)])
        .await
        .expect("connect");
    alice
        .send(json!({"msg_type": "msg", "target": "echo", "payload": {}}))
        .await;
    let _ = alice.recv().await;
    assert_eq!(alice.close().await, 1000);
    assert_eq!(bob.close().await, 1000);
    stop(&mut hub)
}

fn stop(hub: &mut Running) -> String {
    signal(&hub.child, libc::SIGTERM);
    let status = wait_exit(&mut hub.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    let mut logs = String::new();
    hub.child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_string(&mut logs)
        .expect("read the hub's stderr");
    logs
}

fn assert_no_key(logs: &str) {
    assert!(!logs.contains(KEY), "an API key was logged:\n{logs}");
    assert!(
        !logs.contains(WRONG_KEY),
        "a refused key was logged:\n{logs}"
    );
}

#[tokio::test]
async fn json_logs_have_a_line_per_connect_and_disconnect() {
    let logs = session_logs("json").await;
    assert_no_key(&logs);
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let with = |message: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .collect()
    };

    let opened = with("socket opened");
    assert_eq!(opened.len(), 2, "{logs}");
    for line in &opened {
        assert_eq!(line["level"], "DEBUG");
        assert_eq!(line["group"], "g1");
    }
    let closed = with("socket closed");
    assert_eq!(closed.len(), 2, "{logs}");
    let mut clients: Vec<&str> = closed.iter().filter_map(|l| l["client"].as_str()).collect();
    clients.sort();
    assert_eq!(clients, ["alice", "bob"]);
    for line in &closed {
        assert_eq!(line["code"], 1000, "{line}");
        let seconds = line["seconds"].as_f64().expect("duration in seconds");
        assert!((0.0..60.0).contains(&seconds), "{line}");
    }
    let refused = with("request refused");
    assert_eq!(refused.len(), 1, "{logs}");
    assert_eq!(refused[0]["status"], 401);
    assert!(!with("aether-hub listening").is_empty(), "{logs}");
}

#[tokio::test]
async fn text_logs_are_for_people_by_default() {
    let logs = session_logs("text").await;
    assert_no_key(&logs);
    assert!(logs
        .lines()
        .all(|l| serde_json::from_str::<Value>(l).is_err()));
    let closed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("socket closed"))
        .collect();
    assert_eq!(closed.len(), 2, "{logs}");
    assert!(closed
        .iter()
        .all(|l| l.contains("DEBUG") && l.contains("code=1000")));
}

/// Tokens in all three places, valid and refused, at the most verbose
/// level there is: no part of any token that carries its signature reaches
/// the log.
#[tokio::test]
async fn tokens_are_never_logged_at_any_level() {
    use support::tokens::{claims, hs256, secret};
    let key = secret();
    let mut hub =
        spawn_hub_with_logs(&[("AETHER_LOG", "trace"), ("AETHER_TOKEN_SECRETS", &key)]).await;
    let token = |sub: &str| hs256(&key, &claims(sub, json!("g1")));
    let url = |c: &str| format!("ws://{}/v3/ws/group/g1/client/{c}", hub.addr);
    let (by_protocol, by_header, by_query) = (token("p"), token("h"), token("q"));
    let refused = hs256(&secret(), &claims("x", json!("g1")));
    let forbidden = token("someone-else");

    let protocols = format!("aether.v3, aether.token.{by_protocol}");
    let p = Client::connect(&url("p"), &[("Sec-WebSocket-Protocol", &protocols)]).await;
    let h = Client::connect(
        &url("h"),
        &[("Authorization", &format!("Bearer {by_header}"))],
    )
    .await;
    let q = Client::connect(&format!("{}?token={by_query}", url("q")), &[]).await;
    let bad = Client::connect(&format!("{}?token={refused}", url("x")), &[]).await;
    let other = Client::connect(
        &url("x"),
        &[("Authorization", &format!("Bearer {forbidden}"))],
    )
    .await;
    assert!(bad.is_err() && other.is_err(), "refused tokens are refused");
    for client in [p, h, q] {
        assert_eq!(client.expect("valid token").close().await, 1000);
    }
    let presence = support::http_request(
        hub.addr,
        "GET",
        "/v3/groups/g1/presence",
        &[("Authorization", &format!("Bearer {by_header}"))],
        "",
    )
    .await;
    assert_eq!(presence.status, 200);
    let logs = stop(&mut hub);
    assert!(logs.contains("TRACE"), "trace logs were on");
    assert!(logs.contains("token"), "refusals are logged, by reason");
    for t in [&by_protocol, &by_header, &by_query, &refused, &forbidden] {
        let signature = t.rsplit('.').next().unwrap_or(t);
        assert!(!logs.contains(signature), "a token was logged:\n{logs}");
    }
    assert!(!logs.contains(&key), "the secret was logged");
}

#[tokio::test]
async fn the_level_is_set_at_start_up() {
    let mut hub = spawn_hub_with_logs(&[("AETHER_LOG", "warn")]).await;
    let url = format!("ws://{}/v3/ws/group/g1/client/alice", hub.addr);
    let alice = Client::connect(&url, &[]).await.expect("connect");
    assert_eq!(alice.close().await, 1000);
    let logs = stop(&mut hub);
    // Only the development-mode warning (no keys configured) is that loud.
    assert!(!logs.contains("socket"), "{logs}");
    assert!(!logs.contains("INFO"), "{logs}");
    assert!(logs.contains("no API keys configured"), "{logs}");
}
