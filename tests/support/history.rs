//! History tests' shared steps (`history.rs` in memory, `history_redis.rs`
//! across two instances): resuming with a query, waiting until messages
//! are routed, reading positions, and a reconnect storm.

use serde_json::{json, Value};

use super::{msg, Client, TestHub};

/// A socket of `client` in `group` resuming with `query` (`since_group=…`).
pub async fn resume(hub: &TestHub, group: &str, client: &str, query: &str) -> Client {
    let url = format!("{}?{query}", hub.ws_url(group, client));
    Client::connect(&url, &[])
        .await
        .unwrap_or_else(|e| panic!("resume {group}/{client}?{query}: {e}"))
}

/// The `n`-th step of a controller's group commands.
pub fn cmd(n: u64) -> Value {
    msg("group", json!({"cmd": format!("step-{n}")}))
}

/// The next message that is not a presence event.
pub async fn next_message(c: &mut Client) -> Value {
    loop {
        let m = c.recv().await;
        if m["msg_type"] != "presence" {
            return m;
        }
    }
}

/// Waits until `observer` has seen `n` messages: routed (and kept) by then.
pub async fn routed(observer: &mut Client, n: usize) {
    for _ in 0..n {
        next_message(observer).await;
    }
}

pub fn offset(m: &Value) -> u64 {
    m["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset: {m}"))
}

/// A delivered message's position, as `since_*` takes it.
pub fn position(m: &Value) -> String {
    format!("{}:{}", m["epoch"].as_str().expect("epoch"), offset(m))
}

/// A thousand sockets come back at once on `back` with their broadcast
/// positions after a controller on `front` broadcast 3 messages; each must
/// recover exactly those, while a socket on `back` that stayed keeps
/// getting live group traffic sent through `front`.
pub async fn reconnect_storm(front: &TestHub, back: &TestHub) {
    aether_hub::fdlimit::raise();
    let mut controller = front.connect("ops", "planner").await;
    let mut steady = back.connect("calm", "steady").await;
    let mut probe = resume(back, "probe", "probe", "since_broadcast=new").await;
    let summary = next_message(&mut probe).await;
    let at = &summary["payload"]["broadcast"];
    let seen = format!("{}:{}", at["epoch"].as_str().unwrap(), at["offset"]);
    for n in 1..=3 {
        controller
            .send(msg("broadcast", json!({"cmd": format!("step-{n}")})))
            .await;
    }
    routed(&mut probe, 3).await;

    let sockets = 1000;
    let storm = futures_util::future::join_all((0..sockets).map(|i| {
        let url = format!(
            "{}?since_broadcast={seen}",
            back.ws_url(&format!("g{i}"), &format!("w{i}"))
        );
        async move {
            let mut c = Client::connect(&url, &[]).await.expect("reconnect");
            let mut got = Vec::new();
            loop {
                let m = next_message(&mut c).await;
                if m["msg_type"] == "recovery" {
                    return (got, m["payload"]["broadcast"].clone(), c);
                }
                got.push(m["cmd"].as_str().unwrap_or_default().to_owned());
            }
        }
    }));
    let live = async {
        for n in 0..20 {
            let mut c = front.connect("calm", &format!("talker{n}")).await;
            c.send(msg("group", json!({"msg": format!("m{n}")}))).await;
            c.close().await;
        }
    };
    let (results, ()) = tokio::join!(storm, live);
    assert_eq!(results.len(), sockets);
    for (got, summary, _) in &results {
        assert_eq!(got, &["step-1", "step-2", "step-3"]);
        assert_eq!(summary["recovered"], true);
        assert_eq!(summary["missed"], 3);
    }
    let mut heard = 0;
    while heard < 20 {
        if next_message(&mut steady).await["target"] == "group" {
            heard += 1;
        }
    }
}

/// A worker on `back` misses a controller's commands sent on `front` and
/// its own report (published for it by a service): the replay carries the
/// commands only, and counts only them as missed, as live routing would.
pub async fn replay_skips_own_messages(front: &TestHub, back: &TestHub) {
    let mut worker = back.connect("line", "robot").await;
    let mut controller = front.connect("line", "planner").await;
    let mut observer = front.connect("line", "observer").await;
    controller.send(cmd(0)).await;
    let seen = position(&next_message(&mut worker).await);
    worker.close().await;

    controller.send(cmd(1)).await;
    let own = json!({"msg_type": "msg", "target": "group", "group_id": "line", "from_id": "robot", "msg": "mine"});
    assert_eq!(
        front
            .post("/v3/publish", &[], &own.to_string())
            .await
            .status,
        202
    );
    controller.send(cmd(2)).await;
    routed(&mut observer, 4).await;

    let mut worker = resume(back, "line", "robot", &format!("since_group={seen}")).await;
    assert_eq!(next_message(&mut worker).await["cmd"], "step-1");
    assert_eq!(next_message(&mut worker).await["cmd"], "step-2");
    let summary = next_message(&mut worker).await;
    assert_eq!(summary["msg_type"], "recovery");
    let group = &summary["payload"]["group"];
    assert_eq!(group["recovered"], true);
    assert_eq!(group["missed"], 2);
    assert_eq!(group["offset"], 4);
}

/// The worker's side of a resume across instances: a worker on `first`
/// sees cmd 0 from a controller on `other`, leaves, misses `missed` cmds,
/// and resumes on `again` with `since_group`: it gets exactly those, in
/// order, then the summary (`recovered: true`, `missed`), then cmd
/// `missed + 1` live with the next offset (no duplicate, no gap), and
/// nothing more. Returns
/// the resumed worker, the position it resumed from and the summary's
/// payload, for what a caller checks beyond.
pub async fn resume_after_missing(
    first: &TestHub,
    other: &TestHub,
    again: &TestHub,
    missed: u64,
) -> (Client, String, Value) {
    let mut controller = other.connect("line", "planner").await;
    let mut observer = other.connect("line", "observer").await;
    let mut worker = first.connect("line", "robot").await;
    controller.send(cmd(0)).await;
    let seen = position(&next_message(&mut worker).await);
    worker.close().await;
    for n in 1..=missed {
        controller.send(cmd(n)).await;
    }
    routed(&mut observer, missed as usize + 1).await;
    let mut worker = resume(again, "line", "robot", &format!("since_group={seen}")).await;
    for n in 1..=missed {
        let m = next_message(&mut worker).await;
        assert_eq!(m["cmd"], format!("step-{n}"));
        assert_eq!(offset(&m), n + 1);
    }
    let summary = next_message(&mut worker).await;
    assert_eq!(summary["msg_type"], "recovery");
    assert_eq!(summary["payload"]["group"]["recovered"], true);
    assert_eq!(summary["payload"]["group"]["missed"], missed);
    controller.send(cmd(missed + 1)).await;
    assert_eq!(
        offset(&next_message(&mut worker).await),
        missed + 2,
        "no duplicate, no gap"
    );
    worker
        .expect_silence(std::time::Duration::from_millis(300))
        .await;
    (worker, seen, summary["payload"].clone())
}
