//! Hostile frames against a real hub process (`aether-hub`, in memory):
//! what a connected socket sends, each attack while a group of healthy
//! sockets keeps talking through the same hub. Owns what the hub must
//! withstand from a client that breaks the rules on purpose once upgraded:
//! a largest-allowed message in 10,000 fragments, frames over the size
//! limit, deep JSON nesting, huge numbers, invalid UTF-8 and a ping flood.
//! How connections behave (clients that stop reading or never read, stalled
//! writes, slow-loris and silent connections, slow publish bodies) is
//! `hostile_connections.rs`.
//!
//! Every attack asserts three things a user would notice: what the
//! attacker gets (its close code, or its message delivered), that every
//! healthy receiver got every healthy message in order, and that the hub
//! process gave back what the attack cost it (file descriptors, memory,
//! threads, `aether_connections_open`, tasks alive, read from `/proc/<pid>` and
//! `/metrics`). Healthy latency (p99) and the resource figures are printed,
//! never asserted as times. Close codes are those of docs/protocol.md section 6;
//! `close_codes.rs` provokes each of them the ordinary way.
//!
//! One attack runs at a time (see [`one_at_a_time`]), every loop is bounded
//! in count and time, and everything stays on 127.0.0.1.

mod support;

use std::time::{Duration, Instant};

use support::attack::resources::Bounds;
use support::attack::{
    attack_path, close_of, connect, expect_no_msg, group_message_of_len, next_text, Scene,
};
use support::raw::{Frame, RawSocket};

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
/// schema error, 4000 "text frame is not valid UTF-8", as docs/protocol.md
/// section 2 ("a frame that is not valid UTF-8 JSON … close code 4000") and
/// docs/behaviour.md ("text that is not UTF-8 are schema errors (4000)") say, not
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
const FLOOD: Pinging = Pinging {
    per_tick: 100,
    tick: Duration::from_millis(10),
};
/// More than any real client pings (a few a second at most), half the
/// hub's default ping limit.
const POLITE: Pinging = Pinging {
    per_tick: 1,
    tick: Duration::from_millis(20),
};

struct Pinging {
    per_tick: usize,
    tick: Duration,
}

/// What became of one ping flood.
#[derive(Debug)]
struct Flood {
    pings: usize,
    pongs: usize,
    took: Duration,
    /// How the hub cut the socket, if it did.
    cut: Option<String>,
}

/// Sends up to [`PINGS`] pings at `pace` for 2.5 s at most; `read_along`:
/// reading what comes back as it goes (else nothing until the flood is
/// over). Then an echo, which must come back behind the last pongs if the
/// socket is still open.
async fn ping_flood(mut flooder: RawSocket, read_along: bool, pace: Pinging) -> Flood {
    let started = Instant::now();
    let mut tick = tokio::time::interval(pace.tick);
    let (mut pings, mut pongs) = (0, 0);
    let mut cut: Option<String> = None;
    'flood: while pings < PINGS && started.elapsed() < Duration::from_millis(2_500) {
        tick.tick().await;
        for _ in 0..pace.per_tick {
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
        cut = echo_after_pongs(&mut flooder, &mut pongs).await;
    }
    Flood {
        pings,
        pongs,
        took,
        cut,
    }
}

/// Sends an echo and reads up to it, counting the pongs before it: `None`
/// if it came back, else how the socket was cut.
async fn echo_after_pongs(flooder: &mut RawSocket, pongs: &mut usize) -> Option<String> {
    let echo = br#"{"msg_type":"msg","target":"echo","msg":"alive"}"#;
    if let Err(e) = flooder.send_frame(true, 0x1, echo).await {
        return Some(format!("write failed: {e}"));
    }
    // Bounded: every read waits [`TIMEOUT`] at most, and there are no
    // more pongs than pings.
    for _ in 0..=PINGS + 100 {
        match flooder.read_frame().await {
            Some(Frame::Other(0xA)) => *pongs += 1,
            // Presence events of the attack group come before it.
            Some(Frame::Text(text)) if text.contains(r#""msg":"alive""#) => return None,
            Some(Frame::Close(code, reason)) => return Some(format!("closed {code} {reason:?}")),
            Some(_) => {}
            None => return Some("connection ended".into()),
        }
    }
    Some("no echo".into())
}

/// Two sockets send 10,000 pings a second, one reading the pongs as they
/// come, one deaf (a small receive buffer, nothing read until the flood is
/// over), while a third pings 50 times a second. Every ping costs the hub
/// a pong, so pings have a limit of their own (`AETHER_PING_LIMIT`, 100 a
/// second with a burst of 100, apart from the rate limit that counts
/// messages and is off by default): the hub answers the flooders up to it
/// and closes them with 4029 "too many pings", which the reading flooder
/// reads a few ticks into its flood; the deaf one is cut as well (the hub
/// counts both closes). The polite pinger is never cut and still echoes
/// afterwards. No memory or descriptor grows with the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_cut_4029_and_polite_pings_are_not() {
    let scene = Scene::start(&[]).await;
    let hub = &scene.hub;
    let closed_4029 = r#"aether_connections_closed_total{code="4029"}"#;
    let closed_before = hub.metric(closed_4029).await;

    let reader = RawSocket::connect(hub.addr, &attack_path("flooder"), None).await;
    let deaf =
        RawSocket::connect_tuned(hub.addr, &attack_path("deaf"), Some(4096), Some(1460)).await;
    let polite = RawSocket::connect(hub.addr, &attack_path("polite"), None).await;
    let (reading, deaf, polite) = tokio::join!(
        ping_flood(reader, true, FLOOD),
        ping_flood(deaf, false, FLOOD),
        ping_flood(polite, true, POLITE)
    );
    for (who, flood) in [("reading", &reading), ("deaf", &deaf), ("polite", &polite)] {
        eprintln!(
            "[ping flood] {who} pinger: {} pings in {:?}, {} pongs back; socket cut: {}",
            flood.pings,
            flood.took,
            flood.pongs,
            flood.cut.as_deref().unwrap_or("no")
        );
    }
    assert_eq!(
        reading.cut.as_deref(),
        Some(r#"closed 4029 "too many pings""#),
        "the reading flooder is cut"
    );
    assert!(reading.pings < PINGS, "cut before its flood was over");
    assert!(deaf.cut.is_some(), "the deaf flooder is cut");
    assert_eq!(polite.cut, None, "50 pings a second are not cut");
    assert!(polite.pongs >= polite.pings, "every polite ping answered");

    let bounds = Bounds {
        attackers: 3,
        // Measured +0.1 MiB. 40,000 pings: 1 KiB kept per ping would be
        // 40 MiB.
        peak_rss_mib: 32,
        after_rss_mib: 16,
    };
    let hub = scene.end("ping flood", bounds).await;
    let closed = hub.metric(closed_4029).await - closed_before;
    assert_eq!(closed, 2.0, "the hub closed both flooders with 4029");
}
