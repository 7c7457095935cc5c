//! Capacity limits (docs/protocol.md section 1): an instance at its connection
//! limit answers 503 before doing any work and stays ready; a client at
//! its per-instance socket limit gets 429; both are counted by reason.

mod support;

use support::{eventually, Client, TestHub};

const REFUSED: &str = "aether_upgrades_refused_total";

fn refused(reason: &str) -> String {
    format!("{REFUSED}{{reason=\"{reason}\"}}")
}

#[tokio::test]
async fn an_instance_at_its_limit_answers_503_and_stays_ready() {
    let secret = support::tokens::secret();
    let hub = TestHub::with(|c| {
        c.max_connections = Some(2);
        c.token_secrets = vec![secret.clone()];
    })
    .await;
    let before = hub.metric(&refused("capacity")).await;
    let token = |sub: &str| {
        let claims = support::tokens::claims(sub, serde_json::json!("g1"));
        format!("Bearer {}", support::tokens::hs256(&secret, &claims))
    };
    let connect = |sub: &'static str| {
        let url = hub.ws_url("g1", sub);
        let auth = token(sub);
        async move { Client::connect(&url, &[("Authorization", &auth)]).await }
    };
    let a = connect("a").await.expect("first socket");
    let _b = connect("b").await.expect("second socket");

    let (code, body) = hub
        .upgrade_status(
            "/v3/ws/group/g1/client/c",
            &[("Authorization", &token("c"))],
        )
        .await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("connection limit"), "{body}");
    // Refused before the credentials are even looked at.
    let junk = [("Authorization", "Bearer junk")];
    assert_eq!(
        hub.upgrade_status("/v3/ws/group/g1/client/c", &junk)
            .await
            .0,
        503
    );
    // Full is not sick: the load balancer should keep the instance.
    assert_eq!(hub.get("/readyz").await.status, 200);
    assert_eq!(hub.get("/healthz").await.status, 200);
    assert_eq!(hub.metric("aether_connections_max").await, 2.0);
    assert!(hub.metric(&refused("capacity")).await >= before + 2.0);

    // A socket that leaves gives its place back.
    assert_eq!(a.close().await, 1000);
    eventually("a place is free again", || async {
        match connect("c").await {
            Ok(c) => {
                c.close().await;
                true
            }
            Err(_) => false,
        }
    })
    .await;
}

#[tokio::test]
async fn a_client_beyond_its_socket_limit_gets_429() {
    let hub = TestHub::with(|c| c.max_sockets_per_client = 2).await;
    let before = hub.metric(&refused("client_limit")).await;
    let _one = hub.connect("g1", "tabby").await;
    let _two = hub.connect("g2", "tabby").await;
    let (code, body) = hub
        .upgrade_status("/v3/ws/group/g3/client/tabby", &[])
        .await;
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("2 sockets"), "{body}");
    // Other clients are not affected.
    assert_eq!(
        hub.upgrade_status("/v3/ws/group/g1/client/other", &[])
            .await
            .0,
        101
    );
    assert!(hub.metric(&refused("client_limit")).await >= before + 1.0);
    // The refused attempt left no trace: the client has exactly two.
    let members = hub.get("/v3/groups/g3/presence").await.json();
    assert_eq!(members["members"], serde_json::json!([]));
}

#[tokio::test]
async fn the_per_client_limit_defaults_to_16_and_0_turns_it_off() {
    let hub = TestHub::start().await;
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(hub.connect("g1", "many").await);
    }
    assert_eq!(
        hub.upgrade_status("/v3/ws/group/g1/client/many", &[])
            .await
            .0,
        429
    );

    let unlimited = TestHub::with(|c| c.max_sockets_per_client = 0).await;
    for _ in 0..40 {
        held.push(unlimited.connect("g1", "many").await);
    }
}

#[tokio::test]
async fn every_refusal_reason_is_exported_from_the_start() {
    let hub = TestHub::start().await;
    let text = hub.get("/metrics").await.body;
    for reason in [
        "capacity",
        "client_limit",
        "unauthorized",
        "forbidden",
        "bad_request",
        "unavailable",
        "rate",
    ] {
        assert!(text.contains(&refused(reason)), "{reason} missing:\n{text}");
    }
    assert!(text.contains("aether_connections_max "), "{text}");
}
