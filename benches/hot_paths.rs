//! Criterion benches of the hot paths: one message parsed, validated,
//! normalised and encoded; one dispatch to 1, 100 and 10,000 local
//! subscribers, without and then with the Prometheus recorder installed
//! (the cost of the metrics); reading a received message's send time for
//! the pub/sub lag histogram; channel-name building; the revocation check
//! of every token (docs/protocol.md section 11) with none and 10,000 held.
//!
//!     cargo bench --bench hot_paths

use std::hint::black_box;
use std::time::{Duration, Instant};

use aether_hub::channels::{Names, Route};
use aether_hub::delivery::Delivery;
use aether_hub::outbox::Outbox;
use aether_hub::protocol::{self, Origin, VisionId};
use aether_hub::revocation::{Revocation, Revocations, TokenId};
use aether_hub::router::{Router, SocketId};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn id(s: &str) -> VisionId {
    VisionId::parse(s).expect("valid id")
}

fn frame() -> String {
    let pad = "x".repeat(200);
    format!(
        r#"{{"msg_type":"cmd","target":"group","cmd":"start","payload":{{"seq":1,"pad":"{pad}"}}}}"#
    )
}

fn parse_and_encode(c: &mut Criterion) {
    let (group, client) = (id("group-1"), id("client-1"));
    let text = frame();
    c.bench_function("parse+validate+normalise+encode (200 B payload)", |b| {
        b.iter(|| {
            let origin = Origin::Socket {
                group: &group,
                client: &client,
                allow_broadcast: true,
            };
            let msg = protocol::parse(black_box(&text), origin).expect("valid");
            black_box(msg.encode())
        })
    });
}

fn dispatch(c: &mut Criterion) {
    dispatch_to(c, "router dispatch");
}

/// Last of all: once installed, the recorder stays for the process.
fn with_metrics(c: &mut Criterion) {
    aether_hub::metrics::install();
    dispatch_to(c, "router dispatch, metrics recorded");
    let received = {
        let (group, client) = (id("group-1"), id("client-1"));
        let origin = Origin::Socket {
            group: &group,
            client: &client,
            allow_broadcast: true,
        };
        protocol::parse(&frame(), origin).expect("valid").encode()
    };
    c.bench_function("pub/sub lag: read sent_at and record", |b| {
        b.iter(|| {
            if let Some(sent) = protocol::sent_at_of(black_box(received.as_str())) {
                aether_hub::metrics::pubsub_lag(sent);
            }
        })
    });
}

fn dispatch_to(c: &mut Criterion, name: &str) {
    let mut bench = c.benchmark_group(name);
    for subscribers in [1usize, 100, 10_000] {
        let router = Router::new();
        let route = Route::Group(id("g"));
        let mut receivers = Vec::with_capacity(subscribers);
        for n in 0..subscribers {
            let (outbox, rx) = Outbox::new(1024);
            let client = id(&format!("c{n}"));
            let joined = router.join(
                SocketId::next(),
                &client,
                &outbox,
                std::slice::from_ref(&route),
                0,
            );
            assert!(joined.is_ok(), "a group route has no client limit");
            receivers.push((outbox, rx));
        }
        let msg = Delivery::plain(&frame());
        bench.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, _| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let started = Instant::now();
                        black_box(router.dispatch(&route, &msg, "sender"));
                        spent += started.elapsed();
                        // Empty the queues outside the measured time.
                        for (_, rx) in receivers.iter_mut() {
                            while rx.try_recv().is_ok() {}
                        }
                    }
                    spent
                })
            },
        );
    }
    bench.finish();
}

fn channel_names(c: &mut Criterion) {
    let names = Names::new("staging:");
    let route = Route::Group(id("group-with-a-longer-name-1234"));
    c.bench_function("channel name", |b| {
        b.iter(|| black_box(names.channel(black_box(&route))))
    });
    c.bench_function("route of channel name", |b| {
        let channel = names.channel(&route);
        b.iter(|| black_box(names.route(black_box(&channel))))
    });
}

/// A token checked against no revocation, and against 10,000: half by
/// `jti` (not this one), half by `sub` (this client among them, issued
/// before its token), so both lookups run and the token is admitted.
fn revocation_check(c: &mut Criterion) {
    let now = 1_800_000_000;
    let token = TokenId {
        client: id("client-4242"),
        jti: Some("client-4242.1800000000".into()),
        issued_at: Some(now - 10),
    };
    let mut bench = c.benchmark_group("revocation check");
    for held in [0usize, 10_000] {
        let list = Revocations::new();
        for i in 0..held {
            let revocation = match i % 2 {
                0 => Revocation::Token {
                    jti: format!("revoked-{i}"),
                    until: now + 3600,
                },
                _ => Revocation::Client {
                    sub: id(&format!("client-{}", i / 2)),
                    issued_before: now - 3600,
                    until: now + 3600,
                },
            };
            list.insert(&revocation, now);
        }
        bench.bench_with_input(BenchmarkId::from_parameter(held), &list, |b, list| {
            b.iter(|| assert!(!list.covers(black_box(&token), now)))
        });
    }
    bench.finish();
}

criterion_group!(
    hot_paths,
    parse_and_encode,
    dispatch,
    channel_names,
    revocation_check,
    with_metrics
);
criterion_main!(hot_paths);
