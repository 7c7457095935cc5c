//! The HTTP surface (docs/protocol.md sections 1 and 5): every status the
//! contract names, for the upgrade and for the HTTP routes.

mod support;

use serde_json::json;
use support::{msg, TestHub};

const KEY: &str = "s3cret-key";

async fn keyed_hub() -> TestHub {
    TestHub::with(|c| c.api_keys = vec!["other-key".into(), KEY.into()]).await
}

#[tokio::test]
async fn invalid_vision_ids_are_refused_with_400_before_the_upgrade() {
    let hub = TestHub::start().await;
    let long = "a".repeat(65);
    let cases = [
        format!("/v3/ws/group/{long}/client/alice"),
        "/v3/ws/group/g1/client/al%20ice".to_owned(),
        "/v3/ws/group/g:1/client/alice".to_owned(),
        "/v3/ws/group/g1/client/al.ice".to_owned(),
    ];
    for path in cases {
        let (status, body) = hub.upgrade_status(&path, &[]).await;
        assert_eq!(status, 400, "{path}");
        assert!(body.contains("_id"), "{path}: {body}");
    }
    // An empty segment is an invalid id too, not an unknown path.
    for (path, which) in [
        ("/v3/ws/group//client/alice", "group_id"),
        ("/v3/ws/group/g1/client/", "client_id"),
    ] {
        let (status, body) = hub.upgrade_status(path, &[]).await;
        assert_eq!(status, 400, "{path}");
        assert!(
            body.contains(which) && body.contains("empty"),
            "{path}: {body}"
        );
    }
    let ok = format!("/v3/ws/group/{}/client/a-b_C9", "g".repeat(64));
    assert_eq!(hub.upgrade_status(&ok, &[]).await.0, 101);
}

#[tokio::test]
async fn api_keys_are_required_by_header_or_query_parameter() {
    let hub = keyed_hub().await;
    let path = "/v3/ws/group/g1/client/alice";
    assert_eq!(hub.upgrade_status(path, &[]).await.0, 401);
    let wrong = [("X-Aether-API-Key", "nope")];
    assert_eq!(hub.upgrade_status(path, &wrong).await.0, 401);
    let right = [("X-Aether-API-Key", KEY)];
    assert_eq!(hub.upgrade_status(path, &right).await.0, 101);
    let query = format!("{path}?api_key={KEY}");
    assert_eq!(hub.upgrade_status(&query, &[]).await.0, 101);
    let bad_query = format!("{path}?api_key=nope");
    assert_eq!(hub.upgrade_status(&bad_query, &[]).await.0, 401);
}

#[tokio::test]
async fn origins_outside_the_allowed_list_are_refused_with_403() {
    let hub = TestHub::with(|c| c.allowed_origins = vec!["https://app.example".into()]).await;
    let path = "/v3/ws/group/g1/client/alice";
    let evil = [("Origin", "https://evil.example")];
    assert_eq!(hub.upgrade_status(path, &evil).await.0, 403);
    let good = [("Origin", "https://app.example")];
    assert_eq!(hub.upgrade_status(path, &good).await.0, 101);
    // Non-browser clients send no Origin and are not subject to the check.
    assert_eq!(hub.upgrade_status(path, &[]).await.0, 101);
}

#[tokio::test]
async fn a_plain_get_on_the_socket_path_is_400_and_unknown_paths_404() {
    let hub = TestHub::start().await;
    let plain = hub.get("/v3/ws/group/g1/client/alice").await;
    assert_eq!(plain.status, 400);
    assert!(plain.body.contains("WebSocket"), "{}", plain.body);
    assert_eq!(hub.get("/nowhere").await.status, 404);
    assert_eq!(hub.get("/v3/ws/group/g1").await.status, 404);
    assert_eq!(hub.get("/v3/publish").await.status, 405);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let hub = TestHub::start().await;
    assert_eq!(hub.get("/healthz").await.status, 200);
    assert_eq!(hub.get("/readyz").await.status, 200);

    let mut a = hub.connect("g1", "alice").await;
    a.send(msg("echo", json!({}))).await;
    let _ = a.recv().await;
    let metrics = hub.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    for name in [
        "aether_connections_open",
        "aether_connections_opened_total",
        "aether_frames_received_total{msg_type=\"msg\",target=\"echo\"}",
        "aether_messages_delivered_total",
        "aether_dispatch_seconds_bucket",
        "aether_fanout_size_bucket",
        // Every drop reason is there before the first drop.
        "aether_messages_dropped_total{reason=\"slow_consumer\"} 0",
        "aether_messages_dropped_total{reason=\"rate_limited\"} 0",
        "aether_messages_dropped_total{reason=\"broker_unavailable\"} 0",
    ] {
        assert!(metrics.body.contains(name), "{name} missing from /metrics");
    }
    let opened = hub.metric("aether_connections_opened_total").await;
    assert!(opened >= 1.0);
}

#[tokio::test]
async fn presence_over_http() {
    let hub = keyed_hub().await;
    let key = [("X-Aether-API-Key", KEY)];
    let url = |g: &str| format!("ws://{}/v3/ws/group/{g}/client/", hub.addr);
    let _b = support::Client::connect(&(url("g1") + "bob"), &key)
        .await
        .unwrap();
    let _a = support::Client::connect(&(url("g1") + "amy"), &key)
        .await
        .unwrap();

    let unauthorised = hub.get("/v3/groups/g1/presence").await;
    assert_eq!(unauthorised.status, 401);
    assert!(unauthorised.json()["error"].is_string());

    let listed = support::http_request(hub.addr, "GET", "/v3/groups/g1/presence", &key, "").await;
    assert_eq!(listed.status, 200);
    assert_eq!(
        listed.json(),
        json!({"group_id": "g1", "members": ["amy", "bob"]})
    );

    let path = format!("/v3/groups/g1/presence?api_key={KEY}");
    assert_eq!(
        hub.get(&path).await.json()["members"],
        json!(["amy", "bob"])
    );

    let empty =
        support::http_request(hub.addr, "GET", "/v3/groups/nobody/presence", &key, "").await;
    assert_eq!(empty.json()["members"], json!([]));

    let bad = support::http_request(hub.addr, "GET", "/v3/groups/a%20b/presence", &key, "").await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn publish_routes_like_a_client_frame() {
    let hub = keyed_hub().await;
    let key = [("X-Aether-API-Key", KEY)];
    let url = format!("ws://{}/v3/ws/group/g1/client/worker", hub.addr);
    let mut worker = support::Client::connect(&url, &key).await.unwrap();

    let body = json!({"msg_type": "cmd", "target": "group", "from_id": "planner",
                      "group_id": "g1", "cmd": "start", "payload": {"job": 7}});
    let accepted = hub.post("/v3/publish", &key, &body.to_string()).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let got = worker.recv().await;
    assert_eq!(got["from_id"], "planner");
    assert_eq!(got["cmd"], "start");
    assert_eq!(got["payload"]["job"], 7);
    assert_eq!(got["version"], "3");

    let direct = json!({"msg_type": "msg", "target": "direct", "from_id": "planner",
                        "to_id": "worker", "msg": "just you"});
    assert_eq!(
        hub.post("/v3/publish", &key, &direct.to_string())
            .await
            .status,
        202
    );
    assert_eq!(worker.recv().await["msg"], "just you");

    let broadcast = json!({"msg_type": "msg", "target": "broadcast", "from_id": "planner"});
    assert_eq!(
        hub.post("/v3/publish", &key, &broadcast.to_string())
            .await
            .status,
        202
    );
    assert_eq!(worker.recv().await["target"], "broadcast");
}

#[tokio::test]
async fn publish_refuses_bad_input_with_json_errors() {
    let hub = TestHub::with(|c| {
        c.api_keys = vec![KEY.into()];
        c.max_message_bytes = 1024;
    })
    .await;
    let key = [("X-Aether-API-Key", KEY)];
    let good = json!({"msg_type": "msg", "target": "broadcast", "from_id": "svc"}).to_string();

    let no_key = hub.post("/v3/publish", &[], &good).await;
    assert_eq!(no_key.status, 401);
    assert!(no_key.json()["error"].is_string());

    for (body, part) in [
        ("{", "EOF"),
        (
            r#"{"msg_type":"msg","target":"group","group_id":"g1"}"#,
            "from_id is required",
        ),
        (
            r#"{"msg_type":"msg","target":"group","from_id":"svc"}"#,
            "group_id is required",
        ),
        (
            r#"{"msg_type":"msg","target":"echo","from_id":"svc"}"#,
            "echo",
        ),
        (
            r#"{"msg_type":"msg","target":"broadcast","from_id":"svc","x":1}"#,
            "unknown field",
        ),
    ] {
        let refused = hub.post("/v3/publish", &key, body).await;
        assert_eq!(refused.status, 400, "{body}");
        let error = refused.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(part), "{body}: {error}");
    }

    let huge = json!({"msg_type": "msg", "target": "broadcast", "from_id": "svc",
                      "msg": "x".repeat(2000)});
    assert_eq!(
        hub.post("/v3/publish", &key, &huge.to_string())
            .await
            .status,
        413
    );
}

/// A client that never finishes its request headers (slowloris) is cut off
/// by the 10 s header timeout; one that is merely slow is served.
#[tokio::test]
async fn unfinished_request_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = TestHub::start().await;
    let head = "GET /healthz HTTP/1.1\r\nHost: hub\r\n";

    let mut stalled = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    stalled.write_all(head.as_bytes()).await.unwrap();

    let mut slow = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    slow.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    slow.write_all(b"Connection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stalled.read_to_end(&mut rest),
    )
    .await;
    assert!(closed.is_ok(), "a stalled request is still open after 20 s");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        !text.contains("200 OK"),
        "the stalled request was served: {text}"
    );
}

/// With keys configured, a publish without one is refused (401) as soon as
/// its headers are in: the hub does not wait for a body it would refuse.
#[tokio::test]
async fn a_publish_without_a_key_is_refused_before_its_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = keyed_hub().await;
    let mut stream = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let head = "POST /v3/publish HTTP/1.1\r\nHost: hub\r\nContent-Length: 200\r\n\r\n{";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = [0u8; 512];
    let n = tokio::time::timeout(support::TIMEOUT, stream.read(&mut answer))
        .await
        .expect("answered before the body is done")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}
