//! The hub's logs, read from the real binary's stderr: one line per connect
//! and per disconnect (with close code and duration) at debug, refusals,
//! text or JSON by setting, and never an API key, a token or a Redis
//! password (nor in `/metrics`, `/readyz` or `aether-hub --help`).

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::history::next_message;
use support::process::{launch, signal, spawn_hub_with_logs, wait_exit, Running, BIN};
use support::redis::{RedisOptions, RedisServer};
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
    hub.read_stderr()
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

/// The operators' routes at trace level: an admin key (right and wrong),
/// a client key refused there, a revoked token shown on a socket and on
/// the HTTP API. None of them reaches the log, while the ids they target
/// do.
#[tokio::test]
async fn admin_keys_and_revoked_tokens_are_never_logged() {
    use support::tokens::{claims, hs256, secret, with};
    const ADMIN: &str = "admin-key-never-logged-5d1e";
    let key = secret();
    let mut hub = spawn_hub_with_logs(&[
        ("AETHER_LOG", "trace"),
        ("AETHER_API_KEYS", KEY),
        ("AETHER_ADMIN_API_KEYS", ADMIN),
        ("AETHER_TOKEN_SECRETS", &key),
    ])
    .await;
    let token = hs256(
        &key,
        &with(
            claims("dev-1", json!("g1")),
            json!({"jti": "jti-logged-ok"}),
        ),
    );
    let admin = |path: &'static str, key: &'static str, body: Value| {
        let addr = hub.addr;
        async move {
            let headers = [("X-Aether-API-Key", key)];
            support::http_request(addr, "POST", path, &headers, &body.to_string()).await
        }
    };
    let until = aether_hub::auth::unix_now() + 600;
    let revoke = json!({"jti": "jti-logged-ok", "until": until});
    assert_eq!(
        admin("/v3/revoke", WRONG_KEY, revoke.clone()).await.status,
        401
    );
    assert_eq!(admin("/v3/revoke", KEY, revoke.clone()).await.status, 403);
    assert_eq!(admin("/v3/revoke", ADMIN, revoke).await.status, 202);
    let disconnect = json!({"client_id": "dev-1", "reason": "stolen"});
    assert_eq!(admin("/v3/disconnect", ADMIN, disconnect).await.status, 202);
    let url = format!("ws://{}/v3/ws/group/g1/client/dev-1", hub.addr);
    let bearer = format!("Bearer {token}");
    let refused = Client::connect(&url, &[("Authorization", &bearer)]).await;
    assert!(refused.is_err(), "a revoked token is refused");
    let presence = support::http_request(
        hub.addr,
        "GET",
        "/v3/groups/g1/presence",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(presence.status, 401, "{}", presence.body);
    let logs = stop(&mut hub);
    assert!(
        logs.contains("jti-logged-ok") && logs.contains("dev-1"),
        "ids are logged:\n{logs}"
    );
    assert!(logs.contains("revoked"), "the refusal is logged, by reason");
    assert_no_key(&logs);
    assert!(!logs.contains(ADMIN), "an admin key was logged:\n{logs}");
    let signature = token.rsplit('.').next().unwrap_or(&token);
    assert!(!logs.contains(signature), "a token was logged:\n{logs}");
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

/// The Redis password, given in `AETHER_REDIS_PASSWORD`.
const REDIS_PASSWORD: &str = "redispwNeverLogged3c9e";
/// Another password, in the URL: the setting wins over it.
const URL_PASSWORD: &str = "urlpwNeverLogged0b5f";

/// What a user could read from a running hub: `/metrics`, `/readyz`,
/// and the answers to a presence query and to an HTTP publish (their
/// error bodies while Redis refuses the hub).
async fn served(hub: &Running) -> String {
    let metrics = hub.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let readyz = hub.get("/readyz").await;
    let presence = hub.get("/v3/groups/g1/presence").await;
    let body = json!({"msg_type": "cmd", "target": "group", "group_id": "g1", "from_id": "svc", "cmd": "go"});
    let publish =
        support::http_request(hub.addr, "POST", "/v3/publish", &[], &body.to_string()).await;
    [metrics.body, readyz.body, presence.body, publish.body].join("\n")
}

fn assert_no_redis_password(what: &str, text: &str) {
    for secret in [REDIS_PASSWORD, URL_PASSWORD] {
        assert!(
            !text.contains(secret),
            "a Redis password is in the {what}:\n{text}"
        );
    }
}

/// A session at debug level through a Redis with a password (a URL with
/// another password, the setting's winning), then a hub whose passwords are
/// both wrong, which logs and serves its errors, then the same over TLS
/// with the password in the URL: neither password anywhere.
#[tokio::test]
async fn redis_passwords_are_never_logged_or_served() {
    let redis = RedisServer::start_with(RedisOptions {
        password: Some(REDIS_PASSWORD.into()),
        ..RedisOptions::default()
    });
    let url = format!("redis://:{URL_PASSWORD}@127.0.0.1:{}/", redis.port);
    let mut hub = spawn_hub_with_logs(&[
        ("AETHER_LOG", "debug"),
        ("AETHER_REDIS_URL", &url),
        ("AETHER_REDIS_PASSWORD", REDIS_PASSWORD),
    ])
    .await;
    let ws = |c: &str| format!("ws://{}/v3/ws/group/g1/client/{c}", hub.addr);
    let mut alice = Client::connect(&ws("alice"), &[]).await.expect("connect");
    let mut bob = Client::connect(&ws("bob"), &[]).await.expect("connect");
    assert_eq!(alice.recv().await["payload"]["client_id"], "bob");
    alice
        .send(json!({"msg_type": "msg", "target": "group", "msg": "hi"}))
        .await;
    assert_eq!(next_message(&mut bob).await["msg"], "hi");
    assert_no_redis_password("served pages", &served(&hub).await);
    assert_eq!(alice.close().await, 1000);
    assert_eq!(bob.close().await, 1000);
    let logs = stop(&mut hub);
    assert!(logs.contains("DEBUG"), "debug logs were on");
    assert_no_redis_password("log", &logs);

    let wrong = format!("redis://:{REDIS_PASSWORD}x@127.0.0.1:{}/", redis.port);
    let refused = launch(
        &[
            ("AETHER_LOG", "debug"),
            ("AETHER_REDIS_URL", &wrong),
            ("AETHER_REDIS_PASSWORD", URL_PASSWORD),
        ],
        Stdio::piped(),
    );
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    loop {
        if tokio::net::TcpStream::connect(refused.addr).await.is_ok()
            && refused
                .get("/readyz")
                .await
                .body
                .to_lowercase()
                .contains("auth")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never said it was authentication"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A few reconnect attempts, each failing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_no_redis_password("served pages", &served(&refused).await);
    let logs = refused.kill_for_logs();
    assert!(
        logs.to_lowercase().contains("auth"),
        "the log says nothing of authentication:\n{logs}"
    );
    assert_no_redis_password("log", &logs);

    let tls = RedisServer::start_with(RedisOptions {
        password: Some(REDIS_PASSWORD.into()),
        tls: true,
        client_certs: false,
    });
    let ca = tls
        .tls()
        .expect("TLS")
        .ca_file
        .to_string_lossy()
        .into_owned();
    let mut hub = spawn_hub_with_logs(&[
        ("AETHER_LOG", "debug"),
        ("AETHER_REDIS_URL", &tls.url()),
        ("AETHER_REDIS_TLS_CA_FILE", &ca),
    ])
    .await;
    let alice = Client::connect(
        &format!("ws://{}/v3/ws/group/g1/client/alice", hub.addr),
        &[],
    )
    .await
    .expect("connect");
    assert_no_redis_password("served pages", &served(&hub).await);
    assert_eq!(alice.close().await, 1000);
    assert_no_redis_password("log", &stop(&mut hub));
}

/// `aether-hub --help` shows the environment's values beside the flags,
/// except secrets: no Redis password, in a URL or on its own, of a server,
/// a cluster seed or a sentinel.
#[test]
fn help_shows_no_redis_secret() {
    let secrets = [
        "helpsecretUrl1",
        "helpsecretPassword2",
        "helpsecretCluster3",
        "helpsecretSentinels4",
        "helpsecretSentinelPassword5",
    ];
    let output = Command::new(BIN)
        .arg("--help")
        .env(
            "AETHER_REDIS_URL",
            format!("rediss://hub:{}@10.0.0.1:6379/", secrets[0]),
        )
        .env("AETHER_REDIS_PASSWORD", secrets[1])
        .env(
            "AETHER_REDIS_CLUSTER",
            format!("rediss://:{}@10.0.0.2:6379,10.0.0.3:6379", secrets[2]),
        )
        .env(
            "AETHER_REDIS_SENTINELS",
            format!("redis://:{}@10.0.0.4:26379", secrets[3]),
        )
        .env("AETHER_REDIS_SENTINEL_PASSWORD", secrets[4])
        .output()
        .expect("run aether-hub --help");
    assert!(output.status.success(), "{output:?}");
    let help = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(help.contains("AETHER_REDIS_PASSWORD"), "{help}");
    for secret in secrets {
        assert!(!help.contains(secret), "--help shows {secret}:\n{help}");
    }
}

/// A Redis setting that does not parse stops start-up with a message that
/// names the variable and shows the value with its password masked.
#[test]
fn a_redis_settings_error_shows_no_password() {
    let cases = [
        (
            "AETHER_REDIS_URL",
            "rediss://:badsecretA1@127.0.0.1:notaport/",
        ),
        ("AETHER_REDIS_URL", "redis://hub:bad:secretB2@127.0.0.1:x/"),
        (
            "AETHER_REDIS_CLUSTER",
            "rediss://:badsecretC3@127.0.0.1:7000,redis://user:badsecretD4@h:y",
        ),
    ];
    for (var, value) in cases {
        let output = Command::new(BIN)
            .env("AETHER_BIND", "127.0.0.1:0")
            .env(var, value)
            .stdin(Stdio::null())
            .output()
            .expect("run aether-hub");
        assert!(!output.status.success(), "{var}={value} was accepted");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(said.contains(var), "the error does not name {var}: {said}");
        for secret in ["badsecret", "secretB2"] {
            assert!(!said.contains(secret), "{var}: the password shows:\n{said}");
        }
    }
}
