//! Redis as production runs it, TLS and credentials (docs/protocol.md
//! section 7, "Redis as production runs it"): Debian's redis-server on a
//! TLS port only (`--port 0 --tls-port`: nothing reaches it in plain TCP)
//! with certificates of a CA made in the test (rcgen), a password, and for
//! some tests a client certificate required (`tls-auth-clients yes`); a
//! six-node Redis Cluster over TLS (client port, bus and replication) with
//! a password on every node. Two hubs on them route, share presence and
//! recover history as on a plain Redis; credentials in the settings win
//! over a URL's and reach every cluster node, those found from one seed
//! and a replica promoted after its master was killed. A certificate that
//! does not verify, a missing client certificate or a wrong password keep
//! a hub not ready for as long as it lasts, and `/readyz`, the gauges and
//! the real binary's log say why, never with the password.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use aether_hub::Config;
use serde_json::json;
use support::cluster::{key_slot, Cluster, SHARED_PASSWORD};
use support::history::{next_message, resume_after_missing};
use support::process::{launch, spawn_hub, Running};
use support::redis::{smembers, RedisOptions, RedisServer};
use support::tls::TestCa;
use support::tokens::write_temp;
use support::{http_request, msg, Event, HttpResponse, TestHub, TIMEOUT};

/// The `default` user's password on the test's Redis servers.
const PASSWORD: &str = "tlspw5d21c";
/// A password Redis does not know.
const WRONG_PASSWORD: &str = "wrongpw8e0a";
const QUIET: Duration = Duration::from_millis(300);
/// How long a hub that cannot connect is watched staying not ready: longer
/// than the longest reconnect backoff (5 s), so that at least one retry
/// fails in the meantime.
const HOLD: Duration = Duration::from_secs(6);

/// A TLS-only Redis with [`PASSWORD`].
fn tls_redis() -> RedisServer {
    RedisServer::start_with(RedisOptions {
        password: Some(PASSWORD.into()),
        tls: true,
        client_certs: false,
    })
}

/// A TLS-only Redis with no password that wants a client certificate.
fn mutual_tls_redis() -> RedisServer {
    RedisServer::start_with(RedisOptions {
        password: None,
        tls: true,
        client_certs: true,
    })
}

/// The CA file of a TLS Redis.
fn ca_file(redis: &RedisServer) -> std::path::PathBuf {
    redis.tls().expect("a TLS redis").ca_file.clone()
}

/// A hub on `redis` (URL with the password, `rediss://`) that trusts its
/// CA, once ready.
async fn tls_hub(redis: &RedisServer, adjust: impl FnOnce(&mut Config)) -> TestHub {
    let ca = ca_file(redis);
    TestHub::on_redis(redis, |c| {
        c.redis_tls_ca_file = Some(ca);
        adjust(c);
    })
    .await
}

/// A hub on `url` set up by `adjust`, not waited for.
async fn unready_hub(url: String, adjust: impl FnOnce(&mut Config)) -> TestHub {
    TestHub::with(|c| {
        c.redis_url = Some(url);
        adjust(c);
    })
    .await
}

async fn readyz(addr: SocketAddr) -> HttpResponse {
    http_request(addr, "GET", "/readyz", &[], "").await
}

/// Whether `text` has every word of `why`, case aside.
fn says(text: &str, why: &[&str]) -> bool {
    let text = text.to_lowercase();
    why.iter().all(|w| text.contains(&w.to_lowercase()))
}

/// `/readyz` at `addr` comes to answer 503 with a body that names every
/// word of `why` (case aside), without ever answering 200, and still
/// does [`HOLD`] later: not ready, and saying why, for as long as it
/// lasts. Returns the last body.
async fn stays_not_ready_saying(addr: SocketAddr, why: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let answer = readyz(addr).await;
        assert_eq!(answer.status, 503, "ready, though: {}", answer.body);
        if says(&answer.body, why) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never said {why:?}; it says: {:?}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let until = tokio::time::Instant::now() + HOLD;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let answer = readyz(addr).await;
        assert_eq!(answer.status, 503, "ready, though: {}", answer.body);
        assert!(
            says(&answer.body, why),
            "/readyz stopped saying {why:?}: {:?}",
            answer.body
        );
        if tokio::time::Instant::now() >= until {
            return answer.body;
        }
    }
}

/// `aether_redis_up` and both connections' gauges, as a real hub's
/// `/metrics` has them (the metrics of in-process hubs are one registry
/// for the whole test binary).
async fn redis_gauges(hub: &Running) -> [f64; 3] {
    [
        hub.metric("aether_redis_up").await,
        hub.metric(r#"aether_redis_connection_up{connection="commands"}"#)
            .await,
        hub.metric(r#"aether_redis_connection_up{connection="pubsub"}"#)
            .await,
    ]
}

/// The real binary with `env`, its log at the default level (info) piped
/// to the test, once it listens (ready or not).
async fn real_hub(env: &[(&str, &str)]) -> Running {
    let mut all = vec![("AETHER_LOG", "info")];
    all.extend_from_slice(env);
    let hub = launch(&all, Stdio::piped());
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tokio::net::TcpStream::connect(hub.addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hub did not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hub
}

#[tokio::test]
async fn every_target_crosses_instances_over_tls_with_a_password() {
    let redis = tls_redis();
    let (a, b) = (tls_hub(&redis, |_| {}).await, tls_hub(&redis, |_| {}).await);
    let mut alice = a.connect("g1", "alice").await;
    let mut bob = b.connect("g1", "bob").await;
    let mut carol = b.connect("g2", "carol").await;
    assert_eq!(alice.recv().await["payload"]["client_id"], "bob");

    alice
        .send(msg("direct", json!({"to_id": "carol", "msg": "d"})))
        .await;
    assert_eq!(carol.recv().await["msg"], "d");
    alice.send(msg("group", json!({"msg": "g"}))).await;
    let got = bob.recv().await;
    assert_eq!((&got["msg"], &got["group_id"]), (&json!("g"), &json!("g1")));
    alice.send(msg("broadcast", json!({"msg": "b"}))).await;
    assert_eq!(bob.recv().await["msg"], "b");
    assert_eq!(carol.recv().await["msg"], "b");
    alice.expect_silence(QUIET).await;

    // A service publishing through instance B reaches a socket on A.
    let body = json!({"msg_type": "cmd", "target": "direct", "from_id": "svc", "to_id": "alice", "cmd": "go"});
    assert_eq!(
        b.post("/v3/publish", &[], &body.to_string()).await.status,
        202
    );
    assert_eq!(alice.recv().await["cmd"], "go");
}

#[tokio::test]
async fn presence_is_shared_over_tls() {
    let redis = tls_redis();
    let (a, b) = (tls_hub(&redis, |_| {}).await, tls_hub(&redis, |_| {}).await);
    let mut watcher = a.connect("g1", "watcher").await;
    let _amy = b.connect("g1", "amy").await;
    assert_eq!(
        watcher.recv().await["payload"],
        json!({"event": "join", "client_id": "amy"})
    );
    for hub in [&a, &b] {
        let answer = hub.get("/v3/groups/g1/presence").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["members"], json!(["amy", "watcher"]));
    }
    // What the hubs wrote, read back over TLS with the password.
    let mut conn = redis.client().await;
    assert_eq!(
        smembers(&mut conn, "ws:presence:group:g1").await,
        ["amy", "watcher"]
    );
}

/// A worker drops, the controller on the other instance goes on, and the
/// worker resumes with its last position: exactly what it missed, from the
/// history the hubs keep in the TLS Redis.
#[tokio::test]
async fn a_worker_resumes_with_what_it_missed_over_tls() {
    let redis = tls_redis();
    let (a, b) = (tls_hub(&redis, |_| {}).await, tls_hub(&redis, |_| {}).await);
    resume_after_missing(&a, &b, &a, 3).await;
}

/// Without `AETHER_REDIS_TLS_CA_FILE` the hub checks the certificate
/// against the system's roots, which do not know the test CA: it starts,
/// stays not ready and says it is the certificate, on `/readyz` and in the
/// real binary's log (never "Redis down" in silence); its gauges say both
/// connections are down.
#[tokio::test]
async fn without_the_ca_the_hub_stays_not_ready_and_says_why() {
    let redis = tls_redis();
    let hub = unready_hub(redis.url(), |_| {}).await;
    let body = stays_not_ready_saying(hub.addr, &["TLS", "certificate"]).await;
    assert!(!body.contains(PASSWORD), "{body}");
    let refused = hub.upgrade_status("/v3/ws/group/g1/client/c1", &[]).await;
    assert_eq!(refused.0, 503);

    let url = redis.url();
    let real = real_hub(&[("AETHER_REDIS_URL", &url)]).await;
    let body = stays_not_ready_saying(real.addr, &["TLS", "certificate"]).await;
    assert!(!body.contains(PASSWORD), "{body}");
    assert_eq!(redis_gauges(&real).await, [0.0, 0.0, 0.0]);
    let logs = real.kill_for_logs();
    assert!(
        logs.lines().any(|l| says(l, &["certificate"])),
        "no log line says it is the certificate:\n{logs}"
    );
    assert!(!logs.contains(PASSWORD), "the password was logged:\n{logs}");
}

/// The real binary with the CA: ready, and its gauges say Redis and both
/// connections are up.
#[tokio::test]
async fn with_the_ca_the_gauges_say_both_connections_are_up() {
    let redis = tls_redis();
    let ca = ca_file(&redis).to_string_lossy().into_owned();
    let url = redis.url();
    let real = spawn_hub(&[
        ("AETHER_REDIS_URL", &url),
        ("AETHER_REDIS_TLS_CA_FILE", &ca),
    ])
    .await;
    assert_eq!(redis_gauges(&real).await, [1.0, 1.0, 1.0]);
}

/// A CA file of another authority: the certificate does not verify either
/// (verification is on, whatever the CA file).
#[tokio::test]
async fn a_ca_that_did_not_sign_the_certificate_keeps_the_hub_not_ready() {
    let redis = tls_redis();
    let other = write_temp("other-ca.pem", &TestCa::new("other").ca_pem());
    let hub = unready_hub(redis.url(), |c| c.redis_tls_ca_file = Some(other)).await;
    stays_not_ready_saying(hub.addr, &["TLS", "certificate"]).await;
}

/// `tls-auth-clients yes`: with the client certificate and key two hubs
/// work as usual; without them Redis refuses the handshake and the hub
/// stays not ready, saying it is the certificate.
#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let redis = mutual_tls_redis();
    let tls = redis.tls().expect("TLS");
    let with_cert = |c: &mut Config| {
        c.redis_tls_cert_file = Some(tls.client.cert.clone());
        c.redis_tls_key_file = Some(tls.client.key.clone());
    };
    let (a, b) = (
        tls_hub(&redis, with_cert).await,
        tls_hub(&redis, with_cert).await,
    );
    let mut alice = a.connect("m1", "alice").await;
    let mut bob = b.connect("m1", "bob").await;
    assert_eq!(alice.recv().await["payload"]["client_id"], "bob");
    alice.send(msg("group", json!({"msg": "over mTLS"}))).await;
    assert_eq!(next_message(&mut bob).await["msg"], "over mTLS");

    let ca = ca_file(&redis);
    let without = unready_hub(redis.url(), |c| c.redis_tls_ca_file = Some(ca)).await;
    stays_not_ready_saying(without.addr, &["certificate"]).await;
    // The hubs with the certificate were never disturbed.
    assert_eq!(a.get("/readyz").await.status, 200);
}

/// A wrong password: not ready, `/readyz` says it is authentication, and
/// neither password shows in the body or the real binary's log.
#[tokio::test]
async fn a_wrong_password_keeps_the_hub_not_ready_and_says_auth() {
    let redis = tls_redis();
    let ca = ca_file(&redis);
    let wrong_url = format!("rediss://:{WRONG_PASSWORD}@127.0.0.1:{}/", redis.port);
    let hub = unready_hub(wrong_url.clone(), |c| {
        c.redis_tls_ca_file = Some(ca.clone())
    })
    .await;
    let body = stays_not_ready_saying(hub.addr, &["auth"]).await;
    assert!(
        !body.contains(WRONG_PASSWORD) && !body.contains(PASSWORD),
        "{body}"
    );
    let metrics = hub.get("/metrics").await.body;
    assert!(!metrics.contains(WRONG_PASSWORD), "{metrics}");

    let ca = ca.to_string_lossy().into_owned();
    let real = real_hub(&[
        ("AETHER_REDIS_URL", &wrong_url),
        ("AETHER_REDIS_TLS_CA_FILE", &ca),
    ])
    .await;
    let body = stays_not_ready_saying(real.addr, &["auth"]).await;
    assert!(!body.contains(WRONG_PASSWORD), "{body}");
    let logs = real.kill_for_logs();
    assert!(
        logs.lines().any(|l| says(l, &["auth"])),
        "no log line says it is authentication:\n{logs}"
    );
    assert!(
        !logs.contains(WRONG_PASSWORD),
        "the password was logged:\n{logs}"
    );
}

/// `AETHER_REDIS_USERNAME` and `AETHER_REDIS_PASSWORD` win over the URL's:
/// a wrong URL password with the right one in the setting works, the right
/// URL password with a wrong setting does not, and a user in the URL gives
/// way to the setting's.
#[tokio::test]
async fn credentials_from_the_settings_win_over_the_url() {
    let redis = tls_redis();
    let ca = ca_file(&redis);
    let at = |credentials: &str| format!("rediss://{credentials}@127.0.0.1:{}/", redis.port);

    let setting_wins = unready_hub(at(&format!(":{WRONG_PASSWORD}")), |c| {
        c.redis_tls_ca_file = Some(ca.clone());
        c.redis_password = Some(PASSWORD.into());
    })
    .await;
    setting_wins.wait_ready(200).await;

    let user_too = unready_hub(at(&format!("nobody:{WRONG_PASSWORD}")), |c| {
        c.redis_tls_ca_file = Some(ca.clone());
        c.redis_username = Some("default".into());
        c.redis_password = Some(PASSWORD.into());
    })
    .await;
    user_too.wait_ready(200).await;

    // The password alone in the setting, the URL without credentials.
    let no_url_secret = unready_hub(redis.url_without_password(), |c| {
        c.redis_tls_ca_file = Some(ca.clone());
        c.redis_password = Some(PASSWORD.into());
    })
    .await;
    no_url_secret.wait_ready(200).await;

    let url_loses = unready_hub(redis.url(), |c| {
        c.redis_tls_ca_file = Some(ca.clone());
        c.redis_password = Some(WRONG_PASSWORD.into());
    })
    .await;
    stays_not_ready_saying(url_loses.addr, &["auth"]).await;

    // The ones that got in work end to end.
    let mut alice = setting_wins.connect("c1", "alice").await;
    let mut bob = user_too.connect("c1", "bob").await;
    assert_eq!(alice.recv().await["payload"]["client_id"], "bob");
    bob.send(msg("group", json!({"msg": "hi"}))).await;
    assert_eq!(next_message(&mut alice).await["msg"], "hi");
}

/// A hub on the shared TLS cluster with `seeds` and `adjust`, once ready.
async fn cluster_hub(seeds: Vec<String>, adjust: impl FnOnce(&mut Config)) -> TestHub {
    let cluster = Cluster::shared_secured();
    let ca = cluster.secured().expect("secured").tls.ca_file.clone();
    let hub = TestHub::with(|c| {
        c.redis_cluster = seeds;
        c.redis_tls_ca_file = Some(ca);
        c.redis_prefix = "t:".into();
        adjust(c);
    })
    .await;
    hub.wait_ready(200).await;
    hub
}

/// One group per master of the cluster (their channels hash to it), with a
/// socket on `a` and one on `b` each: a group message from `a` must reach
/// every master, over TLS and authenticated, to arrive.
async fn groups_on_every_master_cross(a: &TestHub, b: &TestHub, stem: &str) {
    let cluster = Cluster::shared_secured();
    for index in 0..3 {
        let group = cluster
            .id_on_master(index, &format!("{stem}g"), |g| format!("t:ws:group:{g}"))
            .await;
        let mut sender = a.connect(&group, "sender").await;
        let mut receiver = b.connect(&group, "receiver").await;
        assert_eq!(
            sender.recv().await["payload"]["client_id"],
            "receiver",
            "presence in {group}"
        );
        sender
            .send(msg("group", json!({"msg": format!("to {group}")})))
            .await;
        let got = next_message(&mut receiver).await;
        assert_eq!(got["msg"], format!("to {group}"));
        let members = b.get(&format!("/v3/groups/{group}/presence")).await;
        assert_eq!(members.json()["members"], json!(["receiver", "sender"]));
    }
}

/// Every seed a `rediss://:password@` URL: two hubs route direct, group and
/// broadcast messages across the shards of a cluster that speaks only TLS.
#[tokio::test]
async fn two_hubs_route_across_a_tls_cluster_with_a_password() {
    let seeds = Cluster::shared_secured().seed_urls();
    let (a, b) = (
        cluster_hub(seeds.clone(), |_| {}).await,
        cluster_hub(seeds, |_| {}).await,
    );
    groups_on_every_master_cross(&a, &b, "tc").await;

    let mut alice = a.connect("tcx", "tcalice").await;
    let mut bob = b.connect("tcx", "tcbob").await;
    let mut carol = b.connect("tcy", "tccarol").await;
    assert_eq!(alice.recv().await["payload"]["client_id"], "tcbob");
    alice
        .send(msg("direct", json!({"to_id": "tccarol", "msg": "d"})))
        .await;
    assert_eq!(next_message(&mut carol).await["msg"], "d");
    alice.send(msg("broadcast", json!({"msg": "b"}))).await;
    assert_eq!(next_message(&mut bob).await["msg"], "b");
    assert_eq!(next_message(&mut carol).await["msg"], "b");
}

/// One seed only, whose URL has a wrong user and password; the settings
/// have the right ones. The hubs find the other nodes from the seed and
/// reach each of them with TLS and the settings' credentials.
#[tokio::test]
async fn settings_credentials_reach_every_discovered_node_of_a_tls_cluster() {
    let cluster = Cluster::shared_secured();
    let port = cluster.ports()[0];
    let seed = format!("rediss://nobody:{WRONG_PASSWORD}@127.0.0.1:{port}");
    let credentials = |c: &mut Config| {
        c.redis_username = Some("default".into());
        c.redis_password = Some(SHARED_PASSWORD.into());
    };
    let (a, b) = (
        cluster_hub(vec![seed.clone()], credentials).await,
        cluster_hub(vec![seed], credentials).await,
    );
    groups_on_every_master_cross(&a, &b, "td").await;
}

/// On the TLS cluster too, a wrong password and a CA that is not Redis's
/// keep a hub not ready, saying which, with no password in the body.
#[tokio::test]
async fn a_tls_cluster_with_a_wrong_password_or_ca_keeps_the_hub_not_ready() {
    let cluster = Cluster::shared_secured();
    let ca = cluster.secured().expect("secured").tls.ca_file.clone();
    let port = cluster.ports()[0];
    let wrong_password = TestHub::with(|c| {
        c.redis_cluster = vec![format!("rediss://:{WRONG_PASSWORD}@127.0.0.1:{port}")];
        c.redis_tls_ca_file = Some(ca);
    })
    .await;
    let other = write_temp("other-ca.pem", &TestCa::new("other").ca_pem());
    let wrong_ca = TestHub::with(|c| {
        c.redis_cluster = cluster.seed_urls();
        c.redis_tls_ca_file = Some(other);
    })
    .await;
    let (auth, tls) = tokio::join!(
        stays_not_ready_saying(wrong_password.addr, &["auth"]),
        stays_not_ready_saying(wrong_ca.addr, &["TLS", "certificate"]),
    );
    for body in [auth, tls] {
        assert!(
            !body.contains(WRONG_PASSWORD) && !body.contains(SHARED_PASSWORD),
            "{body}"
        );
    }
}

/// A cluster of its own: its master for a group is killed, and the hubs,
/// given one other node as a `rediss://` seed with no credentials and the
/// password in the setting, follow to the promoted replica (a node they
/// never spoke to before) with TLS and the password, and route again.
#[tokio::test]
async fn a_promoted_replica_is_reached_with_tls_and_the_password() {
    const OWN_PASSWORD: &str = "ownclusterpw71d4";
    let cluster = Cluster::start_secured(OWN_PASSWORD);
    let ca = cluster.secured().expect("secured").tls.ca_file.clone();
    let seed = format!("rediss://127.0.0.1:{}", cluster.masters().await[1]);
    let settings = |c: &mut Config| {
        c.redis_cluster = vec![seed.clone()];
        c.redis_tls_ca_file = Some(ca.clone());
        c.redis_password = Some(OWN_PASSWORD.into());
        c.redis_prefix = "t:".into();
    };
    let (a, b) = (TestHub::with(settings).await, TestHub::with(settings).await);
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    let group = cluster
        .id_on_master(0, "fg", |g| format!("t:ws:group:{g}"))
        .await;
    let mut sender = a.connect(&group, "fsender").await;
    let mut receiver = b.connect(&group, "freceiver").await;
    assert_eq!(sender.recv().await["payload"]["client_id"], "freceiver");
    sender.send(msg("group", json!({"msg": "before"}))).await;
    assert_eq!(next_message(&mut receiver).await["msg"], "before");

    let dead = cluster.kill_master(0).await;
    let promoted = cluster
        .wait_for_failover(dead, key_slot(&format!("t:ws:group:{group}")))
        .await;
    assert_ne!(promoted, dead);
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    // A message sent before a hub noticed the failover may be dropped
    // (section 7): the sender tries until one arrives, within the bound.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    for n in 0.. {
        sender
            .send(msg("group", json!({"msg": format!("after {n}")})))
            .await;
        if let Some(Event::Text(got)) = receiver.next_event(Duration::from_millis(300)).await {
            if got["msg"].as_str().is_some_and(|m| m.starts_with("after")) {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing routed through the promoted replica {promoted}"
        );
    }
}

/// TLS files that do not load are settings errors: the hub stops at
/// start-up with a message that names the variable, instead of starting
/// and retrying a connection that can never work.
#[tokio::test]
async fn tls_files_that_do_not_load_stop_start_up() {
    let ca = TestCa::new("files");
    let (cert, key) = ca.client_leaf("aether-hub");
    let (cert, key) = (write_temp("cert.pem", &cert), write_temp("key.pem", &key));
    let garbage = write_temp("garbage.pem", "not a PEM file\n");
    let missing = std::env::temp_dir().join("aether-no-such-file.pem");
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let (cert, key, garbage, missing) = (path(&cert), path(&key), path(&garbage), path(&missing));
    let cases: [(&str, Vec<(&str, &str)>); 6] = [
        (
            "AETHER_REDIS_TLS_CA_FILE",
            vec![("AETHER_REDIS_TLS_CA_FILE", &missing)],
        ),
        (
            "AETHER_REDIS_TLS_CA_FILE",
            vec![("AETHER_REDIS_TLS_CA_FILE", &garbage)],
        ),
        (
            "AETHER_REDIS_TLS_KEY_FILE",
            vec![("AETHER_REDIS_TLS_CERT_FILE", &cert)],
        ),
        (
            "AETHER_REDIS_TLS_CERT_FILE",
            vec![
                ("AETHER_REDIS_TLS_CERT_FILE", &missing),
                ("AETHER_REDIS_TLS_KEY_FILE", &key),
            ],
        ),
        (
            "AETHER_REDIS_TLS_CERT_FILE",
            vec![
                ("AETHER_REDIS_TLS_CERT_FILE", &garbage),
                ("AETHER_REDIS_TLS_KEY_FILE", &key),
            ],
        ),
        (
            "AETHER_REDIS_TLS_KEY_FILE",
            vec![
                ("AETHER_REDIS_TLS_CERT_FILE", &cert),
                ("AETHER_REDIS_TLS_KEY_FILE", &garbage),
            ],
        ),
    ];
    let mut wrong = Vec::new();
    for (named, env) in cases {
        let mut all = vec![
            ("AETHER_REDIS_URL", "rediss://127.0.0.1:1/"),
            ("AETHER_LOG", "info"),
        ];
        all.extend(env.iter().copied());
        let mut hub = launch(&all, Stdio::piped());
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = hub.child.try_wait().expect("wait") {
                break Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let stopped = status.is_some_and(|s| !s.success());
        let logs = hub.kill_for_logs();
        let first = logs.lines().next().unwrap_or_default().to_owned();
        if !stopped || !logs.contains(named) {
            wrong.push(format!("{env:?}: stopped {stopped}, said: {first}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "settings errors that did not stop start-up naming the variable:\n{}",
        wrong.join("\n")
    );
}
