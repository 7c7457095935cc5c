//! The operators' server API (docs/protocol.md section 11) across
//! instances: two hubs on one real redis-server, and two on the shared
//! real Redis Cluster (six redis-server processes), each cluster test
//! under a Redis prefix of its own. A call on one instance must act on
//! the sockets of the other; revocations outlive every instance; the
//! fleet view counts each instance's sockets; history read over HTTP on
//! one instance is what sockets on the other received.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::admin::{
    admin_get, admin_post, assert_closed, assert_members, assert_open, assert_refused,
    assert_status, connect_keyed, connect_token, disconnect, history, history_paged, info_until,
    members, next_message, presence, presence_event, publish, revoke, token, upgrade_with, Cred,
    ADMIN, CLIENT_KEY, PROPAGATION, REVOKED,
};
use support::cluster::Cluster;
use support::redis::RedisServer;
use support::tokens::{self, now};
use support::{msg, Client, TestHub, TIMEOUT};

/// What every hub here is given: the admin key, the client key, `secret`
/// as token key, and a 3 s presence TTL (liveness records every second).
fn configure(c: &mut aether_hub::Config, id: &str, secret: &str) {
    c.admin_api_keys = vec![ADMIN.into()];
    c.api_keys = vec![CLIENT_KEY.into()];
    c.token_secrets = vec![secret.to_owned()];
    c.presence_ttl = Duration::from_secs(3);
    c.instance_id = id.to_owned();
}

async fn redis_hub(redis: &RedisServer, id: &str, secret: &str) -> TestHub {
    TestHub::on_redis(redis, |c| configure(c, id, secret)).await
}

/// A hub on the shared cluster, under `prefix`.
async fn cluster_hub(prefix: &str, id: &str, secret: &str) -> TestHub {
    let seeds = Cluster::shared().seeds();
    let hub = TestHub::with(|c| {
        c.redis_cluster = seeds.split(',').map(str::to_owned).collect();
        c.redis_prefix = prefix.to_owned();
        configure(c, id, secret);
    })
    .await;
    hub.wait_ready(200).await;
    hub
}

/// A disconnect issued on `a` closes the client's sockets on `b` (and on
/// `a`), only those of the group given, with the code and reason asked
/// for; presence follows on both instances.
async fn disconnect_reaches_the_other_instance(a: &TestHub, b: &TestHub) {
    let mut watcher = connect_keyed(a, "line1", "watcher").await;
    let mut w1_b = connect_keyed(b, "line1", "worker").await;
    let mut w1_a = connect_keyed(a, "line1", "worker").await;
    let mut w2_b = connect_keyed(b, "line2", "worker").await;
    let mut bystander = connect_keyed(b, "line1", "bystander").await;
    presence_event(&mut watcher, "join", "worker", "watcher on A").await;
    presence_event(&mut watcher, "join", "bystander", "watcher on A").await;

    let body = json!({"client_id": "worker", "group_id": "line1", "reconnect": true, "reason": "rebalancing"});
    let deadline = disconnect(a, body).await + PROPAGATION;
    let why = (4011, "rebalancing");
    assert_closed(&mut w1_b, deadline, why, "worker on B, line1").await;
    assert_closed(&mut w1_a, deadline, why, "worker on A, line1").await;
    presence_event(&mut watcher, "leave", "worker", "watcher on A").await;
    assert_members(b, "line1", &["bystander", "watcher"], "read on B").await;
    assert_members(a, "line2", &["worker"], "read on A").await;
    assert_open(&mut w2_b, "worker on B, line2").await;
    assert_open(&mut bystander, "bystander on B").await;
    // Still served across instances.
    let direct = json!({"msg_type": "cmd", "target": "direct", "from_id": "ops", "to_id": "worker", "cmd": "d"});
    publish(a, direct).await;
    assert_eq!(
        next_message(&mut w2_b, "worker on B, line2").await["cmd"],
        "d"
    );
    let group = json!({"msg_type": "cmd", "target": "group", "from_id": "ops", "group_id": "line1", "cmd": "g"});
    publish(a, group).await;
    assert_eq!(
        next_message(&mut bystander, "bystander on B").await["cmd"],
        "g"
    );

    let deadline = disconnect(a, json!({"client_id": "worker"})).await + PROPAGATION;
    let default = (4010, "disconnected by the service");
    assert_closed(&mut w2_b, deadline, default, "worker on B, line2").await;
    support::eventually(
        "worker leaves line2 after the second disconnect",
        || async { members(a, "line2").await.is_empty() },
    )
    .await;
    assert_open(&mut bystander, "bystander on B").await;
    assert_open(&mut watcher, "watcher on A").await;
}

/// Revocations issued on `a`, by jti then by subject, close the matching
/// sockets on `b` (and `a`) with 4001 and are refused by both.
async fn revocation_reaches_the_other_instance(a: &TestHub, b: &TestHub, secret: &str) {
    let t = now();
    let alice1 = token(secret, "alice", json!({"jti": "alice-1"}));
    let alice2 = token(secret, "alice", json!({"jti": "alice-2"}));
    let old = token(secret, "worker", json!({"iat": t - 600}));
    let no_iat = token(secret, "worker", json!({"iat": null}));
    let fresh = token(secret, "worker", json!({"iat": t}));
    let mut a1_b = connect_token(b, "g1", "alice", &alice1).await;
    let mut a1_a = connect_token(a, "g2", "alice", &alice1).await;
    let mut a2_b = connect_token(b, "g1", "alice", &alice2).await;
    let mut old_b = connect_token(b, "g1", "worker", &old).await;
    let mut no_iat_b = connect_token(b, "g2", "worker", &no_iat).await;
    let mut fresh_b = connect_token(b, "g1", "worker", &fresh).await;

    let deadline = revoke(a, json!({"jti": "alice-1", "until": t + 3600})).await + PROPAGATION;
    assert_closed(&mut a1_b, deadline, REVOKED, "alice-1 on B").await;
    assert_closed(&mut a1_a, deadline, REVOKED, "alice-1 on A").await;
    assert_open(&mut a2_b, "alice-2 on B").await;
    for (name, hub) in [("B", b), ("A", a)] {
        let status = upgrade_with(hub, "g1", "alice", &alice1).await;
        assert_eq!(status, 401, "upgrade on {name} with the revoked jti");
        let answer = presence(hub, "g1", Cred::Bearer(&alice1)).await;
        assert_refused(
            &answer,
            401,
            &format!("presence on {name} with the revoked jti"),
        );
    }
    assert_eq!(
        upgrade_with(b, "g1", "alice", &alice2).await,
        101,
        "alice-2 on B"
    );

    let body = json!({"sub": "worker", "issued_before": t - 60, "until": t + 3600});
    let deadline = revoke(a, body).await + PROPAGATION;
    assert_closed(&mut old_b, deadline, REVOKED, "worker's old token on B").await;
    assert_closed(
        &mut no_iat_b,
        deadline,
        REVOKED,
        "worker's no-iat token on B",
    )
    .await;
    assert_open(&mut fresh_b, "worker's later token on B").await;
    for (name, tok, want) in [
        ("old", &old, 401),
        ("no-iat", &no_iat, 401),
        ("later", &fresh, 101),
    ] {
        let status = upgrade_with(b, "g1", "worker", tok).await;
        assert_eq!(status, want, "upgrade on B with worker's {name} token");
    }
}

/// `GET /v3/info` on `a` and on `b` lists both with their sockets (from
/// liveness records, so polled), follows a close, and drops `b` once it
/// is gone.
async fn info_counts_every_instance(a: &TestHub, b: TestHub, ids: (&str, &str), mode: &str) {
    let (id_a, id_b) = ids;
    let _on_a = [
        connect_keyed(a, "g1", "x").await,
        connect_keyed(a, "g2", "y").await,
    ];
    let mut on_b = vec![
        connect_keyed(&b, "g1", "z").await,
        connect_keyed(&b, "g1", "x").await,
        connect_keyed(&b, "g3", "w").await,
    ];
    let seen = info_until(a, &[(id_a, 2), (id_b, 3)], "info on A").await;
    let want =
        json!({"instance": id_a, "version": env!("CARGO_PKG_VERSION"), "mode": mode, "sockets": 2});
    for field in ["instance", "version", "mode", "sockets"] {
        assert_eq!(seen[field], want[field], "info on A, {field}: {seen}");
    }
    let seen = info_until(&b, &[(id_a, 2), (id_b, 3)], "info on B").await;
    assert_eq!(
        (&seen["instance"], &seen["sockets"]),
        (&json!(id_b), &json!(3)),
        "{seen}"
    );
    assert_eq!(seen["mode"], mode, "{seen}");

    if let Some(socket) = on_b.pop() {
        socket.close().await;
    }
    info_until(a, &[(id_a, 2), (id_b, 2)], "info on A after a close on B").await;
    drop(on_b);
    assert!(b.server.shut_down(TIMEOUT).await, "B shuts down in time");
    info_until(a, &[(id_a, 2)], "info on A once B is gone").await;
}

#[tokio::test]
async fn disconnect_on_one_instance_closes_sockets_on_the_other() {
    let redis = RedisServer::start();
    let secret = tokens::secret();
    let (a, b) = (
        redis_hub(&redis, "hub-a", &secret).await,
        redis_hub(&redis, "hub-b", &secret).await,
    );
    disconnect_reaches_the_other_instance(&a, &b).await;
}

#[tokio::test]
async fn revocation_on_one_instance_closes_sockets_on_the_other() {
    let redis = RedisServer::start();
    let secret = tokens::secret();
    let (a, b) = (
        redis_hub(&redis, "hub-a", &secret).await,
        redis_hub(&redis, "hub-b", &secret).await,
    );
    revocation_reaches_the_other_instance(&a, &b, &secret).await;
}

#[tokio::test]
async fn revocations_survive_a_restart_of_every_instance() {
    let redis = RedisServer::start();
    let secret = tokens::secret();
    let t = now();
    let revoked = token(&secret, "alice", json!({"jti": "gone-1"}));
    let kept = token(&secret, "alice", json!({"jti": "kept-1"}));
    let old = token(&secret, "worker", json!({"iat": t - 600}));
    let no_iat = token(&secret, "worker", json!({"iat": null}));
    let fresh = token(&secret, "worker", json!({"iat": t}));
    let a = redis_hub(&redis, "hub-a", &secret).await;
    let b = redis_hub(&redis, "hub-b", &secret).await;
    revoke(&a, json!({"jti": "gone-1", "until": t + 3600})).await;
    revoke(
        &b,
        json!({"sub": "worker", "issued_before": t - 60, "until": t + 3600}),
    )
    .await;
    support::eventually("both instances refuse both revocations", || async {
        upgrade_with(&a, "g1", "worker", &old).await == 401
            && upgrade_with(&b, "g1", "alice", &revoked).await == 401
    })
    .await;
    assert!(a.server.shut_down(TIMEOUT).await, "A shuts down in time");
    assert!(b.server.shut_down(TIMEOUT).await, "B shuts down in time");

    let c = redis_hub(&redis, "hub-c", &secret).await;
    let d = redis_hub(&redis, "hub-d", &secret).await;
    for (name, hub) in [("C", &c), ("D", &d)] {
        for (what, sub, tok, want) in [
            ("the token revoked by jti", "alice", &revoked, 401),
            ("an old token revoked by sub", "worker", &old, 401),
            ("a token without iat revoked by sub", "worker", &no_iat, 401),
            ("another jti", "alice", &kept, 101),
            ("a later token of the revoked sub", "worker", &fresh, 101),
        ] {
            let status = upgrade_with(hub, "g1", sub, tok).await;
            assert_eq!(
                status, want,
                "after the restart, upgrade on {name} with {what}"
            );
        }
        let answer = presence(hub, "g1", Cred::Bearer(&revoked)).await;
        assert_refused(
            &answer,
            401,
            &format!("presence on {name} with the revoked token"),
        );
        let answer = presence(hub, "g1", Cred::Bearer(&kept)).await;
        assert_status(
            &answer,
            200,
            &format!("presence on {name} with another jti"),
        );
    }
}

#[tokio::test]
async fn info_lists_both_instances_with_their_sockets() {
    let redis = RedisServer::start();
    let secret = tokens::secret();
    let a = redis_hub(&redis, "hub-a", &secret).await;
    let b = redis_hub(&redis, "hub-b", &secret).await;
    info_counts_every_instance(&a, b, ("hub-a", "hub-b"), "redis").await;
}

/// `n` group messages in "hist" from `sender`, and what each reader got.
async fn traffic(sender: &mut Client, readers: &mut [&mut Client], n: usize) -> Vec<Vec<Value>> {
    let mut got = vec![Vec::new(); readers.len()];
    for i in 0..n {
        sender
            .send(msg("group", json!({"cmd": format!("step-{i}")})))
            .await;
        for (r, reader) in readers.iter_mut().enumerate() {
            got[r].push(next_message(reader, &format!("reader {r}")).await);
        }
    }
    got
}

#[tokio::test]
async fn history_read_on_one_instance_is_what_sockets_on_the_other_received() {
    let redis = RedisServer::start();
    let secret = tokens::secret();
    let a = redis_hub(&redis, "hub-a", &secret).await;
    let b = redis_hub(&redis, "hub-b", &secret).await;
    let mut sender = connect_keyed(&a, "hist", "sender").await;
    let mut reader_a = connect_keyed(&a, "hist", "reader").await;
    let mut reader_b = connect_keyed(&b, "hist", "other").await;
    presence_event(&mut sender, "join", "other", "sender").await;
    let got = traffic(&mut sender, &mut [&mut reader_a, &mut reader_b], 5).await;
    assert_eq!(got[0], got[1], "both sockets received the same messages");
    let group = got[0].clone();
    let epoch = group[0]["epoch"].as_str().expect("a kept message's epoch");

    let all = history(&b, "/v3/history/group/hist").await;
    let want = json!({"epoch": epoch, "offset": 5, "recovered": true, "messages": group});
    assert_eq!(all, want, "the group history read on B");
    assert_eq!(
        history_paged(&b, "/v3/history/group/hist", 2).await,
        group,
        "paged on B"
    );
    let tail = history(
        &b,
        &format!("/v3/history/group/hist?since={epoch}:3&limit=10"),
    )
    .await;
    assert_eq!(tail["messages"], json!(group[3..]), "since 3, on B");
    let lost = history(&b, "/v3/history/group/hist?since=not-this-epoch:1").await;
    let want = json!({"epoch": epoch, "offset": 5, "recovered": false, "messages": []});
    assert_eq!(lost, want, "since another epoch, on B");

    sender
        .send(msg("direct", json!({"to_id": "reader", "msg": "to you"})))
        .await;
    let direct = next_message(&mut reader_a, "reader on A").await;
    let mine = history(&b, "/v3/history/client/reader").await;
    assert_eq!(
        mine["messages"],
        json!([direct]),
        "the reader's client history, on B"
    );
    sender.send(msg("broadcast", json!({"msg": "all"}))).await;
    let everyone = next_message(&mut reader_b, "reader on B").await;
    assert_eq!(
        next_message(&mut reader_a, "reader on A").await,
        everyone,
        "the same broadcast"
    );
    let broadcast = history(&b, "/v3/history/broadcast").await;
    assert_eq!(
        broadcast["messages"],
        json!([everyone]),
        "the broadcast history, on B"
    );
}

#[tokio::test]
async fn on_a_cluster_disconnect_and_revocation_reach_the_other_instance() {
    let secret = tokens::secret();
    let prefix = "sapi-dr:";
    let a = cluster_hub(prefix, "hub-ca", &secret).await;
    let b = cluster_hub(prefix, "hub-cb", &secret).await;
    disconnect_reaches_the_other_instance(&a, &b).await;
    revocation_reaches_the_other_instance(&a, &b, &secret).await;
}

#[tokio::test]
async fn on_a_cluster_info_lists_both_instances_with_their_sockets() {
    let secret = tokens::secret();
    let prefix = "sapi-info:";
    let a = cluster_hub(prefix, "hub-cc", &secret).await;
    let b = cluster_hub(prefix, "hub-cd", &secret).await;
    info_counts_every_instance(&a, b, ("hub-cc", "hub-cd"), "cluster").await;
}

/// A fresh instance must refuse a kept revocation from its first upgrade
/// on, not only once it has loaded the revocations: every upgrade with the
/// revoked token from the instant the instance listens, until it answers
/// 401, over many starts (the window, if any, is milliseconds long).
#[tokio::test]
async fn a_starting_instance_never_admits_a_revoked_token() {
    const STARTS: usize = 150;
    let redis = RedisServer::start();
    let secret = tokens::secret();
    let revoked = token(&secret, "alice", json!({"jti": "gone-2"}));
    let a = redis_hub(&redis, "hub-a", &secret).await;
    revoke(&a, json!({"jti": "gone-2", "until": now() + 3600})).await;
    assert!(a.server.shut_down(TIMEOUT).await, "A shuts down in time");
    let (mut admitted, mut closed_later) = (0, Vec::new());
    for start in 0..STARTS {
        let url = redis.url();
        let hub = TestHub::with(|c| {
            c.redis_url = Some(url);
            configure(c, &format!("hub-n{start}"), &secret);
        })
        .await;
        let auth = format!("Bearer {revoked}");
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let url = hub.ws_url("g1", "alice");
            match Client::connect(&url, &[("Authorization", &auth)]).await {
                Ok(mut socket) => {
                    admitted += 1;
                    let ready = hub.get("/readyz").await.status;
                    let end = tokio::time::Instant::now() + PROPAGATION;
                    closed_later.push((
                        ready,
                        socket.next_event(end - tokio::time::Instant::now()).await,
                    ));
                }
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401 => break,
                Err(_) => {} // 503 until Redis answers
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "start {start}: never 401"
            );
        }
        let _ = hub.server.shut_down(TIMEOUT).await;
    }
    closed_later.truncate(3);
    assert_eq!(
        admitted, 0,
        "a starting instance admitted the revoked token {admitted} times in {STARTS} starts \
         (the first ones: /readyz then, and what the socket got next: {closed_later:?})"
    );
}

/// Redis down: every action is 503 with a JSON error (nothing was kept
/// or sent, so it may be sent again), and a token cannot be checked by an
/// instance that never loaded the revocations: 503, not 101 nor 401. Once
/// Redis is back, the same token is admitted.
#[tokio::test]
async fn with_redis_down_actions_are_503_and_tokens_wait_for_the_revocations() {
    let mut redis = RedisServer::start();
    let secret = tokens::secret();
    let a = redis_hub(&redis, "hub-a", &secret).await;
    redis.kill();
    support::eventually("A sees Redis down", || async {
        a.get("/readyz").await.status == 503
    })
    .await;
    let body = json!({"client_id": "alice"});
    assert_refused(
        &admin_post(&a, "/v3/disconnect", &body).await,
        503,
        "disconnect",
    );
    let body = json!({"jti": "t-down", "until": now() + 600});
    assert_refused(&admin_post(&a, "/v3/revoke", &body).await, 503, "revoke");
    assert_refused(&admin_get(&a, "/v3/info").await, 503, "info");

    // An instance started while Redis is down has loaded no revocation.
    let url = redis.url();
    let b = TestHub::with(|c| {
        c.redis_url = Some(url);
        configure(c, "hub-b", &secret);
    })
    .await;
    let good = token(&secret, "alice", json!({"jti": "t-good"}));
    assert_eq!(upgrade_with(&b, "g1", "alice", &good).await, 503);
    let ready = b.get("/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    redis.restart();
    support::eventually("B admits the token once Redis is back", || async {
        upgrade_with(&b, "g1", "alice", &good).await == 101
    })
    .await;
}
