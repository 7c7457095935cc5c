//! The operators' server API (docs/protocol.md section 11) on one in-memory
//! hub, with real WebSocket clients: who may call it, every malformed
//! request, disconnects and revocations as the sockets see them, the fleet
//! view and history over HTTP. Across instances: `server_api_redis.rs`.

mod support;

use serde_json::{json, Value};
use support::admin::{
    admin_actions, admin_get, admin_post, assert_accepted, assert_closed, assert_members,
    assert_open, assert_refused, assert_status, call, connect_keyed, connect_token, disconnect,
    history, history_paged, info, next_message, presence, presence_event, publish, publish_with,
    revoke, token, upgrade_with, Cred, ADMIN, CLIENT_KEY, PROPAGATION, REVOKED,
};
use support::tokens::{self, now};
use support::{msg, Client, TestHub};

/// A hub with the admin key, the client key and `secret` as token key.
async fn full_hub(secret: &str, adjust: impl FnOnce(&mut aether_hub::Config)) -> TestHub {
    TestHub::with(|c| {
        c.admin_api_keys = vec![ADMIN.into()];
        c.api_keys = vec![CLIENT_KEY.into()];
        c.token_secrets = vec![secret.to_owned()];
        adjust(c);
    })
    .await
}

/// Every route of section 11, with a harmless valid request and the
/// status it succeeds with.
fn routes() -> Vec<(&'static str, &'static str, String, u16)> {
    let disconnect = json!({"client_id": "nobody"}).to_string();
    let revoke = json!({"jti": "matrix-unused", "until": now() + 600}).to_string();
    vec![
        ("POST", "/v3/disconnect", disconnect, 202),
        ("POST", "/v3/revoke", revoke, 202),
        ("GET", "/v3/info", String::new(), 200),
        ("GET", "/v3/history/group/g1", String::new(), 200),
        ("GET", "/v3/history/client/c1", String::new(), 200),
        ("GET", "/v3/history/broadcast", String::new(), 200),
    ]
}

/// Every route with `cred` answers its success (`want` None) or `want`,
/// never quoting the key it was given.
async fn expect_all(hub: &TestHub, case: &str, cred: Cred<'_>, want: Option<u16>) {
    for (method, path, body, ok) in routes() {
        let answer = call(hub, method, path, cred, &body).await;
        let what = format!("{case}: {method} {path}");
        match want {
            None => assert_status(&answer, ok, &what),
            Some(status) => assert_refused(&answer, status, &what),
        }
        if let Cred::Key(key) = cred {
            let echoed =
                answer.body.contains(key) || answer.headers.iter().any(|h| h.1.contains(key));
            assert!(!echoed, "{what}: the key is echoed back: {answer:?}");
        }
    }
}

#[tokio::test]
async fn credentials_follow_the_table_on_every_route() {
    let secret = tokens::secret();
    let valid = token(&secret, "alice", json!({}));
    let full = full_hub(&secret, |_| {}).await;
    let before = full.get("/metrics").await.body;
    let admins =
        TestHub::with(|c| c.admin_api_keys = vec!["adm-one".into(), "adm-two".into()]).await;
    let keyed = TestHub::with(|c| c.api_keys = vec!["key-one".into(), "key-two".into()]).await;
    let tokens_only = TestHub::with(|c| c.token_secrets = vec![secret.clone()]).await;
    let open = TestHub::start().await;
    let sane = presence(&tokens_only, "g1", Cred::Bearer(&valid)).await;
    assert_status(&sane, 200, "the token itself is valid (presence)");

    let matrix = [
        (
            &full,
            "admin keys set",
            vec![
                ("the admin key", Cred::Key(ADMIN), None),
                ("a client API key", Cred::Key(CLIENT_KEY), Some(403)),
                ("a valid token, no key", Cred::Bearer(&valid), Some(403)),
                ("a wrong key", Cred::Key("wrong-admin-5e9d"), Some(401)),
                ("nothing", Cred::None, Some(401)),
            ],
        ),
        (
            &admins,
            "two admin keys only",
            vec![
                ("the first", Cred::Key("adm-one"), None),
                ("the second", Cred::Key("adm-two"), None),
                ("a wrong key", Cred::Key("adm-three"), Some(401)),
                ("nothing", Cred::None, Some(401)),
            ],
        ),
        (
            &keyed,
            "API keys only",
            vec![
                ("the first", Cred::Key("key-one"), None),
                ("the second", Cred::Key("key-two"), None),
                ("a wrong key", Cred::Key("key-three"), Some(401)),
                ("nothing", Cred::None, Some(401)),
            ],
        ),
        (
            &tokens_only,
            "token keys only",
            vec![
                ("a valid token", Cred::Bearer(&valid), Some(401)),
                ("a key", Cred::Key("any-key"), Some(401)),
                ("nothing", Cred::None, Some(401)),
            ],
        ),
        (
            &open,
            "nothing configured",
            vec![("no credential", Cred::None, None)],
        ),
    ];
    for (hub, config, cases) in matrix {
        for (what, cred, want) in cases {
            expect_all(hub, &format!("{config}, {what}"), cred, want).await;
        }
    }

    // The admin key is a trusted service on presence and publish too...
    let cmd = json!({"msg_type": "cmd", "target": "group", "group_id": "g1", "from_id": "ops"});
    let published = publish_with(&full, Cred::Key(ADMIN), &cmd).await;
    assert_status(&published, 202, "publish with the admin key");
    for (what, cred) in [
        ("the admin key", Cred::Key(ADMIN)),
        ("the client key", Cred::Key(CLIENT_KEY)),
        ("a token", Cred::Bearer(&valid)),
    ] {
        let answer = presence(&full, "g1", cred).await;
        assert_status(&answer, 200, &format!("presence with {what}"));
    }
    // ...but not on an upgrade, where it is no credential at all.
    let path = "/v3/ws/group/g1/client/alice";
    let (status, body) = full
        .upgrade_status(path, &[("X-Aether-API-Key", ADMIN)])
        .await;
    assert_eq!(status, 401, "an upgrade with only the admin key: {body}");
    assert!(!body.contains(ADMIN), "the admin key is echoed: {body}");
    let client = full
        .upgrade_status(path, &[("X-Aether-API-Key", CLIENT_KEY)])
        .await;
    assert_eq!(
        client.0, 101,
        "an upgrade with the client key: {}",
        client.1
    );

    // Counted on /metrics, accepted and refused apart.
    let after = full.get("/metrics").await.body;
    for (route, outcome) in [
        ("info", "accepted"),
        ("info", "unauthorized"),
        ("info", "forbidden"),
        ("disconnect", "accepted"),
        ("revoke", "forbidden"),
        ("history", "unauthorized"),
    ] {
        let grew = admin_actions(&after, route, outcome) - admin_actions(&before, route, outcome);
        assert!(
            grew >= 1.0,
            "aether_admin_actions_total{{route={route},outcome={outcome}}}"
        );
    }
}

#[tokio::test]
async fn every_invalid_request_is_400_with_a_json_error() {
    let hub = full_hub(&tokens::secret(), |_| {}).await;
    let before = hub.get("/metrics").await.body;
    let reason_100 = "é".repeat(50);
    // Each case is named by its body or path.
    let reason_101 = format!(r#"{{"client_id":"a","reason":"{reason_100}x"}}"#);
    let long_id = format!(r#"{{"client_id":"{}"}}"#, "a".repeat(65));
    let disconnects = [
        "{",
        "[]",
        r#"{"client_id":"a","colour":"red"}"#,
        r#"{"group_id":"g1"}"#,
        r#"{"client_id":"a.b"}"#,
        r#"{"client_id":""}"#,
        &long_id,
        r#"{"client_id":"a","group_id":"g 1"}"#,
        r#"{"client_id":"a","reconnect":"yes"}"#,
        &reason_101,
    ];
    for body in disconnects {
        let answer = call(&hub, "POST", "/v3/disconnect", Cred::Key(ADMIN), body).await;
        assert_refused(&answer, 400, &format!("disconnect with {body}"));
    }
    let fits = json!({"client_id": "nobody", "reason": reason_100});
    let answer = admin_post(&hub, "/v3/disconnect", &fits).await;
    assert_accepted(&answer, "a reason of 100 bytes");

    let revokes = [
        r#"{"jti":"#,
        r#"{"jti":"j","until":UNTIL,"colour":1}"#,
        r#"{"jti":"j","sub":"s","issued_before":NOW,"until":UNTIL}"#,
        r#"{"until":UNTIL}"#,
        r#"{"sub":"s","until":UNTIL}"#,
        r#"{"jti":"j"}"#,
        r#"{"sub":"s","issued_before":NOW}"#,
        r#"{"jti":"j","until":PAST}"#,
        r#"{"jti":"","until":UNTIL}"#,
        r#"{"jti":"j","until":"UNTIL"}"#,
    ];
    let t = now();
    let times = |body: &str| {
        body.replace("UNTIL", &(t + 3600).to_string())
            .replace("NOW", &t.to_string())
            .replace("PAST", &(t - 60).to_string())
    };
    for body in revokes.map(times) {
        let answer = call(&hub, "POST", "/v3/revoke", Cred::Key(ADMIN), &body).await;
        assert_refused(&answer, 400, &format!("revoke with {body}"));
    }
    for body in [
        r#"{"jti":"j","until":UNTIL}"#,
        r#"{"sub":"s","issued_before":NOW,"until":UNTIL}"#,
    ]
    .map(times)
    {
        let answer = call(&hub, "POST", "/v3/revoke", Cred::Key(ADMIN), &body).await;
        assert_accepted(&answer, &format!("revoke {body}"));
    }

    for path in [
        "/v3/history/group/bad.id",
        "/v3/history/client/a:b",
        "/v3/history/group/g1?since=nocolon",
        "/v3/history/group/g1?since=:5",
        "/v3/history/group/g1?since=abc:",
        "/v3/history/group/g1?since=abc:x",
        "/v3/history/group/g1?since=abc:-1",
        "/v3/history/group/g1?limit=ten",
        "/v3/history/group/g1?limit=0",
        "/v3/history/broadcast?limit=1001",
        "/v3/history/client/c1?limit=-1",
    ] {
        assert_refused(&admin_get(&hub, path).await, 400, &format!("GET {path}"));
    }
    for path in [
        "/v3/history/group/g1?limit=1000",
        "/v3/history/group/g1?limit=1&since=abc:0",
    ] {
        assert_status(&admin_get(&hub, path).await, 200, path);
    }
    // An unknown kind is an unknown path.
    let foo = admin_get(&hub, "/v3/history/foo/x").await;
    assert_refused(&foo, 404, "history of kind foo");

    let after = hub.get("/metrics").await.body;
    for route in ["disconnect", "revoke", "history"] {
        let grew =
            admin_actions(&after, route, "invalid") - admin_actions(&before, route, "invalid");
        assert!(
            grew >= 1.0,
            "aether_admin_actions_total{{route={route},outcome=invalid}}"
        );
    }
}

/// "A missing or wrong key is 401" (section 11), whatever else is wrong
/// with the request: credentials come first, as on the upgrade (section
/// 1) and on publish (section 5).
#[tokio::test]
async fn a_missing_key_is_401_before_the_request_is_read() {
    let hub = full_hub(&tokens::secret(), |_| {}).await;
    for (method, path, body) in [
        ("POST", "/v3/disconnect", "{"),
        ("POST", "/v3/revoke", r#"{"until":1}"#),
        ("GET", "/v3/history/group/g1?since=nocolon", ""),
        ("GET", "/v3/history/group/g1?limit=0", ""),
        ("GET", "/v3/history/group/bad.id", ""),
        ("GET", "/v3/history/client/a:b?limit=5", ""),
    ] {
        let answer = call(&hub, method, path, Cred::None, body).await;
        assert_refused(&answer, 401, &format!("no key, {method} {path} {body}"));
        let answer = call(&hub, method, path, Cred::Key(CLIENT_KEY), body).await;
        assert_refused(&answer, 403, &format!("client key, {method} {path} {body}"));
    }
}

/// `since` over HTTP is `EPOCH:OFFSET` only (section 11); `new` belongs to
/// the upgrade's `since_*` (section 9).
#[tokio::test]
async fn history_since_new_is_malformed_over_http() {
    let hub = full_hub(&tokens::secret(), |_| {}).await;
    let answer = admin_get(&hub, "/v3/history/group/g1?since=new").await;
    assert_refused(&answer, 400, "GET /v3/history/group/g1?since=new");
}

#[tokio::test]
async fn disconnect_closes_only_the_matching_sockets_and_presence_follows() {
    let hub = full_hub(&tokens::secret(), |_| {}).await;
    let mut watch1 = connect_keyed(&hub, "line1", "watch1").await;
    let mut watch2 = connect_keyed(&hub, "line2", "watch2").await;
    let mut w1a = connect_keyed(&hub, "line1", "worker").await;
    let mut w1b = connect_keyed(&hub, "line1", "worker").await;
    let mut w2 = connect_keyed(&hub, "line2", "worker").await;
    let mut other = connect_keyed(&hub, "line1", "other").await;
    presence_event(&mut watch1, "join", "worker", "line1 watcher").await;
    presence_event(&mut watch2, "join", "worker", "line2 watcher").await;

    // A group the client is not in: nothing closes (checked below).
    disconnect(&hub, json!({"client_id": "other", "group_id": "line2"})).await;
    // Only worker's sockets in line1, with 4011 and the given reason.
    let why = "moved to line 2";
    let body =
        json!({"client_id": "worker", "group_id": "line1", "reconnect": true, "reason": why});
    let deadline = disconnect(&hub, body).await + PROPAGATION;
    assert_closed(&mut w1a, deadline, (4011, why), "worker 1 in line1").await;
    assert_closed(&mut w1b, deadline, (4011, why), "worker 2 in line1").await;
    presence_event(&mut watch1, "leave", "worker", "line1 watcher").await;
    assert_members(&hub, "line1", &["other", "watch1"], "after it").await;
    assert_members(&hub, "line2", &["watch2", "worker"], "after it").await;
    assert_open(&mut w2, "worker in line2").await;
    assert_open(&mut other, "other in line1").await;
    // They keep receiving.
    let direct = json!({"msg_type": "cmd", "target": "direct", "from_id": "ops", "to_id": "worker", "cmd": "d"});
    publish(&hub, direct).await;
    assert_eq!(next_message(&mut w2, "worker in line2").await["cmd"], "d");
    let group = json!({"msg_type": "cmd", "target": "group", "from_id": "ops", "group_id": "line1", "cmd": "g"});
    publish(&hub, group).await;
    assert_eq!(next_message(&mut other, "other in line1").await["cmd"], "g");
    assert_eq!(next_message(&mut watch1, "watch1").await["cmd"], "g");

    // No group: every socket of the client; by default 4010 and the
    // hub's wording.
    let deadline = disconnect(&hub, json!({"client_id": "worker"})).await + PROPAGATION;
    let default = (4010, "disconnected by the service");
    assert_closed(&mut w2, deadline, default, "worker in line2").await;
    presence_event(&mut watch2, "leave", "worker", "line2 watcher").await;
    assert_members(&hub, "line2", &["watch2"], "after the second").await;

    // The other two combinations of reconnect and reason.
    let cases = [
        (
            json!({"reconnect": true}),
            (4011, "asked to reconnect by the service"),
        ),
        (
            json!({"reconnect": false, "reason": "shift over"}),
            (4010, "shift over"),
        ),
    ];
    for (mut body, want) in cases {
        body["client_id"] = json!("worker");
        let mut socket = connect_keyed(&hub, "line1", "worker").await;
        let deadline = disconnect(&hub, body.clone()).await + PROPAGATION;
        assert_closed(&mut socket, deadline, want, &body.to_string()).await;
    }
    assert_open(&mut other, "other").await;
    assert_open(&mut watch1, "watch1").await;
    assert_open(&mut watch2, "watch2").await;
}

#[tokio::test]
async fn revoked_tokens_close_their_sockets_and_are_refused() {
    let secret = tokens::secret();
    let hub = full_hub(&secret, |_| {}).await;
    let t = now();
    let alice1 = token(&secret, "alice", json!({"jti": "alice-1", "iat": t - 600}));
    let alice2 = token(&secret, "alice", json!({"jti": "alice-2"}));
    let bob = token(&secret, "bob", json!({"jti": "bob-1"}));
    let mut a1 = connect_token(&hub, "g1", "alice", &alice1).await;
    let mut a2 = connect_token(&hub, "g1", "alice", &alice2).await;
    let mut b = connect_token(&hub, "g1", "bob", &bob).await;

    let deadline = revoke(&hub, json!({"jti": "alice-1", "until": t + 3600})).await + PROPAGATION;
    assert_closed(&mut a1, deadline, REVOKED, "alice's socket, revoked jti").await;
    assert_open(&mut a2, "alice's socket with another jti").await;
    assert_open(&mut b, "bob's socket").await;
    let status = upgrade_with(&hub, "g1", "alice", &alice1).await;
    assert_eq!(status, 401, "upgrade with the revoked jti");
    let status = upgrade_with(&hub, "g1", "alice", &alice2).await;
    assert_eq!(status, 101, "upgrade with another jti");
    let listed = presence(&hub, "g1", Cred::Bearer(&alice1)).await;
    assert_refused(&listed, 401, "presence with the revoked token");
    let frame = json!({"msg_type": "msg", "target": "group", "group_id": "g1", "from_id": "alice"});
    let sent = publish_with(&hub, Cred::Bearer(&alice1), &frame).await;
    assert_refused(&sent, 401, "publish with the revoked token");
    let listed = presence(&hub, "g1", Cred::Bearer(&alice2)).await;
    assert_status(&listed, 200, "presence with another jti");

    // By subject: tokens issued before the cut, and tokens without iat.
    let cut = t - 60;
    let old = token(&secret, "worker", json!({"iat": t - 600}));
    let no_iat = token(&secret, "worker", json!({"iat": null}));
    let at_cut = token(&secret, "worker", json!({"iat": cut}));
    let fresh = token(&secret, "worker", json!({"iat": t}));
    let planner_old = token(&secret, "planner", json!({"iat": t - 600}));
    let mut w_old = connect_token(&hub, "g1", "worker", &old).await;
    let mut w_no_iat = connect_token(&hub, "g2", "worker", &no_iat).await;
    let mut w_at_cut = connect_token(&hub, "g1", "worker", &at_cut).await;
    let mut w_fresh = connect_token(&hub, "g2", "worker", &fresh).await;
    let mut planner = connect_token(&hub, "g1", "planner", &planner_old).await;

    let body = json!({"sub": "worker", "issued_before": cut, "until": t + 3600});
    let deadline = revoke(&hub, body).await + PROPAGATION;
    assert_closed(
        &mut w_old,
        deadline,
        REVOKED,
        "worker's token issued before",
    )
    .await;
    assert_closed(
        &mut w_no_iat,
        deadline,
        REVOKED,
        "worker's token without iat",
    )
    .await;
    assert_open(&mut w_at_cut, "worker's token issued at issued_before").await;
    assert_open(&mut w_fresh, "worker's token issued later").await;
    assert_open(&mut planner, "another subject's old token").await;
    let issued_now = token(&secret, "worker", json!({"iat": now()}));
    for (name, client, tok, want) in [
        ("worker's, issued before", "worker", &old, 401),
        ("worker's, without iat", "worker", &no_iat, 401),
        ("worker's, issued at issued_before", "worker", &at_cut, 101),
        ("worker's, issued later", "worker", &fresh, 101),
        ("worker's, issued now", "worker", &issued_now, 101),
        ("another subject's old one", "planner", &planner_old, 101),
    ] {
        let status = upgrade_with(&hub, "g1", client, tok).await;
        assert_eq!(status, want, "upgrade with a token {name}");
    }
    let answer = presence(&hub, "g1", Cred::Bearer(&old)).await;
    assert_refused(&answer, 401, "presence, token revoked by sub");
    let answer = presence(&hub, "g1", Cred::Bearer(&no_iat)).await;
    assert_refused(&answer, 401, "presence, token without iat");
    let answer = presence(&hub, "g1", Cred::Bearer(&fresh)).await;
    assert_status(&answer, 200, "presence with the later token");
}

#[tokio::test]
async fn info_describes_this_instance_in_memory_mode() {
    let hub = full_hub(&tokens::secret(), |c| c.instance_id = "solo-hub".into()).await;
    let empty = info(&hub).await;
    assert_eq!(empty["sockets"], 0, "{empty}");
    let mut sockets = vec![
        connect_keyed(&hub, "g1", "a").await,
        connect_keyed(&hub, "g1", "b").await,
        connect_keyed(&hub, "g2", "a").await,
    ];
    let want = json!({
        "instance": "solo-hub",
        "version": env!("CARGO_PKG_VERSION"),
        "mode": "memory",
        "sockets": 3,
        "instances": [{"id": "solo-hub", "sockets": 3}],
    });
    assert_eq!(info(&hub).await, want, "info with 3 sockets open");
    if let Some(last) = sockets.pop() {
        last.close().await;
    }
    support::eventually("info counts 2 sockets after a close", || async {
        let seen = info(&hub).await;
        seen["sockets"] == 2 && seen["instances"] == json!([{"id": "solo-hub", "sockets": 2}])
    })
    .await;
}

/// `n` group messages from `sender`, as `reader` received them.
async fn group_traffic(sender: &mut Client, reader: &mut Client, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    for i in 0..n {
        let kind = if i % 2 == 0 { "cmd" } else { "msg" };
        let mut frame = json!({"msg_type": kind, "target": "group", "payload": {"i": i}});
        frame[kind] = json!(format!("{kind}{i}"));
        sender.send(frame).await;
        got.push(next_message(reader, "the reader").await);
    }
    got
}

#[tokio::test]
async fn history_over_http_is_what_the_sockets_received() {
    let hub = full_hub(&tokens::secret(), |c| c.history_size = 200).await;
    let mut reader = connect_keyed(&hub, "hist", "reader").await;
    let mut sender = connect_keyed(&hub, "hist", "sender").await;
    let mut got = group_traffic(&mut sender, &mut reader, 5).await;
    let cmd = json!({"msg_type": "cmd", "target": "group", "group_id": "hist", "from_id": "svc"});
    publish(&hub, cmd).await;
    got.push(next_message(&mut reader, "the reader").await);
    let epoch = got[0]["epoch"]
        .as_str()
        .expect("a kept message's epoch")
        .to_owned();

    let all = history(&hub, "/v3/history/group/hist").await;
    let want = json!({"epoch": epoch, "offset": 6, "recovered": true, "messages": got});
    assert_eq!(all, want, "the whole group history");
    let from_zero = history(&hub, &format!("/v3/history/group/hist?since={epoch}:0")).await;
    assert_eq!(from_zero["messages"], json!(got), "since offset 0");
    let one = history(
        &hub,
        &format!("/v3/history/group/hist?since={epoch}:4&limit=1"),
    )
    .await;
    assert_eq!(one["messages"], json!([got[4]]), "since 4, limit 1");
    assert_eq!(
        (&one["offset"], &one["recovered"]),
        (&json!(6), &json!(true)),
        "{one}"
    );
    let paged = history_paged(&hub, "/v3/history/group/hist", 2).await;
    assert_eq!(paged, got, "paging two at a time from the last offset");
    let latest = history(&hub, &format!("/v3/history/group/hist?since={epoch}:6")).await;
    let nothing_new = json!({"epoch": epoch, "offset": 6, "recovered": true, "messages": []});
    assert_eq!(latest, nothing_new, "since the last message");
    for since in ["another-epoch:2".to_owned(), format!("{epoch}:99")] {
        let lost = history(&hub, &format!("/v3/history/group/hist?since={since}")).await;
        let want = json!({"epoch": epoch, "offset": 6, "recovered": false, "messages": []});
        assert_eq!(lost, want, "since {since}");
    }

    // The client route and the broadcast route.
    sender
        .send(msg("direct", json!({"to_id": "reader", "msg": "to you"})))
        .await;
    let direct = next_message(&mut reader, "the reader").await;
    let mine = history(&hub, "/v3/history/client/reader").await;
    assert_eq!(
        mine["messages"],
        json!([direct]),
        "the reader's client history"
    );
    assert_eq!(
        (&mine["epoch"], &mine["offset"]),
        (&direct["epoch"], &json!(1)),
        "{mine}"
    );
    sender.send(msg("broadcast", json!({"msg": "all"}))).await;
    let everyone = next_message(&mut reader, "the reader").await;
    let broadcast = history(&hub, "/v3/history/broadcast").await;
    assert_eq!(
        broadcast["messages"],
        json!([everyone]),
        "the broadcast history"
    );
    assert_eq!(broadcast["offset"], 1, "{broadcast}");

    // Default limit 100, oldest first; up to 1000 when asked.
    for i in 0..150 {
        let body = json!({"msg_type": "msg", "target": "group", "group_id": "bulk", "from_id": "svc", "payload": {"i": i}});
        publish(&hub, body).await;
    }
    let first = history(&hub, "/v3/history/group/bulk").await;
    let offsets: Vec<u64> = first["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["offset"].as_u64())
        .collect();
    assert_eq!(
        offsets,
        (1..=100).collect::<Vec<u64>>(),
        "the default limit"
    );
    let every = history(&hub, "/v3/history/group/bulk?limit=1000").await;
    assert_eq!(
        every["messages"].as_array().map(Vec::len),
        Some(150),
        "limit 1000"
    );
}

#[tokio::test]
async fn history_off_answers_an_empty_unrecovered_route() {
    let hub = full_hub(&tokens::secret(), |c| c.history_size = 0).await;
    let mut reader = connect_keyed(&hub, "hist", "reader").await;
    let mut sender = connect_keyed(&hub, "hist", "sender").await;
    let got = group_traffic(&mut sender, &mut reader, 2).await;
    assert!(got[0].get("offset").is_none(), "history off: {}", got[0]);
    let off = json!({"epoch": "", "offset": 0, "recovered": false, "messages": []});
    for path in [
        "/v3/history/group/hist",
        "/v3/history/client/reader",
        "/v3/history/broadcast",
        "/v3/history/group/hist?since=abc:1&limit=5",
    ] {
        assert_eq!(history(&hub, path).await, off, "{path} with history off");
    }
}

/// Whole or nothing (section 9): once the messages after `since` are no
/// longer all kept, nothing at all; from a position still covered, the rest.
#[tokio::test]
async fn history_over_http_is_whole_or_nothing() {
    let hub = full_hub(&tokens::secret(), |c| c.history_size = 3).await;
    for i in 1..=5 {
        let body = json!({"msg_type": "msg", "target": "group", "group_id": "tiny", "from_id": "svc", "msg": format!("m{i}")});
        publish(&hub, body).await;
    }
    let kept = history(&hub, "/v3/history/group/tiny").await;
    let offsets = |page: &Value| -> Vec<u64> {
        let messages = page["messages"].as_array().expect("messages");
        messages
            .iter()
            .filter_map(|m| m["offset"].as_u64())
            .collect()
    };
    assert_eq!(offsets(&kept), [3, 4, 5], "the 3 kept: {kept}");
    assert_eq!(
        (&kept["offset"], &kept["recovered"]),
        (&json!(5), &json!(true))
    );
    let epoch = kept["epoch"].as_str().expect("epoch");
    let gone = history(&hub, &format!("/v3/history/group/tiny?since={epoch}:1")).await;
    let want = json!({"epoch": epoch, "offset": 5, "recovered": false, "messages": []});
    assert_eq!(gone, want, "since 1: message 2 is no longer kept");
    let covered = history(&hub, &format!("/v3/history/group/tiny?since={epoch}:2")).await;
    assert_eq!(covered["recovered"], true, "since 2: {covered}");
    assert_eq!(offsets(&covered), [3, 4, 5], "since 2");
}
