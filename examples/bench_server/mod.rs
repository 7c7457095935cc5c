//! What the bench servers (`fanout_floor`, `warp_ws_baseline`) share: the
//! hub's own start-up steps that matter to a benchmark.

use std::net::SocketAddr;

/// Raises the open-file limit as the hub does, and returns the address to
/// listen on: the first argument, or 127.0.0.1:`default_port`.
pub fn prepare(default_port: u16) -> SocketAddr {
    aether_hub::fdlimit::raise();
    std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| ([127, 0, 0, 1], default_port).into())
}
