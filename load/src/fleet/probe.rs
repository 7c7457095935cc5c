//! The broadcast probe: one extra socket (not one of the `--sockets`) that
//! sends a `broadcast` at each `--probe-at` time after go, carrying its
//! send time on the shared wall clock, so that every socket of every load
//! process on the machine can tell how long the message took to reach it.
//! Only the process given `--probe-at` sends; every process records the
//! arrivals on its own sockets (`Tally::probe`).
//!
//! The hub must let clients broadcast (`AETHER_ALLOW_CLIENT_BROADCAST`,
//! on by default). The probe sits on the last `--url`, which the benches
//! never kill.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{wall_us, Shared};
use crate::client;

/// Connect attempts before one probe is given up.
const ATTEMPTS: usize = 5;

pub(super) async fn run(shared: Arc<Shared>) {
    let mut times = shared.args.probe_at.clone();
    if times.is_empty() {
        return;
    }
    times.sort_by(f64::total_cmp);
    tokio::select! {
        _ = shared.stop.cancelled() => return,
        _ = shared.go.cancelled() => {}
    }
    let Some(go) = shared.go_at.get().copied() else {
        return;
    };
    let mut ws: Option<client::Ws> = None;
    for (id, at) in times.iter().enumerate() {
        let when = go + Duration::from_secs_f64(at.max(0.0));
        if !hold_until(&shared, &mut ws, when).await {
            return;
        }
        if ws.is_none() {
            ws = connect(&shared).await;
        }
        let Some(socket) = &mut ws else {
            eprintln!("fleet: probe {id} not sent: no connection");
            continue;
        };
        let frame = format!(
            r#"{{"msg_type":"msg","target":"broadcast","payload":{{"probe_id":{id},"t":{}}}}}"#,
            wall_us()
        );
        match socket.send(Message::text(frame)).await {
            Ok(()) => {
                shared.probes_sent.fetch_add(1, Ordering::Relaxed);
                eprintln!("fleet: probe {id} sent");
            }
            Err(e) => {
                eprintln!("fleet: probe {id} not sent: {e}");
                ws = None;
            }
        }
    }
    // Stay connected (answering pings) until the end.
    let _ = hold_until(
        &shared,
        &mut ws,
        Instant::now() + Duration::from_secs(86_400),
    )
    .await;
}

/// Reads (and drops) what the probe socket gets until `when`; false when
/// the run stopped first.
async fn hold_until(shared: &Shared, ws: &mut Option<client::Ws>, when: Instant) -> bool {
    loop {
        let frame = match ws {
            Some(socket) => tokio::select! {
                _ = shared.stop.cancelled() => return false,
                _ = tokio::time::sleep_until(when) => return true,
                frame = socket.next() => frame,
            },
            None => tokio::select! {
                _ = shared.stop.cancelled() => return false,
                _ = tokio::time::sleep_until(when) => return true,
            },
        };
        if !matches!(frame, Some(Ok(_))) {
            *ws = None;
        }
    }
}

async fn connect(shared: &Shared) -> Option<client::Ws> {
    let hubs = &shared.args.hubs;
    let id = shared.args.id;
    let name = format!("f{id}-bcast");
    for attempt in 0..ATTEMPTS {
        let target = hubs.count().saturating_sub(1 + attempt);
        let opened = match hubs.upgrade_to(target, 0, &name, &name, "") {
            Ok(upgrade) => hubs
                .open_within(upgrade, shared.connect_timeout)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match opened {
            Ok(ws) => return Some(ws),
            Err(e) => eprintln!("fleet: probe socket: {e}"),
        }
    }
    None
}
