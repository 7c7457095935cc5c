//! `aether-load`: drives one or more hub instances over real sockets and
//! reports what it measured. Each scenario prints a progress line every
//! second, a human summary, and one JSON object as its last line.
//!
//! Scenarios live one per module; this file only parses the command line.
//! Every scenario can give each socket an identity token (`--token-secret`
//! or `--token-key`, see `tokens`) and reach hubs over `wss://`
//! (`--tls-ca`); `keys` makes an ES256 key pair for that.

mod churn;
mod client;
mod connect;
mod fanout;
mod fleet;
mod keys;
mod nats;
mod recover;
mod rtt;
mod soak;
mod stats;
mod tokens;
mod track;
mod wait;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aether-load",
    about = "Load generator for aether-hub (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open many idle sockets, hold them, and report connect rate and the
    /// hub's memory per socket.
    Connect(connect::Args),
    /// Groups of subscribers, one publisher per group: deliveries/s,
    /// latency, loss and order.
    Fanout(fanout::Args),
    /// The same fan-out against a nats-server's WebSocket listener (NATS
    /// client protocol): the baseline of benches/nats.sh.
    NatsFanout(nats::Args),
    /// Pairs ping-ponging direct messages: round trips/s and RTT.
    Rtt(rtt::Args),
    /// Subscribers leaving and rejoining beside a stable set that must
    /// lose nothing.
    Churn(churn::Args),
    /// Sockets that missed M messages reconnecting at once with their
    /// positions: time to recover, and that each got exactly what it missed.
    Recover(recover::Args),
    /// A long mixed run for flatness and zero loss: groups with a
    /// controller and workers, group and direct traffic, workers
    /// reconnecting with recovery, a slow consumer now and then; a CSV row
    /// a minute (benches/soak.sh).
    Soak(soak::Args),
    /// One process's share of a fleet-scale run: sockets in small groups
    /// over several hubs, steady group traffic, broadcast probes, and
    /// returns with since_* to another hub when a hub dies; a CSV row a
    /// second (benches/fleet.sh).
    Fleet(fleet::Args),
    /// Write a fresh P-256 key (es256.pem, for --token-key) and its JWKS
    /// (jwks.json, for the hub's AETHER_TOKEN_JWKS_FILE) into a directory.
    Keys(keys::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    aether_hub::fdlimit::raise();
    let result = match cli.scenario {
        Scenario::Connect(args) => connect::run(args).await,
        Scenario::Fanout(args) => fanout::run(args).await,
        Scenario::NatsFanout(args) => nats::run(args).await,
        Scenario::Rtt(args) => rtt::run(args).await,
        Scenario::Churn(args) => churn::run(args).await,
        Scenario::Recover(args) => recover::run(args).await,
        Scenario::Soak(args) => soak::run(args).await,
        Scenario::Fleet(args) => fleet::run(args).await,
        Scenario::Keys(args) => keys::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aether-load: {e}");
            ExitCode::FAILURE
        }
    }
}
