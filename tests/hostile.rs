//! Hostile clients against a real hub process (`aether-hub`, in memory),
//! each attack while a group of healthy sockets keeps talking through the
//! same hub. Owns what the hub must withstand from a client that breaks
//! the rules on purpose: a largest-allowed message in 10,000 fragments,
//! frames over the size limit, deep JSON nesting, huge numbers, invalid
//! UTF-8, a ping flood, and 500 clients that stop reading at once.
//!
//! Every attack asserts three things a user would notice: what the
//! attacker gets (its close code, or its message delivered), that every
//! healthy receiver got every healthy message in order, and that the hub
//! process gave back what the attack cost it (file descriptors, memory,
//! threads, `aether_connections_open`, read from `/proc/<pid>` and
//! `/metrics`). Healthy latency (p99) and the resource figures are printed,
//! never asserted as times. Close codes are those of PROTOCOL.md section 6;
//! `close_codes.rs` provokes each of them the ordinary way.
//!
//! One attack runs at a time (see [`one_at_a_time`]), every loop is bounded
//! in count and time, and everything stays on 127.0.0.1.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::attack::{
    attack_path, close_of, connect, expect_no_msg, group_message_of_len, next_text, Bounds, Scene,
};
use support::msg;
use support::raw::{Frame, RawSocket};
use tokio_tungstenite::tungstenite::Message;

const MAX_MESSAGE_BYTES: usize = 65_536;

// ---------------------------------------------------------------------------
// Attacks
// ---------------------------------------------------------------------------

/// Attackers sending the largest message at once, each message in 10,000 fragments.
const FRAGMENTERS: usize = 8;
const FRAGMENTED_EACH: usize = 3;

/// The largest message the hub admits (`AETHER_MAX_MESSAGE_BYTES`, default
/// 64 KiB) as a text frame and 9,999 continuation frames of about 6 bytes
/// each, many of them cutting a two-byte character in half; 8 attackers at
/// once, 3 messages each. A valid V3 message: every one is delivered
/// whole, and the attackers stay connected (each can still echo).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_message_in_10000_fragments_is_delivered_whole() {
    let scene = Scene::start(&[]).await;
    let hub = &scene.hub;
    let mut receiver = connect(hub, "attack", "receiver").await;

    let text = group_message_of_len(MAX_MESSAGE_BYTES);
    let started = Instant::now();
    let attackers: Vec<_> = (0..FRAGMENTERS)
        .map(|i| {
            let (addr, text) = (hub.addr, text.clone());
            tokio::spawn(async move {
                let path = attack_path(&format!("fragmenter-{i}"));
                let mut attacker = RawSocket::connect(addr, &path, None).await;
                for _ in 0..FRAGMENTED_EACH {
                    attacker
                        .send_fragmented(0x1, text.as_bytes(), 10_000)
                        .await
                        .expect("the hub reads every fragment");
                }
                attacker
                    .send_frame(
                        true,
                        0x1,
                        br#"{"msg_type":"msg","target":"echo","msg":"still here"}"#,
                    )
                    .await
                    .expect("send");
                // Behind the group's presence events and the others' messages.
                for _ in 0..1_000 {
                    if next_text(&mut attacker)
                        .await
                        .contains(r#""target":"echo""#)
                    {
                        return attacker;
                    }
                }
                panic!("no echo")
            })
        })
        .collect();
    let sent: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut delivered = std::collections::BTreeMap::<String, usize>::new();
    while delivered.values().sum::<usize>() < FRAGMENTERS * FRAGMENTED_EACH {
        let m = receiver.recv().await;
        if m["msg_type"] == "msg" {
            assert_eq!(m["msg"], sent["msg"], "delivered byte for byte");
            let from = m["from_id"].as_str().expect("from_id").to_owned();
            *delivered.entry(from).or_default() += 1;
        }
    }
    assert!(
        delivered.values().all(|&n| n == FRAGMENTED_EACH),
        "{delivered:?}"
    );
    eprintln!(
        "[fragments] {} messages of {MAX_MESSAGE_BYTES} bytes in 10,000 fragments each, \
         from {FRAGMENTERS} attackers at once: all delivered whole in {:?}",
        FRAGMENTERS * FRAGMENTED_EACH,
        started.elapsed()
    );
    for attacker in attackers {
        drop(attacker.await.expect("an attacker failed"));
    }
    drop(receiver);

    let bounds = Bounds {
        attackers: FRAGMENTERS as u64 + 1,
        // 8 messages of 64 KiB being put together and their delivered
        // copies: a few MiB (measured +2.5). A copy of the message so far
        // per fragment would be gigabytes; 100 bytes kept per fragment,
        // 24 MB.
        peak_rss_mib: 32,
        after_rss_mib: 16,
    };
    scene.end("fragments", bounds).await;
}

/// One byte over the limit, in one frame or in 10,000 fragments, is closed
/// 1009 with nothing delivered; so is a frame header that announces 1 GiB
/// and sends nothing after it (refused at the header, the hub neither waits
/// for nor allocates the payload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_limit_are_closed_1009() {
    let scene = Scene::start(&[]).await;
    let hub = &scene.hub;
    let mut receiver = connect(hub, "attack", "receiver").await;

    let over = group_message_of_len(MAX_MESSAGE_BYTES + 1);
    let fits = group_message_of_len(MAX_MESSAGE_BYTES);

    let mut whole = RawSocket::connect(hub.addr, &attack_path("whole"), None).await;
    // The hub may hang up before it has read the whole frame.
    let _ = whole.send_frame(true, 0x1, over.as_bytes()).await;
    let (_, close) = close_of(&mut whole).await;
    assert_eq!(close.map(|c| c.0), Some(1009), "one frame over the limit");

    let mut pieces = RawSocket::connect(hub.addr, &attack_path("pieces"), None).await;
    let _ = pieces.send_fragmented(0x1, over.as_bytes(), 10_000).await;
    let (_, close) = close_of(&mut pieces).await;
    assert_eq!(close.map(|c| c.0), Some(1009), "fragments over the limit");

    let mut liar = RawSocket::connect(hub.addr, &attack_path("liar"), None).await;
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    liar.write_bytes(&header).await.expect("header sent");
    let (_, close) = close_of(&mut liar).await;
    assert_eq!(close.map(|c| c.0), Some(1009), "a 1 GiB header");

    // A message exactly at the limit still goes through, on a new socket.
    let mut fitting = RawSocket::connect(hub.addr, &attack_path("fitting"), None).await;
    fitting
        .send_fragmented(0x1, fits.as_bytes(), 10)
        .await
        .expect("send");
    let delivered = loop {
        let m = receiver.recv().await;
        if m["msg_type"] == "msg" {
            break m;
        }
    };
    assert_eq!(delivered["from_id"], "fitting", "only the fitting one");
    expect_no_msg(&mut receiver, Duration::from_millis(200)).await;
    drop((whole, pieces, liar, fitting, receiver));

    let bounds = Bounds {
        attackers: 5,
        // Two messages of 64 KiB refused (measured +0.5 MiB). The liar's
        // 1 GiB is refused at its header: its 1009 came though it never
        // sent a byte of it.
        peak_rss_mib: 32,
        after_rss_mib: 16,
    };
    scene.end("over the limit", bounds).await;
}

/// Lets 100,000-character attacks reach the JSON parser rather than the
/// size limit's 1009.
const ONE_MIB: &str = "1048576";
const DEEP: usize = 100_000;

/// 100,000 levels of `[` in the payload, unclosed or closed: a clear 4000
/// with the parser's reason, no stack overflow (a flat scan finds the deep
/// nesting, and the strict parse that follows stops at serde_json's 128
/// levels, `protocol/strict.rs`), nothing reaches the group, and the hub
/// keeps serving. Closed, it is valid JSON that strict
/// readers refuse (serde_json's limit is 128 levels, Python's `json` stops
/// near 1,000), which is why the hub refuses it rather than relay it to
/// every member of the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_nesting_is_refused_4000() {
    let scene = Scene::start(&[("AETHER_MAX_MESSAGE_BYTES", ONE_MIB)]).await;
    let hub = &scene.hub;
    let mut receiver = connect(hub, "attack", "receiver").await;

    let deep = |closed: bool| {
        let close = if closed {
            "]".repeat(DEEP)
        } else {
            String::new()
        };
        format!(
            r#"{{"msg_type":"msg","target":"group","payload":{{"a":{}{close}}}}}"#,
            "[".repeat(DEEP)
        )
    };
    for (what, frame, reason) in [
        ("unclosed", deep(false), "expected value"),
        ("closed", deep(true), "recursion limit exceeded"),
    ] {
        let mut attacker = RawSocket::connect(hub.addr, &attack_path(what), None).await;
        attacker
            .send_frame(true, 0x1, frame.as_bytes())
            .await
            .expect("send");
        let (_, close) = close_of(&mut attacker).await;
        let (code, got) = close.unwrap_or_else(|| panic!("{what}: no close frame"));
        eprintln!("[nesting] 100,000 levels, {what}: closed {code} {got:?}");
        assert_eq!(code, 4000, "{what}");
        assert_eq!(got, reason, "{what}");
    }
    expect_no_msg(&mut receiver, Duration::from_millis(200)).await;
    drop(receiver);

    let bounds = Bounds {
        attackers: 3,
        // Two 200 KB frames (measured +0.5 MiB); a parse tree of 100,000
        // levels would show.
        peak_rss_mib: 32,
        after_rss_mib: 16,
    };
    scene.end("nesting", bounds).await;
}

/// Numbers no f64 holds. The hub does not re-encode `payload` (passed on
/// byte for byte), but it does not relay what strict JSON readers refuse
/// either (`protocol/strict.rs`): a 100,000-digit integer and `1e999999`
/// are a 4000 "number out of range" (serde_json's words), and nothing
/// reaches the group. A number too small for f64 (`-1e-999999`) reads as
/// -0.0 everywhere: accepted, and relayed exactly as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_numbers_are_refused_4000() {
    let scene = Scene::start(&[("AETHER_MAX_MESSAGE_BYTES", ONE_MIB)]).await;
    let hub = &scene.hub;
    let mut receiver = connect(hub, "attack", "receiver").await;

    let group_frame = |number: &str| {
        format!(r#"{{"msg_type":"msg","target":"group","payload":{{"n":{number}}}}}"#)
    };
    let digits = format!("1{}", "0".repeat(99_999));
    for (i, number) in [digits.as_str(), "1e999999"].into_iter().enumerate() {
        let mut attacker =
            RawSocket::connect(hub.addr, &attack_path(&format!("huge-{i}")), None).await;
        attacker
            .send_frame(true, 0x1, group_frame(number).as_bytes())
            .await
            .expect("send");
        let (_, close) = close_of(&mut attacker).await;
        let (code, reason) = close.expect("a close frame");
        eprintln!(
            "[numbers] {}-character number: closed {code} {reason:?}",
            number.len()
        );
        assert_eq!((code, reason.as_str()), (4000, "number out of range"));
    }
    expect_no_msg(&mut receiver, Duration::from_millis(200)).await;

    let mut tiny = RawSocket::connect(hub.addr, &attack_path("tiny"), None).await;
    tiny.send_frame(true, 0x1, group_frame("-1e-999999").as_bytes())
        .await
        .expect("send");
    let delivered = loop {
        let text = receiver.ws_next_text().await.expect("delivered");
        if text.contains(r#""msg_type":"msg""#) {
            break text;
        }
    };
    assert!(
        delivered.contains(r#""payload":{"n":-1e-999999}"#),
        "relayed byte for byte: {delivered}"
    );
    eprintln!("[numbers] -1e-999999: accepted, relayed byte for byte");
    drop((tiny, receiver));

    let bounds = Bounds {
        attackers: 3,
        // 100 KB frames (measured +0.1 MiB).
        peak_rss_mib: 32,
        after_rss_mib: 16,
    };
    scene.end("numbers", bounds).await;
}

/// Text that is not UTF-8, in a whole frame or in one fragment of many: a
/// schema error, 4000 "text frame is not valid UTF-8", as PROTOCOL.md
/// section 2 ("a frame that is not valid UTF-8 JSON … close code 4000") and
/// README ("text that is not UTF-8 are schema errors (4000)") say, not
/// RFC 6455's generic 1007. Nothing reaches the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_closed_4000() {
    let scene = Scene::start(&[]).await;
    let hub = &scene.hub;
    let mut receiver = connect(hub, "attack", "receiver").await;

    let frame_with = |bad: &[u8]| {
        let mut frame = br#"{"msg_type":"msg","target":"group","msg":"ab"#.to_vec();
        frame.extend_from_slice(bad);
        frame.extend_from_slice(br#"cd"}"#);
        frame
    };
    let cases: [(&str, Vec<u8>, usize); 4] = [
        ("0xFF 0xFE in one frame", frame_with(&[0xff, 0xfe]), 1),
        (
            "an overlong `/` among 5 fragments",
            frame_with(&[0xc0, 0xaf]),
            5,
        ),
        (
            "a UTF-16 surrogate as UTF-8",
            frame_with(&[0xed, 0xa0, 0x80]),
            1,
        ),
        (
            "a message that ends mid-character",
            br#"{"msg_type":"msg","target":"group","msg":"ab"}"#
                .iter()
                .copied()
                .chain([0xc3])
                .collect(),
            3,
        ),
    ];
    for (i, (what, bytes, fragments)) in cases.into_iter().enumerate() {
        let mut attacker =
            RawSocket::connect(hub.addr, &attack_path(&format!("utf8-{i}")), None).await;
        let _ = attacker.send_fragmented(0x1, &bytes, fragments).await;
        let (_, close) = close_of(&mut attacker).await;
        let (code, reason) = close.unwrap_or_else(|| panic!("{what}: no close frame"));
        eprintln!("[utf-8] {what}: closed {code} {reason:?}");
        assert_eq!(code, 4000, "{what}");
        assert_eq!(reason, "text frame is not valid UTF-8", "{what}");
    }
    expect_no_msg(&mut receiver, Duration::from_millis(200)).await;
    drop(receiver);

    let bounds = Bounds {
        attackers: 5,
        peak_rss_mib: 32,
        after_rss_mib: 16,
    };
    scene.end("utf-8", bounds).await;
}

/// Pings one flooder sends: 100 every 10 ms (10,000 a second), for 2.5 s
/// at most.
const PINGS: usize = 20_000;
const PINGS_PER_TICK: usize = 100;

/// What became of one ping flood.
#[derive(Debug)]
struct Flood {
    pings: usize,
    pongs: usize,
    took: Duration,
    /// How the hub cut the socket, if it did.
    cut: Option<String>,
}

/// Sends [`PINGS`] pings at 10,000 a second; `read_along`: reading what
/// comes back as it goes (else nothing until the flood is over). Then an
/// echo, which must come back behind the last pongs if the socket is
/// still open.
async fn ping_flood(mut flooder: RawSocket, read_along: bool) -> Flood {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let (mut pings, mut pongs) = (0, 0);
    let mut cut: Option<String> = None;
    'flood: while pings < PINGS && started.elapsed() < Duration::from_millis(2_500) {
        tick.tick().await;
        for _ in 0..PINGS_PER_TICK {
            // A hub that stopped reading would leave this write waiting:
            // it fails after [`TIMEOUT`].
            if let Err(e) = flooder.send_frame(true, 0x9, b"flood-0123456789").await {
                cut = Some(format!("write failed: {e}"));
                break 'flood;
            }
            pings += 1;
        }
        if !read_along {
            continue;
        }
        let (frames, ended) = flooder.take_ready();
        for frame in frames {
            match frame {
                Frame::Other(0xA) => pongs += 1,
                Frame::Close(code, reason) => {
                    cut = Some(format!("closed {code} {reason:?}"));
                    break 'flood;
                }
                _ => {}
            }
        }
        if ended {
            cut = Some("connection ended".into());
            break;
        }
    }
    let took = started.elapsed();
    if cut.is_none() {
        flooder
            .send_frame(
                true,
                0x1,
                br#"{"msg_type":"msg","target":"echo","msg":"alive"}"#,
            )
            .await
            .expect("send");
        // Bounded: every read waits [`TIMEOUT`] at most, and there are no
        // more pongs than pings.
        for _ in 0..=PINGS + 100 {
            match flooder.read_frame().await {
                Some(Frame::Other(0xA)) => pongs += 1,
                Some(Frame::Text(text)) => {
                    assert!(text.contains(r#""msg":"alive""#), "{text}");
                    break;
                }
                Some(Frame::Close(code, reason)) => {
                    cut = Some(format!("closed {code} {reason:?}"));
                    break;
                }
                Some(_) => {}
                None => {
                    cut = Some("connection ended".into());
                    break;
                }
            }
        }
    }
    Flood {
        pings,
        pongs,
        took,
        cut,
    }
}

/// Two sockets send 10,000 pings a second for 2 s each (20,000 at most),
/// one reading the pongs as they come, one deaf (a small receive buffer,
/// nothing read until the flood is over). Pings are not data frames: the
/// rate limit does not count them (README) and the hub has no other limit
/// on them, so neither socket is cut, and each still echoes afterwards.
/// The hub keeps reading the deaf one's pings while its pongs back up:
/// they wait in tungstenite's write buffer, which the hub caps at 64 KiB
/// (then one pong pending, replaced by the next), so no memory or
/// descriptor grows with the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_answered_at_bounded_cost() {
    let scene = Scene::start(&[]).await;
    let hub = &scene.hub;

    let reader = RawSocket::connect(hub.addr, &attack_path("flooder"), None).await;
    let deaf =
        RawSocket::connect_tuned(hub.addr, &attack_path("deaf"), Some(4096), Some(1460)).await;
    let (reading, deaf) = tokio::join!(ping_flood(reader, true), ping_flood(deaf, false));
    for (who, flood) in [("reading", &reading), ("deaf", &deaf)] {
        eprintln!(
            "[ping flood] {who} flooder: {} pings in {:?}, {} pongs back; socket cut: {}",
            flood.pings,
            flood.took,
            flood.pongs,
            flood.cut.as_deref().unwrap_or("no")
        );
        assert_eq!(
            flood.cut, None,
            "{who}: pings are not limited, the flooder stays"
        );
        assert_eq!(flood.pings, PINGS, "{who}: the hub read the whole flood");
        assert!(flood.pongs >= 1, "{who}: the hub answers pings");
    }

    let bounds = Bounds {
        attackers: 2,
        // Measured +0.1 MiB. 40,000 pings: 1 KiB kept per ping would be
        // 40 MiB.
        peak_rss_mib: 32,
        after_rss_mib: 16,
    };
    scene.end("ping flood", bounds).await;
}

const SLOW_CLIENTS: usize = 500;

/// 500 clients join one group and read nothing (so all of them have
/// stopped reading when the flood starts) while a busy sender floods the
/// group with 2 KiB messages as fast as it can. Each one's outbound queue
/// (`AETHER_OUTBOUND_QUEUE`, default 1,024) fills and the hub drops every
/// one of them with 4008; when they look again they read what the hub had
/// written, then the 4008 close frame. The busy sender and the healthy
/// group notice nothing: every healthy message arrives, in order. The hub
/// gives the 500 descriptors back and its socket count returns to the
/// healthy ones. The approach of `close_codes.rs`
/// (`a_socket_that_stops_reading_is_dropped_4008_and_slows_nobody`), at
/// 500 times the scale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_that_stop_reading_are_dropped_4008() {
    let scene = Scene::start(&[]).await;
    let hub = &scene.hub;
    let dropped = r#"aether_messages_dropped_total{reason="slow_consumer"}"#;
    let closed_4008 = r#"aether_connections_closed_total{code="4008"}"#;
    let dropped_before = hub.metric(dropped).await;
    let closed_before = hub.metric(closed_4008).await;

    // A small receive buffer, and Ethernet-sized segments: over loopback's
    // 64 KiB segments the hub's kernel gives each stalled socket a send
    // buffer of some 2.8 MB (1.4 GB for 500, near this machine's TCP
    // memory limit, and slow to read back); with 1,460-byte segments about
    // 100 KiB (see `RawSocket::connect_tuned`).
    let mut slow = Vec::with_capacity(SLOW_CLIENTS);
    for chunk in 0..SLOW_CLIENTS / 50 {
        let batch = (0..50).map(|i| {
            let path = attack_path(&format!("slow-{}", chunk * 50 + i));
            async move { RawSocket::connect_tuned(hub.addr, &path, Some(4096), Some(1460)).await }
        });
        slow.extend(futures_util::future::join_all(batch).await);
    }
    let busy = connect(hub, "attack", "busy").await;
    let (mut busy_tx, mut busy_rx) = busy.ws.split();
    // The busy sender reads what it is sent (presence events); ends with
    // the test.
    let busy_reader = tokio::spawn(async move {
        while let Some(Ok(frame)) = busy_rx.next().await {
            if let Message::Close(_) = frame {
                panic!("the busy sender was closed: {frame:?}");
            }
        }
    });

    // As fast as it can, until the hub has dropped all 500 (counted once
    // per socket): at most 10,000 messages or 20 s.
    let blob = "x".repeat(2048);
    let started = Instant::now();
    let (mut sent, mut kicked) = (0, 0.0);
    let mut first_kick = None;
    while sent < 10_000 && started.elapsed() < Duration::from_secs(20) {
        let m = msg("group", json!({"msg": blob, "payload": {"seq": sent}}));
        busy_tx
            .send(Message::text(m.to_string()))
            .await
            .expect("the busy sender is never slowed to a stop");
        sent += 1;
        if sent % 32 == 0 {
            kicked = hub.metric(dropped).await - dropped_before;
            if kicked > 0.0 && first_kick.is_none() {
                first_kick = Some(Instant::now());
            }
            if kicked >= SLOW_CLIENTS as f64 {
                break;
            }
        }
    }
    let flood_time = started.elapsed();
    assert_eq!(kicked, SLOW_CLIENTS as f64, "every slow client was dropped");

    // They look again, all at once, and catch up fast (a bigger receive
    // buffer, frames counted in place): the hub gives a dropped socket 2 s
    // to read what it had written and the close frame, then hangs up.
    let readers: Vec<_> = slow
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                socket.set_recv_buffer(256 * 1024);
                socket.skim_until_close().await
            })
        })
        .collect();
    let mut codes = std::collections::BTreeMap::new();
    let mut most = 0;
    for reader in readers {
        let (texts, code) = reader.await.expect("slow reader");
        *codes.entry(code).or_insert(0) += 1;
        most = most.max(texts);
    }
    let first_kick_to_read = first_kick.map(|at| at.elapsed());
    eprintln!(
        "[500 slow] {sent} messages of 2 KiB sent in {flood_time:?} until all 500 were dropped; \
         close codes read {codes:?} ({first_kick_to_read:?} from the first drop seen to the last \
         close read); a slow client had read {most} frames at most, presence events included"
    );
    assert_eq!(
        codes.get(&Some(4008)),
        Some(&SLOW_CLIENTS),
        "every slow client reads 4008 (one that looks again more than 2 s after its drop \
         finds the connection gone instead)"
    );
    assert!(
        most < sent,
        "the slow clients were cut off long before the end"
    );

    let _ = busy_tx.close().await;
    busy_reader.abort();
    let bounds = Bounds {
        attackers: SLOW_CLIENTS as u64 + 1,
        // 500 sockets with full 1,024-message queues: the messages are
        // shared (one copy each), the queues hold pointers (~8 KiB each),
        // and each socket holds its part-written batch: tens of MiB
        // (measured +30 to +90). A copy of every queued message per
        // socket would be 500 × 1,024 × 2 KiB = 1 GiB.
        peak_rss_mib: 200,
        // The allocator keeps part of the peak mapped (measured +15 to
        // +50 MiB), so this only catches the bulk of the attack's memory
        // kept; per-socket leaks show in descriptors and socket counts.
        after_rss_mib: 120,
    };
    let hub = scene.end("500 slow", bounds).await;
    let closed = hub.metric(closed_4008).await - closed_before;
    assert_eq!(
        closed, SLOW_CLIENTS as f64,
        "the hub counted 500 closes with 4008"
    );
}
