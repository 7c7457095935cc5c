//! Baseline for the idle-memory benchmark: the same route served with
//! warp's stock `ws()` filter (tungstenite's default 128 KiB read buffer),
//! holding each socket open and reading until it closes. No protocol, no
//! routing. `benches/idle-memory.sh` measures it beside the hub in one run.
//!
//! Usage: `warp_ws_baseline 127.0.0.1:18181`

mod bench_server;

use futures_util::StreamExt;
use warp::Filter;

#[tokio::main]
async fn main() {
    let addr = bench_server::prepare(18181);
    let route = warp::path!("v3" / "ws" / "group" / String / "client" / String)
        .and(warp::ws())
        .map(|_group: String, _client: String, ws: warp::ws::Ws| {
            ws.on_upgrade(
                |mut socket| async move { while let Some(Ok(_)) = socket.next().await {} },
            )
        });
    let listener = aether_hub::server::listen(addr).await.unwrap_or_else(|e| {
        eprintln!("warp_ws_baseline: {e}");
        std::process::exit(1);
    });
    warp::serve(route).incoming(listener).run().await;
}
