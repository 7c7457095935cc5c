//! The hub serving `wss://` and `https://` itself (AETHER_TLS_CERT_FILE and
//! AETHER_TLS_KEY_FILE), with real rustls clients that trust a certificate
//! authority made in the test: the protocol over TLS, plain clients on the
//! TLS port, untrusted clients, files that do not load, and reloading the
//! certificate (in process and by SIGHUP to the real binary) while sockets
//! stay open.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use support::process::{self, Running};
use support::tls::{self, CertFiles, TestCa};
use support::tokens::{claims, hs256, secret, write_temp};
use support::{msg, Client, TestHub};
use tokio_tungstenite::tungstenite;

async fn tls_hub(files: &CertFiles, adjust: impl FnOnce(&mut aether_hub::Config)) -> TestHub {
    let (cert, key) = (files.cert.clone(), files.key.clone());
    TestHub::with(|c| {
        c.tls_cert_file = Some(cert);
        c.tls_key_file = Some(key);
        adjust(c);
    })
    .await
}

async fn wss(hub_addr: std::net::SocketAddr, group: &str, client: &str, ca: &TestCa) -> Client {
    let path = format!("/v3/ws/group/{group}/client/{client}");
    tls::connect(hub_addr, &path, ca, &[])
        .await
        .unwrap_or_else(|e| panic!("wss {group}/{client}: {e}"))
}

/// Echo on an open socket: it still works end to end.
async fn assert_alive(client: &mut Client, n: u64) {
    client.send(msg("echo", json!({"payload": {"n": n}}))).await;
    assert_eq!(client.recv().await["payload"]["n"], n);
}

#[tokio::test]
async fn the_protocol_runs_over_wss_and_the_http_api_over_https() {
    let ca = TestCa::new("main");
    let files = ca.files();
    let key = secret();
    let hub = tls_hub(&files, |c| c.token_secrets = vec![key.clone()]).await;

    // A token in the subprotocol, as a browser sends it, over TLS.
    let connect = |client: &'static str| {
        let token = hs256(&key, &claims(client, json!("line-3")));
        let offer = format!("aether.v3, aether.token.{token}");
        let path = format!("/v3/ws/group/line-3/client/{client}");
        let ca = &ca;
        async move {
            tls::connect(hub.addr, &path, ca, &[("Sec-WebSocket-Protocol", &offer)])
                .await
                .unwrap_or_else(|e| panic!("{client} over wss: {e}"))
        }
    };
    let mut controller = connect("planner").await;
    let mut worker = connect("robot-1").await;
    assert_eq!(controller.recv().await["payload"]["event"], "join");

    controller
        .send(msg(
            "group",
            json!({"cmd": "start", "payload": {"speed": 3}}),
        ))
        .await;
    let got = worker.recv().await;
    assert_eq!(got["cmd"], "start");
    assert_eq!(got["from_id"], "planner");
    assert_eq!(got["payload"]["speed"], 3);
    worker
        .send(msg("direct", json!({"to_id": "planner", "msg": "done"})))
        .await;
    assert_eq!(controller.recv().await["msg"], "done");

    let health = tls::https_get(hub.addr, "/healthz", &ca)
        .await
        .expect("https");
    assert_eq!(health.status, 200);
    let metrics = tls::https_get(hub.addr, "/metrics", &ca)
        .await
        .expect("https");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("aether_connections_open"),
        "{}",
        metrics.body
    );

    assert_eq!(worker.close().await, 1000);
    assert_eq!(controller.close().await, 1000);
}

#[tokio::test]
async fn a_plain_client_on_the_tls_port_is_told_to_use_tls() {
    let ca = TestCa::new("main");
    let hub = tls_hub(&ca.files(), |_| {}).await;

    match Client::connect(&hub.ws_url("g", "plain"), &[]).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let body = response.body().clone().unwrap_or_default();
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains("use https:// or wss://"), "{body}");
        }
        Err(e) => panic!("expected a 400 answer, got {e}"),
        Ok(_) => panic!("a plain WebSocket was accepted on the TLS port"),
    }
    let plain = hub.get("/healthz").await;
    assert_eq!(plain.status, 400);
    assert!(
        plain.body.contains("this port speaks TLS"),
        "{}",
        plain.body
    );

    // The hub goes on serving TLS clients.
    let mut c = wss(hub.addr, "g", "after", &ca).await;
    assert_alive(&mut c, 1).await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_is_refused_and_the_hub_goes_on() {
    let ca = TestCa::new("main");
    let stranger = TestCa::new("stranger");
    let hub = tls_hub(&ca.files(), |_| {}).await;

    let refused = tls::connect(hub.addr, "/v3/ws/group/g/client/c", &stranger, &[]).await;
    let err = refused
        .err()
        .expect("an untrusted certificate must be refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "unexpected error: {err}"
    );

    let mut c = wss(hub.addr, "g", "c", &ca).await;
    assert_alive(&mut c, 1).await;
}

#[tokio::test]
async fn certificates_that_do_not_load_stop_start_up_with_the_setting_named() {
    let ca = TestCa::new("main");
    let good = ca.files();
    let other = ca.files();
    let (_, key_pem) = ca.leaf();
    let missing = std::env::temp_dir().join("aether-no-such-file.pem");
    let garbage = write_temp("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64!\n");
    let key_in_cert_slot = write_temp("key-as-cert.pem", &key_pem);
    let cert_in_key_slot = good.cert.clone();

    for (cert, key, names, why) in [
        (
            &missing,
            &good.key,
            "AETHER_TLS_CERT_FILE",
            "missing certificate file",
        ),
        (
            &garbage,
            &good.key,
            "AETHER_TLS_CERT_FILE",
            "certificate that does not parse",
        ),
        (
            &key_in_cert_slot,
            &good.key,
            "AETHER_TLS_CERT_FILE",
            "no certificate in the file",
        ),
        (
            &good.cert,
            &missing,
            "AETHER_TLS_KEY_FILE",
            "missing key file",
        ),
        (
            &good.cert,
            &cert_in_key_slot,
            "AETHER_TLS_KEY_FILE",
            "no key in the file",
        ),
        (
            &good.cert,
            &other.key,
            "AETHER_TLS_CERT_FILE and AETHER_TLS_KEY_FILE",
            "a key of another certificate",
        ),
    ] {
        let mut config = aether_hub::Config::for_tests();
        config.tls_cert_file = Some(cert.clone());
        config.tls_key_file = Some(key.clone());
        let started = aether_hub::Server::start(config.validate().expect("valid")).await;
        let err = match started {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{why}: the hub started"),
        };
        assert!(err.contains(names), "{why}: {err}");
        // The key's own bytes never appear in the message.
        let key_body: String = key_pem.lines().nth(1).unwrap_or_default().to_owned();
        assert!(!err.contains(&key_body), "{why}: key material in {err}");
    }
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_and_keeps_open_sockets() {
    let (old_ca, new_ca) = (TestCa::new("old"), TestCa::new("new"));
    let files = old_ca.files();
    let hub = tls_hub(&files, |_| {}).await;
    let mut before = wss(hub.addr, "g", "before", &old_ca).await;

    files.overwrite_with(&new_ca.files());
    assert!(
        hub.server.reload_tls().expect("reload"),
        "TLS is configured"
    );

    let mut after = wss(hub.addr, "g", "after", &new_ca).await;
    assert!(
        tls::connect(hub.addr, "/v3/ws/group/g/client/x", &old_ca, &[])
            .await
            .is_err(),
        "new handshakes must use the new certificate"
    );
    assert_eq!(before.recv().await["payload"]["event"], "join");
    assert_alive(&mut before, 1).await;
    assert_alive(&mut after, 2).await;

    // A broken file on reload: an error, and the current certificate stays.
    std::fs::write(&files.key, "not a key").expect("write");
    let err = hub
        .server
        .reload_tls()
        .expect_err("a broken key must not load");
    assert!(err.to_string().contains("AETHER_TLS_KEY_FILE"), "{err}");
    let mut again = wss(hub.addr, "g2", "again", &new_ca).await;
    assert_alive(&mut again, 3).await;
    assert_alive(&mut before, 4).await;
}

/// Starts the real binary with TLS; returns once `/readyz` answers over
/// HTTPS.
async fn spawn_tls_binary(files: &CertFiles, ca: &TestCa) -> Running {
    let running = process::launch(
        &[
            ("AETHER_TLS_CERT_FILE", files.cert.to_str().expect("path")),
            ("AETHER_TLS_KEY_FILE", files.key.to_str().expect("path")),
        ],
        Stdio::null(),
    );
    let deadline = Instant::now() + support::TIMEOUT;
    loop {
        if let Ok(ready) = tls::https_get(running.addr, "/readyz", ca).await {
            if ready.status == 200 {
                return running;
            }
        }
        assert!(Instant::now() < deadline, "TLS hub did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_of_the_real_binary_without_dropping_sockets() {
    let (old_ca, new_ca) = (TestCa::new("old"), TestCa::new("new"));
    let files = old_ca.files();
    let hub = spawn_tls_binary(&files, &old_ca).await;
    let mut open = wss(hub.addr, "g", "open", &old_ca).await;

    files.overwrite_with(&new_ca.files());
    process::signal(&hub.child, libc::SIGHUP);
    let deadline = Instant::now() + support::TIMEOUT;
    let mut fresh = loop {
        let path = "/v3/ws/group/g/client/fresh";
        if let Ok(c) = tls::connect(hub.addr, path, &new_ca, &[]).await {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(open.recv().await["payload"]["event"], "join");
    assert_alive(&mut open, 1).await;
    assert_alive(&mut fresh, 2).await;
}

#[tokio::test]
async fn sighup_without_tls_is_harmless() {
    let mut hub = process::spawn_hub(&[]).await;
    let mut c = Client::connect(&hub.ws_url("g", "c"), &[])
        .await
        .expect("connect");
    process::signal(&hub.child, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        hub.child.try_wait().expect("wait").is_none(),
        "SIGHUP stopped the hub"
    );
    assert_alive(&mut c, 1).await;
    assert_eq!(hub.get("/readyz").await.status, 200);
}
