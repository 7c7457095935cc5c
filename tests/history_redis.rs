//! History and recovery in Redis mode (docs/protocol.md section 9): real
//! redis-server processes, two hub instances, real WebSocket clients.
//! Numbering is one order for every instance and sender; a socket resumes
//! on any instance; an instance whose pub/sub connection blips, or whose
//! Redis restarts with persistence, delivers every kept message once, in
//! order. Redis itself is asked what the hubs stored.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::history::{
    cmd, next_message, offset, position, reconnect_storm, replay_skips_own_messages, resume,
    resume_after_missing, routed,
};
use support::redis::{kill_pubsub_with, pubsub_with, RedisServer};
use support::{eventually, msg, Client, TestHub};

const QUIET: Duration = Duration::from_millis(300);

async fn pair(redis: &RedisServer, size: u32, ttl: Duration) -> (TestHub, TestHub) {
    let adjust = |c: &mut aether_hub::Config| {
        c.history_size = size;
        c.history_ttl = ttl;
    };
    (
        TestHub::on_redis(redis, adjust).await,
        TestHub::on_redis(redis, adjust).await,
    )
}

async fn default_pair(redis: &RedisServer) -> (TestHub, TestHub) {
    pair(redis, 100, Duration::from_secs(300)).await
}

async fn hget(conn: &mut redis::aio::MultiplexedConnection, key: &str, field: &str) -> String {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn offsets_are_one_order_for_every_instance_and_sender() {
    let redis = RedisServer::start();
    let (a, b) = default_pair(&redis).await;
    let mut on_a = a.connect("g1", "worker").await;
    let mut on_b = b.connect("g1", "watcher").await;
    let mut senders = vec![
        a.connect("g1", "s1").await,
        b.connect("g1", "s2").await,
        b.connect("g1", "s3").await,
    ];
    // Three senders on two instances, interleaved: 1,000 messages.
    let tasks: Vec<_> = senders
        .drain(..)
        .enumerate()
        .map(|(i, mut s)| {
            tokio::spawn(async move {
                let count = if i == 0 { 334 } else { 333 };
                for n in 0..count {
                    s.send(msg("group", json!({"payload": {"from": i, "n": n}})))
                        .await;
                }
                s
            })
        })
        .collect();
    let mut epoch = None;
    let mut next_per_sender = [0u64; 3];
    for expected in 1..=1000u64 {
        let got_a = next_message(&mut on_a).await;
        let got_b = next_message(&mut on_b).await;
        assert_eq!(offset(&got_a), expected);
        assert_eq!(got_a, got_b, "both instances see one order");
        let e = got_a["epoch"].as_str().expect("epoch").to_owned();
        assert_eq!(epoch.get_or_insert(e.clone()), &e, "one epoch");
        // Each sender's own order holds within the one order.
        let from = got_a["payload"]["from"].as_u64().unwrap() as usize;
        assert_eq!(got_a["payload"]["n"], next_per_sender[from]);
        next_per_sender[from] += 1;
    }
    let _senders: Vec<Client> = futures_util::future::try_join_all(tasks).await.unwrap();
    let epoch = epoch.unwrap();

    let body = json!({"msg_type": "cmd", "target": "group", "group_id": "g1", "from_id": "svc", "cmd": "go"});
    let published = b.post("/v3/publish", &[], &body.to_string()).await;
    assert_eq!(published.status, 202);
    let answer = published.json();
    assert_eq!(answer["offset"], 1001);
    assert_eq!(answer["epoch"], epoch.as_str());
    assert_eq!(offset(&next_message(&mut on_a).await), 1001);

    // The keys, as documented for other services.
    let mut conn = redis.client().await;
    let position_key = "{ws:group:g1}:position";
    assert_eq!(hget(&mut conn, position_key, "e").await, epoch);
    assert_eq!(hget(&mut conn, position_key, "n").await, "1001");
    let history_key = "{ws:group:g1}:history";
    let len: u64 = redis::cmd("XLEN")
        .arg(history_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    // `MAXLEN ~` trims whole stream nodes (at most 100 entries each): a few
    // more than AETHER_HISTORY_SIZE may stay, never readable (below).
    assert!(
        (100..200).contains(&len),
        "capped near AETHER_HISTORY_SIZE: {len}"
    );
    let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(history_key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (id, fields) = &last[0];
    assert_eq!(id, "1001-1");
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).unwrap().1.clone();
    let text: Value = serde_json::from_str(&field("t")).unwrap();
    assert_eq!(
        (text["cmd"].as_str(), text["offset"].as_u64()),
        (Some("go"), Some(1001))
    );
    assert_eq!(field("s"), "svc");
    assert!(field("at").parse::<u64>().unwrap() > 1_600_000_000_000);
    let ttl = |key: &'static str| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    // The TTL, plus up to 30 s by which refreshes are put off.
    assert!((1..=330_000).contains(&ttl(history_key).await));
    assert!(
        ttl(position_key).await > 23 * 3600 * 1000,
        "the position outlives the messages"
    );
}

/// Many routes at once, from both instances: the publishers' pipelines
/// carry runs of kept messages of several routes, each run numbered by one
/// script call. Every route still counts 1, 2, 3, … in one order seen
/// alike on both instances, each sender's order holds within it, and the
/// positions Redis keeps say where each route stands.
#[tokio::test]
async fn many_routes_numbered_in_batches_keep_each_routes_order() {
    const GROUPS: usize = 12;
    const EACH: u64 = 60;
    let redis = RedisServer::start();
    let (a, b) = default_pair(&redis).await;
    let mut watchers = Vec::new();
    let mut senders = Vec::new();
    for g in 0..GROUPS {
        let group = format!("batch{g}");
        watchers.push((a.connect(&group, "wa").await, b.connect(&group, "wb").await));
        senders.push(a.connect(&group, "sa").await);
        senders.push(b.connect(&group, "sb").await);
    }
    // Every sender sends at once, without waiting: runs of kept messages of
    // many routes queue together on each instance.
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            tokio::spawn(async move {
                for n in 0..EACH {
                    s.send(msg("group", json!({"payload": {"from": i % 2, "n": n}})))
                        .await;
                }
                s
            })
        })
        .collect();
    let mut conn = redis.client().await;
    for (g, (on_a, on_b)) in watchers.iter_mut().enumerate() {
        let mut next_per_sender = [0u64; 2];
        for expected in 1..=2 * EACH {
            let got_a = next_message(on_a).await;
            let got_b = next_message(on_b).await;
            assert_eq!(offset(&got_a), expected, "group {g}: {got_a}");
            assert_eq!(got_a, got_b, "group {g}: both instances see one order");
            let from = got_a["payload"]["from"].as_u64().unwrap() as usize;
            assert_eq!(got_a["payload"]["n"], next_per_sender[from], "group {g}");
            next_per_sender[from] += 1;
        }
        let key = format!("{{ws:group:batch{g}}}:position");
        assert_eq!(hget(&mut conn, &key, "n").await, (2 * EACH).to_string());
        assert!(
            !hget(&mut conn, &key, "x").await.is_empty(),
            "refresh time kept"
        );
    }
    let _senders: Vec<Client> = futures_util::future::try_join_all(tasks).await.unwrap();
    let calls = evalsha_calls(&mut conn).await;
    assert!(
        calls * 4 < GROUPS as u64 * 2 * EACH,
        "{calls} script calls for {} kept messages: batches carry several",
        GROUPS as u64 * 2 * EACH
    );
}

#[tokio::test]
async fn a_worker_resumes_on_another_instance_with_exactly_what_it_missed() {
    let redis = RedisServer::start();
    let (a, b) = default_pair(&redis).await;
    let (_worker, seen, summary) = resume_after_missing(&a, &b, &b, 5).await;
    let epoch = seen.split(':').next().unwrap();
    assert_eq!(
        summary,
        json!({"group": {"recovered": true, "missed": 5, "epoch": epoch, "offset": 6}})
    );
}

/// A resume while direct messages keep coming from the other instance:
/// replay, summary, then live, every offset once and in order.
#[tokio::test]
async fn direct_messages_resume_with_live_traffic_and_no_duplicate() {
    let redis = RedisServer::start();
    let (a, b) = default_pair(&redis).await;
    let mut boss = b.connect("h", "boss").await;
    let mut worker = a.connect("g", "robot").await;
    let direct = |n: u64| msg("direct", json!({"to_id": "robot", "cmd": format!("d{n}")}));
    boss.send(direct(0)).await;
    let first = next_message(&mut worker).await;
    let (seen, epoch) = (offset(&first), first["epoch"].clone());
    worker.close().await;
    for n in 1..=10 {
        boss.send(direct(n)).await;
    }

    const TOTAL: u64 = 300;
    let sending = tokio::spawn(async move {
        for n in 11..TOTAL {
            boss.send(direct(n)).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        boss
    });
    let query = format!("since_client={}:{seen}", epoch.as_str().unwrap());
    let mut worker = resume(&a, "g", "robot", &query).await;
    let mut expected = seen + 1;
    let mut summary = None;
    while expected < TOTAL + seen {
        let m = next_message(&mut worker).await;
        if m["msg_type"] == "recovery" {
            assert!(summary.is_none(), "one summary");
            let client = m["payload"]["client"].clone();
            assert_eq!(client["recovered"], true);
            assert_eq!(client["epoch"], epoch);
            assert_eq!(
                client["offset"],
                expected - 1,
                "the replay ends where live starts"
            );
            assert_eq!(client["missed"], expected - 1 - seen);
            summary = Some(client);
            continue;
        }
        assert_eq!(offset(&m), expected, "{m}");
        assert_eq!(m["cmd"], format!("d{}", expected - 1));
        expected += 1;
    }
    assert!(summary.is_some(), "the summary came");
    let _boss = sending.await.unwrap();
    worker.expect_silence(QUIET).await;
}

#[tokio::test]
async fn too_little_history_or_another_epoch_is_lost_and_nothing_is_replayed() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, 3, Duration::from_secs(300)).await;
    let mut controller = b.connect("line", "planner").await;
    let mut observer = b.connect("line", "observer").await;
    let mut worker = a.connect("line", "robot").await;
    controller.send(cmd(0)).await;
    let first = next_message(&mut worker).await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    worker.close().await;
    for n in 1..=5 {
        controller.send(cmd(n)).await;
    }
    routed(&mut observer, 6).await;

    let lost = json!({"group": {"recovered": false, "missed": 0, "epoch": epoch, "offset": 6}});
    for since in [
        format!("{epoch}:1"),
        "another:1".to_owned(),
        format!("{epoch}:99"),
    ] {
        let mut worker = resume(&a, "line", "robot", &format!("since_group={since}")).await;
        let summary = next_message(&mut worker).await;
        assert_eq!(
            summary["msg_type"], "recovery",
            "nothing replayed for {since}"
        );
        assert_eq!(summary["payload"], lost, "{since}");
        worker.close().await;
    }
    // Still whole within what is kept.
    let mut worker = resume(&a, "line", "robot", &format!("since_group={epoch}:3")).await;
    assert_eq!(offset(&next_message(&mut worker).await), 4);
    assert_eq!(offset(&next_message(&mut worker).await), 5);
    assert_eq!(offset(&next_message(&mut worker).await), 6);
    assert_eq!(
        next_message(&mut worker).await["payload"]["group"]["missed"],
        3
    );
}

#[tokio::test]
async fn messages_past_the_ttl_are_lost() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, 100, Duration::from_secs(1)).await;
    let mut controller = b.connect("line", "planner").await;
    let mut worker = a.connect("line", "robot").await;
    controller.send(cmd(0)).await;
    let seen = position(&next_message(&mut worker).await);
    worker.close().await;
    controller.send(cmd(1)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut worker = resume(&a, "line", "robot", &format!("since_group={seen}")).await;
    let summary = next_message(&mut worker).await;
    assert_eq!(summary["payload"]["group"]["recovered"], false);
    assert_eq!(
        summary["payload"]["group"]["offset"], 2,
        "the position outlives them"
    );
}

#[tokio::test]
async fn asking_for_a_position_creates_it_for_a_day() {
    let redis = RedisServer::start();
    let (a, b) = default_pair(&redis).await;
    let mut first = resume(&a, "quiet", "c1", "since_group=new&since_client=new").await;
    let summary = next_message(&mut first).await;
    let group = summary["payload"]["group"].clone();
    assert_eq!(
        (group["recovered"].clone(), group["missed"].clone()),
        (json!(true), json!(0))
    );
    assert_eq!(group["offset"], 0);
    let epoch = group["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty());

    let mut conn = redis.client().await;
    assert_eq!(
        hget(&mut conn, "{ws:group:quiet}:position", "e").await,
        epoch
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg("{ws:group:quiet}:position")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 23 * 3600 * 1000);

    // The other instance answers with the same position, and numbering
    // continues in that epoch.
    let mut second = resume(&b, "quiet", "c2", "since_group=new").await;
    let again = next_message(&mut second).await;
    assert_eq!(again["payload"]["group"]["epoch"], epoch.as_str());
    second.send(msg("group", json!({"msg": "hi"}))).await;
    let m = next_message(&mut first).await;
    assert_eq!((offset(&m), m["epoch"].as_str()), (1, Some(epoch.as_str())));
}

#[tokio::test]
async fn with_history_off_redis_mode_is_as_before() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, 0, Duration::from_secs(300)).await;
    let mut worker = resume(&a, "g", "robot", "since_group=x:1").await;
    let summary = next_message(&mut worker).await;
    assert_eq!(
        summary["payload"],
        json!({"group": {"recovered": false, "missed": 0, "epoch": "", "offset": 0}})
    );
    let mut boss = b.connect("g", "boss").await;
    boss.send(msg("group", json!({"msg": "plain"}))).await;
    let m = next_message(&mut worker).await;
    assert_eq!(m["msg"], "plain");
    assert!(m.get("offset").is_none() && m.get("epoch").is_none());
    let body = json!({"msg_type": "cmd", "target": "group", "group_id": "g", "from_id": "svc"});
    let answer = b.post("/v3/publish", &[], &body.to_string()).await.json();
    assert_eq!(answer, json!({"status": "accepted"}));
    let mut conn = redis.client().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "no history keys: {keys:?}");
}

#[tokio::test]
async fn raw_publishes_pass_byte_for_byte_between_numbered_messages() {
    let redis = RedisServer::start();
    let (a, b) = default_pair(&redis).await;
    let mut worker = a.connect("g1", "w1").await;
    let mut boss = b.connect("g1", "boss").await;
    boss.send(cmd(1)).await;
    assert_eq!(offset(&next_message(&mut worker).await), 1);
    let mut conn = redis.client().await;
    let raw = r#"{ "msg_type":"cmd", "target":"group", "from_id":"backend", "cmd":"x" }"#;
    support::redis::publish(&mut conn, "ws:group:g1", raw).await;
    assert_eq!(worker.ws_next_text().await.as_deref(), Some(raw));
    boss.send(cmd(2)).await;
    assert_eq!(offset(&next_message(&mut worker).await), 2);
}

/// Sends group commands from `sender` every `every` until `stop`; returns
/// the socket and how many it sent.
fn keep_sending(
    mut sender: Client,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Client, u64)> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            sender.send(cmd(n)).await;
            n += 1;
            tokio::time::sleep(every).await;
        }
        (sender, n)
    })
}

/// Reads `client` until a message numbered `last`, asserting every kept
/// message comes once, in order, in one epoch; returns how many came.
async fn consecutive_until(client: &mut Client, last: u64) -> u64 {
    let mut expected = 1;
    let mut epoch: Option<String> = None;
    while expected <= last {
        let m = next_message(client).await;
        assert_eq!(offset(&m), expected, "every offset once, in order");
        let e = m["epoch"].as_str().unwrap().to_owned();
        assert_eq!(epoch.get_or_insert(e.clone()), &e);
        expected += 1;
    }
    expected - 1
}

#[tokio::test]
async fn a_pubsub_blip_loses_and_repeats_nothing() {
    let redis = RedisServer::start();
    // History must outlast the blip: at one message every 2 ms, the default
    // 100 entries cover 200 ms, and a reconnect (backoff from 100 ms with
    // jitter, then connect and resubscribe) can take longer on a busy
    // machine, so the oldest missed messages were trimmed before the
    // repair read them (the test failed ~1 run in 12 that way).
    let (a, b) = pair(&redis, 2_000, Duration::from_secs(300)).await;
    // On A: client:w1, client:w2, group:line, broadcast, control = 5
    // channels. On B: client:planner, group:line, broadcast, control = 4.
    let mut w1 = a.connect("line", "w1").await;
    let mut w2 = a.connect("line", "w2").await;
    let planner = b.connect("line", "planner").await;
    let mut conn = redis.client().await;
    assert_eq!(pubsub_with(&mut conn, 5).await, 1);

    let stop = Arc::new(AtomicBool::new(false));
    let sending = keep_sending(planner, Duration::from_millis(2), stop.clone());
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(kill_pubsub_with(&mut conn, 5).await, 1, "A's pub/sub only");
        eventually("A subscribed again", || {
            let mut conn = conn.clone();
            async move { pubsub_with(&mut conn, 5).await == 1 }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (_planner, sent) = sending.await.unwrap();
    assert!(a.metric("aether_redis_reconnects_total").await >= 3.0);

    // B never blipped: every frame it took was numbered.
    assert_eq!(consecutive_until(&mut w1, sent).await, sent);
    assert_eq!(consecutive_until(&mut w2, sent).await, sent);
    w1.expect_silence(QUIET).await;
    w2.expect_silence(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn a_redis_restart_with_persistence_keeps_the_numbering_whole() {
    let mut redis = RedisServer::start_persistent();
    let (a, b) = default_pair(&redis).await;
    let mut w1 = a.connect("line", "w1").await;
    let mut planner = b.connect("line", "planner").await;
    planner.send(cmd(0)).await;
    let before = next_message(&mut w1).await; // numbering began

    let stop = Arc::new(AtomicBool::new(false));
    let sending = keep_sending(planner, Duration::from_millis(5), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    a.wait_ready(503).await;
    b.wait_ready(503).await;
    redis.restart();
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    let mut conn = redis.client().await;
    let at_restart: u64 = hget(&mut conn, "{ws:group:line}:position", "n")
        .await
        .parse()
        .unwrap();
    assert!(
        at_restart > 1,
        "messages numbered before the crash were kept"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (_planner, _) = sending.await.unwrap();

    // The last numbered message, published through B after the restart.
    let body = json!({"msg_type": "cmd", "target": "group", "group_id": "line", "from_id": "svc", "cmd": "end"});
    let answer = b.post("/v3/publish", &[], &body.to_string()).await.json();
    let last = answer["offset"].as_u64().expect("numbered");
    assert_eq!(
        answer["epoch"], before["epoch"],
        "persistence kept the epoch"
    );
    assert!(last > at_restart + 1, "messages numbered after the restart");

    // w1 already had offset 1; everything after it, once and in order.
    let mut expected = offset(&before) + 1;
    while expected <= last {
        let m = next_message(&mut w1).await;
        assert_eq!(
            offset(&m),
            expected,
            "every numbered message once, in order"
        );
        assert_eq!(m["epoch"], before["epoch"]);
        expected += 1;
    }
    w1.expect_silence(QUIET).await;
}

/// Kept messages published while an instance's pub/sub connection is down,
/// with nothing after them: the instance fetches them once it is back.
#[tokio::test]
async fn what_was_published_during_a_blip_arrives_without_newer_traffic() {
    let redis = RedisServer::start();
    let (a, b) = default_pair(&redis).await;
    // On A: client:w1, group:line, broadcast, control = 4 channels; B
    // holds only control.
    let mut w1 = a.connect("line", "w1").await;
    let publish = |n: u64| {
        let body = json!({"msg_type": "cmd", "target": "group", "group_id": "line",
                          "from_id": "svc", "cmd": format!("c{n}")});
        let b = &b;
        async move { b.post("/v3/publish", &[], &body.to_string()).await.json() }
    };
    assert_eq!(publish(1).await["offset"], 1);
    assert_eq!(offset(&next_message(&mut w1).await), 1);

    let mut conn = redis.client().await;
    assert_eq!(kill_pubsub_with(&mut conn, 4).await, 1, "A's pub/sub only");
    for n in 2..=6 {
        assert_eq!(publish(n).await["offset"], n);
    }
    for n in 2..=6 {
        let m = next_message(&mut w1).await;
        assert_eq!(
            (offset(&m), m["cmd"].as_str()),
            (n, Some(format!("c{n}").as_str()))
        );
    }
    w1.expect_silence(QUIET).await;
    assert!(a.metric("aether_gap_repairs_total").await >= 1.0);
    assert!(a.metric("aether_messages_repaired_total").await >= 1.0);
}

/// A publish Redis does not answer within a command's timeout (the server
/// is frozen) is answered 503, saying it may have been published: it was,
/// once Redis went on, and the group gets it. (A 503 that does not say so
/// means the message was not published: see the cluster failover test.)
#[tokio::test]
async fn a_publish_redis_never_answered_is_503_may_have_been_published() {
    let redis = RedisServer::start();
    let (a, b) = default_pair(&redis).await;
    let mut w1 = a.connect("held", "w1").await;
    let body = json!({"msg_type": "cmd", "target": "group", "group_id": "held",
                      "from_id": "svc", "cmd": "late"});
    redis.pause();
    let answer = b.post("/v3/publish", &[], &body.to_string()).await;
    redis.resume();
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(
        answer.json()["error"],
        "the message broker did not confirm the message; it may have been published"
    );
    let late = next_message(&mut w1).await;
    assert_eq!((late["cmd"].as_str(), offset(&late)), (Some("late"), 1));
}

/// Calls of `EVALSHA` Redis has served (INFO commandstats).
async fn evalsha_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    support::acl::calls(conn)
        .await
        .get("evalsha")
        .copied()
        .unwrap_or(0)
}

/// A socket whose routes have carried nothing to it yet (a group with
/// older history, its own direct route that never had any): kept
/// messages published while its instance's pub/sub connection is down
/// still reach it, from where each route stood when the socket joined.
#[tokio::test]
async fn routes_with_nothing_delivered_yet_catch_up_after_a_blip() {
    let redis = RedisServer::start();
    let (a, b) = default_pair(&redis).await;
    let group = |n: u64| {
        json!({"msg_type": "cmd", "target": "group", "group_id": "line",
                                "from_id": "svc", "cmd": format!("g{n}")})
    };
    let direct = |n: u64| {
        json!({"msg_type": "cmd", "target": "direct", "to_id": "w1",
                                 "from_id": "svc", "cmd": format!("d{n}")})
    };
    let publish = |body: serde_json::Value| {
        let b = &b;
        async move { b.post("/v3/publish", &[], &body.to_string()).await.json() }
    };
    // Kept before w1 joins: not owed to it.
    for n in 1..=2 {
        assert_eq!(publish(group(n)).await["offset"], n);
    }
    let mut conn = redis.client().await;
    let before = evalsha_calls(&mut conn).await;
    // On A: client:w1, group:line, broadcast, control = 4 channels; B
    // holds only control.
    let mut w1 = a.connect("line", "w1").await;
    // A reads where each of the three routes stands once subscribed.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while evalsha_calls(&mut conn).await < before + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "A never read the routes' positions"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(kill_pubsub_with(&mut conn, 4).await, 1, "A's pub/sub only");
    for n in 3..=5 {
        assert_eq!(publish(group(n)).await["offset"], n);
    }
    for n in 1..=2 {
        assert_eq!(publish(direct(n)).await["offset"], n);
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        let m = next_message(&mut w1).await;
        got.push((m["cmd"].as_str().unwrap_or("").to_owned(), offset(&m)));
    }
    let of = |prefix: &str| -> Vec<(String, u64)> {
        got.iter()
            .filter(|(c, _)| c.starts_with(prefix))
            .cloned()
            .collect()
    };
    let want = |prefix: &str, range: std::ops::RangeInclusive<u64>| -> Vec<(String, u64)> {
        range.map(|n| (format!("{prefix}{n}"), n)).collect()
    };
    assert_eq!(of("g"), want("g", 3..=5), "the group's, in order");
    assert_eq!(of("d"), want("d", 1..=2), "the direct route's, in order");
    w1.expect_silence(QUIET).await;
}

/// `SCRIPT FLUSH` (or a Redis that forgot its scripts): the hub loads them
/// again and numbering, recovery and receipts go on.
#[tokio::test]
async fn a_script_flush_is_survived() {
    let redis = RedisServer::start();
    let (a, b) = default_pair(&redis).await;
    let mut worker = a.connect("line", "robot").await;
    let mut boss = b.connect("line", "boss").await;
    boss.send(cmd(1)).await;
    let seen = position(&next_message(&mut worker).await);
    worker.close().await;
    // Sees cmd 2 numbered before the service publishes: the socket's frame
    // and the HTTP request travel apart, so without it either may be
    // numbered first.
    let mut observer = a.connect("line", "observer").await;

    let mut conn = redis.client().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    boss.send(cmd(2)).await;
    assert_eq!(offset(&next_message(&mut observer).await), 2);
    let body = json!({"msg_type": "cmd", "target": "group", "group_id": "line", "from_id": "svc"});
    assert_eq!(
        b.post("/v3/publish", &[], &body.to_string()).await.json()["offset"],
        3
    );

    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut worker = resume(&a, "line", "robot", &format!("since_group={seen}")).await;
    assert_eq!(offset(&next_message(&mut worker).await), 2);
    assert_eq!(offset(&next_message(&mut worker).await), 3);
    assert_eq!(
        next_message(&mut worker).await["payload"]["group"]["missed"],
        2
    );
}

/// Redis restarted empty: the route's numbering starts again in a new
/// epoch, and the surviving sockets get it from its offset 1 on, whichever
/// instance's pub/sub connection came back first.
#[tokio::test]
async fn a_redis_that_lost_everything_starts_a_new_epoch_at_one() {
    let mut redis = RedisServer::start();
    let (a, b) = default_pair(&redis).await;
    let mut w1 = a.connect("line", "w1").await;
    let mut planner = b.connect("line", "planner").await;
    planner.send(cmd(0)).await;
    let first = next_message(&mut w1).await;
    assert_eq!(offset(&first), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let sending = keep_sending(planner, Duration::from_millis(5), stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill();
    a.wait_ready(503).await;
    b.wait_ready(503).await;
    redis.restart();
    b.wait_ready(200).await;
    a.wait_ready(200).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (_planner, _) = sending.await.unwrap();
    let body = json!({"msg_type": "cmd", "target": "group", "group_id": "line", "from_id": "svc"});
    let answer = b.post("/v3/publish", &[], &body.to_string()).await.json();
    let (last, new_epoch) = (answer["offset"].as_u64().unwrap(), answer["epoch"].clone());
    assert_ne!(new_epoch, first["epoch"]);

    let mut expected = (first["epoch"].clone(), 2);
    loop {
        let m = next_message(&mut w1).await;
        if m["epoch"] != expected.0 {
            assert_eq!(m["epoch"], new_epoch, "{m}");
            expected = (new_epoch.clone(), 1);
        }
        assert_eq!(offset(&m), expected.1, "every offset once, in order: {m}");
        if expected == (new_epoch.clone(), last) {
            break;
        }
        expected.1 += 1;
    }
    w1.expect_silence(QUIET).await;
}

/// Redis loses the route's keys while an instance's pub/sub connection is
/// down, and the new numbering begins before it is back: it delivers the
/// new epoch from offset 1.
#[tokio::test]
async fn a_new_epoch_begun_during_a_blip_is_delivered_from_one() {
    let redis = RedisServer::start();
    let (a, b) = default_pair(&redis).await;
    // On A: client:w1, group:line, broadcast, control = 4 channels; B
    // holds only control.
    let mut w1 = a.connect("line", "w1").await;
    let body = json!({"msg_type": "cmd", "target": "group", "group_id": "line", "from_id": "svc"});
    let publish = || async { b.post("/v3/publish", &[], &body.to_string()).await.json() };
    let old = publish().await;
    assert_eq!(offset(&next_message(&mut w1).await), 1);

    let mut conn = redis.client().await;
    assert_eq!(kill_pubsub_with(&mut conn, 4).await, 1, "A's pub/sub only");
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let mut epoch = None;
    for n in 1..=3 {
        let answer = publish().await;
        assert_eq!(answer["offset"], n);
        assert_ne!(answer["epoch"], old["epoch"]);
        epoch = Some(answer["epoch"].clone());
    }
    for n in 1..=3 {
        let m = next_message(&mut w1).await;
        assert_eq!((offset(&m), &m["epoch"]), (n, epoch.as_ref().unwrap()));
    }
    w1.expect_silence(QUIET).await;
    // Metrics are per process (both hubs, every test of this binary).
    assert!(a.metric("aether_messages_repaired_total").await >= 3.0);
}

#[tokio::test]
async fn a_replay_on_another_instance_skips_the_clients_own_group_messages() {
    let redis = RedisServer::start();
    let (a, b) = default_pair(&redis).await;
    replay_skips_own_messages(&a, &b).await;
}

#[tokio::test]
async fn a_quiet_spell_longer_than_the_ttl_loses_nothing() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, 100, Duration::from_millis(300)).await;
    let mut worker = b.connect("g", "robot").await;
    let mut controller = a.connect("g", "planner").await;
    controller.send(cmd(0)).await;
    let seen = position(&next_message(&mut worker).await);
    worker.close().await;
    // Nothing sent for longer than the TTL: the messages expired, the
    // position did not.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut worker = resume(&b, "g", "robot", &format!("since_group={seen}")).await;
    let summary = next_message(&mut worker).await;
    let group = &summary["payload"]["group"];
    assert_eq!(group["recovered"], true, "{summary}");
    assert_eq!(group["missed"], 0);
    assert_eq!(
        position(&json!({"epoch": group["epoch"], "offset": group["offset"]})),
        seen
    );
}

#[tokio::test]
async fn a_reconnect_storm_across_instances_recovers_every_socket() {
    // 1,000 sockets resume at once on one instance; the other published
    // what they missed and keeps talking.
    let redis = RedisServer::start();
    let (a, b) = default_pair(&redis).await;
    reconnect_storm(&a, &b).await;
}
