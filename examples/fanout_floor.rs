//! The bench floor: a bare fan-out server on the hub's own WebSocket stack
//! (hyper's upgrade in a warp route, tokio-tungstenite reading with the
//! hub's settings, a bounded queue per socket, batches written with the
//! hub's `wire::Batch`) with no protocol,
//! no routing table and no Redis: every text frame a socket sends is
//! queued, unchanged and shared, to every other socket. Driven by
//! `aether-load fanout --groups 1` in the same run as the hub, it is the
//! ceiling the hub's fan-out is compared with.
//!
//! Usage: `fanout_floor 127.0.0.1:18300`

mod bench_server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use aether_hub::wire::Batch;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use warp::http::{header, HeaderMap, StatusCode};
use warp::reply::Reply;
use warp::Filter;

type Peers = Arc<RwLock<Vec<(u64, mpsc::Sender<Utf8Bytes>)>>>;

#[tokio::main]
async fn main() {
    let addr = bench_server::prepare(18300);
    let peers: Peers = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    let route = warp::header::headers_cloned()
        .and(warp::ext::optional::<OnUpgrade>())
        .map(move |headers: HeaderMap, on_upgrade: Option<OnUpgrade>| {
            let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
            let (Some(key), Some(on_upgrade)) = (key, on_upgrade) else {
                return warp::reply::with_status("not a WebSocket", StatusCode::BAD_REQUEST)
                    .into_response();
            };
            let id = next.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = mpsc::channel(1024);
            if let Ok(mut p) = peers.write() {
                p.push((id, tx));
            }
            tokio::spawn(serve(on_upgrade, id, rx, peers.clone()));
            aether_hub::http::switching_protocols(&key, false)
        });
    let listener = aether_hub::server::listen(addr).await.unwrap_or_else(|e| {
        eprintln!("fanout_floor: {e}");
        std::process::exit(1);
    });
    warp::serve(route).incoming(listener).run().await;
}

async fn serve(on_upgrade: OnUpgrade, id: u64, mut rx: mpsc::Receiver<Utf8Bytes>, peers: Peers) {
    if let Ok(upgraded) = on_upgrade.await {
        let config = WebSocketConfig::default()
            .read_buffer_size(512)
            .write_buffer_size(0)
            .max_write_buffer_size(64 * 1024);
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        loop {
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Ok(peers) = peers.read() {
                            for (other, tx) in peers.iter() {
                                if *other != id {
                                    let _ = tx.try_send(text.clone());
                                }
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
                Some(first) = rx.recv() => {
                    let mut batch = Batch::default();
                    batch.push(first.as_str());
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more.as_str());
                    }
                    if ws.flush().await.is_err() || batch.write_to(ws.get_mut()).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    if let Ok(mut p) = peers.write() {
        p.retain(|(other, _)| *other != id);
    }
}
