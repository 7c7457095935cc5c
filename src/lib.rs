//! aether-hub: a WebSocket fan-out hub for group coordination (Aether
//! WebSockets V3).
//!
//! How a message travels: a client frame is read by its [`session`],
//! parsed and normalised once by [`protocol`], handed to the [`broker`]
//! along its [`channels::Route`], and fanned out by the [`router`] to the
//! [`outbox`] of every local socket on that route. [`hub`] ties router,
//! broker and [`presence`] together; [`http`] and [`server`] expose it.
//! Operators act on the whole fleet through [`operator`] (disconnect,
//! [`revocation`], info, history).

pub mod ack;
pub mod auth;
pub mod broker;
pub mod channels;
pub mod close;
pub mod config;
pub mod console;
pub mod delivery;
pub mod fdlimit;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod operator;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod rate_limit;
pub mod replay;
pub mod revocation;
pub mod router;
pub mod server;
pub mod session;
pub mod socket;
pub mod tls;
pub mod wire;

pub use config::Config;
pub use server::Server;
