//! Least privilege (docs/protocol.md section 7; docs/redis-production.md,
//! "Least privilege: the ACL rule"): hubs whose Redis user has exactly the
//! rule the docs give, read from the page itself, do everything they do in
//! Redis, and Redis refuses them nothing. On one server, on a Redis
//! Cluster (every node holding the cluster rule) and with Sentinel (the
//! data nodes holding the sentinel-mode rule, the sentinels the sentinel
//! user's), through a failover.
//!
//! The proof is Redis's own: `ACL LOG` records every command, key and
//! channel it refused, those of server-side scripts included (some of the
//! hub's presence steps swallow a failure, and a refused publish is only a
//! failed message, so the hub's logs alone would miss one), and must stay
//! empty; `INFO commandstats` shows that every command the rule allows was
//! run, so none of them is there for nothing (a command the hub runs is one
//! it needs). The test asks Redis only with commands the rule does not
//! hold, so the counts are the hubs' own. The real binary, logging at
//! debug level, must never write `NOPERM`. And the check is shown to bite:
//! the same rule one command, pattern or channel short, or for another
//! prefix, is refused and `ACL LOG` says what; the binary one command
//! short stays not ready and logs `NOPERM`.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use support::acks::send_acked;
use support::acl::{self, Rule, Stderr, DOC_PREFIX, DOC_USER};
use support::cluster::Cluster;
use support::process::{self, signal, spawn_hub_with_logs, wait_exit, Running};
use support::redis::{kill_named, numsub, RedisServer};
use support::{eventually, msg, Client, TestHub, TIMEOUT};

/// The hub user's password (letters, digits and dashes: it goes into
/// URLs as is).
const PASSWORD: &str = "hub-pw-7f3a";
/// Presence TTL: a killed instance is swept within seconds.
const PRESENCE_TTL: Duration = Duration::from_secs(2);

fn url(redis: &RedisServer) -> String {
    format!("redis://{DOC_USER}:{PASSWORD}@127.0.0.1:{}/", redis.port)
}

/// Creates the hub's user with `words` on `redis`, then empties `ACL LOG`
/// and the command counts; returns the test's own (unrestricted)
/// connection.
async fn restricted(redis: &RedisServer, words: &[String]) -> redis::aio::MultiplexedConnection {
    let mut admin = redis.client().await;
    acl::set_user(&mut admin, DOC_USER, words).await;
    acl::reset(&mut admin).await;
    admin
}

/// An in-process hub as the restricted user, under `prefix`.
async fn hub_as(url: &str, prefix: &str, instance: &str) -> TestHub {
    let (url, prefix, instance) = (url.to_owned(), prefix.to_owned(), instance.to_owned());
    TestHub::with(move |c| {
        c.redis_url = Some(url);
        c.redis_prefix = prefix;
        c.instance_id = instance;
        c.presence_ttl = PRESENCE_TTL;
    })
    .await
}

/// The real binary as the restricted user on one server.
async fn binary_as(url: &str, instance: &str) -> (Running, Stderr) {
    binary_with(&[("AETHER_REDIS_URL", url), ("AETHER_INSTANCE_ID", instance)]).await
}

/// `ACL LOG` as one line per refusal (empty: nothing refused).
async fn refusals(admin: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    acl::denials(admin)
        .await
        .iter()
        .map(|d| {
            format!(
                "{} {:?} refused to {} ({}, {} times)",
                d.reason, d.object, d.username, d.context, d.count
            )
        })
        .collect()
}

/// The next message `keep` accepts; others are skipped.
async fn next_where(client: &mut Client, keep: impl Fn(&Value) -> bool) -> Value {
    loop {
        let m = client.recv().await;
        if keep(&m) {
            return m;
        }
    }
}

fn presence(event: &str, client: &str) -> impl Fn(&Value) -> bool {
    let want = json!({"event": event, "client_id": client});
    move |m| m["msg_type"] == "presence" && m["payload"] == want
}

fn not_presence(m: &Value) -> bool {
    m["msg_type"] != "presence"
}

fn position(m: &Value) -> String {
    let epoch = m["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no epoch: {m}"));
    format!("{epoch}:{}", m["offset"])
}

/// A service's publish of a group command through `hub`; its `202` body.
async fn publish(addr: SocketAddr, group: &str, cmd: &str) -> Value {
    let body = json!({"msg_type": "cmd", "target": "group", "group_id": group,
                      "from_id": "svc", "cmd": cmd});
    let answer = support::http_request(addr, "POST", "/v3/publish", &[], &body.to_string()).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    answer.json()
}

/// Two instances (one in-process, one the real binary) and a third that is
/// killed, all as the documented user under the documented prefix,
/// through every Redis feature the hub has.
#[tokio::test]
async fn every_redis_feature_works_with_exactly_the_documented_rule() {
    let redis = RedisServer::start();
    let words = acl::rule(Rule::Single, DOC_PREFIX, PASSWORD);
    let mut admin = restricted(&redis, &words).await;
    let url = url(&redis);
    let a = hub_as(&url, DOC_PREFIX, "acl-a").await;
    a.wait_ready(200).await;
    let (mut b, b_logs) = binary_as(&url, "acl-b").await;
    let (doomed, doomed_logs) = binary_as(&url, "acl-doomed").await;

    // Every connection the hubs opened is the restricted user's.
    let named = acl::named_users(&mut admin).await;
    for instance in ["acl-a", "acl-b", "acl-doomed"] {
        for role in ["commands", "pubsub"] {
            let name = format!("aether:{instance}:{role}");
            assert!(
                named.iter().any(|(n, _)| *n == name),
                "{name} not open: {named:?}"
            );
        }
    }
    for (name, user) in named.iter().filter(|(n, _)| n.starts_with("aether:")) {
        assert_eq!(user, DOC_USER, "{name}");
    }

    // Presence across instances, as events and over HTTP.
    let mut watcher = a.connect("g1", "watcher").await;
    let mut alice = Client::connect(&b.ws_url("g1", "alice"), &[])
        .await
        .expect("alice on B");
    next_where(&mut watcher, presence("join", "alice")).await;
    let mut carol = Client::connect(&b.ws_url("g2", "carol"), &[])
        .await
        .expect("carol on B");
    assert_eq!(
        b.get("/v3/groups/g1/presence").await.json()["members"],
        json!(["alice", "watcher"])
    );

    // Routing across instances, every target, with acknowledgements.
    let frame = |target: &str, extra: Value, ack: &str| {
        let mut m = msg(target, extra);
        m["ack_id"] = json!(ack);
        m
    };
    let ack = send_acked(&mut alice, frame("group", json!({"msg": "g"}), "a1")).await;
    assert_eq!(ack["status"], "ok", "{ack}");
    assert_eq!(next_where(&mut watcher, not_presence).await["msg"], "g");
    let ack = send_acked(
        &mut watcher,
        frame("direct", json!({"to_id": "alice", "msg": "d"}), "a2"),
    )
    .await;
    assert_eq!(ack["status"], "ok", "{ack}");
    let direct = next_where(&mut alice, not_presence).await;
    assert_eq!(direct["msg"], "d");
    let ack = send_acked(&mut watcher, frame("broadcast", json!({"msg": "b"}), "a3")).await;
    assert_eq!(ack["status"], "ok", "{ack}");
    assert_eq!(next_where(&mut carol, not_presence).await["msg"], "b");
    assert_eq!(next_where(&mut alice, not_presence).await["msg"], "b");

    // A service's publish through A reaches B's socket.
    let placed = publish(a.addr, "g1", "start").await;
    let got = next_where(&mut alice, not_presence).await;
    assert_eq!(
        (got["cmd"].as_str(), &got["offset"]),
        (Some("start"), &placed["offset"])
    );
    let seen_group = position(&got);
    let seen_client = position(&direct);

    // History: alice misses group and direct messages, and resumes on the
    // other instance with exactly them.
    assert_eq!(alice.close().await, 1000);
    next_where(&mut watcher, presence("leave", "alice")).await;
    let mut observer = Client::connect(&b.ws_url("g1", "observer"), &[])
        .await
        .expect("observer on B");
    for n in 1..=2 {
        watcher
            .send(msg("group", json!({"cmd": format!("step-{n}")})))
            .await;
    }
    watcher
        .send(msg("direct", json!({"to_id": "alice", "msg": "missed"})))
        .await;
    for _ in 0..2 {
        next_where(&mut observer, not_presence).await;
    }
    let resume = format!(
        "{}?since_group={seen_group}&since_client={seen_client}&since_broadcast=new",
        a.ws_url("g1", "alice")
    );
    let mut alice = Client::connect(&resume, &[]).await.expect("resume on A");
    let mut replayed = Vec::new();
    let summary = loop {
        let m = next_where(&mut alice, not_presence).await;
        if m["msg_type"] == "recovery" {
            break m;
        }
        replayed.push(m);
    };
    let mut what: Vec<String> = replayed
        .iter()
        .map(|m| {
            m["cmd"]
                .as_str()
                .or(m["msg"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    what.sort();
    assert_eq!(what, ["missed", "step-1", "step-2"]);
    let payload = &summary["payload"];
    assert_eq!(
        (&payload["group"]["recovered"], &payload["group"]["missed"]),
        (&json!(true), &json!(2)),
        "{summary}"
    );
    assert_eq!(
        (
            &payload["client"]["recovered"],
            &payload["client"]["missed"]
        ),
        (&json!(true), &json!(1)),
        "{summary}"
    );

    // Gap repair: B's pub/sub connection drops while A publishes; B's
    // observer gets every message once, in order, from history.
    let repairs = b.metric("aether_gap_repairs_total").await;
    assert_eq!(kill_named(&mut admin, "aether:acl-b:pubsub").await, 1);
    let mut offsets = Vec::new();
    for n in 1..=3 {
        offsets.push(publish(a.addr, "g1", &format!("gap-{n}")).await["offset"].clone());
    }
    for (n, offset) in offsets.iter().enumerate() {
        let m = next_where(&mut observer, not_presence).await;
        assert_eq!(
            (m["cmd"].as_str(), &m["offset"]),
            (Some(format!("gap-{}", n + 1).as_str()), offset)
        );
    }
    eventually("B repaired the gap", || async {
        b.metric("aether_gap_repairs_total").await > repairs
    })
    .await;
    eventually("B listens again", || async {
        b.get("/readyz").await.status == 200
    })
    .await;

    // Scripts flushed (a restart, a failover to a replica): the hub runs
    // them from source and goes on.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .expect("SCRIPT FLUSH");
    let ack = send_acked(&mut watcher, frame("group", json!({"msg": "after"}), "a4")).await;
    assert_eq!(ack["status"], "ok", "{ack}");

    // A channel nobody needs any more is unsubscribed.
    let carol_channel = format!("{DOC_PREFIX}ws:client:carol");
    assert_eq!(numsub(&mut admin, &carol_channel).await, 1);
    assert_eq!(carol.close().await, 1000);
    eventually("carol's channel unsubscribed", || {
        let mut admin = admin.clone();
        let channel = carol_channel.clone();
        async move { numsub(&mut admin, &channel).await == 0 }
    })
    .await;

    operate(a.addr, b.addr, "single", "redis").await;

    // A killed instance is swept: its client leaves presence.
    let _victim = Client::connect(&doomed.ws_url("g1", "victim"), &[])
        .await
        .expect("victim on the doomed instance");
    next_where(&mut watcher, presence("join", "victim")).await;
    signal(&doomed.child, libc::SIGKILL);
    next_where(&mut watcher, presence("leave", "victim")).await;
    let members = a.get("/v3/groups/g1/presence").await.json()["members"].clone();
    assert_eq!(members, json!(["alice", "observer", "watcher"]));

    // Graceful shutdowns withdraw each instance.
    signal(&b.child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut b.child, TIMEOUT).code(), Some(0));
    let closing: Vec<_> = [watcher, alice, observer]
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.recv_close().await.0 }))
        .collect();
    assert!(a.server.shut_down(TIMEOUT).await, "A shut down in time");
    for closed in closing {
        assert_eq!(closed.await.expect("reader"), 1001);
    }

    // Nothing was refused, and every command of the rule was needed.
    assert_eq!(refusals(&mut admin).await, Vec::<String>::new());
    let calls = acl::calls(&mut admin).await;
    println!("commands run: {calls:?}");
    let unused: Vec<String> = acl::allowed(&words)
        .into_iter()
        .filter(|c| calls.get(c).copied().unwrap_or(0) == 0)
        .collect();
    assert!(
        unused.is_empty(),
        "allowed but never run: {unused:?} (ran: {calls:?})"
    );
    // Everything left in Redis is under the prefix.
    for key in acl::keys(&mut admin).await {
        assert!(
            key.starts_with(&format!("{DOC_PREFIX}ws:"))
                || key.starts_with(&format!("{{{DOC_PREFIX}ws:")),
            "{key}"
        );
    }
    // The binaries logged (at debug level) and never met a refusal.
    for (name, logs) in [("B", &b_logs), ("the killed instance", &doomed_logs)] {
        assert!(logs.text().contains("DEBUG"), "{name} logged nothing");
        assert_eq!(logs.lines_with("NOPERM"), Vec::<String>::new(), "{name}");
    }
}

/// The check bites: the documented rule with one word taken away (a
/// command, the hash-tagged key pattern, the channel pattern), or a hub
/// under another prefix than the user's, is refused, and `ACL LOG` names
/// what.
#[tokio::test]
async fn a_rule_one_word_short_or_another_prefix_is_refused() {
    let redis = RedisServer::start();
    let full = acl::rule(Rule::Single, DOC_PREFIX, PASSWORD);
    let tagged = format!("~{{{DOC_PREFIX}ws:*");
    let channels = format!("&{DOC_PREFIX}ws:*");
    let cases: [(&str, Vec<String>, &str, &str, &str); 4] = [
        (
            "without +evalsha",
            acl::without(&full, "+evalsha"),
            DOC_PREFIX,
            "command",
            "evalsha",
        ),
        (
            "without the hash-tagged key pattern",
            acl::without(&full, &tagged),
            DOC_PREFIX,
            "key",
            "{acme:ws:group:g}:",
        ),
        (
            "without the channel pattern",
            acl::without(&full, &channels),
            DOC_PREFIX,
            "channel",
            "acme:ws:",
        ),
        (
            "under another prefix",
            full.clone(),
            "other:",
            "key",
            "other:ws:presence:",
        ),
    ];
    for (case, words, prefix, reason, object) in cases {
        let mut admin = restricted(&redis, &words).await;
        let hub = hub_as(&url(&redis), prefix, "short").await;
        // Let it try: connect, subscribe, and publish a kept message on a
        // socket when it can take one.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < deadline && hub.get("/readyz").await.status != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Ok(mut c) = Client::connect(&hub.ws_url("g", "c"), &[]).await {
            let mut frame = msg("group", json!({"msg": "m"}));
            frame["ack_id"] = json!("k");
            let ack = send_acked(&mut c, frame).await;
            assert_ne!(ack["status"], "ok", "{case}: {ack}");
        }
        eventually(case, || {
            let mut admin = admin.clone();
            async move {
                acl::denials(&mut admin)
                    .await
                    .iter()
                    .any(|d| d.reason == reason && d.object.starts_with(object))
            }
        })
        .await;
        let refused = refusals(&mut admin).await;
        println!("{case}: {refused:?}");
        let _ = hub.server.shut_down(Duration::from_secs(1)).await;
    }
}

/// The real binary one command short (`+script|load`, needed before the
/// hub declares itself up) stays not ready, says why on `/readyz`, and
/// logs `NOPERM`: the log check of the main test bites too.
#[tokio::test]
async fn the_binary_one_command_short_is_not_ready_and_says_noperm() {
    let redis = RedisServer::start();
    let words = acl::without(
        &acl::rule(Rule::Single, DOC_PREFIX, PASSWORD),
        "+script|load",
    );
    let mut admin = restricted(&redis, &words).await;
    let url = url(&redis);
    let mut hub = process::launch(
        &[
            ("AETHER_REDIS_URL", url.as_str()),
            ("AETHER_REDIS_PREFIX", DOC_PREFIX),
        ],
        Stdio::piped(),
    );
    let logs = Stderr::drain(&mut hub.child);
    eventually("the hub says NOPERM", || async {
        if tokio::net::TcpStream::connect(hub.addr).await.is_err() {
            return false;
        }
        let ready = hub.get("/readyz").await;
        ready.status == 503
            && ready.body.contains("NOPERM")
            && !logs.lines_with("NOPERM").is_empty()
    })
    .await;
    assert!(!logs.text().contains(PASSWORD), "the password was logged");
    let denials = acl::denials(&mut admin).await;
    assert!(
        denials.iter().any(|d| d.object == "script|load"),
        "{denials:?}"
    );
}

/// A URL that names a database other than 0 needs `+select` as well (the
/// docs say so): without it the hub is not ready.
#[tokio::test]
async fn a_database_other_than_0_needs_select() {
    let redis = RedisServer::start();
    let full = acl::rule(Rule::Single, DOC_PREFIX, PASSWORD);
    let url = url(&redis) + "2";
    let admin = restricted(&redis, &full).await;
    let hub = hub_as(&url, DOC_PREFIX, "db2").await;
    eventually("SELECT refused", || {
        let mut admin = admin.clone();
        async move {
            acl::denials(&mut admin)
                .await
                .iter()
                .any(|d| d.object == "select")
        }
    })
    .await;
    assert_eq!(hub.get("/readyz").await.status, 503);
    let _ = hub.server.shut_down(Duration::from_secs(1)).await;

    let mut with_select = full.clone();
    with_select.push("+select".into());
    let mut admin = restricted(&redis, &with_select).await;
    let hub = hub_as(&url, DOC_PREFIX, "db2").await;
    hub.wait_ready(200).await;
    let mut c = hub.connect("g", "c").await;
    let mut frame = msg("group", json!({"msg": "m"}));
    frame["ack_id"] = json!("k");
    assert_eq!(send_acked(&mut c, frame).await["status"], "ok");
    assert_eq!(refusals(&mut admin).await, Vec::<String>::new());
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut admin)
        .await
        .expect("KEYS");
    assert!(keys.is_empty(), "db 0 stays empty: {keys:?}");
}

/// The page's shell form (any prefix, the password from the hub's own
/// `AETHER_REDIS_PASSWORD`) makes exactly the user its one-line form
/// does, and a prefix with glob characters is escaped in both.
#[tokio::test]
async fn the_shell_form_makes_the_same_user() {
    let redis = RedisServer::start();
    let mut admin = redis.client().await;
    let snippet = acl::block("acl:shell");
    let script = format!(
        "set -eu\nredis-cli() {{ command redis-cli -h 127.0.0.1 -p {} \"$@\"; }}\n{snippet}",
        redis.port
    );
    let run = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("AETHER_REDIS_PASSWORD", PASSWORD)
        .output()
        .expect("bash");
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && out.trim() == "OK",
        "{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let from_shell = acl::get_user(&mut admin, DOC_USER).await;
    acl::set_user(
        &mut admin,
        "from-line",
        &acl::rule(Rule::Single, DOC_PREFIX, PASSWORD),
    )
    .await;
    assert_eq!(from_shell, acl::get_user(&mut admin, "from-line").await);

    // A prefix with glob characters: its patterns match it literally.
    let odd = "t[1]*?:";
    let words = acl::rule(Rule::Single, odd, PASSWORD);
    assert!(
        words.contains(&"~t\\[1\\]\\*\\?:ws:*".to_owned()),
        "{words:?}"
    );
    let mut admin = restricted(&redis, &words).await;
    let hub = hub_as(&url(&redis), odd, "odd").await;
    hub.wait_ready(200).await;
    let mut c = hub.connect("g", "c").await;
    let mut frame = msg("group", json!({"msg": "m"}));
    frame["ack_id"] = json!("k");
    assert_eq!(send_acked(&mut c, frame).await["status"], "ok");
    c.close().await;
    assert!(hub.server.shut_down(TIMEOUT).await);
    assert_eq!(refusals(&mut admin).await, Vec::<String>::new());
}

/// Two instances at `a` and `b` through what every Redis mode shares:
/// presence (events and HTTP), every target with acknowledgements, a
/// service's publish, and a socket that resumes on the other instance
/// with exactly what it missed. Groups and clients are named after `tag`.
async fn exercise(a: SocketAddr, b: SocketAddr, tag: &str, mode: &str) {
    let ws = |at: SocketAddr, group: &str, client: &str| {
        format!("ws://{at}/v3/ws/group/{tag}-{group}/client/{tag}-{client}")
    };
    let (g1, alice_id) = (format!("{tag}-g1"), format!("{tag}-alice"));
    let mut watcher = Client::connect(&ws(a, "g1", "watcher"), &[])
        .await
        .expect("watcher");
    let mut alice = Client::connect(&ws(b, "g1", "alice"), &[])
        .await
        .expect("alice");
    next_where(&mut watcher, presence("join", &alice_id)).await;
    let path = format!("/v3/groups/{g1}/presence");
    let listed = support::http_request(b, "GET", &path, &[], "").await;
    assert_eq!(
        listed.json()["members"],
        json!([alice_id, format!("{tag}-watcher")])
    );

    let acked = |target: &str, extra: Value, id: &str| {
        let mut m = msg(target, extra);
        m["ack_id"] = json!(id);
        m
    };
    let ack = send_acked(&mut alice, acked("group", json!({"msg": "g"}), "1")).await;
    assert_eq!(ack["status"], "ok", "{ack}");
    assert_eq!(next_where(&mut watcher, not_presence).await["msg"], "g");
    let to_alice = json!({"to_id": alice_id, "msg": "d"});
    let ack = send_acked(&mut watcher, acked("direct", to_alice, "2")).await;
    assert_eq!(ack["status"], "ok", "{ack}");
    assert_eq!(next_where(&mut alice, not_presence).await["msg"], "d");
    let ack = send_acked(&mut watcher, acked("broadcast", json!({"msg": "b"}), "3")).await;
    assert_eq!(ack["status"], "ok", "{ack}");
    assert_eq!(next_where(&mut alice, not_presence).await["msg"], "b");
    let placed = publish(a, &g1, "start").await;
    let got = next_where(&mut alice, not_presence).await;
    assert_eq!(got["offset"], placed["offset"]);
    let seen = position(&got);

    assert_eq!(alice.close().await, 1000);
    for n in 1..=2 {
        let step = acked(
            "group",
            json!({"cmd": format!("step-{n}")}),
            &format!("s{n}"),
        );
        let ack = send_acked(&mut watcher, step).await;
        assert_eq!(ack["status"], "ok", "{ack}");
    }
    let resume = format!("{}?since_group={seen}", ws(a, "g1", "alice"));
    let mut alice = Client::connect(&resume, &[]).await.expect("resume");
    for n in 1..=2 {
        let m = next_where(&mut alice, not_presence).await;
        assert_eq!(m["cmd"], format!("step-{n}"));
    }
    let summary = next_where(&mut alice, not_presence).await;
    assert_eq!(summary["msg_type"], "recovery", "{summary}");
    assert_eq!(summary["payload"]["group"]["recovered"], true, "{summary}");
    assert_eq!(summary["payload"]["group"]["missed"], 2, "{summary}");
    operate(a, b, tag, mode).await;
    alice.close().await;
    watcher.close().await;
}

/// The operators' routes (docs/protocol.md section 11) as the documented
/// user: a disconnect through A closes a socket on B, a revocation is
/// kept (and every instance loads the kept ones), `info` reads every
/// liveness record, and names the `mode`.
async fn operate(a: SocketAddr, b: SocketAddr, tag: &str, mode: &str) {
    let dave_id = format!("{tag}-dave");
    let mut dave = Client::connect(
        &format!("ws://{b}/v3/ws/group/{tag}-g1/client/{dave_id}"),
        &[],
    )
    .await
    .expect("dave on B");
    let body = json!({"client_id": dave_id, "reason": "acl"}).to_string();
    let answer = support::http_request(a, "POST", "/v3/disconnect", &[], &body).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(dave.recv_close().await, (4010, "acl".to_owned()));
    let until = aether_hub::auth::unix_now() + 3600;
    let body = json!({"jti": format!("{tag}-token"), "until": until}).to_string();
    let answer = support::http_request(a, "POST", "/v3/revoke", &[], &body).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let info = support::http_request(b, "GET", "/v3/info", &[], "").await;
    assert_eq!(info.status, 200, "{}", info.body);
    let listed = info.json()["instances"].as_array().map_or(0, Vec::len);
    assert!(listed >= 2, "{}", info.body);
    assert_eq!(info.json()["mode"], mode, "{}", info.body);
}

/// Sums `INFO commandstats` over `conns`, until every command of `want`
/// was run (bounded); returns those never run.
async fn never_run(
    conns: &mut [redis::aio::MultiplexedConnection],
    want: &[String],
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let mut calls = std::collections::HashMap::new();
        for conn in conns.iter_mut() {
            for (command, n) in acl::calls(conn).await {
                *calls.entry(command).or_insert(0) += n;
            }
        }
        let missing: Vec<String> = want
            .iter()
            // `info|replication` allows an argument, not a subcommand:
            // INFO counts as `info`.
            .filter(|c| {
                let base = c.split('|').next().unwrap_or(c);
                calls
                    .get(*c)
                    .or_else(|| calls.get(base))
                    .copied()
                    .unwrap_or(0)
                    == 0
            })
            .cloned()
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// On a Redis Cluster, every node holding the documented cluster rule:
/// one hub with the credentials in `AETHER_REDIS_USERNAME`/`PASSWORD`,
/// the real binary with them in `AETHER_REDIS_CLUSTER`'s URLs, through
/// what every mode does and a publish to a slot in the middle of a
/// migration. No node refuses anything, and every command of the rule was
/// run.
#[tokio::test]
async fn a_cluster_needs_exactly_the_documented_cluster_rule() {
    let cluster = Cluster::start();
    replicas_online(&cluster).await;
    let words = acl::rule(Rule::Cluster, DOC_PREFIX, PASSWORD);
    let mut admins = Vec::new();
    for port in cluster.ports() {
        let mut conn = cluster.client(port).await;
        acl::set_user(&mut conn, DOC_USER, &words).await;
        acl::reset(&mut conn).await;
        admins.push(conn);
    }
    let seeds: Vec<String> = cluster.seeds().split(',').map(str::to_owned).collect();
    let a = TestHub::with(|c| {
        c.redis_cluster = seeds.clone();
        c.redis_username = Some(DOC_USER.into());
        c.redis_password = Some(PASSWORD.into());
        c.redis_prefix = DOC_PREFIX.into();
        c.instance_id = "acl-ca".into();
        c.presence_ttl = PRESENCE_TTL;
    })
    .await;
    a.wait_ready(200).await;
    let urls: Vec<String> = seeds
        .iter()
        .map(|s| format!("redis://{DOC_USER}:{PASSWORD}@{s}/"))
        .collect();
    let (b, b_logs) = binary_with(&[
        ("AETHER_REDIS_CLUSTER", &urls.join(",")),
        ("AETHER_INSTANCE_ID", "acl-cb"),
    ])
    .await;

    exercise(a.addr, b.addr, "c1", "cluster").await;
    mid_migration_publish(&cluster, b.addr).await;

    let want = acl::allowed(&words);
    for (port, admin) in cluster.ports().into_iter().zip(admins.iter_mut()) {
        assert_eq!(refusals(admin).await, Vec::<String>::new(), "node {port}");
        for (name, user) in acl::named_users(admin).await {
            if name.starts_with("aether:") {
                assert_eq!(user, DOC_USER, "{name} on {port}");
            }
        }
        println!("node {port}: {:?}", acl::calls(admin).await);
    }
    assert_eq!(never_run(&mut admins, &want).await, Vec::<String>::new());
    assert!(b_logs.text().contains("DEBUG"), "B logged nothing");
    assert_eq!(b_logs.lines_with("NOPERM"), Vec::<String>::new());
}

/// With Sentinel: the data nodes hold the documented sentinel-mode rule,
/// the sentinels the documented sentinel user (with a password of its
/// own). Two hubs, one the real binary, before and after a failover
/// (`SENTINEL FAILOVER`: `+switch-master`, `ROLE` on the new master): no
/// data node and no sentinel refuses anything.
#[tokio::test]
async fn sentinel_mode_needs_exactly_the_documented_rules() {
    const SENTINEL_PASSWORD: &str = "sentinel-pw-91c2";
    let sentinels = support::sentinel::Sentinels::start().await;
    let words = acl::rule(Rule::Sentinel, DOC_PREFIX, PASSWORD);
    for port in sentinels.data_ports() {
        let mut conn = sentinels.client(port).await;
        acl::set_user(&mut conn, DOC_USER, &words).await;
        acl::reset(&mut conn).await;
    }
    let on_sentinels = acl::rule(Rule::SentinelUser, DOC_PREFIX, SENTINEL_PASSWORD);
    let mut watchers = Vec::new();
    for port in sentinels.sentinel_ports() {
        let mut conn = sentinels.client(port).await;
        acl::set_user(&mut conn, DOC_USER, &on_sentinels).await;
        acl::reset_log(&mut conn).await;
        watchers.push(conn);
    }
    let a = TestHub::with(|c| {
        c.redis_sentinels = sentinels.sentinel_addrs();
        c.redis_sentinel_master = Some(sentinels.master_name());
        c.redis_sentinel_username = Some(DOC_USER.into());
        c.redis_sentinel_password = Some(SENTINEL_PASSWORD.into());
        c.redis_username = Some(DOC_USER.into());
        c.redis_password = Some(PASSWORD.into());
        c.redis_prefix = DOC_PREFIX.into();
        c.instance_id = "acl-sa".into();
        c.presence_ttl = PRESENCE_TTL;
    })
    .await;
    a.wait_ready(200).await;
    let list = sentinels.sentinels_list();
    let master = sentinels.master_name();
    let (b, b_logs) = binary_with(&[
        ("AETHER_REDIS_SENTINELS", &list),
        ("AETHER_REDIS_SENTINEL_MASTER", &master),
        ("AETHER_REDIS_SENTINEL_USERNAME", DOC_USER),
        ("AETHER_REDIS_SENTINEL_PASSWORD", SENTINEL_PASSWORD),
        ("AETHER_REDIS_USERNAME", DOC_USER),
        ("AETHER_REDIS_PASSWORD", PASSWORD),
        ("AETHER_INSTANCE_ID", "acl-sb"),
    ])
    .await;

    exercise(a.addr, b.addr, "s1", "sentinel").await;
    // The hubs are the restricted users on both sides: each listens for
    // `+switch-master` on a sentinel, and names its connections to the
    // master.
    let mut on_sentinels = Vec::new();
    for conn in &mut watchers {
        on_sentinels.extend(acl::clients(conn).await);
    }
    let listening: Vec<_> = on_sentinels
        .iter()
        .filter(|c| c.subscriptions == 1 && c.user == DOC_USER)
        .collect();
    assert!(listening.len() >= 2, "{on_sentinels:?}");
    let mut master = sentinels.master_client().await;
    let named = acl::named_users(&mut master).await;
    for instance in ["acl-sa", "acl-sb"] {
        for role in ["commands", "pubsub"] {
            let name = format!("aether:{instance}:{role}");
            assert!(
                named.iter().any(|(n, u)| *n == name && u == DOC_USER),
                "{name}: {named:?}"
            );
        }
    }
    sentinels.failover().await;
    eventually("A followed the failover", || async {
        a.metric("aether_redis_failovers_total").await >= 1.0
            && a.get("/readyz").await.status == 200
    })
    .await;
    eventually("B followed the failover", || async {
        b.metric("aether_redis_failovers_total").await >= 1.0
            && b.get("/readyz").await.status == 200
    })
    .await;
    exercise(a.addr, b.addr, "s2", "sentinel").await;

    // The failover closed the test's connections to the demoted master.
    for port in sentinels.data_ports() {
        let mut conn = sentinels.client(port).await;
        let refused = refusals(&mut conn).await;
        assert_eq!(refused, Vec::<String>::new(), "data node {port}");
    }
    for (port, conn) in sentinels
        .sentinel_ports()
        .into_iter()
        .zip(watchers.iter_mut())
    {
        assert_eq!(
            refusals(conn).await,
            Vec::<String>::new(),
            "sentinel {port}"
        );
    }
    assert!(b_logs.text().contains("DEBUG"), "B logged nothing");
    assert_eq!(b_logs.lines_with("NOPERM"), Vec::<String>::new());
}

/// The real binary under the documented prefix, logging at debug level,
/// with `env` (the Redis settings) and its stderr drained.
async fn binary_with(env: &[(&str, &str)]) -> (Running, Stderr) {
    let ttl = PRESENCE_TTL.as_secs().to_string();
    let mut all = vec![
        ("AETHER_REDIS_PREFIX", DOC_PREFIX),
        ("AETHER_PRESENCE_TTL_SECS", ttl.as_str()),
        ("AETHER_LOG", "debug"),
    ];
    all.extend_from_slice(env);
    let mut hub = spawn_hub_with_logs(&all).await;
    let logs = Stderr::drain(&mut hub.child);
    (hub, logs)
}

/// Waits until `CLUSTER SHARDS` calls every replica online. Redis 7.0
/// calls a replica `loading` while its replication offset is 0, as on a
/// cluster nothing was ever written to, and the hub waits (`WAIT 1`) only
/// for replicas that are online: one write per master first, with a
/// command the rule does not hold (so the counts stay the hubs').
async fn replicas_online(cluster: &Cluster) {
    let masters = cluster.masters().await;
    let mut warmed = std::collections::HashSet::new();
    for n in 0.. {
        let key = format!("warm-{n}");
        let master = cluster.master_of_key(&key).await;
        if warmed.insert(master) {
            let _: i64 = redis::cmd("INCR")
                .arg(&key)
                .query_async(&mut cluster.client(master).await)
                .await
                .expect("INCR");
        }
        if masters.iter().all(|m| warmed.contains(m)) {
            break;
        }
    }
    let mut conn = cluster.client(masters[0]).await;
    let deadline = tokio::time::Instant::now() + support::cluster::CLUSTER_TIMEOUT;
    loop {
        let shards: redis::Value = redis::cmd("CLUSTER")
            .arg("SHARDS")
            .query_async(&mut conn)
            .await
            .expect("CLUSTER SHARDS");
        if !format!("{shards:?}").contains("loading") {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas stay loading"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A kept message published to a slot caught in the middle of a migration
/// (`SETSLOT … MIGRATING` on its owner, `IMPORTING` on another master, its
/// keys not yet anywhere): the owner answers `ASK`, and the hub follows it
/// to the importing master with `ASKING` (which `INFO commandstats` then
/// shows, and no node refuses).
async fn mid_migration_publish(cluster: &Cluster, hub: SocketAddr) {
    let group = "moving";
    let slot = support::cluster::key_slot(&format!("{DOC_PREFIX}ws:group:{group}"));
    let from = cluster.master_of_slot(slot).await;
    let to = cluster.other_master(from).await;
    let id = |port: u16| async move {
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut cluster.client(port).await)
            .await
            .expect("CLUSTER MYID");
        id
    };
    let (from_id, to_id) = (id(from).await, id(to).await);
    let setslot = |port: u16, state: &'static str, node: Option<String>| async move {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot).arg(state);
        if let Some(node) = node {
            cmd.arg(node);
        }
        let _: () = cmd
            .query_async(&mut cluster.client(port).await)
            .await
            .unwrap_or_else(|e| panic!("SETSLOT {slot} {state}: {e}"));
    };
    setslot(to, "IMPORTING", Some(from_id)).await;
    setslot(from, "MIGRATING", Some(to_id)).await;
    // The script's two keys exist on neither master, so the importing one
    // answers `TRYAGAIN` even after `ASKING` (Redis refuses a multi-key
    // command there until they have all arrived): the publish fails
    // honestly (503), but only after the hub followed the redirection.
    let body = json!({"msg_type": "cmd", "target": "group", "group_id": group,
                      "from_id": "svc", "cmd": "moving"});
    let answer = support::http_request(hub, "POST", "/v3/publish", &[], &body.to_string()).await;
    assert!(matches!(answer.status, 202 | 503), "{answer:?}");
    // Back as it was: the test's cluster ends with the test.
    setslot(from, "STABLE", None).await;
    setslot(to, "STABLE", None).await;
}
