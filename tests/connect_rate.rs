//! The accept-rate limit (`AETHER_MAX_CONNECTS_PER_SEC`, issue 22;
//! docs/deployment.md, reconnect storms): upgrades over the rate get 503
//! with `Retry-After` and a reason before any other check; the bucket
//! refills; nothing but upgrades is limited; refusals are counted with
//! `reason="rate"`; a bad value stops start-up naming the variable.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use support::process::BIN;
use support::{Client, TestHub};
use tokio_tungstenite::tungstenite;

fn refused(reason: &str) -> String {
    format!("aether_upgrades_refused_total{{reason=\"{reason}\"}}")
}

/// What one upgrade attempt got.
enum Upgrade {
    /// 101: the socket, held open until dropped.
    Open(Box<Client>),
    Refused {
        status: u16,
        retry_after: Option<String>,
        body: String,
    },
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upgrade::Open(_) => write!(f, "101"),
            Upgrade::Refused {
                status,
                retry_after,
                body,
            } => write!(f, "{status} (Retry-After {retry_after:?}) {body:?}"),
        }
    }
}

impl Upgrade {
    fn status(&self) -> u16 {
        match self {
            Upgrade::Open(_) => 101,
            Upgrade::Refused { status, .. } => *status,
        }
    }

    /// `Retry-After` of a 503, as whole seconds.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Upgrade::Refused {
                retry_after: Some(v),
                ..
            } => v.parse().ok(),
            _ => None,
        }
    }
}

async fn upgrade(hub: &TestHub, group: &str, client: &str, headers: &[(&str, &str)]) -> Upgrade {
    match Client::connect(&hub.ws_url(group, client), headers).await {
        Ok(socket) => Upgrade::Open(Box::new(socket)),
        Err(tungstenite::Error::Http(response)) => Upgrade::Refused {
            status: response.status().as_u16(),
            retry_after: response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        },
        Err(e) => panic!("upgrade {group}/{client}: {e}"),
    }
}

/// `n` upgrades at once, each as a client of its own.
async fn storm(hub: &TestHub, group: &str, n: usize) -> Vec<Upgrade> {
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    join_all(names.iter().map(|c| upgrade(hub, group, c, &[]))).await
}

fn count(upgrades: &[Upgrade], status: u16) -> usize {
    upgrades.iter().filter(|u| u.status() == status).count()
}

#[tokio::test]
async fn upgrades_beyond_the_rate_get_503_with_retry_after_until_the_bucket_refills() {
    let hub = TestHub::with(|c| c.max_connects_per_sec = 5).await;
    let started = Instant::now();
    let first = storm(&hub, "g1", 12).await;
    let admitted = count(&first, 101);
    // The burst is one second's worth, plus what the storm's own duration
    // earned back at 5/s.
    let earned = (started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        (5..=5 + earned).contains(&admitted),
        "{admitted} admitted: {first:?}"
    );
    assert_eq!(admitted + count(&first, 503), 12, "{first:?}");
    for refusal in first.iter().filter(|u| u.status() == 503) {
        let Upgrade::Refused { body, .. } = refusal else {
            unreachable!()
        };
        assert!(body.contains("connect-rate limit"), "{body}");
        assert!(body.contains("retry later"), "{body}");
        let secs = refusal.retry_after().expect("Retry-After in whole seconds");
        assert!((1..=60).contains(&secs), "Retry-After {secs}");
    }
    // Seven refusals at 5/s: the later ones are told to wait longer, so
    // that clients that do as told come back spread out.
    let told: Vec<u64> = first.iter().filter_map(Upgrade::retry_after).collect();
    assert_eq!(told.iter().min(), Some(&1), "{told:?}");
    assert!(told.iter().max() >= Some(&2), "{told:?}");
    // Refused upgrades left no trace in presence.
    let members = hub.get("/v3/groups/g1/presence").await.json();
    let present = members["members"].as_array().map_or(0, Vec::len);
    assert_eq!(present, admitted, "{members}");

    // The bucket refills at the rate: after a second, a new client gets in.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(upgrade(&hub, "g1", "late", &[]).await.status(), 101);
    // And the admitted sockets were ordinary ones.
    for u in first {
        if let Upgrade::Open(socket) = u {
            assert_eq!(socket.close().await, 1000);
        }
    }
}

/// The rate is the upgrade route's first check: an upgrade over it gets 503
/// even with a credential that would be refused (401), from an origin that
/// would be refused (403), or with a malformed id (400).
#[tokio::test]
async fn the_rate_is_checked_before_anything_else() {
    let secret = support::tokens::secret();
    let hub = TestHub::with(|c| {
        c.max_connects_per_sec = 1;
        c.token_secrets = vec![secret.clone()];
        c.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    // The one token of the bucket goes to a request that is refused later
    // on: every upgrade request counts, whatever becomes of it.
    let junk = [("Authorization", "Bearer junk")];
    assert_eq!(upgrade(&hub, "g1", "a", &junk).await.status(), 401);
    for (client, headers) in [
        ("a", &junk[..]),
        ("b", &[("Origin", "https://evil.example")][..]),
        ("bad id!", &[][..]),
    ] {
        let path = format!("/v3/ws/group/g1/client/{}", client.replace(' ', "%20"));
        let (status, body) = hub.upgrade_status(&path, headers).await;
        assert_eq!(status, 503, "{client}: {body}");
        assert!(body.contains("connect-rate limit"), "{body}");
    }
}

#[tokio::test]
async fn nothing_but_upgrades_is_limited() {
    let hub = TestHub::with(|c| c.max_connects_per_sec = 1).await;
    let _held = storm(&hub, "g1", 3).await;
    assert_eq!(
        upgrade(&hub, "g1", "x", &[]).await.status(),
        503,
        "the bucket is empty"
    );
    let publish = r#"{"msg_type":"msg","target":"group","group_id":"g1","from_id":"svc"}"#;
    for _ in 0..20 {
        assert_eq!(hub.get("/healthz").await.status, 200);
        assert_eq!(hub.get("/readyz").await.status, 200);
        assert_eq!(hub.get("/metrics").await.status, 200);
        assert_eq!(hub.get("/v3/groups/g1/presence").await.status, 200);
        assert_eq!(hub.post("/v3/publish", &[], publish).await.status, 202);
    }
}

#[tokio::test]
async fn refusals_are_counted_with_the_rate_label() {
    let hub = TestHub::with(|c| c.max_connects_per_sec = 2).await;
    let text = hub.get("/metrics").await.body;
    assert!(text.contains(&refused("rate")), "exported from the start");
    // Metrics are process-wide and other tests refuse upgrades too:
    // deltas, and at least ours.
    let before = hub.metric(&refused("rate")).await;
    let capacity_before = hub.metric(&refused("capacity")).await;
    let upgrades = storm(&hub, "g1", 10).await;
    let ours = count(&upgrades, 503);
    assert!(ours >= 7, "{upgrades:?}");
    assert!(hub.metric(&refused("rate")).await >= before + ours as f64);
    // Counted as what they are, not as a full instance.
    assert_eq!(hub.metric(&refused("capacity")).await, capacity_before);
}

#[tokio::test]
async fn off_by_default() {
    let hub = TestHub::start().await;
    let upgrades = storm(&hub, "g1", 40).await;
    assert_eq!(count(&upgrades, 101), 40);
}

#[test]
fn a_bad_rate_stops_start_up_naming_the_variable() {
    for (value, part) in [
        ("-5", "invalid value '-5'"),
        ("lots", "invalid digit"),
        ("1.5", "invalid digit"),
        ("5000000", "not in 0..=1000000"),
    ] {
        let out = Command::new(BIN)
            .env("AETHER_MAX_CONNECTS_PER_SEC", value)
            .env("AETHER_BIND", "127.0.0.1:0")
            .output()
            .expect("run");
        assert!(!out.status.success(), "{value} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("AETHER_MAX_CONNECTS_PER_SEC"),
            "{value}: {stderr}"
        );
        assert!(stderr.contains(part), "{value}: {stderr}");
    }
}
