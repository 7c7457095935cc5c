//! Identity tokens (docs/protocol.md section 8) over real sockets: every claim
//! rule accepted and refused, the three places a token travels, keys and
//! tokens together, capabilities per frame, expiry of an open socket, the
//! HTTP API with tokens, and two instances through Redis.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use support::redis::RedisServer;
use support::tokens::{self, claims, hs256, with, SigningKey};
use support::{msg, Client, TestHub};

const PATH: &str = "/v3/ws/group/g1/client/alice";

/// A hub with two HS256 secrets and a JWKS of four public keys.
struct Setup {
    hub: TestHub,
    secrets: [String; 2],
    rsa: SigningKey,
    ec: SigningKey,
    ec2: SigningKey,
    ed: SigningKey,
}

async fn setup(adjust: impl FnOnce(&mut aether_hub::Config)) -> Setup {
    let secrets = [tokens::secret(), tokens::secret()];
    let (rsa, ec, ec2, ed) = (
        SigningKey::rsa("rsa-1"),
        SigningKey::es256("ec-1"),
        SigningKey::es256("ec-2"),
        SigningKey::ed25519("ed-1"),
    );
    let jwks = tokens::jwks_file(&[&rsa, &ec, &ec2, &ed]);
    let hub = TestHub::with(|c| {
        c.token_secrets = secrets.to_vec();
        c.token_jwks_file = Some(jwks);
        adjust(c);
    })
    .await;
    Setup {
        hub,
        secrets,
        rsa,
        ec,
        ec2,
        ed,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The status an upgrade of `path` with `token` as a Bearer header gets.
async fn status(hub: &TestHub, path: &str, token: &str) -> (u16, String) {
    hub.upgrade_status(path, &[("Authorization", &bearer(token))])
        .await
}

#[tokio::test]
async fn every_claim_rule_is_accepted_or_refused() {
    let s = setup(|c| c.token_leeway_secs = 30).await;
    let alice = || claims("alice", json!("g1"));
    let now = tokens::now();
    let stranger = tokens::secret();
    // A valid token whose payload is swapped for another's.
    let tampered = {
        let good = hs256(&s.secrets[0], &alice());
        let other = hs256(&s.secrets[0], &claims("bob", json!("*")));
        let parts: Vec<&str> = good.split('.').collect();
        let payload = other.split('.').nth(1).unwrap();
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    let cases: Vec<(&str, String, u16)> = vec![
        ("HS256, first secret", hs256(&s.secrets[0], &alice()), 101),
        ("HS256, second secret", hs256(&s.secrets[1], &alice()), 101),
        ("RS256 by kid", s.rsa.sign(&alice()), 101),
        ("ES256 by kid", s.ec.sign(&alice()), 101),
        ("ES256, the other kid", s.ec2.sign(&alice()), 101),
        ("EdDSA by kid", s.ed.sign(&alice()), 101),
        ("wrong signature", tampered, 401),
        ("wrong secret", hs256(&stranger, &alice()), 401),
        ("alg none", tokens::unsigned(&alice()), 401),
        (
            "HS256 keyed with a public key",
            hs256(
                std::str::from_utf8(&s.rsa.public_bytes).unwrap_or("x"),
                &alice(),
            ),
            401,
        ),
        (
            "ES256 token naming the RSA key",
            s.ec.sign_as(Algorithm::ES256, Some("rsa-1"), &alice()),
            401,
        ),
        (
            "RS256 key claiming RS384",
            s.rsa.sign_as(Algorithm::RS384, Some("rsa-1"), &alice()),
            401,
        ),
        (
            "unknown kid",
            s.ec.sign_as(Algorithm::ES256, Some("nobody"), &alice()),
            401,
        ),
        (
            "no kid with several keys",
            s.ec.sign_as(Algorithm::ES256, None, &alice()),
            401,
        ),
        (
            "expired",
            hs256(&s.secrets[0], &with(alice(), json!({"exp": now - 60}))),
            401,
        ),
        (
            "expired, within the leeway",
            hs256(&s.secrets[0], &with(alice(), json!({"exp": now - 10}))),
            101,
        ),
        (
            "not yet valid",
            hs256(&s.secrets[0], &with(alice(), json!({"nbf": now + 120}))),
            401,
        ),
        (
            "nbf within the leeway",
            hs256(&s.secrets[0], &with(alice(), json!({"nbf": now + 10}))),
            101,
        ),
        (
            "issued in the future",
            hs256(&s.secrets[0], &with(alice(), json!({"iat": now + 120}))),
            401,
        ),
        (
            "wrong audience",
            hs256(&s.secrets[0], &with(alice(), json!({"aud": "other"}))),
            401,
        ),
        (
            "audience in an array",
            hs256(
                &s.secrets[0],
                &with(alice(), json!({"aud": ["other", "aether-hub"]})),
            ),
            101,
        ),
        (
            "no audience",
            hs256(&s.secrets[0], &with(alice(), json!({"aud": null}))),
            401,
        ),
        (
            "exp as a string",
            hs256(
                &s.secrets[0],
                &with(alice(), json!({"exp": (now + 3600).to_string()})),
            ),
            401,
        ),
        (
            "no exp",
            hs256(&s.secrets[0], &with(alice(), json!({"exp": null}))),
            401,
        ),
        (
            "grp as a number",
            hs256(&s.secrets[0], &with(alice(), json!({"grp": 7}))),
            401,
        ),
        (
            "no grp",
            hs256(&s.secrets[0], &with(alice(), json!({"grp": null}))),
            401,
        ),
        (
            "sub as a number",
            hs256(&s.secrets[0], &with(alice(), json!({"sub": 7}))),
            401,
        ),
        (
            "cap of unknown capabilities",
            hs256(&s.secrets[0], &with(alice(), json!({"cap": ["fly"]}))),
            401,
        ),
        (
            "cap as a string",
            hs256(&s.secrets[0], &with(alice(), json!({"cap": "msg"}))),
            401,
        ),
        ("not a JWT", "not-a-token".into(), 401),
        (
            "another client",
            hs256(&s.secrets[0], &claims("bob", json!("g1"))),
            403,
        ),
        (
            "group not in grp",
            hs256(&s.secrets[0], &claims("alice", json!("g2"))),
            403,
        ),
        (
            "grp \"*\"",
            hs256(&s.secrets[0], &claims("alice", json!("*"))),
            101,
        ),
        (
            "grp array with the group",
            hs256(&s.secrets[0], &claims("alice", json!(["g0", "g1"]))),
            101,
        ),
        (
            "grp array without the group",
            hs256(&s.secrets[0], &claims("alice", json!(["g0", "g2"]))),
            403,
        ),
        (
            "empty grp array",
            hs256(&s.secrets[0], &claims("alice", json!([]))),
            403,
        ),
    ];
    for (what, token, want) in cases {
        let (got, body) = status(&s.hub, PATH, &token).await;
        assert_eq!(got, want, "{what}: {body}");
        if got != 101 {
            assert!(
                body.contains("token"),
                "{what}: the reason says why: {body}"
            );
            assert!(!body.contains(&token), "{what}: the token is not echoed");
        }
    }
}

#[tokio::test]
async fn an_issuer_is_required_once_configured() {
    let s = setup(|c| c.token_issuer = Some("https://backend.example".into())).await;
    let alice = claims("alice", json!("g1"));
    let signed = |c: &Value| hs256(&s.secrets[0], c);
    let right = with(alice.clone(), json!({"iss": "https://backend.example"}));
    let wrong = with(alice.clone(), json!({"iss": "https://evil.example"}));
    assert_eq!(status(&s.hub, PATH, &signed(&right)).await.0, 101);
    assert_eq!(status(&s.hub, PATH, &signed(&wrong)).await.0, 401);
    assert_eq!(status(&s.hub, PATH, &signed(&alice)).await.0, 401);
}

#[tokio::test]
async fn an_hmac_token_is_refused_by_a_hub_with_public_keys_only() {
    let ec = SigningKey::es256("only");
    let jwks = tokens::jwks_file(&[&ec]);
    let hub = TestHub::with(|c| c.token_jwks_file = Some(jwks)).await;
    let alice = claims("alice", json!("g1"));
    assert_eq!(status(&hub, PATH, &ec.sign(&alice)).await.0, 101);
    // With one key, a token need not name it.
    let no_kid = ec.sign_as(Algorithm::ES256, None, &alice);
    assert_eq!(status(&hub, PATH, &no_kid).await.0, 101);
    let hmac = hs256(&tokens::secret(), &alice);
    let (code, body) = status(&hub, PATH, &hmac).await;
    assert_eq!(code, 401);
    assert!(body.contains("HS256"), "{body}");
    // The public key itself used as an HMAC secret gets nowhere either.
    let confused = hs256(std::str::from_utf8(&[b'k'; 8]).unwrap(), &alice);
    assert_eq!(status(&hub, PATH, &confused).await.0, 401);
}

#[tokio::test]
async fn a_token_travels_in_the_subprotocol_a_bearer_header_or_the_query() {
    let s = setup(|_| {}).await;
    let token = hs256(&s.secrets[0], &claims("alice", json!("g1")));
    let url = s.hub.ws_url("g1", "alice");

    let protocols = format!("aether.v3, aether.token.{token}");
    let (client, answer) =
        Client::connect_answered(&url, &[("Sec-WebSocket-Protocol", &protocols)])
            .await
            .expect("subprotocol token accepted");
    let chosen = answer.headers().get("sec-websocket-protocol");
    assert_eq!(chosen.map(|v| v.to_str().unwrap()), Some("aether.v3"));
    assert_eq!(client.close().await, 1000);

    let by_header = Client::connect(&url, &[("Authorization", &bearer(&token))]).await;
    assert!(by_header.is_ok(), "Authorization: Bearer accepted");
    let by_query = Client::connect(&format!("{url}?token={token}"), &[]).await;
    assert!(by_query.is_ok(), "?token= accepted");

    // The subprotocol is preferred: a good one wins over a bad header.
    let headers = [
        ("Sec-WebSocket-Protocol", protocols.as_str()),
        ("Authorization", "Bearer not-a-token"),
    ];
    assert_eq!(s.hub.upgrade_status(PATH, &headers).await.0, 101);
    // Nothing at all.
    let (code, body) = s.hub.upgrade_status(PATH, &[]).await;
    assert_eq!(code, 401);
    assert!(body.contains("missing token"), "{body}");
}

#[tokio::test]
async fn a_client_offering_aether_v3_without_a_token_gets_the_same_answer() {
    let hub = TestHub::start().await;
    let (client, answer) = Client::connect_answered(
        &hub.ws_url("g1", "alice"),
        &[("Sec-WebSocket-Protocol", "aether.v3")],
    )
    .await
    .expect("open hub");
    let chosen = answer.headers().get("sec-websocket-protocol");
    assert_eq!(chosen.map(|v| v.to_str().unwrap()), Some("aether.v3"));
    assert_eq!(client.close().await, 1000);
}

#[tokio::test]
async fn which_credential_is_needed_follows_the_table() {
    let key = tokens::secret();
    let secret = tokens::secret();
    let token = hs256(&secret, &claims("alice", json!("g1")));
    let key_header = ("X-Aether-API-Key", key.as_str());
    let auth_header = bearer(&token);
    let token_header = ("Authorization", auth_header.as_str());
    let bob_auth = bearer(&hs256(&secret, &claims("bob", json!("g1"))));

    let keys_only = TestHub::with(|c| c.api_keys = vec![key.clone()]).await;
    assert_eq!(keys_only.upgrade_status(PATH, &[key_header]).await.0, 101);
    assert_eq!(keys_only.upgrade_status(PATH, &[token_header]).await.0, 401);

    let tokens_only = TestHub::with(|c| c.token_secrets = vec![secret.clone()]).await;
    assert_eq!(
        tokens_only.upgrade_status(PATH, &[token_header]).await.0,
        101
    );
    assert_eq!(tokens_only.upgrade_status(PATH, &[key_header]).await.0, 401);

    let both = TestHub::with(|c| {
        c.api_keys = vec![key.clone()];
        c.token_secrets = vec![secret.clone()];
    })
    .await;
    assert_eq!(both.upgrade_status(PATH, &[key_header]).await.0, 101);
    assert_eq!(both.upgrade_status(PATH, &[token_header]).await.0, 101);
    let (code, body) = both.upgrade_status(PATH, &[]).await;
    assert_eq!((code, body.as_str()), (401, "missing token or API key"));
    // A key is a trusted service: any client in any group.
    let anyone = "/v3/ws/group/other/client/svc";
    assert_eq!(both.upgrade_status(anyone, &[key_header]).await.0, 101);
    let wrong_key = ("X-Aether-API-Key", "nope");
    assert_eq!(
        both.upgrade_status(PATH, &[wrong_key, token_header])
            .await
            .0,
        101
    );
    // A token for someone else, but a valid key beside it.
    let bob_token = ("Authorization", bob_auth.as_str());
    assert_eq!(
        both.upgrade_status(PATH, &[key_header, bob_token]).await.0,
        101
    );
    assert_eq!(both.upgrade_status(PATH, &[bob_token]).await.0, 403);

    let neither = TestHub::start().await;
    assert_eq!(neither.upgrade_status(PATH, &[]).await.0, 101);
    // With nothing configured a token is not even looked at.
    let junk = ("Authorization", "Bearer junk");
    assert_eq!(neither.upgrade_status(PATH, &[junk]).await.0, 101);
}

#[tokio::test]
async fn capabilities_are_checked_on_every_frame() {
    let s = setup(|_| {}).await;
    let token = |sub: &str, cap: Value| {
        let c = with(claims(sub, json!("g1")), json!({"cap": cap}));
        hs256(&s.secrets[0], &c)
    };
    let connect = |sub: &str, token: String| {
        let url = s.hub.ws_url("g1", sub);
        async move {
            Client::connect(&url, &[("Authorization", &bearer(&token))])
                .await
                .expect("connect")
        }
    };
    let mut worker = connect("worker", token("worker", json!(["msg", "group"]))).await;
    let mut controller = connect("boss", token("boss", json!(["cmd", "group"]))).await;
    assert_eq!(worker.recv().await["payload"]["event"], "join");

    // Allowed: routed.
    let cmd = json!({"msg_type": "cmd", "target": "group", "cmd": "start"});
    controller.send(cmd.clone()).await;
    assert_eq!(worker.recv().await["cmd"], "start");
    worker.send(msg("group", json!({"msg": "done"}))).await;
    assert_eq!(controller.recv().await["msg"], "done");
    // Always allowed: heartbeats, presence queries, echoes.
    worker
        .send(json!({"msg_type": "heartbeat", "target": "echo"}))
        .await;
    assert_eq!(worker.recv().await["msg_type"], "heartbeat");
    worker
        .send(json!({"msg_type": "cmd", "target": "echo", "cmd": "x"}))
        .await;
    assert_eq!(worker.recv().await["cmd"], "x");

    // Outside its caps: 4003 naming what was missing, and nothing routed.
    worker.send(cmd).await;
    let (code, reason) = worker.recv_close().await;
    assert_eq!((code, reason.as_str()), (4003, "token does not allow cmd"));
    controller.send(msg("broadcast", json!({}))).await;
    let (code, reason) = controller.recv_close().await;
    assert_eq!(code, 4003, "{reason}");
    assert!(
        reason.contains("msg") || reason.contains("broadcast"),
        "{reason}"
    );
}

#[tokio::test]
async fn an_open_socket_is_closed_with_4001_when_its_token_expires() {
    let secret = tokens::secret();
    let leeway = 1;
    let hub = TestHub::with(|c| {
        c.token_secrets = vec![secret.clone()];
        c.token_leeway_secs = leeway;
    })
    .await;
    let exp = tokens::now() + 2;
    let token = hs256(
        &secret,
        &with(claims("alice", json!("g1")), json!({"exp": exp})),
    );
    let mut alice = Client::connect(
        &hub.ws_url("g1", "alice"),
        &[("Authorization", &bearer(&token))],
    )
    .await
    .expect("connect");
    let mut bob_token_holder = with_token(&hub, &secret, "bob").await;
    let opened = Instant::now();
    assert_eq!(alice.recv().await["payload"]["event"], "join");

    // Alive until then: it still sends and receives.
    alice.send(msg("echo", json!({"msg": "still valid"}))).await;
    assert_eq!(alice.recv().await["msg"], "still valid");

    let (code, reason) = alice.recv_close().await;
    let closed_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!((code, reason.as_str()), (4001, "token expired"));
    let deadline = (exp + leeway) as f64;
    assert!(
        closed_at >= deadline - 0.05,
        "closed {:.2} s before exp + leeway",
        deadline - closed_at
    );
    assert!(
        closed_at <= deadline + 1.0,
        "closed {:.2} s after exp + leeway",
        closed_at - deadline
    );
    assert!(opened.elapsed() < Duration::from_secs(10));
    // The other socket, whose token lasts, is untouched; alice left.
    let left = bob_token_holder.recv().await;
    assert_eq!(
        left["payload"],
        json!({"event": "leave", "client_id": "alice"})
    );
}

/// A socket of `sub` in g1 with an hour-long token.
async fn with_token(hub: &TestHub, secret: &str, sub: &str) -> Client {
    let token = hs256(secret, &claims(sub, json!("g1")));
    Client::connect(
        &hub.ws_url("g1", sub),
        &[("Authorization", &bearer(&token))],
    )
    .await
    .expect("connect")
}

#[tokio::test]
async fn presence_and_publish_over_http_with_tokens() {
    let key = tokens::secret();
    let s = setup(|c| c.api_keys = vec![key.clone()]).await;
    let sign = |sub: &str, grp: Value, cap: Option<Value>| {
        let mut c = claims(sub, grp);
        if let Some(cap) = cap {
            c = with(c, json!({ "cap": cap }));
        }
        bearer(&hs256(&s.secrets[0], &c))
    };
    let mut worker = with_token(&s.hub, &s.secrets[0], "worker").await;
    let get = |auth: String| {
        let addr = s.hub.addr;
        async move {
            support::http_request(
                addr,
                "GET",
                "/v3/groups/g1/presence",
                &[("Authorization", &auth)],
                "",
            )
            .await
        }
    };

    let listed = get(sign("viewer", json!(["g1"]), None)).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.json()["members"], json!(["worker"]));
    let other_group = get(sign("viewer", json!("g2"), None)).await;
    assert_eq!(other_group.status, 403);
    assert!(other_group.json()["error"].is_string());
    assert_eq!(get("Bearer junk".into()).await.status, 401);
    assert_eq!(s.hub.get("/v3/groups/g1/presence").await.status, 401);
    let by_key = support::http_request(
        s.hub.addr,
        "GET",
        "/v3/groups/g1/presence",
        &[("X-Aether-API-Key", &key)],
        "",
    )
    .await;
    assert_eq!(by_key.status, 200);

    let publish = |auth: String, body: Value| {
        let addr = s.hub.addr;
        async move {
            support::http_request(
                addr,
                "POST",
                "/v3/publish",
                &[("Authorization", &auth)],
                &body.to_string(),
            )
            .await
        }
    };
    let cmd = |from: &str, group: &str| {
        json!({"msg_type": "cmd", "target": "group", "from_id": from,
               "group_id": group, "cmd": "start"})
    };
    let planner = sign("planner", json!("g1"), Some(json!(["cmd", "group"])));
    let ok = publish(planner.clone(), cmd("planner", "g1")).await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    assert_eq!(worker.recv().await["cmd"], "start");

    for (what, auth, body, want) in [
        (
            "another from_id",
            planner.clone(),
            cmd("impostor", "g1"),
            403,
        ),
        (
            "a group outside grp",
            planner.clone(),
            cmd("planner", "g2"),
            403,
        ),
        (
            "a capability it lacks",
            sign("planner", json!("g1"), Some(json!(["msg", "group"]))),
            cmd("planner", "g1"),
            403,
        ),
        (
            "broadcast without the capability",
            planner.clone(),
            json!({"msg_type": "cmd", "target": "broadcast", "from_id": "planner"}),
            403,
        ),
        (
            "an invalid token",
            "Bearer junk".into(),
            cmd("planner", "g1"),
            401,
        ),
    ] {
        let refused = publish(auth, body).await;
        assert_eq!(refused.status, want, "{what}: {}", refused.body);
        assert!(refused.json()["error"].is_string(), "{what}");
    }
    worker.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_token_works_the_same_across_two_instances_through_redis() {
    let redis = RedisServer::start();
    let secret = tokens::secret();
    let configure = |c: &mut aether_hub::Config| c.token_secrets = vec![secret.clone()];
    let a = TestHub::on_redis(&redis, configure).await;
    let b = TestHub::on_redis(&redis, configure).await;
    let worker_token = with(
        claims("worker", json!("g1")),
        json!({"cap": ["msg", "group"]}),
    );
    let mut worker = Client::connect(
        &a.ws_url("g1", "worker"),
        &[("Authorization", &bearer(&hs256(&secret, &worker_token)))],
    )
    .await
    .expect("worker on a");
    let mut boss = with_token(&b, &secret, "boss").await;
    assert_eq!(worker.recv().await["payload"]["event"], "join");

    boss.send(json!({"msg_type": "cmd", "target": "group", "cmd": "go"}))
        .await;
    assert_eq!(worker.recv().await["cmd"], "go");
    // The same refusals on either instance.
    let bob = hs256(&secret, &claims("bob", json!("g1")));
    assert_eq!(status(&a, PATH, &bob).await.0, 403);
    assert_eq!(status(&b, PATH, &bob).await.0, 403);
    worker
        .send(json!({"msg_type": "cmd", "target": "group", "cmd": "no"}))
        .await;
    assert_eq!(worker.recv_close().await.0, 4003);
}
