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
    // The configuration table of docs/running.md, one row per setting.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/running.md"))
        .expect("docs/running.md");
    let documented: Vec<&str> = readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `AETHER_")?.split('`').next())
        .collect();
    assert!(
        documented.len() >= 28,
        "the table of docs/running.md: {documented:?}"
    );
    for var in &documented {
        assert!(
            help.contains(&format!("AETHER_{var}")),
            "AETHER_{var} missing from --help"
        );
    }
    let named = help.split(|c: char| !(c.is_ascii_uppercase() || c == '_'));
    for var in named.filter_map(|word| word.strip_prefix("AETHER_")) {
        assert!(
            documented.contains(&var),
            "AETHER_{var} missing from the table of docs/running.md"
        );
    }
    assert!(
        help.contains("aether-hub token"),
        "the token subcommand is named"
    );
}

/// A JWKS file that cannot be used stops start-up, naming the variable.
#[test]
fn a_bad_jwks_file_stops_start_up() {
    let bad_key = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#;
    for (text, part) in [
        (None, "cannot read"),
        (Some("{not json"), "not a JWKS document"),
        (Some(bad_key), "symmetric"),
    ] {
        let path = match text {
            Some(text) => support::tokens::write_temp("jwks.json", text),
            None => std::env::temp_dir().join("aether-no-such-jwks.json"),
        };
        let out = Command::new(BIN)
            .env("AETHER_TOKEN_JWKS_FILE", &path)
            .env("AETHER_BIND", "127.0.0.1:0")
            .output()
            .expect("run");
        assert!(!out.status.success(), "{text:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("AETHER_TOKEN_JWKS_FILE"), "{stderr}");
        assert!(stderr.contains(part), "{text:?}: {stderr}");
    }
}

/// TLS files that cannot be used stop the binary, naming the variable.
#[test]
fn bad_tls_files_stop_start_up() {
    let cert = support::tokens::write_temp("cert.pem", "not a certificate");
    let missing = std::env::temp_dir().join("aether-no-such-key.pem");
    for (env, part) in [
        (vec![("AETHER_TLS_CERT_FILE", &cert)], "set both or neither"),
        (
            vec![
                ("AETHER_TLS_CERT_FILE", &cert),
                ("AETHER_TLS_KEY_FILE", &missing),
            ],
            "AETHER_TLS_CERT_FILE",
        ),
    ] {
        let out = Command::new(BIN)
            .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .env("AETHER_BIND", "127.0.0.1:0")
            .output()
            .expect("run");
        assert!(!out.status.success(), "{env:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(part), "{env:?}: {stderr}");
    }
}

/// `aether-hub token` signs what a hub with the same secret accepts.
#[tokio::test]
async fn the_token_subcommand_signs_a_development_token() {
    let secret = support::tokens::secret();
    let out = Command::new(BIN)
        .args([
            "token",
            "--sub",
            "alice",
            "--grp",
            "g1",
            "--cap",
            "msg,group",
        ])
        .args(["--ttl", "60"])
        .env("AETHER_TOKEN_SECRETS", format!("{secret},older"))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let hub = support::process::spawn_hub(&[("AETHER_TOKEN_SECRETS", &secret)]).await;
    let url = format!("{}?token={token}", hub.ws_url("g1", "alice"));
    let mut alice = support::Client::connect(&url, &[]).await.expect("accepted");
    alice
        .send(serde_json::json!({"msg_type": "cmd", "target": "group"}))
        .await;
    let (code, reason) = alice.recv_close().await;
    assert_eq!((code, reason.as_str()), (4003, "token does not allow cmd"));
    let elsewhere = format!("{}?token={token}", hub.ws_url("g2", "alice"));
    assert!(support::Client::connect(&elsewhere, &[]).await.is_err());

    for (args, part) in [
        (&["--sub", "a b", "--grp", "g"][..], "--sub"),
        (&["--sub", "a", "--grp", "g", "--cap", "fly"][..], "--cap"),
    ] {
        let out = Command::new(BIN)
            .arg("token")
            .args(args)
            .env("AETHER_TOKEN_SECRETS", &secret)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(part));
    }
    let unsigned = Command::new(BIN)
        .args(["token", "--sub", "a", "--grp", "g"])
        .env_remove("AETHER_TOKEN_SECRETS")
        .output()
        .expect("run");
    assert_eq!(unsigned.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unsigned.stderr).contains("AETHER_TOKEN_SECRETS"));
}
