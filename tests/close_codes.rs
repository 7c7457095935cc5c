//! Every close code of docs/protocol.md section 6 except 1001 (see
//! shutdown.rs), each provoked the way a real client would provoke it.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use support::raw::RawSocket;
use support::{msg, TestHub};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_client_close_is_answered_with_1000_and_the_client_leaves() {
    let hub = TestHub::start().await;
    let mut watcher = hub.connect("g1", "watcher").await;
    let leaver = hub.connect("g1", "leaver").await;
    assert_eq!(watcher.recv().await["payload"]["event"], "join");
    assert_eq!(leaver.close().await, 1000);
    assert_eq!(watcher.recv().await["payload"]["event"], "leave");
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_1009() {
    let hub = TestHub::with(|c| c.max_message_bytes = 1024).await;
    let mut a = hub.connect("g1", "alice").await;
    // Just under the limit is fine.
    let fits = msg("echo", json!({"msg": "x".repeat(900)}));
    a.send(fits).await;
    assert_eq!(a.recv().await["msg"].as_str().unwrap().len(), 900);
    a.send(msg("echo", json!({"msg": "x".repeat(2000)}))).await;
    assert_eq!(a.recv_close().await.0, 1009);
}

#[tokio::test]
async fn schema_errors_close_4000_with_a_reason() {
    let hub = TestHub::start().await;
    let cases = [
        ("not json", "expected"),
        (r#"[1]"#, "invalid type"),
        (r#"{"target":"echo"}"#, "missing field `msg_type`"),
        (
            r#"{"msg_type":"msg","target":"echo","colour":"red"}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"msg_type":"yell","target":"echo"}"#,
            "unknown variant `yell`",
        ),
        (
            r#"{"msg_type":"msg","target":"echo","payload":null}"#,
            "payload must be a JSON object",
        ),
        (
            r#"{"msg_type":"msg","target":"direct"}"#,
            "to_id is required",
        ),
        (
            r#"{"version":"2","msg_type":"msg","target":"echo"}"#,
            "version must be",
        ),
        (
            r#"{"msg_type":"msg","target":"echo","sent_at":"noon"}"#,
            "sent_at",
        ),
    ];
    for (frame, part) in cases {
        let mut a = hub.connect("g1", "alice").await;
        a.send_text(frame).await;
        let (code, reason) = a.recv_close().await;
        assert_eq!(code, 4000, "{frame}");
        assert!(reason.contains(part), "{frame}: reason {reason:?}");
        assert!(reason.len() <= 123);
    }
}

#[tokio::test]
async fn a_binary_frame_closes_4000() {
    let hub = TestHub::start().await;
    let mut a = hub.connect("g1", "alice").await;
    a.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let (code, reason) = a.recv_close().await;
    assert_eq!(code, 4000);
    assert!(reason.contains("binary"), "{reason}");
}

#[tokio::test]
async fn a_long_schema_reason_is_cut_to_123_bytes() {
    let hub = TestHub::start().await;
    let mut a = hub.connect("g1", "alice").await;
    let field = "f".repeat(300);
    a.send_text(format!(
        r#"{{"msg_type":"msg","target":"echo","{field}":1}}"#
    ))
    .await;
    let (code, reason) = a.recv_close().await;
    assert_eq!(code, 4000);
    assert_eq!(reason.len(), 123);
}

#[tokio::test]
async fn claiming_another_identity_closes_4003() {
    let hub = TestHub::start().await;
    let cases = [
        msg("group", json!({"from_id": "mallory"})),
        msg("group", json!({"group_id": "g2"})),
    ];
    for frame in cases {
        let mut a = hub.connect("g1", "alice").await;
        a.send(frame.clone()).await;
        assert_eq!(a.recv_close().await.0, 4003, "{frame}");
    }
}

#[tokio::test]
async fn client_broadcast_can_be_disabled_with_4003() {
    let hub = TestHub::with(|c| c.allow_client_broadcast = false).await;
    let mut a = hub.connect("g1", "alice").await;
    a.send(msg("broadcast", json!({}))).await;
    let (code, reason) = a.recv_close().await;
    assert_eq!(code, 4003);
    assert!(reason.contains("broadcast"), "{reason}");
}

#[tokio::test]
async fn sending_over_the_rate_limit_closes_4029() {
    let hub = TestHub::with(|c| c.rate_limit = 5).await;
    let mut a = hub.connect("g1", "alice").await;
    for i in 0..20 {
        a.send(msg("echo", json!({"payload": {"i": i}}))).await;
    }
    // The burst of 5 is served, then the socket is closed.
    let mut echoed = 0;
    loop {
        match a.next_event(support::TIMEOUT).await {
            Some(support::Event::Text(_)) => echoed += 1,
            Some(support::Event::Closed(code, _)) => {
                assert_eq!(code, 4029);
                break;
            }
            None => panic!("no close"),
        }
    }
    assert!((5..=6).contains(&echoed), "echoed {echoed}");
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_4408() {
    let hub = TestHub::with(|c| {
        c.idle_timeout = Duration::from_millis(600);
        c.ping_interval = Duration::from_millis(200);
    })
    .await;
    let mut silent = RawSocket::connect(hub.addr, "/v3/ws/group/g1/client/mute", None).await;
    let mut pings = 0;
    let code = loop {
        match silent.read_frame().await {
            Some(support::raw::Frame::Ping) => pings += 1,
            Some(support::raw::Frame::Close(code, _)) => break code,
            Some(_) => {}
            None => panic!("connection dropped without a close frame"),
        }
    };
    assert_eq!(code, 4408);
    assert!(pings >= 1, "the hub pinged before giving up");
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_open_past_the_idle_timeout() {
    let hub = TestHub::with(|c| {
        c.idle_timeout = Duration::from_millis(600);
        c.ping_interval = Duration::from_millis(100);
    })
    .await;
    let mut a = hub.connect("g1", "alice").await;
    // Reading lets tungstenite answer each ping with a pong.
    a.expect_silence(Duration::from_millis(1500)).await;
    a.send(msg("echo", json!({"msg": "still here"}))).await;
    assert_eq!(a.recv().await["msg"], "still here");
}

#[tokio::test]
async fn a_socket_that_stops_reading_is_dropped_4008_and_slows_nobody() {
    let hub = TestHub::with(|c| c.outbound_queue = 64).await;
    let path = "/v3/ws/group/g1/client/slow";
    let mut slow = RawSocket::connect(hub.addr, path, Some(4096)).await;
    let mut fast = hub.connect("g1", "fast").await;
    let mut sender = hub.connect("g1", "sender").await;

    // The sender stays at most WINDOW messages ahead of the fast reader, so
    // the fast socket's queue never fills; the slow one's does.
    const COUNT: usize = 1000;
    const WINDOW: usize = 16;
    let blob = "x".repeat(16 * 1024);
    let (progress, mut read) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while seen < COUNT {
            let got = fast.recv().await;
            if got["msg_type"] == "msg" {
                assert_eq!(got["payload"]["seq"], seen, "fast reader in order");
                seen += 1;
                let _ = progress.send(seen);
            }
        }
        seen
    });
    for seq in 0..COUNT {
        let caught_up = read.wait_for(|&seen| seen + WINDOW >= seq);
        tokio::time::timeout(support::TIMEOUT, caught_up)
            .await
            .expect("the fast reader keeps up")
            .expect("reader alive");
        sender
            .send(msg("group", json!({"msg": blob, "payload": {"seq": seq}})))
            .await;
    }
    assert_eq!(reader.await.unwrap(), COUNT, "the fast reader lost nothing");

    let (texts, code) = slow.read_until_close().await;
    assert_eq!(code, Some(4008));
    assert!(texts < COUNT, "the slow socket was cut off after {texts}");
    let dropped = hub
        .metric(r#"aether_messages_dropped_total{reason="slow_consumer"}"#)
        .await;
    assert!(dropped >= 1.0, "drop counted: {dropped}");
}
