//! Graceful shutdown of the real binary: on SIGTERM or SIGINT every socket
//! gets 1001 and the process exits 0 within the grace period. Also: bad
//! configuration stops start-up with a clear message.

mod support;

use std::process::Command;
use std::time::Duration;

use support::process::{signal, spawn_hub, wait_exit, BIN};
use support::Client;

async fn shuts_down_on(sig: libc::c_int) {
    let mut hub = spawn_hub(&[]).await;
    let url = |g: &str, c: &str| format!("ws://{}/v3/ws/group/{g}/client/{c}", hub.addr);
    let mut clients = Vec::new();
    for (g, c) in [("g1", "a"), ("g1", "b"), ("g2", "c")] {
        clients.push(Client::connect(&url(g, c), &[]).await.expect("connect"));
    }
    let members = hub.get("/v3/groups/g1/presence").await;
    assert_eq!(members.json()["members"], serde_json::json!(["a", "b"]));

    signal(&hub.child, sig);
    for client in &mut clients {
        let (code, _) = client.recv_close().await;
        assert_eq!(code, 1001);
    }
    let status = wait_exit(&mut hub.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[tokio::test]
async fn sigterm_closes_every_socket_with_1001_and_exits_0() {
    shuts_down_on(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_does_the_same() {
    shuts_down_on(libc::SIGINT).await;
}

#[test]
fn invalid_configuration_stops_start_up_with_a_message() {
    for (var, value, part) in [
        ("AETHER_BIND", "not-an-address", "AETHER_BIND"),
        ("AETHER_IDLE_TIMEOUT_SECS", "0", "more than 0"),
        (
            "AETHER_MAX_MESSAGE_BYTES",
            "lots",
            "AETHER_MAX_MESSAGE_BYTES",
        ),
        ("AETHER_LOG", "[[[", "AETHER_LOG"),
        ("AETHER_LOG_FORMAT", "xml", "AETHER_LOG_FORMAT"),
    ] {
        let out = Command::new(BIN)
            .env(var, value)
            .env(
                "AETHER_BIND",
                if var == "AETHER_BIND" {
                    value
                } else {
                    "127.0.0.1:0"
                },
            )
            .output()
            .expect("run");
        assert!(!out.status.success(), "{var}={value} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(part), "{var}={value}: {stderr}");
    }
}

#[test]
fn help_lists_every_setting() {
    let out = Command::new(BIN).arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "AETHER_BIND",
        "AETHER_REDIS_URL",
        "AETHER_REDIS_PREFIX",
        "AETHER_API_KEYS",
        "AETHER_ALLOWED_ORIGINS",
        "AETHER_ALLOW_CLIENT_BROADCAST",
        "AETHER_MAX_MESSAGE_BYTES",
        "AETHER_OUTBOUND_QUEUE",
        "AETHER_RATE_LIMIT",
        "AETHER_IDLE_TIMEOUT_SECS",
        "AETHER_PING_INTERVAL_SECS",
        "AETHER_PRESENCE_TTL_SECS",
        "AETHER_INSTANCE_ID",
        "AETHER_SHUTDOWN_GRACE_SECS",
        "AETHER_LOG",
        "AETHER_LOG_FORMAT",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
}
