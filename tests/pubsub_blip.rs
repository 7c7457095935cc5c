//! An instance whose pub/sub connection drops keeps publishing
//! (docs/protocol.md section 7, last bullet): real redis-server, two hub
//! instances, the sending instance's pub/sub connection killed three times
//! under acknowledged traffic. (The same on a Redis Cluster, one shard's
//! connection: `tests/cluster.rs`.)

mod support;

use support::blip::{self, assert_nothing_lost};
use support::redis::{client_names, kill_named_when_open, RedisServer};
use support::{eventually, TestHub};

const DROPPED: &str = "aether_messages_dropped_total{reason=\"broker_unavailable\"}";

async fn named(redis: &RedisServer, instance: &str) -> TestHub {
    let instance = instance.to_owned();
    TestHub::on_redis(redis, move |c| c.instance_id = instance).await
}

/// Each connection says whose it is and what for, so an operator (and
/// this test) can find it with `CLIENT LIST`.
#[tokio::test]
async fn every_connection_names_its_instance_and_role() {
    let redis = RedisServer::start();
    let _hub = named(&redis, "names").await;
    let mut conn = redis.client().await;
    let mut names = client_names(&mut conn).await;
    names.sort();
    assert_eq!(names, ["aether:names:commands", "aether:names:pubsub"]);
}

#[tokio::test]
async fn a_pubsub_blip_drops_nothing_and_every_ack_is_ok() {
    let redis = RedisServer::start();
    let front = named(&redis, "front").await;
    let back = named(&redis, "back").await;
    let dropped = front.metric(DROPPED).await;
    let conn = redis.client().await;
    let pubsub = "aether:front:pubsub";
    let run = blip::run(&front, &back, "blip", || {
        // Clones share the connection.
        kill_named_when_open(conn.clone(), pubsub)
    })
    .await;
    assert_nothing_lost(&run);
    assert_eq!(front.metric(DROPPED).await, dropped, "nothing dropped");
    eventually("the front listens again", || async {
        front.get("/readyz").await.status == 200
    })
    .await;
    let reconnects = front.metric("aether_redis_reconnects_total").await;
    assert!(reconnects >= blip::KILLS as f64, "{reconnects}");
}
